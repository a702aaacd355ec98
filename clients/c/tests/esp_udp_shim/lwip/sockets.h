/* SPDX-License-Identifier: MIT
 * Host shim of lwIP's sockets.h (examples/esp32_udp): lwIP's BSD socket API
 * is the host's, so the example's socket code runs unchanged. */
#ifndef ESP_UDP_SHIM_SOCKETS_H
#define ESP_UDP_SHIM_SOCKETS_H
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>
#endif
