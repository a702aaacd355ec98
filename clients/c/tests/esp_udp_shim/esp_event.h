/* SPDX-License-Identifier: MIT
 * Host shim of ESP-IDF's esp_event.h and esp_err.h (examples/esp32_udp):
 * the types and calls the example uses, with ESP-IDF's names and
 * signatures. */
#ifndef ESP_UDP_SHIM_EVENT_H
#define ESP_UDP_SHIM_EVENT_H
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

typedef int esp_err_t;
#define ESP_OK 0
#define ESP_ERROR_CHECK(x)                                                     \
    do {                                                                       \
        esp_err_t err_ = (x);                                                  \
        if (err_ != ESP_OK) {                                                  \
            fprintf(stderr, "ESP_ERROR_CHECK failed: %s = %d\n", #x, err_);    \
            abort();                                                           \
        }                                                                      \
    } while (0)

typedef const char *esp_event_base_t;
typedef void (*esp_event_handler_t)(void *arg, esp_event_base_t base, int32_t id, void *data);
extern esp_event_base_t const WIFI_EVENT;
extern esp_event_base_t const IP_EVENT;
#define ESP_EVENT_ANY_ID (-1)

esp_err_t esp_event_loop_create_default(void);
esp_err_t esp_event_handler_register(esp_event_base_t base, int32_t id, esp_event_handler_t h, void *arg);
#endif
