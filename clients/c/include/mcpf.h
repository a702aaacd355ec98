/* SPDX-License-Identifier: MIT
 *
 * mcpf — MCPFrame v1 for microcontrollers (docs/protocol.md).
 *
 * C99, no dynamic allocation, no dependencies beyond <stdint.h>, <stddef.h>
 * and <string.h>. The library is split so a firmware links only what it
 * uses (build with -ffunction-sections -fdata-sections, link with
 * --gc-sections):
 *
 *   mcpf_crc.c      CRC-8/AUTOSAR (frame) and CRC-32C (messages, streams)
 *   mcpf_frame.c    frame encode, datagram decode (§2)
 *   mcpf_decoder.c  byte-at-a-time stream decoder with the resync rule (§7.1)
 *   mcpf_msg.c      message bodies: build and parse with the §11 checks
 *   mcpf_frag.c     fragment a message, reassemble one (§6)
 *   mcpf_sign.c     HMAC-SHA256 frame signing and the replay window (§9);
 *                   compiled to nothing unless MCPF_SIGN is defined non-zero
 *   mcpf_tools.c    the device tools' bodies (§16): TOOLS built on the fly
 *                   from a table, TOOL_CALL, TOOL_RESULT; a flat-JSON lookup
 *   mcpf_session.c  the device's session: HELLO/PING/INFER/CANCEL, the answer
 *                   stream, retransmission and flow control (§5, §7, §8, §10)
 *
 * Every function is reentrant; all state lives in structures the caller
 * owns. Integers on the wire are big-endian.
 */
#ifndef MCPF_H
#define MCPF_H

#include <stddef.h>
#include <stdint.h>

#ifndef MCPF_SIGN
#define MCPF_SIGN 0 /* 1: frame signing (mcpf_sign.c, +~2.5 KiB flash) */
#endif
#ifndef MCPF_DEVICE_TOOLS
#define MCPF_DEVICE_TOOLS 1 /* 0: the session has no device tools (§16) */
#endif
#ifndef MCPF_DEC_STATS
#define MCPF_DEC_STATS 1 /* 0: the decoder keeps no counters (-16 B RAM) */
#endif

