/* SPDX-License-Identifier: MIT
 *
 * The device's session with mcpd (docs/protocol.md §5, §7, §8, §10) as a
 * small state machine. It owns no clock and no I/O: the caller passes the
 * time in milliseconds (any monotonic counter; wrap-around is fine), hands
 * it every decoded frame, calls mcpf_session_tick when
 * mcpf_session_wait_ms says so, and sends frames through cfg->send.
 *
 * One request at a time (mcpf_session_hello, _ping, _status, _infer, _bye): a call while one
 * is outstanding returns -1. What the session does for the caller:
 *   - retransmission: every request is resent on its timer, at most
 *     `retries` times (default 8), then MCPF_EV_TIMEOUT; the timer doubles
 *     per retransmission up to 4 s. UDP: 250 ms initially, then SRTT +
 *     4 × RTTVAR from answers to requests sent once (RFC 6298, min 100 ms).
 *     Serial: 2 × window × T(263) + 100 ms (§7.1, window = this device's);
 *     NACK BAD_FRAME makes it resend at once, and mcpf_session_badcrc
 *     answers a corrupt frame with NACK BAD_FRAME at most once per RTO/4;
 *   - INFER: the prompt is cut into fragments (§6) built on the fly from
 *     the caller's body (which must stay valid until the request ends);
 *     NACK MISSING resends the fragments listed, NACK BAD_CHECKSUM all, a
 *     timeout only the last (a probe);
 *   - the answer stream (§8): chunks in order are delivered once as
 *     MCPF_EV_TEXT, duplicates and gaps are answered with the current ACK
 *     (go-back-N), an ACK goes out each time half the window was consumed,
 *     and the final chunk is acknowledged; DONE's text_bytes and
 *     text_crc32c are checked (MCPF_EV_BAD_ANSWER on mismatch);
 *   - heartbeat (§10): while a stream is slow it repeats its ACK, when idle
 *     it sends PING, so the session never expires; a stream silent for
 *     three heartbeats ends in MCPF_EV_TIMEOUT;
 *   - signing (§9) when built with MCPF_SIGN and given a key;
 *   - device tools (§16, unless MCPF_DEVICE_TOOLS is 0): mcpf_session_tools
 *     declares cfg->tools (TOOLS, fragmented on the fly from the table);
 *     an INFER with MCPF_OPT_TOOLS_ON may then get TOOL_CALL chunks: each
 *     is acknowledged at once, its handler runs exactly once (a copy of a
 *     consumed chunk is acknowledged again, never run again), and its
 *     TOOL_RESULT is sent from cfg->tool_buf and resent until the daemon
 *     has it; MCPF_EV_TOOL reports the call.
 */
#ifndef MCPF_SESSION_H
#define MCPF_SESSION_H

#include "mcpf.h"

#ifndef MCPF_TX_MAX
#define MCPF_TX_MAX MCPF_MAX_FRAME /* the largest frame this device sends */
#endif

