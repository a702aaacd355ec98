/* SPDX-License-Identifier: MIT
 *
 * Unit tests of the C library beyond the shared vectors:
 *   - the stream decoder against a plain batch transcription of §7.1 on
 *     seeded random streams (noise, false magics, corrupt, oversize and
 *     truncated frames), with and without idle points: a differential fuzz;
 *   - UTF-8 validation edge cases;
 *   - the session state machine on a simulated clock and link: the §14
 *     exchange byte for byte, retransmission timing, NACKs, go-back-N,
 *     keepalive, cancel, serial NACK BAD_FRAME, and (MCPF_SIGN) signing.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mcpf.h"
#include "mcpf_session.h"

static int failures;
#define CHECK(cond, ...)                                                                           \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            failures++;                                                                            \
            fprintf(stderr, "%s:%d: FAIL %s: ", __FILE__, __LINE__, #cond);                        \
            fprintf(stderr, __VA_ARGS__);                                                          \
            fprintf(stderr, "\n");                                                                 \
        }                                                                                          \
    } while (0)

static uint32_t rng = 1;
static uint32_t rnd(uint32_t n)
{
    rng = rng * 1664525u + 1013904223u;
    return (rng >> 8) % n;
}

/* ------------------------------------------------ decoder, differential */

typedef struct { uint8_t out[1 << 16]; size_t n; unsigned long skipped, badcrc, toolong; } result;

/* §7.1 as written, over a whole buffer (the end of it is the end of input). */
static void batch(const uint8_t *b, size_t n, result *r)
{
    size_t i = 0;
    while (i < n) {
        size_t end = 0;
        if (b[i] != MCPF_MAGIC) {
            r->skipped++;
            i++;
            continue;
        }
        if (n - i >= 6) {
            size_t len = (size_t)b[i + 2] << 8 | b[i + 3];
            if (len > 256)
                r->toolong++;
            else if (n - i >= len + 7) {
                if (mcpf_crc8(b + i + 1, len + 5) == b[i + 6 + len])
                    end = i + len + 7;
                else
                    r->badcrc++;
            }
        }
        if (!end) {
            r->skipped++;
            i++;
            continue;
        }
        memcpy(r->out + r->n, b + i, end - i);
        r->n += end - i;
        i = end;
    }
}

static size_t gen_stream(uint8_t *b, size_t cap)
{
    size_t n = 0;
    while (n + 300 < cap) {
        uint8_t f[MCPF_MAX_FRAME], d[256];
        size_t len = rnd(8) == 0 ? rnd(257) : rnd(24), fl, i;
        for (i = 0; i < len; i++)
            d[i] = rnd(4) == 0 ? MCPF_MAGIC : (uint8_t)rnd(256);
        fl = mcpf_encode(f, (uint8_t)(rnd(10) ? 1 : rnd(3)), (uint8_t)rnd(256), (uint8_t)rnd(256), d, (uint16_t)len);
        switch (rnd(7)) {
        case 0: /* noise, rich in 0x55 */
            for (i = rnd(12); i > 0; i--)
                b[n++] = rnd(3) ? MCPF_MAGIC : (uint8_t)rnd(256);
            break;
        case 1: /* a corrupt frame */
            f[1 + rnd((uint32_t)fl - 1)] ^= (uint8_t)(1u << rnd(8));
            memcpy(b + n, f, fl);
            n += fl;
            break;
        case 2: /* truncated */
            fl = rnd((uint32_t)fl);
            memcpy(b + n, f, fl);
            n += fl;
            break;
        case 3: /* a false header with a length > 256 */
            b[n++] = MCPF_MAGIC;
            b[n++] = 1;
            b[n++] = (uint8_t)(1 + rnd(255));
            b[n++] = (uint8_t)rnd(256);
            break;
        default:
            memcpy(b + n, f, fl);
            n += fl;
        }
    }
    return n;
}

static void test_decoder_differential(int iterations)
{
    static uint8_t in[1 << 14];
    static result want, got;
    static mcpf_decoder d;
    int iter;
    for (iter = 0; iter < iterations; iter++) {
        size_t n = gen_stream(in, sizeof in), i, seg = 0;
        int idle_points = iter % 2; /* odd iterations: the line goes idle at random points */
        mcpf_frame f;
        memset(&want, 0, sizeof want);
        memset(&got, 0, sizeof got);
        mcpf_dec_init(&d);
        for (i = 0; i <= n; i++) {
            int ev, end = i == n || (idle_points && rnd(200) == 0);
            if (end) {
                /* Idle: what came since the last idle is decoded as a whole stream. */
                batch(in + seg, i - seg, &want);
                seg = i;
                mcpf_dec_idle(&d);
                for (ev = mcpf_dec_poll(&d, &f); ev != MCPF_DEC_NONE; ev = mcpf_dec_poll(&d, &f))
                    if (ev == MCPF_DEC_FRAME)
                        got.n += mcpf_encode(got.out + got.n, f.ver, (uint8_t)(f.cmd | f.flags), f.seq, f.data, f.len);
                CHECK(d.n == 0, "idle left %u bytes", d.n);
            }
            if (i == n)
                break;
            /* Half the time the caller drains with poll, half it does not. */
            ev = mcpf_dec_push(&d, in[i], &f);
            while (ev != MCPF_DEC_NONE) {
                if (ev == MCPF_DEC_FRAME)
                    got.n += mcpf_encode(got.out + got.n, f.ver, (uint8_t)(f.cmd | f.flags), f.seq, f.data, f.len);
                if (iter % 4 >= 2)
                    break;
                ev = mcpf_dec_poll(&d, &f);
            }
        }
        /* Events left undrained are still reported. */
        {
            int ev;
            for (ev = mcpf_dec_poll(&d, &f); ev != MCPF_DEC_NONE; ev = mcpf_dec_poll(&d, &f))
                if (ev == MCPF_DEC_FRAME)
                    got.n += mcpf_encode(got.out + got.n, f.ver, (uint8_t)(f.cmd | f.flags), f.seq, f.data, f.len);
        }
        CHECK(got.n == want.n && memcmp(got.out, want.out, got.n) == 0, "iteration %d: frames differ (%lu vs %lu bytes)", iter,
              (unsigned long)got.n, (unsigned long)want.n);
        CHECK(d.skipped == want.skipped && d.badcrc == want.badcrc && d.toolong == want.toolong,
              "iteration %d: counters %lu/%lu/%lu, want %lu/%lu/%lu", iter, (unsigned long)d.skipped,
              (unsigned long)d.badcrc, (unsigned long)d.toolong, want.skipped, want.badcrc, want.toolong);
        CHECK(got.n + d.skipped == n, "iteration %d: bytes unaccounted", iter);
        if (failures)
            return;
    }
}

static void test_datagram_errors(void)
{
    uint8_t b[300];
    mcpf_frame f;
    size_t n = mcpf_encode(b, 1, MCPF_PING, 7, (const uint8_t *)"ping", 4);
    CHECK(n == 11 && b[10] == 0x81, "PING example");
    CHECK(mcpf_encode(b, 1, MCPF_PING, 0, b, 257) == 0, "257 data bytes must not encode");
    CHECK(mcpf_decode(b, 6, &f) == -MCPF_ESHORT, "6 bytes");
    CHECK(mcpf_idle_ms(115200) == 20 && mcpf_idle_ms(1200) == 42, "idle timeout %u %u",
          (unsigned)mcpf_idle_ms(115200), (unsigned)mcpf_idle_ms(1200));
}

static void test_utf8(void)
{
    static const struct { const char *s; int ok; } cases[] = {
        {"", 1}, {"abc", 1}, {"\xc3\xbc", 1}, {"\xe2\x82\xac", 1}, {"\xf0\x9f\x8c\x8d", 1},
        {"\xf4\x8f\xbf\xbf", 1}, {"\xed\x9f\xbf", 1}, {"\xef\xbf\xbd", 1},
        {"\xc0\x80", 0}, {"\xc1\xbf", 0}, {"\xe0\x80\x80", 0}, {"\xe0\x9f\xbf", 0},
        {"\xed\xa0\x80", 0}, {"\xed\xbf\xbf", 0}, {"\xf0\x80\x80\x80", 0}, {"\xf0\x8f\xbf\xbf", 0},
        {"\xf4\x90\x80\x80", 0}, {"\xf5\x80\x80\x80", 0}, {"\xff", 0}, {"\x80", 0},
        {"\xe2\x82", 0}, {"a\xc3", 0}, {"\xc3\x28", 0}, {"\xe2\x28\xa1", 0},
    };
    size_t i;
    for (i = 0; i < sizeof cases / sizeof cases[0]; i++)
        CHECK(mcpf_utf8_valid((const uint8_t *)cases[i].s, strlen(cases[i].s)) == cases[i].ok, "case %lu", (unsigned long)i);
}

/* ------------------------------------------------------------- session */

static uint8_t sent[64][MCPF_MAX_FRAME];
static size_t sent_len[64];
static int nsent;

static int capture(void *ctx, const uint8_t *frame, size_t len)
{
    (void)ctx;
    if (nsent < 64) {
        memcpy(sent[nsent], frame, len);
        sent_len[nsent] = len;
    }
    nsent++;
    return 0;
}

static size_t unhex(const char *h, uint8_t *out)
{
    size_t n = 0;
    while (*h) {
        unsigned v;
        if (*h == ' ') {
            h++;
            continue;
        }
        sscanf(h, "%2x", &v);
        out[n++] = (uint8_t)v;
        h += 2;
    }
    return n;
}

static int sent_is(int i, const char *hex)
{
    uint8_t want[MCPF_MAX_FRAME];
    size_t n = unhex(hex, want);
    return i < nsent && sent_len[i] == n && memcmp(sent[i], want, n) == 0;
}

static mcpf_frame decoded(const uint8_t *b, size_t n)
{
    mcpf_frame f;
    memset(&f, 0, sizeof f);
    if (mcpf_decode(b, n, &f) != 0)
        fprintf(stderr, "test frame does not decode\n"), exit(1);
    return f;
}

/* Feeds a daemon frame (hex) to the session; returns the event type. */
static int feed_hex(mcpf_session *s, uint32_t now, const char *hex, mcpf_event *ev)
{
    static uint8_t b[MCPF_MAX_FRAME];
    size_t n = unhex(hex, b);
    mcpf_frame f = decoded(b, n);
    return mcpf_session_frame(s, now, &f, ev);
}

/* Feeds a daemon frame built from fields. */
static int feed(mcpf_session *s, uint32_t now, uint8_t cmd, uint8_t seq, const uint8_t *data, size_t len, mcpf_event *ev)
{
    static uint8_t b[MCPF_MAX_FRAME];
    mcpf_frame f;
    size_t n = mcpf_encode(b, 1, cmd, seq, data, (uint16_t)len);
    f = decoded(b, n);
    return mcpf_session_frame(s, now, &f, ev);
}

static int feed_token(mcpf_session *s, uint32_t now, uint8_t seq, uint16_t chunk, const char *text, mcpf_event *ev)
{
    uint8_t body[256];
    mcpf_token t;
    t.chunk = chunk;
    t.text = (const uint8_t *)text;
    t.len = (uint16_t)strlen(text);
    return feed(s, now, MCPF_TOKEN, seq, body, mcpf_put_token(body, &t), ev);
}

static int feed_done(mcpf_session *s, uint32_t now, uint8_t seq, uint16_t chunk, const char *all, mcpf_event *ev)
{
    uint8_t body[32];
    mcpf_done d;
    memset(&d, 0, sizeof d);
    d.chunk = chunk;
    d.text_bytes = (uint32_t)strlen(all);
    d.text_crc32c = mcpf_crc32c(0, (const uint8_t *)all, strlen(all));
    return feed(s, now, MCPF_DONE, seq, body, mcpf_put_done(body, &d), ev);
}

static void welcome(mcpf_session *s, uint32_t now)
{
    mcpf_event ev;
    CHECK(feed_hex(s, now, "55 01 00 0e 02 00 01 01 00 00 00 ff 13 88 40 00 01 02 03 04 aa", &ev) == MCPF_EV_WELCOME, "WELCOME");
}

#if MCPF_DEVICE_TOOLS
/* ------------------------------------------------------- device tools (§16) */

static int soil_calls, relay_calls, relay_on = -1;
static size_t big_result; /* read_soil claims this many bytes when set */

static int read_soil(void *ctx, const char *args, size_t len, char *out, size_t cap, size_t *out_len)
{
    (void)args;
    (void)len;
    CHECK(ctx == &soil_calls, "the handler gets cfg->tool_ctx");
    soil_calls++;
    if (big_result) {
        if (big_result <= cap)
            memset(out, 'x', big_result);
        *out_len = big_result;
        return MCPF_TOOL_OK;
    }
    *out_len = (size_t)snprintf(out, cap, "%d %%", 41);
    return MCPF_TOOL_OK;
}

