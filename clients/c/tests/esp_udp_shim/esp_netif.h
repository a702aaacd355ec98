/* SPDX-License-Identifier: MIT
 * Host shim of ESP-IDF's esp_netif.h (examples/esp32_udp). */
#ifndef ESP_UDP_SHIM_NETIF_H
#define ESP_UDP_SHIM_NETIF_H
#include "esp_event.h"
typedef struct esp_netif_obj esp_netif_t;
esp_err_t esp_netif_init(void);
esp_netif_t *esp_netif_create_default_wifi_sta(void);
enum { IP_EVENT_STA_GOT_IP = 0 };
#endif
