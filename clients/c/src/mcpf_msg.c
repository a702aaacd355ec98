/* SPDX-License-Identifier: MIT
 * Message bodies (docs/protocol.md §11): builders and checking parsers. */
#include <string.h>

#include "mcpf.h"

#define BAD (-MCPF_EMALFORMED)

static uint8_t *put16(uint8_t *p, uint16_t v)
{
    p[0] = (uint8_t)(v >> 8);
    p[1] = (uint8_t)v;
    return p + 2;
}

static uint8_t *put32(uint8_t *p, uint32_t v)
{
    p = put16(p, (uint16_t)(v >> 16));
    return put16(p, (uint16_t)v);
}

static uint16_t get16(const uint8_t *p) { return (uint16_t)(p[0] << 8 | p[1]); }

static uint32_t get32(const uint8_t *p) { return (uint32_t)get16(p) << 16 | get16(p + 2); }

static uint8_t *put_bytes(uint8_t *p, const uint8_t *s, size_t n)
{
    if (n)
        memcpy(p, s, n);
    return p + n;
}

int mcpf_utf8_valid(const uint8_t *p, size_t n)
{
    size_t i = 0;
    while (i < n) {
        uint8_t c = p[i], lo = 0x80, hi = 0xBF;
        size_t k, need;
        if (c < 0x80) {
            i++;
            continue;
        }
        if (c >= 0xC2 && c <= 0xDF)
            need = 1;
        else if (c >= 0xE0 && c <= 0xEF) {
            need = 2;
            if (c == 0xE0)
                lo = 0xA0; /* overlong */
            else if (c == 0xED)
                hi = 0x9F; /* surrogates */
        } else if (c >= 0xF0 && c <= 0xF4) {
            need = 3;
            if (c == 0xF0)
                lo = 0x90;
            else if (c == 0xF4)
                hi = 0x8F; /* above U+10FFFF */
        } else
            return 0;
        if (n - i <= need)
            return 0;
        for (k = 1; k <= need; k++) {
            uint8_t b = p[i + k];
            if (b < lo || b > hi)
                return 0;
            lo = 0x80;
            hi = 0xBF;
        }
        i += need + 1;
    }
    return 1;
}

static int device_id_ok(const uint8_t *p, size_t n)
{
    if (n < 1 || n > 64)
        return 0;
    while (n--) {
        uint8_t c = *p++;
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '.' || c == '_' || c == ':' || c == '-'))
            return 0;
    }
    return 1;
}

/* ------------------------------------------------------------------ HELLO */

size_t mcpf_put_hello(uint8_t *out, const mcpf_hello *m)
{
    uint8_t *p = out;
    *p++ = m->min_version;
    *p++ = m->max_version;
    p = put16(p, m->max_data);
    p = put16(p, m->features);
    *p++ = m->window;
    p = put32(p, m->boot_nonce);
    p = put_bytes(p, m->device_id, m->device_id_len);
    return (size_t)(p - out);
}

int mcpf_parse_hello(const uint8_t *b, size_t n, mcpf_hello *m)
{
    if (n < 12)
        return BAD;
    m->min_version = b[0];
    m->max_version = b[1];
    m->max_data = get16(b + 2);
    m->features = get16(b + 4);
    m->window = b[6];
    m->boot_nonce = get32(b + 7);
    m->device_id = b + 11;
    m->device_id_len = (uint8_t)(n - 11);
    if (m->min_version < 1 || m->min_version > m->max_version || m->max_data < 32 ||
        m->max_data > MCPF_MAX_DATA || m->window == 0 ||
        ((m->features & 1u) && m->max_data < 48) || !device_id_ok(b + 11, n - 11))
        return BAD;
    return 0;
}

/* ---------------------------------------------------------------- WELCOME */

size_t mcpf_put_welcome(uint8_t *out, const mcpf_welcome *m)
{
    uint8_t *p = out;
    *p++ = m->version;
    p = put16(p, m->max_data);
    p = put16(p, m->features);
    *p++ = m->window;
    p = put16(p, m->heartbeat_ms);
    p = put16(p, m->max_message);
    p = put32(p, m->daemon_nonce);
    return (size_t)(p - out);
}

int mcpf_parse_welcome(const uint8_t *b, size_t n, mcpf_welcome *m)
{
    if (n != 14)
        return BAD;
    m->version = b[0];
    m->max_data = get16(b + 1);
    m->features = get16(b + 3);
    m->window = b[5];
    m->heartbeat_ms = get16(b + 6);
    m->max_message = get16(b + 8);
    m->daemon_nonce = get32(b + 10);
    return 0;
}