static int set_relay(void *ctx, const char *args, size_t len, char *out, size_t cap, size_t *out_len)
{
    size_t vl;
    const char *v = mcpf_json_get(args, len, "on", &vl);
    (void)ctx;
    relay_calls++;
    if (!v || !((vl == 4 && !memcmp(v, "true", 4)) || (vl == 5 && !memcmp(v, "false", 5)))) {
        *out_len = (size_t)snprintf(out, cap, "want {\"on\":true|false}");
        return MCPF_TOOL_FAILED;
    }
    relay_on = vl == 4;
    *out_len = (size_t)snprintf(out, cap, "relay %s", relay_on ? "on" : "off");
    return MCPF_TOOL_OK;
}

static const mcpf_tool test_tools[] = {
    {"read_soil", "Reads the soil moisture sensor; answers a percentage.", NULL, read_soil},
    {"set_relay", "Switches the pump relay.",
     "{\"type\":\"object\",\"properties\":{\"on\":{\"type\":\"boolean\"}}}", set_relay},
};

/* Joins the frames sent[from..nsent) of cmd (fragments) into body. */
static int joined(int from, uint8_t cmd, uint8_t *body, size_t cap, size_t *len)
{
    static uint8_t rbuf[2048];
    mcpf_reasm r;
    int i, res = 0;
    mcpf_reasm_init(&r, rbuf, sizeof rbuf);
    for (i = from; i < nsent && i < 64; i++) {
        mcpf_frame f = decoded(sent[i], sent_len[i]);
        if (f.cmd != cmd)
            continue;
        CHECK(f.flags == MCPF_FRAGMENT, "%u sent as fragments", cmd);
        if ((res = mcpf_reasm_add(&r, &f, len)) != 0)
            break;
    }
    if (res == 1 && *len <= cap)
        memcpy(body, rbuf, *len);
    return res == 1;
}

static int count_sent(int from, uint8_t cmd)
{
    int i, k = 0;
    for (i = from; i < nsent && i < 64; i++)
        k += decoded(sent[i], sent_len[i]).cmd == cmd;
    return k;
}

static int feed_call(mcpf_session *s, uint32_t now, uint8_t seq, uint16_t chunk, uint8_t call, uint8_t tool,
                     const char *args, mcpf_event *ev)
{
    uint8_t body[256];
    mcpf_tool_call c;
    c.chunk = chunk;
    c.call = call;
    c.tool = tool;
    c.args = (const uint8_t *)args;
    c.args_len = (uint16_t)strlen(args);
    return feed(s, now, MCPF_TOOL_CALL, seq, body, mcpf_put_tool_call(body, &c), ev);
}

static uint8_t tool_buf[MCPF_TOOL_BUF(1024)];

static void tools_config(mcpf_config *cfg, uint16_t max_send)
{
    memset(cfg, 0, sizeof *cfg);
    cfg->device_id = "greenhouse";
    cfg->max_data = 64;
    cfg->window = 4;
    cfg->max_send = max_send;
    cfg->send = capture;
    cfg->tools = test_tools;
    cfg->tool_count = 2;
    cfg->tool_ctx = &soil_calls;
    cfg->tool_buf = tool_buf;
    cfg->tool_buf_size = sizeof tool_buf;
}

/* A session with the test tools, welcomed. */
static void tools_session(mcpf_session *s, mcpf_config *cfg, uint16_t max_send)
{
    tools_config(cfg, max_send);
    cfg->min_rto = 100; /* the probe schedules below are counted on a 100 ms RTO */
    mcpf_session_init(s, cfg, 1);
    mcpf_session_hello(s, 0);
    welcome(s, 0);
}

/* An INFER with TOOLS_ON, accepted. */
static uint8_t tools_infer(mcpf_session *s, uint32_t now)
{
    static uint8_t body[64];
    mcpf_infer q;
    mcpf_event ev;
    size_t n;
    memset(&q, 0, sizeof q);
    q.present = MCPF_HAS(MCPF_OPT_TOOLS_ON);
    q.prompt = (const uint8_t *)"Is the soil dry?";
    q.prompt_len = 16;
    n = mcpf_put_infer(body, sizeof body, &q);
    CHECK(n == 19 && body[0] == 2 && body[1] == 0x83 && body[2] == 0, "TOOLS_ON is option 0x83, empty");
    CHECK(mcpf_session_infer(s, now, body, n) == 0, "infer");
    CHECK(feed(s, now + 1, MCPF_ACK, s->seq, (const uint8_t *)"\0\1\4", 3, &ev) == MCPF_EV_NONE, "accepted");
    return s->seq;
}

/* TOOLS: built on the fly from the table, fragmented like a prompt,
 * probed on the timer, repaired on NACK MISSING, ended by the ACK. */
static void test_tools_declare(void)
{
    static uint8_t want[600], got[600];
    mcpf_config cfg;
    mcpf_session s;
    mcpf_event ev;
    mcpf_tool_decl d[MCPF_MAX_TOOLS];
    uint8_t count, seq, missing[] = {MCPF_NACK_MISSING, 1};
    size_t wn, gn = 0;
    int frags, i;
    tools_config(&cfg, 32);
    mcpf_session_init(&s, &cfg, 1);
    CHECK(mcpf_session_tools(&s, 0) == -1, "no session yet");
    mcpf_session_hello(&s, 0);
    welcome(&s, 0);
    wn = mcpf_put_tools(want, sizeof want, test_tools, 2);
    CHECK(wn == mcpf_tools_size(test_tools, 2) && wn == 1 + (1 + 9 + 1 + 53 + 2) + (1 + 9 + 1 + 24 + 2 + 56),
          "TOOLS body of %lu bytes", (unsigned long)wn);
    CHECK(mcpf_parse_tools(want, wn, d, MCPF_MAX_TOOLS, &count) == 0 && count == 2 && d[1].schema_len == 56,
          "the body parses back");
    nsent = 0;
    CHECK(mcpf_session_tools(&s, 10) == 0, "declare");
    seq = s.seq;
    frags = (int)((wn + 4 + 29) / 30);
    CHECK(nsent == frags && count_sent(0, MCPF_TOOLS) == frags, "%d fragments of 30: %d sent", frags, nsent);
    CHECK(decoded(sent[0], sent_len[0]).seq == seq, "a new seq");
    CHECK(joined(0, MCPF_TOOLS, got, sizeof got, &gn) && gn == wn && !memcmp(got, want, wn),
          "the fragments join to the table's body");
    CHECK(mcpf_session_tools(&s, 11) == -1 && mcpf_session_infer(&s, 11, want, 3) == -1, "one request at a time");
    CHECK(feed(&s, 20, MCPF_NACK, seq, missing, 2, &ev) == MCPF_EV_NONE && nsent == frags + 1 &&
              decoded(sent[frags], sent_len[frags]).data[0] == 1, "NACK MISSING resends fragment 1");
    mcpf_session_tick(&s, 20 + mcpf_session_wait_ms(&s, 20), &ev);
    CHECK(nsent == frags + 2 && decoded(sent[frags + 1], sent_len[frags + 1]).data[0] == frags - 1,
          "the timer probes with the last fragment");
    i = frags;
    CHECK(feed(&s, 30, MCPF_ACK, seq, (const uint8_t *)"\0\0\xff", 3, &ev) == MCPF_EV_TOOLS, "ACK: declared");
    (void)i;
    CHECK(s.req == MCPF_REQ_NONE, "the request ended");
    /* Refused: the daemon's ERROR ends it. */
    CHECK(mcpf_session_tools(&s, 40) == 0, "declare again");
    {
        uint8_t e[] = {MCPF_CODE_UNSUPPORTED_OPTION, 0, 0, 0};
        CHECK(feed(&s, 41, MCPF_ERROR, s.seq, e, 4, &ev) == MCPF_EV_ERROR && ev.u.error.code == 17,
              "UNSUPPORTED_OPTION ends the declaration");
    }
    /* Tables the daemon would refuse are refused here. */
    {
        static const mcpf_tool bad_name[] = {{"Read", NULL, NULL, NULL}};
        static const mcpf_tool dup[] = {{"a", NULL, NULL, NULL}, {"a", NULL, NULL, NULL}};
        static const mcpf_tool two_lines[] = {{"a", "x\ny", NULL, NULL}};
        CHECK(mcpf_tools_check(bad_name, 1) < 0 && mcpf_tools_check(dup, 2) < 0 &&
                  mcpf_tools_check(two_lines, 1) < 0 && mcpf_tools_check(test_tools, 0) < 0 &&
                  mcpf_tools_check(test_tools, 2) == 0, "mcpf_tools_check");
        cfg.tools = dup;
        CHECK(mcpf_session_tools(&s, 50) == -1, "a bad table is not sent");
        cfg.tools = test_tools;
        cfg.tool_buf = NULL;
        CHECK(mcpf_session_tools(&s, 50) == -1, "no tool_buf: no tools");
        cfg.tool_buf = tool_buf;
    }
}

/* A TOOL_CALL runs its handler exactly once: acknowledged at once, its
 * TOOL_RESULT sent and probed until the stream goes on; a duplicate copy is
 * acknowledged again and never run again; the stream's checksum covers
 * TOKEN text only. */
static void test_tool_call_exactly_once(void)
{
    static uint8_t res[2048];
    mcpf_config cfg;
    mcpf_session s;
    mcpf_event ev;
    mcpf_frame f;
    uint8_t seq;
    size_t rn;
    int mark;
    tools_session(&s, &cfg, 0);
    seq = tools_infer(&s, 10);
    soil_calls = relay_calls = 0;
    CHECK(feed_token(&s, 20, seq, 0, "Let me look. ", &ev) == MCPF_EV_TEXT, "chunk 0");
    nsent = 0;
    CHECK(feed_call(&s, 30, seq, 1, 0, 0, "", &ev) == MCPF_EV_TOOL && ev.u.tool.call == 0 && ev.u.tool.tool == 0 &&
              ev.u.tool.status == MCPF_TOOL_OK && ev.u.tool.len == 4, "TOOL_CALL chunk 1 runs read_soil");
    CHECK(soil_calls == 1, "the handler ran once: %d", soil_calls);
    f = decoded(sent[0], sent_len[0]);
    CHECK(nsent == 2 && f.cmd == MCPF_ACK && f.seq == seq && f.data[1] == 2, "ACK next 2 first, then the result");
    CHECK(joined(1, MCPF_TOOL_RESULT, res, sizeof res, &rn) && rn == 6 && res[0] == 0 && res[1] == MCPF_TOOL_OK &&
              !memcmp(res + 2, "41 %", 4), "TOOL_RESULT {call 0, OK, \"41 %%\"}");
    CHECK(decoded(sent[1], sent_len[1]).seq == seq, "under the INFER's seq");
    /* The daemon retransmits the call (our ACK lost): answered, not run. */
    mark = nsent;
    CHECK(feed_call(&s, 40, seq, 1, 0, 0, "", &ev) == MCPF_EV_NONE && soil_calls == 1, "a duplicate TOOL_CALL is not run");
    f = decoded(sent[mark], sent_len[mark]);
    CHECK(nsent == mark + 1 && f.cmd == MCPF_ACK && f.data[1] == 2, "it is acknowledged again (next 2)");
    /* The result's ACK is lost: the timer probes with its last fragment. */
    CHECK(mcpf_session_wait_ms(&s, 40) > 0 && mcpf_session_wait_ms(&s, 40) <= 250, "the result's timer runs: %u",
          (unsigned)mcpf_session_wait_ms(&s, 40));
    mark = nsent;
    mcpf_session_tick(&s, 40 + mcpf_session_wait_ms(&s, 40), &ev);
    CHECK(nsent == mark + 1 && decoded(sent[mark], sent_len[mark]).cmd == MCPF_TOOL_RESULT, "probe");
    /* An ACK names no call: it may be the previous result's (below), so
     * the probes go on, backed off, until the stream does. */
    CHECK(feed(&s, 300, MCPF_ACK, seq, (const uint8_t *)"\0\1\0", 3, &ev) == MCPF_EV_NONE, "the result's ACK");
    mark = nsent;
    mcpf_session_tick(&s, 2000, &ev);
    CHECK(count_sent(mark, MCPF_TOOL_RESULT) == 1, "an ACK does not end the probes: %d", count_sent(mark, MCPF_TOOL_RESULT));
    /* A second call, with arguments; its result is taken when the stream
     * goes on (its ACK lost). */
    CHECK(feed_token(&s, 2100, seq, 2, "Dry. ", &ev) == MCPF_EV_TEXT, "chunk 2");
    CHECK(feed_call(&s, 2110, seq, 3, 1, 1, "{\"on\":true}", &ev) == MCPF_EV_TOOL && relay_calls == 1 && relay_on == 1 &&
              ev.u.tool.status == MCPF_TOOL_OK, "set_relay {\"on\":true}");
    CHECK(joined(nsent - 1, MCPF_TOOL_RESULT, res, sizeof res, &rn) && rn == 10 && res[0] == 1 &&
              !memcmp(res + 2, "relay on", 8), "TOOL_RESULT {call 1, OK, \"relay on\"}");
    /* Call 0's ACK, reordered behind call 1 (or answering a late copy of
     * call 0's result), comes after call 1's result, which was lost: taken
     * as that result's, it stopped the probes and the daemon ended the
     * request with TOOL_TIMEOUT (TestCDeviceTools/udp-lossy-duplicating). */
    CHECK(feed(&s, 2111, MCPF_ACK, seq, (const uint8_t *)"\0\1\0", 3, &ev) == MCPF_EV_NONE, "call 0's ACK, late");
    mark = nsent;
    mcpf_session_tick(&s, 2111 + mcpf_session_wait_ms(&s, 2111), &ev);
    CHECK(count_sent(mark, MCPF_TOOL_RESULT) == 1, "call 1's result is still probed");
    CHECK(feed_token(&s, 3120, seq, 4, "Pump on.", &ev) == MCPF_EV_TEXT, "chunk 4: the daemon took the result");
    mark = nsent;
    mcpf_session_tick(&s, 3500, &ev);
    CHECK(count_sent(mark, MCPF_TOOL_RESULT) == 0, "the next chunk stops the probes");
    CHECK(feed_call(&s, 3510, seq, 3, 1, 1, "{\"on\":false}", &ev) == MCPF_EV_NONE && relay_calls == 1 && relay_on == 1,
          "a late copy of call 1 does not switch the relay again");
    CHECK(feed_done(&s, 3520, seq, 5, "Let me look. Dry. Pump on.", &ev) == MCPF_EV_DONE,
          "DONE's checksum covers the TOKEN text only");
}

