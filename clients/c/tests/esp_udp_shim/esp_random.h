/* SPDX-License-Identifier: MIT
 * Host shim of ESP-IDF's esp_random.h (examples/esp32_udp). */
#ifndef ESP_UDP_SHIM_RANDOM_H
#define ESP_UDP_SHIM_RANDOM_H
#include <stdint.h>
uint32_t esp_random(void);
#endif