#ifdef __cplusplus
extern "C" {
#endif

enum mcpf_link { MCPF_LINK_UDP = 0, MCPF_LINK_SERIAL = 1 };

#define MCPF_HOLD_SLOT(max_data) (6u + (max_data)) /* used, chunk (2), cmd, len (2), data */
#define MCPF_TOOL_BUF(result_max) (2u + (result_max)) /* cfg.tool_buf for results up to result_max (≤ 1024) bytes */

typedef struct mcpf_config {
    const char *device_id; /* 1..64 of [A-Za-z0-9._:-] */
    uint16_t max_data;     /* largest data field this device accepts, 32..256 */
    uint8_t window;        /* answer chunks it takes before acknowledging, 1..255 */
    uint8_t link;          /* MCPF_LINK_UDP or MCPF_LINK_SERIAL */
    uint32_t baud;         /* serial: the line's rate, for the RTO */
    uint8_t retries;       /* retransmissions before giving up, and at least the time a
                            * 100 ms timer doubling to 4 s takes for them (§7.2); 0: 8 */
    uint16_t max_send;     /* largest data field it sends; 0: as the daemon allows */
    uint16_t min_rto;      /* UDP: floor of the adaptive RTO in ms (§7.2), 1..4000; 0: 10 */
    /* Selective acknowledgment (§8.2): with a buffer here the device asks
     * for SACK and keeps answer chunks that arrive after a gap, so the
     * daemon resends only the gap. Each held chunk takes MCPF_HOLD_SLOT(
     * max_data) bytes; up to window − 1 are used. NULL: go-back-N. */
    uint8_t *hold;
    uint16_t hold_size;
    /* 1: ask for the extended STATUS_REPLY (MCPF_FEATURE_STATUS_EXT), whose
     * fields carry the daemon's cache figures (§11.11); a daemon that does
     * not know it answers in the basic layout, which is parsed as well. */
    uint8_t status_ext;
    /* 1: ask in HELLO to continue the conversation the daemon kept for
     * this device (MCPF_FEATURE_RESUME, §10: a signed device, or the one on
     * its serial port); s->welcome.features has the bit when it did. */
    uint8_t resume;
#if MCPF_DEVICE_TOOLS
    /* Device tools (§16): the table mcpf_session_tools declares, the
     * handlers' ctx, and the buffer a TOOL_RESULT is built in (2 bytes +
     * the longest result: handlers get tool_buf_size − 2 bytes, at most
     * 1024; a longer result is sent as FAILED "result too large"). */
    const mcpf_tool *tools;
    uint8_t tool_count;
    void *tool_ctx;
    uint8_t *tool_buf;
    uint16_t tool_buf_size;
#endif
#if MCPF_SIGN
    mcpf_key key;          /* key.len 0: unsigned */
    uint8_t link_id;       /* 0 UART, 1 Wi-Fi, ... */
#endif
    /* Puts one frame on the link; returns 0 or -1. */
    int (*send)(void *ctx, const uint8_t *frame, size_t len);
    void *ctx;
} mcpf_config;

enum mcpf_ev {
    MCPF_EV_NONE = 0,
    MCPF_EV_WELCOME,    /* the session is open: s->welcome */
    MCPF_EV_PONG,       /* the PING was answered */
    MCPF_EV_STATUS,     /* u.status */
    MCPF_EV_TEXT,       /* u.text: the next piece of the answer */
    MCPF_EV_DONE,       /* u.done: the answer is complete and its checksum right */
    MCPF_EV_BAD_ANSWER, /* u.done: DONE's size or CRC-32C disagree with the text */
    MCPF_EV_ERROR,      /* u.error: the daemon refused or ended the request */
    MCPF_EV_TIMEOUT,    /* no answer after every retransmission */
    MCPF_EV_BYE,        /* the session is closed (either side) */
    MCPF_EV_TOOLS,      /* the daemon accepted the tool declarations */
    MCPF_EV_TOOL        /* u.tool: a tool was called, its handler ran, its result is on its way */
};

typedef struct mcpf_event {
    uint8_t type;
    union {
        struct { const uint8_t *p; uint16_t len; } text;
        mcpf_done done;
        mcpf_error error;
        mcpf_status_reply status;
        struct { uint8_t call, tool, status; uint16_t len; } tool; /* len: the result's */
    } u;
} mcpf_event;

enum mcpf_req { MCPF_REQ_NONE = 0, MCPF_REQ_HELLO, MCPF_REQ_PING, MCPF_REQ_KEEPALIVE,
                MCPF_REQ_STATUS, MCPF_REQ_INFER, MCPF_REQ_BYE, MCPF_REQ_TOOLS };

typedef struct mcpf_session {
    const mcpf_config *cfg;
    mcpf_welcome welcome;
    uint8_t open;      /* a WELCOME was received */
    uint8_t req;       /* the outstanding request (enum mcpf_req) */
    uint8_t seq;       /* the last seq this device originated */
    uint8_t attempt;   /* retransmissions of the request so far */
    uint8_t accepted;  /* INFER: ACKed or streaming */
    uint8_t cancel;    /* INFER: CANCEL sent */
    uint8_t piece, count;
    uint8_t nacked;    /* a NACK BAD_FRAME was sent, at last_nack */
    uint8_t chat;      /* the session holds a conversation (an answer since WELCOME) */
    uint8_t reopen;    /* INFER after NO_SESSION: 1 saying HELLO again, 2 asked again (§10) */
    uint16_t corrupt;  /* NACK BAD_FRAME answers to the request, their own budget */
    uint8_t ping_len, ping[8];
    uint16_t next, acked; /* the stream: chunk expected, and as last ACKed */
    uint8_t sack;         /* the daemon granted SACK and cfg->hold has room */
    uint16_t rto, srtt, rttvar; /* ms; srtt 0: no sample yet */
    uint32_t boot_nonce;
    uint32_t deadline, sent, last_tx, last_rx, last_nack; /* ms */
    uint32_t text_bytes, text_crc;
    const uint8_t *body;
    size_t body_len;
    uint32_t body_crc;
#if MCPF_DEVICE_TOOLS
    uint8_t tool;        /* this request's tool state: 0 no call yet, 1 a result not yet known taken (the stream has not gone on), 2 not */
    uint8_t tool_piece, tool_frags;
    uint16_t tool_len;   /* the TOOL_RESULT body in cfg->tool_buf */
    uint32_t tool_crc;
    mcpf_read_fn tools_read; /* TOOLS: the body from cfg->tools */
#endif
#if MCPF_SIGN
    uint8_t signing, nonce[8];
    uint64_t counter;
    mcpf_replay replay;
#endif
    uint8_t tx[MCPF_TX_MAX];
} mcpf_session;

/* boot_nonce: fresh random bytes for this HELLO (§9.3). */
void mcpf_session_init(mcpf_session *s, const mcpf_config *cfg, uint32_t boot_nonce);
/* -1: busy, or a config outside its ranges (device_id 1..64 characters,
 * window 1..255). */
int mcpf_session_hello(mcpf_session *s, uint32_t now);
int mcpf_session_ping(mcpf_session *s, uint32_t now, const uint8_t *data, uint8_t len);
int mcpf_session_status(mcpf_session *s, uint32_t now);
/* body: an INFER body (mcpf_put_infer), valid until the request ends. */
int mcpf_session_infer(mcpf_session *s, uint32_t now, const uint8_t *body, size_t len);
#if MCPF_DEVICE_TOOLS
/* Declares cfg->tools (TOOLS, §16): MCPF_EV_TOOLS when accepted, else
 * MCPF_EV_ERROR (UNSUPPORTED_OPTION: a schema outside the subset;
 * TOO_LARGE) or MCPF_EV_TIMEOUT. -1: busy, no session, no tool_buf, or a
 * table mcpf_tools_check refuses. Declare once per session, before the
 * first INFER with MCPF_OPT_TOOLS_ON. */
int mcpf_session_tools(mcpf_session *s, uint32_t now);
#endif
/* Asks the daemon to stop the answer; its final chunk still arrives. */
int mcpf_session_cancel(mcpf_session *s, uint32_t now);
int mcpf_session_bye(mcpf_session *s, uint32_t now);

/* A frame from the daemon (from mcpf_decode or the stream decoder).
 * Returns ev->type. */
int mcpf_session_frame(mcpf_session *s, uint32_t now, mcpf_frame *f, mcpf_event *ev);
/* Serial: the decoder rejected a frame for its CRC. */
void mcpf_session_badcrc(mcpf_session *s, uint32_t now);
/* Timers: retransmission, keepalive. Returns ev->type. */
int mcpf_session_tick(mcpf_session *s, uint32_t now, mcpf_event *ev);
/* Milliseconds until mcpf_session_tick has work (0: now — also when a held
 * chunk became the next in order: tick delivers it). */
uint32_t mcpf_session_wait_ms(const mcpf_session *s, uint32_t now);

#ifdef __cplusplus
}
#endif
#endif /* MCPF_SESSION_H */
