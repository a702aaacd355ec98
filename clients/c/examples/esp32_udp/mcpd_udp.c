/* SPDX-License-Identifier: MIT
 *
 * mcpd_udp — an ESP32 (ESP-IDF) joins Wi-Fi, asks mcpd a question over UDP
 * and logs the streamed answer. UDP is an ESP32's natural link to mcpd:
 * one MCPFrame per datagram (docs/protocol.md §7.2), no broker, no wires
 * beyond power. The library stays transport-agnostic: this file is the
 * glue between lwIP's BSD sockets and the session's send callback.
 *
 * Configure (idf.py menuconfig, or -D on the compiler's command line):
 *   WIFI_SSID, WIFI_PASSWORD  the network mcpd's machine is on;
 *   MCPD_HOST, MCPD_PORT      where mcpd listens: give it
 *                             `listen_udp = ["0.0.0.0:7700"]` (mcpd listens
 *                             on loopback only by default) and, on a shared
 *                             network, a [keys] entry for this device and
 *                             MCPF_SIGN=1 here (docs/protocol.md §9).
 *
 * Power: Wi-Fi transmit bursts draw up to ~500 mA from the 3.3 V rail;
 * power the board from USB or a regulator good for that, not from another
 * board's 3.3 V pin, or brown-outs reset it mid-answer.
 *
 * On the host, tests/esp_udp_shim provides the ESP-IDF calls used here over
 * real POSIX sockets and a real clock, so clients/c/e2e runs this file
 * against a real mcpd and `make examples` compiles it.
 */
#include <stdio.h>
#include <string.h>

#include "esp_event.h"
#include "esp_netif.h"
#include "esp_random.h"
#include "esp_timer.h"
#include "esp_wifi.h"
#include "freertos/FreeRTOS.h"
#include "freertos/task.h"
#include "lwip/sockets.h"
#include "nvs_flash.h"

#include "mcpf.h"
#include "mcpf_session.h"

#ifndef WIFI_SSID
#define WIFI_SSID "greenhouse"
#endif
#ifndef WIFI_PASSWORD
#define WIFI_PASSWORD "set-me"
#endif
#ifndef MCPD_HOST
#define MCPD_HOST "192.168.4.2"
#endif
#ifndef MCPD_PORT
#define MCPD_PORT 7700
#endif
#ifndef PROMPT
#define PROMPT "Soil 31 %, air 24.5 C. Water bed 3 now?"
#endif
#define DEVICE_ID "greenhouse-7"

static int sock = -1;
static mcpf_session session;
static mcpf_config cfg;
static uint8_t body[160];
static volatile int got_ip;
int mcpd_udp_result = -1; /* 0 answer complete, else failed (read by the host shim) */

static uint32_t now_ms(void) { return (uint32_t)(esp_timer_get_time() / 1000); }

/* The session's send callback: one frame, one datagram. */
static int send_frame(void *ctx, const uint8_t *frame, size_t len)
{
    (void)ctx;
    return send(sock, frame, len, 0) == (ssize_t)len ? 0 : -1; /* a lost one is retransmitted */
}

static void on_wifi(void *arg, esp_event_base_t base, int32_t id, void *data)
{
    (void)arg;
    (void)data;
    if (base == WIFI_EVENT && (id == WIFI_EVENT_STA_START || id == WIFI_EVENT_STA_DISCONNECTED)) {
        got_ip = 0;
        esp_wifi_connect(); /* and again after a drop: the session survives by retransmitting */
    } else if (base == IP_EVENT && id == IP_EVENT_STA_GOT_IP) {
        got_ip = 1;
    }
}

