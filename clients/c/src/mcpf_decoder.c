/* SPDX-License-Identifier: MIT
 * The byte-stream decoder with the resync rule of docs/protocol.md §7.1.
 *
 * buf holds the current candidate: buf[0] is a 0x55 and the bytes after it
 * are not yet classified. A rejected candidate (length > 256, bad CRC,
 * abandoned on an idle line) loses only its 0x55: the bytes after it are
 * scanned again, so a real frame that begins inside a false one is found.
 * Every candidate is at most 263 bytes and a rescan only ever looks at
 * bytes already in buf, so 263 bytes of buffer suffice.
 */
#include <string.h>

#include "mcpf.h"

#if MCPF_DEC_STATS
#define COUNT(x) ((void)(d->x++))
#define SKIP(k) ((void)(d->skipped += (k)))
#else
#define COUNT(x) ((void)0)
#define SKIP(k) ((void)0)
#endif

void mcpf_dec_init(mcpf_decoder *d) { memset(d, 0, sizeof *d); }

uint32_t mcpf_idle_ms(uint32_t baud)
{
    uint32_t ms = baud ? (50000u + baud - 1u) / baud : 20u; /* 5 chars × 10 bits */
    return ms > 20u ? ms : 20u;
}

/* Drops the first k bytes of buf, then any noise up to the next 0x55. */
static void shift(mcpf_decoder *d, uint16_t k)
{
    while (k < d->n && d->buf[k] != MCPF_MAGIC) {
        k++;
        SKIP(1);
    }
    d->n = (uint16_t)(d->n - k);
    memmove(d->buf, d->buf + k, d->n);
}

int mcpf_dec_poll(mcpf_decoder *d, mcpf_frame *f)
{
    uint16_t len;
    if (d->drop) { /* the frame delivered last time */
        shift(d, d->drop);
        d->drop = 0;
    }
    for (;;) {
        if (d->n == 0) {
            d->idle = 0;
            return MCPF_DEC_NONE;
        }
        if (d->n >= MCPF_HEADER) {
            len = (uint16_t)(d->buf[2] << 8 | d->buf[3]);
            if (len > MCPF_MAX_DATA) {
                COUNT(toolong);
                SKIP(1);
                shift(d, 1);
                return MCPF_DEC_TOOLONG;
            }
            if (d->n >= len + MCPF_OVERHEAD) {
                if (mcpf_crc8(d->buf + 1, len + 5u) != d->buf[MCPF_HEADER + len]) {
                    COUNT(badcrc);
                    SKIP(1);
                    shift(d, 1);
                    return MCPF_DEC_BADCRC;
                }
                f->ver = d->buf[1];
                f->cmd = d->buf[4] & 0x3Fu;
                f->flags = d->buf[4] & 0xC0u;
                f->seq = d->buf[5];
                f->len = len;
                f->data = d->buf + MCPF_HEADER;
                d->drop = (uint16_t)(len + MCPF_OVERHEAD);
                COUNT(frames);
                return MCPF_DEC_FRAME;
            }
        }
        if (!d->idle)
            return MCPF_DEC_NONE;
        SKIP(1); /* abandoned: rescan after its 0x55 */
        shift(d, 1);
    }
}

int mcpf_dec_push(mcpf_decoder *d, uint8_t byte, mcpf_frame *f)
{
    if (d->drop) {
        shift(d, d->drop);
        d->drop = 0;
    }
    if (d->n == 0 && byte != MCPF_MAGIC) { /* line noise: the common fast path */
        SKIP(1);
        return MCPF_DEC_NONE;
    }
    d->buf[d->n++] = byte; /* n < 263 here: see the invariant above */
    return mcpf_dec_poll(d, f);
}

void mcpf_dec_idle(mcpf_decoder *d)
{
    if (d->n)
        d->idle = 1;
}
