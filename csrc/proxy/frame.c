/* RWP/1 frames: see frame.h and docs/PROTOCOL.md sections 3 to 6. */
#include "proxy/frame.h"

#include <stdlib.h>
#include <string.h>

#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>

#include "core/checksum.h"

static const uint8_t magic[4] = {0x52, 0x57, 0x50, 0x46}; /* "RWPF" */

const char *rwp_op_name(int op) {
  switch (op) {
  case RWP_HELLO: return "HELLO";
  case RWP_CHALLENGE: return "CHALLENGE";
  case RWP_AUTH: return "AUTH";
  case RWP_WELCOME: return "WELCOME";
  case RWP_PING: return "PING";
  case RWP_PONG: return "PONG";
  case RWP_GOODBYE: return "GOODBYE";
  case RWP_CREATE: return "CREATE";
  case RWP_WRITE_AT: return "WRITE_AT";
  case RWP_STATUS: return "STATUS";
  case RWP_COMPLETE: return "COMPLETE";
  case RWP_ABORT: return "ABORT";
  case RWP_REPLY: return "REPLY";
  case RWP_ERROR: return "ERROR";
  default: return NULL;
  }
}

rwp_str rwp_cstr(const char *s) {
  size_t n = s ? strlen(s) : 0;
  return (rwp_str){s, (uint16_t)(n > UINT16_MAX ? UINT16_MAX : n)};
}

static bool is_request(int op) { return op >= RWP_CREATE && op <= RWP_ABORT; }

/* ---- big-endian put/get ---- */

static void put_be(uint8_t *p, uint64_t v, int n) {
  for (int i = 0; i < n; i++) p[i] = (uint8_t)(v >> (8 * (n - 1 - i)));
}
static uint64_t get_be(const uint8_t *p, int n) {
  uint64_t v = 0;
  for (int i = 0; i < n; i++) v = v << 8 | p[i];
  return v;
}

/* ---- op fields encoding: a bounded output cursor ---- */

typedef struct wcur {
  uint8_t *p;
  size_t len;
  const char *bad; /* the first field that did not fit its limit */
} wcur;

static void w_bytes(wcur *c, const void *b, size_t n) {
  if (c->bad) return;
  if (n > RWP_MAX_OP - c->len) {
    c->bad = "op fields (over 4096 bytes)";
    return;
  }
  if (n) memcpy(c->p + c->len, b, n);
  c->len += n;
}
static void w_int(wcur *c, uint64_t v, int n) {
  uint8_t b[8];
  put_be(b, v, n);
  w_bytes(c, b, (size_t)n);
}
static void w_str(wcur *c, rwp_str s, size_t limit, bool nonempty, const char *name) {
  if (!c->bad && (s.len > limit || (nonempty && s.len == 0) || (s.len && !s.p))) c->bad = name;
  w_int(c, s.len, 2);
  w_bytes(c, s.p, s.len);
}
static void w_check(wcur *c, bool ok, const char *name) {
  if (!ok && !c->bad) c->bad = name;
}

static void enc_hello(wcur *c, const rwp_hello *h) {
  w_check(c, h->min_version >= 1 && h->min_version <= h->max_version, "hello.min_version/max_version");
  w_check(c, h->max_frame >= RWP_MIN_FRAME, "hello.max_frame (>= 65536)");
  w_check(c, h->max_inflight >= 1, "hello.max_inflight (>= 1)");
  w_int(c, h->min_version, 1), w_int(c, h->max_version, 1), w_int(c, 0, 2);
  w_bytes(c, h->client_nonce, RWP_NONCE_LEN);
  w_int(c, h->max_frame, 4), w_int(c, h->max_inflight, 2);
  w_str(c, h->key_id, RWP_MAX_KEY_ID, false, "hello.key_id (<= 64 bytes)");
}

static void enc_challenge(wcur *c, const rwp_challenge *h) {
  w_check(c, h->version >= 1, "challenge.version");
  w_check(c, h->max_frame >= RWP_MIN_FRAME && h->max_frame <= RWP_MAX_FRAME,
          "challenge.max_frame (64 KiB .. 16 MiB)");
  w_check(c, h->max_inflight >= 1, "challenge.max_inflight (>= 1)");
  w_int(c, h->version, 1), w_int(c, 0, 1), w_int(c, 0, 2);
  w_bytes(c, h->server_nonce, RWP_NONCE_LEN);
  w_int(c, h->max_frame, 4), w_int(c, h->max_inflight, 2), w_int(c, 0, 2);
  w_int(c, h->ping_interval_ms, 4);
}

static void enc_create(wcur *c, const rwp_create *h) {
  w_check(c, !(h->flags2 & ~(RWP_CREATE_IF_GEN | RWP_CREATE_IF_METAGEN)), "create.flags2");
  w_str(c, h->bucket, RWP_MAX_BUCKET, true, "create.bucket (1..222 bytes)");
  w_str(c, h->object, RWP_MAX_OBJECT, true, "create.object (1..1024 bytes)");
  w_int(c, h->flags2, 4), w_int(c, h->if_generation_match, 8);
  w_int(c, h->if_metageneration_match, 8);
}

