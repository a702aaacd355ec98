/* SPDX-License-Identifier: MIT
 *
 * mcpd_mqtt — an ESP32 (ESP-IDF, esp-mqtt) asks mcpd a question through an
 * MQTT broker and logs the streamed answer. The library stays
 * transport-agnostic: this file is the glue between esp-mqtt's events and
 * the session's send callback, following the MQTT binding of
 * docs/protocol.md §7.4:
 *
 *   - one MCPFrame per message, the frame's bytes as the payload;
 *   - the device subscribes to mcpd/v1/<id>/down/#;
 *   - HELLO goes to mcpd/v1/<id>/up (any instance of a group may take it);
 *   - the instance that answers with WELCOME does so on
 *     mcpd/v1/<id>/down/<instance>: every later frame goes to
 *     mcpd/v1/<id>/up/<instance>, so the session stays on that instance
 *     (a daemon without a group answers on mcpd/v1/<id>/down, and then the
 *     device keeps using mcpd/v1/<id>/up);
 *   - after a TIMEOUT (the instance died) the next HELLO is placed afresh.
 *
 * Give the device's broker account an ACL limited to its own topics, and
 * use mqtts:// with the broker's CA in production. QoS 0: MCPFrame
 * acknowledges and retransmits by itself.
 *
 * On the host, tests/esp_shim provides the few ESP-IDF calls used here and
 * a scripted broker and daemon, so `make ctest` compiles and runs it.
 */
#include <stdio.h>
#include <string.h>

#include "esp_timer.h"
#include "freertos/FreeRTOS.h"
#include "freertos/queue.h"
#include "freertos/task.h"
#include "mqtt_client.h"

#include "mcpf.h"
#include "mcpf_session.h"

#ifndef MCPD_BROKER_URI
#define MCPD_BROKER_URI "mqtts://broker.lan:8883"
#endif
#define DEVICE_ID "greenhouse-7"
#define TOPIC_ROOT "mcpd/v1/" DEVICE_ID
#define INSTANCE_MAX 64

static esp_mqtt_client_handle_t client;
static mcpf_session session;
static mcpf_config cfg;
static uint8_t body[128];
static size_t body_len;
static volatile int connected;
/* The instance whose session this is ("" none or no group), and whether a
 * HELLO went out whose WELCOME will name it. */
static char instance[INSTANCE_MAX + 1];
static int hello_pending;
/* Frames arrive on esp-mqtt's task; the session runs on ours. The queue
 * holds a window of answer chunks and then some; a frame arriving while it
 * is full is dropped, and retransmission repairs that. */
struct inbound {
    uint16_t len;
    uint8_t frame[MCPF_MAX_FRAME];
};
static QueueHandle_t inbox;
int mcpd_mqtt_result = -1; /* 0 answer complete, else failed (read by the host shim) */

static uint32_t now_ms(void) { return (uint32_t)(esp_timer_get_time() / 1000); }

/* The session's send callback: HELLO on the up topic, the rest on the
 * instance's. */
static int send_frame(void *ctx, const uint8_t *frame, size_t len)
{
    char topic[sizeof TOPIC_ROOT + 4 + INSTANCE_MAX];
    (void)ctx;
    if (!connected)
        return -1; /* lost: the session retransmits */
    if (len > 4 && (frame[4] & 0x3F) == MCPF_HELLO) {
        hello_pending = 1;
        snprintf(topic, sizeof topic, "%s/up", TOPIC_ROOT);
    } else if (instance[0]) {
        snprintf(topic, sizeof topic, "%s/up/%s", TOPIC_ROOT, instance);
    } else {
        snprintf(topic, sizeof topic, "%s/up", TOPIC_ROOT);
    }
    return esp_mqtt_client_publish(client, topic, (const char *)frame, (int)len, 0, 0) < 0 ? -1 : 0;
}

