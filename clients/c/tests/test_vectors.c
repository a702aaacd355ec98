/* SPDX-License-Identifier: MIT
 *
 * Checks the C library against serialproto/testdata/vectors.txt, the
 * vectors the Go reference implementation is checked against (docs/
 * protocol.md §15) and testdata/tools_vectors.txt (§16): every vector is
 * decoded and re-encoded, and Go and C must agree byte for byte.
 * Usage: test_vectors PATH/vectors.txt [PATH/tools_vectors.txt ...]
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mcpf.h"

static int failures, checked;
static char line[16384];
static const char *vname;

#define FAIL(...)                                                                                  \
    do {                                                                                           \
        failures++;                                                                                \
        fprintf(stderr, "FAIL %s: ", vname);                                                       \
        fprintf(stderr, __VA_ARGS__);                                                              \
        fprintf(stderr, "\n");                                                                     \
    } while (0)

/* The value of key in the current line, or NULL; *n its length. */
static const char *field(const char *key, size_t *n)
{
    size_t k = strlen(key);
    const char *p = line;
    while ((p = strstr(p, key)) != NULL) {
        if ((p == line || p[-1] == ' ') && p[k] == '=') {
            const char *v = p + k + 1;
            *n = strcspn(v, " \n");
            return v;
        }
        p += k;
    }
    return NULL;
}

static int has(const char *key)
{
    size_t n;
    return field(key, &n) != NULL;
}

static unsigned long num(const char *key)
{
    size_t n;
    const char *v = field(key, &n);
    if (!v) {
        FAIL("no field %s", key);
        return 0;
    }
    return strtoul(v, NULL, 10);
}

static int hexval(char c)
{
    return c >= 'a' ? c - 'a' + 10 : c - '0';
}

/* Decodes hex from p (n digits) into out; returns the byte count. */
static size_t unhex(const char *p, size_t n, uint8_t *out)
{
    size_t i;
    for (i = 0; i + 1 < n; i += 2)
        out[i / 2] = (uint8_t)(hexval(p[i]) << 4 | hexval(p[i + 1]));
    return n / 2;
}

static size_t hexf(const char *key, uint8_t *out)
{
    size_t n;
    const char *v = field(key, &n);
    if (!v) {
        FAIL("no field %s", key);
        return 0;
    }
    return unhex(v, n, out);
}

static int same(const char *what, const uint8_t *a, size_t an, const uint8_t *b, size_t bn)
{
    size_t i;
    if (an == bn && (an == 0 || memcmp(a, b, an) == 0))
        return 1;
    FAIL("%s differs", what);
    fprintf(stderr, "  got  ");
    for (i = 0; i < an; i++)
        fprintf(stderr, "%02x", a[i]);
    fprintf(stderr, "\n  want ");
    for (i = 0; i < bn; i++)
        fprintf(stderr, "%02x", b[i]);
    fprintf(stderr, "\n");
    return 0;
}

static void want_num(const char *key, unsigned long got)
{
    unsigned long want = num(key);
    if (got != want)
        FAIL("%s = %lu, want %lu", key, got, want);
}

static void want_hex(const char *key, const uint8_t *p, size_t n)
{
    static uint8_t want[4096];
    size_t wn = hexf(key, want);
    same(key, p, n, want, wn);
}

/* A STATUS_REPLY cache field: "hits,misses,evictions,bytes" (§15). */
static int figures(const char *key, mcpf_cache_figures *f)
{
    size_t n;
    const char *v = field(key, &n);
    char *end;
    if (!v)
        return 0;
    f->hits = (uint32_t)strtoul(v, &end, 10);
    f->misses = (uint32_t)strtoul(end + 1, &end, 10);
    f->evictions = (uint32_t)strtoul(end + 1, &end, 10);
    f->bytes = (uint64_t)strtoull(end + 1, &end, 10);
    return 1;
}

static void want_figures(const char *key, int present, const mcpf_cache_figures *got)
{
    mcpf_cache_figures want;
    if (!!present != figures(key, &want))
        FAIL("%s %s", key, present ? "parsed but not in the vector" : "missing");
    else if (present && (got->hits != want.hits || got->misses != want.misses ||
                         got->evictions != want.evictions || got->bytes != want.bytes))
        FAIL("%s = %lu,%lu,%lu,%llu", key, (unsigned long)got->hits, (unsigned long)got->misses,
             (unsigned long)got->evictions, (unsigned long long)got->bytes);
}