static void enc_session(wcur *c, rwp_str s) {
  w_str(c, s, RWP_MAX_SESSION, true, "session (1..2048 bytes)");
}

static void enc_complete(wcur *c, const rwp_complete *h) {
  w_check(c, !(h->sums & ~(RWP_SUM_CRC32C | RWP_SUM_MD5)), "complete.sums");
  enc_session(c, h->session);
  w_int(c, h->total, 8), w_int(c, h->sums, 1), w_int(c, h->crc32c, 4);
  w_bytes(c, h->md5, 16);
}

static void enc_reply(wcur *c, const rwp_reply *h) {
  switch (h->for_op) {
  case RWP_CREATE: enc_session(c, h->session); break;
  case RWP_WRITE_AT: w_int(c, h->persisted, 8); break;
  case RWP_STATUS:
    w_check(c, h->finalized <= 1, "reply.finalized (0 or 1)");
    w_int(c, h->persisted, 8), w_int(c, h->finalized, 1);
    break;
  case RWP_COMPLETE: case RWP_ABORT: break;
  default: w_check(c, false, "reply.for_op (a request opcode)");
  }
}

static void enc_error(wcur *c, const rwp_error_op *h) {
  w_check(c, !(h->flags2 & ~(RWP_ERR_RETRYABLE | RWP_ERR_PERSISTED)), "error.flags2");
  w_int(c, h->flags2, 4), w_int(c, h->persisted, 8), w_int(c, h->retry_after_ms, 4);
  w_int(c, 0, 4);
  w_str(c, h->code, RWP_MAX_CODE, true, "error.code (1..64 bytes)");
  w_str(c, h->message, RWP_MAX_MESSAGE, false, "error.message (<= 1024 bytes)");
  w_str(c, h->id, RWP_MAX_ERROR_ID, false, "error.id (<= 32 bytes)");
}

static void enc_fields(wcur *c, const rwp_msg *m) {
  switch (m->op) {
  case RWP_HELLO: enc_hello(c, &m->u.hello); break;
  case RWP_CHALLENGE: enc_challenge(c, &m->u.challenge); break;
  case RWP_AUTH: w_bytes(c, m->u.auth.proof, RWP_PROOF_LEN); break;
  case RWP_WELCOME:
    w_bytes(c, m->u.welcome.proof, RWP_PROOF_LEN), w_int(c, m->u.welcome.table_ttl_s, 4);
    break;
  case RWP_PING: case RWP_PONG: w_int(c, m->u.ping.nonce, 8); break;
  case RWP_GOODBYE: break;
  case RWP_CREATE: enc_create(c, &m->u.create); break;
  case RWP_WRITE_AT: enc_session(c, m->u.write_at.session), w_int(c, m->u.write_at.offset, 8); break;
  case RWP_STATUS: case RWP_ABORT: enc_session(c, m->u.session_op.session); break;
  case RWP_COMPLETE: enc_complete(c, &m->u.complete); break;
  case RWP_REPLY: enc_reply(c, &m->u.reply); break;
  case RWP_ERROR: enc_error(c, &m->u.error); break;
  default: w_check(c, false, "opcode (not one of section 5)");
  }
}

rw_error *rwp_encode_ops(const rwp_msg *m, uint8_t out[RWP_MAX_OP], size_t *len) {
  wcur c = {out, 0, NULL};
  enc_fields(&c, m);
  static const uint8_t zeros[4];
  w_bytes(&c, zeros, (4 - c.len % 4) % 4);
  if (c.bad)
    return rw_err(RW_E_INVALID, "rwp %s: %s out of the rules", rwp_op_name(m->op) ? rwp_op_name(m->op) : "?",
                  c.bad);
  *len = c.len;
  return NULL;
}

/* ---- op fields decoding: a bounded input cursor ---- */

typedef struct rcur {
  const uint8_t *p;
  size_t len, off;
  const char *bad;
} rcur;

static const uint8_t *r_take(rcur *c, size_t n, const char *name) {
  if (c->bad) return NULL;
  if (n > c->len - c->off) {
    c->bad = name;
    return NULL;
  }
  const uint8_t *p = c->p + c->off;
  c->off += n;
  return p;
}
static uint64_t r_int(rcur *c, int n, const char *name) {
  const uint8_t *p = r_take(c, (size_t)n, name);
  return p ? get_be(p, n) : 0;
}
static void r_bytes(rcur *c, uint8_t *out, size_t n, const char *name) {
  const uint8_t *p = r_take(c, n, name);
  if (p) memcpy(out, p, n);
}
static rwp_str r_str(rcur *c, size_t limit, bool nonempty, const char *name) {
  uint16_t n = (uint16_t)r_int(c, 2, name);
  if (!c->bad && (n > limit || (nonempty && n == 0))) c->bad = name;
  const uint8_t *p = r_take(c, n, name);
  return p ? (rwp_str){(const char *)p, n} : (rwp_str){NULL, 0};
}
static void r_check(rcur *c, bool ok, const char *name) {
  if (!ok && !c->bad) c->bad = name;
}