/* ------------------------------------------------------------------ INFER */

/* Option value sizes by type 1..12: 0xFF a string, else the exact size. */
static const uint8_t opt_size[13] = {0, 0xFF, 2, 2, 4, 2, 2, 2, 2, 0, 0xFF, 4, 4};

/* The known option types in encoding order (ascending). */
static const uint8_t opt_order[] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, MCPF_OPT_SCHEMA, MCPF_OPT_SCHEMA_JSON,
                                    MCPF_OPT_TOOLS_ON};

static int opt_known(uint8_t t)
{
    return (t >= 1 && t <= MCPF_OPT_CONTEXT) || (t >= MCPF_OPT_SCHEMA && t <= MCPF_OPT_TOOLS_ON);
}

/* Size of option t's value: 0xFF a string, else exact. */
static uint8_t opt_sz(uint8_t t)
{
    if (t == MCPF_OPT_SCHEMA)
        return 1;
    if (t == MCPF_OPT_SCHEMA_JSON)
        return 0xFF;
    if (t == MCPF_OPT_TOOLS_ON)
        return 0;
    return opt_size[t];
}

/* Where option t's integer lives in m. */
static void *opt_field(mcpf_infer *m, uint8_t t)
{
    switch (t) {
    case MCPF_OPT_MAX_TOKENS: return &m->max_tokens;
    case MCPF_OPT_TEMPERATURE: return &m->temperature;
    case MCPF_OPT_SEED: return &m->seed;
    case MCPF_OPT_TOP_K: return &m->top_k;
    case MCPF_OPT_TOP_P: return &m->top_p;
    case MCPF_OPT_MIN_P: return &m->min_p;
    case MCPF_OPT_REPEAT_PENALTY: return &m->repeat_penalty;
    case MCPF_OPT_DEADLINE_MS: return &m->deadline_ms;
    default: return &m->context;
    }
}

size_t mcpf_put_infer(uint8_t *out, size_t cap, const mcpf_infer *m)
{
    uint8_t *p = out + 1, t;
    size_t used, k;
    for (k = 0; k < sizeof opt_order; k++) {
        const uint8_t *s = NULL;
        uint8_t sz;
        t = opt_order[k];
        sz = opt_sz(t);
        if (!(m->present & MCPF_HAS(t)))
            continue;
        if (t == MCPF_OPT_MODEL) {
            s = m->model;
            sz = m->model_len;
        } else if (t == MCPF_OPT_SYSTEM) {
            s = m->system;
            sz = m->system_len;
        } else if (t == MCPF_OPT_SCHEMA_JSON) {
            s = m->schema_json;
            sz = m->schema_json_len;
        } else if (t == MCPF_OPT_SCHEMA) {
            s = &m->schema;
        }
        used = (size_t)(p - out) + 2u + sz;
        if (used > 256u || used > cap) /* the options block is at most 255 bytes */
            return 0;
        *p++ = t;
        *p++ = sz;
        if (s)
            p = put_bytes(p, s, sz);
        else if (sz == 2)
            p = put16(p, *(const uint16_t *)opt_field((mcpf_infer *)m, t));
        else if (sz == 4)
            p = put32(p, *(const uint32_t *)opt_field((mcpf_infer *)m, t));
    }
    used = (size_t)(p - out);
    if (used > cap || m->prompt_len > cap - used)
        return 0;
    out[0] = (uint8_t)(used - 1u);
    put_bytes(p, m->prompt, m->prompt_len);
    return used + m->prompt_len;
}