static int err_class(const char *cls)
{
    static const char *names[] = {"", "short", "magic", "length", "trailing", "crc", "malformed",
                                  "unsupported_option", "too_large", "bad_checksum", "unsigned",
                                  "badtag", "replay", "stale"};
    int i;
    for (i = 1; i < (int)(sizeof names / sizeof names[0]); i++)
        if (strcmp(cls, names[i]) == 0)
            return i;
    return -1;
}

static int want_err(void)
{
    size_t n;
    char cls[32];
    const char *v = field("err", &n);
    if (!v || n >= sizeof cls)
        return -1;
    memcpy(cls, v, n);
    cls[n] = 0;
    return err_class(cls);
}

/* ------------------------------------------------------------------ crc */

static void check_crc(void)
{
    static uint8_t in[4096];
    size_t n = hexf("in", in), k;
    const char *alg = field("alg", &k);
    unsigned long want = strtoul(field("out", &k), NULL, 16);
    if (strncmp(alg, "crc8", 4) == 0) {
        if (mcpf_crc8(in, n) != want)
            FAIL("crc8 %02x, want %02lx", mcpf_crc8(in, n), want);
    } else {
        uint32_t one = mcpf_crc32c(0, in, n), split = mcpf_crc32c(mcpf_crc32c(0, in, n / 3), in + n / 3, n - n / 3);
        if (one != want || split != want)
            FAIL("crc32c %08lx (split %08lx), want %08lx", (unsigned long)one, (unsigned long)split, want);
    }
}

/* ---------------------------------------------------------------- frame */

static void check_frame(void)
{
    static uint8_t wire[1024], data[512], out[MCPF_MAX_FRAME];
    size_t n = hexf("hex", wire), dn, on;
    mcpf_frame f;
    int err = mcpf_decode(wire, n, &f);
    if (num("ok") == 0) {
        if (err != -want_err())
            FAIL("decode returned %d, want -%d", err, want_err());
        return;
    }
    if (err) {
        FAIL("decode: %d", err);
        return;
    }
    want_num("ver", f.ver);
    want_num("cmd", f.cmd);
    want_num("flags", f.flags);
    want_num("seq", f.seq);
    dn = hexf("data", data);
    same("data", f.data, f.len, data, dn);
    on = mcpf_encode(out, (uint8_t)num("ver"), (uint8_t)(num("cmd") | num("flags")), (uint8_t)num("seq"), data, (uint16_t)dn);
    same("encoded", out, on, wire, n);
}

/* --------------------------------------------------------------- stream */

static void check_stream(void)
{
    static uint8_t in[8192], got[8192], want[8192], wire[MCPF_MAX_FRAME];
    static mcpf_decoder d;
    size_t n = hexf("hex", in), i, gn = 0, wn = 0, k;
    const char *p = field("frames", &k), *end = p + k;
    mcpf_frame f;
    int ev;
    mcpf_dec_init(&d);
    for (i = 0; i <= n; i++) {
        if (i < n)
            ev = mcpf_dec_push(&d, in[i], &f);
        else {
            mcpf_dec_idle(&d); /* end of input (§7.1 step 5) */
            ev = mcpf_dec_poll(&d, &f);
        }
        for (; ev != MCPF_DEC_NONE; ev = mcpf_dec_poll(&d, &f))
            if (ev == MCPF_DEC_FRAME) {
                size_t fl = mcpf_encode(wire, f.ver, (uint8_t)(f.cmd | f.flags), f.seq, f.data, f.len);
                memcpy(got + gn, wire, fl);
                gn += fl;
            }
    }
    while (p < end) { /* frames=a,b,c: compare the concatenation */
        size_t c = strcspn(p, ", \n");
        if (c > (size_t)(end - p))
            c = (size_t)(end - p);
        wn += unhex(p, c, want + wn);
        p += c + (p + c < end);
    }
    same("frames", got, gn, want, wn);
    want_num("skipped", d.skipped);
    want_num("badcrc", d.badcrc);
    want_num("toolong", d.toolong);
    if (gn + d.skipped != n) /* every byte is in a frame or skipped */
        FAIL("bytes in frames %lu + skipped %lu != %lu", (unsigned long)gn, (unsigned long)d.skipped, (unsigned long)n);
}

/* ------------------------------------------------------------------ msg */

static const char *cmd_names[] = {"", "HELLO", "WELCOME", "PING", "PONG", "INFER", "TOKEN", "DONE",
                                  "ERROR", "CANCEL", "ACK", "NACK", "STATUS", "STATUS_REPLY", "BYE",
                                  "TOOLS", "TOOL_CALL", "TOOL_RESULT"};

