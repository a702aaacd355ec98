/* SPDX-License-Identifier: MIT
 * The device's session state machine; see mcpf_session.h. */
#include <string.h>

#include "mcpf_session.h"

#define MAX_RTO 4000u
#define MIN_RTO 10u       /* the default floor of the UDP RTO (§7.2) */
#define GIVE_UP_FLOOR 100u /* the RTO the give-up time is reckoned from (§7.2) */
#define AFTER(a, b) ((int32_t)((a) - (b)) >= 0) /* time a is at or after b */

static uint8_t retries(const mcpf_session *s) { return s->cfg->retries ? s->cfg->retries : 8u; }

static uint32_t heartbeat(const mcpf_session *s)
{
    return s->welcome.heartbeat_ms ? s->welcome.heartbeat_ms : 5000u;
}

/* The base RTO: serial from the line rate, UDP measured. */
static uint32_t base_rto(const mcpf_session *s)
{
    if (s->cfg->link == MCPF_LINK_SERIAL && s->cfg->baud)
        return 2u * s->cfg->window * 2630000u / s->cfg->baud + 100u; /* T(263): 2630 bits */
    return s->rto;
}

static void arm(mcpf_session *s, uint32_t now)
{
    uint32_t rto = base_rto(s), cap = rto > MAX_RTO ? rto : MAX_RTO;
    rto <<= s->attempt < 9 ? s->attempt : 9;
    s->deadline = now + (rto < cap ? rto : cap);
}

/* The least time a request is retransmitted before it is given up: what a
 * timer starting at 100 ms (or the line's RTO, if less) and doubling would
 * take for the retries. An RTO learned below it retransmits sooner, it does
 * not give up sooner (§7.2). */
static uint32_t horizon(const mcpf_session *s)
{
    uint32_t rto = s->cfg->link == MCPF_LINK_SERIAL ? base_rto(s) : 250u, total = 0;
    int i;
    if (rto > GIVE_UP_FLOOR)
        rto = GIVE_UP_FLOOR;
    for (i = 0; i <= retries(s); i++) {
        total += rto;
        rto = 2u * rto < MAX_RTO ? 2u * rto : MAX_RTO;
    }
    return total;
}

/* A timer expired: 1 if the request is to be given up — every retry spent
 * and the horizon passed — else counts the retransmission. */
static int spent(mcpf_session *s, uint32_t now)
{
    if (s->attempt >= retries(s) && AFTER(now, s->sent + horizon(s)))
        return 1;
    if (s->attempt < 255u)
        s->attempt++;
    return 0;
}

/* Sends the frame in s->tx (len bytes), signed in a signed session. */
static void xmit(mcpf_session *s, uint32_t now, size_t len)
{
#if MCPF_SIGN
    if (s->signing)
        len = mcpf_sign(s->tx, len, &s->cfg->key, MCPF_DEVICE_TO_DAEMON, s->nonce,
                        s->cfg->link_id, ++s->counter);
#endif
    if (len)
        (void)s->cfg->send(s->cfg->ctx, s->tx, len);
    s->last_tx = now;
}

static void send_body(mcpf_session *s, uint32_t now, uint8_t cmd, uint8_t seq, size_t n)
{
    xmit(s, now, mcpf_encode(s->tx, MCPF_VERSION, cmd, seq, s->tx + MCPF_HEADER, (uint16_t)n));
}

/* Held chunks (§8.2): slots of MCPF_HOLD_SLOT(max_data) bytes in
 * cfg->hold, at most window − 1 of them. */
static uint16_t hold_slots(const mcpf_session *s)
{
    uint16_t n = s->cfg->hold ? (uint16_t)(s->cfg->hold_size / MCPF_HOLD_SLOT(s->cfg->max_data)) : 0u;
    return n < s->cfg->window ? n : (uint16_t)(s->cfg->window - 1u);
}

static uint8_t *slot(const mcpf_session *s, uint16_t i)
{
    return s->cfg->hold + (size_t)i * MCPF_HOLD_SLOT(s->cfg->max_data);
}

/* The held chunk with this index, or NULL. */
static uint8_t *held(const mcpf_session *s, uint16_t chunk)
{
    uint16_t i, n = s->sack ? hold_slots(s) : 0u;
    for (i = 0; i < n; i++) {
        uint8_t *p = slot(s, i);
        if (p[0] && (uint16_t)(p[1] << 8 | p[2]) == chunk)
            return p;
    }
    return NULL;
}

static void hold(mcpf_session *s, const mcpf_frame *f, uint16_t chunk)
{
    uint16_t i, n = hold_slots(s);
    if (!s->sack || held(s, chunk) || f->len > s->cfg->max_data)
        return;
    for (i = 0; i < n; i++) {
        uint8_t *p = slot(s, i);
        /* free, or left from before next (a copy also came in order) */
        if (!p[0] || (uint16_t)((uint16_t)(p[1] << 8 | p[2]) - s->next) >= s->cfg->window) {
            p[0] = 1;
            p[1] = (uint8_t)(chunk >> 8);
            p[2] = (uint8_t)chunk;
            p[3] = f->cmd;
            p[4] = (uint8_t)(f->len >> 8);
            p[5] = (uint8_t)f->len;
            memcpy(p + 6, f->data, f->len);
            return;
        }
    }
}

