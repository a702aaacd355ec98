/* SPDX-License-Identifier: MIT
 * Host shim of ESP-IDF's esp_timer.h (examples/esp32_mqtt): a simulated
 * clock that vTaskDelay advances. */
#ifndef ESP_SHIM_TIMER_H
#define ESP_SHIM_TIMER_H
#include <stdint.h>
int64_t esp_timer_get_time(void); /* µs since boot */
#endif