static void dec_hello(rcur *c, rwp_hello *h) {
  h->min_version = (uint8_t)r_int(c, 1, "hello.min_version");
  h->max_version = (uint8_t)r_int(c, 1, "hello.max_version");
  r_check(c, h->min_version >= 1 && h->min_version <= h->max_version, "hello.min_version/max_version");
  r_check(c, r_int(c, 2, "hello.reserved") == 0, "hello.reserved (must be 0)");
  r_bytes(c, h->client_nonce, RWP_NONCE_LEN, "hello.client_nonce");
  h->max_frame = (uint32_t)r_int(c, 4, "hello.max_frame");
  r_check(c, h->max_frame >= RWP_MIN_FRAME, "hello.max_frame (>= 65536)");
  h->max_inflight = (uint16_t)r_int(c, 2, "hello.max_inflight");
  r_check(c, h->max_inflight >= 1, "hello.max_inflight (>= 1)");
  h->key_id = r_str(c, RWP_MAX_KEY_ID, false, "hello.key_id (<= 64 bytes)");
}

static void dec_challenge(rcur *c, rwp_challenge *h) {
  h->version = (uint8_t)r_int(c, 1, "challenge.version");
  r_check(c, h->version >= 1, "challenge.version");
  r_check(c, r_int(c, 1, "challenge.reserved") == 0 && r_int(c, 2, "challenge.reserved") == 0,
          "challenge.reserved (must be 0)");
  r_bytes(c, h->server_nonce, RWP_NONCE_LEN, "challenge.server_nonce");
  h->max_frame = (uint32_t)r_int(c, 4, "challenge.max_frame");
  r_check(c, h->max_frame >= RWP_MIN_FRAME && h->max_frame <= RWP_MAX_FRAME,
          "challenge.max_frame (64 KiB .. 16 MiB)");
  h->max_inflight = (uint16_t)r_int(c, 2, "challenge.max_inflight");
  r_check(c, h->max_inflight >= 1, "challenge.max_inflight (>= 1)");
  r_check(c, r_int(c, 2, "challenge.reserved") == 0, "challenge.reserved (must be 0)");
  h->ping_interval_ms = (uint32_t)r_int(c, 4, "challenge.ping_interval_ms");
}

static void dec_create(rcur *c, rwp_create *h) {
  h->bucket = r_str(c, RWP_MAX_BUCKET, true, "create.bucket (1..222 bytes)");
  h->object = r_str(c, RWP_MAX_OBJECT, true, "create.object (1..1024 bytes)");
  h->flags2 = (uint32_t)r_int(c, 4, "create.flags2");
  r_check(c, !(h->flags2 & ~(RWP_CREATE_IF_GEN | RWP_CREATE_IF_METAGEN)), "create.flags2");
  h->if_generation_match = r_int(c, 8, "create.if_generation_match");
  h->if_metageneration_match = r_int(c, 8, "create.if_metageneration_match");
}

static rwp_str dec_session(rcur *c) {
  return r_str(c, RWP_MAX_SESSION, true, "session (1..2048 bytes)");
}

static void dec_complete(rcur *c, rwp_complete *h) {
  h->session = dec_session(c);
  h->total = r_int(c, 8, "complete.total");
  h->sums = (uint8_t)r_int(c, 1, "complete.sums");
  r_check(c, !(h->sums & ~(RWP_SUM_CRC32C | RWP_SUM_MD5)), "complete.sums");
  h->crc32c = (uint32_t)r_int(c, 4, "complete.crc32c");
  r_bytes(c, h->md5, 16, "complete.md5");
}

static void dec_error(rcur *c, rwp_error_op *h) {
  h->flags2 = (uint32_t)r_int(c, 4, "error.flags2");
  r_check(c, !(h->flags2 & ~(RWP_ERR_RETRYABLE | RWP_ERR_PERSISTED)), "error.flags2");
  h->persisted = r_int(c, 8, "error.persisted");
  h->retry_after_ms = (uint32_t)r_int(c, 4, "error.retry_after_ms");
  r_check(c, r_int(c, 4, "error.reserved") == 0, "error.reserved (must be 0)");
  h->code = r_str(c, RWP_MAX_CODE, true, "error.code (1..64 bytes)");
  h->message = r_str(c, RWP_MAX_MESSAGE, false, "error.message (<= 1024 bytes)");
  h->id = r_str(c, RWP_MAX_ERROR_ID, false, "error.id (<= 32 bytes)");
}

