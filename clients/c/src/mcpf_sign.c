/* SPDX-License-Identifier: MIT
 * Frame signing (docs/protocol.md §9): SHA-256 (FIPS 180-4), HMAC (RFC
 * 2104) truncated to 8 bytes, and the 64-counter replay window. Compiled
 * to nothing unless MCPF_SIGN is non-zero. */
#include <string.h>

#include "mcpf.h"

#if MCPF_SIGN

static const uint32_t K[64] = {
    0x428a2f98u, 0x71374491u, 0xb5c0fbcfu, 0xe9b5dba5u, 0x3956c25bu, 0x59f111f1u, 0x923f82a4u, 0xab1c5ed5u,
    0xd807aa98u, 0x12835b01u, 0x243185beu, 0x550c7dc3u, 0x72be5d74u, 0x80deb1feu, 0x9bdc06a7u, 0xc19bf174u,
    0xe49b69c1u, 0xefbe4786u, 0x0fc19dc6u, 0x240ca1ccu, 0x2de92c6fu, 0x4a7484aau, 0x5cb0a9dcu, 0x76f988dau,
    0x983e5152u, 0xa831c66du, 0xb00327c8u, 0xbf597fc7u, 0xc6e00bf3u, 0xd5a79147u, 0x06ca6351u, 0x14292967u,
    0x27b70a85u, 0x2e1b2138u, 0x4d2c6dfcu, 0x53380d13u, 0x650a7354u, 0x766a0abbu, 0x81c2c92eu, 0x92722c85u,
    0xa2bfe8a1u, 0xa81a664bu, 0xc24b8b70u, 0xc76c51a3u, 0xd192e819u, 0xd6990624u, 0xf40e3585u, 0x106aa070u,
    0x19a4c116u, 0x1e376c08u, 0x2748774cu, 0x34b0bcb5u, 0x391c0cb3u, 0x4ed8aa4au, 0x5b9cca4fu, 0x682e6ff3u,
    0x748f82eeu, 0x78a5636fu, 0x84c87814u, 0x8cc70208u, 0x90befffau, 0xa4506cebu, 0xbef9a3f7u, 0xc67178f2u,
};

#define ROR(x, n) ((x) >> (n) | (x) << (32 - (n)))

static void compress(uint32_t h[8], const uint8_t *blk)
{
    uint32_t w[16], a[8], t1, t2;
    int i;
    for (i = 0; i < 16; i++)
        w[i] = (uint32_t)blk[4 * i] << 24 | (uint32_t)blk[4 * i + 1] << 16 |
               (uint32_t)blk[4 * i + 2] << 8 | blk[4 * i + 3];
    memcpy(a, h, sizeof a);
    for (i = 0; i < 64; i++) {
        if (i >= 16) { /* the message schedule, 16 words rolling */
            uint32_t s0 = w[(i + 1) & 15], s1 = w[(i + 14) & 15];
            s0 = ROR(s0, 7) ^ ROR(s0, 18) ^ (s0 >> 3);
            s1 = ROR(s1, 17) ^ ROR(s1, 19) ^ (s1 >> 10);
            w[i & 15] += s0 + s1 + w[(i + 9) & 15];
        }
        t1 = a[7] + (ROR(a[4], 6) ^ ROR(a[4], 11) ^ ROR(a[4], 25)) +
             ((a[4] & a[5]) ^ (~a[4] & a[6])) + K[i] + w[i & 15];
        t2 = (ROR(a[0], 2) ^ ROR(a[0], 13) ^ ROR(a[0], 22)) +
             ((a[0] & a[1]) ^ (a[0] & a[2]) ^ (a[1] & a[2]));
        memmove(a + 1, a, 7 * sizeof a[0]);
        a[4] += t1;
        a[0] = t1 + t2;
    }
    for (i = 0; i < 8; i++)
        h[i] += a[i];
}

void mcpf_sha256_init(mcpf_sha256 *s)
{
    static const uint32_t iv[8] = {0x6a09e667u, 0xbb67ae85u, 0x3c6ef372u, 0xa54ff53au,
                                   0x510e527fu, 0x9b05688cu, 0x1f83d9abu, 0x5be0cd19u};
    memcpy(s->h, iv, sizeof iv);
    s->bytes = 0;
}

void mcpf_sha256_update(mcpf_sha256 *s, const uint8_t *p, size_t n)
{
    while (n--) {
        s->block[s->bytes++ & 63u] = *p++;
        if ((s->bytes & 63u) == 0)
            compress(s->h, s->block);
    }
}

void mcpf_sha256_final(mcpf_sha256 *s, uint8_t out[32])
{
    uint64_t bits = s->bytes * 8u;
    uint8_t pad = 0x80;
    int i;
    mcpf_sha256_update(s, &pad, 1);
    pad = 0;
    while ((s->bytes & 63u) != 56u)
        mcpf_sha256_update(s, &pad, 1);
    for (i = 7; i >= 0; i--) {
        uint8_t b = (uint8_t)(bits >> (8 * i));
        mcpf_sha256_update(s, &b, 1);
    }
    for (i = 0; i < 32; i++)
        out[i] = (uint8_t)(s->h[i >> 2] >> (24 - 8 * (i & 3)));
}

