/* SPDX-License-Identifier: MIT
 *
 * mcpf_ask — a device in plain POSIX C: asks mcpd one question over UDP or a
 * serial line and prints the answer as it streams in.
 *
 *   mcpf_ask --udp 127.0.0.1:7700 [options] "Which bed needs water?"
 *   mcpf_ask --serial /dev/ttyUSB0 --baud 115200 [options] PROMPT
 *   mcpf_ask --serial-fd 3 [options] PROMPT     (an inherited open line)
 *
 * Options: --max-tokens N, --seed N, --temperature MILLI (0 = greedy),
 * --schema ID (the answer is JSON of the daemon's schema ID, §11.4.1),
 * --device-id ID, --max-data N, --window N, --max-send N (cut the prompt
 * into frames of at most N data bytes), --retries N, --hold N (keep up to
 * N answer chunks that arrive after a gap and ask for SACK, §8.2; 0: go-back-N),
 * --key HEX (built with MCPF_SIGN=1), --tools (declare two device tools,
 * read_soil and set_relay, and let the model call them, §16; --soil
 * PERCENT is what the sensor reads, default 41; --soil-ms N makes a reading
 * take N ms), --status (after the answer, ask for STATUS in the extended
 * layout, §11.11, and print the daemon's cache figures). The answer goes to
 * stdout, statistics and each tool call to stderr (with the time from its
 * result sent to the stream's next chunk, the handler's own time not in
 * it). Exit
 * status: 0 answer complete and verified, the protocol's error code on
 * ERROR (docs/protocol.md §12), 1 otherwise.
 *
 * The library does the protocol; this file only moves bytes and keeps time,
 * as firmware would from its UART interrupt and millisecond tick.
 */
#define _POSIX_C_SOURCE 200809L
#include <arpa/inet.h>
#include <fcntl.h>
#include <netdb.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

#include "mcpf.h"
#include "mcpf_session.h"

static int fd = -1, is_udp;
static struct sockaddr_storage peer;
static socklen_t peer_len;

static double now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e6 + ts.tv_nsec / 1e3;
}

static uint32_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint32_t)(ts.tv_sec * 1000 + ts.tv_nsec / 1000000);
}

static int link_send(void *ctx, const uint8_t *frame, size_t len)
{
    (void)ctx;
    if (is_udp) /* unconnected: a daemon still starting must not make it fail */
        return sendto(fd, frame, len, 0, (struct sockaddr *)&peer, peer_len) == (ssize_t)len ? 0 : -1;
    while (len) {
        ssize_t k = write(fd, frame, len);
        if (k <= 0)
            return -1;
        frame += k;
        len -= (size_t)k;
    }
    return 0;
}

static int open_udp(const char *hostport)
{
    char host[256];
    const char *colon = strrchr(hostport, ':');
    struct addrinfo hints, *ai;
    if (!colon || (size_t)(colon - hostport) >= sizeof host)
        return -1;
    memcpy(host, hostport, (size_t)(colon - hostport));
    host[colon - hostport] = 0;
    memset(&hints, 0, sizeof hints);
    hints.ai_socktype = SOCK_DGRAM;
    if (getaddrinfo(host, colon + 1, &hints, &ai) != 0)
        return -1;
    memcpy(&peer, ai->ai_addr, ai->ai_addrlen);
    peer_len = ai->ai_addrlen;
    fd = socket(ai->ai_family, SOCK_DGRAM, 0);
    freeaddrinfo(ai);
    is_udp = 1;
    return fd;
}