/* Results the daemon would refuse are sent as FAILED; an undeclared tool
 * too; the daemon's TOO_LARGE for a result, then TOOL_LIMIT, end the
 * request in one ERROR; TOOL_TIMEOUT likewise. */
static void test_tool_failures(void)
{
    static uint8_t res[2048];
    static const uint8_t too_large[] = {MCPF_CODE_TOO_LARGE, 0, 0, 0};
    static const uint8_t limit[] = {MCPF_CODE_TOOL_LIMIT, MCPF_ERR_STREAM, 0, 3, 'l', 'i', 'm', 'i', 't'};
    static const uint8_t timeout[] = {MCPF_CODE_TOOL_TIMEOUT, MCPF_ERR_STREAM, 0, 1};
    mcpf_config cfg;
    mcpf_session s;
    mcpf_event ev;
    mcpf_frame f;
    uint8_t seq;
    size_t rn;
    int mark;
    tools_session(&s, &cfg, 32);
    /* A handler claiming more than it may write. */
    seq = tools_infer(&s, 10);
    big_result = sizeof tool_buf - 1;
    nsent = 0;
    CHECK(feed_call(&s, 20, seq, 0, 0, 0, "", &ev) == MCPF_EV_TOOL && ev.u.tool.status == MCPF_TOOL_FAILED,
          "a result over the buffer is FAILED");
    CHECK(joined(0, MCPF_TOOL_RESULT, res, sizeof res, &rn) && res[1] == MCPF_TOOL_FAILED && rn == 2 + 16 &&
              !memcmp(res + 2, "result too large", 16), "… saying \"result too large\"");
    big_result = 0;
    /* An undeclared tool (an Ollama model may name one). */
    nsent = 0;
    CHECK(feed_call(&s, 30, seq, 1, 1, 9, "{}", &ev) == MCPF_EV_TOOL && ev.u.tool.status == MCPF_TOOL_FAILED, "tool 9");
    CHECK(joined(0, MCPF_TOOL_RESULT, res, sizeof res, &rn) && res[0] == 1 && res[1] == MCPF_TOOL_FAILED &&
              rn == 2 + 12 && !memcmp(res + 2, "unknown tool", 12), "FAILED \"unknown tool\"");
    /* A handler's own failure. */
    nsent = 0;
    CHECK(feed_call(&s, 40, seq, 2, 2, 1, "{\"on\":1}", &ev) == MCPF_EV_TOOL && ev.u.tool.status == MCPF_TOOL_FAILED,
          "set_relay refuses {\"on\":1}");
    /* The daemon refuses the result (TOO_LARGE): the stream goes on to
     * its final chunk, TOOL_LIMIT. */
    CHECK(feed(&s, 50, MCPF_ERROR, seq, too_large, sizeof too_large, &ev) == MCPF_EV_NONE && s.req == MCPF_REQ_INFER,
          "ERROR TOO_LARGE for the result does not end the request");
    mark = nsent;
    mcpf_session_tick(&s, 1000, &ev);
    CHECK(count_sent(mark, MCPF_TOOL_RESULT) == 0, "the refused result is not resent");
    CHECK(feed(&s, 1100, MCPF_ERROR, seq, limit, sizeof limit, &ev) == MCPF_EV_ERROR &&
              ev.u.error.code == MCPF_CODE_TOOL_LIMIT && s.req == MCPF_REQ_NONE, "TOOL_LIMIT ends the stream");
    f = decoded(sent[nsent - 1], sent_len[nsent - 1]);
    CHECK(f.cmd == MCPF_ACK && f.data[1] == 4, "the final chunk is acknowledged (next 4)");
    /* A result never acknowledged: probed with backoff (100, 200, 400,
     * 800, 1600 ms) until the daemon's TOOL_TIMEOUT (5 s) ends the stream. */
    seq = tools_infer(&s, 2000);
    CHECK(feed_call(&s, 2010, seq, 0, 0, 0, "", &ev) == MCPF_EV_TOOL, "a call");
    {
        uint32_t now = 2010;
        mark = nsent;
        while (now + mcpf_session_wait_ms(&s, now) <= 2010 + 5000) {
            now += mcpf_session_wait_ms(&s, now);
            mcpf_session_tick(&s, now, &ev);
        }
        CHECK(count_sent(mark, MCPF_TOOL_RESULT) == 5, "5 probes in 5 s: %d", count_sent(mark, MCPF_TOOL_RESULT));
        CHECK(s.req == MCPF_REQ_INFER, "the request waits for the daemon's verdict");
        CHECK(feed(&s, now, MCPF_ERROR, seq, timeout, sizeof timeout, &ev) == MCPF_EV_ERROR &&
                  ev.u.error.code == MCPF_CODE_TOOL_TIMEOUT && s.req == MCPF_REQ_NONE, "TOOL_TIMEOUT ends it");
    }
    /* With 3 retries the probes stop after 3; the stream stays open. */
    cfg.retries = 3;
    seq = tools_infer(&s, 8000);
    CHECK(feed_call(&s, 8010, seq, 0, 0, 0, "", &ev) == MCPF_EV_TOOL, "a call");
    {
        uint32_t now = 8010;
        mark = nsent;
        while (now < 8010 + 6000) {
            now += mcpf_session_wait_ms(&s, now);
            mcpf_session_tick(&s, now, &ev);
        }
        CHECK(count_sent(mark, MCPF_TOOL_RESULT) == 3 && s.req == MCPF_REQ_INFER, "3 probes, then the daemon's turn: %d",
              count_sent(mark, MCPF_TOOL_RESULT));
    }
}

/* A result fragmented over several frames: NACK MISSING with the INFER's
 * seq resends the result's fragments, not the prompt's; with SACK a held
 * TOOL_CALL runs once, when it becomes next in order. */
static void test_tool_result_fragments_and_sack(void)
{
    static uint8_t res[2048], holdbuf[3 * MCPF_HOLD_SLOT(64)];
    static const char sack_welcome[] = "55 01 00 0e 02 00 01 01 00 00 02 ff 13 88 40 00 01 02 03 04";
    static const uint8_t missing[] = {MCPF_NACK_MISSING, 0, 2};
    uint8_t wb[MCPF_MAX_FRAME], seq;
    mcpf_config cfg;
    mcpf_session s;
    mcpf_event ev;
    mcpf_frame f;
    size_t rn, n;
    int mark;
    tools_config(&cfg, 32);
    cfg.hold = holdbuf;
    cfg.hold_size = sizeof holdbuf;
    mcpf_session_init(&s, &cfg, 1);
    mcpf_session_hello(&s, 0);
    n = unhex(sack_welcome, wb);
    wb[n] = mcpf_crc8(wb + 1, n - 1);
    f = decoded(wb, n + 1);
    CHECK(mcpf_session_frame(&s, 5, &f, &ev) == MCPF_EV_WELCOME && s.sack, "SACK granted");
    seq = tools_infer(&s, 10);
    big_result = 0;
    soil_calls = 0;
    CHECK(feed_token(&s, 20, seq, 0, "a", &ev) == MCPF_EV_TEXT, "chunk 0");
    CHECK(feed_call(&s, 21, seq, 2, 0, 0, "", &ev) == MCPF_EV_NONE && soil_calls == 0, "a call after a gap is held, not run");
    CHECK(feed_token(&s, 22, seq, 1, "b", &ev) == MCPF_EV_TEXT, "chunk 1 fills the gap");
    nsent = 0;
    CHECK(mcpf_session_wait_ms(&s, 22) == 0 && mcpf_session_tick(&s, 22, &ev) == MCPF_EV_TOOL && soil_calls == 1,
          "the held call runs from the hold");
    CHECK(feed_call(&s, 23, seq, 2, 0, 0, "", &ev) == MCPF_EV_NONE && soil_calls == 1, "and once only");
    /* A result of 100 bytes: 4 fragments of 30; NACK MISSING with the
     * INFER's seq resends the result's fragments 0 and 2. */
    big_result = 100;
    nsent = 0;
    CHECK(feed_call(&s, 30, seq, 3, 1, 0, "", &ev) == MCPF_EV_TOOL && ev.u.tool.len == 100, "a 100-byte result");
    CHECK(nsent == 5 && count_sent(0, MCPF_TOOL_RESULT) == 4, "ACK and 4 fragments: %d", nsent);
    CHECK(joined(0, MCPF_TOOL_RESULT, res, sizeof res, &rn) && rn == 102 && res[0] == 1 && res[101] == 'x', "joined");
    mark = nsent;
    CHECK(feed(&s, 40, MCPF_NACK, seq, missing, 3, &ev) == MCPF_EV_NONE && nsent == mark + 2, "NACK MISSING 0, 2");
    f = decoded(sent[mark], sent_len[mark]);
    CHECK(f.cmd == MCPF_TOOL_RESULT && f.data[0] == 0 && f.data[1] == 4, "result fragment 0 of 4");
    f = decoded(sent[mark + 1], sent_len[mark + 1]);
    CHECK(f.cmd == MCPF_TOOL_RESULT && f.data[0] == 2, "result fragment 2");
    big_result = 0;
}
#endif

/* Random input to every parser, the reassembler, the session and the
 * verifier: under ASan and UBSan nothing may read or write out of bounds,
 * and whatever a parser accepts must be rebuilt to the same bytes. */