static void send_ack(mcpf_session *s, uint32_t now)
{
    uint8_t bitmap[MCPF_MAX_SACK];
    uint16_t i, n = s->sack ? hold_slots(s) : 0u;
    mcpf_ack a;
    memset(&a, 0, sizeof a);
    memset(bitmap, 0, sizeof bitmap);
    a.next = s->next;
    a.window = s->cfg->window;
    a.sack = bitmap;
    for (i = 0; i < n; i++) { /* bit k: chunk next + 1 + k arrived */
        const uint8_t *p = slot(s, i);
        uint16_t k = (uint16_t)((uint16_t)(p[1] << 8 | p[2]) - s->next - 1u);
        if (p[0] && k < 8u * MCPF_MAX_SACK && MCPF_HEADER + 3u + k / 8u + 1u < MCPF_TX_MAX) {
            bitmap[k / 8u] |= (uint8_t)(0x80u >> (k % 8u));
            if (k / 8u + 1u > a.sack_len)
                a.sack_len = (uint8_t)(k / 8u + 1u);
        }
    }
    s->acked = s->next;
    send_body(s, now, MCPF_ACK, s->seq, mcpf_put_ack(s->tx + MCPF_HEADER, &a));
}

#if MCPF_DEVICE_TOOLS
static void read_tools(const void *src, size_t off, uint8_t *out, size_t len)
{
    const mcpf_config *c = (const mcpf_config *)src;
    mcpf_tools_read(c->tools, c->tool_count, off, out, len);
}

static void send_result_fragment(mcpf_session *s, uint32_t now, uint8_t index)
{
    if (index < s->tool_frags)
        xmit(s, now, mcpf_frag_frame(s->tx, MCPF_TOOL_RESULT, s->seq, s->cfg->tool_buf, s->tool_len,
                                     s->tool_crc, s->tool_piece, index));
}
#endif

/* A fragment of the request's message: the INFER's body, or TOOLS read
 * from the tool table. */
static void send_fragment(mcpf_session *s, uint32_t now, uint8_t index)
{
    if (index >= s->count)
        return;
#if MCPF_DEVICE_TOOLS
    if (s->req == MCPF_REQ_TOOLS) { /* through a pointer: a firmware that never declares links no serialiser */
        xmit(s, now, mcpf_frag_frame_from(s->tx, MCPF_TOOLS, s->seq, s->tools_read, s->cfg, s->body_len,
                                          s->body_crc, s->piece, index));
        return;
    }
#endif
    xmit(s, now, mcpf_frag_frame(s->tx, MCPF_INFER, s->seq, s->body, s->body_len, s->body_crc,
                                 s->piece, index));
}

static void send_hello(mcpf_session *s, uint32_t now)
{
    mcpf_hello h;
    const char *id = s->cfg->device_id;
    memset(&h, 0, sizeof h);
    h.min_version = h.max_version = MCPF_VERSION;
    h.max_data = s->cfg->max_data;
    h.window = s->cfg->window;
    h.boot_nonce = s->boot_nonce;
    if (hold_slots(s) > 0)
        h.features |= 2u; /* SACK (§8.2) */
    if (s->cfg->status_ext)
        h.features |= MCPF_FEATURE_STATUS_EXT; /* cache figures in STATUS_REPLY (§11.11) */
    if (s->cfg->resume)
        h.features |= MCPF_FEATURE_RESUME; /* continue the kept conversation (§10) */
    h.device_id = (const uint8_t *)id;
    h.device_id_len = (uint8_t)strlen(id);
#if MCPF_SIGN
    s->signing = s->cfg->key.len != 0;
    if (s->signing) {
        /* The HELLO is signed with boot_nonce ‖ 0; a retransmission
         * repeats the boot nonce but, a new frame, takes a new counter
         * (§9.2, §9.3). */
        h.features |= 1u;
        memset(s->nonce, 0, sizeof s->nonce);
        s->nonce[0] = (uint8_t)(s->boot_nonce >> 24);
        s->nonce[1] = (uint8_t)(s->boot_nonce >> 16);
        s->nonce[2] = (uint8_t)(s->boot_nonce >> 8);
        s->nonce[3] = (uint8_t)s->boot_nonce;
        if (s->attempt == 0)
            s->counter = 0;
    }
#endif
    send_body(s, now, MCPF_HELLO, s->seq, mcpf_put_hello(s->tx + MCPF_HEADER, &h));
}