static int open_serial(const char *path, unsigned baud)
{
    struct termios t;
    speed_t sp = baud == 9600 ? B9600 : baud == 57600 ? B57600 : baud == 230400 ? B230400 : B115200;
    if (path && (fd = open(path, O_RDWR | O_NOCTTY)) < 0)
        return -1;
    if (tcgetattr(fd, &t) == 0) { /* raw 8N1; a pty ignores the rate */
        t.c_iflag &= ~(tcflag_t)(IGNBRK | BRKINT | PARMRK | ISTRIP | INLCR | IGNCR | ICRNL | IXON);
        t.c_oflag &= ~(tcflag_t)OPOST;
        t.c_lflag &= ~(tcflag_t)(ECHO | ECHONL | ICANON | ISIG | IEXTEN);
        t.c_cflag &= ~(tcflag_t)(CSIZE | PARENB | CSTOPB);
        t.c_cflag |= CS8 | CREAD | CLOCAL;
        cfsetispeed(&t, sp);
        cfsetospeed(&t, sp);
        tcsetattr(fd, TCSANOW, &t);
    }
    return fd;
}

static int hexkey(const char *h, uint8_t *out)
{
    size_t i, n = strlen(h);
    if (n % 2 || n / 2 > 64)
        return -1;
    for (i = 0; i < n / 2; i++) {
        unsigned v;
        if (sscanf(h + 2 * i, "%2x", &v) != 1)
            return -1;
        out[i] = (uint8_t)v;
    }
    return (int)(n / 2);
}

/* ---------------------------------------------- the device's tools (§16) */

static unsigned soil = 41; /* the soil sensor, in percent */
static unsigned soil_ms;   /* how long a reading takes */
static int relay = -1;     /* the pump relay: -1 never set, 0 off, 1 on */

/* read_soil: no arguments; answers the moisture as a number. */
static int read_soil(void *ctx, const char *args, size_t len, char *out, size_t cap, size_t *out_len)
{
    (void)ctx, (void)args, (void)len;
    if (soil_ms) { /* a slow sensor */
        struct timespec ts;
        ts.tv_sec = soil_ms / 1000;
        ts.tv_nsec = (long)(soil_ms % 1000) * 1000000L;
        nanosleep(&ts, NULL);
    }
    *out_len = (size_t)snprintf(out, cap, "%u", soil);
    return MCPF_TOOL_OK;
}

/* set_relay {"on":true|false}: switches the pump. */
static int set_relay(void *ctx, const char *args, size_t len, char *out, size_t cap, size_t *out_len)
{
    size_t vl;
    const char *v = mcpf_json_get(args, len, "on", &vl);
    (void)ctx;
    if (v && vl == 4 && !memcmp(v, "true", 4))
        relay = 1;
    else if (v && vl == 5 && !memcmp(v, "false", 5))
        relay = 0;
    else {
        *out_len = (size_t)snprintf(out, cap, "on must be true or false");
        return MCPF_TOOL_FAILED;
    }
    *out_len = (size_t)snprintf(out, cap, "relay %s", relay ? "on" : "off");
    return MCPF_TOOL_OK;
}

static const mcpf_tool tools[] = {
    {"read_soil", "Reads the soil moisture sensor of the bed; answers the moisture in percent.", NULL, read_soil},
    {"set_relay", "Switches the pump relay of the bed on or off.",
     "{\"type\":\"object\",\"properties\":{\"on\":{\"type\":\"boolean\"}}}", set_relay},
};
static uint8_t tool_buf[MCPF_TOOL_BUF(256)]; /* a TOOL_RESULT: call, status, up to 256 bytes of result */
static int use_tools;

static mcpf_session s;
static uint8_t body[4096];
static size_t body_len;
static int asked, status = 1, want_status;
static double tool_sent; /* when the last TOOL_RESULT went out; 0: none outstanding */
static uint32_t started, done_at;

/* The STATUS_REPLY's cache figures (§11.11), one line a cache. */
static void print_status(const mcpf_status_reply *st)
{
    const mcpf_cache_figures *f[2] = {&st->kv, &st->responses};
    static const char *names[2] = {"kv cache", "response cache"};
    int i;
    fprintf(stderr, "status: %s layout, load %u%%, backend %.*s\n", st->extended ? "extended" : "basic", st->load,
            st->backend_len, (const char *)st->backend);
    for (i = 0; i < 2; i++)
        if (st->has & (i ? MCPF_STATUS_RESPONSES : MCPF_STATUS_KV))
            fprintf(stderr, "status: %s: %lu hits, %lu misses, %lu evictions, %llu bytes\n", names[i], (unsigned long)f[i]->hits,
                    (unsigned long)f[i]->misses, (unsigned long)f[i]->evictions, (unsigned long long)f[i]->bytes);
}

