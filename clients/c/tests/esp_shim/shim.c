/* SPDX-License-Identifier: MIT
 *
 * Host shim for examples/esp32_mqtt: ESP-IDF's clock, vTaskDelay and the
 * esp-mqtt client, with a scripted broker and daemon behind them that
 * check the example's MQTT glue (docs/protocol.md §7.4):
 *
 *   - the first HELLO is lost (the session must retransmit it);
 *   - before the WELCOME come a WELCOME on another device's topic, a
 *     message on a topic outside mcpd/v1/<id>/down, and a message too large
 *     for one esp-mqtt event: all must be ignored;
 *   - the WELCOME comes on mcpd/v1/<id>/down/inst-7: every later frame must
 *     be published on mcpd/v1/<id>/up/inst-7, HELLO alone on …/up;
 *   - the INFER (one fragment) is answered with ACK, two TOKENs and DONE (size and
 *     CRC-32C of the text), which the example must accept.
 *
 * Exit status 0 when all of that held and the example reported success.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "esp_timer.h"
#include "freertos/queue.h"
#include "freertos/task.h"
#include "mqtt_client.h"

#include "mcpf.h"

#define ID "greenhouse-7"
void app_main(void);
extern int mcpd_mqtt_result;

static int64_t now_us;
static esp_event_handler_t handler;
static void *handler_arg;
static int failures, hellos, on_instance, started;

struct pending {
    esp_mqtt_event_id_t id;
    char topic[96];
    uint8_t data[600];
    int len, total;
};
static struct pending queue[16];
static int nq;

static void fail(const char *what)
{
    fprintf(stderr, "esp shim: %s\n", what);
    failures++;
}

static void post(esp_mqtt_event_id_t id, const char *topic, const uint8_t *data, int len, int total)
{
    struct pending *p;
    if (nq == (int)(sizeof queue / sizeof queue[0])) {
        fail("event queue full");
        return;
    }
    p = &queue[nq++];
    p->id = id;
    snprintf(p->topic, sizeof p->topic, "%s", topic ? topic : "");
    if (len > 0)
        memcpy(p->data, data, (size_t)len);
    p->len = len;
    p->total = total;
}

/* A daemon frame: body built by the caller into b[6..]. */
static void answer(const char *topic, uint8_t cmd, uint8_t seq, const uint8_t *body, size_t n)
{
    uint8_t f[MCPF_MAX_FRAME];
    size_t len = mcpf_encode(f, 1, cmd, seq, body, (uint16_t)n);
    post(MQTT_EVENT_DATA, topic, f, (int)len, (int)len);
}

int64_t esp_timer_get_time(void) { return now_us; }

/* The esp-mqtt task: delivers what the broker queued. */
void vTaskDelay(TickType_t ticks)
{
    int i, n = nq;
    now_us += (int64_t)ticks * 1000;
    if (now_us > 120LL * 1000 * 1000) {
        fprintf(stderr, "esp shim: the example ran 120 simulated seconds\n");
        exit(1);
    }
    for (i = 0; i < n; i++) {
        esp_mqtt_event_t ev;
        memset(&ev, 0, sizeof ev);
        ev.event_id = queue[i].id;
        ev.topic = queue[i].topic;
        ev.topic_len = (int)strlen(queue[i].topic);
        ev.data = (char *)queue[i].data;
        ev.data_len = queue[i].len;
        ev.total_data_len = queue[i].total;
        handler(handler_arg, "MQTT_EVENTS", queue[i].id, &ev);
    }
    memmove(queue, queue + n, (size_t)(nq - n) * sizeof queue[0]);
    nq -= n;
}

struct shim_queue {
    UBaseType_t cap, size, n, head;
    unsigned char buf[16 * 300];
};
static struct shim_queue the_queue;

QueueHandle_t xQueueCreate(UBaseType_t length, UBaseType_t item_size)
{
    if (length * item_size > sizeof the_queue.buf || the_queue.cap)
        return NULL;
    the_queue.cap = length;
    the_queue.size = item_size;
    return &the_queue;
}

BaseType_t xQueueSend(QueueHandle_t q, const void *item, TickType_t wait)
{
    (void)wait;
    if (q->n == q->cap)
        return pdFALSE;
    memcpy(q->buf + ((q->head + q->n) % q->cap) * q->size, item, q->size);
    q->n++;
    return pdTRUE;
}

BaseType_t xQueueReceive(QueueHandle_t q, void *item, TickType_t wait)
{
    if (q->n == 0)
        vTaskDelay(wait ? wait : 1);
    if (q->n == 0)
        return pdFALSE;
    memcpy(item, q->buf + q->head * q->size, q->size);
    q->head = (q->head + 1) % q->cap;
    q->n--;
    return pdTRUE;
}

esp_mqtt_client_handle_t esp_mqtt_client_init(const esp_mqtt_client_config_t *config)
{
    static int dummy;
    if (!config->broker.address.uri || strcmp(config->credentials.username, ID) != 0)
        fail("config: no broker URI, or the username is not the device id");
    return (esp_mqtt_client_handle_t)(void *)&dummy;
}

