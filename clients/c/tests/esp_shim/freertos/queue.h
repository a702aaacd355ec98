/* SPDX-License-Identifier: MIT
 * Host shim of the FreeRTOS queue calls examples/esp32_mqtt uses: copies
 * in, copies out; a receive on an empty queue lets the simulated clock and
 * the shim's "esp-mqtt task" run for the ticks it may wait. */
#ifndef ESP_SHIM_QUEUE_H
#define ESP_SHIM_QUEUE_H
#include "freertos/FreeRTOS.h"
typedef struct shim_queue *QueueHandle_t;
typedef int BaseType_t;
typedef unsigned UBaseType_t;
#define pdTRUE 1
#define pdFALSE 0
QueueHandle_t xQueueCreate(UBaseType_t length, UBaseType_t item_size);
BaseType_t xQueueSend(QueueHandle_t q, const void *item, TickType_t wait);
BaseType_t xQueueReceive(QueueHandle_t q, void *item, TickType_t wait);
#endif