/* What the device does with each event; returns -1 to go on, or the exit
 * status. */
static int on_event(const mcpf_event *ev, uint32_t now)
{
    if (tool_sent > 0 && ev->type != MCPF_EV_NONE) {
        /* The stream went on: the daemon took the result and the model
         * answered it. The handler's own time is not in this. (An ERROR
         * may have been waiting since before the result: not timed.) */
        if (ev->type == MCPF_EV_TEXT || ev->type == MCPF_EV_TOOL || ev->type == MCPF_EV_DONE)
            fprintf(stderr, "tool round trip: %.3f ms\n", (now_us() - tool_sent) / 1e3);
        tool_sent = 0;
    }
    switch (ev->type) {
    case MCPF_EV_WELCOME:
        if (use_tools) { /* declare first; ask once the daemon has them */
            if (mcpf_session_tools(&s, now) != 0) {
                fprintf(stderr, "mcpf_ask: the tool table does not fit the daemon\n");
                return 1;
            }
            return -1;
        }
        /* fall through */
    case MCPF_EV_TOOLS:
        if (!asked++ && mcpf_session_infer(&s, now, body, body_len) != 0) {
            fprintf(stderr, "mcpf_ask: prompt too large for the daemon\n");
            return 1;
        }
        return -1;
    case MCPF_EV_TOOL:
        fprintf(stderr, "tool call %u: %s -> %s \"%.*s\"\n", ev->u.tool.call,
                ev->u.tool.tool < 2 ? tools[ev->u.tool.tool].name : "?", ev->u.tool.status ? "FAILED" : "OK",
                (int)ev->u.tool.len, (const char *)tool_buf + 2);
        tool_sent = now_us();
        return -1;
    case MCPF_EV_TEXT:
        fwrite(ev->u.text.p, 1, ev->u.text.len, stdout);
        fflush(stdout);
        return -1;
    case MCPF_EV_DONE:
        printf("\n");
        if (relay >= 0)
            fprintf(stderr, "relay: %s\n", relay ? "on" : "off");
        fprintf(stderr, "done: %lu tokens, prompt %lu tokens, first token %lu ms, %lu ms in all, %lu bytes, CRC-32C %08lx ok\n",
                (unsigned long)ev->u.done.tokens, (unsigned long)ev->u.done.prompt_tokens, (unsigned long)ev->u.done.ttft_ms,
                (unsigned long)(now_ms() - started), (unsigned long)ev->u.done.text_bytes, (unsigned long)ev->u.done.text_crc32c);
        status = 0;
        done_at = now;
        if (want_status && mcpf_session_status(&s, now) == 0)
            return -1;
        mcpf_session_bye(&s, now);
        return -1;
    case MCPF_EV_STATUS:
        print_status(&ev->u.status);
        mcpf_session_bye(&s, now);
        return -1;
    case MCPF_EV_BAD_ANSWER:
        fprintf(stderr, "\nmcpf_ask: the answer's checksum does not match DONE\n");
        return 1;
    case MCPF_EV_ERROR:
        fprintf(stderr, "\nmcpf_ask: daemon answered ERROR %u: %.*s\n", ev->u.error.code, ev->u.error.len, (const char *)ev->u.error.text);
        return ev->u.error.code ? ev->u.error.code : 1;
    case MCPF_EV_TIMEOUT: /* after DONE only the BYE went unanswered */
        if (status)
            fprintf(stderr, "\nmcpf_ask: no answer from the daemon\n");
        return status;
    case MCPF_EV_BYE:
        if (status)
            fprintf(stderr, "\nmcpf_ask: the daemon closed the session\n");
        return status;
    default:
        return -1;
    }
}