static void dec_reply(rcur *c, rwp_reply *h) {
  switch (h->for_op) {
  case RWP_CREATE: h->session = dec_session(c); break;
  case RWP_WRITE_AT: h->persisted = r_int(c, 8, "reply.persisted"); break;
  case RWP_STATUS:
    h->persisted = r_int(c, 8, "reply.persisted");
    h->finalized = (uint8_t)r_int(c, 1, "reply.finalized");
    r_check(c, h->finalized <= 1, "reply.finalized (0 or 1)");
    break;
  case RWP_COMPLETE: case RWP_ABORT: break;
  default: r_check(c, false, "reply.for_op (a request opcode)");
  }
}

static void dec_fields(rcur *c, uint8_t op, rwp_msg *m) {
  switch (op) {
  case RWP_HELLO: dec_hello(c, &m->u.hello); break;
  case RWP_CHALLENGE: dec_challenge(c, &m->u.challenge); break;
  case RWP_AUTH: r_bytes(c, m->u.auth.proof, RWP_PROOF_LEN, "auth.proof"); break;
  case RWP_WELCOME:
    r_bytes(c, m->u.welcome.proof, RWP_PROOF_LEN, "welcome.proof");
    m->u.welcome.table_ttl_s = (uint32_t)r_int(c, 4, "welcome.table_ttl_s");
    break;
  case RWP_PING: case RWP_PONG: m->u.ping.nonce = r_int(c, 8, "ping.nonce"); break;
  case RWP_GOODBYE: break;
  case RWP_CREATE: dec_create(c, &m->u.create); break;
  case RWP_WRITE_AT:
    m->u.write_at.session = dec_session(c);
    m->u.write_at.offset = r_int(c, 8, "write_at.offset");
    break;
  case RWP_STATUS: case RWP_ABORT: m->u.session_op.session = dec_session(c); break;
  case RWP_COMPLETE: dec_complete(c, &m->u.complete); break;
  case RWP_REPLY: c->off = c->len; break; /* rwp_decode_reply, once the request is known */
  case RWP_ERROR: dec_error(c, &m->u.error); break;
  default: r_check(c, false, "opcode");
  }
}

/* After the fields: 0 to 3 zero bytes up to the end. */
static rw_error *dec_finish(rcur *c, const char *what) {
  size_t rest = c->bad ? 0 : c->len - c->off;
  if (!c->bad && (rest > 3 || (rest && memcmp(c->p + c->off, "\0\0\0", rest) != 0)))
    c->bad = "padding (0 to 3 zero bytes after the fields)";
  if (c->bad) return rw_err(RW_E_PROTO_BAD_FRAME, "rwp %s: %s out of the rules", what, c->bad);
  return NULL;
}

rw_error *rwp_decode_ops(uint8_t op, const uint8_t *ops, size_t len, rwp_msg *m) {
  rcur c = {ops, len, 0, NULL};
  dec_fields(&c, op, m);
  const char *name = rwp_op_name(op);
  return dec_finish(&c, name ? name : "unknown opcode");
}

rw_error *rwp_decode_reply(uint8_t for_op, const uint8_t *ops, size_t len, rwp_reply *r) {
  rcur c = {ops, len, 0, NULL};
  memset(r, 0, sizeof *r);
  r->for_op = for_op;
  dec_reply(&c, r);
  return dec_finish(&c, "REPLY");
}

/* ---- rules shared by the writer and the reader ---- */

static bool body_allowed(uint8_t op, uint32_t body_len) {
  switch (op) {
  case RWP_CREATE: return body_len <= RWP_MAX_METADATA;
  case RWP_WRITE_AT: return body_len >= 1;
  case RWP_REPLY: return true;
  default: return body_len == 0;
  }
}

static bool flags_allowed(uint8_t op, uint16_t flags) {
  return flags == 0 || (is_request(op) && flags == RWP_FLAG_RETRY);
}

/* Requests and replies carry a seq >= 1; ERROR either; the others 0. */
static bool seq_allowed(uint8_t op, uint64_t seq) {
  if (op == RWP_ERROR) return true;
  return (is_request(op) || op == RWP_REPLY) ? seq >= 1 : seq == 0;
}

static void put_header(uint8_t *h, const rwp_msg *m, size_t hdr_len, uint32_t body_len) {
  memcpy(h, magic, 4);
  h[4] = RWP_VERSION, h[5] = m->op;
  put_be(h + 6, m->flags, 2), put_be(h + 8, hdr_len, 2), put_be(h + 10, 0, 2);
  put_be(h + 12, body_len, 4), put_be(h + 16, m->client_id, 8), put_be(h + 24, m->seq, 8);
  put_be(h + 32, m->ack, 8), put_be(h + 40, 0, 4);
  put_be(h + 44, rw_crc32c(rw_crc32c(0, h, 44), h + RWP_HDR, hdr_len - RWP_HDR), 4);
}

