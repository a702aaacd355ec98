/* SPDX-License-Identifier: MIT
 * The smallest useful firmware: bytes from a UART data register go through
 * the stream decoder; every PING is answered with a PONG. Codec + decoder
 * only, linked with --gc-sections to measure what they cost. */
#include "mcpf.h"

#define UART_DATA (*(volatile uint8_t *)0x40004000u)
#define UART_READY (*(volatile uint8_t *)0x40004004u)

static mcpf_decoder dec;
static uint8_t tx[MCPF_OVERHEAD + 8]; /* the largest frame it sends: a PONG */

int main(void)
{
    mcpf_frame f;
    mcpf_dec_init(&dec);
    for (;;) {
        size_t i, n;
        if (!UART_READY)
            continue;
        if (mcpf_dec_push(&dec, UART_DATA, &f) != MCPF_DEC_FRAME || f.cmd != MCPF_PING || f.len > 8)
            continue;
        n = mcpf_encode(tx, MCPF_VERSION, MCPF_PONG, f.seq, f.data, f.len);
        for (i = 0; i < n; i++)
            UART_DATA = tx[i];
    }
}

void Reset_Handler(void) { (void)main(); }