int main(int argc, char **argv)
{
    static mcpf_decoder dec;
    static uint8_t rx[MCPF_MAX_FRAME + 1];
    static uint8_t holdbuf[8 * MCPF_HOLD_SLOT(MCPF_MAX_DATA)];
    mcpf_config cfg;
    mcpf_infer q;
    mcpf_event ev;
    mcpf_frame f;
    const char *prompt = NULL, *key = NULL;
    unsigned baud = 115200;
    uint32_t last_byte = 0, idle;
    int i, rc;

    memset(&cfg, 0, sizeof cfg);
    memset(&q, 0, sizeof q);
    cfg.device_id = "posix-device";
    cfg.max_data = 256;
    cfg.window = 4;
    cfg.send = link_send;
    for (i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : "";
        unsigned long x = strtoul(v, NULL, 0);
        if (a[0] != '-') { prompt = a; continue; }
        i++;
        if (!strcmp(a, "--udp") && open_udp(v) >= 0) cfg.link = MCPF_LINK_UDP;
        else if (!strcmp(a, "--serial") && open_serial(v, baud) >= 0) cfg.link = MCPF_LINK_SERIAL;
        else if (!strcmp(a, "--serial-fd") && (fd = (int)x, open_serial(NULL, baud)) >= 0) cfg.link = MCPF_LINK_SERIAL;
        else if (!strcmp(a, "--baud")) baud = (unsigned)x;
        else if (!strcmp(a, "--device-id")) cfg.device_id = v;
        else if (!strcmp(a, "--max-data")) cfg.max_data = (uint16_t)x;
        else if (!strcmp(a, "--window")) cfg.window = (uint8_t)x;
        else if (!strcmp(a, "--max-send")) cfg.max_send = (uint16_t)x;
        else if (!strcmp(a, "--retries")) cfg.retries = (uint8_t)x;
        else if (!strcmp(a, "--hold")) cfg.hold = holdbuf, cfg.hold_size = (uint16_t)(x < 8 ? x : 8) * (uint16_t)MCPF_HOLD_SLOT(MCPF_MAX_DATA);
        else if (!strcmp(a, "--key")) key = v;
        else if (!strcmp(a, "--max-tokens")) q.present |= MCPF_HAS(MCPF_OPT_MAX_TOKENS), q.max_tokens = (uint16_t)x;
        else if (!strcmp(a, "--seed")) q.present |= MCPF_HAS(MCPF_OPT_SEED), q.seed = (uint32_t)x;
        else if (!strcmp(a, "--temperature")) q.present |= MCPF_HAS(MCPF_OPT_TEMPERATURE), q.temperature = (uint16_t)x;
        else if (!strcmp(a, "--schema")) q.present |= MCPF_HAS(MCPF_OPT_SCHEMA), q.schema = (uint8_t)x;
        else if (!strcmp(a, "--tools")) use_tools = 1, i--;
        else if (!strcmp(a, "--status")) want_status = 1, cfg.status_ext = 1, i--;
        else if (!strcmp(a, "--soil")) soil = (unsigned)x;
        else if (!strcmp(a, "--soil-ms")) soil_ms = (unsigned)x;
        else { fprintf(stderr, "mcpf_ask: bad argument %s %s (see the comment at the top of mcpf_ask.c)\n", a, v); return 1; }
    }
    if (fd < 0 || !prompt) {
        fprintf(stderr, "usage: mcpf_ask (--udp HOST:PORT | --serial PATH | --serial-fd N) [options] PROMPT\n");
        return 1;
    }
    cfg.baud = baud;
    if (use_tools) {
        cfg.tools = tools;
        cfg.tool_count = 2;
        cfg.tool_buf = tool_buf;
        cfg.tool_buf_size = sizeof tool_buf;
        q.present |= MCPF_HAS(MCPF_OPT_TOOLS_ON);
    }
#if MCPF_SIGN
    {
        static uint8_t k[64];
        int kl = key ? hexkey(key, k) : 0;
        if (kl < 0 || (kl && kl < 16)) { fprintf(stderr, "mcpf_ask: --key wants 16..64 bytes in hex\n"); return 1; }
        cfg.key.k = k;
        cfg.key.len = (uint8_t)kl;
    }
#else
    if (key) { fprintf(stderr, "mcpf_ask: built without MCPF_SIGN, cannot sign\n"); return 1; }
    (void)hexkey;
#endif
    q.prompt = (const uint8_t *)prompt;
    q.prompt_len = strlen(prompt);
    if (!(body_len = mcpf_put_infer(body, sizeof body, &q))) { fprintf(stderr, "mcpf_ask: prompt too long\n"); return 1; }

    {
        uint32_t nonce = 0; /* fresh random per HELLO (§9.3): a reused one is refused as a replay */
        int r = open("/dev/urandom", O_RDONLY);
        if (r < 0 || read(r, &nonce, sizeof nonce) != (ssize_t)sizeof nonce) {
            fprintf(stderr, "mcpf_ask: no random bytes for the boot nonce\n");
            return 1;
        }
        close(r);
        mcpf_session_init(&s, &cfg, nonce);
    }
    mcpf_dec_init(&dec);
    idle = mcpf_idle_ms(baud);
    started = now_ms();
    if (mcpf_session_hello(&s, started) < 0) {
        fprintf(stderr, "mcpf_ask: --device-id must be 1..64 characters and --window 1..255\n");
        return 1;
    }
    for (;;) {
        struct pollfd p;
        uint32_t now = now_ms(), wait = mcpf_session_wait_ms(&s, now);
        if (!is_udp && dec.n && wait > idle) /* time the line's idle gap */
            wait = idle;
        p.fd = fd;
        p.events = POLLIN;
        if (poll(&p, 1, (int)(wait > 1000 ? 1000 : wait)) > 0) {
            ssize_t k = is_udp ? recv(fd, rx, sizeof rx, 0) : read(fd, rx, sizeof rx), j;
            now = now_ms();
            if (k <= 0 && !is_udp) {
                fprintf(stderr, "mcpf_ask: line closed\n");
                return 1;
            }
            if (is_udp && k > 0 && mcpf_decode(rx, (size_t)k, &f) == 0 && /* one datagram, one frame */
                (rc = on_event((mcpf_session_frame(&s, now, &f, &ev), &ev), now)) >= 0)
                return rc;
            for (j = 0; !is_udp && j < k; j++) {
                int de = mcpf_dec_push(&dec, rx[j], &f);
                last_byte = now;
                for (; de != MCPF_DEC_NONE; de = mcpf_dec_poll(&dec, &f)) {
                    if (de == MCPF_DEC_BADCRC)
                        mcpf_session_badcrc(&s, now); /* NACK BAD_FRAME */
                    if (de == MCPF_DEC_FRAME && (rc = on_event((mcpf_session_frame(&s, now, &f, &ev), &ev), now)) >= 0)
                        return rc;
                }
            }
        } else if (!is_udp && dec.n && now - last_byte >= idle) {
            int de;
            mcpf_dec_idle(&dec); /* the line went quiet inside a frame */
            for (de = mcpf_dec_poll(&dec, &f); de != MCPF_DEC_NONE; de = mcpf_dec_poll(&dec, &f))
                if (de == MCPF_DEC_FRAME && (rc = on_event((mcpf_session_frame(&s, now, &f, &ev), &ev), now)) >= 0)
                    return rc;
        }
        if ((rc = on_event((mcpf_session_tick(&s, now, &ev), &ev), now)) >= 0)
            return rc;
        if (status == 0 && (s.req == MCPF_REQ_NONE || now - done_at > 2000))
            return 0; /* BYE answered, or not worth waiting for longer */
    }
}