static void test_random_input(int iterations)
{
    static uint8_t b[300], out[300], rbuf[600], rsmall[32], frame[MCPF_MAX_FRAME];
    static mcpf_session s;
    static mcpf_config cfg;
    mcpf_reasm r, rs; /* rs: a buffer smaller than one fragment */
    int i;
    memset(&cfg, 0, sizeof cfg);
    cfg.device_id = "fuzz";
    cfg.max_data = 64;
    cfg.window = 3;
#if MCPF_DEVICE_TOOLS
    cfg.tools = test_tools; /* TOOL_CALLs reach the handlers */
    cfg.tool_count = 2;
    cfg.tool_ctx = &soil_calls;
    cfg.tool_buf = tool_buf;
    cfg.tool_buf_size = sizeof tool_buf;
#endif
    mcpf_reasm_init(&r, rbuf, sizeof rbuf);
    mcpf_reasm_init(&rs, rsmall, sizeof rsmall);
    /* Set up before the loop too: the loop sets it up again every 64
     * rounds, but only in a round whose input fits a frame, and a session
     * is never used before mcpf_session_init. */
    cfg.send = capture;
    mcpf_session_init(&s, &cfg, 0);
    for (i = 0; i < iterations; i++) {
        size_t n = rnd(12) == 0 ? rnd(300) : rnd(40), k, body_len;
        mcpf_hello h; mcpf_welcome w; mcpf_infer inf; mcpf_token t; mcpf_done d;
        mcpf_error e; mcpf_ack a; mcpf_nack nk; mcpf_status_reply sr;
        mcpf_tool_call tc; mcpf_tool_result tr; mcpf_tool_decl decls[MCPF_MAX_TOOLS];
        uint8_t tcount;
        mcpf_frame f;
        mcpf_event ev;
        for (k = 0; k < n; k++)
            b[k] = rnd(3) == 0 ? (uint8_t)rnd(4) : (uint8_t)rnd(256);
        if (mcpf_parse_hello(b, n, &h) == 0)
            CHECK(mcpf_put_hello(out, &h) == n && !memcmp(out, b, n), "hello round trip");
        if (mcpf_parse_welcome(b, n, &w) == 0)
            CHECK(mcpf_put_welcome(out, &w) == n && !memcmp(out, b, n), "welcome round trip");
        if (mcpf_parse_infer(b, n, &inf) == 0 && b[0] <= 24) /* options in ascending order rebuild alike */
            (void)mcpf_put_infer(out, sizeof out, &inf);
        if (mcpf_parse_token(b, n, &t) == 0)
            CHECK(mcpf_put_token(out, &t) == n && !memcmp(out, b, n), "token round trip");
        if (mcpf_parse_done(b, n, &d) == 0)
            CHECK(mcpf_put_done(out, &d) == n && !memcmp(out, b, n), "done round trip");
        if (mcpf_parse_error(b, n, &e) == 0)
            CHECK(mcpf_put_error(out, &e) == n && !memcmp(out, b, n), "error round trip");
        if (mcpf_parse_ack(b, n, &a) == 0)
            CHECK(mcpf_put_ack(out, &a) == n && !memcmp(out, b, n), "ack round trip");
        if (mcpf_parse_nack(b, n, &nk) == 0)
            CHECK(mcpf_put_nack(out, &nk) == n && !memcmp(out, b, n), "nack round trip");
        if (mcpf_parse_status_reply(b, n, &sr) == 0) {
            /* The extended layout's unknown fields are skipped: its
             * rebuild is shorter, and parses to the same figures. */
            mcpf_status_reply again;
            size_t on = mcpf_put_status_reply(out, &sr);
            CHECK(sr.extended ? on <= n : on == n && !memcmp(out, b, n), "status reply round trip");
            CHECK(mcpf_parse_status_reply(out, on, &again) == 0 && again.extended == sr.extended &&
                  again.has == sr.has && again.kv.bytes == sr.kv.bytes && again.responses.hits == sr.responses.hits,
                  "status reply rebuilt");
        }
        if (mcpf_parse_tool_call(b, n, &tc) == 0)
            CHECK(mcpf_put_tool_call(out, &tc) == n && !memcmp(out, b, n), "tool call round trip");
        if (mcpf_parse_tool_result(b, n, &tr) == 0)
            CHECK(mcpf_put_tool_result(out, &tr) == n && !memcmp(out, b, n), "tool result round trip");
        if (mcpf_parse_tools(b, n, decls, MCPF_MAX_TOOLS, &tcount) == 0)
            CHECK(tcount >= 1 && tcount <= MCPF_MAX_TOOLS, "tools count");
        /* As a fragment: a random (index, count) header over a small buffer. */
        if (n <= 256) {
            if (n >= 2 && rnd(2)) {
                b[0] = (uint8_t)rnd(4);
                b[1] = (uint8_t)(1 + rnd(4));
            }
            f.ver = 1;
            f.cmd = MCPF_INFER;
            f.flags = MCPF_FRAGMENT;
            f.seq = (uint8_t)rnd(2);
            f.len = (uint16_t)n;
            f.data = b;
            (void)mcpf_reasm_add(&r, &f, &body_len);
            (void)mcpf_reasm_missing(&r, out, 64);
            (void)mcpf_reasm_add(&rs, &f, &body_len);
            /* As a frame from the daemon, to a session in some state. */
            if (i % 64 == 0) {
                cfg.send = capture;
                mcpf_session_init(&s, &cfg, (uint32_t)i);
                mcpf_session_hello(&s, (uint32_t)i);
                if (rnd(2)) {
                    welcome(&s, (uint32_t)i);
                    mcpf_session_infer(&s, (uint32_t)i, (const uint8_t *)"\0hello", 6);
                }
            }
            if (s.open && s.req == MCPF_REQ_NONE && rnd(8) == 0) /* a stream to disturb, more often */
                mcpf_session_infer(&s, (uint32_t)i, (const uint8_t *)"\0hello", 6);
            nsent = 0;
            f.cmd = (uint8_t)(rnd(4) ? 1 + rnd(17) : rnd(64));
            f.flags = (uint8_t)(rnd(8) ? 0 : rnd(4) << 6);
            f.seq = rnd(2) ? s.seq : (uint8_t)rnd(256);
            if (n >= 4 && f.cmd == MCPF_TOOL_CALL && rnd(2)) { /* a sound call, often */
                b[3] = (uint8_t)rnd(3);
                for (k = 4; k < n; k++)
                    b[k] = (uint8_t)(0x20 + rnd(95));
            }
            if (n > 1 && (f.cmd == MCPF_TOKEN || f.cmd == MCPF_TOOL_CALL) && rnd(2)) {
                b[0] = (uint8_t)(s.next >> 8);
                b[1] = (uint8_t)s.next;
            }
            mcpf_encode(frame, 1, (uint8_t)(f.cmd | f.flags), f.seq, b, (uint16_t)n);
            if (mcpf_decode(frame, n + 7, &f) == 0)
                (void)mcpf_session_frame(&s, (uint32_t)i, &f, &ev);
            (void)mcpf_session_tick(&s, (uint32_t)i * 50u, &ev);
#if MCPF_SIGN
            {
                static const uint8_t key[16] = {1};
                static const uint8_t nonce[8] = {2};
                mcpf_key kk;
                mcpf_replay w;
                kk.k = key;
                kk.len = 16;
                memset(&w, 0, sizeof w);
                if (mcpf_decode(frame, n + 7, &f) == 0)
                    (void)mcpf_verify(&f, &kk, 1, nonce, &w, NULL, NULL);
            }
#endif
        }
    }
}

/* SACK (§8.2): with a hold buffer the device asks for it; granted, it keeps
 * chunks after a gap, lists them in its ACKs, delivers them in order once
 * the gap is filled (mcpf_session_wait_ms says 0, tick delivers), and the
 * held final chunk ends the answer with its checksum checked. */
static void test_session_sack(void)
{
    static uint8_t holdbuf[3 * MCPF_HOLD_SLOT(64)];
    static const char sack_welcome[] = "55 01 00 0e 02 00 01 01 00 00 02 ff 13 88 40 00 01 02 03 04";
    uint8_t wb[MCPF_MAX_FRAME], body[8] = {0, 'h', 'i'};
    mcpf_config cfg;
    mcpf_session s;
    mcpf_event ev;
    mcpf_frame f;
    size_t n;
    uint8_t seq;
    memset(&cfg, 0, sizeof cfg);
    cfg.device_id = "d";
    cfg.max_data = 64;
    cfg.window = 4;
    cfg.hold = holdbuf;
    cfg.hold_size = sizeof holdbuf;
    cfg.send = capture;
    nsent = 0;
    mcpf_session_init(&s, &cfg, 1);
    mcpf_session_hello(&s, 0);
    f = decoded(sent[0], sent_len[0]);
    CHECK(f.cmd == MCPF_HELLO && (f.data[5] & 2u), "HELLO asks for SACK");
    /* WELCOME granting SACK (features 2); its CRC computed here. */
    n = unhex(sack_welcome, wb);
    wb[n] = mcpf_crc8(wb + 1, n - 1);
    f = decoded(wb, n + 1);
    CHECK(mcpf_session_frame(&s, 5, &f, &ev) == MCPF_EV_WELCOME && s.sack, "SACK granted");
    CHECK(mcpf_session_infer(&s, 10, body, 3) == 0, "infer");
    seq = s.seq;
    CHECK(feed(&s, 11, MCPF_ACK, seq, (const uint8_t *)"\0\1\0", 3, &ev) == MCPF_EV_NONE, "accepted");
    CHECK(feed_token(&s, 12, seq, 0, "a", &ev) == MCPF_EV_TEXT, "chunk 0");
    nsent = 0;
    CHECK(feed_token(&s, 13, seq, 2, "c", &ev) == MCPF_EV_NONE, "chunk 2 held, not delivered");
    CHECK(nsent == 1, "one ACK for the held chunk: %d", nsent);
    f = decoded(sent[0], sent_len[0]);
    CHECK(f.len == 4 && f.data[1] == 1 && f.data[3] == 0x80, "ACK next 1 sack 80: len %u", f.len);
    CHECK(feed_done(&s, 14, seq, 3, "abc", &ev) == MCPF_EV_NONE, "DONE held");
    f = decoded(sent[1], sent_len[1]);
    CHECK(f.len == 4 && f.data[1] == 1 && f.data[3] == 0xC0, "ACK next 1 sack c0");
    CHECK(feed_token(&s, 15, seq, 2, "c", &ev) == MCPF_EV_NONE, "a copy of a held chunk");
    CHECK(mcpf_session_wait_ms(&s, 15) > 0, "nothing deliverable yet");
    CHECK(feed_token(&s, 16, seq, 1, "b", &ev) == MCPF_EV_TEXT && ev.u.text.len == 1 && ev.u.text.p[0] == 'b', "chunk 1 fills the gap");
    CHECK(mcpf_session_wait_ms(&s, 16) == 0, "a held chunk is next: tick now");
    CHECK(mcpf_session_tick(&s, 16, &ev) == MCPF_EV_TEXT && ev.u.text.len == 1 && ev.u.text.p[0] == 'c', "chunk 2 from the hold");
    CHECK(mcpf_session_tick(&s, 16, &ev) == MCPF_EV_DONE, "DONE from the hold, checksum right");
    f = decoded(sent[nsent - 1], sent_len[nsent - 1]);
    CHECK(f.cmd == MCPF_ACK && f.len == 3 && f.data[1] == 4, "final ACK next 4, no bitmap");
    CHECK(s.req == MCPF_REQ_NONE, "the request ended");
}

/* The extended STATUS_REPLY (§11.11): asked for only with cfg.status_ext;
 * its cache fields are read and a field of a newer daemon skipped, and a
 * daemon that answers in the basic layout (one that does not know the
 * feature) is read as before. */
static void test_session_status_ext(void)
{
    static const uint8_t ext[] = {0, 25, 1, 0xFF, 2, 'l', 'c', 1, 'm',
                                  0x7E, 3, 9, 9, 9, /* unknown: skipped */
                                  0x01, 20, 0, 0, 0, 7, 0, 0, 0, 3, 0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0x58, 0};
    static const uint8_t basic[] = {0, 25, 1, 2, 'l', 'c', 'm'};
    mcpf_config cfg;
    mcpf_session s;
    mcpf_event ev;
    mcpf_frame f;
    int want;
    for (want = 0; want <= 1; want++) {
        memset(&cfg, 0, sizeof cfg);
        cfg.device_id = "d";
        cfg.max_data = 64;
        cfg.window = 2;
        cfg.send = capture;
        cfg.status_ext = (uint8_t)want;
        nsent = 0;
        mcpf_session_init(&s, &cfg, 1);
        mcpf_session_hello(&s, 0);
        f = decoded(sent[0], sent_len[0]);
        CHECK(f.cmd == MCPF_HELLO && !!(f.data[5] & MCPF_FEATURE_STATUS_EXT) == want, "HELLO asks for STATUS_EXT: %d", want);
        welcome(&s, 1);
        CHECK(mcpf_session_status(&s, 2) == 0, "status");
        CHECK(feed(&s, 3, MCPF_STATUS_REPLY, s.seq, want ? ext : basic, want ? sizeof ext : sizeof basic, &ev) == MCPF_EV_STATUS,
              "STATUS_REPLY read");
        CHECK(ev.u.status.extended == want && ev.u.status.load == 25 && ev.u.status.backend_len == 2 && ev.u.status.model_len == 1 &&
              ev.u.status.model[0] == 'm', "names and load");
        CHECK(ev.u.status.has == (want ? MCPF_STATUS_KV : 0) && ev.u.status.kv.hits == (want ? 7u : 0u) &&
              ev.u.status.kv.misses == (want ? 3u : 0u) && ev.u.status.kv.bytes == (want ? 0x100005800ull : 0u), "figures");
    }
}

/* The adaptive RTO's floor is the configured min_rto (§7.2): a 10 ms round
 * trip gives 10 + 4 × 5 = 30 ms with a floor of 5 ms or none (10 ms), 50
 * with a floor of 50. */
static void test_min_rto(void)
{
    static const uint16_t floors[] = {5, 0, 50};
    static const uint16_t want[] = {30, 30, 50};
    size_t i;
    for (i = 0; i < 3; i++) {
        mcpf_config cfg;
        mcpf_session s;
        memset(&cfg, 0, sizeof cfg);
        cfg.device_id = "esp32-kitchen";
        cfg.max_data = 128;
        cfg.window = 2;
        cfg.min_rto = floors[i];
        cfg.send = capture;
        nsent = 0;
        mcpf_session_init(&s, &cfg, 0xa1b2c3d4u);
        CHECK(mcpf_session_hello(&s, 1000) == 0, "hello");
        welcome(&s, 1010);
        CHECK(s.rto == want[i], "min_rto %u: RTO %u after a 10 ms sample, want %u", floors[i], s.rto, want[i]);
    }
}

