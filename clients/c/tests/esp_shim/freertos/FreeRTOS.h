/* SPDX-License-Identifier: MIT
 * Host shim of the FreeRTOS types examples/esp32_mqtt uses (1 tick = 1 ms). */
#ifndef ESP_SHIM_FREERTOS_H
#define ESP_SHIM_FREERTOS_H
#include <stdint.h>
typedef uint32_t TickType_t;
#define pdMS_TO_TICKS(ms) ((TickType_t)(ms))
#endif