static int cmd_code(void)
{
    size_t n;
    const char *v = field("cmd", &n);
    int i;
    for (i = 1; i < (int)(sizeof cmd_names / sizeof cmd_names[0]); i++)
        if (strlen(cmd_names[i]) == n && strncmp(v, cmd_names[i], n) == 0)
            return i;
    return -1;
}

static const char *opt_names[] = {"", "model", "max_tokens", "temperature", "seed", "top_k", "top_p",
                                  "min_p", "repeat_penalty", "new_chat", "system", "deadline_ms", "context",
                                  "schema", "schema_json", "tools_on"};

/* Option type of opt_names[i]: 1..12, then the critical 0x81..0x83. */
static int opt_type(int i) { return i <= MCPF_OPT_CONTEXT ? i : 0x80 + (i - MCPF_OPT_CONTEXT); }
#define N_OPTS ((int)(sizeof opt_names / sizeof opt_names[0]))

/* Item i of a comma-separated list of hex strings in field key, decoded
 * into out as a C string (the tool table's form); -1 if there is none. */
static int list_item(const char *key, int i, char *out)
{
    size_t n, k;
    const char *v = field(key, &n), *end;
    if (!v)
        return -1;
    end = v + n;
    for (; i > 0; i--) {
        const char *c = memchr(v, ',', (size_t)(end - v));
        if (!c)
            return -1;
        v = c + 1;
    }
    k = strcspn(v, ", \n");
    if (k > (size_t)(end - v))
        k = (size_t)(end - v);
    out[unhex(v, k, (uint8_t *)out)] = 0;
    return 0;
}

/* TOOLS from its names/descs/schemas lists, through the table the session
 * declares from: NUL-terminated strings, serialised on the fly. */
static size_t build_tools(uint8_t *out, char *bufs)
{
    mcpf_tool t[MCPF_MAX_TOOLS];
    int i;
    memset(t, 0, sizeof t);
    for (i = 0; i < (int)MCPF_MAX_TOOLS && list_item("names", i, bufs) == 0; i++) {
        t[i].name = bufs;
        bufs += strlen(bufs) + 1;
        t[i].desc = bufs;
        if (list_item("descs", i, bufs) < 0)
            FAIL("descs has no item %d", i);
        bufs += strlen(bufs) + 1;
        t[i].schema = bufs;
        if (list_item("schemas", i, bufs) < 0)
            FAIL("schemas has no item %d", i);
        bufs += strlen(bufs) + 1;
    }
    if (has("count"))
        want_num("count", (unsigned long)i);
    return mcpf_put_tools(out, 4096, t, (uint8_t)i);
}

/* Builds the message from the vector's fields into out; returns its length.
 * bufs holds the byte strings the message points to. */