/* (Re)sends the outstanding request. first: the first transmission. */
static void resend(mcpf_session *s, uint32_t now, int first)
{
    uint8_t i;
    switch (s->req) {
    case MCPF_REQ_HELLO:
        send_hello(s, now);
        break;
    case MCPF_REQ_PING:
    case MCPF_REQ_KEEPALIVE:
        memcpy(s->tx + MCPF_HEADER, s->ping, s->ping_len);
        send_body(s, now, MCPF_PING, s->seq, s->ping_len);
        break;
    case MCPF_REQ_STATUS:
        send_body(s, now, MCPF_STATUS, s->seq, 0);
        break;
    case MCPF_REQ_BYE:
        send_body(s, now, MCPF_BYE, s->seq, 0);
        break;
    case MCPF_REQ_INFER:
    case MCPF_REQ_TOOLS:
        if (s->cancel)
            send_body(s, now, MCPF_CANCEL, s->seq, 0);
#if MCPF_DEVICE_TOOLS
        else if (s->tool == 1) /* a TOOL_RESULT not yet acknowledged: probe */
            send_result_fragment(s, now, (uint8_t)(s->tool_frags - 1u));
#endif
        else if (s->accepted)
            send_ack(s, now); /* streaming: our ACK may be lost */
        else if (first)
            for (i = 0; i < s->count; i++)
                send_fragment(s, now, i);
        else
            send_fragment(s, now, (uint8_t)(s->count - 1u)); /* probe (§6) */
        break;
    default:
        break;
    }
    if (first)
        s->sent = now;
    arm(s, now);
}

/* A request cannot start now: one is outstanding, or no session. */
static int busy(const mcpf_session *s, uint8_t req)
{
    return (s->req != MCPF_REQ_NONE && s->req != MCPF_REQ_KEEPALIVE) || (req != MCPF_REQ_HELLO && !s->open);
}

static int start(mcpf_session *s, uint32_t now, uint8_t req)
{
    if (busy(s, req))
        return -1;
    s->req = req;
    s->seq++;
    s->attempt = 0;
    s->corrupt = 0;
    s->accepted = s->cancel = 0;
#if MCPF_DEVICE_TOOLS
    s->tool = 0;
#endif
    resend(s, now, 1);
    return 0;
}

void mcpf_session_init(mcpf_session *s, const mcpf_config *cfg, uint32_t boot_nonce)
{
    memset(s, 0, sizeof *s);
    s->cfg = cfg;
    s->boot_nonce = boot_nonce;
    s->rto = 250;
    s->seq = 0xFF; /* the first request, HELLO, takes seq 0 */
}

/* What the HELLO carries from the config, within the header's ranges: a
 * longer id would overrun the transmit buffer before the frame's length is
 * checked, and a window of 0 takes no answer at all (and would wrap
 * hold_slots' window − 1). Every session starts here, so what follows may
 * rely on it. */
static int config_ok(const mcpf_config *c)
{
    size_t n = 0;
    if (!c->device_id || c->window == 0)
        return 0;
    while (n <= 64u && c->device_id[n])
        n++;
    return n >= 1u && n <= 64u;
}

int mcpf_session_hello(mcpf_session *s, uint32_t now)
{
    if (!config_ok(s->cfg))
        return -1;
    s->open = 0;
    return start(s, now, MCPF_REQ_HELLO);
}

int mcpf_session_ping(mcpf_session *s, uint32_t now, const uint8_t *data, uint8_t len)
{
    if (len > sizeof s->ping)
        return -1;
    if (len)
        memcpy(s->ping, data, len);
    s->ping_len = len;
    return start(s, now, MCPF_REQ_PING);
}

int mcpf_session_status(mcpf_session *s, uint32_t now) { return start(s, now, MCPF_REQ_STATUS); }

int mcpf_session_bye(mcpf_session *s, uint32_t now) { return start(s, now, MCPF_REQ_BYE); }

/* The piece size of a message this device sends (§6), or 0: the daemon's
 * max_data, this device's max_send and its tx buffer leave no room. */
static uint8_t piece_for(const mcpf_session *s)
{
    uint16_t limit = s->welcome.max_data;
    int sign = 0;
    if (s->cfg->max_send && s->cfg->max_send < limit)
        limit = s->cfg->max_send;
    if (limit > MCPF_TX_MAX - MCPF_OVERHEAD)
        limit = MCPF_TX_MAX - MCPF_OVERHEAD;
#if MCPF_SIGN
    sign = s->signing;
#endif
    if (limit < 3u + (sign ? MCPF_SIG_BLOCK : 0u))
        return 0;
    return mcpf_piece_size(limit, sign);
}

/* Sets up the request's message of len bytes; -1 if it cannot be sent. */
static int message(mcpf_session *s, size_t len)
{
    s->piece = piece_for(s);
    s->count = mcpf_frag_count(len, s->piece);
    if (s->count == 0 || len == 0 || len > s->welcome.max_message)
        return -1;
    s->body_len = len;
    return 0;
}

int mcpf_session_infer(mcpf_session *s, uint32_t now, const uint8_t *body, size_t len)
{
    if (busy(s, MCPF_REQ_INFER) || message(s, len) < 0)
        return -1;
    s->body = body;
    s->body_crc = mcpf_crc32c(0, body, len);
    s->next = s->acked = 0;
    s->text_bytes = s->text_crc = 0;
    if (s->cfg->hold)
        memset(s->cfg->hold, 0, s->cfg->hold_size); /* nothing held from an earlier answer */
    s->last_rx = now;
    return start(s, now, MCPF_REQ_INFER);
}

