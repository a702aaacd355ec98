/* SPDX-License-Identifier: MIT
 * Host shim of FreeRTOS.h (examples/esp32_udp). */
#ifndef ESP_UDP_SHIM_FREERTOS_H
#define ESP_UDP_SHIM_FREERTOS_H
#include <stdint.h>
typedef uint32_t TickType_t;
#define pdMS_TO_TICKS(ms) ((TickType_t)(ms))
#endif