static size_t build(int cmd, uint8_t *out, uint8_t *bufs)
{
    union {
        mcpf_hello hello; mcpf_welcome welcome; mcpf_infer infer; mcpf_token token; mcpf_done done;
        mcpf_error error; mcpf_ack ack; mcpf_nack nack; mcpf_status_reply status;
        mcpf_tool_call call; mcpf_tool_result result;
    } m;
    size_t n;
    memset(&m, 0, sizeof m);
    switch (cmd) {
    case MCPF_HELLO:
        m.hello.min_version = (uint8_t)num("min_version");
        m.hello.max_version = (uint8_t)num("max_version");
        m.hello.max_data = (uint16_t)num("max_data");
        m.hello.features = (uint16_t)num("features");
        m.hello.window = (uint8_t)num("window");
        m.hello.boot_nonce = (uint32_t)num("boot_nonce");
        m.hello.device_id = bufs;
        m.hello.device_id_len = (uint8_t)hexf("device_id", bufs);
        return mcpf_put_hello(out, &m.hello);
    case MCPF_WELCOME:
        m.welcome.version = (uint8_t)num("version");
        m.welcome.max_data = (uint16_t)num("max_data");
        m.welcome.features = (uint16_t)num("features");
        m.welcome.window = (uint8_t)num("window");
        m.welcome.heartbeat_ms = (uint16_t)num("heartbeat_ms");
        m.welcome.max_message = (uint16_t)num("max_message");
        m.welcome.daemon_nonce = (uint32_t)num("daemon_nonce");
        return mcpf_put_welcome(out, &m.welcome);
    case MCPF_PING:
    case MCPF_PONG:
        return hexf("data", out);
    case MCPF_INFER: {
        int i, t;
        for (i = 1; i < N_OPTS; i++) {
            t = opt_type(i);
            if (!has(opt_names[i]))
                continue;
            m.infer.present |= MCPF_HAS(t);
            switch (t) {
            case MCPF_OPT_SCHEMA: m.infer.schema = (uint8_t)num("schema"); break;
            case MCPF_OPT_SCHEMA_JSON: m.infer.schema_json = bufs + 3072; m.infer.schema_json_len = (uint8_t)hexf("schema_json", bufs + 3072); break;
            case MCPF_OPT_MODEL: m.infer.model = bufs; m.infer.model_len = (uint8_t)hexf("model", bufs); break;
            case MCPF_OPT_SYSTEM: m.infer.system = bufs + 1024; m.infer.system_len = (uint8_t)hexf("system", bufs + 1024); break;
            case MCPF_OPT_MAX_TOKENS: m.infer.max_tokens = (uint16_t)num("max_tokens"); break;
            case MCPF_OPT_TEMPERATURE: m.infer.temperature = (uint16_t)num("temperature"); break;
            case MCPF_OPT_SEED: m.infer.seed = (uint32_t)num("seed"); break;
            case MCPF_OPT_TOP_K: m.infer.top_k = (uint16_t)num("top_k"); break;
            case MCPF_OPT_TOP_P: m.infer.top_p = (uint16_t)num("top_p"); break;
            case MCPF_OPT_MIN_P: m.infer.min_p = (uint16_t)num("min_p"); break;
            case MCPF_OPT_REPEAT_PENALTY: m.infer.repeat_penalty = (uint16_t)num("repeat_penalty"); break;
            case MCPF_OPT_DEADLINE_MS: m.infer.deadline_ms = (uint32_t)num("deadline_ms"); break;
            case MCPF_OPT_CONTEXT: m.infer.context = (uint32_t)num("context"); break;
            default: break;
            }
        }
        m.infer.prompt = bufs + 2048;
        m.infer.prompt_len = hexf("prompt", bufs + 2048);
        return mcpf_put_infer(out, 4096, &m.infer);
    }
    case MCPF_TOKEN:
        m.token.chunk = (uint16_t)num("chunk");
        m.token.text = bufs;
        m.token.len = (uint16_t)hexf("text", bufs);
        return mcpf_put_token(out, &m.token);
    case MCPF_DONE:
        m.done.chunk = (uint16_t)num("chunk");
        m.done.reason = (uint8_t)num("reason");
        m.done.tokens = (uint32_t)num("tokens");
        m.done.prompt_tokens = (uint32_t)num("prompt_tokens");
        m.done.ttft_ms = (uint32_t)num("ttft_ms");
        m.done.duration_ms = (uint32_t)num("duration_ms");
        m.done.text_bytes = (uint32_t)num("text_bytes");
        m.done.text_crc32c = (uint32_t)num("text_crc32c");
        return mcpf_put_done(out, &m.done);
    case MCPF_ERROR:
        m.error.code = (uint8_t)num("code");
        m.error.flags = (uint8_t)num("flags");
        m.error.chunk = (uint16_t)num("chunk");
        m.error.text = bufs;
        m.error.len = (uint8_t)hexf("text", bufs);
        return mcpf_put_error(out, &m.error);
    case MCPF_ACK:
        m.ack.next = (uint16_t)num("next");
        m.ack.window = (uint8_t)num("window");
        m.ack.sack = bufs;
        m.ack.sack_len = (uint8_t)hexf("sack", bufs);
        return mcpf_put_ack(out, &m.ack);
    case MCPF_NACK: {
        const char *p = field("indexes", &n), *end = p + n;
        m.nack.reason = (uint8_t)num("reason");
        m.nack.indexes = bufs;
        while (p < end) {
            char *next;
            bufs[m.nack.count++] = (uint8_t)strtoul(p, &next, 10);
            p = next + (*next == ',');
        }
        return mcpf_put_nack(out, &m.nack);
    }
    case MCPF_STATUS_REPLY:
        m.status.state = (uint8_t)num("state");
        m.status.load = (uint8_t)num("load");
        m.status.queue = (uint8_t)num("queue");
        m.status.backend = bufs;
        m.status.backend_len = (uint8_t)hexf("backend", bufs);
        m.status.model = bufs + 512;
        m.status.model_len = (uint16_t)hexf("model", bufs + 512);
        m.status.extended = has("extended") && num("extended");
        if (has("kv_cache") && figures("kv_cache", &m.status.kv))
            m.status.has |= MCPF_STATUS_KV;
        if (has("response_cache") && figures("response_cache", &m.status.responses))
            m.status.has |= MCPF_STATUS_RESPONSES;
        return mcpf_put_status_reply(out, &m.status);
    case MCPF_TOOLS:
        return build_tools(out, (char *)bufs);
    case MCPF_TOOL_CALL:
        m.call.chunk = (uint16_t)num("chunk");
        m.call.call = (uint8_t)num("call");
        m.call.tool = (uint8_t)num("tool");
        m.call.args = bufs;
        m.call.args_len = (uint16_t)hexf("args", bufs);
        return mcpf_put_tool_call(out, &m.call);
    case MCPF_TOOL_RESULT:
        m.result.call = (uint8_t)num("call");
        m.result.status = (uint8_t)num("status");
        m.result.result = bufs;
        m.result.len = (uint16_t)hexf("result", bufs);
        return mcpf_put_tool_result(out, &m.result);
    default: /* CANCEL, STATUS, BYE */
        return 0;
    }
}