#ifdef __cplusplus
extern "C" {
#endif

/* ------------------------------------------------------------ the frame (§2) */

#define MCPF_MAGIC 0x55u
#define MCPF_VERSION 1u
#define MCPF_MAX_DATA 256u
#define MCPF_HEADER 6u    /* magic, version, length (2), cmd, seq */
#define MCPF_OVERHEAD 7u  /* header + crc */
#define MCPF_MAX_FRAME 263u
#define MCPF_FRAGMENT 0x40u /* cmd bit 6 (§6) */
#define MCPF_SIGNED 0x80u   /* cmd bit 7 (§9) */
#define MCPF_SIG_BLOCK 15u  /* link id, counter u48, tag 8 */
#define MCPF_MAX_SACK 32u   /* SACK bitmap bytes in an ACK (§11.9) */

enum mcpf_cmd {
    MCPF_HELLO = 0x01, MCPF_WELCOME = 0x02, MCPF_PING = 0x03, MCPF_PONG = 0x04,
    MCPF_INFER = 0x05, MCPF_TOKEN = 0x06, MCPF_DONE = 0x07, MCPF_ERROR = 0x08,
    MCPF_CANCEL = 0x09, MCPF_ACK = 0x0A, MCPF_NACK = 0x0B, MCPF_STATUS = 0x0C,
    MCPF_STATUS_REPLY = 0x0D, MCPF_BYE = 0x0E,
    MCPF_TOOLS = 0x0F, MCPF_TOOL_CALL = 0x10, MCPF_TOOL_RESULT = 0x11 /* §16 */
};

/* ERROR codes (§12). Open: act on MCPF_ERR_RETRYABLE for a code not here. */
enum mcpf_code {
    MCPF_CODE_UNKNOWN_COMMAND = 1, MCPF_CODE_UNSUPPORTED_VERSION, MCPF_CODE_MALFORMED,
    MCPF_CODE_NO_SESSION, MCPF_CODE_TOO_LARGE, MCPF_CODE_BUSY, MCPF_CODE_TIMEOUT,
    MCPF_CODE_CANCELLED, MCPF_CODE_MODEL_NOT_FOUND, MCPF_CODE_BACKEND_UNAVAILABLE,
    MCPF_CODE_BACKEND_FAILED, MCPF_CODE_AUTH_REQUIRED, MCPF_CODE_AUTH_FAILED,
    MCPF_CODE_SHUTTING_DOWN, MCPF_CODE_RATE_LIMITED, MCPF_CODE_INCOMPLETE,
    MCPF_CODE_UNSUPPORTED_OPTION, MCPF_CODE_UNEXPECTED, MCPF_CODE_UNKNOWN_REQUEST,
    MCPF_CODE_INTERNAL, MCPF_CODE_FORBIDDEN,
    MCPF_CODE_TOOL_TIMEOUT = 22, /* a tool's result did not come in time (§16) */
    MCPF_CODE_TOOL_LIMIT = 23    /* too many calls, or a result too large (§16) */
};

/* Errors returned (negated) by decoding and parsing functions. The first
 * five are the datagram classes of §2.1 / the frame test vectors. */
enum mcpf_err {
    MCPF_OK = 0,
    MCPF_ESHORT = 1, MCPF_EMAGIC, MCPF_ELENGTH, MCPF_ETRAILING, MCPF_ECRC,
    MCPF_EMALFORMED,         /* body does not parse (§11), bad fragment (§6) */
    MCPF_EUNSUPPORTED_OPTION,/* unknown critical INFER option (§11.4) */
    MCPF_ETOO_LARGE,         /* message above the reassembly buffer */
    MCPF_EBAD_CHECKSUM,      /* a message's CRC-32C failed */
    MCPF_EUNSIGNED, MCPF_EBADTAG, MCPF_EREPLAY, MCPF_ESTALE /* §9.2 */
};

/* A decoded frame. data points into the buffer it was decoded from. */
typedef struct mcpf_frame {
    uint8_t ver;
    uint8_t cmd;   /* low 6 bits of the cmd byte */
    uint8_t flags; /* MCPF_FRAGMENT | MCPF_SIGNED bits of the cmd byte */
    uint8_t seq;
    uint16_t len;  /* data bytes, 0..256 */
    const uint8_t *data;
} mcpf_frame;

/* CRC-8/AUTOSAR (poly 0x2F, init/xorout 0xFF), over a whole buffer. */
uint8_t mcpf_crc8(const uint8_t *p, size_t n);
/* CRC-32C. Start with crc = 0 and feed pieces in order: the result of each
 * call is the CRC of everything fed so far. */
uint32_t mcpf_crc32c(uint32_t crc, const uint8_t *p, size_t n);

/* Writes a frame into out (room for 7 + len bytes) and returns its length,
 * or 0 if len > 256. data may already sit at out + 6 (built in place). */
size_t mcpf_encode(uint8_t *out, uint8_t ver, uint8_t cmd_byte, uint8_t seq,
                   const uint8_t *data, uint16_t len);

/* Decodes exactly one frame from a datagram (§7.2). Returns 0 or -MCPF_E*
 * (ESHORT, EMAGIC, ELENGTH, ETRAILING, ECRC, checked in that order). */
int mcpf_decode(const uint8_t *buf, size_t n, mcpf_frame *f);

/* ------------------------------------------- the stream decoder (§7.1) */

enum mcpf_dec_event {
    MCPF_DEC_NONE = 0, /* needs more bytes */
    MCPF_DEC_FRAME,    /* *f holds a sound frame, valid until the next call */
    MCPF_DEC_BADCRC,   /* a candidate failed its CRC (answer NACK BAD_FRAME) */
    MCPF_DEC_TOOLONG   /* a candidate's length was > 256 */
};

typedef struct mcpf_decoder {
    uint16_t n;    /* bytes in buf */
    uint16_t drop; /* bytes of the frame last delivered, dropped on the next call */
    uint8_t idle;  /* abandon incomplete candidates until buf is empty */
#if MCPF_DEC_STATS
    uint32_t frames, skipped, badcrc, toolong;
#endif
    uint8_t buf[MCPF_MAX_FRAME];
} mcpf_decoder;

void mcpf_dec_init(mcpf_decoder *d);
/* Feeds one byte; returns an event. One byte can complete more than one
 * event (a real frame found inside a rejected one): call mcpf_dec_poll
 * until it returns MCPF_DEC_NONE to get them now. Skipping poll is safe:
 * the next push reports them one by one. */
int mcpf_dec_push(mcpf_decoder *d, uint8_t byte, mcpf_frame *f);
int mcpf_dec_poll(mcpf_decoder *d, mcpf_frame *f);
/* The line went idle (no byte for mcpf_idle_ms) or the input ended: the
 * incomplete candidate is abandoned and the bytes after its 0x55 scanned
 * again (§7.1 step 5). Then call mcpf_dec_poll until MCPF_DEC_NONE. */
void mcpf_dec_idle(mcpf_decoder *d);
/* The inter-byte idle timeout: the larger of 5 character times and 20 ms. */
uint32_t mcpf_idle_ms(uint32_t baud);

/* ---------------------------------------------------- message bodies (§11) */

typedef struct mcpf_hello {
    uint8_t min_version, max_version;
    uint16_t max_data, features;
    uint8_t window;
    uint32_t boot_nonce;
    const uint8_t *device_id;
    uint8_t device_id_len;
} mcpf_hello;

typedef struct mcpf_welcome {
    uint8_t version;
    uint16_t max_data, features;
    uint8_t window;
    uint16_t heartbeat_ms, max_message;
    uint32_t daemon_nonce;
} mcpf_welcome;

/* INFER options (§11.4): bit MCPF_HAS(type) of present marks an option set.
 * SCHEMA and SCHEMA_JSON (§11.4.1) are critical: a daemon that does not know
 * them refuses the INFER instead of answering in prose. */
enum mcpf_opt {
    MCPF_OPT_MODEL = 0x01, MCPF_OPT_MAX_TOKENS, MCPF_OPT_TEMPERATURE, MCPF_OPT_SEED,
    MCPF_OPT_TOP_K, MCPF_OPT_TOP_P, MCPF_OPT_MIN_P, MCPF_OPT_REPEAT_PENALTY,
    MCPF_OPT_NEW_CHAT, MCPF_OPT_SYSTEM, MCPF_OPT_DEADLINE_MS, MCPF_OPT_CONTEXT,
    MCPF_OPT_SCHEMA = 0x81, MCPF_OPT_SCHEMA_JSON = 0x82,
    MCPF_OPT_TOOLS_ON = 0x83 /* empty, critical: this request may call the declared tools (§16) */
};
/* Types 0x01..0x0C are bits 1..12, 0x81..0x83 bits 13..15. */
#define MCPF_HAS(opt) ((uint16_t)(1u << (((opt) & 0x80u) ? 12u + ((opt) & 0x7Fu) : (unsigned)(opt))))

typedef struct mcpf_infer {
    uint16_t present; /* MCPF_HAS(MCPF_OPT_...) bits */
    uint16_t max_tokens, temperature, top_k, top_p, min_p, repeat_penalty;
    uint32_t seed, deadline_ms, context;
    const uint8_t *model;  uint8_t model_len;
    const uint8_t *system; uint8_t system_len;
    uint8_t schema; /* SCHEMA: id of a schema in the daemon's config */
    const uint8_t *schema_json; uint8_t schema_json_len; /* SCHEMA_JSON: 1..253 bytes */
    const uint8_t *prompt; size_t prompt_len;
} mcpf_infer;

typedef struct mcpf_token {
    uint16_t chunk;
    const uint8_t *text; uint16_t len;
} mcpf_token;

typedef struct mcpf_done {
    uint16_t chunk;
    uint8_t reason; /* 0 STOP, 1 LENGTH, 2 CONTEXT */
    uint32_t tokens, prompt_tokens, ttft_ms, duration_ms, text_bytes, text_crc32c;
} mcpf_done;

#define MCPF_ERR_RETRYABLE 0x01u
#define MCPF_ERR_STREAM 0x02u
typedef struct mcpf_error {
    uint8_t code, flags;
    uint16_t chunk;
    const uint8_t *text; uint8_t len;
} mcpf_error;

/* sack: the SACK bitmap (§11.9), 0..32 bytes, the last nonzero; bit 7 of
 * sack[0] is chunk next+1. This library never sends one (it does not ask
 * for FEATURE_SACK) but parses it. */
typedef struct mcpf_ack {
    uint16_t next; uint8_t window;
    const uint8_t *sack; uint8_t sack_len;
} mcpf_ack;

enum { MCPF_NACK_BAD_FRAME = 1, MCPF_NACK_MISSING = 2, MCPF_NACK_BAD_CHECKSUM = 3 };
typedef struct mcpf_nack {
    uint8_t reason;
    const uint8_t *indexes; uint8_t count;
} mcpf_nack;

/* One cache's figures in an extended STATUS_REPLY (§11.11): counters since
 * the daemon started (saturating) and what the cache holds now. */
typedef struct mcpf_cache_figures {
    uint32_t hits, misses, evictions;
    uint64_t bytes;
} mcpf_cache_figures;

/* Feature bit 2 (§11.1): the device reads the extended STATUS_REPLY. */
#define MCPF_FEATURE_STATUS_EXT 4u
/* Feature bit 3 (§10, §11.1): HELLO asks to resume the kept conversation;
 * WELCOME grants it when the session holds it. */
#define MCPF_FEATURE_RESUME 8u
/* STATUS_REPLY fields present (mcpf_status_reply.has). */
#define MCPF_STATUS_KV 1u        /* KV_CACHE (0x01): the engine's KV cache */
#define MCPF_STATUS_RESPONSES 2u /* RESPONSE_CACHE (0x02): the response cache */

/* extended: the body came in the extended layout (a daemon sends it only
 * to a device that asked for MCPF_FEATURE_STATUS_EXT); has: which cache
 * fields it carried. The parser reads both layouts and skips fields it
 * does not know. */
typedef struct mcpf_status_reply {
    uint8_t state, load, queue;
    const uint8_t *backend; uint8_t backend_len;
    const uint8_t *model; uint16_t model_len;
    uint8_t extended, has;
    mcpf_cache_figures kv, responses;
} mcpf_status_reply;

/* Builders write a body into out and return its length; 0 is returned only
 * where the input cannot make a valid body (INFER: options over 255 bytes,
 * or the body over cap). out needs room for the body (at most 256 bytes for
 * every command but INFER). PING/PONG bodies are the 0..8 bytes themselves,
 * CANCEL, STATUS and BYE bodies are empty. */
size_t mcpf_put_hello(uint8_t *out, const mcpf_hello *m);
size_t mcpf_put_welcome(uint8_t *out, const mcpf_welcome *m);
size_t mcpf_put_infer(uint8_t *out, size_t cap, const mcpf_infer *m);
size_t mcpf_put_token(uint8_t *out, const mcpf_token *m);
size_t mcpf_put_done(uint8_t *out, const mcpf_done *m);
size_t mcpf_put_error(uint8_t *out, const mcpf_error *m);
size_t mcpf_put_ack(uint8_t *out, const mcpf_ack *m);
size_t mcpf_put_nack(uint8_t *out, const mcpf_nack *m);
size_t mcpf_put_status_reply(uint8_t *out, const mcpf_status_reply *m);

/* Parsers check everything §11 asks (sizes, ranges, UTF-8) and return 0,
 * -MCPF_EMALFORMED or (INFER) -MCPF_EUNSUPPORTED_OPTION. Pointers in the
 * result point into b. PING/PONG: mcpf_parse_empty-like size check only. */
int mcpf_parse_hello(const uint8_t *b, size_t n, mcpf_hello *m);
int mcpf_parse_welcome(const uint8_t *b, size_t n, mcpf_welcome *m);
int mcpf_parse_infer(const uint8_t *b, size_t n, mcpf_infer *m);
int mcpf_parse_token(const uint8_t *b, size_t n, mcpf_token *m);
int mcpf_parse_done(const uint8_t *b, size_t n, mcpf_done *m);
int mcpf_parse_error(const uint8_t *b, size_t n, mcpf_error *m);
int mcpf_parse_ack(const uint8_t *b, size_t n, mcpf_ack *m);
int mcpf_parse_nack(const uint8_t *b, size_t n, mcpf_nack *m);
int mcpf_parse_status_reply(const uint8_t *b, size_t n, mcpf_status_reply *m);
/* PING and PONG: 0..8 bytes; CANCEL, STATUS, BYE: empty. */
int mcpf_parse_opaque(uint8_t cmd, size_t n);
/* Valid UTF-8 as Go's utf8.Valid: no overlongs, surrogates or > U+10FFFF. */
int mcpf_utf8_valid(const uint8_t *p, size_t n);

/* ------------------------------------------------------ device tools (§16) */

#define MCPF_MAX_TOOLS 16u
#define MCPF_TOOL_NAME_MAX 32u
#define MCPF_TOOL_DESC_MAX 160u
#define MCPF_TOOL_SCHEMA_MAX 1024u
#define MCPF_TOOL_RESULT_MAX 1024u /* result bytes the daemon takes */
enum { MCPF_TOOL_OK = 0, MCPF_TOOL_FAILED = 1 };

/* A tool's handler: reads args (minified ASCII JSON of the tool's schema,
 * args_len bytes, not NUL-terminated, may be empty), writes what the model
 * reads (UTF-8) into out (cap bytes) and its length into *out_len, and
 * returns MCPF_TOOL_OK or MCPF_TOOL_FAILED (out then says why). Runs once
 * per call, inside mcpf_session_frame or _tick. */
typedef int (*mcpf_tool_fn)(void *ctx, const char *args, size_t args_len, char *out, size_t cap,
                            size_t *out_len);

/* One entry of the device's tool table (const, may live in flash). */
typedef struct mcpf_tool {
    const char *name;   /* 1..32 of a-z 0-9 _ - , unique in the table */
    const char *desc;   /* one line of UTF-8, 0..160 bytes, what the model reads; NULL: none */
    const char *schema; /* JSON Schema (§11.4.1 subset, type object) of the arguments,
                         * 0..1024 bytes; NULL or "": no arguments */
    mcpf_tool_fn fn;
} mcpf_tool;

/* A declaration as parsed from a TOOLS body (pointers into the body). */
typedef struct mcpf_tool_decl {
    const uint8_t *name; uint8_t name_len;
    const uint8_t *desc; uint8_t desc_len;
    const uint8_t *schema; uint16_t schema_len;
} mcpf_tool_decl;

typedef struct mcpf_tool_call {
    uint16_t chunk;
    uint8_t call, tool;
    const uint8_t *args; uint16_t args_len; /* printable ASCII */
} mcpf_tool_call;

typedef struct mcpf_tool_result {
    uint8_t call, status;
    const uint8_t *result; uint16_t len;
} mcpf_tool_result;

/* The table as a TOOLS body, built on the fly so it never needs a buffer:
 * mcpf_tools_check returns 0 or -MCPF_EMALFORMED (count 1..16, each entry
 * as above and what the daemon checks), mcpf_tools_size the body's length,
 * mcpf_tools_read copies its bytes [off, off + len) into out,
 * mcpf_tools_crc32c its CRC-32C; mcpf_put_tools writes it whole (0 if
 * invalid or over cap). */
int mcpf_tools_check(const mcpf_tool *t, uint8_t n);
size_t mcpf_tools_size(const mcpf_tool *t, uint8_t n);
void mcpf_tools_read(const mcpf_tool *t, uint8_t n, size_t off, uint8_t *out, size_t len);
uint32_t mcpf_tools_crc32c(const mcpf_tool *t, uint8_t n);
size_t mcpf_put_tools(uint8_t *out, size_t cap, const mcpf_tool *t, uint8_t n);
/* Parses a TOOLS body with the daemon's checks into up to max decls. */
int mcpf_parse_tools(const uint8_t *b, size_t n, mcpf_tool_decl *out, uint8_t max, uint8_t *count);
size_t mcpf_put_tool_call(uint8_t *out, const mcpf_tool_call *m);
int mcpf_parse_tool_call(const uint8_t *b, size_t n, mcpf_tool_call *m);
/* A result above 1024 bytes builds to 0 and parses to -MCPF_ETOO_LARGE. */
size_t mcpf_put_tool_result(uint8_t *out, const mcpf_tool_result *m);
int mcpf_parse_tool_result(const uint8_t *b, size_t n, mcpf_tool_result *m);

/* The value of "key" at the top level of a flat JSON object such as a
 * tool's arguments ({"on":true,"pin":4}): a pointer to its first byte
 * (a string's opening quote included) and *vlen its length, or NULL. No
 * nesting is followed and no escape decoded: enough for the arguments of
 * a schema of scalars. */
const char *mcpf_json_get(const char *json, size_t len, const char *key, size_t *vlen);

/* ---------------------------------------------------- fragmentation (§6) */

/* The piece size for a receiver announcing max_data (signed: 15 less). */
uint8_t mcpf_piece_size(uint16_t max_data, int sign);
/* Fragments of a body of n bytes cut into pieces of `piece`; 0: over 255. */
uint8_t mcpf_frag_count(size_t n, uint8_t piece);
/* Writes fragment `index` of body ‖ crc32c(body) (crc given, so it is
 * computed once per message) as a frame with cmd_byte | FRAGMENT into out
 * (263 bytes) and returns the frame's length. */
size_t mcpf_frag_frame(uint8_t *out, uint8_t cmd_byte, uint8_t seq, const uint8_t *body,
                       size_t n, uint32_t crc, uint8_t piece, uint8_t index);
/* The same with the body read through read(src, off, out, len): a body
 * that never sits in RAM whole (a TOOLS body from the tool table). */
typedef void (*mcpf_read_fn)(const void *src, size_t off, uint8_t *out, size_t len);
size_t mcpf_frag_frame_from(uint8_t *out, uint8_t cmd_byte, uint8_t seq, mcpf_read_fn read,
                            const void *src, size_t n, uint32_t crc, uint8_t piece, uint8_t index);

/* Reassembles one message into the caller's buffer (cap bytes: the largest
 * body accepted plus its 4-byte CRC-32C). Fragments may come in any order
 * and twice. */
typedef struct mcpf_reasm {
    uint8_t *buf;
    size_t cap;
    uint8_t active, cmd, seq, count, piece, last_len, received;
    uint8_t have[32]; /* bit i: fragment i is in */
} mcpf_reasm;

void mcpf_reasm_init(mcpf_reasm *r, uint8_t *buf, size_t cap);
/* Adds a fragment (frame with FRAGMENT set). Returns 1 and *body_len when
 * the message is complete (the body is r->buf[0 .. *body_len)), 0 while
 * fragments are missing, or -MCPF_EMALFORMED, -MCPF_ETOO_LARGE,
 * -MCPF_EBAD_CHECKSUM (the message is then discarded). A fragment of
 * another (cmd, seq) starts a new message. */
int mcpf_reasm_add(mcpf_reasm *r, const mcpf_frame *f, size_t *body_len);
/* Lists up to max missing indexes in ascending order; returns how many. */
uint8_t mcpf_reasm_missing(const mcpf_reasm *r, uint8_t *out, uint8_t max);

/* ------------------------------------------------------- signing (§9) */
#if MCPF_SIGN
enum { MCPF_DEVICE_TO_DAEMON = 0, MCPF_DAEMON_TO_DEVICE = 1 };

typedef struct mcpf_sha256 {
    uint32_t h[8];
    uint64_t bytes;
    uint8_t block[64];
} mcpf_sha256;
void mcpf_sha256_init(mcpf_sha256 *s);
void mcpf_sha256_update(mcpf_sha256 *s, const uint8_t *p, size_t n);
void mcpf_sha256_final(mcpf_sha256 *s, uint8_t out[32]);

typedef struct mcpf_key { const uint8_t *k; uint8_t len; /* 16..64 */ } mcpf_key;

/* Signs the frame in buf (wire bytes, len of them; buf has room for 15 more)
 * in place: SIGNED set, block appended, crc redone. Returns the new length,
 * or 0 (already signed, data would exceed 256, key not 16..64 bytes,
 * counter above 48 bits). nonce: boot_nonce ‖ daemon_nonce (§9.1). */
size_t mcpf_sign(uint8_t *buf, size_t len, const mcpf_key *key, uint8_t dir,
                 const uint8_t nonce[8], uint8_t link_id, uint64_t counter);

typedef struct mcpf_replay { uint64_t high, seen; uint8_t started; } mcpf_replay;
/* Accepts counter into the window, or returns -MCPF_EREPLAY / -MCPF_ESTALE. */
int mcpf_replay_accept(mcpf_replay *w, uint64_t counter);

/* Verifies a signed frame (§9.2; the frame CRC was checked by decoding). On
 * success *f loses its signature block and SIGNED flag. Returns 0,
 * -MCPF_EUNSIGNED, -MCPF_EBADTAG, -MCPF_EREPLAY or -MCPF_ESTALE. */
int mcpf_verify(mcpf_frame *f, const mcpf_key *key, uint8_t dir, const uint8_t nonce[8],
                mcpf_replay *w, uint8_t *link_id, uint64_t *counter);
#endif

#ifdef __cplusplus
}
#endif
#endif /* MCPF_H */