#if MCPF_DEVICE_TOOLS
int mcpf_session_tools(mcpf_session *s, uint32_t now)
{
    const mcpf_config *c = s->cfg;
    if (busy(s, MCPF_REQ_TOOLS) || !c->tool_buf || c->tool_buf_size < 3u ||
        mcpf_tools_check(c->tools, c->tool_count) < 0 ||
        message(s, mcpf_tools_size(c->tools, c->tool_count)) < 0)
        return -1;
    s->body = NULL; /* read from the table */
    s->tools_read = read_tools;
    s->body_crc = mcpf_tools_crc32c(c->tools, c->tool_count);
    return start(s, now, MCPF_REQ_TOOLS);
}
#endif

int mcpf_session_cancel(mcpf_session *s, uint32_t now)
{
    if (s->req != MCPF_REQ_INFER || s->cancel)
        return -1;
#if MCPF_DEVICE_TOOLS
    if (s->tool == 1)
        s->tool = 2; /* a later TOOL_RESULT would be UNEXPECTED (§16) */
#endif
    s->cancel = 1;
    s->attempt = 0;
    resend(s, now, 0);
    return 0;
}

void mcpf_session_badcrc(mcpf_session *s, uint32_t now)
{
    static const uint8_t bad_frame = MCPF_NACK_BAD_FRAME;
    if (s->cfg->link == MCPF_LINK_SERIAL)
        s->last_rx = now; /* on a cable only the daemon sends: it is still talking (§10) */
    if (s->cfg->link != MCPF_LINK_SERIAL || (s->nacked && !AFTER(now, s->last_nack + base_rto(s) / 4u)))
        return;
    s->nacked = 1;
    s->last_nack = now;
    s->tx[MCPF_HEADER] = bad_frame;
    send_body(s, now, MCPF_NACK, 0, 1);
}

/* RFC 6298 on an answer to a request sent once (Karn's rule). */
static void rtt_sample(mcpf_session *s, uint32_t now)
{
    uint32_t r = now - s->sent, v, lo;
    if (s->attempt || s->cfg->link != MCPF_LINK_UDP)
        return;
    if (r > MAX_RTO)
        r = MAX_RTO;
    if (!s->srtt) {
        s->srtt = (uint16_t)(r ? r : 1u);
        s->rttvar = (uint16_t)(r / 2u);
    } else {
        uint32_t d = r > s->srtt ? r - s->srtt : s->srtt - r;
        s->rttvar = (uint16_t)((3u * s->rttvar + d) / 4u);
        s->srtt = (uint16_t)((7u * s->srtt + r) / 8u);
    }
    v = s->srtt + (s->rttvar > 0u ? 4u * s->rttvar : 1u); /* G = 1 ms */
    lo = s->cfg->min_rto ? s->cfg->min_rto : MIN_RTO;
    s->rto = (uint16_t)(v < lo ? lo : v > MAX_RTO ? MAX_RTO : v);
}

static int finish(mcpf_session *s, mcpf_event *ev, uint8_t type)
{
    s->req = MCPF_REQ_NONE;
    s->cancel = 0;
    s->reopen = 0;
    return ev->type = type;
}

/* NO_SESSION to our INFER (§10): the daemon lost the session — expired,
 * restarted — before it accepted the request. Reopened once with a new
 * HELLO and the same INFER under a new seq when nothing of the answer has
 * come (the lost session's streams ended silently, so this answer is the
 * only one) and the prompt does not continue a conversation the lost
 * session held (the new one has none). */
static int may_reopen(const mcpf_session *s)
{
    const uint8_t *b = s->body;
    size_t i, end;
    if (s->req != MCPF_REQ_INFER || s->accepted || s->reopen || s->text_bytes)
        return 0;
    if (!s->chat)
        return 1;
    /* Read only now that the request is known to be an INFER: other
     * requests have no body (TOOLS reads its message from the table), and
     * an INFER's is never empty (message() refuses that). */
    end = (size_t)b[0] + 1u; /* the options: type, length, value (§11.4) */
    for (i = 1; end <= s->body_len && i + 1u < end; i += 2u + b[i + 1])
        if (b[i] == MCPF_OPT_NEW_CHAT)
            return 1;
    return 0;
}

/* The final chunk of a stream that ended, sent again (our ACK was lost):
 * acknowledged again (§8.2), or the daemon keeps retransmitting it and
 * holds one of our request places until its retries run out. */
static void reack_final(mcpf_session *s, uint32_t now, const mcpf_frame *f)
{
    mcpf_ack a;
    mcpf_done d;
    mcpf_error e;
    memset(&a, 0, sizeof a);
    if (f->cmd == MCPF_DONE && mcpf_parse_done(f->data, f->len, &d) == 0)
        a.next = (uint16_t)(d.chunk + 1u);
    else if (f->cmd == MCPF_ERROR && mcpf_parse_error(f->data, f->len, &e) == 0 && (e.flags & MCPF_ERR_STREAM))
        a.next = (uint16_t)(e.chunk + 1u);
    else
        return;
    a.window = s->cfg->window;
    send_body(s, now, MCPF_ACK, f->seq, mcpf_put_ack(s->tx + MCPF_HEADER, &a));
}