/* Parses body and checks every field against the vector. Returns the
 * parser's result. */
static int parse_and_check(int cmd, const uint8_t *b, size_t n, int check)
{
    union {
        mcpf_hello hello; mcpf_welcome welcome; mcpf_infer infer; mcpf_token token; mcpf_done done;
        mcpf_error error; mcpf_ack ack; mcpf_nack nack; mcpf_status_reply status;
        mcpf_tool_call call; mcpf_tool_result result;
    } m;
    mcpf_tool_decl decls[MCPF_MAX_TOOLS];
    uint8_t count = 0, i;
    char item[4096];
    int err;
    switch (cmd) {
    case MCPF_HELLO:
        if ((err = mcpf_parse_hello(b, n, &m.hello)) < 0 || !check)
            return err;
        want_num("min_version", m.hello.min_version);
        want_num("max_version", m.hello.max_version);
        want_num("max_data", m.hello.max_data);
        want_num("features", m.hello.features);
        want_num("window", m.hello.window);
        want_num("boot_nonce", m.hello.boot_nonce);
        want_hex("device_id", m.hello.device_id, m.hello.device_id_len);
        return 0;
    case MCPF_WELCOME:
        if ((err = mcpf_parse_welcome(b, n, &m.welcome)) < 0 || !check)
            return err;
        want_num("version", m.welcome.version);
        want_num("max_data", m.welcome.max_data);
        want_num("features", m.welcome.features);
        want_num("window", m.welcome.window);
        want_num("heartbeat_ms", m.welcome.heartbeat_ms);
        want_num("max_message", m.welcome.max_message);
        want_num("daemon_nonce", m.welcome.daemon_nonce);
        return 0;
    case MCPF_INFER: {
        int i, t;
        if ((err = mcpf_parse_infer(b, n, &m.infer)) < 0 || !check)
            return err;
        for (i = 1; i < N_OPTS; i++) {
            int present;
            t = opt_type(i);
            present = (m.infer.present & MCPF_HAS(t)) != 0;
            if (present != has(opt_names[i])) {
                FAIL("option %s present %d", opt_names[i], present);
                continue;
            }
            if (!present)
                continue;
            switch (t) {
            case MCPF_OPT_SCHEMA: want_num("schema", m.infer.schema); break;
            case MCPF_OPT_SCHEMA_JSON: want_hex("schema_json", m.infer.schema_json, m.infer.schema_json_len); break;
            case MCPF_OPT_MODEL: want_hex("model", m.infer.model, m.infer.model_len); break;
            case MCPF_OPT_SYSTEM: want_hex("system", m.infer.system, m.infer.system_len); break;
            case MCPF_OPT_NEW_CHAT: case MCPF_OPT_TOOLS_ON: break;
            case MCPF_OPT_MAX_TOKENS: want_num("max_tokens", m.infer.max_tokens); break;
            case MCPF_OPT_TEMPERATURE: want_num("temperature", m.infer.temperature); break;
            case MCPF_OPT_SEED: want_num("seed", m.infer.seed); break;
            case MCPF_OPT_TOP_K: want_num("top_k", m.infer.top_k); break;
            case MCPF_OPT_TOP_P: want_num("top_p", m.infer.top_p); break;
            case MCPF_OPT_MIN_P: want_num("min_p", m.infer.min_p); break;
            case MCPF_OPT_REPEAT_PENALTY: want_num("repeat_penalty", m.infer.repeat_penalty); break;
            case MCPF_OPT_DEADLINE_MS: want_num("deadline_ms", m.infer.deadline_ms); break;
            default: want_num("context", m.infer.context); break;
            }
        }
        want_hex("prompt", m.infer.prompt, m.infer.prompt_len);
        return 0;
    }
    case MCPF_TOKEN:
        if ((err = mcpf_parse_token(b, n, &m.token)) < 0 || !check)
            return err;
        want_num("chunk", m.token.chunk);
        want_hex("text", m.token.text, m.token.len);
        return 0;
    case MCPF_DONE:
        if ((err = mcpf_parse_done(b, n, &m.done)) < 0 || !check)
            return err;
        want_num("chunk", m.done.chunk);
        want_num("reason", m.done.reason);
        want_num("tokens", m.done.tokens);
        want_num("prompt_tokens", m.done.prompt_tokens);
        want_num("ttft_ms", m.done.ttft_ms);
        want_num("duration_ms", m.done.duration_ms);
        want_num("text_bytes", m.done.text_bytes);
        want_num("text_crc32c", m.done.text_crc32c);
        return 0;
    case MCPF_ERROR:
        if ((err = mcpf_parse_error(b, n, &m.error)) < 0 || !check)
            return err;
        want_num("code", m.error.code);
        want_num("flags", m.error.flags);
        want_num("chunk", m.error.chunk);
        want_hex("text", m.error.text, m.error.len);
        return 0;
    case MCPF_ACK:
        if ((err = mcpf_parse_ack(b, n, &m.ack)) < 0 || !check)
            return err;
        want_num("next", m.ack.next);
        want_num("window", m.ack.window);
        want_hex("sack", m.ack.sack, m.ack.sack_len);
        return 0;
    case MCPF_NACK: {
        char list[512];
        size_t i, k = 0, ln;
        const char *v;
        if ((err = mcpf_parse_nack(b, n, &m.nack)) < 0 || !check)
            return err;
        want_num("reason", m.nack.reason);
        for (i = 0; i < m.nack.count; i++)
            k += (size_t)sprintf(list + k, "%s%u", i ? "," : "", m.nack.indexes[i]);
        v = field("indexes", &ln);
        if (!v || ln != k || strncmp(v, list, k) != 0)
            FAIL("indexes %s", list);
        return 0;
    }
    case MCPF_STATUS_REPLY:
        if ((err = mcpf_parse_status_reply(b, n, &m.status)) < 0 || !check)
            return err;
        want_num("state", m.status.state);
        want_num("load", m.status.load);
        want_num("queue", m.status.queue);
        want_hex("backend", m.status.backend, m.status.backend_len);
        want_hex("model", m.status.model, m.status.model_len);
        if (m.status.extended != (has("extended") && num("extended")))
            FAIL("extended = %u", m.status.extended);
        want_figures("kv_cache", m.status.has & MCPF_STATUS_KV, &m.status.kv);
        want_figures("response_cache", m.status.has & MCPF_STATUS_RESPONSES, &m.status.responses);
        return 0;
    case MCPF_TOOLS:
        if ((err = mcpf_parse_tools(b, n, decls, MCPF_MAX_TOOLS, &count)) < 0 || !check)
            return err;
        if (has("count"))
            want_num("count", count);
        for (i = 0; i < count; i++) {
            if (list_item("names", i, item) < 0 || strlen(item) != decls[i].name_len ||
                memcmp(item, decls[i].name, decls[i].name_len))
                FAIL("tool %u: name", i);
            if (list_item("descs", i, item) < 0 || strlen(item) != decls[i].desc_len ||
                memcmp(item, decls[i].desc, decls[i].desc_len))
                FAIL("tool %u: description", i);
            if (list_item("schemas", i, item) < 0 || strlen(item) != decls[i].schema_len ||
                memcmp(item, decls[i].schema, decls[i].schema_len))
                FAIL("tool %u: schema", i);
        }
        if (list_item("names", count, item) == 0)
            FAIL("more names than the %u tools parsed", count);
        return 0;
    case MCPF_TOOL_CALL:
        if ((err = mcpf_parse_tool_call(b, n, &m.call)) < 0 || !check)
            return err;
        want_num("chunk", m.call.chunk);
        want_num("call", m.call.call);
        want_num("tool", m.call.tool);
        want_hex("args", m.call.args, m.call.args_len);
        return 0;
    case MCPF_TOOL_RESULT:
        if ((err = mcpf_parse_tool_result(b, n, &m.result)) < 0 || !check)
            return err;
        want_num("call", m.result.call);
        want_num("status", m.result.status);
        want_hex("result", m.result.result, m.result.len);
        return 0;
    default:
        if (check && has("data"))
            want_hex("data", b, n);
        return mcpf_parse_opaque((uint8_t)cmd, n);
    }
}

