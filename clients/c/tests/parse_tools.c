/* SPDX-License-Identifier: MIT
 * Parses device-tool bodies (docs/protocol.md §16) from stdin, one a line:
 * "CMD HEX" with CMD 15 (TOOLS), 16 (TOOL_CALL) or 17 (TOOL_RESULT), and
 * prints per line "ok", "malformed" or "too_large", what the C parser made
 * of it. The Go test clients/c/e2e compares this with serialproto's
 * parsers on random and mutated bodies. */
#include <stdio.h>
#include <string.h>

#include "mcpf.h"

static char line[8192];
static uint8_t body[4096];

static int hexval(char c)
{
    return c >= 'a' ? c - 'a' + 10 : c - '0';
}

int main(void)
{
    while (fgets(line, sizeof line, stdin)) {
        unsigned cmd;
        char *h = strchr(line, ' ');
        size_t n = 0;
        mcpf_tool_decl d[MCPF_MAX_TOOLS];
        mcpf_tool_call c;
        mcpf_tool_result r;
        uint8_t count;
        int err;
        if (!h || sscanf(line, "%u", &cmd) != 1)
            return 2;
        for (h++; h[0] && h[0] != '\n' && h[1] && n < sizeof body; h += 2)
            body[n++] = (uint8_t)(hexval(h[0]) << 4 | hexval(h[1]));
        if (cmd == MCPF_TOOLS)
            err = mcpf_parse_tools(body, n, d, MCPF_MAX_TOOLS, &count);
        else if (cmd == MCPF_TOOL_CALL)
            err = mcpf_parse_tool_call(body, n, &c);
        else if (cmd == MCPF_TOOL_RESULT)
            err = mcpf_parse_tool_result(body, n, &r);
        else
            return 2;
        puts(err == 0 ? "ok" : err == -MCPF_ETOO_LARGE ? "too_large" : "malformed");
    }
    return 0;
}
