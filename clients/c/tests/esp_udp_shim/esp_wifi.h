/* SPDX-License-Identifier: MIT
 * Host shim of ESP-IDF's esp_wifi.h (examples/esp32_udp): the station-mode
 * subset, with ESP-IDF's names and field layout for what the example sets. */
#ifndef ESP_UDP_SHIM_WIFI_H
#define ESP_UDP_SHIM_WIFI_H
#include <stdint.h>
#include "esp_event.h"

typedef struct { int magic; } wifi_init_config_t;
#define WIFI_INIT_CONFIG_DEFAULT() {0x1F2F3F4F}
typedef struct {
    uint8_t ssid[32];
    uint8_t password[64];
} wifi_sta_config_t;
typedef union {
    wifi_sta_config_t sta;
} wifi_config_t;
typedef enum { WIFI_MODE_NULL = 0, WIFI_MODE_STA } wifi_mode_t;
typedef enum { WIFI_IF_STA = 0 } wifi_interface_t;
typedef enum { WIFI_PS_NONE = 0, WIFI_PS_MIN_MODEM } wifi_ps_type_t;
enum { WIFI_EVENT_STA_START = 2, WIFI_EVENT_STA_CONNECTED = 4, WIFI_EVENT_STA_DISCONNECTED = 5 };

esp_err_t esp_wifi_init(const wifi_init_config_t *config);
esp_err_t esp_wifi_set_mode(wifi_mode_t mode);
esp_err_t esp_wifi_set_config(wifi_interface_t interface, wifi_config_t *conf);
esp_err_t esp_wifi_start(void);
esp_err_t esp_wifi_connect(void);
esp_err_t esp_wifi_set_ps(wifi_ps_type_t type);
#endif