static void check_msg(void)
{
    static uint8_t body[4096], out[4096], bufs[4096];
    size_t n = hexf("body", body), on;
    int cmd = cmd_code(), err;
    if (cmd < 0) {
        FAIL("unknown cmd");
        return;
    }
    if (num("ok") == 0) {
        err = parse_and_check(cmd, body, n, 0);
        if (err != -want_err())
            FAIL("parse returned %d, want -%d", err, want_err());
        return;
    }
    if ((err = parse_and_check(cmd, body, n, 1)) != 0)
        FAIL("parse: %d", err);
    on = build(cmd, out, bufs);
    same("encoded body", out, on, body, n);
}

/* ----------------------------------------------------------------- frag */

static void read_table(const void *src, size_t off, uint8_t *out, size_t len)
{
    const mcpf_tool *t = (const mcpf_tool *)src;
    uint8_t n = 0;
    while (n < MCPF_MAX_TOOLS && t[n].name)
        n++;
    mcpf_tools_read(t, n, off, out, len);
}

/* A TOOLS message cut from the tool table on the fly, as the session
 * sends it, gives the same fragments as the body in memory. */
static void frag_from_table(const uint8_t *body, size_t n, const uint8_t *want, size_t wn, uint8_t piece)
{
    static uint8_t got[70000], frame[MCPF_MAX_FRAME];
    static char strs[70000];
    mcpf_tool_decl d[MCPF_MAX_TOOLS];
    mcpf_tool t[MCPF_MAX_TOOLS + 1];
    uint8_t count, i;
    char *p = strs;
    size_t gn = 0;
    if (mcpf_parse_tools(body, n, d, MCPF_MAX_TOOLS, &count) < 0) {
        FAIL("TOOLS body does not parse");
        return;
    }
    memset(t, 0, sizeof t);
    for (i = 0; i < count; i++) {
        t[i].name = p;
        memcpy(p, d[i].name, d[i].name_len);
        p += d[i].name_len;
        *p++ = 0;
        t[i].desc = p;
        memcpy(p, d[i].desc, d[i].desc_len);
        p += d[i].desc_len;
        *p++ = 0;
        t[i].schema = p;
        memcpy(p, d[i].schema, d[i].schema_len);
        p += d[i].schema_len;
        *p++ = 0;
    }
    if (mcpf_tools_size(t, count) != n || mcpf_tools_crc32c(t, count) != mcpf_crc32c(0, body, n))
        FAIL("the table's size or CRC-32C differs from the body's");
    for (i = 0; i < mcpf_frag_count(n, piece); i++) {
        size_t fl = mcpf_frag_frame_from(frame, MCPF_TOOLS, (uint8_t)num("seq"), read_table, t, n,
                                         mcpf_tools_crc32c(t, count), piece, i);
        memcpy(got + gn, frame, fl);
        gn += fl;
    }
    same("fragments from the tool table", got, gn, want, wn);
}

