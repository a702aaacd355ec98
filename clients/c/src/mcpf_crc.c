/* SPDX-License-Identifier: MIT
 * CRC-8/AUTOSAR and CRC-32C (docs/protocol.md §2.3). */
#include "mcpf.h"

/* Bit by bit: 8 iterations a byte cost less flash than a 256-byte table,
 * and a frame is at most 262 bytes. */
uint8_t mcpf_crc8(const uint8_t *p, size_t n)
{
    uint8_t c = 0xFFu;
    while (n--) {
        int i;
        c ^= *p++;
        for (i = 0; i < 8; i++)
            c = (c & 0x80u) ? (uint8_t)((c << 1) ^ 0x2Fu) : (uint8_t)(c << 1);
    }
    return (uint8_t)(c ^ 0xFFu);
}

/* A 16-entry nibble table (64 bytes of flash), the spec's suggestion for
 * small MCUs: two lookups a byte. */
static const uint32_t crc32c_nibble[16] = {
    0x00000000u, 0x105EC76Fu, 0x20BD8EDEu, 0x30E349B1u, 0x417B1DBCu, 0x5125DAD3u,
    0x61C69362u, 0x7198540Du, 0x82F63B78u, 0x92A8FC17u, 0xA24BB5A6u, 0xB21572C9u,
    0xC38D26C4u, 0xD3D3E1ABu, 0xE330A81Au, 0xF36E6F75u,
};

uint32_t mcpf_crc32c(uint32_t crc, const uint8_t *p, size_t n)
{
    crc = ~crc;
    while (n--) {
        crc ^= *p++;
        crc = (crc >> 4) ^ crc32c_nibble[crc & 15u];
        crc = (crc >> 4) ^ crc32c_nibble[crc & 15u];
    }
    return ~crc;
}
