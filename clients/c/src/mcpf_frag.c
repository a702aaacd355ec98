/* SPDX-License-Identifier: MIT
 * Messages and fragmentation (docs/protocol.md §6). */
#include <string.h>

#include "mcpf.h"

uint8_t mcpf_piece_size(uint16_t max_data, int sign)
{
    uint16_t p = (uint16_t)(max_data > MCPF_MAX_DATA ? MCPF_MAX_DATA : max_data);
    p = (uint16_t)(p - 2u - (sign ? MCPF_SIG_BLOCK : 0u));
    return (uint8_t)p;
}

uint8_t mcpf_frag_count(size_t n, uint8_t piece)
{
    size_t c;
    if (piece == 0)
        return 0;
    c = (n + 4u + piece - 1u) / piece;
    return c > 255u ? 0 : (uint8_t)c;
}

static void read_mem(const void *src, size_t off, uint8_t *out, size_t len)
{
    memcpy(out, (const uint8_t *)src + off, len);
}

size_t mcpf_frag_frame(uint8_t *out, uint8_t cmd_byte, uint8_t seq, const uint8_t *body,
                       size_t n, uint32_t crc, uint8_t piece, uint8_t index)
{
    return mcpf_frag_frame_from(out, cmd_byte, seq, read_mem, body, n, crc, piece, index);
}

size_t mcpf_frag_frame_from(uint8_t *out, uint8_t cmd_byte, uint8_t seq, mcpf_read_fn read,
                            const void *src, size_t n, uint32_t crc, uint8_t piece, uint8_t index)
{
    uint8_t count = mcpf_frag_count(n, piece), *d = out + MCPF_HEADER;
    size_t off = (size_t)index * piece, end = off + piece, k;
    if (count == 0 || index >= count)
        return 0;
    if (end > n + 4u)
        end = n + 4u;
    d[0] = index;
    d[1] = count;
    k = off;
    if (k < n) { /* the body's part of body ‖ crc32c(body) */
        read(src, k, d + 2, (end < n ? end : n) - k);
        k = end < n ? end : n;
    }
    for (; k < end; k++) /* then the CRC's, big-endian */
        d[2 + k - off] = (uint8_t)(crc >> (8u * (3u - (k - n))));
    return mcpf_encode(out, MCPF_VERSION, (uint8_t)(cmd_byte | MCPF_FRAGMENT), seq, d,
                       (uint16_t)(2u + end - off));
}

void mcpf_reasm_init(mcpf_reasm *r, uint8_t *buf, size_t cap)
{
    memset(r, 0, sizeof *r);
    r->buf = buf;
    r->cap = cap;
}

static int discard(mcpf_reasm *r, int err)
{
    r->active = 0;
    return err;
}

/* The last piece is parked at the end of buf until the piece size is
 * known, then moved to its place. */
int mcpf_reasm_add(mcpf_reasm *r, const mcpf_frame *f, size_t *body_len)
{
    uint8_t index, count, len;
    size_t total, at;
    uint32_t crc;
    const uint8_t *piece;
    if (f->len < 3 || f->data[1] == 0 || f->data[0] >= f->data[1])
        return discard(r, -MCPF_EMALFORMED);
    index = f->data[0];
    count = f->data[1];
    len = (uint8_t)(f->len - 2u);
    piece = f->data + 2;
    if (!r->active || r->cmd != f->cmd || r->seq != f->seq) {
        memset(&r->active, 0, sizeof *r - offsetof(mcpf_reasm, active));
        r->active = 1;
        r->cmd = f->cmd;
        r->seq = f->seq;
        r->count = count;
    }
    if (count != r->count)
        return discard(r, -MCPF_EMALFORMED);
    if (r->have[index >> 3] & (1u << (index & 7u)))
        return 0; /* a duplicate */
    if (index + 1u < count) {
        if (r->piece && r->piece != len)
            return discard(r, -MCPF_EMALFORMED);
        if (r->last_len && r->last_len > len)
            return discard(r, -MCPF_EMALFORMED);
        if ((size_t)(count - 1u) * len + (r->last_len ? r->last_len : 1u) > r->cap)
            return discard(r, -MCPF_ETOO_LARGE);
        if (!r->piece && r->last_len) /* move the parked last piece in */
            memmove(r->buf + (size_t)(count - 1u) * len, r->buf + r->cap - r->last_len, r->last_len);
        r->piece = len;
        at = (size_t)index * len;
    } else {
        if (r->piece && len > r->piece)
            return discard(r, -MCPF_EMALFORMED);
        r->last_len = len;
        if (count == 1)
            at = 0;
        else if (r->piece)
            at = (size_t)(count - 1u) * r->piece;
        else if (len > r->cap) /* cap - len would wrap, and at + len pass the check below */
            return discard(r, -MCPF_ETOO_LARGE);
        else
            at = r->cap - len;
    }
    if (at + len > r->cap)
        return discard(r, -MCPF_ETOO_LARGE);
    memcpy(r->buf + at, piece, len);
    r->have[index >> 3] = (uint8_t)(r->have[index >> 3] | (1u << (index & 7u)));
    if (++r->received < count)
        return 0;
    r->active = 0;
    total = (size_t)(count - 1u) * r->piece + r->last_len;
    if (total < 4)
        return -MCPF_EMALFORMED;
    total -= 4;
    crc = (uint32_t)r->buf[total] << 24 | (uint32_t)r->buf[total + 1] << 16 |
          (uint32_t)r->buf[total + 2] << 8 | r->buf[total + 3];
    if (mcpf_crc32c(0, r->buf, total) != crc)
        return -MCPF_EBAD_CHECKSUM;
    *body_len = total;
    return 1;
}

uint8_t mcpf_reasm_missing(const mcpf_reasm *r, uint8_t *out, uint8_t max)
{
    uint8_t k = 0;
    unsigned i;
    if (!r->active)
        return 0;
    for (i = 0; i < r->count && k < max; i++)
        if (!(r->have[i >> 3] & (1u << (i & 7u))))
            out[k++] = (uint8_t)i;
    return k;
}
