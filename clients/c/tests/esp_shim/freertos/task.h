/* SPDX-License-Identifier: MIT
 * Host shim: vTaskDelay advances the simulated clock and runs the shim's
 * "esp-mqtt task" (its queued events). */
#ifndef ESP_SHIM_TASK_H
#define ESP_SHIM_TASK_H
#include "freertos/FreeRTOS.h"
void vTaskDelay(TickType_t ticks);
#endif
