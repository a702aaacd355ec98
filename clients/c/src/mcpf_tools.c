/* SPDX-License-Identifier: MIT
 * The device tools' bodies (docs/protocol.md §16): TOOLS from a table of
 * declarations, TOOL_CALL, TOOL_RESULT, and a flat-JSON lookup for a
 * handler's arguments. */
#include <string.h>

#include "mcpf.h"

#define BAD (-MCPF_EMALFORMED)

static int name_ok(const uint8_t *p, size_t n)
{
    if (n < 1 || n > MCPF_TOOL_NAME_MAX)
        return 0;
    while (n--) {
        uint8_t c = *p++;
        if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_' || c == '-'))
            return 0;
    }
    return 1;
}

/* One line of UTF-8, at most 160 bytes. */
static int desc_ok(const uint8_t *p, size_t n)
{
    return n == 0 || (n <= MCPF_TOOL_DESC_MAX && mcpf_utf8_valid(p, n) && !memchr(p, '\n', n) && !memchr(p, '\r', n));
}

static int schema_ok(const uint8_t *p, size_t n)
{
    return n <= MCPF_TOOL_SCHEMA_MAX && mcpf_utf8_valid(p, n);
}

static size_t slen(const char *s) { return s ? strlen(s) : 0; }

int mcpf_tools_check(const mcpf_tool *t, uint8_t n)
{
    uint8_t i, j;
    if (!t || n < 1 || n > MCPF_MAX_TOOLS)
        return BAD;
    for (i = 0; i < n; i++) {
        size_t nl = slen(t[i].name), dl = slen(t[i].desc);
        if (!name_ok((const uint8_t *)t[i].name, nl) || !desc_ok((const uint8_t *)t[i].desc, dl) ||
            !schema_ok((const uint8_t *)t[i].schema, slen(t[i].schema)))
            return BAD;
        for (j = 0; j < i; j++)
            if (strcmp(t[i].name, t[j].name) == 0)
                return BAD;
    }
    return 0;
}

/* A walk over the TOOLS body, piece by piece: counts its bytes, copies
 * those in [off, end) to out, or feeds them to the CRC-32C. */
typedef struct walk {
    size_t pos, off, end;
    uint8_t *out;
    uint8_t crc_on;
    uint32_t crc;
} walk;

static void take(walk *w, const void *p, size_t n)
{
    if (n == 0) /* p may be NULL */
        return;
    if (w->out && w->pos < w->end && w->pos + n > w->off) {
        size_t a = w->pos > w->off ? w->pos : w->off, b = w->pos + n < w->end ? w->pos + n : w->end;
        memcpy(w->out + (a - w->off), (const uint8_t *)p + (a - w->pos), b - a);
    }
    if (w->crc_on)
        w->crc = mcpf_crc32c(w->crc, (const uint8_t *)p, n);
    w->pos += n;
}

/* u8 count, then per tool u8 name_len, name, u8 desc_len, desc,
 * u16 schema_len, schema. The table must pass mcpf_tools_check. */
static void walk_tools(walk *w, const mcpf_tool *t, uint8_t n)
{
    uint8_t h[2], i;
    take(w, &n, 1);
    for (i = 0; i < n; i++) {
        size_t nl = slen(t[i].name), dl = slen(t[i].desc), sl = slen(t[i].schema);
        h[0] = (uint8_t)nl;
        take(w, h, 1);
        take(w, t[i].name, nl);
        h[0] = (uint8_t)dl;
        take(w, h, 1);
        take(w, t[i].desc, dl);
        h[0] = (uint8_t)(sl >> 8);
        h[1] = (uint8_t)sl;
        take(w, h, 2);
        take(w, t[i].schema, sl);
    }
}

size_t mcpf_tools_size(const mcpf_tool *t, uint8_t n)
{
    walk w;
    memset(&w, 0, sizeof w);
    walk_tools(&w, t, n);
    return w.pos;
}

void mcpf_tools_read(const mcpf_tool *t, uint8_t n, size_t off, uint8_t *out, size_t len)
{
    walk w;
    memset(&w, 0, sizeof w);
    w.off = off;
    w.end = off + len;
    w.out = out;
    walk_tools(&w, t, n);
}

uint32_t mcpf_tools_crc32c(const mcpf_tool *t, uint8_t n)
{
    walk w;
    memset(&w, 0, sizeof w);
    w.crc_on = 1;
    walk_tools(&w, t, n);
    return w.crc;
}

size_t mcpf_put_tools(uint8_t *out, size_t cap, const mcpf_tool *t, uint8_t n)
{
    size_t size;
    if (mcpf_tools_check(t, n) < 0 || (size = mcpf_tools_size(t, n)) > cap)
        return 0;
    mcpf_tools_read(t, n, 0, out, size);
    return size;
}

