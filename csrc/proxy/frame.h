/* RWP/1 frames (docs/PROTOCOL.md sections 3, 5, 6): a writer that encodes one
 * frame into caller memory (header + op fields, body by reference, MAC), and
 * an incremental reader fed arbitrary slices that checks everything in the
 * order of section 3.2 before it hands a frame over.
 *
 * Pure C: no sockets, no threads, no Lua. One rwp_writer and one rwp_reader
 * per connection direction; neither is thread-safe (one thread at a time).
 *
 * Op fields are padded with 0 to 3 zero bytes so that hdr_len is a multiple of
 * 4 (section 3.1); a reader refuses non-zero padding and padding of 4 or more.
 *
 * Error codes: the proto.* codes of section 6.1 are the RW_E_PROTO_* strings
 * below (not in the core registry: none is retryable except rate_limited, busy
 * and shutdown, which the proxy makes, not this codec). */
#ifndef RW_PROXY_FRAME_H
#define RW_PROXY_FRAME_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/uio.h>

#include "core/error.h"
#include "proxy/auth.h"

#define RW_E_PROTO_BAD_FRAME "proto.bad_frame"
#define RW_E_PROTO_BAD_MAC "proto.bad_mac"
#define RW_E_PROTO_UNKNOWN_OP "proto.unknown_op"
#define RW_E_PROTO_VERSION "proto.version"
#define RW_E_PROTO_AUTH_FAILED "proto.auth_failed"
#define RW_E_PROTO_AUTH_TIMEOUT "proto.auth_timeout"
#define RW_E_PROTO_TOO_MANY "proto.too_many"
#define RW_E_PROTO_EXPIRED "proto.expired"
#define RW_E_PROTO_RATE_LIMITED "proto.rate_limited"
#define RW_E_PROTO_BUSY "proto.busy"
#define RW_E_PROTO_SHUTDOWN "proto.shutdown"

#define RWP_VERSION 1
#define RWP_HDR 48
#define RWP_MAX_OP 4096
#define RWP_MAC_LEN 16 /* GMAC tag (PROTOCOL.md 4.4) */
#define RWP_MIN_FRAME (64u * 1024)        /* max_frame before and at least after negotiation */
#define RWP_MAX_FRAME (16u * 1024 * 1024) /* the largest max_frame CHALLENGE may choose */
#define RWP_MAX_METADATA (64u * 1024)     /* CREATE's body */
#define RWP_FLAG_RETRY 0x0001

/* str16 limits (sections 4.2, 6, 6.1). */
#define RWP_MAX_KEY_ID 64
#define RWP_MAX_BUCKET 222
#define RWP_MAX_OBJECT 1024
#define RWP_MAX_SESSION 2048
#define RWP_MAX_CODE 64
#define RWP_MAX_MESSAGE 1024
#define RWP_MAX_ERROR_ID 32

enum rwp_op {
  RWP_HELLO = 0x01,
  RWP_CHALLENGE = 0x02,
  RWP_AUTH = 0x03,
  RWP_WELCOME = 0x04,
  RWP_PING = 0x05,
  RWP_PONG = 0x06,
  RWP_GOODBYE = 0x07,
  RWP_CREATE = 0x10,
  RWP_WRITE_AT = 0x11,
  RWP_STATUS = 0x12,
  RWP_COMPLETE = 0x13,
  RWP_ABORT = 0x14,
  RWP_REPLY = 0x20,
  RWP_ERROR = 0x21,
};
const char *rwp_op_name(int op); /* "WRITE_AT"; NULL when unknown */

/* CREATE flags2, COMPLETE sums, ERROR flags2 ("bit 1" = 0x1, "bit 2" = 0x2). */
#define RWP_CREATE_IF_GEN 0x1u
#define RWP_CREATE_IF_METAGEN 0x2u
#define RWP_SUM_CRC32C 0x1u
#define RWP_SUM_MD5 0x2u
#define RWP_ERR_RETRYABLE 0x1u
#define RWP_ERR_PERSISTED 0x2u

/* A str16: bytes borrowed from the frame (not NUL-terminated). */
typedef struct rwp_str {
  const char *p;
  uint16_t len;
} rwp_str;
rwp_str rwp_cstr(const char *s); /* from a C string (s may be NULL: empty) */

