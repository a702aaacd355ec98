// SPDX-License-Identifier: MIT
//
// mcpd_ask — an Arduino asks mcpd a question over a UART and prints the
// streamed answer on the USB console. It lends the model two tools
// (docs/protocol.md §16): read_soil (the moisture sensor on A0, in
// percent) and set_relay {"on":true|false} (the pump relay on pin 7). Wire the board's Serial1 to the
// machine running `mcpd --serial /dev/ttyUSB0:115200`. Install clients/c
// as a library (include/ and src/ together in libraries/mcpf/src).
//
// Wiring: the board's TX1 to the gateway's RX, RX1 to its TX, and GND to
// GND. A 5 V board (Uno, Mega) needs a level shifter towards a 3.3 V
// gateway (Raspberry Pi GPIO 15/pin 10, an adapter set to 3.3 V). On a
// Pi use /dev/serial0 with enable_uart=1. Power the board on its own
// (USB), not from the gateway's 3.3 V pin. See clients/c/README.md.
#include <Arduino.h>

#include <stdio.h>
#include <string.h>

#include "mcpf.h"
#include "mcpf_session.h"

#define MCPD Serial1   // the link to mcpd
#define CONSOLE Serial // where the answer is printed
static const uint32_t BAUD = 115200;
static const uint8_t SOIL_PIN = A0, RELAY_PIN = 7;

static mcpf_config cfg;
static mcpf_session session;
static mcpf_decoder dec;
static uint8_t body[96];
static size_t body_len;
static uint32_t last_byte;

// The tools. Each handler writes what the model reads into out (cap
// bytes) and runs once per call, inside mcpf_session_frame/_tick.
static int read_soil(void *, const char *, size_t, char *out, size_t cap, size_t *out_len)
{
    long percent = 100L - (long)analogRead(SOIL_PIN) * 100L / 1023L; // a capacitive probe reads high when dry
    *out_len = (size_t)snprintf(out, cap, "%ld", percent);
    return MCPF_TOOL_OK;
}

static int set_relay(void *, const char *args, size_t len, char *out, size_t cap, size_t *out_len)
{
    size_t vl;
    const char *v = mcpf_json_get(args, len, "on", &vl);
    bool on = v && vl == 4 && !memcmp(v, "true", 4);
    if (!on && !(v && vl == 5 && !memcmp(v, "false", 5))) {
        *out_len = (size_t)snprintf(out, cap, "on must be true or false");
        return MCPF_TOOL_FAILED;
    }
    digitalWrite(RELAY_PIN, on ? HIGH : LOW);
    *out_len = (size_t)snprintf(out, cap, on ? "relay on" : "relay off");
    return MCPF_TOOL_OK;
}

static const mcpf_tool tools[] = {
    {"read_soil", "Reads the soil moisture of the bed; answers percent.", NULL, read_soil},
    {"set_relay", "Switches the bed's pump on or off.",
     "{\"type\":\"object\",\"properties\":{\"on\":{\"type\":\"boolean\"}}}", set_relay},
};
static uint8_t tool_buf[MCPF_TOOL_BUF(32)]; // call, status, a result of up to 32 bytes

static int send_frame(void *, const uint8_t *frame, size_t len)
{
    return MCPD.write(frame, len) == len ? 0 : -1;
}

static void on_event(const mcpf_event &ev)
{
    switch (ev.type) {
    case MCPF_EV_WELCOME: // declare the tools, then ask
        mcpf_session_tools(&session, millis());
        break;
    case MCPF_EV_TOOLS:
        mcpf_session_infer(&session, millis(), body, body_len);
        break;
    case MCPF_EV_TOOL:
        CONSOLE.println(ev.u.tool.status == MCPF_TOOL_OK ? "[tool ran]" : "[tool failed]");
        break;
    case MCPF_EV_TEXT:
        CONSOLE.write(ev.u.text.p, ev.u.text.len);
        break;
    case MCPF_EV_DONE:
        CONSOLE.println("\n[done]");
        break;
    case MCPF_EV_ERROR:
    case MCPF_EV_TIMEOUT:
    case MCPF_EV_BAD_ANSWER:
        CONSOLE.println("\n[failed]");
        break;
    }
}

void setup()
{
    CONSOLE.begin(115200);
    MCPD.begin(BAUD);
    mcpf_infer q = {};
    q.present = MCPF_HAS(MCPF_OPT_MAX_TOKENS) | MCPF_HAS(MCPF_OPT_TOOLS_ON);
    q.max_tokens = 64;
    q.prompt = (const uint8_t *)"Is the bed dry? Water it if so.";
    q.prompt_len = 31;
    body_len = mcpf_put_infer(body, sizeof body, &q);
    cfg.device_id = "arduino-uart";
    cfg.max_data = 64; // frames up to 71 bytes: a small receive buffer
    cfg.window = 1;    // one frame of buffer: the daemon waits for each ACK
    cfg.link = MCPF_LINK_SERIAL;
    cfg.baud = BAUD;
    cfg.send = send_frame;
    cfg.tools = tools;
    cfg.tool_count = 2;
    cfg.tool_buf = tool_buf;
    cfg.tool_buf_size = sizeof tool_buf;
    pinMode(RELAY_PIN, OUTPUT);
    mcpf_session_init(&session, &cfg, micros() ^ analogRead(0)); // boot nonce
    mcpf_dec_init(&dec);
    mcpf_session_hello(&session, millis());
}

void loop()
{
    mcpf_frame f;
    mcpf_event ev;
    uint32_t now = millis();
    while (MCPD.available() > 0) {
        int e = mcpf_dec_push(&dec, (uint8_t)MCPD.read(), &f);
        last_byte = now;
        for (; e != MCPF_DEC_NONE; e = mcpf_dec_poll(&dec, &f)) {
            if (e == MCPF_DEC_BADCRC)
                mcpf_session_badcrc(&session, now);
            else if (e == MCPF_DEC_FRAME && mcpf_session_frame(&session, now, &f, &ev))
                on_event(ev);
        }
    }
    if (dec.n && now - last_byte >= mcpf_idle_ms(BAUD)) { // quiet inside a frame
        mcpf_dec_idle(&dec);
        for (int e; (e = mcpf_dec_poll(&dec, &f)) != MCPF_DEC_NONE;)
            if (e == MCPF_DEC_FRAME && mcpf_session_frame(&session, now, &f, &ev))
                on_event(ev);
    }
    if (mcpf_session_tick(&session, now, &ev))
        on_event(ev);
}