/* GMAC(key, iv = 0x00000000 || u64(n), aad = head || body): AES-256-GCM over
 * no plaintext, the tag the MAC (PROTOCOL.md 4.4). One context (the reader
 * reuses its own). GMAC runs several times faster than HMAC-SHA256 here
 * (AES-NI and carry-less multiply), and the MAC covers every byte uploaded. */
static rw_error *mac_start(EVP_MAC_CTX *ctx, const uint8_t key[32], uint64_t n,
                           const uint8_t *head, size_t head_len) {
  uint8_t iv[12] = {0};
  put_be(iv + 4, n, 8);
  OSSL_PARAM params[] = {OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_CIPHER, "AES-256-GCM", 0),
                         OSSL_PARAM_construct_octet_string(OSSL_MAC_PARAM_IV, iv, sizeof iv),
                         OSSL_PARAM_construct_end()};
  if (EVP_MAC_init(ctx, key, 32, params) && EVP_MAC_update(ctx, head, head_len)) return NULL;
  return rw_err(RW_E_INTERNAL, "rwp: GMAC (AES-256-GCM) init failed in OpenSSL");
}

static rw_error *mac_finish(EVP_MAC_CTX *ctx, uint8_t out[RWP_MAC_LEN]) {
  size_t olen = 0;
  if (EVP_MAC_final(ctx, out, &olen, RWP_MAC_LEN) && olen == RWP_MAC_LEN) return NULL;
  return rw_err(RW_E_INTERNAL, "rwp: GMAC failed in OpenSSL");
}

static EVP_MAC_CTX *mac_ctx_new(void) {
  EVP_MAC *mac = EVP_MAC_fetch(NULL, "GMAC", NULL);
  EVP_MAC_CTX *ctx = mac ? EVP_MAC_CTX_new(mac) : NULL;
  EVP_MAC_free(mac); /* the context holds its own reference */
  return ctx;
}

rw_error *rwp_frame_mac(const uint8_t key[RWP_KEY_LEN], uint64_t n, const void *frame, size_t len,
                        uint8_t out[RWP_MAC_LEN]) {
  EVP_MAC_CTX *ctx = mac_ctx_new();
  if (!ctx) return rw_err(RW_E_INTERNAL, "rwp: no GMAC in OpenSSL");
  rw_error *err = mac_start(ctx, key, n, frame, len);
  if (!err) err = mac_finish(ctx, out);
  EVP_MAC_CTX_free(ctx);
  return err;
}

/* ---- writer ---- */

void rwp_writer_init(rwp_writer *w) {
  memset(w, 0, sizeof *w);
  w->max_frame = RWP_MIN_FRAME;
}

void rwp_writer_set_key(rwp_writer *w, const uint8_t key[RWP_KEY_LEN]) {
  memcpy(w->key, key, RWP_KEY_LEN);
  w->keyed = true;
  w->n = 0;
}

void rwp_writer_wipe(rwp_writer *w) {
  OPENSSL_cleanse(w->key, sizeof w->key);
  w->keyed = false;
}

static rw_error *check_msg(const rwp_writer *w, const rwp_msg *m, size_t body_len) {
  const char *name = rwp_op_name(m->op);
  if (!name) return rw_err(RW_E_INVALID, "rwp encode: opcode 0x%02x is not one of section 5", m->op);
  if (body_len > w->max_frame)
    return rw_err(RW_E_INVALID, "rwp %s: body_len %zu over max_frame %u", name, body_len, w->max_frame);
  if (!body_allowed(m->op, (uint32_t)body_len))
    return rw_err(RW_E_INVALID, "rwp %s: body_len %zu not allowed for this opcode", name, body_len);
  if (!flags_allowed(m->op, m->flags))
    return rw_err(RW_E_INVALID, "rwp %s: flags 0x%04x not defined for this opcode", name, m->flags);
  if (!seq_allowed(m->op, m->seq))
    return rw_err(RW_E_INVALID, "rwp %s: seq %llu not allowed (requests and replies >= 1, others 0)",
                  name, (unsigned long long)m->seq);
  if (w->keyed && w->n >= UINT64_MAX - 1)
    return rw_err(RW_E_INVALID, "rwp: frame counter exhausted, close the connection");
  return NULL;
}

static rw_error *writer_mac(rwp_writer *w, rwp_encoded *out) {
  EVP_MAC_CTX *ctx = mac_ctx_new();
  rw_error *err = ctx ? mac_start(ctx, w->key, w->n, out->head, out->head_len)
                      : rw_err(RW_E_INTERNAL, "rwp: no GMAC in OpenSSL");
  if (!err && out->body_len && !EVP_MAC_update(ctx, out->body, out->body_len))
    err = rw_err(RW_E_INTERNAL, "rwp: GMAC update failed in OpenSSL");
  if (!err) err = mac_finish(ctx, out->mac);
  EVP_MAC_CTX_free(ctx);
  if (!err) out->mac_len = RWP_MAC_LEN, w->n++;
  return err;
}