int mcpf_parse_infer(const uint8_t *b, size_t n, mcpf_infer *m)
{
    size_t i, end;
    int critical = 0;
    memset(m, 0, sizeof *m);
    if (n < 2 || (size_t)b[0] + 1 >= n)
        return BAD;
    end = (size_t)b[0] + 1;
    for (i = 1; i < end;) {
        uint8_t t, len;
        const uint8_t *v;
        if (end - i < 2 || end - i - 2 < b[i + 1])
            return BAD;
        t = b[i];
        len = b[i + 1];
        v = b + i + 2;
        i += 2u + len;
        if (!opt_known(t)) {
            if (t & 0x80u)
                critical = 1;
            continue; /* an unknown hint is skipped */
        }
        if (m->present & MCPF_HAS(t))
            return BAD;
        m->present |= MCPF_HAS(t);
        if (opt_sz(t) == 0xFF) {
            if (len == 0 || len > (t == MCPF_OPT_MODEL ? 128 : 253) || !mcpf_utf8_valid(v, len))
                return BAD;
            if (t == MCPF_OPT_MODEL) {
                m->model = v;
                m->model_len = len;
            } else if (t == MCPF_OPT_SCHEMA_JSON) {
                m->schema_json = v;
                m->schema_json_len = len;
            } else {
                m->system = v;
                m->system_len = len;
            }
        } else if (len != opt_sz(t))
            return BAD;
        else if (t == MCPF_OPT_SCHEMA)
            m->schema = v[0];
        else if (len == 2)
            *(uint16_t *)opt_field(m, t) = get16(v);
        else if (len == 4)
            *(uint32_t *)opt_field(m, t) = get32(v);
    }
    m->prompt = b + end;
    m->prompt_len = n - end;
    if (!mcpf_utf8_valid(m->prompt, m->prompt_len))
        return BAD;
    return critical ? -MCPF_EUNSUPPORTED_OPTION : 0;
}

/* --------------------------------------------------- TOKEN, DONE, ERROR */

size_t mcpf_put_token(uint8_t *out, const mcpf_token *m)
{
    put16(out, m->chunk);
    return (size_t)(put_bytes(out + 2, m->text, m->len) - out);
}

int mcpf_parse_token(const uint8_t *b, size_t n, mcpf_token *m)
{
    if (n < 3 || !mcpf_utf8_valid(b + 2, n - 2))
        return BAD;
    m->chunk = get16(b);
    m->text = b + 2;
    m->len = (uint16_t)(n - 2);
    return 0;
}

size_t mcpf_put_done(uint8_t *out, const mcpf_done *m)
{
    uint8_t *p = put16(out, m->chunk);
    *p++ = m->reason;
    p = put32(p, m->tokens);
    p = put32(p, m->prompt_tokens);
    p = put32(p, m->ttft_ms);
    p = put32(p, m->duration_ms);
    p = put32(p, m->text_bytes);
    p = put32(p, m->text_crc32c);
    return (size_t)(p - out);
}

int mcpf_parse_done(const uint8_t *b, size_t n, mcpf_done *m)
{
    if (n != 27)
        return BAD;
    m->chunk = get16(b);
    m->reason = b[2];
    m->tokens = get32(b + 3);
    m->prompt_tokens = get32(b + 7);
    m->ttft_ms = get32(b + 11);
    m->duration_ms = get32(b + 15);
    m->text_bytes = get32(b + 19);
    m->text_crc32c = get32(b + 23);
    return 0;
}

size_t mcpf_put_error(uint8_t *out, const mcpf_error *m)
{
    out[0] = m->code;
    out[1] = m->flags;
    put16(out + 2, m->chunk);
    return (size_t)(put_bytes(out + 4, m->text, m->len) - out);
}

int mcpf_parse_error(const uint8_t *b, size_t n, mcpf_error *m)
{
    if (n < 4 || n > 68 || !mcpf_utf8_valid(b + 4, n - 4))
        return BAD;
    m->code = b[0];
    m->flags = b[1];
    m->chunk = get16(b + 2);
    m->text = b + 4;
    m->len = (uint8_t)(n - 4);
    return 0;
}

/* -------------------------------------------------------------- ACK, NACK */

size_t mcpf_put_ack(uint8_t *out, const mcpf_ack *m)
{
    put16(out, m->next);
    out[2] = m->window;
    return (size_t)(put_bytes(out + 3, m->sack, m->sack_len) - out);
}

int mcpf_parse_ack(const uint8_t *b, size_t n, mcpf_ack *m)
{
    if (n < 3 || n > 3 + MCPF_MAX_SACK || (n > 3 && b[n - 1] == 0))
        return BAD;
    m->next = get16(b);
    m->window = b[2];
    m->sack = b + 3;
    m->sack_len = (uint8_t)(n - 3);
    return 0;
}

size_t mcpf_put_nack(uint8_t *out, const mcpf_nack *m)
{
    out[0] = m->reason;
    return (size_t)(put_bytes(out + 1, m->indexes, m->count) - out);
}

int mcpf_parse_nack(const uint8_t *b, size_t n, mcpf_nack *m)
{
    size_t i;
    if (n < 1 || n > 65 || b[0] < 1 || b[0] > 3 || (b[0] == MCPF_NACK_MISSING) != (n > 1))
        return BAD;
    for (i = 2; i < n; i++)
        if (b[i] <= b[i - 1])
            return BAD;
    m->reason = b[0];
    m->indexes = b + 1;
    m->count = (uint8_t)(n - 1);
    return 0;
}