/* A fast link's RTO (the 10 ms floor) retransmits soon into a stall, but
 * gives up only once the time a 100 ms timer takes for the retries has
 * passed too (§7.2): with 2 retries, 700 ms, not 10 + 20 + 40. A PONG 300 ms
 * late still ends the PING. */
static void test_give_up_horizon(void)
{
    mcpf_config cfg;
    mcpf_session s;
    mcpf_event ev;
    uint32_t t = 1000, start;
    int round;
    memset(&cfg, 0, sizeof cfg);
    cfg.device_id = "esp32-kitchen";
    cfg.max_data = 128;
    cfg.window = 2;
    cfg.retries = 2;
    cfg.send = capture;
    for (round = 0; round < 2; round++) {
        nsent = 0;
        mcpf_session_init(&s, &cfg, 0xa1b2c3d4u);
        CHECK(mcpf_session_hello(&s, t) == 0, "hello");
        welcome(&s, t + 1);
        CHECK(s.rto == 10, "RTO %u after a 1 ms round trip, want the 10 ms floor", s.rto);
        start = t + 2;
        CHECK(mcpf_session_ping(&s, start, NULL, 0) == 0, "ping");
        nsent = 0;
        for (t = start; t < start + 300; t++)
            CHECK(mcpf_session_tick(&s, t, &ev) == MCPF_EV_NONE, "no timeout %u ms into the stall", (unsigned)(t - start));
        CHECK(nsent > 3, "%d PINGs in 300 ms with a 10 ms RTO", nsent);
        if (round == 0) {
            CHECK(feed(&s, t, MCPF_PONG, s.seq, NULL, 0, &ev) == MCPF_EV_PONG, "a PONG 300 ms late ends the PING");
            continue;
        }
        while (mcpf_session_tick(&s, t, &ev) == MCPF_EV_NONE && t < start + 10000)
            t++;
        CHECK(ev.type == MCPF_EV_TIMEOUT && t - start >= 700 && t - start < 2000,
              "gave up %u ms into the stall, want 700..2000", (unsigned)(t - start));
    }
}

/* The exchange of docs/protocol.md §14, byte for byte. */
static void test_session_spec_exchange(void)
{
    mcpf_config cfg;
    mcpf_session s;
    mcpf_event ev;
    mcpf_infer m;
    uint8_t body[64];
    size_t n;
    memset(&cfg, 0, sizeof cfg);
    cfg.device_id = "esp32-kitchen";
    cfg.max_data = 128;
    cfg.window = 2;
    cfg.send = capture;
    nsent = 0;
    mcpf_session_init(&s, &cfg, 0xa1b2c3d4u);
    CHECK(mcpf_session_infer(&s, 0, (const uint8_t *)"\0Hi", 3) == -1, "INFER before HELLO");
    CHECK(mcpf_session_hello(&s, 1000) == 0, "hello");
    CHECK(sent_is(0, "55 01 00 18 01 00 01 01 00 80 00 00 02 a1 b2 c3 d4 65 73 70 33 32 2d 6b 69 74 63 68 65 6e f4"), "HELLO bytes");
    welcome(&s, 1010);
    CHECK(s.rto == 30, "RTO after a 10 ms sample: %u", s.rto); /* 10 + 4 × 5, at least 10 */
    memset(&m, 0, sizeof m);
    m.present = MCPF_HAS(MCPF_OPT_MAX_TOKENS) | MCPF_HAS(MCPF_OPT_TEMPERATURE) | MCPF_HAS(MCPF_OPT_SEED);
    m.max_tokens = 16;
    m.seed = 42;
    m.prompt = (const uint8_t *)"Hi";
    m.prompt_len = 2;
    n = mcpf_put_infer(body, sizeof body, &m);
    CHECK(mcpf_session_infer(&s, 1020, body, n) == 0, "infer");
    CHECK(sent_is(1, "55 01 00 17 45 01 00 01 0e 02 02 00 10 03 02 00 00 04 04 00 00 00 2a 48 69 d7 36 e1 dd f6"), "INFER bytes");
    CHECK(mcpf_session_ping(&s, 1020, NULL, 0) == -1, "a second request while INFER runs");
    CHECK(feed_hex(&s, 1030, "55 01 00 03 0a 01 00 01 00 6b", &ev) == MCPF_EV_NONE, "ACK");
    CHECK(feed_hex(&s, 1040, "55 01 00 07 06 01 00 00 48 65 6c 6c 6f 64", &ev) == MCPF_EV_TEXT &&
              ev.u.text.len == 5 && memcmp(ev.u.text.p, "Hello", 5) == 0, "TOKEN 0");
    CHECK(sent_is(2, "55 01 00 03 0a 01 00 01 02 00") || nsent == 3, "ACK after half the window");
    CHECK(feed_hex(&s, 1050, "55 01 00 09 06 01 00 01 20 74 68 65 72 65 21 1f", &ev) == MCPF_EV_TEXT, "TOKEN 1");
    CHECK(sent_is(nsent - 1, "55 01 00 03 0a 01 00 02 02 21"), "ACK next 2 (spec bytes)");
    CHECK(feed_hex(&s, 1060, "55 01 00 1b 07 01 00 02 00 00 00 00 03 00 00 00 05 00 00 00 2a 00 00 00 61 00 00 00 0c 9d d6 06 17 06", &ev) == MCPF_EV_DONE &&
              ev.u.done.tokens == 3, "DONE");
    CHECK(sent_is(nsent - 1, "55 01 00 03 0a 01 00 03 02 c8"), "final ACK (spec bytes)");
    CHECK(s.req == MCPF_REQ_NONE, "request finished");
}

static void test_session_retransmission(void)
{
    mcpf_config cfg;
    mcpf_session s;
    mcpf_event ev;
    uint32_t t = 5000, expect[] = {250, 500, 1000, 2000, 4000, 4000, 4000, 4000};
    int i;
    memset(&cfg, 0, sizeof cfg);
    cfg.device_id = "d";
    cfg.max_data = 64;
    cfg.window = 1;
    cfg.send = capture;
    nsent = 0;
    mcpf_session_init(&s, &cfg, 1);
    mcpf_session_hello(&s, t);
    for (i = 0; i < 8; i++) {
        uint32_t w = mcpf_session_wait_ms(&s, t);
        CHECK(w == expect[i], "retransmission %d after %u ms, want %u", i, (unsigned)w, (unsigned)expect[i]);
        CHECK(mcpf_session_tick(&s, t + w - 1, &ev) == MCPF_EV_NONE && nsent == i + 1, "early tick sent nothing");
        t += w;
        CHECK(mcpf_session_tick(&s, t, &ev) == MCPF_EV_NONE && nsent == i + 2, "tick %d resends", i);
        CHECK(sent_len[i + 1] == sent_len[0] && memcmp(sent[i + 1], sent[0], sent_len[0]) == 0, "the same HELLO");
    }
    t += mcpf_session_wait_ms(&s, t);
    CHECK(mcpf_session_tick(&s, t, &ev) == MCPF_EV_TIMEOUT && nsent == 9, "gives up after 8 retransmissions");
    CHECK(mcpf_session_wait_ms(&s, t) == 0xFFFFFFFFu, "nothing to wait for");
    /* The clock may wrap. */
    t = 0xFFFFFF00u;
    nsent = 0;
    mcpf_session_hello(&s, t);
    CHECK(mcpf_session_tick(&s, t + 249, &ev) == MCPF_EV_NONE && nsent == 1, "wrap: early");
    CHECK(mcpf_session_tick(&s, t + 250, &ev) == MCPF_EV_NONE && nsent == 2, "wrap: resend");
}

static void test_session_infer_repairs(void)
{
    mcpf_config cfg;
    mcpf_session s;
    mcpf_event ev;
    uint8_t body[100], missing[] = {MCPF_NACK_MISSING, 1, 3}, badsum = MCPF_NACK_BAD_CHECKSUM, seq;
    mcpf_frame f;
    int i;
    memset(&cfg, 0, sizeof cfg);
    cfg.device_id = "d";
    cfg.max_data = 64;
    cfg.window = 4;
    cfg.max_send = 32; /* pieces of 30: 104 bytes → 4 fragments */
    cfg.send = capture;
    for (i = 0; i < 100; i++)
        body[i] = (uint8_t)('a' + i % 26);
    body[0] = 0;
    mcpf_session_init(&s, &cfg, 1);
    mcpf_session_hello(&s, 0);
    welcome(&s, 0);
    nsent = 0;
    CHECK(mcpf_session_infer(&s, 0, body, sizeof body) == 0 && nsent == 4, "4 fragments: %d", nsent);
    seq = s.seq;
    for (i = 0; i < 4; i++) {
        f = decoded(sent[i], sent_len[i]);
        CHECK(f.cmd == MCPF_INFER && f.flags == MCPF_FRAGMENT && f.seq == seq && f.data[0] == i && f.data[1] == 4 &&
                  f.len == (i < 3 ? 32 : 16), "fragment %d", i);
    }
    CHECK(feed(&s, 10, MCPF_NACK, seq, missing, 3, &ev) == MCPF_EV_NONE && nsent == 6, "NACK MISSING resends 2");
    CHECK(decoded(sent[4], sent_len[4]).data[0] == 1 && decoded(sent[5], sent_len[5]).data[0] == 3, "indexes 1 and 3");
    CHECK(feed(&s, 20, MCPF_NACK, seq, &badsum, 1, &ev) == MCPF_EV_NONE && nsent == 10, "BAD_CHECKSUM resends all");
    mcpf_session_tick(&s, 20 + mcpf_session_wait_ms(&s, 20), &ev);
    CHECK(nsent == 11 && decoded(sent[10], sent_len[10]).data[0] == 3, "the timer probes with the last fragment");
    CHECK(feed(&s, 30, MCPF_NACK, (uint8_t)(seq - 1), missing, 3, &ev) == MCPF_EV_NONE && nsent == 11, "NACK of another request ignored");
    /* Go-back-N on the stream. */
    CHECK(feed_token(&s, 40, seq, 1, "B", &ev) == MCPF_EV_NONE, "a gap is not delivered");
    f = decoded(sent[nsent - 1], sent_len[nsent - 1]);
    CHECK(f.cmd == MCPF_ACK && f.data[0] == 0 && f.data[1] == 0 && f.data[2] == 4, "ACK next 0 after a gap");
    CHECK(feed_token(&s, 50, seq, 0, "A", &ev) == MCPF_EV_TEXT, "chunk 0");
    i = nsent;
    CHECK(feed_token(&s, 60, seq, 0, "A", &ev) == MCPF_EV_NONE && nsent == i + 1, "a duplicate is answered, not delivered");
    f = decoded(sent[nsent - 1], sent_len[nsent - 1]);
    CHECK(f.cmd == MCPF_ACK && f.data[1] == 1, "ACK next 1 after a duplicate");
    CHECK(feed_token(&s, 70, seq, 1, "B", &ev) == MCPF_EV_TEXT, "chunk 1");
    CHECK(feed_token(&s, 71, (uint8_t)(seq + 7), 2, "X", &ev) == MCPF_EV_NONE, "another seq's TOKEN");
    CHECK(feed_done(&s, 80, seq, 2, "AX", &ev) == MCPF_EV_BAD_ANSWER, "DONE checksum mismatch is reported");
    /* ERROR instead of ACK: the request ends, the next may start. */
    CHECK(mcpf_session_infer(&s, 100, body, 10) == 0, "second infer");
    {
        uint8_t busy[] = {6, MCPF_ERR_RETRYABLE, 0, 0, 'b', 'u', 's', 'y'};
        CHECK(feed(&s, 110, MCPF_ERROR, s.seq, busy, sizeof busy, &ev) == MCPF_EV_ERROR && ev.u.error.code == 6 &&
                  ev.u.error.len == 4, "ERROR BUSY");
    }
    CHECK(s.req == MCPF_REQ_NONE && mcpf_session_infer(&s, 120, body, 10) == 0, "free again");
}