/* Answers a command a device must not receive (§4). */
static void refuse(mcpf_session *s, uint32_t now, const mcpf_frame *f, uint8_t code)
{
    mcpf_error e;
    memset(&e, 0, sizeof e);
    e.code = code;
    send_body(s, now, MCPF_ERROR, f->seq, mcpf_put_error(s->tx + MCPF_HEADER, &e));
}

/* A chunk of the answer stream (§8): 1 if it is the one expected. A chunk
 * after a gap is held (with SACK, within the window) before the ACK that
 * lists it; a duplicate or a gap is answered with where we are. */
static int in_order(mcpf_session *s, uint32_t now, const mcpf_frame *f, uint16_t chunk)
{
    uint8_t *p;
    if (chunk != s->next) {
        if ((uint16_t)(chunk - s->next) < s->cfg->window)
            hold(s, f, chunk);
        send_ack(s, now);
        return 0;
    }
    if ((p = held(s, chunk)) != NULL)
        p[0] = 0; /* a retransmission of one we hold: this copy is delivered */
    s->next++;
#if MCPF_DEVICE_TOOLS
    if (s->tool == 1)
        s->tool = 2; /* the stream goes on only once the daemon took our result (§16) */
#endif
    if (held(s, s->next) && s->next != s->acked)
        send_ack(s, now); /* a gap filled: say so at once, the held chunks follow */
    return 1;
}

static int stream(mcpf_session *s, uint32_t now, const mcpf_frame *f, mcpf_event *ev);

#if MCPF_DEVICE_TOOLS
/* Runs the handler of a TOOL_CALL consumed in order (once: a copy of the
 * chunk never gets here) and sends its TOOL_RESULT from cfg->tool_buf. A
 * result the daemon would refuse (above 1024 bytes or the buffer, not
 * UTF-8) and an undeclared tool are answered FAILED with the reason. */
static int run_tool(mcpf_session *s, uint32_t now, const mcpf_tool_call *c, mcpf_event *ev)
{
    const mcpf_config *cfg = s->cfg;
    uint8_t *b = cfg->tool_buf, i;
    size_t cap, len = 0;
    int st = MCPF_TOOL_FAILED;
    const char *why = "unknown tool";
    ev->u.tool.call = c->call;
    ev->u.tool.tool = c->tool;
    ev->u.tool.status = MCPF_TOOL_FAILED;
    ev->u.tool.len = 0;
    if (!b || cfg->tool_buf_size < 3u) { /* nothing declared through us: the daemon times it out */
        s->tool = 2;
        return ev->type = MCPF_EV_TOOL;
    }
    cap = cfg->tool_buf_size - 2u < MCPF_TOOL_RESULT_MAX ? cfg->tool_buf_size - 2u : MCPF_TOOL_RESULT_MAX;
    if (cfg->tools && c->tool < cfg->tool_count && cfg->tools[c->tool].fn) {
        st = cfg->tools[c->tool].fn(cfg->tool_ctx, (const char *)c->args, c->args_len, (char *)b + 2, cap, &len);
        why = len > cap ? "result too large" : !mcpf_utf8_valid(b + 2, len) ? "result not UTF-8" : NULL;
    }
    if (why) {
        st = MCPF_TOOL_FAILED;
        len = strlen(why) < cap ? strlen(why) : cap;
        memcpy(b + 2, why, len);
    }
    b[0] = c->call;
    b[1] = (uint8_t)(st == MCPF_TOOL_OK ? MCPF_TOOL_OK : MCPF_TOOL_FAILED);
    s->tool_len = (uint16_t)(2u + len);
    s->tool_crc = mcpf_crc32c(0, b, s->tool_len);
    s->tool_piece = piece_for(s);
    s->tool_frags = mcpf_frag_count(s->tool_len, s->tool_piece);
    s->tool = 1;
    s->attempt = 0;
    for (i = 0; i < s->tool_frags; i++)
        send_result_fragment(s, now, i);
    arm(s, now);
    ev->u.tool.status = b[1];
    ev->u.tool.len = (uint16_t)len;
    return ev->type = MCPF_EV_TOOL;
}
#endif

/* Delivers the held chunk that is now next in order, if any (tick). */
static int deliver_held(mcpf_session *s, uint32_t now, mcpf_event *ev)
{
    uint8_t *p = held(s, s->next);
    mcpf_frame f;
    if (!p || s->req != MCPF_REQ_INFER)
        return MCPF_EV_NONE;
    p[0] = 0; /* free: its bytes stay until another chunk is held */
    memset(&f, 0, sizeof f);
    f.ver = MCPF_VERSION;
    f.cmd = p[3];
    f.seq = s->seq;
    f.len = (uint16_t)(p[4] << 8 | p[5]);
    f.data = p + 6;
    if (f.cmd == MCPF_ERROR && mcpf_parse_error(f.data, f.len, &ev->u.error) < 0)
        return MCPF_EV_NONE;
    return stream(s, now, &f, ev);
}

