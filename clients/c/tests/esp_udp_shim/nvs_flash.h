/* SPDX-License-Identifier: MIT
 * Host shim of ESP-IDF's nvs_flash.h (examples/esp32_udp). */
#ifndef ESP_UDP_SHIM_NVS_H
#define ESP_UDP_SHIM_NVS_H
#include "esp_event.h"
esp_err_t nvs_flash_init(void);
#endif
