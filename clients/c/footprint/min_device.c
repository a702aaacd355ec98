/* SPDX-License-Identifier: MIT
 * A whole device: HELLO, INFER with its fragments, the answer stream with
 * retransmission and flow control, over a UART (MCPF_SIGN adds signing;
 * MIN_TOOLS=1 lends the model two tools, §16), linked with --gc-sections
 * to measure the library as firmware uses it. */
#include "mcpf.h"
#include "mcpf_session.h"

#define UART_DATA (*(volatile uint8_t *)0x40004000u)
#define UART_READY (*(volatile uint8_t *)0x40004004u)
#define TICK_MS (*(volatile uint32_t *)0x40008000u)
#define CONSOLE (*(volatile uint8_t *)0x4000C000u)

static mcpf_decoder dec;
static mcpf_session session;
static mcpf_config cfg;
static uint8_t body[64];
#if MIN_TOOLS
/* Two tools (§16): the model may read a sensor and set a relay. */
#define SENSOR (*(volatile uint16_t *)0x40010000u)
#define RELAY (*(volatile uint8_t *)0x40010004u)
static int read_soil(void *ctx, const char *args, size_t len, char *out, size_t cap, size_t *out_len)
{
    unsigned v = SENSOR % 101u;
    (void)ctx, (void)args, (void)len;
    if (cap < 3)
        return MCPF_TOOL_FAILED;
    *out_len = 0;
    if (v >= 100)
        out[(*out_len)++] = '1';
    if (v >= 10)
        out[(*out_len)++] = (char)('0' + v / 10 % 10);
    out[(*out_len)++] = (char)('0' + v % 10);
    return MCPF_TOOL_OK;
}
static int set_relay(void *ctx, const char *args, size_t len, char *out, size_t cap, size_t *out_len)
{
    size_t vl;
    const char *v = mcpf_json_get(args, len, "on", &vl);
    (void)ctx, (void)out, (void)cap;
    *out_len = 0;
    if (!v)
        return MCPF_TOOL_FAILED;
    RELAY = v[0] == 't';
    return MCPF_TOOL_OK;
}
static const mcpf_tool tools[] = {
    {"read_soil", "Soil moisture in percent.", NULL, read_soil},
    {"set_relay", "Pump on or off.", "{\"type\":\"object\",\"properties\":{\"on\":{\"type\":\"boolean\"}}}", set_relay},
};
static uint8_t tool_buf[MCPF_TOOL_BUF(16)];
#endif
#if MCPF_SIGN
static const uint8_t key[32] = {1, 2, 3};
#endif

static int uart_send(void *ctx, const uint8_t *p, size_t n)
{
    (void)ctx;
    while (n--)
        UART_DATA = *p++;
    return 0;
}

int main(void)
{
    mcpf_infer q = {0};
    mcpf_frame f;
    mcpf_event ev;
    size_t len, i;
    uint32_t last = 0;
    q.prompt = (const uint8_t *)"Which bed needs water?";
    q.prompt_len = 22;
    len = mcpf_put_infer(body, sizeof body, &q);
    cfg.device_id = "m0";
    cfg.max_data = 64;
    cfg.window = 1;
    cfg.link = MCPF_LINK_SERIAL;
    cfg.baud = 115200;
    cfg.send = uart_send;
#if MIN_TOOLS
    q.present = MCPF_HAS(MCPF_OPT_TOOLS_ON);
    len = mcpf_put_infer(body, sizeof body, &q);
    cfg.tools = tools;
    cfg.tool_count = 2;
    cfg.tool_buf = tool_buf;
    cfg.tool_buf_size = sizeof tool_buf;
#endif
#if MCPF_SIGN
    cfg.key.k = key;
    cfg.key.len = sizeof key;
#endif
    mcpf_dec_init(&dec);
    mcpf_session_init(&session, &cfg, TICK_MS);
    mcpf_session_hello(&session, TICK_MS);
    for (;;) {
        uint32_t now = TICK_MS;
        int e = MCPF_DEC_NONE;
        ev.type = MCPF_EV_NONE;
        if (UART_READY) {
            e = mcpf_dec_push(&dec, UART_DATA, &f);
            last = now;
        } else if (dec.n && now - last > mcpf_idle_ms(115200)) {
            mcpf_dec_idle(&dec);
            e = mcpf_dec_poll(&dec, &f);
        }
        if (e == MCPF_DEC_BADCRC)
            mcpf_session_badcrc(&session, now);
        else if (e == MCPF_DEC_FRAME)
            mcpf_session_frame(&session, now, &f, &ev);
        if (ev.type == MCPF_EV_NONE)
            mcpf_session_tick(&session, now, &ev);
#if MIN_TOOLS
        if (ev.type == MCPF_EV_WELCOME)
            mcpf_session_tools(&session, now);
        else if (ev.type == MCPF_EV_TOOLS)
            mcpf_session_infer(&session, now, body, len);
#else
        if (ev.type == MCPF_EV_WELCOME)
            mcpf_session_infer(&session, now, body, len);
#endif
        else if (ev.type == MCPF_EV_TEXT)
            for (i = 0; i < ev.u.text.len; i++)
                CONSOLE = ev.u.text.p[i];
    }
}

void Reset_Handler(void) { (void)main(); }