static void test_session_stream_keepalive_and_cancel(void)
{
    mcpf_config cfg;
    mcpf_session s;
    mcpf_event ev;
    uint8_t body[] = {0, 'q'}, seq;
    uint8_t cancelled[] = {8, MCPF_ERR_STREAM, 0, 3};
    mcpf_frame f;
    uint32_t t;
    memset(&cfg, 0, sizeof cfg);
    cfg.device_id = "d";
    cfg.max_data = 64;
    cfg.window = 4;
    cfg.send = capture;
    mcpf_session_init(&s, &cfg, 1);
    mcpf_session_hello(&s, 0);
    welcome(&s, 0); /* heartbeat 5000 ms */
    nsent = 0;
    CHECK(mcpf_session_wait_ms(&s, 0) == 2500, "idle keepalive in %u", (unsigned)mcpf_session_wait_ms(&s, 0));
    CHECK(mcpf_session_tick(&s, 2500, &ev) == MCPF_EV_NONE && nsent == 1 && decoded(sent[0], sent_len[0]).cmd == MCPF_PING, "keepalive PING");
    CHECK(feed(&s, 2510, MCPF_PONG, s.seq, NULL, 0, &ev) == MCPF_EV_NONE && s.req == MCPF_REQ_NONE, "PONG closes it quietly");
    CHECK(mcpf_session_infer(&s, 3000, body, sizeof body) == 0, "infer");
    seq = s.seq;
    CHECK(feed_token(&s, 3010, seq, 0, "x", &ev) == MCPF_EV_TEXT, "token");
    nsent = 0;
    t = 3000 + 2500; /* one token is less than half the window: no ACK since the INFER */
    CHECK(mcpf_session_tick(&s, t - 1, &ev) == MCPF_EV_NONE && nsent == 0, "quiet");
    CHECK(mcpf_session_tick(&s, t, &ev) == MCPF_EV_NONE && nsent == 1 && decoded(sent[0], sent_len[0]).cmd == MCPF_ACK,
          "a slow stream repeats its ACK");
    CHECK(mcpf_session_cancel(&s, t) == 0 && nsent == 2, "cancel");
    f = decoded(sent[1], sent_len[1]);
    CHECK(f.cmd == MCPF_CANCEL && f.seq == seq && f.len == 0, "CANCEL carries the INFER's seq");
    CHECK(feed_token(&s, t + 1, seq, 1, "y", &ev) == MCPF_EV_TEXT && nsent == 2, "tokens still come");
    CHECK(feed_token(&s, t + 1, seq, 2, "z", &ev) == MCPF_EV_TEXT && nsent == 3 &&
              decoded(sent[2], sent_len[2]).cmd == MCPF_ACK, "and are acknowledged");
    CHECK(mcpf_session_tick(&s, t + 1 + mcpf_session_wait_ms(&s, t + 1), &ev) == MCPF_EV_NONE && nsent == 4 &&
              decoded(sent[3], sent_len[3]).cmd == MCPF_CANCEL, "CANCEL is retransmitted");
    CHECK(feed(&s, t + 2000, MCPF_ERROR, seq, cancelled, sizeof cancelled, &ev) == MCPF_EV_ERROR && ev.u.error.code == 8, "CANCELLED");
    f = decoded(sent[nsent - 1], sent_len[nsent - 1]);
    CHECK(f.cmd == MCPF_ACK && f.data[1] == 4, "the final chunk is acknowledged");
    /* A stream silent for three heartbeats times out. */
    CHECK(mcpf_session_infer(&s, 20000, body, sizeof body) == 0, "infer");
    CHECK(feed_token(&s, 20010, s.seq, 0, "x", &ev) == MCPF_EV_TEXT, "token");
    for (t = 20010; t < 20010 + 15000; t += 100)
        CHECK(mcpf_session_tick(&s, t, &ev) == MCPF_EV_NONE, "alive at %u", (unsigned)t);
    CHECK(mcpf_session_tick(&s, 20010 + 15000, &ev) == MCPF_EV_TIMEOUT, "silent stream");
    /* The daemon's BYE and PING are answered. */
    nsent = 0;
    CHECK(feed(&s, 40000, MCPF_PING, 77, (const uint8_t *)"ab", 2, &ev) == MCPF_EV_NONE && sent_is(0, "55 01 00 02 04 4d 61 62 ff") == 0 &&
              decoded(sent[0], sent_len[0]).cmd == MCPF_PONG && decoded(sent[0], sent_len[0]).seq == 77, "PONG");
    CHECK(feed(&s, 40000, 0x3F, 5, NULL, 0, &ev) == MCPF_EV_NONE && decoded(sent[1], sent_len[1]).cmd == MCPF_ERROR &&
              decoded(sent[1], sent_len[1]).data[0] == 1, "UNKNOWN_COMMAND");
    CHECK(feed(&s, 40000, MCPF_BYE, 9, NULL, 0, &ev) == MCPF_EV_BYE && decoded(sent[2], sent_len[2]).cmd == MCPF_BYE &&
              decoded(sent[2], sent_len[2]).seq == 9 && !s.open, "BYE");
}

/* A BYE before the WELCOME (the answer to a previous session's BYE, still
 * on the line) neither ends the HELLO nor is answered: a BYE sent back would
 * reach the daemon after the HELLO and close the session it opens. */
static void test_session_stale_bye(void)
{
    mcpf_config cfg;
    mcpf_session s;
    mcpf_event ev;
    memset(&cfg, 0, sizeof cfg);
    cfg.device_id = "d";
    cfg.max_data = 64;
    cfg.window = 1;
    cfg.send = capture;
    mcpf_session_init(&s, &cfg, 1);
    nsent = 0;
    mcpf_session_hello(&s, 0);
    CHECK(feed(&s, 5, MCPF_BYE, 200, NULL, 0, &ev) == MCPF_EV_NONE && nsent == 1 && decoded(sent[0], sent_len[0]).cmd == MCPF_HELLO,
          "stale BYE dropped unanswered");
    CHECK(s.req == MCPF_REQ_HELLO, "the HELLO goes on");
    welcome(&s, 10);
    CHECK(mcpf_session_bye(&s, 20) == 0 && feed(&s, 30, MCPF_BYE, s.seq, NULL, 0, &ev) == MCPF_EV_BYE && nsent == 2 && !s.open,
          "our BYE answered: no answer to the answer");
}

static void test_session_serial(void)
{
    mcpf_config cfg;
    mcpf_session s;
    mcpf_event ev;
    uint8_t bad_frame = MCPF_NACK_BAD_FRAME;
    memset(&cfg, 0, sizeof cfg);
    cfg.device_id = "uart";
    cfg.max_data = 32;
    cfg.window = 4;
    cfg.link = MCPF_LINK_SERIAL;
    cfg.baud = 115200;
    cfg.send = capture;
    mcpf_session_init(&s, &cfg, 1);
    nsent = 0;
    mcpf_session_hello(&s, 0);
    CHECK(mcpf_session_wait_ms(&s, 0) == 282, "serial RTO %u, want 2 × 4 × 22.8 + 100", (unsigned)mcpf_session_wait_ms(&s, 0));
    mcpf_session_badcrc(&s, 10);
    CHECK(nsent == 2, "NACK BAD_FRAME sent");
    CHECK(decoded(sent[1], sent_len[1]).cmd == MCPF_NACK && decoded(sent[1], sent_len[1]).seq == 0, "NACK BAD_FRAME, seq 0");
    mcpf_session_badcrc(&s, 20);
    CHECK(nsent == 2, "at most one NACK per quarter RTO");
    mcpf_session_badcrc(&s, 10 + 70);
    CHECK(nsent == 3, "again after a quarter RTO");
    CHECK(feed(&s, 100, MCPF_NACK, 0, &bad_frame, 1, &ev) == MCPF_EV_NONE && nsent == 4 &&
              decoded(sent[3], sent_len[3]).cmd == MCPF_HELLO, "NACK BAD_FRAME: resend at once");
}

/* A WELCOME answering seq (heartbeat 5 s, max_data 256, window 255). */
static int feed_welcome(mcpf_session *s, uint32_t now, uint8_t seq, mcpf_event *ev)
{
    uint8_t b[32];
    mcpf_welcome w;
    memset(&w, 0, sizeof w);
    w.version = 1;
    w.max_data = 256;
    w.window = 255;
    w.heartbeat_ms = 5000;
    w.max_message = 4096;
    w.daemon_nonce = 0x01020304u;
    return feed(s, now, MCPF_WELCOME, seq, b, mcpf_put_welcome(b, &w), ev);
}

static int feed_error(mcpf_session *s, uint32_t now, uint8_t seq, uint8_t code, mcpf_event *ev)
{
    uint8_t b[16];
    mcpf_error e;
    memset(&e, 0, sizeof e);
    e.code = code;
    return feed(s, now, MCPF_ERROR, seq, b, mcpf_put_error(b, &e), ev);
}

/* Edges a review found outside the random input's reach: a last fragment
 * first and longer than a small reassembly buffer (cap - len wrapped and the
 * copy landed before the buffer), a PING a caller built with no data
 * pointer, and configs outside their ranges (a 65-character id overran the
 * transmit buffer; window 0 made window - 1 SACK slots). */
static void test_edges(void)
{
    static const char long_id[] = "abcdefghijklmnopqrstuvwxyzabcdefghijklmnopqrstuvwxyzabcdefghijklm"; /* 65 */
    uint8_t data[44], *small = malloc(16); /* exact size: ASan sees a write outside it */
    mcpf_reasm r;
    mcpf_frame f;
    mcpf_config cfg;
    mcpf_session s;
    mcpf_event ev;
    size_t body_len = 0;
    CHECK(small != NULL, "malloc");
    memset(data, 'x', sizeof data);
    data[0] = 1; /* index 1 of 2: the last, first */
    data[1] = 2;
    memset(&f, 0, sizeof f);
    f.ver = 1;
    f.cmd = MCPF_TOOL_CALL;
    f.flags = MCPF_FRAGMENT;
    f.len = sizeof data;
    f.data = data;
    mcpf_reasm_init(&r, small, 16);
    CHECK(mcpf_reasm_add(&r, &f, &body_len) == -MCPF_ETOO_LARGE, "a last fragment larger than the buffer: TOO_LARGE");
    f.len = 3 + 16 - 1; /* a piece of cap bytes still fits, parked at the end */
    CHECK(mcpf_reasm_add(&r, &f, &body_len) == 0 && r.active, "a last fragment of cap bytes: parked");
    free(small);

    memset(&cfg, 0, sizeof cfg);
    cfg.device_id = "edges";
    cfg.max_data = 64;
    cfg.window = 0;
    cfg.send = capture;
    mcpf_session_init(&s, &cfg, 1);
    CHECK(mcpf_session_hello(&s, 0) == -1, "window 0: no HELLO");
    cfg.window = 2;
    cfg.device_id = long_id;
    CHECK(mcpf_session_hello(&s, 0) == -1, "a 65-character id: no HELLO");
    cfg.device_id = "";
    CHECK(mcpf_session_hello(&s, 0) == -1, "an empty id: no HELLO");
    cfg.device_id = NULL;
    CHECK(mcpf_session_hello(&s, 0) == -1, "no id: no HELLO");
    cfg.device_id = long_id + 1; /* 64 */
    nsent = 0;
    CHECK(mcpf_session_hello(&s, 0) == 0 && nsent == 1, "a 64-character id: HELLO");
    CHECK(feed_welcome(&s, 1, s.seq, &ev) == MCPF_EV_WELCOME, "session open");
    memset(&f, 0, sizeof f);
    f.ver = 1;
    f.cmd = MCPF_PING;
    f.seq = 9;
    nsent = 0;
    CHECK(mcpf_session_frame(&s, 2, &f, &ev) == MCPF_EV_NONE && nsent == 1, "an empty PING with no data pointer: PONG");
    f = decoded(sent[0], sent_len[0]);
    CHECK(f.cmd == MCPF_PONG && f.seq == 9 && f.len == 0, "the PONG is empty");
}

/* NO_SESSION to an INFER of which nothing has come (§10): the session says
 * HELLO again (a new boot nonce) and asks the same INFER under a new seq,
 * once, and the application sees one answer. Not when the lost session
 * held the conversation the prompt continues, nor a second time. */