/* tag = HMAC-SHA256(key, "MCPF" ‖ dir ‖ nonce ‖ hdr[0..5) ‖ data)[0..8):
 * hdr is version, length (2), cmd, seq as signed. */
static void tag(uint8_t out[8], const mcpf_key *key, uint8_t dir, const uint8_t nonce[8],
                const uint8_t hdr[5], const uint8_t *data, size_t n)
{
    mcpf_sha256 s;
    uint8_t pad[64], digest[32];
    int i;
    memset(pad, 0, sizeof pad);
    memcpy(pad, key->k, key->len);
    for (i = 0; i < 64; i++)
        pad[i] ^= 0x36u;
    mcpf_sha256_init(&s);
    mcpf_sha256_update(&s, pad, 64);
    mcpf_sha256_update(&s, (const uint8_t *)"MCPF", 4);
    mcpf_sha256_update(&s, &dir, 1);
    mcpf_sha256_update(&s, nonce, 8);
    mcpf_sha256_update(&s, hdr, 5);
    mcpf_sha256_update(&s, data, n);
    mcpf_sha256_final(&s, digest);
    for (i = 0; i < 64; i++)
        pad[i] ^= 0x36u ^ 0x5Cu;
    mcpf_sha256_init(&s);
    mcpf_sha256_update(&s, pad, 64);
    mcpf_sha256_update(&s, digest, 32);
    mcpf_sha256_final(&s, digest);
    memcpy(out, digest, 8);
}

size_t mcpf_sign(uint8_t *buf, size_t len, const mcpf_key *key, uint8_t dir,
                 const uint8_t nonce[8], uint8_t link_id, uint64_t counter)
{
    size_t n = len - MCPF_OVERHEAD, m = n + MCPF_SIG_BLOCK;
    uint8_t *d = buf + MCPF_HEADER;
    int i;
    if (len < MCPF_OVERHEAD || (buf[4] & MCPF_SIGNED) || m > MCPF_MAX_DATA || key->len < 16 ||
        key->len > 64 || counter >> 48)
        return 0;
    buf[2] = (uint8_t)(m >> 8);
    buf[3] = (uint8_t)m;
    buf[4] |= MCPF_SIGNED;
    d[n] = link_id;
    for (i = 0; i < 6; i++)
        d[n + 1 + i] = (uint8_t)(counter >> (40 - 8 * i));
    tag(d + n + 7, key, dir, nonce, buf + 1, d, n + 7);
    return mcpf_encode(buf, buf[1], buf[4], buf[5], d, (uint16_t)m);
}

int mcpf_replay_accept(mcpf_replay *w, uint64_t counter)
{
    uint64_t d;
    if (!w->started || counter > w->high) {
        d = counter - w->high;
        w->seen = (w->started && d < 64) ? (w->seen << d | 1u) : 1u;
        w->high = counter;
        w->started = 1;
        return 0;
    }
    d = w->high - counter;
    if (d >= 64)
        return -MCPF_ESTALE;
    if (w->seen >> d & 1u)
        return -MCPF_EREPLAY;
    w->seen |= (uint64_t)1u << d;
    return 0;
}

int mcpf_verify(mcpf_frame *f, const mcpf_key *key, uint8_t dir, const uint8_t nonce[8],
                mcpf_replay *w, uint8_t *link_id, uint64_t *counter)
{
    uint8_t hdr[5], want[8], diff = 0;
    const uint8_t *blk;
    uint64_t c = 0;
    int i, err;
    if (!(f->flags & MCPF_SIGNED) || f->len < MCPF_SIG_BLOCK || key->len < 16 || key->len > 64)
        return -MCPF_EUNSIGNED;
    hdr[0] = f->ver;
    hdr[1] = (uint8_t)(f->len >> 8);
    hdr[2] = (uint8_t)f->len;
    hdr[3] = (uint8_t)(f->cmd | f->flags);
    hdr[4] = f->seq;
    tag(want, key, dir, nonce, hdr, f->data, f->len - 8u);
    for (i = 0; i < 8; i++) /* constant time */
        diff |= (uint8_t)(want[i] ^ f->data[f->len - 8u + (unsigned)i]);
    if (diff)
        return -MCPF_EBADTAG;
    blk = f->data + f->len - MCPF_SIG_BLOCK;
    for (i = 1; i <= 6; i++)
        c = c << 8 | blk[i];
    if ((err = mcpf_replay_accept(w, c)) != 0)
        return err;
    if (link_id)
        *link_id = blk[0];
    if (counter)
        *counter = c;
    f->len = (uint16_t)(f->len - MCPF_SIG_BLOCK);
    f->flags &= (uint8_t)~MCPF_SIGNED;
    return 0;
}

#else
typedef int mcpf_sign_compiled_out; /* ISO C forbids an empty translation unit */
#endif