typedef struct rwp_hello {
  uint8_t min_version, max_version;
  uint8_t client_nonce[RWP_NONCE_LEN];
  uint32_t max_frame;
  uint16_t max_inflight;
  rwp_str key_id;
} rwp_hello;
typedef struct rwp_challenge {
  uint8_t version;
  uint8_t server_nonce[RWP_NONCE_LEN];
  uint32_t max_frame;
  uint16_t max_inflight;
  uint32_t ping_interval_ms;
} rwp_challenge;
typedef struct rwp_auth {
  uint8_t proof[RWP_PROOF_LEN];
} rwp_auth;
typedef struct rwp_welcome {
  uint8_t proof[RWP_PROOF_LEN];
  uint32_t table_ttl_s;
} rwp_welcome;
typedef struct rwp_ping { /* PING and PONG */
  uint64_t nonce;
} rwp_ping;
typedef struct rwp_create {
  rwp_str bucket, object;
  uint32_t flags2;
  uint64_t if_generation_match, if_metageneration_match;
} rwp_create;
typedef struct rwp_write_at {
  rwp_str session;
  uint64_t offset;
} rwp_write_at;
typedef struct rwp_session_op { /* STATUS and ABORT */
  rwp_str session;
} rwp_session_op;
typedef struct rwp_complete {
  rwp_str session;
  uint64_t total;
  uint8_t sums;
  uint32_t crc32c;
  uint8_t md5[16];
} rwp_complete;
/* REPLY's op fields depend on the request (section 6): for_op says which.
 * CREATE: session; WRITE_AT: persisted; STATUS: persisted, finalized;
 * COMPLETE, ABORT: none. */
typedef struct rwp_reply {
  uint8_t for_op;
  rwp_str session;
  uint64_t persisted;
  uint8_t finalized;
} rwp_reply;
typedef struct rwp_error_op {
  uint32_t flags2;
  uint64_t persisted;
  uint32_t retry_after_ms;
  rwp_str code, message, id;
} rwp_error_op;

/* One message: the header fields a sender chooses, and the opcode's fields. */
typedef struct rwp_msg {
  uint8_t op;
  uint16_t flags;
  uint64_t client_id, seq, ack;
  union {
    rwp_hello hello;
    rwp_challenge challenge;
    rwp_auth auth;
    rwp_welcome welcome;
    rwp_ping ping;
    rwp_create create;
    rwp_write_at write_at;
    rwp_session_op session_op;
    rwp_complete complete;
    rwp_reply reply;
    rwp_error_op error;
  } u;
} rwp_msg;

/* Op fields codec. Encode writes the fields and the zero padding into
 * out[RWP_MAX_OP], checking every limit (rw.invalid_argument naming the
 * field); decode parses them with every str16 bounded by its limit and by
 * len (proto.bad_frame naming the field). A REPLY is decoded by
 * rwp_decode_reply, which needs the request's opcode. Decoded strings point
 * into ops. */
rw_error *rwp_encode_ops(const rwp_msg *m, uint8_t out[RWP_MAX_OP], size_t *len);
rw_error *rwp_decode_ops(uint8_t op, const uint8_t *ops, size_t len, rwp_msg *m);
rw_error *rwp_decode_reply(uint8_t for_op, const uint8_t *ops, size_t len, rwp_reply *r);

/* ---- writer ---- */

typedef struct rwp_writer {
  uint32_t max_frame; /* the peer's limit on bodies; RWP_MIN_FRAME at first */
  bool keyed;
  uint64_t n; /* frames sent with a MAC */
  uint8_t key[RWP_KEY_LEN];
} rwp_writer;

/* One encoded frame: send head[0..head_len], body[0..body_len] (the
 * caller's, by reference), mac[0..mac_len] in that order. */
typedef struct rwp_encoded {
  uint8_t head[RWP_HDR + RWP_MAX_OP];
  size_t head_len;
  const void *body;
  size_t body_len;
  uint8_t mac[RWP_MAC_LEN];
  size_t mac_len; /* 0 before keys are set */
} rwp_encoded;

void rwp_writer_init(rwp_writer *w);
/* From now on every frame carries a MAC under key, counting from n = 0. */
void rwp_writer_set_key(rwp_writer *w, const uint8_t key[RWP_KEY_LEN]);
void rwp_writer_wipe(rwp_writer *w); /* wipes the key */
/* Encodes m with its body (body_len bytes; NULL when 0) into out and, when
 * keyed, computes the MAC and counts the frame. */
