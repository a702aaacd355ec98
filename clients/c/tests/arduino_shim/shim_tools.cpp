// SPDX-License-Identifier: MIT
// A host stand-in for the Arduino core whose Serial1 is a scripted daemon
// that uses the sketch's tools (docs/protocol.md §16): it welcomes the
// sketch, takes its TOOLS, accepts its INFER (which must carry TOOLS_ON),
// calls read_soil, then set_relay {"on":true}, and answers once both
// results are in. main runs setup() and loop() over 5 simulated seconds
// and checks each tool ran once with the right result, the relay pin went
// HIGH and the answer completed.
#include <stdio.h>
#include <string.h>

#include "Arduino.h"
#include "mcpf.h"

HardwareSerial Serial, Serial1;
static unsigned long clock_ms;
static int tools_ran, done, failed, relay_pin = -1, relay_level = -1;

// ------------------------------------------------------- the scripted daemon

static uint8_t rx[4096];
static size_t rx_head, rx_tail;
static mcpf_decoder dec;
static uint8_t rbuf[2048];
static mcpf_reasm reasm;
static int declared, asked, results;
static char result[2][64];

static void put_frame(uint8_t cmd, uint8_t seq, const uint8_t *data, size_t n)
{
    uint8_t f[MCPF_MAX_FRAME];
    size_t len = mcpf_encode(f, MCPF_VERSION, cmd, seq, data, (uint16_t)n);
    if (rx_tail + len <= sizeof rx) {
        memcpy(rx + rx_tail, f, len);
        rx_tail += len;
    }
}

static void ack(uint8_t seq, uint16_t next)
{
    uint8_t a[3] = {(uint8_t)(next >> 8), (uint8_t)next, 255};
    put_frame(MCPF_ACK, seq, a, 3);
}

static void call(uint8_t seq, uint16_t chunk, uint8_t index, uint8_t tool, const char *args)
{
    uint8_t b[64];
    mcpf_tool_call c = {chunk, index, tool, (const uint8_t *)args, (uint16_t)strlen(args)};
    put_frame(MCPF_TOOL_CALL, seq, b, mcpf_put_tool_call(b, &c));
}

static void daemon_frame(const mcpf_frame &f)
{
    size_t n = 0;
    int complete = 0;
    if (f.flags & MCPF_FRAGMENT) {
        complete = mcpf_reasm_add(&reasm, &f, &n) == 1;
        if (!complete)
            return;
    }
    switch (f.cmd) {
    case MCPF_HELLO: {
        mcpf_welcome w = {1, 256, 0, 255, 5000, 16384, 0x01020304u};
        uint8_t b[16];
        put_frame(MCPF_WELCOME, f.seq, b, mcpf_put_welcome(b, &w));
        break;
    }
    case MCPF_TOOLS: {
        mcpf_tool_decl d[MCPF_MAX_TOOLS];
        uint8_t count = 0;
        if (mcpf_parse_tools(rbuf, n, d, MCPF_MAX_TOOLS, &count) == 0 && count == 2 && d[0].name_len == 9 &&
            !memcmp(d[0].name, "read_soil", 9) && d[1].name_len == 9 && !memcmp(d[1].name, "set_relay", 9))
            declared++;
        ack(f.seq, f.data[1]);
        break;
    }
    case MCPF_INFER: {
        mcpf_infer q;
        if (mcpf_parse_infer(rbuf, n, &q) == 0 && (q.present & MCPF_HAS(MCPF_OPT_TOOLS_ON)) && !asked++) {
            ack(f.seq, f.data[1]);
            call(f.seq, 0, 0, 0, "");
        }
        break;
    }
    case MCPF_TOOL_RESULT: {
        mcpf_tool_result r;
        ack(f.seq, f.data[1]);
        if (mcpf_parse_tool_result(rbuf, n, &r) < 0 || r.call != results || r.status != MCPF_TOOL_OK ||
            r.len >= sizeof result[0])
            break;
        memcpy(result[results], r.result, r.len);
        if (++results == 1)
            call(f.seq, 1, 1, 1, "{\"on\":true}");
        else {
            static const char text[] = "Watered.";
            uint8_t b[64];
            mcpf_token t = {2, (const uint8_t *)text, 8};
            mcpf_done d = {3, 0, 5, 9, 10, 100, 8, mcpf_crc32c(0, (const uint8_t *)text, 8)};
            put_frame(MCPF_TOKEN, f.seq, b, mcpf_put_token(b, &t));
            put_frame(MCPF_DONE, f.seq, b, mcpf_put_done(b, &d));
        }
        break;
    }
    default: // the device's ACKs
        break;
    }
}

// ----------------------------------------------------------- the Arduino core

void HardwareSerial::begin(unsigned long) {}
int HardwareSerial::available() { return this == &Serial1 ? (int)(rx_tail - rx_head) : 0; }
int HardwareSerial::read()
{
    if (this != &Serial1 || rx_head == rx_tail)
        return -1;
    int c = rx[rx_head++];
    if (rx_head == rx_tail)
        rx_head = rx_tail = 0;
    return c;
}
size_t HardwareSerial::write(const uint8_t *p, size_t n)
{
    if (this == &Serial1)
        for (size_t i = 0; i < n; i++) {
            mcpf_frame f;
            for (int e = mcpf_dec_push(&dec, p[i], &f); e != MCPF_DEC_NONE; e = mcpf_dec_poll(&dec, &f))
                if (e == MCPF_DEC_FRAME)
                    daemon_frame(f);
        }
    return n;
}
size_t HardwareSerial::println(const char *s)
{
    tools_ran += strstr(s, "[tool ran]") != NULL;
    done += strstr(s, "[done]") != NULL;
    failed += strstr(s, "[failed]") != NULL || strstr(s, "[tool failed]") != NULL;
    return strlen(s);
}
unsigned long millis() { return clock_ms; }
unsigned long micros() { return clock_ms * 1000; }
int analogRead(uint8_t) { return 512; } // half wet: 100 − 512 × 100 / 1023 = 50 %
void pinMode(uint8_t, uint8_t) {}
void digitalWrite(uint8_t pin, uint8_t value)
{
    relay_pin = pin;
    relay_level = value;
}

void setup();
void loop();

int main()
{
    mcpf_dec_init(&dec);
    mcpf_reasm_init(&reasm, rbuf, sizeof rbuf);
    setup();
    for (clock_ms = 0; clock_ms < 5000; clock_ms++)
        loop();
    printf("arduino sketch's tools on the shim: declared %d, read_soil \"%s\", set_relay \"%s\", pin %d level %d, "
           "%d tool runs, done %d, failed %d\n",
           declared, result[0], result[1], relay_pin, relay_level, tools_ran, done, failed);
    return declared == 1 && !strcmp(result[0], "50") && !strcmp(result[1], "relay on") && relay_pin == 7 &&
                   relay_level == HIGH && tools_ran == 2 && done == 1 && failed == 0
               ? 0
               : 1;
}
