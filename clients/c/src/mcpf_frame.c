/* SPDX-License-Identifier: MIT
 * Frame encode and datagram decode (docs/protocol.md §2, §7.2). */
#include <string.h>

#include "mcpf.h"

size_t mcpf_encode(uint8_t *out, uint8_t ver, uint8_t cmd_byte, uint8_t seq,
                   const uint8_t *data, uint16_t len)
{
    if (len > MCPF_MAX_DATA)
        return 0;
    if (len)
        memmove(out + MCPF_HEADER, data, len); /* data may already be there */
    out[0] = MCPF_MAGIC;
    out[1] = ver;
    out[2] = (uint8_t)(len >> 8);
    out[3] = (uint8_t)len;
    out[4] = cmd_byte;
    out[5] = seq;
    out[MCPF_HEADER + len] = mcpf_crc8(out + 1, (size_t)len + 5u);
    return (size_t)len + MCPF_OVERHEAD;
}

int mcpf_decode(const uint8_t *buf, size_t n, mcpf_frame *f)
{
    size_t len;
    if (n < MCPF_OVERHEAD)
        return -MCPF_ESHORT;
    if (buf[0] != MCPF_MAGIC)
        return -MCPF_EMAGIC;
    len = (size_t)buf[2] << 8 | buf[3];
    if (len > MCPF_MAX_DATA)
        return -MCPF_ELENGTH;
    if (n < len + MCPF_OVERHEAD)
        return -MCPF_ESHORT;
    if (n > len + MCPF_OVERHEAD)
        return -MCPF_ETRAILING;
    if (mcpf_crc8(buf + 1, len + 5u) != buf[n - 1])
        return -MCPF_ECRC;
    f->ver = buf[1];
    f->cmd = buf[4] & 0x3Fu;
    f->flags = buf[4] & 0xC0u;
    f->seq = buf[5];
    f->len = (uint16_t)len;
    f->data = buf + MCPF_HEADER;
    return 0;
}