/* ------------------------------------------------------------ STATUS_REPLY */

#define STATUS_EXT_MARKER 0xFFu /* byte 3 of the extended layout (§11.11) */
#define CACHE_FIGURES_LEN 20u

static uint8_t *put_figures(uint8_t *p, uint8_t type, const mcpf_cache_figures *f)
{
    *p++ = type;
    *p++ = CACHE_FIGURES_LEN;
    p = put32(p, f->hits);
    p = put32(p, f->misses);
    p = put32(p, f->evictions);
    p = put32(p, (uint32_t)(f->bytes >> 32));
    return put32(p, (uint32_t)f->bytes);
}

static void get_figures(const uint8_t *v, mcpf_cache_figures *f)
{
    f->hits = get32(v);
    f->misses = get32(v + 4);
    f->evictions = get32(v + 8);
    f->bytes = (uint64_t)get32(v + 12) << 32 | get32(v + 16);
}

size_t mcpf_put_status_reply(uint8_t *out, const mcpf_status_reply *m)
{
    uint8_t *p = out;
    *p++ = m->state;
    *p++ = m->load;
    *p++ = m->queue;
    if (!m->extended) {
        *p++ = m->backend_len;
        p = put_bytes(p, m->backend, m->backend_len);
        p = put_bytes(p, m->model, m->model_len);
        return (size_t)(p - out);
    }
    *p++ = STATUS_EXT_MARKER;
    *p++ = m->backend_len;
    p = put_bytes(p, m->backend, m->backend_len);
    *p++ = (uint8_t)m->model_len;
    p = put_bytes(p, m->model, m->model_len);
    if (m->has & MCPF_STATUS_KV)
        p = put_figures(p, 0x01, &m->kv);
    if (m->has & MCPF_STATUS_RESPONSES)
        p = put_figures(p, 0x02, &m->responses);
    return (size_t)(p - out);
}

/* The extended layout after its marker: both names with a length byte,
 * then fields (type, len, value) to the end; unknown types are skipped, a
 * known one has 20 bytes and comes once. */
static int parse_status_ext(const uint8_t *b, size_t n, mcpf_status_reply *m)
{
    size_t i = 0;
    if (n < 1 || n - 1 < b[0])
        return BAD;
    m->backend = b + 1;
    m->backend_len = b[0];
    i = 1u + b[0];
    if (n - i < 1 || n - i - 1 < b[i])
        return BAD;
    m->model = b + i + 1;
    m->model_len = b[i];
    i += 1u + b[i];
    while (i < n) {
        uint8_t type, len, bit;
        if (n - i < 2 || n - i - 2 < b[i + 1])
            return BAD;
        type = b[i];
        len = b[i + 1];
        i += 2;
        bit = type == 0x01 ? MCPF_STATUS_KV : type == 0x02 ? MCPF_STATUS_RESPONSES : 0;
        if (bit) {
            if (len != CACHE_FIGURES_LEN || (m->has & bit))
                return BAD;
            get_figures(b + i, bit == MCPF_STATUS_KV ? &m->kv : &m->responses);
            m->has |= bit;
        }
        i += len;
    }
    return 0;
}

int mcpf_parse_status_reply(const uint8_t *b, size_t n, mcpf_status_reply *m)
{
    if (n < 4 || b[1] > 100)
        return BAD;
    memset(m, 0, sizeof *m);
    m->state = b[0];
    m->load = b[1];
    m->queue = b[2];
    if (b[3] == STATUS_EXT_MARKER) {
        m->extended = 1;
        if (parse_status_ext(b + 4, n - 4, m) < 0)
            return BAD;
    } else {
        if (n - 4 < b[3])
            return BAD;
        m->backend = b + 4;
        m->backend_len = b[3];
        m->model = b + 4 + b[3];
        m->model_len = (uint16_t)(n - 4 - b[3]);
    }
    if (!mcpf_utf8_valid(m->backend, m->backend_len) || !mcpf_utf8_valid(m->model, m->model_len))
        return BAD;
    return 0;
}

int mcpf_parse_opaque(uint8_t cmd, size_t n)
{
    if (cmd == MCPF_PING || cmd == MCPF_PONG)
        return n <= 8 ? 0 : BAD;
    return n == 0 ? 0 : BAD;
}