static int stream(mcpf_session *s, uint32_t now, const mcpf_frame *f, mcpf_event *ev)
{
    s->accepted = 1;
    s->last_rx = now;
    switch (f->cmd) {
    case MCPF_TOKEN: {
        mcpf_token t;
        if (mcpf_parse_token(f->data, f->len, &t) < 0 || !in_order(s, now, f, t.chunk))
            return MCPF_EV_NONE;
        ev->u.text.p = t.text;
        ev->u.text.len = t.len;
        s->text_bytes += ev->u.text.len;
        s->text_crc = mcpf_crc32c(s->text_crc, ev->u.text.p, ev->u.text.len);
        /* Acknowledge each time half the window was consumed (§8.2). */
        if ((uint16_t)(s->next - s->acked) >= (s->cfg->window + 1u) / 2u)
            send_ack(s, now);
        return ev->type = MCPF_EV_TEXT;
    }
#if MCPF_DEVICE_TOOLS
    case MCPF_TOOL_CALL: {
        mcpf_tool_call c;
        if (mcpf_parse_tool_call(f->data, f->len, &c) < 0 || !in_order(s, now, f, c.chunk))
            return MCPF_EV_NONE;
        if (s->acked != s->next)
            send_ack(s, now); /* at once, before the handler runs (§16) */
        return run_tool(s, now, &c, ev);
    }
#endif
    case MCPF_DONE:
        if (mcpf_parse_done(f->data, f->len, &ev->u.done) < 0 || !in_order(s, now, f, ev->u.done.chunk))
            return MCPF_EV_NONE;
        send_ack(s, now);
        s->chat = 1; /* the daemon keeps the turn (§10) */
        return finish(s, ev, ev->u.done.text_bytes == s->text_bytes &&
                                     ev->u.done.text_crc32c == s->text_crc
                                 ? MCPF_EV_DONE
                                 : MCPF_EV_BAD_ANSWER);
    default: /* the closing ERROR */
        if (!in_order(s, now, f, ev->u.error.chunk))
            return MCPF_EV_NONE;
        send_ack(s, now);
        return finish(s, ev, MCPF_EV_ERROR);
    }
}