rw_error *rwp_encode(rwp_writer *w, const rwp_msg *m, const void *body, size_t body_len,
                     rwp_encoded *out) {
  size_t ops_len = 0;
  rw_error *err = check_msg(w, m, body_len);
  if (!err && body_len && !body) err = rw_err(RW_E_INVALID, "rwp encode: body is NULL");
  if (!err) err = rwp_encode_ops(m, out->head + RWP_HDR, &ops_len);
  if (err) return err;
  out->head_len = RWP_HDR + ops_len;
  put_header(out->head, m, out->head_len, (uint32_t)body_len);
  out->body = body, out->body_len = body_len, out->mac_len = 0;
  return w->keyed ? writer_mac(w, out) : NULL;
}

int rwp_encoded_iov(const rwp_encoded *e, struct iovec iov[3]) {
  int n = 0;
  iov[n++] = (struct iovec){(void *)e->head, e->head_len};
  if (e->body_len) iov[n++] = (struct iovec){(void *)e->body, e->body_len};
  if (e->mac_len) iov[n++] = (struct iovec){(void *)e->mac, e->mac_len};
  return n;
}

size_t rwp_encoded_copy(const rwp_encoded *e, void *buf, size_t cap) {
  size_t total = e->head_len + e->body_len + e->mac_len;
  if (total > cap) return 0;
  uint8_t *p = buf;
  memcpy(p, e->head, e->head_len);
  if (e->body_len) memcpy(p + e->head_len, e->body, e->body_len);
  memcpy(p + e->head_len + e->body_len, e->mac, e->mac_len);
  return total;
}

/* ---- reader ---- */

typedef enum { RD_HEAD, RD_OPS, RD_BODY, RD_MAC, RD_DEAD } rd_state;

struct rwp_reader {
  rwp_side side;
  int phase; /* 0: first handshake frame, 1: second, 2: open */
  rd_state st;
  uint32_t max_frame;
  rwp_body_fn body_fn;
  void *ud;
  EVP_MAC_CTX *mac;
  bool keyed, need_mac, unknown;
  uint64_t n; /* frames read with a MAC */
  uint8_t key[RWP_KEY_LEN];
  uint8_t head[RWP_HDR + RWP_MAX_OP];
  size_t have; /* bytes of head, body or mac so far (per state) */
  rwp_frame f; /* the frame being read */
  uint8_t mac_rx[RWP_MAC_LEN];
};

rw_error *rwp_reader_new(rwp_side side, rwp_body_fn body_fn, void *ud, rwp_reader **out) {
  rwp_reader *r = calloc(1, sizeof *r);
  if (!r) return rw_err(RW_E_NOMEM, "rwp reader: out of memory");
  r->mac = mac_ctx_new();
  if (!r->mac) {
    free(r);
    return rw_err(RW_E_INTERNAL, "rwp reader: no GMAC in OpenSSL");
  }
  r->side = side, r->body_fn = body_fn, r->ud = ud, r->max_frame = RWP_MIN_FRAME;
  *out = r;
  return NULL;
}

void rwp_frame_clear(rwp_frame *f) {
  if (f->body_owned) free(f->body);
  f->body = NULL, f->body_owned = false;
}

void rwp_reader_free(rwp_reader *r) {
  if (!r) return;
  rwp_frame_clear(&r->f);
  EVP_MAC_CTX_free(r->mac);
  OPENSSL_cleanse(r->key, sizeof r->key);
  free(r);
}

void rwp_reader_set_key(rwp_reader *r, const uint8_t key[RWP_KEY_LEN]) {
  memcpy(r->key, key, RWP_KEY_LEN);
  r->keyed = true;
  r->n = 0;
}

rw_error *rwp_reader_set_max_frame(rwp_reader *r, uint32_t max_frame) {
  if (max_frame < RWP_MIN_FRAME || max_frame > RWP_MAX_FRAME)
    return rw_err(RW_E_INVALID, "rwp reader: max_frame %u must be 65536 .. 16777216", max_frame);
  r->max_frame = max_frame;
  return NULL;
}

bool rwp_reader_authed(const rwp_reader *r) { return r->phase == 2; }
bool rwp_reader_idle(const rwp_reader *r) { return r->st == RD_HEAD && r->have == 0; }

static rw_error *bad(rwp_reader *r, const char *code, const char *fmt, const char *what) {
  r->st = RD_DEAD;
  rwp_frame_clear(&r->f);
  return rw_err(code, fmt, what);
}

