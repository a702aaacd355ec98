/* SPDX-License-Identifier: MIT
 * Host shim of FreeRTOS's task.h (examples/esp32_udp): a real sleep. */
#ifndef ESP_UDP_SHIM_TASK_H
#define ESP_UDP_SHIM_TASK_H
#include "freertos/FreeRTOS.h"
void vTaskDelay(TickType_t ticks);
#endif