static void check_frag(void)
{
    static uint8_t body[70000], want[70000], got[70000], frame[MCPF_MAX_FRAME], rbuf[70000];
    size_t n = hexf("body", body), wn = 0, gn = 0, k, blen = 0;
    const char *p = field("frames", &k), *end = p + k;
    uint8_t piece = (uint8_t)num("piece"), count = mcpf_frag_count(n, piece), i, cmd = (uint8_t)cmd_code();
    uint32_t crc = mcpf_crc32c(0, body, n);
    mcpf_reasm r;
    int order, res = 0;
    while (p < end) {
        size_t c = strcspn(p, ", \n");
        if (c > (size_t)(end - p))
            c = (size_t)(end - p);
        wn += unhex(p, c, want + wn);
        p += c + (p + c < end);
    }
    for (i = 0; i < count; i++) {
        size_t fl = mcpf_frag_frame(frame, cmd, (uint8_t)num("seq"), body, n, crc, piece, i);
        memcpy(got + gn, frame, fl);
        gn += fl;
    }
    same("fragments", got, gn, want, wn);
    if (cmd == MCPF_TOOLS)
        frag_from_table(body, n, want, wn, piece);
    /* Joining them gives the body back, in order, reversed, and with every
     * fragment twice. */
    for (order = 0; order < 3; order++) {
        mcpf_reasm_init(&r, rbuf, n + 4);
        res = 0;
        for (k = 0; k < (size_t)count * (order == 2 ? 2u : 1u) && res == 0; k++) {
            /* in order; reversed; every fragment twice in a row */
            uint8_t idx = (uint8_t)(order == 0 ? k : order == 1 ? count - 1 - k : k / 2);
            size_t fl = mcpf_frag_frame(frame, cmd, 9, body, n, crc, piece, idx);
            mcpf_frame f;
            if (mcpf_decode(frame, fl, &f) != 0)
                FAIL("fragment %u does not decode", idx);
            res = mcpf_reasm_add(&r, &f, &blen);
        }
        if (res != 1) {
            FAIL("reassembly order %d: %d", order, res);
            continue;
        }
        same("reassembled", rbuf, blen, body, n);
    }
    /* One byte too small a buffer: TOO_LARGE, not an overrun. */
    mcpf_reasm_init(&r, rbuf, n + 3);
    for (i = 0; i < count; i++) {
        mcpf_frame f;
        size_t fl = mcpf_frag_frame(frame, cmd, 9, body, n, crc, piece, i);
        (void)mcpf_decode(frame, fl, &f);
        if ((res = mcpf_reasm_add(&r, &f, &blen)) < 0)
            break;
    }
    if (res != -MCPF_ETOO_LARGE)
        FAIL("small buffer: %d, want too_large", res);
}