/* Step 1: the fixed header alone. */
static rw_error *check_fixed(rwp_reader *r) {
  const uint8_t *h = r->head;
  rwp_frame *f = &r->f;
  if (memcmp(h, magic, 4) != 0) return bad(r, RW_E_PROTO_BAD_FRAME, "rwp frame: %s", "bad magic");
  if (h[4] != RWP_VERSION)
    return bad(r, r->side == RWP_SIDE_SERVER && r->phase == 0 ? RW_E_PROTO_VERSION : RW_E_PROTO_BAD_FRAME,
               "rwp frame: %s", "version is not 1");
  if (get_be(h + 10, 2) != 0 || get_be(h + 40, 4) != 0)
    return bad(r, RW_E_PROTO_BAD_FRAME, "rwp frame: %s", "reserved field not 0");
  f->hdr_len = (uint16_t)get_be(h + 8, 2);
  f->body_len = (uint32_t)get_be(h + 12, 4);
  if (f->hdr_len % 4 || f->hdr_len < RWP_HDR || f->hdr_len > RWP_HDR + RWP_MAX_OP)
    return bad(r, RW_E_PROTO_BAD_FRAME, "rwp frame: %s",
               "hdr_len must be a multiple of 4 in 48 .. 48 + 4096");
  if (f->body_len > r->max_frame)
    return bad(r, RW_E_PROTO_BAD_FRAME, "rwp frame: %s", "body_len over max_frame");
  rwp_msg *m = &f->msg;
  memset(m, 0, sizeof *m);
  m->op = h[5], m->flags = (uint16_t)get_be(h + 6, 2);
  m->client_id = get_be(h + 16, 8), m->seq = get_be(h + 24, 8), m->ack = get_be(h + 32, 8);
  return NULL;
}

static bool op_allowed(const rwp_reader *r, uint8_t op) {
  if (r->side == RWP_SIDE_SERVER) {
    if (r->phase < 2) return op == (r->phase == 0 ? RWP_HELLO : RWP_AUTH);
    return is_request(op) || op == RWP_PING || op == RWP_PONG || op == RWP_GOODBYE || op == RWP_ERROR;
  }
  if (op == RWP_ERROR) return true;
  if (r->phase < 2) return op == (r->phase == 0 ? RWP_CHALLENGE : RWP_WELCOME);
  return op == RWP_REPLY || op == RWP_PING || op == RWP_PONG || op == RWP_GOODBYE;
}

/* Steps 2 and 3: hcrc, opcode, header rules, op fields. */
static rw_error *check_ops(rwp_reader *r) {
  rwp_frame *f = &r->f;
  rwp_msg *m = &f->msg;
  uint32_t crc = rw_crc32c(rw_crc32c(0, r->head, 44), r->head + RWP_HDR, f->hdr_len - RWP_HDR);
  if (crc != (uint32_t)get_be(r->head + 44, 4))
    return bad(r, RW_E_PROTO_BAD_FRAME, "rwp frame: %s", "hcrc mismatch");
  f->ops = r->head + RWP_HDR, f->raw = r->head;
  r->unknown = rwp_op_name(m->op) == NULL;
  if (r->unknown) return NULL; /* read whole and MAC-checked, then refused */
  const char *name = rwp_op_name(m->op);
  if (!op_allowed(r, m->op))
    return bad(r, RW_E_PROTO_BAD_FRAME, "rwp frame: %s not allowed in this state or direction", name);
  if (!flags_allowed(m->op, m->flags) || !seq_allowed(m->op, m->seq) ||
      !body_allowed(m->op, f->body_len))
    return bad(r, RW_E_PROTO_BAD_FRAME, "rwp frame: %s with flags, seq or body_len out of the rules", name);
  bool from_server = r->side == RWP_SIDE_CLIENT;
  if (from_server && (m->ack != 0 || (r->phase < 2 && m->client_id != 0 && m->op != RWP_WELCOME)))
    return bad(r, RW_E_PROTO_BAD_FRAME, "rwp frame: %s from the server with ack or client_id not 0", name);
  rw_error *err = rwp_decode_ops(m->op, f->ops, f->hdr_len - RWP_HDR, m);
  if (err) r->st = RD_DEAD, rwp_frame_clear(f);
  return err;
}

static bool mac_needed(const rwp_reader *r, uint8_t op) {
  if (r->side == RWP_SIDE_SERVER) return r->phase == 2;
  return r->phase == 2 || (r->phase == 1 && op != RWP_ERROR);
}

/* Before the body: the MAC context and the body's buffer. */
static rw_error *start_body(rwp_reader *r) {
  rwp_frame *f = &r->f;
  r->need_mac = mac_needed(r, f->msg.op);
  if (r->need_mac && !r->keyed)
    return bad(r, RW_E_INTERNAL, "rwp reader: %s", "a MAC is due but no key was set");
  rw_error *err = r->need_mac ? mac_start(r->mac, r->key, r->n, r->head, f->hdr_len) : NULL;
  if (err || !f->body_len || r->unknown) goto out;
  f->body = NULL;
  if (r->body_fn) err = r->body_fn(r->ud, f, &f->body);
  if (!err && !f->body) {
    f->body = malloc(f->body_len); /* <= max_frame, checked in step 1 */
    f->body_owned = true;
    if (!f->body) err = rw_err(RW_E_NOMEM, "rwp reader: no memory for a %u-byte body", f->body_len);
  }
out:
  if (err) r->st = RD_DEAD, rwp_frame_clear(f);
  return err;
}