int mcpf_session_frame(mcpf_session *s, uint32_t now, mcpf_frame *f, mcpf_event *ev)
{
    ev->type = MCPF_EV_NONE;
    if (f->ver != MCPF_VERSION)
        return MCPF_EV_NONE; /* a device may ignore versions it does not speak (§3) */
#if MCPF_SIGN
    if (s->signing) {
        if (s->open) {
            /* An unsigned BYE may answer ours: the daemon closed the session
             * on our first BYE and answers a retransmission without one. It
             * can end nothing but what we are ending. */
            int bye_answer = f->cmd == MCPF_BYE && !(f->flags & MCPF_SIGNED) &&
                             s->req == MCPF_REQ_BYE && f->seq == s->seq;
            if (!bye_answer && mcpf_verify(f, &s->cfg->key, MCPF_DAEMON_TO_DEVICE, s->nonce,
                                           &s->replay, NULL, NULL) < 0)
                return MCPF_EV_NONE; /* unsigned, forged or replayed */
        } else if (f->cmd == MCPF_WELCOME) {
            /* Its tag covers the nonce its body carries: parse, then verify. */
            mcpf_frame g = *f;
            mcpf_welcome w;
            if (g.len < MCPF_SIG_BLOCK ||
                mcpf_parse_welcome(g.data, g.len - MCPF_SIG_BLOCK, &w) < 0)
                return MCPF_EV_NONE;
            s->nonce[4] = (uint8_t)(w.daemon_nonce >> 24);
            s->nonce[5] = (uint8_t)(w.daemon_nonce >> 16);
            s->nonce[6] = (uint8_t)(w.daemon_nonce >> 8);
            s->nonce[7] = (uint8_t)w.daemon_nonce;
            memset(&s->replay, 0, sizeof s->replay);
            if (mcpf_verify(f, &s->cfg->key, MCPF_DAEMON_TO_DEVICE, s->nonce, &s->replay, NULL,
                            NULL) < 0 ||
                !(w.features & 1u)) {
                memset(s->nonce + 4, 0, 4);
                return MCPF_EV_NONE;
            }
            s->counter = 0; /* the session's own counter starts over */
        } else if (f->flags & MCPF_SIGNED)
            return MCPF_EV_NONE;
        /* else: an unsigned ERROR before the session, advisory (§9.2) */
    }
#endif
    if (f->flags & MCPF_SIGNED)
        return MCPF_EV_NONE; /* in an unsigned session: dropped (§9.2) */
    s->last_rx = now;
    switch (f->cmd) {
    case MCPF_PING: /* the daemon checks on us */
        if (f->len <= 8) {
            if (f->len) /* an empty frame a caller built may have no data pointer */
                memmove(s->tx + MCPF_HEADER, f->data, f->len);
            send_body(s, now, MCPF_PONG, f->seq, f->len);
        }
        return MCPF_EV_NONE;
    case MCPF_NACK: {
        mcpf_nack n;
        uint8_t i;
        if (mcpf_parse_nack(f->data, f->len, &n) < 0 || s->req == MCPF_REQ_NONE)
            return MCPF_EV_NONE;
        if (n.reason == MCPF_NACK_BAD_FRAME) {
            /* Likely ours: repeat it now. It may answer noise or an earlier
             * ACK, so it has its own, larger budget and does not lengthen
             * the back-off: on a noisy line Retries of them in a row happen. */
            if (!(s->req == MCPF_REQ_INFER && s->accepted) && ++s->corrupt > 4u * retries(s))
                return finish(s, ev, MCPF_EV_TIMEOUT);
            resend(s, now, 0);
        } else if (f->seq == s->seq && (s->req == MCPF_REQ_INFER || s->req == MCPF_REQ_TOOLS) &&
                   !s->cancel) {
            void (*frag)(mcpf_session *, uint32_t, uint8_t) = send_fragment;
            uint8_t count = s->count;
#if MCPF_DEVICE_TOOLS
            if (s->tool == 1) { /* about our TOOL_RESULT: it never ends the stream */
                frag = send_result_fragment;
                count = s->tool_frags;
                if (s->attempt >= retries(s)) {
                    s->tool = 2;
                    return MCPF_EV_NONE;
                }
            }
#endif
            if (++s->attempt > retries(s))
                return finish(s, ev, MCPF_EV_TIMEOUT);
            if (n.reason == MCPF_NACK_MISSING)
                for (i = 0; i < n.count; i++)
                    frag(s, now, n.indexes[i]);
            else
                for (i = 0; i < count; i++)
                    frag(s, now, i);
            arm(s, now);
        }
        return MCPF_EV_NONE;
    }
    case MCPF_BYE:
        if (s->req == MCPF_REQ_BYE && f->seq == s->seq) { /* the answer to ours */
            s->open = 0;
            return finish(s, ev, MCPF_EV_BYE);
        }
        /* Before our WELCOME it is stale: the answer to a BYE of an earlier
         * session of ours still on the line (the daemon never closes a
         * session it has not opened). It is dropped unanswered: our BYE
         * would reach the daemon after our HELLO and close the session that
         * HELLO opens (§10). */
        if (!s->open)
            return MCPF_EV_NONE;
        send_body(s, now, MCPF_BYE, f->seq, 0);
        s->open = 0;
        return finish(s, ev, MCPF_EV_BYE);
    case MCPF_HELLO: case MCPF_INFER: case MCPF_CANCEL: case MCPF_STATUS:
    case MCPF_TOOLS: case MCPF_TOOL_RESULT:
#if !MCPF_DEVICE_TOOLS
    case MCPF_TOOL_CALL:
#endif
        refuse(s, now, f, MCPF_CODE_UNEXPECTED); /* a daemon never sends these */
        return MCPF_EV_NONE;
    default:
        if (f->cmd == 0 || f->cmd > MCPF_TOOL_RESULT) {
            refuse(s, now, f, 1); /* UNKNOWN_COMMAND */
            return MCPF_EV_NONE;
        }
        break;
    }
    if (s->req == MCPF_REQ_NONE || f->seq != s->seq) {
        reack_final(s, now, f); /* a late answer to an earlier request */
        return MCPF_EV_NONE;
    }
    if (f->cmd == MCPF_ERROR) {
        if (mcpf_parse_error(f->data, f->len, &ev->u.error) < 0)
            return MCPF_EV_NONE;
        if (s->req == MCPF_REQ_INFER && (ev->u.error.flags & MCPF_ERR_STREAM))
            return stream(s, now, f, ev);
#if MCPF_DEVICE_TOOLS
        if (s->req == MCPF_REQ_INFER && s->tool && ev->u.error.code != MCPF_CODE_NO_SESSION &&
            ev->u.error.code != MCPF_CODE_UNKNOWN_REQUEST) {
            /* It answers a TOOL_RESULT (TOO_LARGE, UNEXPECTED, ...): the
             * stream still ends in its own final chunk (§16). A retryable
             * one (BUSY) leaves the result to its timer. */
            if (s->tool == 1 && !(ev->u.error.flags & MCPF_ERR_RETRYABLE))
                s->tool = 2;
            return ev->type = MCPF_EV_NONE;
        }
#endif
        if (ev->u.error.code == 4) { /* NO_SESSION: say HELLO again */
            s->open = 0;
            if (may_reopen(s)) {
                s->boot_nonce++; /* a new session: the lost one's nonce is spent */
                s->req = MCPF_REQ_NONE;
                (void)start(s, now, MCPF_REQ_HELLO);
                s->reopen = 1;
                return MCPF_EV_NONE;
            }
        }
        return finish(s, ev, MCPF_EV_ERROR);
    }
    switch (s->req) {
    case MCPF_REQ_HELLO:
        if (f->cmd != MCPF_WELCOME)
            return MCPF_EV_NONE;
        if (mcpf_parse_welcome(f->data, f->len, &s->welcome) < 0)
            return MCPF_EV_NONE;
        rtt_sample(s, now);
        s->open = 1;
        s->chat = 0; /* a new session has no history */
        s->sack = (s->welcome.features & 2u) && hold_slots(s) > 0;
        if (s->reopen == 1) { /* the INFER NO_SESSION refused: ask again, once */
            s->req = MCPF_REQ_NONE;
            if (mcpf_session_infer(s, now, s->body, s->body_len) < 0)
                return finish(s, ev, MCPF_EV_TIMEOUT); /* the new session cannot take it */
            s->reopen = 2;
            return MCPF_EV_NONE;
        }
        return finish(s, ev, MCPF_EV_WELCOME);
    case MCPF_REQ_PING:
    case MCPF_REQ_KEEPALIVE:
        if (f->cmd != MCPF_PONG)
            return MCPF_EV_NONE;
        rtt_sample(s, now);
        return finish(s, ev, s->req == MCPF_REQ_PING ? MCPF_EV_PONG : MCPF_EV_NONE);
    case MCPF_REQ_STATUS:
        if (f->cmd != MCPF_STATUS_REPLY ||
            mcpf_parse_status_reply(f->data, f->len, &ev->u.status) < 0)
            return MCPF_EV_NONE;
        rtt_sample(s, now);
        return finish(s, ev, MCPF_EV_STATUS);
    case MCPF_REQ_BYE:
        return MCPF_EV_NONE; /* a BYE answer was handled above */
#if MCPF_DEVICE_TOOLS
    case MCPF_REQ_TOOLS:
        if (f->cmd != MCPF_ACK)
            return MCPF_EV_NONE;
        rtt_sample(s, now);
        return finish(s, ev, MCPF_EV_TOOLS);
#endif
    default: /* MCPF_REQ_INFER */
        if (f->cmd == MCPF_ACK) {
#if MCPF_DEVICE_TOOLS
            /* With a TOOL_RESULT out, an ACK may be its (next = its
             * fragments) but proves nothing: an ACK names no call, and the
             * previous result's — reordered behind the TOOL_CALL that
             * followed it, or answering a late copy of that result — looks
             * the same. Taken as ours while ours was lost, it stopped the
             * retransmission and the request ended in TOOL_TIMEOUT. The
             * result is taken when the stream goes on (in_order); until
             * then its timer keeps probing, each copy answered by an ACK. */
            if (s->tool == 1 && s->accepted)
                return MCPF_EV_NONE;
#endif
            if (!s->accepted)
                rtt_sample(s, now);
            s->accepted = 1;
            return MCPF_EV_NONE;
        }
        if (f->cmd == MCPF_TOKEN || f->cmd == MCPF_DONE || (MCPF_DEVICE_TOOLS && f->cmd == MCPF_TOOL_CALL))
            return stream(s, now, f, ev);
        return MCPF_EV_NONE;
    }
}

