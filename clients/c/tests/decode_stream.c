/* SPDX-License-Identifier: MIT
 * Decodes a byte stream from stdin with the C stream decoder (end of input
 * = end of stream) and prints each frame as hex on its own line, then
 * "skipped badcrc toolong". The Go test clients/c/e2e compares this with
 * serialproto.Decoder on random streams. */
#include <stdio.h>

#include "mcpf.h"

static void drain(mcpf_decoder *d, int e, mcpf_frame *f)
{
    static uint8_t wire[MCPF_MAX_FRAME];
    for (; e != MCPF_DEC_NONE; e = mcpf_dec_poll(d, f))
        if (e == MCPF_DEC_FRAME) {
            size_t i, n = mcpf_encode(wire, f->ver, (uint8_t)(f->cmd | f->flags), f->seq, f->data, f->len);
            for (i = 0; i < n; i++)
                printf("%02x", wire[i]);
            printf("\n");
        }
}

int main(void)
{
    static mcpf_decoder d;
    mcpf_frame f;
    int c;
    mcpf_dec_init(&d);
    while ((c = getchar()) != EOF)
        drain(&d, mcpf_dec_push(&d, (uint8_t)c, &f), &f);
    mcpf_dec_idle(&d);
    drain(&d, mcpf_dec_poll(&d, &f), &f);
    printf("%lu %lu %lu\n", (unsigned long)d.skipped, (unsigned long)d.badcrc, (unsigned long)d.toolong);
    return 0;
}