/* The frame is complete: step 5, then hand over (or skip an unknown opcode). */
static rw_error *finish(rwp_reader *r, rwp_frame *out, bool *got) {
  rwp_frame *f = &r->f;
  if (r->need_mac) {
    uint8_t mac[RWP_MAC_LEN];
    rw_error *err = mac_finish(r->mac, mac);
    r->n++; /* counts whether or not it verifies */
    if (err) return r->st = RD_DEAD, rwp_frame_clear(f), err;
    if (CRYPTO_memcmp(mac, r->mac_rx, RWP_MAC_LEN) != 0)
      return bad(r, RW_E_PROTO_BAD_MAC, "rwp frame: %s", "the MAC did not verify");
  }
  r->st = RD_HEAD, r->have = 0;
  *out = *f;
  f->body = NULL, f->body_owned = false;
  if (r->unknown)
    return rw_err(RW_E_PROTO_UNKNOWN_OP, "rwp frame: opcode 0x%02x is not defined in version 1",
                  out->msg.op);
  uint8_t op = out->msg.op;
  if (op == RWP_HELLO || op == RWP_CHALLENGE || op == RWP_AUTH || op == RWP_WELCOME) r->phase++;
  *got = true;
  return NULL;
}

/* Moves through states that need no more bytes. */
static rw_error *advance(rwp_reader *r, rwp_frame *out, bool *got) {
  rw_error *err = NULL;
  if (r->st == RD_HEAD && r->have == RWP_HDR) {
    if ((err = check_fixed(r))) return err;
    r->st = RD_OPS;
  }
  if (r->st == RD_OPS && r->have == r->f.hdr_len) {
    if ((err = check_ops(r)) || (err = start_body(r))) return err;
    r->st = RD_BODY, r->have = 0;
  }
  if (r->st == RD_BODY && r->have == r->f.body_len) r->st = RD_MAC, r->have = 0;
  if (r->st == RD_MAC && (!r->need_mac || r->have == RWP_MAC_LEN)) return finish(r, out, got);
  return NULL;
}

static size_t take(rwp_reader *r, const uint8_t *p, size_t len) {
  size_t n = 0;
  switch (r->st) {
  case RD_HEAD: n = RWP_HDR - r->have; break;
  case RD_OPS: n = r->f.hdr_len - r->have; break;
  case RD_BODY: n = r->f.body_len - r->have; break;
  case RD_MAC: n = RWP_MAC_LEN - r->have; break;
  case RD_DEAD: return 0;
  }
  if (n > len) n = len;
  if (r->st == RD_HEAD || r->st == RD_OPS) memcpy(r->head + r->have, p, n);
  else if (r->st == RD_MAC) memcpy(r->mac_rx + r->have, p, n);
  else {
    if (r->f.body) memcpy(r->f.body + r->have, p, n);
    if (r->need_mac && !EVP_MAC_update(r->mac, p, n)) r->st = RD_DEAD;
  }
  r->have += n;
  return n;
}

rw_error *rwp_reader_feed(rwp_reader *r, const void *data, size_t len, size_t *used,
                          rwp_frame *out, bool *got) {
  const uint8_t *p = data;
  size_t off = 0;
  rw_error *err = NULL;
  *got = false;
  if (r->st == RD_DEAD) err = rw_err(RW_E_PROTO_BAD_FRAME, "rwp reader: closed after an error");
  while (!err && !*got && r->st != RD_DEAD) {
    if ((err = advance(r, out, got)) || *got) break;
    if (off == len) break;
    off += take(r, p + off, len - off);
    if (r->st == RD_DEAD) err = rw_err(RW_E_INTERNAL, "rwp reader: GMAC update failed in OpenSSL");
  }
  *used = off;
  return err;
}

size_t rwp_reader_body_room(rwp_reader *r, uint8_t **at) {
  *at = NULL;
  if (r->st != RD_BODY || !r->f.body || r->have >= r->f.body_len) return 0;
  *at = r->f.body + r->have;
  return r->f.body_len - r->have;
}

rw_error *rwp_reader_body_fed(rwp_reader *r, size_t n) {
  if (r->st != RD_BODY || !r->f.body || n > r->f.body_len - r->have) {
    r->st = RD_DEAD, rwp_frame_clear(&r->f);
    return rw_err(RW_E_INTERNAL, "rwp reader: %zu body bytes fed in place past the body's room", n);
  }
  if (r->need_mac && n && !EVP_MAC_update(r->mac, r->f.body + r->have, n)) {
    r->st = RD_DEAD, rwp_frame_clear(&r->f);
    return rw_err(RW_E_INTERNAL, "rwp reader: GMAC update failed in OpenSSL");
  }
  r->have += n;
  return NULL;
}