static void test_session_reopens(void)
{
    static const uint8_t more[] = {0, 'o', 'k'}; /* continues the chat */
    uint8_t fresh[16];                             /* NEW_CHAT */
    size_t nfresh;
    mcpf_config cfg;
    mcpf_session s;
    mcpf_event ev;
    mcpf_frame f;
    mcpf_hello h;
    mcpf_infer m;
    uint8_t seq;
    memset(&cfg, 0, sizeof cfg);
    cfg.device_id = "reopen";
    cfg.max_data = 128;
    cfg.window = 2;
    cfg.send = capture;
    nsent = 0;
    mcpf_session_init(&s, &cfg, 0x10u);
    memset(&m, 0, sizeof m);
    m.present = MCPF_HAS(MCPF_OPT_NEW_CHAT);
    m.prompt = (const uint8_t *)"hi";
    m.prompt_len = 2;
    nfresh = mcpf_put_infer(fresh, sizeof fresh, &m);
    CHECK(nfresh > 0 && mcpf_parse_infer(fresh, nfresh, &m) == 0 && (m.present & MCPF_HAS(MCPF_OPT_NEW_CHAT)), "the NEW_CHAT body parses");
    CHECK(mcpf_session_hello(&s, 0) == 0 && feed_welcome(&s, 1, s.seq, &ev) == MCPF_EV_WELCOME, "session open");
    /* NO_SESSION to a request that is no INFER, before any INFER gave the
     * session a body (a TOOLS request has none either): the application's,
     * and nothing read through the absent body (make cfuzz found it). */
    CHECK(mcpf_session_status(&s, 2) == 0 && feed_error(&s, 3, s.seq, 4, &ev) == MCPF_EV_ERROR && ev.u.error.code == 4 && !s.open,
          "NO_SESSION to a STATUS: the application's");
    CHECK(mcpf_session_hello(&s, 4) == 0 && feed_welcome(&s, 5, s.seq, &ev) == MCPF_EV_WELCOME, "session open again");
    /* Nothing answered yet, no chat held: reopened. */
    CHECK(mcpf_session_infer(&s, 10, more, sizeof more) == 0, "infer");
    seq = s.seq;
    nsent = 0;
    CHECK(feed_error(&s, 11, seq, 4, &ev) == MCPF_EV_NONE && s.req == MCPF_REQ_HELLO, "NO_SESSION: HELLO again, not an event");
    f = decoded(sent[0], sent_len[0]);
    CHECK(nsent == 1 && f.cmd == MCPF_HELLO && mcpf_parse_hello(f.data, f.len, &h) == 0 && h.boot_nonce == 0x11u,
          "a HELLO with a new boot nonce");
    CHECK(feed_welcome(&s, 12, f.seq, &ev) == MCPF_EV_NONE && s.req == MCPF_REQ_INFER && s.seq != seq, "WELCOME: the INFER again, new seq");
    f = decoded(sent[1], sent_len[1]);
    CHECK(nsent == 2 && f.cmd == MCPF_INFER && f.seq == s.seq, "the INFER sent again");
    CHECK(feed_error(&s, 13, s.seq, 4, &ev) == MCPF_EV_ERROR && ev.u.error.code == 4 && !s.open, "a second NO_SESSION ends it");
    /* An answer makes a chat; a prompt continuing it is not reopened. */
    CHECK(mcpf_session_hello(&s, 20) == 0 && feed_welcome(&s, 21, s.seq, &ev) == MCPF_EV_WELCOME, "session open again");
    CHECK(mcpf_session_infer(&s, 22, more, sizeof more) == 0, "infer");
    CHECK(feed_token(&s, 23, s.seq, 0, "ok", &ev) == MCPF_EV_TEXT && feed_done(&s, 24, s.seq, 1, "ok", &ev) == MCPF_EV_DONE, "answered");
    CHECK(mcpf_session_infer(&s, 30, more, sizeof more) == 0, "infer continuing the chat");
    CHECK(feed_error(&s, 31, s.seq, 4, &ev) == MCPF_EV_ERROR && ev.u.error.code == 4, "NO_SESSION to a prompt continuing a lost chat: the application's");
    /* A new chat is reopened even so, and its answer is the application's. */
    CHECK(mcpf_session_hello(&s, 40) == 0 && feed_welcome(&s, 41, s.seq, &ev) == MCPF_EV_WELCOME, "session open again");
    CHECK(mcpf_session_infer(&s, 42, more, sizeof more) == 0 && feed_done(&s, 43, s.seq, 0, "", &ev) == MCPF_EV_DONE, "a chat");
    CHECK(mcpf_session_infer(&s, 50, fresh, nfresh) == 0, "infer, new chat");
    CHECK(feed_error(&s, 51, s.seq, 4, &ev) == MCPF_EV_NONE && s.req == MCPF_REQ_HELLO, "NEW_CHAT: reopened");
    CHECK(feed_welcome(&s, 52, s.seq, &ev) == MCPF_EV_NONE && s.req == MCPF_REQ_INFER, "asked again");
    CHECK(feed_token(&s, 53, s.seq, 0, "hi", &ev) == MCPF_EV_TEXT && feed_done(&s, 54, s.seq, 1, "hi", &ev) == MCPF_EV_DONE,
          "one answer");
    /* Once text has come, NO_SESSION is the application's. */
    CHECK(mcpf_session_infer(&s, 60, fresh, nfresh) == 0 && feed_token(&s, 61, s.seq, 0, "h", &ev) == MCPF_EV_TEXT, "text came");
    CHECK(feed_error(&s, 62, s.seq, 4, &ev) == MCPF_EV_ERROR, "NO_SESSION after text: the application's");
}

/* A final chunk sent again after its stream ended (our ACK was lost) is
 * acknowledged again (§8.2), during another request too; a TOKEN of an
 * ended stream is not (its end is unknown). */
static void test_reack_final(void)
{
    static const uint8_t body[] = {0, 'q'};
    mcpf_config cfg;
    mcpf_session s;
    mcpf_event ev;
    mcpf_frame f;
    mcpf_ack a;
    uint8_t old;
    memset(&cfg, 0, sizeof cfg);
    cfg.device_id = "reack";
    cfg.max_data = 64;
    cfg.window = 2;
    cfg.send = capture;
    mcpf_session_init(&s, &cfg, 1);
    CHECK(mcpf_session_hello(&s, 0) == 0 && feed_welcome(&s, 1, s.seq, &ev) == MCPF_EV_WELCOME, "session open");
    CHECK(mcpf_session_infer(&s, 2, body, sizeof body) == 0, "infer");
    old = s.seq;
    CHECK(feed_token(&s, 3, old, 0, "ok", &ev) == MCPF_EV_TEXT && feed_done(&s, 4, old, 1, "ok", &ev) == MCPF_EV_DONE, "answered");
    nsent = 0;
    CHECK(feed_done(&s, 5, old, 1, "ok", &ev) == MCPF_EV_NONE && nsent == 1, "the DONE again: answered");
    f = decoded(sent[0], sent_len[0]);
    CHECK(f.cmd == MCPF_ACK && f.seq == old && mcpf_parse_ack(f.data, f.len, &a) == 0 && a.next == 2, "ACK next 2 of the ended stream");
    CHECK(feed_token(&s, 6, old, 0, "ok", &ev) == MCPF_EV_NONE && nsent == 1, "a TOKEN of it: nothing");
    CHECK(mcpf_session_ping(&s, 7, NULL, 0) == 0 && nsent == 2, "another request");
    CHECK(feed_done(&s, 8, old, 1, "ok", &ev) == MCPF_EV_NONE && nsent == 3 && s.req == MCPF_REQ_PING, "during it, the DONE again: answered");
    f = decoded(sent[2], sent_len[2]);
    CHECK(f.cmd == MCPF_ACK && f.seq == old, "ACK of the ended stream");
}

/* On a serial line a corrupt frame is the daemon still talking (§10): a
 * stream whose frames all arrive corrupt for longer than three heartbeats
 * is not given up, and real silence still is. NACK BAD_FRAME answers have
 * their own budget (4 × retries) and do not lengthen the back-off. */
static void test_serial_noise(void)
{
    static const uint8_t body[] = {0, 'q'};
    uint8_t bad_frame = MCPF_NACK_BAD_FRAME;
    mcpf_config cfg;
    mcpf_session s;
    mcpf_event ev;
    uint32_t t, base;
    int i;
    memset(&cfg, 0, sizeof cfg);
    cfg.device_id = "uart";
    cfg.max_data = 64;
    cfg.window = 2;
    cfg.link = MCPF_LINK_SERIAL;
    cfg.baud = 115200;
    cfg.retries = 3;
    cfg.send = capture;
    mcpf_session_init(&s, &cfg, 1);
    CHECK(mcpf_session_hello(&s, 0) == 0 && feed_welcome(&s, 1, s.seq, &ev) == MCPF_EV_WELCOME, "session open");
    CHECK(mcpf_session_infer(&s, 10, body, sizeof body) == 0, "infer");
    base = mcpf_session_wait_ms(&s, 10);
    for (i = 0; i < 4 * 3; i++) {
        CHECK(feed(&s, 20 + (uint32_t)i, MCPF_NACK, 0, &bad_frame, 1, &ev) == MCPF_EV_NONE && s.req == MCPF_REQ_INFER,
              "NACK BAD_FRAME %d of 12: resent, not given up", i + 1);
        CHECK(mcpf_session_wait_ms(&s, 20 + (uint32_t)i) == base, "NACK %d: the back-off stays %u ms", i + 1, (unsigned)base);
    }
    CHECK(feed(&s, 40, MCPF_NACK, 0, &bad_frame, 1, &ev) == MCPF_EV_TIMEOUT, "the 13th NACK BAD_FRAME: given up");
    /* Streaming through noise: corrupt frames for 20 s (4 heartbeats). */
    CHECK(mcpf_session_infer(&s, 100, body, sizeof body) == 0, "infer");
    CHECK(feed_token(&s, 110, s.seq, 0, "a", &ev) == MCPF_EV_TEXT, "streaming");
    for (t = 110; t < 110 + 20000; t += 500) {
        mcpf_session_badcrc(&s, t);
        CHECK(mcpf_session_tick(&s, t, &ev) != MCPF_EV_TIMEOUT, "%u ms of corrupt frames: not silence", (unsigned)(t - 110));
    }
    CHECK(feed_done(&s, t, s.seq, 1, "a", &ev) == MCPF_EV_DONE, "the answer completes");
    CHECK(mcpf_session_infer(&s, t, body, sizeof body) == 0 && feed_token(&s, t, s.seq, 0, "a", &ev) == MCPF_EV_TEXT, "streaming");
    CHECK(mcpf_session_tick(&s, t + 15001, &ev) == MCPF_EV_TIMEOUT, "three heartbeats of real silence: given up");
}

#if MCPF_SIGN
/* The daemon's WELCOME granting SIGN, unsigned yet: its frame into b. */
static size_t sign_welcome(uint8_t *b)
{
    uint8_t wb[16];
    mcpf_welcome wel;
    memset(&wel, 0, sizeof wel);
    wel.version = 1;
    wel.max_data = 256;
    wel.features = 1;
    wel.window = 255;
    wel.heartbeat_ms = 5000;
    wel.max_message = 16384;
    wel.daemon_nonce = 0x01020304u;
    return mcpf_encode(b, 1, MCPF_WELCOME, 0, wb, (uint16_t)mcpf_put_welcome(wb, &wel));
}

static void test_session_signed(void)
{
    static const uint8_t keyb[32] = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15,
                                     16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31};
    uint8_t nonce[8] = {0xa1, 0xb2, 0xc3, 0xd4, 0, 0, 0, 0}, b[MCPF_MAX_FRAME];
    mcpf_config cfg;
    mcpf_session s;
    mcpf_event ev;
    mcpf_replay w;
    mcpf_frame f;
    size_t n;
    uint8_t body[] = {0, 'q'};
    memset(&cfg, 0, sizeof cfg);
    cfg.device_id = "signer";
    cfg.max_data = 64;
    cfg.window = 2;
    cfg.key.k = keyb;
    cfg.key.len = 32;
    cfg.send = capture;
    mcpf_session_init(&s, &cfg, 0xa1b2c3d4u);
    nsent = 0;
    mcpf_session_hello(&s, 0);
    memset(&w, 0, sizeof w);
    f = decoded(sent[0], sent_len[0]);
    CHECK(mcpf_verify(&f, &cfg.key, MCPF_DEVICE_TO_DAEMON, nonce, &w, NULL, NULL) == 0, "HELLO is signed with boot_nonce ‖ 0");
    CHECK(f.data[5] == 1, "HELLO asks for SIGN");
    mcpf_session_tick(&s, 250, &ev);
    {
        uint64_t counter = 0;
        f = decoded(sent[1], sent_len[1]);
        CHECK(mcpf_verify(&f, &cfg.key, MCPF_DEVICE_TO_DAEMON, nonce, &w, NULL, &counter) == 0 && counter == 2 &&
                  memcmp(sent[1] + 6, sent[0] + 6, 11 + 6) == 0,
              "HELLO retransmitted with the same body and nonce, signed anew (counter %lu)", (unsigned long)counter);
    }
    /* The daemon's signed WELCOME. */
    nonce[4] = 1, nonce[5] = 2, nonce[6] = 3, nonce[7] = 4;
    n = sign_welcome(b);
    {
        uint8_t forged[MCPF_MAX_FRAME];
        size_t fn = mcpf_sign(memcpy(forged, b, n), n, &cfg.key, MCPF_DEVICE_TO_DAEMON, nonce, 0, 1);
        f = decoded(forged, fn);
        CHECK(mcpf_session_frame(&s, 10, &f, &ev) == MCPF_EV_NONE && !s.open, "a WELCOME signed for the wrong direction is ignored");
    }
    n = mcpf_sign(b, n, &cfg.key, MCPF_DAEMON_TO_DEVICE, nonce, 0, 1);
    f = decoded(b, n);
    CHECK(mcpf_session_frame(&s, 10, &f, &ev) == MCPF_EV_WELCOME && s.open, "signed WELCOME");
    nsent = 0;
    CHECK(mcpf_session_infer(&s, 20, body, sizeof body) == 0, "infer");
    memset(&w, 0, sizeof w);
    f = decoded(sent[0], sent_len[0]);
    CHECK(mcpf_verify(&f, &cfg.key, MCPF_DEVICE_TO_DAEMON, nonce, &w, NULL, NULL) == 0 && f.cmd == MCPF_INFER, "INFER signed with the session nonce");
    /* An unsigned TOKEN is dropped; a signed one is delivered once. */
    {
        uint8_t tb[8] = {0, 0, 'h', 'i'};
        n = mcpf_encode(b, 1, MCPF_TOKEN, s.seq, tb, 4);
        f = decoded(b, n);
        CHECK(mcpf_session_frame(&s, 30, &f, &ev) == MCPF_EV_NONE, "unsigned TOKEN dropped");
        n = mcpf_sign(b, n, &cfg.key, MCPF_DAEMON_TO_DEVICE, nonce, 0, 2);
        f = decoded(b, n);
        CHECK(mcpf_session_frame(&s, 30, &f, &ev) == MCPF_EV_TEXT && ev.u.text.len == 2, "signed TOKEN");
        f = decoded(b, n);
        CHECK(mcpf_session_frame(&s, 30, &f, &ev) == MCPF_EV_NONE, "replayed TOKEN dropped");
    }
    /* An unsigned BYE closes nothing, except as the answer to our BYE. */
    CHECK(feed(&s, 40, MCPF_BYE, 99, NULL, 0, &ev) == MCPF_EV_NONE && s.open, "unsigned BYE dropped");
    s.req = MCPF_REQ_NONE;
    CHECK(mcpf_session_bye(&s, 50) == 0, "bye");
    CHECK(feed(&s, 60, MCPF_BYE, (uint8_t)(s.seq + 1), NULL, 0, &ev) == MCPF_EV_NONE && s.open, "unsigned BYE of another seq dropped");
    CHECK(feed(&s, 60, MCPF_BYE, s.seq, NULL, 0, &ev) == MCPF_EV_BYE && !s.open, "unsigned answer to our BYE");
}