esp_err_t esp_mqtt_client_register_event(esp_mqtt_client_handle_t c, esp_mqtt_event_id_t event, esp_event_handler_t h, void *arg)
{
    (void)c;
    (void)event;
    handler = h;
    handler_arg = arg;
    return 0;
}

esp_err_t esp_mqtt_client_start(esp_mqtt_client_handle_t c)
{
    (void)c;
    started = 1;
    post(MQTT_EVENT_CONNECTED, NULL, NULL, 0, 0);
    return 0;
}

int esp_mqtt_client_subscribe(esp_mqtt_client_handle_t c, const char *topic, int qos)
{
    (void)c;
    if (strcmp(topic, "mcpd/v1/" ID "/down/#") != 0 || qos != 0)
        fail("subscribed to something else than mcpd/v1/<id>/down/# at QoS 0");
    return 1;
}

int esp_mqtt_client_publish(esp_mqtt_client_handle_t c, const char *topic, const char *data, int len, int qos, int retain)
{
    mcpf_frame f;
    uint8_t b[MCPF_MAX_DATA];
    (void)c;
    if (!started || qos != 0 || retain)
        fail("publish before start, or with QoS/retain");
    if (mcpf_decode((const uint8_t *)data, (size_t)len, &f) != 0) {
        fail("published a payload that is not one frame");
        return -1;
    }
    if (f.cmd == MCPF_HELLO) {
        mcpf_welcome w;
        if (strcmp(topic, "mcpd/v1/" ID "/up") != 0)
            fail("HELLO not on mcpd/v1/<id>/up");
        if (++hellos == 1)
            return 1; /* lost */
        memset(&w, 0, sizeof w);
        w.version = 1;
        w.max_data = 256;
        w.window = 255;
        w.heartbeat_ms = 5000;
        w.max_message = 4096;
        w.daemon_nonce = 0x01020304;
        /* Noise first: another device's WELCOME, a foreign topic, a message
         * esp-mqtt splits into two events. */
        answer("mcpd/v1/other-device/down/inst-9", MCPF_WELCOME, f.seq, b, mcpf_put_welcome(b, &w));
        answer("mcpd/v1/" ID "/downstairs", MCPF_WELCOME, f.seq, b, mcpf_put_welcome(b, &w));
        {
            uint8_t big[300];
            memset(big, 0x55, sizeof big);
            post(MQTT_EVENT_DATA, "mcpd/v1/" ID "/down/inst-9", big, (int)sizeof big, 600);
        }
        answer("mcpd/v1/" ID "/down/inst-7", MCPF_WELCOME, f.seq, b, mcpf_put_welcome(b, &w));
        return 1;
    }
    if (strcmp(topic, "mcpd/v1/" ID "/up/inst-7") != 0) {
        fprintf(stderr, "esp shim: cmd %#x on %s\n", f.cmd, topic);
        fail("a frame after the WELCOME not on the welcoming instance's topic");
        return 1;
    }
    on_instance++;
    /* A short prompt: one fragment (index 0, count 1), §6. */
    if (f.cmd == MCPF_INFER && f.len >= 2 && f.data[0] == 0 && f.data[1] == 1) {
        static const char *pieces[] = {"Bed 3 ", "is dry."};
        mcpf_ack a;
        mcpf_token t;
        mcpf_done d;
        uint32_t crc = 0, bytes = 0;
        uint16_t i;
        memset(&a, 0, sizeof a);
        a.next = 1;
        a.window = 4;
        answer("mcpd/v1/" ID "/down/inst-7", MCPF_ACK, f.seq, b, mcpf_put_ack(b, &a));
        for (i = 0; i < 2; i++) {
            t.chunk = i;
            t.text = (const uint8_t *)pieces[i];
            t.len = (uint16_t)strlen(pieces[i]);
            crc = mcpf_crc32c(crc, t.text, t.len);
            bytes += t.len;
            answer("mcpd/v1/" ID "/down/inst-7", MCPF_TOKEN, f.seq, b, mcpf_put_token(b, &t));
        }
        memset(&d, 0, sizeof d);
        d.chunk = 2;
        d.tokens = 2;
        d.text_bytes = bytes;
        d.text_crc32c = crc;
        answer("mcpd/v1/" ID "/down/inst-7", MCPF_DONE, f.seq, b, mcpf_put_done(b, &d));
    }
    return 1;
}

int main(void)
{
    app_main();
    if (mcpd_mqtt_result != 0)
        fail("the example did not get its answer");
    if (hellos != 2)
        fail("want exactly two HELLOs (one lost, one answered)");
    if (on_instance < 2)
        fail("want the INFER and the ACK of the answer on the instance's topic");
    printf("esp32_mqtt glue: %d HELLOs, %d frames on the instance topic, %s\n", hellos, on_instance, failures ? "FAILED" : "ok");
    return failures ? 1 : 0;
}