int mcpf_session_tick(mcpf_session *s, uint32_t now, mcpf_event *ev)
{
    uint32_t hb = heartbeat(s);
    ev->type = MCPF_EV_NONE;
    if (s->req == MCPF_REQ_INFER && s->accepted && held(s, s->next))
        return deliver_held(s, now, ev);
    if (s->req == MCPF_REQ_INFER && s->accepted && !s->cancel) {
        /* The daemon retransmits the stream; we only stay alive. */
        if (AFTER(now, s->last_rx + 3u * hb))
            return finish(s, ev, MCPF_EV_TIMEOUT);
#if MCPF_DEVICE_TOOLS
        if (s->tool == 1 && AFTER(now, s->deadline)) { /* our TOOL_RESULT is unacknowledged */
            if (++s->attempt > retries(s))
                s->tool = 2; /* given up: the daemon ends the stream with TOOL_TIMEOUT */
            else
                resend(s, now, 0);
            return MCPF_EV_NONE;
        }
#endif
        if (AFTER(now, s->last_tx + hb / 2u))
            send_ack(s, now);
        return MCPF_EV_NONE;
    }
    if (s->req != MCPF_REQ_NONE) {
        if (!AFTER(now, s->deadline))
            return MCPF_EV_NONE;
        if (spent(s, now)) {
            if (s->req == MCPF_REQ_KEEPALIVE || s->req == MCPF_REQ_BYE || s->req == MCPF_REQ_HELLO)
                s->open = 0;
            return finish(s, ev, MCPF_EV_TIMEOUT);
        }
        resend(s, now, 0);
        return MCPF_EV_NONE;
    }
    if (s->open && AFTER(now, s->last_tx + hb / 2u)) {
        s->ping_len = 0;
        start(s, now, MCPF_REQ_KEEPALIVE);
    }
    return MCPF_EV_NONE;
}

uint32_t mcpf_session_wait_ms(const mcpf_session *s, uint32_t now)
{
    uint32_t hb = heartbeat(s), at;
    if (s->req == MCPF_REQ_INFER && s->accepted && held(s, s->next))
        return 0;
    if (s->req == MCPF_REQ_INFER && s->accepted && !s->cancel) {
        at = s->last_tx + hb / 2u;
#if MCPF_DEVICE_TOOLS
        if (s->tool == 1 && !AFTER(s->deadline, at))
            at = s->deadline;
#endif
    } else if (s->req != MCPF_REQ_NONE)
        at = s->deadline;
    else if (s->open)
        at = s->last_tx + hb / 2u;
    else
        return 0xFFFFFFFFu;
    return AFTER(now, at) ? 0 : at - now;
}
