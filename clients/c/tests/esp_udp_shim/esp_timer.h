/* SPDX-License-Identifier: MIT
 * Host shim of ESP-IDF's esp_timer.h (examples/esp32_udp): the real
 * monotonic clock, since the example talks to a real mcpd. */
#ifndef ESP_UDP_SHIM_TIMER_H
#define ESP_UDP_SHIM_TIMER_H
#include <stdint.h>
int64_t esp_timer_get_time(void); /* µs since boot */
#endif