/* esp-mqtt's event handler (its own task). */
static void on_mqtt(void *arg, esp_event_base_t base, int32_t id, void *data)
{
    esp_mqtt_event_handle_t ev = data;
    static const char down[] = TOPIC_ROOT "/down";
    (void)arg;
    (void)base;
    switch ((esp_mqtt_event_id_t)id) {
    case MQTT_EVENT_CONNECTED: /* also after a reconnect: a clean session forgot it */
        esp_mqtt_client_subscribe(client, TOPIC_ROOT "/down/#", 0);
        connected = 1;
        break;
    case MQTT_EVENT_DISCONNECTED:
        connected = 0;
        break;
    case MQTT_EVENT_DATA: {
        size_t tl = (size_t)ev->topic_len, n = (size_t)ev->data_len;
        const char *inst;
        size_t inst_len;
        /* A frame is at most 263 bytes: a message esp-mqtt splits into
         * pieces (larger than its buffer) is not one. */
        if (ev->current_data_offset != 0 || ev->total_data_len != ev->data_len || n > MCPF_MAX_FRAME)
            break;
        if (tl < sizeof down - 1 || memcmp(ev->topic, down, sizeof down - 1) != 0)
            break;
        inst = ev->topic + sizeof down - 1;
        inst_len = tl - (sizeof down - 1);
        if (inst_len > 0) { /* "/<instance>" */
            if (inst[0] != '/' || inst_len < 2 || inst_len - 1 > INSTANCE_MAX)
                break;
            inst++;
            inst_len--;
        }
        if (n > 4 && (((const uint8_t *)ev->data)[4] & 0x3F) == MCPF_WELCOME && hello_pending) {
            memcpy(instance, inst, inst_len); /* the first WELCOME after a HELLO decides */
            instance[inst_len] = 0;
            hello_pending = 0;
        }
        {
            static struct inbound m; /* only esp-mqtt's task uses it */
            m.len = (uint16_t)n;
            memcpy(m.frame, ev->data, n);
            xQueueSend(inbox, &m, 0);
        }
        break;
    }
    default:
        break;
    }
}

/* Asks prompt and logs the answer; returns 0 once it is complete. */
static int ask(const char *prompt)
{
    mcpf_infer m;
    mcpf_event ev;
    mcpf_frame f;
    static struct inbound in;
    memset(&m, 0, sizeof m);
    m.present = MCPF_HAS(MCPF_OPT_MAX_TOKENS);
    m.max_tokens = 48;
    m.prompt = (const uint8_t *)prompt;
    m.prompt_len = strlen(prompt);
    body_len = mcpf_put_infer(body, sizeof body, &m);
    if (body_len == 0)
        return -1;
    mcpf_session_hello(&session, now_ms());
    for (;;) {
        int got = 0;
        /* Wait for a frame, at most until the session's next timer. */
        uint32_t wait = mcpf_session_wait_ms(&session, now_ms());
        if (xQueueReceive(inbox, &in, pdMS_TO_TICKS(wait < 10 ? wait : 10)) == pdTRUE &&
            mcpf_decode(in.frame, in.len, &f) == 0)
            got = mcpf_session_frame(&session, now_ms(), &f, &ev);
        if (!got)
            got = mcpf_session_tick(&session, now_ms(), &ev);
        if (got) {
            switch (ev.type) {
            case MCPF_EV_WELCOME:
                printf("[session on %s]\n", instance[0] ? instance : "the daemon");
                mcpf_session_infer(&session, now_ms(), body, body_len);
                break;
            case MCPF_EV_TEXT:
                printf("%.*s", (int)ev.u.text.len, (const char *)ev.u.text.p);
                break;
            case MCPF_EV_DONE:
                printf("\n[done: %lu tokens]\n", (unsigned long)ev.u.done.tokens);
                return 0;
            case MCPF_EV_TIMEOUT: /* the instance may be gone: the next HELLO is placed afresh */
                instance[0] = 0;
                printf("\n[no answer]\n");
                return -1;
            case MCPF_EV_ERROR:
            case MCPF_EV_BAD_ANSWER:
                printf("\n[failed]\n");
                return -1;
            default:
                break;
            }
        }
    }
}

void app_main(void)
{
    esp_mqtt_client_config_t mc;
    memset(&mc, 0, sizeof mc);
    mc.broker.address.uri = MCPD_BROKER_URI;
    mc.credentials.username = DEVICE_ID;   /* one broker account per device */
    mc.credentials.client_id = DEVICE_ID;
    mc.credentials.authentication.password = "set-me"; /* from NVS in a real firmware */
    inbox = xQueueCreate(8, sizeof(struct inbound));
    client = esp_mqtt_client_init(&mc);
    esp_mqtt_client_register_event(client, (esp_mqtt_event_id_t)ESP_EVENT_ANY_ID, on_mqtt, NULL);
    esp_mqtt_client_start(client);
    while (!connected)
        vTaskDelay(pdMS_TO_TICKS(10));

    cfg.device_id = DEVICE_ID;
    cfg.max_data = 256;
    cfg.window = 4;
    cfg.link = MCPF_LINK_UDP; /* a datagram link: the same timers as UDP */
    cfg.send = send_frame;
    mcpf_session_init(&session, &cfg, (uint32_t)esp_timer_get_time() ^ 0x5A17u); /* use esp_random() */
    mcpd_mqtt_result = ask("Is bed 3 dry?");
}