/* A signed HELLO answered BUSY and then sent again (the application
 * retries later with the same boot nonce): the new HELLO carries the same
 * boot nonce and is signed afresh under boot_nonce ‖ 0 from counter 0, so
 * the daemon, which records a boot nonce only when it admits a HELLO,
 * verifies and admits it (daemon/TestSignedHelloRetryAfterBusy). */
static void test_session_signed_busy_retry(void)
{
    static const uint8_t keyb[16] = {9, 8, 7, 6, 5, 4, 3, 2, 1, 0, 1, 2, 3, 4, 5, 6};
    uint8_t nonce[8] = {0x11, 0x22, 0x33, 0x44, 0, 0, 0, 0}, eb[64];
    mcpf_config cfg;
    mcpf_session s;
    mcpf_event ev;
    mcpf_error e;
    mcpf_replay w;
    mcpf_frame f;
    uint64_t first = 99, counter = 99;
    memset(&cfg, 0, sizeof cfg);
    cfg.device_id = "retrier";
    cfg.max_data = 64;
    cfg.window = 2;
    cfg.key.k = keyb;
    cfg.key.len = 16;
    cfg.send = capture;
    mcpf_session_init(&s, &cfg, 0x11223344u);
    nsent = 0;
    mcpf_session_hello(&s, 0);
    memset(&w, 0, sizeof w);
    f = decoded(sent[0], sent_len[0]);
    CHECK(mcpf_verify(&f, &cfg.key, MCPF_DEVICE_TO_DAEMON, nonce, &w, NULL, &first) == 0, "first HELLO signed");
    memset(&e, 0, sizeof e);
    e.code = 6; /* BUSY */
    CHECK(feed(&s, 10, MCPF_ERROR, s.seq, eb, mcpf_put_error(eb, &e), &ev) == MCPF_EV_ERROR && ev.u.error.code == 6 && !s.open,
          "HELLO answered BUSY");
    CHECK(mcpf_session_hello(&s, 1000) == 0 && nsent == 2, "HELLO sent again after BUSY");
    memset(&w, 0, sizeof w);
    f = decoded(sent[1], sent_len[1]);
    CHECK(f.cmd == MCPF_HELLO && mcpf_verify(&f, &cfg.key, MCPF_DEVICE_TO_DAEMON, nonce, &w, NULL, &counter) == 0 && counter == first,
          "the retry verifies under boot_nonce ‖ 0 from the first counter again (%lu, first %lu)", (unsigned long)counter, (unsigned long)first);
    CHECK(sent_len[1] == sent_len[0] && memcmp(sent[1] + 6, sent[0] + 6, 11 + 7) == 0,
          "the retry repeats the HELLO body, boot nonce included");
}
#endif


/* mcpf_json_get on a handler's arguments, then on random JSON-like text:
 * whatever it returns lies inside the input. */
static void test_json_get(int iterations)
{
    static const struct { const char *json, *key, *want; } cases[] = {
        {"{\"on\":true}", "on", "true"},
        {"{\"pin\":4,\"on\":false}", "on", "false"},
        {"{\"pin\":4,\"on\":false}", "pin", "4"},
        {" { \"a\" : {\"on\":1,\"b\":[1,{\"on\":2}]} , \"on\" : \"x,y\" } ", "on", "\"x,y\""},
        {"{\"o\\\"n\":1,\"on\":2}", "on", "2"},
        {"{\"s\":\"a\\\"}\",\"on\":-1.5}", "on", "-1.5"},
        {"{\"on\":true", "on", "true"},
        {"{\"on\"}", "on", NULL},
        {"[\"on\",1]", "on", NULL},
        {"{\"off\":1}", "on", NULL},
        {"{}", "on", NULL},
        {"", "on", NULL},
    };
    static const char alphabet[] = "{}[]\":,\\ ontru1e";
    char buf[64];
    size_t i, vl;
    int it;
    for (i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        const char *v = mcpf_json_get(cases[i].json, strlen(cases[i].json), cases[i].key, &vl);
        if (!cases[i].want)
            CHECK(v == NULL, "case %lu: found %.*s", (unsigned long)i, v ? (int)vl : 0, v ? v : "");
        else
            CHECK(v && vl == strlen(cases[i].want) && !memcmp(v, cases[i].want, vl), "case %lu: %.*s", (unsigned long)i,
                  v ? (int)vl : 4, v ? v : "NULL");
    }
    for (it = 0; it < iterations; it++) {
        size_t n = rnd(sizeof buf), k;
        const char *v;
        for (k = 0; k < n; k++)
            buf[k] = alphabet[rnd(sizeof alphabet - 1)];
        if (n && rnd(2))
            buf[0] = '{';
        v = mcpf_json_get(buf, n, rnd(2) ? "on" : "o", &vl);
        CHECK(!v || (v >= buf && vl > 0 && v + vl <= buf + n), "iteration %d: out of bounds", it);
    }
}

#if MCPF_SIGN
#if MCPF_DEVICE_TOOLS
/* Tools in a signed session: TOOLS and TOOL_RESULT fragments are signed
 * (pieces 15 bytes shorter) and verify as the daemon checks them; an
 * unsigned TOOL_CALL is dropped, a signed one runs once, its replay is
 * dropped before it could count as a copy. */
static void test_tools_signed(void)
{
    static const uint8_t keyb[32] = {7};
    uint8_t nonce[8] = {0, 0, 0, 9, 1, 2, 3, 4}, b[MCPF_MAX_FRAME], cb[64], res[64];
    mcpf_config cfg;
    mcpf_session s;
    mcpf_event ev;
    mcpf_replay w;
    mcpf_frame f;
    mcpf_tool_call c;
    mcpf_reasm r;
    size_t n, rn = 0;
    int i, got = 0;
    uint8_t seq;
    tools_config(&cfg, 48); /* pieces of 48 − 2 − 15 = 31 */
    cfg.key.k = keyb;
    cfg.key.len = 32;
    mcpf_session_init(&s, &cfg, 9);
    mcpf_session_hello(&s, 0);
    n = mcpf_sign(b, sign_welcome(b), &cfg.key, MCPF_DAEMON_TO_DEVICE, nonce, 0, 1);
    f = decoded(b, n);
    CHECK(mcpf_session_frame(&s, 10, &f, &ev) == MCPF_EV_WELCOME, "signed WELCOME");
    nsent = 0;
    CHECK(mcpf_session_tools(&s, 20) == 0, "declare");
    memset(&w, 0, sizeof w);
    for (i = 0; i < nsent; i++) {
        f = decoded(sent[i], sent_len[i]);
        CHECK(mcpf_verify(&f, &cfg.key, MCPF_DEVICE_TO_DAEMON, nonce, &w, NULL, NULL) == 0 && f.cmd == MCPF_TOOLS &&
                  f.len <= 2 + 31, "TOOLS fragment %d signed", i);
    }
    seq = s.seq;
    n = mcpf_sign(b, mcpf_encode(b, 1, MCPF_ACK, seq, (const uint8_t *)"\0\6\0", 3), &cfg.key, MCPF_DAEMON_TO_DEVICE, nonce, 0, 2);
    f = decoded(b, n);
    CHECK(mcpf_session_frame(&s, 30, &f, &ev) == MCPF_EV_TOOLS, "signed ACK: declared");
    CHECK(mcpf_session_infer(&s, 40, (const uint8_t *)"\2\x83\0?", 4) == 0, "infer");
    seq = s.seq;
    c.chunk = 0;
    c.call = 0;
    c.tool = 0;
    c.args = NULL;
    c.args_len = 0;
    n = mcpf_encode(b, 1, MCPF_TOOL_CALL, seq, cb, (uint16_t)mcpf_put_tool_call(cb, &c));
    f = decoded(b, n);
    soil_calls = 0;
    big_result = 40; /* 42 + 4 bytes: 2 fragments of 31 */
    CHECK(mcpf_session_frame(&s, 50, &f, &ev) == MCPF_EV_NONE && soil_calls == 0, "unsigned TOOL_CALL dropped");
    n = mcpf_sign(b, n, &cfg.key, MCPF_DAEMON_TO_DEVICE, nonce, 0, 3);
    f = decoded(b, n);
    nsent = 0;
    CHECK(mcpf_session_frame(&s, 60, &f, &ev) == MCPF_EV_TOOL && soil_calls == 1, "signed TOOL_CALL runs");
    f = decoded(b, n);
    CHECK(mcpf_session_frame(&s, 61, &f, &ev) == MCPF_EV_NONE && soil_calls == 1, "its replay is dropped");
    mcpf_reasm_init(&r, res, sizeof res);
    for (i = 0; i < nsent; i++) {
        f = decoded(sent[i], sent_len[i]);
        CHECK(mcpf_verify(&f, &cfg.key, MCPF_DEVICE_TO_DAEMON, nonce, &w, NULL, NULL) == 0, "frame %d signed", i);
        if (f.cmd == MCPF_TOOL_RESULT) {
            got++;
            CHECK(f.len <= 2 + 31, "a signed piece is at most 31 bytes");
            if (mcpf_reasm_add(&r, &f, &rn) == 1)
                CHECK(rn == 42 && res[1] == MCPF_TOOL_OK && res[41] == 'x', "the result joins");
        }
    }
    CHECK(got == 2 && rn == 42, "2 signed result fragments: %d", got);
    big_result = 0;
}
#endif
#endif

/* Usage: test_unit [ITERATIONS [SEED]]: more iterations of the decoder's
 * differential fuzz (make cfuzz). */
int main(int argc, char **argv)
{
    int iterations = argc > 1 ? atoi(argv[1]) : 400;
    if (argc > 2)
        rng = (uint32_t)strtoul(argv[2], NULL, 0);
    /* Printed first: a sanitizer aborts the run, and make cfuzz seeds it
     * from the clock, so this line is how a failure is reproduced. */
    printf("random streams: %d, seed %lu (test_unit %d %lu reruns them)\n", iterations, (unsigned long)rng, iterations,
           (unsigned long)rng);
    fflush(stdout);
    test_decoder_differential(iterations);
    printf("decoder differential: %d streams\n", iterations);
    test_random_input(iterations * 50);
#if MCPF_DEVICE_TOOLS
    printf("random input: %d tool calls reached a handler\n", soil_calls + relay_calls);
    CHECK(soil_calls + relay_calls > 0, "random TOOL_CALLs never reached a handler");
#endif
    test_datagram_errors();
    test_utf8();
    test_json_get(iterations * 50);
    test_session_spec_exchange();
    test_min_rto();
    test_give_up_horizon();
    test_session_reopens();
    test_edges();
    test_serial_noise();
    test_reack_final();
    test_session_sack();
    test_session_status_ext();
    test_session_retransmission();
    test_session_infer_repairs();
    test_session_stream_keepalive_and_cancel();
    test_session_serial();
    test_session_stale_bye();
#if MCPF_DEVICE_TOOLS
    test_tools_declare();
    test_tool_call_exactly_once();
    test_tool_failures();
    test_tool_result_fragments_and_sack();
#endif
#if MCPF_SIGN
    test_session_signed();
    test_session_signed_busy_retry();
#if MCPF_DEVICE_TOOLS
    test_tools_signed();
#endif
#endif
    printf("unit tests (signing %s): %d failures\n", MCPF_SIGN ? "on" : "off", failures);
    return failures ? 1 : 0;
}