int mcpf_parse_tools(const uint8_t *b, size_t n, mcpf_tool_decl *out, uint8_t max, uint8_t *count)
{
    size_t i = 1;
    uint8_t k, j, c;
    if (n < 1 || b[0] < 1 || b[0] > MCPF_MAX_TOOLS || b[0] > max)
        return BAD;
    c = b[0];
    for (k = 0; k < c; k++) {
        mcpf_tool_decl *d = &out[k];
        if (n - i < 1 || n - i - 1 < b[i])
            return BAD;
        d->name_len = b[i];
        d->name = b + i + 1;
        i += 1u + b[i];
        if (n - i < 1 || n - i - 1 < b[i])
            return BAD;
        d->desc_len = b[i];
        d->desc = b + i + 1;
        i += 1u + b[i];
        if (n - i < 2)
            return BAD;
        d->schema_len = (uint16_t)(b[i] << 8 | b[i + 1]);
        d->schema = b + i + 2;
        if (n - i - 2 < d->schema_len)
            return BAD;
        i += 2u + d->schema_len;
        if (!name_ok(d->name, d->name_len) || !desc_ok(d->desc, d->desc_len) ||
            !schema_ok(d->schema, d->schema_len))
            return BAD;
        for (j = 0; j < k; j++)
            if (out[j].name_len == d->name_len && !memcmp(out[j].name, d->name, d->name_len))
                return BAD;
    }
    if (i != n)
        return BAD;
    *count = c;
    return 0;
}

static int printable(const uint8_t *p, size_t n)
{
    while (n--) {
        if (*p < 0x20 || *p > 0x7E)
            return 0;
        p++;
    }
    return 1;
}

size_t mcpf_put_tool_call(uint8_t *out, const mcpf_tool_call *m)
{
    if (m->tool >= MCPF_MAX_TOOLS || !printable(m->args, m->args_len))
        return 0;
    out[0] = (uint8_t)(m->chunk >> 8);
    out[1] = (uint8_t)m->chunk;
    out[2] = m->call;
    out[3] = m->tool;
    if (m->args_len)
        memcpy(out + 4, m->args, m->args_len);
    return 4u + m->args_len;
}

int mcpf_parse_tool_call(const uint8_t *b, size_t n, mcpf_tool_call *m)
{
    if (n < 4 || n > 4u + 0xFFFFu || b[3] >= MCPF_MAX_TOOLS || !printable(b + 4, n - 4))
        return BAD;
    m->chunk = (uint16_t)(b[0] << 8 | b[1]);
    m->call = b[2];
    m->tool = b[3];
    m->args = b + 4;
    m->args_len = (uint16_t)(n - 4);
    return 0;
}

size_t mcpf_put_tool_result(uint8_t *out, const mcpf_tool_result *m)
{
    if (m->status > MCPF_TOOL_FAILED || m->len > MCPF_TOOL_RESULT_MAX || !mcpf_utf8_valid(m->result, m->len))
        return 0;
    out[0] = m->call;
    out[1] = m->status;
    if (m->len)
        memcpy(out + 2, m->result, m->len);
    return 2u + m->len;
}

int mcpf_parse_tool_result(const uint8_t *b, size_t n, mcpf_tool_result *m)
{
    if (n < 2 || b[1] > MCPF_TOOL_FAILED)
        return BAD;
    if (n - 2 > MCPF_TOOL_RESULT_MAX)
        return -MCPF_ETOO_LARGE;
    if (!mcpf_utf8_valid(b + 2, n - 2))
        return BAD;
    m->call = b[0];
    m->status = b[1];
    m->result = b + 2;
    m->len = (uint16_t)(n - 2);
    return 0;
}

/* ------------------------------------------------------ flat JSON lookup */

static size_t skip_ws(const char *p, size_t i, size_t n)
{
    while (i < n && (p[i] == ' ' || p[i] == '\t' || p[i] == '\n' || p[i] == '\r'))
        i++;
    return i;
}

/* The end (one past) of the value starting at i, or n if it never ends. */
static size_t value_end(const char *p, size_t i, size_t n)
{
    unsigned depth = 0;
    int str = 0;
    for (; i < n; i++) {
        char c = p[i];
        if (str) {
            if (c == '\\')
                i++;
            else if (c == '"') {
                str = 0;
                if (depth == 0)
                    return i + 1;
            }
        } else if (c == '"')
            str = 1;
        else if (c == '{' || c == '[')
            depth++;
        else if (c == '}' || c == ']') {
            if (depth == 0)
                return i; /* the end of the enclosing object */
            if (--depth == 0)
                return i + 1;
        } else if (depth == 0 && (c == ',' || c == ' ' || c == '\t' || c == '\n' || c == '\r'))
            return i;
    }
    return n;
}

const char *mcpf_json_get(const char *json, size_t len, const char *key, size_t *vlen)
{
    size_t i = skip_ws(json, 0, len), kl = strlen(key);
    if (i >= len || json[i] != '{')
        return NULL;
    for (i++;;) {
        size_t k, v, e;
        i = skip_ws(json, i, len);
        if (i >= len || json[i] != '"')
            return NULL;
        k = i + 1;
        i = value_end(json, i, len); /* one past the key's closing quote */
        if (i >= len || i < k + 1)
            return NULL;
        v = skip_ws(json, i, len);
        if (v >= len || json[v] != ':')
            return NULL;
        v = skip_ws(json, v + 1, len);
        e = value_end(json, v, len);
        if (e == v || e > len)
            return NULL;
        if (i - 1 - k == kl && memcmp(json + k, key, kl) == 0) {
            *vlen = e - v;
            return json + v;
        }
        i = skip_ws(json, e, len);
        if (i >= len || json[i] != ',')
            return NULL;
        i++;
    }
}
