/* SPDX-License-Identifier: MIT
 *
 * Host shim for examples/esp32_udp: ESP-IDF's Wi-Fi start-up (the events a
 * station sees: STA_START, then an address after a simulated first
 * disconnect, which the example must answer by connecting again), a real
 * clock and sleep, and main() running app_main. The example's sockets are
 * the host's, so it talks to a real mcpd; clients/c/e2e builds it with
 * -DMCPD_PORT=... and checks the answer.
 *
 * Exit status 0 when the example reported a complete answer.
 */
#define _POSIX_C_SOURCE 200809L
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "esp_event.h"
#include "esp_netif.h"
#include "esp_random.h"
#include "esp_timer.h"
#include "esp_wifi.h"
#include "freertos/task.h"
#include "nvs_flash.h"

void app_main(void);
extern int mcpd_udp_result;

esp_event_base_t const WIFI_EVENT = "WIFI_EVENT";
esp_event_base_t const IP_EVENT = "IP_EVENT";

static struct {
    esp_event_base_t base;
    int32_t id;
    esp_event_handler_t h;
    void *arg;
} handlers[4];
static int nhandlers, inited, started, connects, failures;

static void post(esp_event_base_t base, int32_t id)
{
    for (int i = 0; i < nhandlers; i++)
        if (handlers[i].base == base && (handlers[i].id == ESP_EVENT_ANY_ID || handlers[i].id == id))
            handlers[i].h(handlers[i].arg, base, id, NULL);
}

int64_t esp_timer_get_time(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

uint32_t esp_random(void) { return (uint32_t)esp_timer_get_time() * 2654435761u ^ (uint32_t)getpid(); }

void vTaskDelay(TickType_t ticks)
{
    struct timespec ts = {(time_t)(ticks / 1000), (long)(ticks % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

esp_err_t nvs_flash_init(void) { return ESP_OK; }
esp_err_t esp_netif_init(void) { return ESP_OK; }
esp_netif_t *esp_netif_create_default_wifi_sta(void) { return NULL; }
esp_err_t esp_event_loop_create_default(void) { return ESP_OK; }

esp_err_t esp_event_handler_register(esp_event_base_t base, int32_t id, esp_event_handler_t h, void *arg)
{
    if (nhandlers == 4)
        return -1;
    handlers[nhandlers].base = base;
    handlers[nhandlers].id = id;
    handlers[nhandlers].h = h;
    handlers[nhandlers].arg = arg;
    nhandlers++;
    return ESP_OK;
}

esp_err_t esp_wifi_init(const wifi_init_config_t *c)
{
    inited = c && c->magic == 0x1F2F3F4F;
    return inited ? ESP_OK : -1;
}
esp_err_t esp_wifi_set_mode(wifi_mode_t m) { return m == WIFI_MODE_STA ? ESP_OK : -1; }

esp_err_t esp_wifi_set_config(wifi_interface_t i, wifi_config_t *c)
{
    if (i != WIFI_IF_STA || c->sta.ssid[0] == 0) {
        fprintf(stderr, "shim: no SSID configured\n");
        failures++;
    }
    return ESP_OK;
}

esp_err_t esp_wifi_start(void)
{
    if (!inited)
        return -1;
    started = 1;
    post(WIFI_EVENT, WIFI_EVENT_STA_START);
    return ESP_OK;
}

/* The first attempt fails (the access point is still booting): the
 * example must connect again on STA_DISCONNECTED; the second gets an
 * address. */
esp_err_t esp_wifi_connect(void)
{
    if (!started)
        return -1;
    if (++connects == 1) {
        post(WIFI_EVENT, WIFI_EVENT_STA_DISCONNECTED);
        return ESP_OK;
    }
    post(WIFI_EVENT, WIFI_EVENT_STA_CONNECTED);
    post(IP_EVENT, IP_EVENT_STA_GOT_IP);
    return ESP_OK;
}

esp_err_t esp_wifi_set_ps(wifi_ps_type_t t) { return t == WIFI_PS_NONE ? ESP_OK : -1; }

int main(void)
{
    app_main();
    if (connects != 2) {
        fprintf(stderr, "shim: %d connection attempts, want 2 (a reconnect after the first drop)\n", connects);
        failures++;
    }
    return failures == 0 && mcpd_udp_result == 0 ? 0 : 1;
}