/* The MAC of frame n (its bytes without the MAC, head and body contiguous)
 * under key: GMAC, PROTOCOL.md 4.4. For tests and tools that build frames by
 * hand; the writer and reader compute it as they go. */
rw_error *rwp_frame_mac(const uint8_t key[RWP_KEY_LEN], uint64_t n, const void *frame, size_t len,
                        uint8_t out[RWP_MAC_LEN]);

rw_error *rwp_encode(rwp_writer *w, const rwp_msg *m, const void *body, size_t body_len,
                     rwp_encoded *out);
/* out as up to 3 iovecs; returns how many. */
int rwp_encoded_iov(const rwp_encoded *e, struct iovec iov[3]);
/* Copies the whole frame into buf; returns its size, or 0 when cap is short. */
size_t rwp_encoded_copy(const rwp_encoded *e, void *buf, size_t cap);

/* ---- reader ---- */

typedef enum { RWP_SIDE_SERVER, RWP_SIDE_CLIENT } rwp_side; /* the side that reads */

/* A frame handed over by the reader. msg's strings and raw point into the
 * reader and stay valid until the next rwp_reader_feed. body is the caller's
 * buffer (from body_fn) or, when body_owned, malloc'd memory the caller now
 * owns (rwp_frame_clear frees it). */
typedef struct rwp_frame {
  rwp_msg msg;
  uint16_t hdr_len;
  uint32_t body_len;
  const uint8_t *raw; /* fixed header and op fields as received (hdr_len bytes) */
  const uint8_t *ops; /* op fields (hdr_len - 48 bytes): REPLY's for rwp_decode_reply */
  uint8_t *body;
  bool body_owned;
} rwp_frame;
void rwp_frame_clear(rwp_frame *f);

/* Called once the header and op fields of a frame with a body are checked:
 * set *buf to body_len bytes of the caller's (e.g. a cache segment), or leave
 * it NULL and the reader allocates. The body must not be used before the
 * frame is handed over (the MAC is checked last). An error fails the frame. */
typedef rw_error *(*rwp_body_fn)(void *ud, const rwp_frame *f, uint8_t **buf);

typedef struct rwp_reader rwp_reader;

/* A reader for frames the other side sends to `side`. It starts expecting the
 * first handshake frame (HELLO for a server, CHALLENGE for a client) and moves
 * on by itself as frames are handed over. The caller sets the key before
 * feeding the first frame that carries a MAC: a server right after AUTH, a
 * client right after CHALLENGE (WELCOME has a MAC). */
rw_error *rwp_reader_new(rwp_side side, rwp_body_fn body_fn, void *ud, rwp_reader **out);
void rwp_reader_free(rwp_reader *r); /* wipes the key; NULL is fine */
void rwp_reader_set_key(rwp_reader *r, const uint8_t key[RWP_KEY_LEN]);
/* The negotiated max_frame (RWP_MIN_FRAME .. RWP_MAX_FRAME). */
rw_error *rwp_reader_set_max_frame(rwp_reader *r, uint32_t max_frame);
bool rwp_reader_authed(const rwp_reader *r); /* past the handshake */
bool rwp_reader_idle(const rwp_reader *r);   /* between frames (no partial frame held) */

/* Feeds up to len bytes; *used says how many were taken. Stops at the end of
 * a frame: *got is then true and *out holds it. Errors: proto.bad_frame,
 * proto.bad_mac, proto.version (a HELLO from another version), and the body
 * callback's: the reader is then dead (every later feed fails: close the
 * connection). proto.unknown_op: the frame (its MAC checked) was skipped, the
 * reader stays usable and out->msg has its header (op, seq) for the ERROR. */
rw_error *rwp_reader_feed(rwp_reader *r, const void *data, size_t len, size_t *used,
                          rwp_frame *out, bool *got);

/* Reading a body in place (no copy through the caller's read buffer): while
 * the reader is inside the body of a frame, rwp_reader_body_room says where
 * its next bytes go (*at) and how many it still needs; 0 when it is not in a
 * body. The caller reads up to that many bytes straight there (recv) and
 * calls rwp_reader_body_fed with the count: they are MACed where they are, in
 * the same single pass that rwp_reader_feed makes. Then feeding goes on as
 * usual (the MAC and the next frame). Errors as rwp_reader_feed's. */
size_t rwp_reader_body_room(rwp_reader *r, uint8_t **at);
rw_error *rwp_reader_body_fed(rwp_reader *r, size_t n);

#endif