/* Joins the network and waits for an address. */
static void wifi_connect(void)
{
    wifi_init_config_t init = WIFI_INIT_CONFIG_DEFAULT();
    wifi_config_t wc;
    ESP_ERROR_CHECK(nvs_flash_init()); /* the Wi-Fi driver keeps its calibration there */
    ESP_ERROR_CHECK(esp_netif_init());
    ESP_ERROR_CHECK(esp_event_loop_create_default());
    esp_netif_create_default_wifi_sta();
    ESP_ERROR_CHECK(esp_wifi_init(&init));
    ESP_ERROR_CHECK(esp_event_handler_register(WIFI_EVENT, ESP_EVENT_ANY_ID, on_wifi, NULL));
    ESP_ERROR_CHECK(esp_event_handler_register(IP_EVENT, IP_EVENT_STA_GOT_IP, on_wifi, NULL));
    memset(&wc, 0, sizeof wc);
    strncpy((char *)wc.sta.ssid, WIFI_SSID, sizeof wc.sta.ssid - 1);
    strncpy((char *)wc.sta.password, WIFI_PASSWORD, sizeof wc.sta.password - 1);
    ESP_ERROR_CHECK(esp_wifi_set_mode(WIFI_MODE_STA));
    ESP_ERROR_CHECK(esp_wifi_set_config(WIFI_IF_STA, &wc));
    ESP_ERROR_CHECK(esp_wifi_start());
    while (!got_ip)
        vTaskDelay(pdMS_TO_TICKS(50));
    /* Modem sleep delays received datagrams by up to a beacon interval
     * (~100 ms) each: keep the radio awake while a session is open. */
    esp_wifi_set_ps(WIFI_PS_NONE);
}

/* A UDP socket connected to mcpd: send() and recv() need no address, and
 * datagrams from anyone else are dropped by the stack. */
static int open_socket(void)
{
    struct sockaddr_in to;
    struct timeval tv = {0, 10 * 1000}; /* recv waits at most 10 ms: the session's timers run between */
    int s = socket(AF_INET, SOCK_DGRAM, IPPROTO_UDP);
    if (s < 0)
        return -1;
    memset(&to, 0, sizeof to);
    to.sin_family = AF_INET;
    to.sin_port = htons(MCPD_PORT);
    if (inet_pton(AF_INET, MCPD_HOST, &to.sin_addr) != 1 || connect(s, (struct sockaddr *)&to, sizeof to) != 0 ||
        setsockopt(s, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv) != 0) {
        close(s);
        return -1;
    }
    return s;
}

/* Asks prompt and logs the answer; returns 0 once it is complete. */
static int ask(const char *prompt)
{
    static uint8_t in[MCPF_MAX_FRAME + 1]; /* one byte more exposes an oversize datagram */
    mcpf_infer m;
    mcpf_event ev;
    mcpf_frame f;
    size_t body_len;
    memset(&m, 0, sizeof m);
    m.present = MCPF_HAS(MCPF_OPT_MAX_TOKENS);
    m.max_tokens = 48;
    m.prompt = (const uint8_t *)prompt;
    m.prompt_len = strlen(prompt);
    body_len = mcpf_put_infer(body, sizeof body, &m);
    if (body_len == 0)
        return -1;
    mcpf_session_hello(&session, now_ms());
    for (;;) {
        int got = 0;
        ssize_t n = recv(sock, in, sizeof in, 0); /* waits at most 10 ms (SO_RCVTIMEO) */
        if (n > 0 && mcpf_decode(in, (size_t)n, &f) == 0) /* not one sound frame: ignored */
            got = mcpf_session_frame(&session, now_ms(), &f, &ev);
        if (!got)
            got = mcpf_session_tick(&session, now_ms(), &ev);
        if (!got)
            continue;
        switch (ev.type) {
        case MCPF_EV_WELCOME:
            printf("[session open]\n");
            mcpf_session_infer(&session, now_ms(), body, body_len);
            break;
        case MCPF_EV_TEXT:
            printf("%.*s", (int)ev.u.text.len, (const char *)ev.u.text.p);
            fflush(stdout);
            break;
        case MCPF_EV_DONE:
            printf("\n[done: %lu tokens]\n", (unsigned long)ev.u.done.tokens);
            return 0;
        case MCPF_EV_TIMEOUT:
            printf("\n[no answer: is mcpd listening on %s:%d, not only on loopback?]\n", MCPD_HOST, MCPD_PORT);
            return -1;
        case MCPF_EV_ERROR:
            printf("\n[mcpd refused: error %u]\n", (unsigned)ev.u.error.code);
            return -1;
        case MCPF_EV_BAD_ANSWER:
            printf("\n[answer damaged]\n");
            return -1;
        default:
            break;
        }
    }
}

void app_main(void)
{
    wifi_connect();
    sock = open_socket();
    if (sock < 0) {
        printf("[no socket]\n");
        return;
    }
    cfg.device_id = DEVICE_ID;
    cfg.max_data = 256;
    cfg.window = 4;
    cfg.link = MCPF_LINK_UDP;
    cfg.send = send_frame;
    mcpf_session_init(&session, &cfg, esp_random()); /* a fresh boot nonce each boot */
    mcpd_udp_result = ask(PROMPT);
    close(sock);
}
