/* SPDX-License-Identifier: MIT
 *
 * soak_device — the C library as one device of the fault scenarios
 * (internal/soak, docs/reliability.md): over UDP it asks one distinct
 * prompt after another, each in a new chat, until --ms milliseconds have
 * passed, and prints one line per request:
 *
 *   K <TAB> DONE|BAD|TIMEOUT|ERROR:CODE <TAB> the text received
 *
 *   soak_device --udp HOST:PORT --device-id ID [--max-data N] [--window N]
 *               [--hold N] [--retries N] [--ms N] [--name NAME]
 *
 * The prompt of request K is "NAME request K: soil 31 % air 24.5 C" (NAME
 * defaults to the device id), as the Go devices of the soak ask. After a
 * timeout it says HELLO again; NO_SESSION the library handles (§10).
 * Statistics to stderr: requests, and frames resent on the RTO.
 */
#define _POSIX_C_SOURCE 200809L
#include <arpa/inet.h>
#include <netdb.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "mcpf.h"
#include "mcpf_session.h"

static int fd = -1;
static struct sockaddr_storage peer;
static socklen_t peer_len;
static unsigned long sends;

static uint32_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint32_t)(ts.tv_sec * 1000 + ts.tv_nsec / 1000000);
}

static int link_send(void *ctx, const uint8_t *frame, size_t len)
{
    (void)ctx;
    sends++;
    return sendto(fd, frame, len, 0, (struct sockaddr *)&peer, peer_len) == (ssize_t)len ? 0 : -1;
}

static int open_udp(const char *hostport)
{
    char host[256];
    const char *colon = strrchr(hostport, ':');
    struct addrinfo hints, *res;
    if (!colon || (size_t)(colon - hostport) >= sizeof host)
        return -1;
    memcpy(host, hostport, (size_t)(colon - hostport));
    host[colon - hostport] = 0;
    memset(&hints, 0, sizeof hints);
    hints.ai_socktype = SOCK_DGRAM;
    if (getaddrinfo(host, colon + 1, &hints, &res) != 0)
        return -1;
    fd = socket(res->ai_family, SOCK_DGRAM, 0);
    memcpy(&peer, res->ai_addr, res->ai_addrlen);
    peer_len = (socklen_t)res->ai_addrlen;
    freeaddrinfo(res);
    return fd;
}

static mcpf_session s;

/* Runs the session until an event other than TEXT or NONE; TEXT is
 * appended to text. */
static int run(char *text, size_t *len, size_t cap)
{
    static uint8_t rx[MCPF_MAX_FRAME + 1];
    mcpf_event ev;
    mcpf_frame f;
    for (;;) {
        struct pollfd p;
        uint32_t now = now_ms(), wait = mcpf_session_wait_ms(&s, now);
        ev.type = MCPF_EV_NONE;
        p.fd = fd;
        p.events = POLLIN;
        if (poll(&p, 1, (int)(wait > 1000 ? 1000 : wait)) > 0) {
            ssize_t k = recv(fd, rx, sizeof rx, 0);
            now = now_ms();
            if (k > 0 && mcpf_decode(rx, (size_t)k, &f) == 0)
                mcpf_session_frame(&s, now, &f, &ev);
        }
        if (ev.type == MCPF_EV_NONE)
            mcpf_session_tick(&s, now_ms(), &ev);
        if (ev.type == MCPF_EV_TEXT) {
            if (*len + ev.u.text.len <= cap) {
                memcpy(text + *len, ev.u.text.p, ev.u.text.len);
                *len += ev.u.text.len;
            }
            continue;
        }
        if (ev.type != MCPF_EV_NONE)
            return ev.type == MCPF_EV_ERROR ? -(int)ev.u.error.code - 1 : ev.type;
    }
}

int main(int argc, char **argv)
{
    static uint8_t holdbuf[8 * MCPF_HOLD_SLOT(MCPF_MAX_DATA)];
    static uint8_t body[512];
    static char prompt[256], text[4096];
    mcpf_config cfg;
    const char *name = NULL;
    unsigned long ms = 2000, k;
    uint32_t start;
    int i, rc, hello = 1;

    memset(&cfg, 0, sizeof cfg);
    cfg.device_id = "c-soak";
    cfg.max_data = 64;
    cfg.window = 4;
    cfg.link = MCPF_LINK_UDP;
    cfg.send = link_send;
    for (i = 1; i + 1 < argc; i += 2) {
        const char *a = argv[i], *v = argv[i + 1];
        unsigned long x = strtoul(v, NULL, 0);
        if (!strcmp(a, "--udp")) { if (open_udp(v) < 0) return 1; }
        else if (!strcmp(a, "--device-id")) cfg.device_id = v;
        else if (!strcmp(a, "--name")) name = v;
        else if (!strcmp(a, "--max-data")) cfg.max_data = (uint16_t)x;
        else if (!strcmp(a, "--window")) cfg.window = (uint8_t)x;
        else if (!strcmp(a, "--retries")) cfg.retries = (uint8_t)x;
        else if (!strcmp(a, "--ms")) ms = x;
        else if (!strcmp(a, "--hold")) cfg.hold = x ? holdbuf : NULL, cfg.hold_size = (uint16_t)(x < 8 ? x : 8) * (uint16_t)MCPF_HOLD_SLOT(MCPF_MAX_DATA);
        else { fprintf(stderr, "soak_device: bad argument %s %s\n", a, v); return 1; }
    }
    if (fd < 0) {
        fprintf(stderr, "usage: soak_device --udp HOST:PORT [options]\n");
        return 1;
    }
    if (!name)
        name = cfg.device_id;
    mcpf_session_init(&s, &cfg, (uint32_t)getpid() ^ now_ms());
    start = now_ms();
    for (k = 0; now_ms() - start < ms;) {
        size_t len = 0;
        if (hello) {
            mcpf_session_hello(&s, now_ms());
            if (run(text, &len, sizeof text) != MCPF_EV_WELCOME)
                continue; /* again, until the time is up */
            hello = 0;
        }
        {
            mcpf_infer q;
            size_t n;
            memset(&q, 0, sizeof q);
            q.present = MCPF_HAS(MCPF_OPT_NEW_CHAT);
            snprintf(prompt, sizeof prompt, "%s request %lu: soil 31 %% air 24.5 C", name, k);
            q.prompt = (const uint8_t *)prompt;
            q.prompt_len = strlen(prompt);
            n = mcpf_put_infer(body, sizeof body, &q);
            if (!n || mcpf_session_infer(&s, now_ms(), body, n) != 0) {
                fprintf(stderr, "soak_device: INFER refused by the library\n");
                return 1;
            }
        }
        rc = run(text, &len, sizeof text);
        switch (rc) {
        case MCPF_EV_DONE: printf("%lu\tDONE\t", k); break;
        case MCPF_EV_BAD_ANSWER: printf("%lu\tBAD\t", k); break;
        case MCPF_EV_TIMEOUT: printf("%lu\tTIMEOUT\t", k); hello = 1; break;
        default:
            if (rc < 0) {
                printf("%lu\tERROR:%d\t", k, -rc - 1);
                hello = !s.open;
            } else
                printf("%lu\tEVENT:%d\t", k, rc);
        }
        fwrite(text, 1, len, stdout);
        putchar('\n');
        k++;
    }
    fflush(stdout);
    fprintf(stderr, "soak_device %s: %lu requests, %lu frames sent\n", cfg.device_id, k, sends);
    return 0;
}