/* ----------------------------------------------------------------- sign */

static void check_sign(void)
{
#if MCPF_SIGN
    static uint8_t key[64], nonce[8], uns[MCPF_MAX_FRAME + 16], sig[MCPF_MAX_FRAME + 16];
    mcpf_key k;
    mcpf_replay w;
    mcpf_frame f;
    size_t sn = hexf("signed", sig), un, ln;
    int err;
    k.k = key;
    k.len = (uint8_t)hexf("key", key);
    hexf("nonce", nonce);
    memset(&w, 0, sizeof w);
    if (num("ok") == 1) {
        un = hexf("unsigned", uns);
        un = mcpf_sign(uns, un, &k, (uint8_t)num("dir"), nonce, (uint8_t)num("link"),
                       (uint64_t)strtoull(field("counter", &ln), NULL, 10));
        same("signed", uns, un, sig, sn);
        if (mcpf_decode(sig, sn, &f) != 0 ||
            (err = mcpf_verify(&f, &k, (uint8_t)num("dir"), nonce, &w, NULL, NULL)) != 0)
            FAIL("verify of the signed frame failed");
        else if ((err = mcpf_verify(&f, &k, (uint8_t)num("dir"), nonce, &w, NULL, NULL)) != -MCPF_EUNSIGNED)
            FAIL("verify of the stripped frame: %d", err);
        if (mcpf_decode(sig, sn, &f) == 0 &&
            (err = mcpf_verify(&f, &k, (uint8_t)num("dir"), nonce, &w, NULL, NULL)) != -MCPF_EREPLAY)
            FAIL("second verify: %d, want replay", err);
        return;
    } else {
        const char *p = field("after", &ln), *end = p + ln;
        while (p < end) {
            char *next;
            (void)mcpf_replay_accept(&w, (uint64_t)strtoull(p, &next, 10));
            p = next + (*next == ',');
        }
        if (mcpf_decode(sig, sn, &f) != 0)
            FAIL("signed frame does not decode");
        err = mcpf_verify(&f, &k, (uint8_t)num("dir"), nonce, &w, NULL, NULL);
        if (err != -want_err())
            FAIL("verify: %d, want -%d", err, want_err());
    }
#else
    checked--; /* signing compiled out: counted as skipped */
#endif
}

int main(int argc, char **argv)
{
    FILE *fp;
    int skipped = 0;
    int arg;
    if (argc < 2) {
        fprintf(stderr, "usage: %s vectors.txt [more.txt ...]\n", argv[0]);
        return 2;
    }
    for (arg = 1; arg < argc; arg++) {
        if (!(fp = fopen(argv[arg], "r"))) {
            perror(argv[arg]);
            return 2;
        }
        while (fgets(line, sizeof line, fp)) {
            size_t n;
            static char name[256];
            const char *v;
            if (line[0] == '#' || line[0] == '\n')
                continue;
            if (strlen(line) == sizeof line - 1) {
                fprintf(stderr, "line too long\n");
                return 2;
            }
            v = field("name", &n);
            snprintf(name, sizeof name, "%.*s", (int)n, v ? v : "?");
            vname = name;
            checked++;
            if (strncmp(line, "crc ", 4) == 0)
                check_crc();
            else if (strncmp(line, "frame ", 6) == 0)
                check_frame();
            else if (strncmp(line, "stream ", 7) == 0)
                check_stream();
            else if (strncmp(line, "msg ", 4) == 0)
                check_msg();
            else if (strncmp(line, "frag ", 5) == 0)
                check_frag();
            else if (strncmp(line, "sign ", 5) == 0) {
                check_sign();
                skipped += !MCPF_SIGN;
            } else
                FAIL("unknown vector kind");
        }
        fclose(fp);
    }
    printf("vectors: %d checked, %d skipped (signing compiled out), %d failures\n", checked, skipped, failures);
    if (checked + skipped < 100)
        failures++; /* the file was cut short */
    return failures ? 1 : 0;
}
