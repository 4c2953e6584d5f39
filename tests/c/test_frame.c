/* RWP/1 frame codec and handshake crypto (csrc/proxy/frame.h, auth.h):
 * round trips of every opcode, the reader fed in every slicing, every bound
 * of docs/PROTOCOL.md section 3.2, MACs against replay/reorder/other keys,
 * the handshake, and known-answer tests for HMAC-SHA256, HKDF-SHA256 and the
 * frame MAC (GMAC). */
#include <stdint.h>

#include "ctest.h"
#include "core/checksum.h"
#include "proxy/frame.h"

static unsigned rng_state;
static uint32_t rnd(void) {
  rng_state = rng_state * 1103515245u + 12345u;
  return (rng_state >> 8) ^ (rng_state << 13);
}
static uint64_t rnd64(void) { return (uint64_t)rnd() << 32 | rnd(); }
static void rnd_bytes(void *p, size_t n) {
  for (size_t i = 0; i < n; i++) ((uint8_t *)p)[i] = (uint8_t)rnd();
}
/* A random printable string of 1..max bytes in buf (no terminator needed). */
static rwp_str rnd_str(char *buf, size_t max, bool nonempty) {
  size_t n = rnd() % (max + 1);
  if (nonempty && n == 0) n = 1;
  for (size_t i = 0; i < n; i++) buf[i] = (char)('a' + rnd() % 26);
  return (rwp_str){buf, (uint16_t)n};
}
static bool str_eq(rwp_str a, rwp_str b) {
  return a.len == b.len && (a.len == 0 || memcmp(a.p, b.p, a.len) == 0);
}
static bool is(rw_error *e, const char *code) {
  bool ok = e && strcmp(rw_error_code(e), code) == 0;
  if (!ok) fprintf(stderr, "  expected %s, got %s (%s)\n", code, e ? rw_error_code(e) : "ok",
                   e ? rw_error_message(e) : "");
  rw_error_unref(e);
  return ok;
}
static void hex(const char *s, uint8_t *out) {
  for (size_t i = 0; s[2 * i]; i++) sscanf(s + 2 * i, "%2hhx", &out[i]);
}

/* ---- known answers ---- */

static void test_kat(void) {
  uint8_t out[64], want[64];
  const void *parts[] = {"what do ya want ", "for nothing?"};
  size_t lens[] = {16, 12};
  CHECK(rwp_hmac("Jefe", 4, parts, lens, 2, out) == NULL); /* RFC 4231 case 2 */
  hex("5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843", want);
  CHECK(memcmp(out, want, 32) == 0);
  uint8_t ikm[22], salt[13], info[10], prk[32]; /* RFC 5869 case 1 */
  memset(ikm, 0x0b, sizeof ikm);
  for (int i = 0; i < 13; i++) salt[i] = (uint8_t)i;
  for (int i = 0; i < 10; i++) info[i] = (uint8_t)(0xf0 + i);
  CHECK(rwp_hkdf_extract(salt, 13, ikm, 22, prk) == NULL);
  hex("077709362c2e32df0ddc3f0dc47bba6390b6c73bb50f9c3122ec844ad7c2b3e5", want);
  CHECK(memcmp(prk, want, 32) == 0);
  CHECK(rwp_hkdf_expand(prk, info, 10, out, 42) == NULL);
  hex("3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf34007208d5b887185865", want);
  CHECK(memcmp(out, want, 42) == 0);
  CHECK(is(rwp_hkdf_expand(prk, info, 10, out, 0), RW_E_INVALID));
  /* The frame MAC is GMAC: AES-256-GCM, IV 0^32 || u64(n), no plaintext.
   * McGrew-Viega GCM test case 13 (key 0^256, IV 0^96, empty A and P). */
  uint8_t zkey[RWP_KEY_LEN] = {0}, tag[RWP_MAC_LEN], tag1[RWP_MAC_LEN], tag2[RWP_MAC_LEN];
  CHECK(rwp_frame_mac(zkey, 0, "", 0, tag) == NULL);
  hex("530f8afbc74536b9a963b4f1c4cb738b", want);
  CHECK(memcmp(tag, want, RWP_MAC_LEN) == 0);
  CHECK(rwp_frame_mac(zkey, 1, "", 0, tag1) == NULL); /* n is the IV's last 8 bytes */
  CHECK(memcmp(tag, tag1, RWP_MAC_LEN) != 0);
  CHECK(rwp_frame_mac(zkey, 0, "x", 1, tag2) == NULL); /* the frame is the additional data */
  CHECK(memcmp(tag, tag2, RWP_MAC_LEN) != 0);
}

/* ---- random messages of every opcode ---- */

static char sb[4][2100]; /* string storage for one random message */

static void rnd_msg(uint8_t op, rwp_msg *m) {
  memset(m, 0, sizeof *m);
  m->op = op;
  bool req = op >= RWP_CREATE && op <= RWP_ABORT;
  m->flags = req && rnd() % 2 ? RWP_FLAG_RETRY : 0;
  m->client_id = rnd64();
  m->seq = req || op == RWP_REPLY ? 1 + rnd64() % 1000000 : op == RWP_ERROR ? rnd() % 3 : 0;
  m->ack = rnd64();
  switch (op) {
  case RWP_HELLO:
    m->u.hello.min_version = m->u.hello.max_version = 1;
    rnd_bytes(m->u.hello.client_nonce, 32);
    m->u.hello.max_frame = RWP_MIN_FRAME + rnd() % 1000000;
    m->u.hello.max_inflight = (uint16_t)(1 + rnd() % 1000);
    m->u.hello.key_id = rnd_str(sb[0], RWP_MAX_KEY_ID, false);
    break;
  case RWP_CHALLENGE:
    m->u.challenge.version = 1;
    rnd_bytes(m->u.challenge.server_nonce, 32);
    m->u.challenge.max_frame = RWP_MIN_FRAME + rnd() % (RWP_MAX_FRAME - RWP_MIN_FRAME);
    m->u.challenge.max_inflight = (uint16_t)(1 + rnd() % 1000);
    m->u.challenge.ping_interval_ms = rnd();
    break;
  case RWP_AUTH: rnd_bytes(m->u.auth.proof, 32); break;
  case RWP_WELCOME: rnd_bytes(m->u.welcome.proof, 32), m->u.welcome.table_ttl_s = rnd(); break;
  case RWP_PING: case RWP_PONG: m->u.ping.nonce = rnd64(); break;
  case RWP_CREATE:
    m->u.create.bucket = rnd_str(sb[0], RWP_MAX_BUCKET, true);
    m->u.create.object = rnd_str(sb[1], RWP_MAX_OBJECT, true);
    m->u.create.flags2 = rnd() % 4;
    m->u.create.if_generation_match = rnd64(), m->u.create.if_metageneration_match = rnd64();
    break;
  case RWP_WRITE_AT:
    m->u.write_at.session = rnd_str(sb[0], RWP_MAX_SESSION, true), m->u.write_at.offset = rnd64();
    break;
  case RWP_STATUS: case RWP_ABORT: m->u.session_op.session = rnd_str(sb[0], RWP_MAX_SESSION, true); break;
  case RWP_COMPLETE:
    m->u.complete.session = rnd_str(sb[0], RWP_MAX_SESSION, true);
    m->u.complete.total = rnd64(), m->u.complete.sums = (uint8_t)(rnd() % 4);
    m->u.complete.crc32c = rnd(), rnd_bytes(m->u.complete.md5, 16);
    break;
  case RWP_REPLY: {
    static const uint8_t fors[] = {RWP_CREATE, RWP_WRITE_AT, RWP_STATUS, RWP_COMPLETE, RWP_ABORT};
    m->u.reply.for_op = fors[rnd() % 5];
    if (m->u.reply.for_op == RWP_CREATE) m->u.reply.session = rnd_str(sb[0], RWP_MAX_SESSION, true);
    if (m->u.reply.for_op == RWP_WRITE_AT || m->u.reply.for_op == RWP_STATUS) m->u.reply.persisted = rnd64();
    if (m->u.reply.for_op == RWP_STATUS) m->u.reply.finalized = (uint8_t)(rnd() % 2);
    break;
  }
  case RWP_ERROR:
    m->u.error.flags2 = rnd() % 4, m->u.error.persisted = rnd64(), m->u.error.retry_after_ms = rnd();
    m->u.error.code = rnd_str(sb[0], RWP_MAX_CODE, true);
    m->u.error.message = rnd_str(sb[1], RWP_MAX_MESSAGE, false);
    m->u.error.id = rnd_str(sb[2], RWP_MAX_ERROR_ID, false);
    break;
  default: break;
  }
}

static bool msg_eq(const rwp_msg *a, const rwp_msg *b) {
  if (a->op != b->op || a->flags != b->flags || a->client_id != b->client_id || a->seq != b->seq ||
      a->ack != b->ack)
    return false;
  const rwp_hello *h = &a->u.hello, *g = &b->u.hello;
  const rwp_create *c = &a->u.create, *d = &b->u.create;
  const rwp_complete *x = &a->u.complete, *y = &b->u.complete;
  const rwp_error_op *e = &a->u.error, *f = &b->u.error;
  switch (a->op) {
  case RWP_HELLO:
    return h->min_version == g->min_version && h->max_version == g->max_version &&
           !memcmp(h->client_nonce, g->client_nonce, 32) && h->max_frame == g->max_frame &&
           h->max_inflight == g->max_inflight && str_eq(h->key_id, g->key_id);
  case RWP_CHALLENGE:
    return a->u.challenge.version == b->u.challenge.version &&
           !memcmp(a->u.challenge.server_nonce, b->u.challenge.server_nonce, 32) &&
           a->u.challenge.max_frame == b->u.challenge.max_frame &&
           a->u.challenge.max_inflight == b->u.challenge.max_inflight &&
           a->u.challenge.ping_interval_ms == b->u.challenge.ping_interval_ms;
  case RWP_AUTH: return !memcmp(a->u.auth.proof, b->u.auth.proof, 32);
  case RWP_WELCOME:
    return !memcmp(a->u.welcome.proof, b->u.welcome.proof, 32) &&
           a->u.welcome.table_ttl_s == b->u.welcome.table_ttl_s;
  case RWP_PING: case RWP_PONG: return a->u.ping.nonce == b->u.ping.nonce;
  case RWP_GOODBYE: return true;
  case RWP_CREATE:
    return str_eq(c->bucket, d->bucket) && str_eq(c->object, d->object) && c->flags2 == d->flags2 &&
           c->if_generation_match == d->if_generation_match &&
           c->if_metageneration_match == d->if_metageneration_match;
  case RWP_WRITE_AT:
    return str_eq(a->u.write_at.session, b->u.write_at.session) && a->u.write_at.offset == b->u.write_at.offset;
  case RWP_STATUS: case RWP_ABORT: return str_eq(a->u.session_op.session, b->u.session_op.session);
  case RWP_COMPLETE:
    return str_eq(x->session, y->session) && x->total == y->total && x->sums == y->sums &&
           x->crc32c == y->crc32c && !memcmp(x->md5, y->md5, 16);
  case RWP_ERROR:
    return e->flags2 == f->flags2 && e->persisted == f->persisted &&
           e->retry_after_ms == f->retry_after_ms && str_eq(e->code, f->code) &&
           str_eq(e->message, f->message) && str_eq(e->id, f->id);
  default: return false;
  }
}

static bool reply_eq(const rwp_reply *a, const rwp_reply *b) {
  return a->for_op == b->for_op && str_eq(a->session, b->session) && a->persisted == b->persisted &&
         a->finalized == b->finalized;
}

static const uint8_t all_ops[] = {RWP_HELLO, RWP_CHALLENGE, RWP_AUTH, RWP_WELCOME, RWP_PING,
                                  RWP_PONG, RWP_GOODBYE, RWP_CREATE, RWP_WRITE_AT, RWP_STATUS,
                                  RWP_COMPLETE, RWP_ABORT, RWP_REPLY, RWP_ERROR};

/* encode_ops -> decode_ops gives the same fields, for every opcode. */
static void test_ops_round_trip(void) {
  uint8_t ops[RWP_MAX_OP];
  for (int round = 0; round < 200; round++)
    for (size_t i = 0; i < sizeof all_ops; i++) {
      rwp_msg m, back;
      rnd_msg(all_ops[i], &m);
      size_t len = 0;
      rw_error *err = rwp_encode_ops(&m, ops, &len);
      CHECK(err == NULL && len % 4 == 0);
      if (err) { rw_error_unref(err); continue; }
      if (m.op == RWP_REPLY) {
        rwp_reply r;
        CHECK(rwp_decode_reply(m.u.reply.for_op, ops, len, &r) == NULL);
        CHECK(reply_eq(&r, &m.u.reply));
        continue;
      }
      memset(&back, 0, sizeof back);
      memcpy(&back, &m, offsetof(rwp_msg, u)); /* header fields travel in the header */
      CHECK(rwp_decode_ops(m.op, ops, len, &back) == NULL);
      CHECK(msg_eq(&m, &back));
    }
}

/* Every limit refused by the encoder (rw.invalid_argument) and the decoder. */
static void test_ops_limits(void) {
  uint8_t ops[RWP_MAX_OP];
  size_t len;
  static char big[3000];
  memset(big, 'x', sizeof big);
  rwp_msg m;
  rnd_msg(RWP_HELLO, &m), m.u.hello.key_id = (rwp_str){big, 65};
  CHECK(is(rwp_encode_ops(&m, ops, &len), RW_E_INVALID));
  rnd_msg(RWP_HELLO, &m), m.u.hello.max_frame = RWP_MIN_FRAME - 1;
  CHECK(is(rwp_encode_ops(&m, ops, &len), RW_E_INVALID));
  rnd_msg(RWP_HELLO, &m), m.u.hello.max_inflight = 0;
  CHECK(is(rwp_encode_ops(&m, ops, &len), RW_E_INVALID));
  rnd_msg(RWP_CHALLENGE, &m), m.u.challenge.max_frame = RWP_MAX_FRAME + 1;
  CHECK(is(rwp_encode_ops(&m, ops, &len), RW_E_INVALID));
  rnd_msg(RWP_CREATE, &m), m.u.create.bucket = (rwp_str){big, 223};
  CHECK(is(rwp_encode_ops(&m, ops, &len), RW_E_INVALID));
  rnd_msg(RWP_CREATE, &m), m.u.create.object = (rwp_str){big, 1025};
  CHECK(is(rwp_encode_ops(&m, ops, &len), RW_E_INVALID));
  rnd_msg(RWP_CREATE, &m), m.u.create.flags2 = 4;
  CHECK(is(rwp_encode_ops(&m, ops, &len), RW_E_INVALID));
  rnd_msg(RWP_STATUS, &m), m.u.session_op.session = (rwp_str){big, 2049};
  CHECK(is(rwp_encode_ops(&m, ops, &len), RW_E_INVALID));
  rnd_msg(RWP_STATUS, &m), m.u.session_op.session = (rwp_str){big, 0};
  CHECK(is(rwp_encode_ops(&m, ops, &len), RW_E_INVALID));
  rnd_msg(RWP_COMPLETE, &m), m.u.complete.sums = 4;
  CHECK(is(rwp_encode_ops(&m, ops, &len), RW_E_INVALID));
  rnd_msg(RWP_ERROR, &m), m.u.error.code = (rwp_str){big, 65};
  CHECK(is(rwp_encode_ops(&m, ops, &len), RW_E_INVALID));
  rnd_msg(RWP_ERROR, &m), m.u.error.message = (rwp_str){big, 1025};
  CHECK(is(rwp_encode_ops(&m, ops, &len), RW_E_INVALID));
  rnd_msg(RWP_ERROR, &m), m.u.error.id = (rwp_str){big, 33};
  CHECK(is(rwp_encode_ops(&m, ops, &len), RW_E_INVALID));
  /* decoder: a str16 past the end, over its limit, non-zero padding, too much padding */
  uint8_t st[] = {0x00, 0x64, 'a', 'b', 'c', 'd', 'e', 'f'};
  CHECK(is(rwp_decode_ops(RWP_STATUS, st, sizeof st, &m), RW_E_PROTO_BAD_FRAME));
  static uint8_t lim[2052];
  lim[0] = 0x08, lim[1] = 0x01; /* 2049 */
  memset(lim + 2, 's', 2049);
  CHECK(is(rwp_decode_ops(RWP_STATUS, lim, sizeof lim, &m), RW_E_PROTO_BAD_FRAME));
  uint8_t pad[] = {0x00, 0x01, 's', 1};
  CHECK(is(rwp_decode_ops(RWP_STATUS, pad, sizeof pad, &m), RW_E_PROTO_BAD_FRAME));
  uint8_t pad4[] = {0x00, 0x02, 's', 's', 0, 0, 0, 0};
  CHECK(is(rwp_decode_ops(RWP_STATUS, pad4, sizeof pad4, &m), RW_E_PROTO_BAD_FRAME));
  pad4[5] = 0, pad4[0] = 0;
  CHECK(rwp_decode_ops(RWP_STATUS, pad4, 4, &m) == NULL && m.u.session_op.session.len == 2);
}

/* ---- connections: a client and a server side, handshaken ---- */

typedef struct conn {
  uint64_t client_id;
  rwp_writer cw, sw;     /* client writes c->s, server writes s->c */
  rwp_reader *sr, *cr;   /* server reads c->s, client reads s->c */
  uint8_t k_c2s[32], k_s2c[32];
  uint8_t hello[RWP_HDR + RWP_MAX_OP], auth[RWP_HDR + RWP_MAX_OP];
  size_t hello_len, auth_len;
  uint8_t body_buf[RWP_MIN_FRAME]; /* for the body callback test */
  int body_calls;
} conn;

static uint8_t secret_a[32], secret_b[40];

static rw_error *body_to_buf(void *ud, const rwp_frame *f, uint8_t **buf) {
  conn *c = ud;
  c->body_calls++;
  if (f->msg.op == RWP_WRITE_AT && f->body_len <= sizeof c->body_buf) *buf = c->body_buf;
  return NULL;
}

static void conn_init(conn *c) {
  memset(c, 0, sizeof *c);
  c->client_id = rnd64() | 1;
  rwp_writer_init(&c->cw), rwp_writer_init(&c->sw);
  CHECK(rwp_reader_new(RWP_SIDE_SERVER, body_to_buf, c, &c->sr) == NULL);
  CHECK(rwp_reader_new(RWP_SIDE_CLIENT, NULL, NULL, &c->cr) == NULL);
}
static void conn_free(conn *c) {
  rwp_reader_free(c->sr), rwp_reader_free(c->cr);
  rwp_writer_wipe(&c->cw), rwp_writer_wipe(&c->sw);
}

/* Feeds one whole encoded frame in one go and expects exactly it back. */
static rw_error *feed_one(rwp_reader *r, const uint8_t *buf, size_t len, rwp_frame *f) {
  size_t used = 0;
  bool got = false;
  rw_error *err = rwp_reader_feed(r, buf, len, &used, f, &got);
  if (!err && (!got || used != len)) {
    fprintf(stderr, "  feed_one: got=%d used=%zu of %zu\n", got, used, len);
    return rw_err(RW_E_INTERNAL, "test: not one whole frame");
  }
  return err;
}
static size_t enc(rwp_writer *w, const rwp_msg *m, const void *body, size_t blen, uint8_t *out, size_t cap) {
  static rwp_encoded e;
  rw_error *err = rwp_encode(w, m, body, blen, &e);
  CHECK(err == NULL);
  rw_error_unref(err);
  return err ? 0 : rwp_encoded_copy(&e, out, cap);
}

static uint8_t fb[2][RWP_MAX_FRAME / 64 + 8192]; /* scratch frames */

/* The handshake of section 4.4 between c's two sides. replay_auth: bytes fed
 * to the server instead of the client's AUTH. impostor: the server does not
 * check the proof. Returns 0 when both sides accept, else the side that
 * refused: 1 the server (proof), 2 the client (WELCOME's MAC or proof). */
static int handshake(conn *c, const void *cs, size_t cs_len, const void *ss, size_t ss_len,
                     const uint8_t *replay_auth, size_t replay_len, bool impostor) {
  rwp_msg m = {.op = RWP_HELLO, .client_id = c->client_id};
  m.u.hello = (rwp_hello){.min_version = 1, .max_version = 1, .max_frame = 1u << 20, .max_inflight = 8,
                          .key_id = rwp_cstr("k1")};
  CHECK(rwp_random(m.u.hello.client_nonce, 32) == NULL);
  uint8_t cnonce[32], snonce[32], th_c[32], th_s[32], proof[32], want[32], ks_c2s[32], ks_s2c[32];
  memcpy(cnonce, m.u.hello.client_nonce, 32);
  c->hello_len = enc(&c->cw, &m, NULL, 0, c->hello, sizeof c->hello);
  rwp_frame f;
  CHECK(feed_one(c->sr, c->hello, c->hello_len, &f) == NULL && f.msg.op == RWP_HELLO);
  uint8_t hello_rx[RWP_HDR + RWP_MAX_OP];
  size_t hello_rx_len = f.hdr_len;
  memcpy(hello_rx, f.raw, f.hdr_len);
  uint32_t max_frame = f.msg.u.hello.max_frame < (1u << 20) ? f.msg.u.hello.max_frame : 1u << 20;
  /* server: CHALLENGE */
  m = (rwp_msg){.op = RWP_CHALLENGE};
  m.u.challenge = (rwp_challenge){.version = 1, .max_frame = max_frame, .max_inflight = 8,
                                  .ping_interval_ms = 5000};
  CHECK(rwp_random(m.u.challenge.server_nonce, 32) == NULL);
  memcpy(snonce, m.u.challenge.server_nonce, 32);
  size_t chal_len = enc(&c->sw, &m, NULL, 0, fb[1], sizeof fb[1]);
  CHECK(rwp_transcript_hash(hello_rx, hello_rx_len, fb[1], chal_len, th_s) == NULL);
  CHECK(feed_one(c->cr, fb[1], chal_len, &f) == NULL && f.msg.op == RWP_CHALLENGE);
  CHECK(rwp_transcript_hash(c->hello, c->hello_len, f.raw, f.hdr_len, th_c) == NULL);
  CHECK(memcmp(th_c, th_s, 32) == 0);
  /* client: AUTH, then its keys */
  CHECK(rwp_client_proof(cs, cs_len, th_c, proof) == NULL);
  m = (rwp_msg){.op = RWP_AUTH, .client_id = c->client_id};
  memcpy(m.u.auth.proof, proof, 32);
  c->auth_len = enc(&c->cw, &m, NULL, 0, c->auth, sizeof c->auth);
  CHECK(rwp_derive_keys(cs, cs_len, cnonce, f.msg.u.challenge.server_nonce, c->client_id, c->k_c2s,
                        c->k_s2c) == NULL);
  rwp_writer_set_key(&c->cw, c->k_c2s), rwp_reader_set_key(c->cr, c->k_s2c);
  c->cw.max_frame = max_frame;
  CHECK(rwp_reader_set_max_frame(c->cr, max_frame) == NULL);
  /* server: check AUTH, keys, WELCOME */
  const uint8_t *ab = replay_auth ? replay_auth : c->auth;
  CHECK(feed_one(c->sr, ab, replay_auth ? replay_len : c->auth_len, &f) == NULL && f.msg.op == RWP_AUTH);
  CHECK(rwp_client_proof(ss, ss_len, th_s, want) == NULL);
  if (!impostor && !rwp_proof_equal(want, f.msg.u.auth.proof)) return 1;
  CHECK(rwp_derive_keys(ss, ss_len, cnonce, snonce, c->client_id, ks_c2s, ks_s2c) == NULL);
  rwp_reader_set_key(c->sr, ks_c2s), rwp_writer_set_key(&c->sw, ks_s2c);
  CHECK(rwp_reader_set_max_frame(c->sr, max_frame) == NULL);
  c->sw.max_frame = max_frame;
  m = (rwp_msg){.op = RWP_WELCOME, .client_id = c->client_id};
  CHECK(rwp_server_proof(ss, ss_len, th_s, m.u.welcome.proof) == NULL);
  m.u.welcome.table_ttl_s = 600;
  size_t wl = enc(&c->sw, &m, NULL, 0, fb[1], sizeof fb[1]);
  rwp_wipe(ks_c2s, 32), rwp_wipe(ks_s2c, 32);
  /* client: WELCOME's MAC, then the server's proof */
  rw_error *err = feed_one(c->cr, fb[1], wl, &f);
  if (err) return is(err, RW_E_PROTO_BAD_MAC) ? 2 : 3;
  CHECK(rwp_server_proof(cs, cs_len, th_c, want) == NULL);
  if (!rwp_proof_equal(want, f.msg.u.welcome.proof)) return 2;
  CHECK(rwp_reader_authed(c->cr) && rwp_reader_authed(c->sr));
  return 0;
}

static int shake(conn *c) { return handshake(c, secret_a, 32, secret_a, 32, NULL, 0, false); }

static void test_handshake(void) {
  conn c, d;
  conn_init(&c);
  CHECK_EQ_INT(shake(&c), 0);
  /* the keys work both ways */
  rwp_msg m = {.op = RWP_PING, .client_id = c.client_id, .u.ping.nonce = 7};
  rwp_frame f;
  size_t n = enc(&c.cw, &m, NULL, 0, fb[0], sizeof fb[0]);
  CHECK(feed_one(c.sr, fb[0], n, &f) == NULL && f.msg.u.ping.nonce == 7);
  m.op = RWP_PONG;
  n = enc(&c.sw, &m, NULL, 0, fb[0], sizeof fb[0]);
  CHECK(feed_one(c.cr, fb[0], n, &f) == NULL && f.msg.op == RWP_PONG);
  /* a replayed AUTH (same HELLO, old AUTH) on a new connection: new server nonce */
  conn_init(&d);
  d.client_id = c.client_id;
  CHECK_EQ_INT(handshake(&d, secret_a, 32, secret_a, 32, c.auth, c.auth_len, false), 1);
  conn_free(&d);
  conn_free(&c);
  /* wrong secret on the client: the server refuses the proof */
  conn_init(&c);
  CHECK_EQ_INT(handshake(&c, secret_b, sizeof secret_b, secret_a, 32, NULL, 0, false), 1);
  conn_free(&c);
  /* a server without the secret that accepts anything: WELCOME fails its MAC */
  conn_init(&c);
  CHECK_EQ_INT(handshake(&c, secret_a, 32, secret_b, sizeof secret_b, NULL, 0, true), 2);
  conn_free(&c);
  /* a short secret is refused */
  uint8_t th[32] = {0}, out[32];
  CHECK(is(rwp_client_proof(secret_a, 31, th, out), RW_E_INVALID));
}

/* ---- the reader in every slicing ---- */

#define NFRAMES 120
typedef struct sent {
  size_t off, len;    /* in the stream */
  uint8_t op;
  uint64_t seq;
  size_t hdr_len, body_len;
} sent;

/* Reads stream (the handshake's frames then NFRAMES more) with a fresh reader
 * of `side`, in slices: mode 0 all at once, 1 one byte at a time, 2 random.
 * Each frame must be exactly the bytes that were sent. */
static void read_stream(rwp_side side, const uint8_t *st, size_t len, const sent *fr, size_t nfr,
                        const uint8_t key[32], int mode) {
  rwp_reader *r;
  CHECK(rwp_reader_new(side, NULL, NULL, &r) == NULL);
  size_t off = 0, k = 0, bad = 0;
  while (off < len && k < nfr) {
    size_t want = mode == 0 ? len - off : mode == 1 ? 1 : 1 + rnd() % (rnd() % 4 ? 64 : 70000);
    if (want > len - off) want = len - off;
    size_t used = 0;
    bool got = false;
    rwp_frame f;
    rw_error *err = rwp_reader_feed(r, st + off, want, &used, &f, &got);
    if (err) {
      fprintf(stderr, "  mode %d frame %zu: %s\n", mode, k, rw_error_message(err));
      rw_error_unref(err);
      bad++;
      break;
    }
    off += used;
    if (!got) continue;
    const sent *e = &fr[k];
    bool same = f.msg.op == e->op && f.msg.seq == e->seq && f.hdr_len == e->hdr_len &&
                f.body_len == e->body_len && memcmp(f.raw, st + e->off, e->hdr_len) == 0 &&
                (e->body_len == 0 || memcmp(f.body, st + e->off + e->hdr_len, e->body_len) == 0);
    if (!same) bad++;
    rwp_frame_clear(&f);
    k++;
    /* after the handshake frame the other side's keys apply */
    if (k == 2 && side == RWP_SIDE_SERVER) rwp_reader_set_key(r, key);
    if (k == 1 && side == RWP_SIDE_CLIENT) rwp_reader_set_key(r, key);
    if (k == 2) CHECK(rwp_reader_set_max_frame(r, 1u << 20) == NULL);
  }
  CHECK_EQ_INT(bad, 0);
  CHECK_EQ_INT(k, nfr);
  CHECK_EQ_INT(off, len);
  CHECK(rwp_reader_idle(r));
  rwp_reader_free(r);
}

static const uint8_t c2s_ops[] = {RWP_PING, RWP_PONG, RWP_GOODBYE, RWP_CREATE, RWP_WRITE_AT,
                                  RWP_STATUS, RWP_COMPLETE, RWP_ABORT, RWP_ERROR};
static const uint8_t s2c_ops[] = {RWP_PING, RWP_PONG, RWP_GOODBYE, RWP_REPLY, RWP_ERROR};

/* Appends a frame encoded by w to the stream. */
static void append(uint8_t *st, size_t *len, size_t cap, sent *fr, size_t *nfr, rwp_writer *w,
                   const rwp_msg *m, const uint8_t *body, size_t blen) {
  static rwp_encoded e;
  rw_error *err = rwp_encode(w, m, body, blen, &e);
  CHECK(err == NULL);
  if (err) { rw_error_unref(err); return; }
  size_t n = rwp_encoded_copy(&e, st + *len, cap - *len);
  CHECK(n > 0);
  fr[(*nfr)++] = (sent){*len, n, m->op, m->seq, e.head_len, blen};
  *len += n;
}

static void stream_dir(rwp_side reader_side) {
  size_t cap = 24u << 20, len = 0, nfr = 0;
  uint8_t *st = malloc(cap), *body = malloc(1u << 20);
  sent *fr = calloc(NFRAMES + 2, sizeof *fr);
  rnd_bytes(body, 1u << 20);
  conn c;
  conn_init(&c);
  CHECK_EQ_INT(shake(&c), 0);
  bool srv = reader_side == RWP_SIDE_SERVER;
  /* the handshake frames as the reader saw them: re-encode with fresh unkeyed writers */
  rwp_writer w0;
  rwp_writer_init(&w0);
  if (srv) {
    memcpy(st, c.hello, c.hello_len), memcpy(st + c.hello_len, c.auth, c.auth_len);
    fr[0] = (sent){0, c.hello_len, RWP_HELLO, 0, c.hello_len, 0};
    fr[1] = (sent){c.hello_len, c.auth_len, RWP_AUTH, 0, c.auth_len, 0};
    len = c.hello_len + c.auth_len, nfr = 2;
  } else {
    rwp_msg m;
    rnd_msg(RWP_CHALLENGE, &m), m.client_id = 0, m.ack = 0;
    append(st, &len, cap, fr, &nfr, &w0, &m, NULL, 0);
    rwp_writer_set_key(&w0, c.k_s2c);
    rnd_msg(RWP_WELCOME, &m), m.ack = 0;
    append(st, &len, cap, fr, &nfr, &w0, &m, NULL, 0);
  }
  rwp_writer *w = srv ? &c.cw : &w0;
  w->max_frame = 1u << 20;
  for (int i = 0; i < NFRAMES; i++) {
    rwp_msg m;
    uint8_t op = srv ? c2s_ops[rnd() % sizeof c2s_ops] : s2c_ops[rnd() % sizeof s2c_ops];
    rnd_msg(op, &m);
    if (!srv) m.ack = 0;
    size_t blen = op == RWP_WRITE_AT ? 1 + rnd() % (rnd() % 8 ? 5000 : 1u << 20)
                  : op == RWP_CREATE ? rnd() % 3000 : op == RWP_REPLY ? rnd() % 200 : 0;
    append(st, &len, cap, fr, &nfr, w, &m, body + rnd() % 1000, blen > (1u << 20) - 1000 ? 1000 : blen);
  }
  fprintf(stderr, "  %s reads %zu frames, %zu bytes\n", srv ? "server" : "client", nfr, len);
  for (int mode = 0; mode < 3; mode++)
    read_stream(reader_side, st, len, fr, nfr, srv ? c.k_c2s : c.k_s2c, mode);
  rwp_writer_wipe(&w0);
  conn_free(&c);
  free(st), free(body), free(fr);
}

static void test_stream_slicing(void) {
  stream_dir(RWP_SIDE_SERVER);
  stream_dir(RWP_SIDE_CLIENT);
}

/* ---- frames out of the rules, built by hand ---- */

typedef struct rawf {
  const char *magic;  /* NULL: "RWPF" */
  uint8_t version;    /* 0: 1 */
  uint8_t op;
  uint16_t flags, reserved;
  int hdr_len;        /* 0: 48 + ops_len */
  int64_t body_len;   /* 0: blen */
  uint32_t reserved2;
  uint64_t client_id, seq, ack;
  const uint8_t *ops, *body;
  size_t ops_len, blen;
  const uint8_t *key; /* MAC under key with counter n */
  uint64_t n;
  bool bad_crc;
} rawf;

static void be(uint8_t *p, uint64_t v, int n) {
  for (int i = n - 1; i >= 0; i--, v >>= 8) p[i] = (uint8_t)v;
}

static size_t build(const rawf *x, uint8_t *out) {
  size_t hl = x->hdr_len ? (size_t)x->hdr_len : RWP_HDR + x->ops_len;
  memcpy(out, x->magic ? x->magic : "RWPF", 4);
  out[4] = x->version ? x->version : 1, out[5] = x->op;
  be(out + 6, x->flags, 2), be(out + 8, hl, 2), be(out + 10, x->reserved, 2);
  be(out + 12, x->body_len ? (uint64_t)x->body_len : x->blen, 4);
  be(out + 16, x->client_id, 8), be(out + 24, x->seq, 8), be(out + 32, x->ack, 8);
  be(out + 40, x->reserved2, 4);
  if (x->ops_len) memcpy(out + RWP_HDR, x->ops, x->ops_len);
  uint32_t crc = rw_crc32c(rw_crc32c(0, out, 44), out + RWP_HDR, x->ops_len);
  be(out + 44, x->bad_crc ? crc ^ 1 : crc, 4);
  size_t len = RWP_HDR + x->ops_len;
  if (x->blen) memcpy(out + len, x->body, x->blen);
  len += x->blen;
  if (x->key) {
    CHECK(rwp_frame_mac(x->key, x->n, out, len, out + len) == NULL);
    len += RWP_MAC_LEN;
  }
  return len;
}

static uint8_t sess_ops[] = {0x00, 0x02, 's', '1'}; /* STATUS/ABORT: session "s1" */

/* A fresh handshaken connection; x is fed to its server reader (MAC'd under
 * the client's key and next counter unless nomac). Returns the error. */
static rw_error *feed_server(rawf x, bool nomac, size_t *used_out) {
  conn c;
  conn_init(&c);
  CHECK_EQ_INT(shake(&c), 0);
  if (!nomac) x.key = c.k_c2s, x.n = c.cw.n;
  if (!x.client_id) x.client_id = c.client_id;
  size_t len = build(&x, fb[0]), used = 0;
  bool got = false;
  rwp_frame f;
  rw_error *err = rwp_reader_feed(c.sr, fb[0], len, &used, &f, &got);
  if (got) rwp_frame_clear(&f);
  if (used_out) *used_out = used;
  if (err && strcmp(rw_error_code(err), RW_E_PROTO_UNKNOWN_OP) != 0) {
    /* dead: even a good frame is refused now */
    rwp_msg m = {.op = RWP_PING, .client_id = c.client_id};
    size_t n = enc(&c.cw, &m, NULL, 0, fb[1], sizeof fb[1]);
    CHECK(is(feed_one(c.sr, fb[1], n, &f), RW_E_PROTO_BAD_FRAME));
  }
  conn_free(&c);
  return err;
}

static void test_bounds(void) {
  uint8_t body[16] = "0123456789abcdef";
  rawf ok = {.op = RWP_STATUS, .seq = 5, .ops = sess_ops, .ops_len = 4};
  CHECK(feed_server(ok, false, NULL) == NULL); /* the builder makes good frames */
  rawf x = ok;
  size_t used;
  x.hdr_len = 54; /* not a multiple of 4 */
  CHECK(is(feed_server(x, false, &used), RW_E_PROTO_BAD_FRAME));
  CHECK_EQ_INT(used, RWP_HDR); /* refused from the fixed header alone */
  x = ok, x.hdr_len = RWP_HDR + RWP_MAX_OP + 4;
  CHECK(is(feed_server(x, false, &used), RW_E_PROTO_BAD_FRAME));
  CHECK_EQ_INT(used, RWP_HDR);
  x = ok, x.hdr_len = 44;
  CHECK(is(feed_server(x, false, NULL), RW_E_PROTO_BAD_FRAME));
  x = ok, x.op = RWP_WRITE_AT, x.body_len = (1 << 20) + 1; /* over the negotiated max_frame */
  uint8_t wa[] = {0x00, 0x02, 's', '1', 0, 0, 0, 0, 0, 0, 0, 0};
  x.ops = wa, x.ops_len = sizeof wa;
  CHECK(is(feed_server(x, false, &used), RW_E_PROTO_BAD_FRAME));
  CHECK_EQ_INT(used, RWP_HDR);
  x = ok, x.ops = (const uint8_t *)"\x00\x64" "abcdef", x.ops_len = 8; /* str16 past the fields */
  CHECK(is(feed_server(x, false, NULL), RW_E_PROTO_BAD_FRAME));
  static uint8_t lim[2052] = {0x08, 0x01}; /* session of 2049 bytes */
  memset(lim + 2, 's', 2049);
  x = ok, x.ops = lim, x.ops_len = sizeof lim;
  CHECK(is(feed_server(x, false, NULL), RW_E_PROTO_BAD_FRAME));
  x = ok, x.magic = "RWPG";
  CHECK(is(feed_server(x, false, NULL), RW_E_PROTO_BAD_FRAME));
  x = ok, x.version = 2;
  CHECK(is(feed_server(x, false, NULL), RW_E_PROTO_BAD_FRAME));
  x = ok, x.reserved = 1;
  CHECK(is(feed_server(x, false, NULL), RW_E_PROTO_BAD_FRAME));
  x = ok, x.reserved2 = 0x80000000u;
  CHECK(is(feed_server(x, false, NULL), RW_E_PROTO_BAD_FRAME));
  x = ok, x.bad_crc = true;
  CHECK(is(feed_server(x, false, NULL), RW_E_PROTO_BAD_FRAME));
  x = ok, x.flags = 2; /* a flag STATUS does not define */
  CHECK(is(feed_server(x, false, NULL), RW_E_PROTO_BAD_FRAME));
  x = ok, x.flags = RWP_FLAG_RETRY;
  CHECK(feed_server(x, false, NULL) == NULL);
  x = ok, x.op = RWP_PING, x.seq = 0, x.flags = RWP_FLAG_RETRY, x.ops = wa + 4, x.ops_len = 8;
  CHECK(is(feed_server(x, false, NULL), RW_E_PROTO_BAD_FRAME));
  x = ok, x.op = RWP_PING, x.seq = 0, x.ops = wa + 4, x.ops_len = 8, x.body = body, x.blen = 4;
  CHECK(is(feed_server(x, false, NULL), RW_E_PROTO_BAD_FRAME)); /* a body on PING */
  x = ok, x.seq = 0; /* a request without a seq */
  CHECK(is(feed_server(x, false, NULL), RW_E_PROTO_BAD_FRAME));
  x = ok, x.op = RWP_REPLY; /* a server's opcode from the client */
  CHECK(is(feed_server(x, false, NULL), RW_E_PROTO_BAD_FRAME));
  x = ok, x.op = RWP_HELLO; /* a handshake frame after the handshake */
  CHECK(is(feed_server(x, false, NULL), RW_E_PROTO_BAD_FRAME));
  x = ok, x.op = RWP_WRITE_AT, x.ops = wa, x.ops_len = sizeof wa; /* WRITE_AT without bytes */
  CHECK(is(feed_server(x, false, NULL), RW_E_PROTO_BAD_FRAME));
  x = ok, x.ops = sess_ops, x.ops_len = 4, x.hdr_len = 0;
  x.body = body, x.blen = 16, x.op = RWP_WRITE_AT; /* WRITE_AT fields too short */
  CHECK(is(feed_server(x, false, NULL), RW_E_PROTO_BAD_FRAME));
  x = ok, x.op = RWP_WRITE_AT, x.ops = wa, x.ops_len = sizeof wa, x.body = body, x.blen = 16;
  CHECK(feed_server(x, false, NULL) == NULL);
  x.key = secret_a; /* a MAC under some other key */
  CHECK(is(feed_server(x, true, NULL), RW_E_PROTO_BAD_MAC));
  x.key = NULL; /* no MAC at all: the next frame's bytes are taken as the MAC */
  CHECK(feed_server(x, true, NULL) == NULL); /* (a partial frame: nothing yet) */
}

/* Frames a man in the middle replays, swaps or moves: each fails its MAC. */
static void test_mac(void) {
  conn c, d;
  conn_init(&c), conn_init(&d);
  CHECK_EQ_INT(shake(&c), 0);
  CHECK_EQ_INT(shake(&d), 0);
  uint8_t body[100];
  rnd_bytes(body, sizeof body);
  rwp_msg m = {.op = RWP_WRITE_AT, .client_id = c.client_id, .seq = 1};
  m.u.write_at.session = rwp_cstr("sess"), m.u.write_at.offset = 0;
  size_t n1 = enc(&c.cw, &m, body, 60, fb[0], sizeof fb[0]);
  m.seq = 2, m.u.write_at.offset = 60;
  size_t n2 = enc(&c.cw, &m, body + 60, 40, fb[1], sizeof fb[1]);
  rwp_frame f;
  /* the body lands in the caller's buffer */
  CHECK(feed_one(c.sr, fb[0], n1, &f) == NULL);
  CHECK(f.body == c.body_buf && !f.body_owned && memcmp(c.body_buf, body, 60) == 0);
  CHECK_EQ_INT(c.body_calls, 1);
  /* replayed: same bytes again */
  CHECK(is(feed_one(c.sr, fb[0], n1, &f), RW_E_PROTO_BAD_MAC));
  conn_free(&c);
  /* swapped: the second frame first */
  conn_init(&c);
  CHECK_EQ_INT(shake(&c), 0);
  m.seq = 1, m.client_id = c.client_id, m.u.write_at.offset = 0;
  n1 = enc(&c.cw, &m, body, 60, fb[0], sizeof fb[0]);
  m.seq = 2, m.u.write_at.offset = 60;
  n2 = enc(&c.cw, &m, body + 60, 40, fb[1], sizeof fb[1]);
  CHECK(is(feed_one(c.sr, fb[1], n2, &f), RW_E_PROTO_BAD_MAC));
  /* moved to another connection (same client id, other keys) */
  CHECK(is(feed_one(d.sr, fb[0], n1, &f), RW_E_PROTO_BAD_MAC));
  conn_free(&c), conn_free(&d);
  /* altered: one bit of the body (hcrc does not cover it, the MAC does) */
  conn_init(&c);
  CHECK_EQ_INT(shake(&c), 0);
  n1 = enc(&c.cw, &m, body, 60, fb[0], sizeof fb[0]);
  fb[0][n1 - 40] ^= 0x10;
  CHECK(is(feed_one(c.sr, fb[0], n1, &f), RW_E_PROTO_BAD_MAC));
  conn_free(&c);
}

/* An opcode of a later version: read whole, MAC checked, refused, and the
 * reader goes on with the next frame (whose counter follows it). */
static void test_unknown_op(void) {
  conn c;
  conn_init(&c);
  CHECK_EQ_INT(shake(&c), 0);
  uint8_t ops[8] = {1, 2, 3, 4, 5, 6, 7, 8}, body[300];
  rnd_bytes(body, sizeof body);
  rawf x = {.op = 0x30, .flags = 0x8000, .seq = 77, .client_id = c.client_id, .ops = ops, .ops_len = 8,
            .body = body, .blen = sizeof body, .key = c.k_c2s, .n = c.cw.n};
  size_t len = build(&x, fb[0]);
  c.cw.n++; /* a later-version writer counted it */
  rwp_msg m = {.op = RWP_STATUS, .client_id = c.client_id, .seq = 78};
  m.u.session_op.session = rwp_cstr("s");
  size_t n2 = enc(&c.cw, &m, NULL, 0, fb[0] + len, sizeof fb[0] - len);
  for (int round = 0; round < 2; round++) { /* whole, then 1 byte at a time */
    rwp_reader *r;
    CHECK(rwp_reader_new(RWP_SIDE_SERVER, NULL, NULL, &r) == NULL);
    rwp_frame f;
    CHECK(feed_one(r, c.hello, c.hello_len, &f) == NULL);
    CHECK(feed_one(r, c.auth, c.auth_len, &f) == NULL);
    rwp_reader_set_key(r, c.k_c2s);
    size_t off = 0, used;
    bool got = false;
    int unknown = 0, good = 0;
    while (off < len + n2) {
      rw_error *err = rwp_reader_feed(r, fb[0] + off, round ? 1 : len + n2 - off, &used, &f, &got);
      off += used;
      if (err && (unknown++ || !used)) {
        CHECK(!"a second error, or no progress");
        rw_error_unref(err);
        break;
      }
      if (err) {
        CHECK(f.msg.op == 0x30 && f.msg.seq == 77 && off == len);
        CHECK(is(err, RW_E_PROTO_UNKNOWN_OP));
      }
      if (got) {
        good++;
        CHECK(f.msg.op == RWP_STATUS && f.msg.seq == 78);
      }
    }
    CHECK(unknown == 1 && good == 1 && rwp_reader_idle(r));
    rwp_reader_free(r);
  }
  /* its MAC is still checked */
  x.n = c.cw.n + 5;
  len = build(&x, fb[0]);
  rwp_frame f;
  CHECK(is(feed_one(c.sr, fb[0], len, &f), RW_E_PROTO_BAD_MAC));
  conn_free(&c);
}

/* Before AUTH: only the next handshake frame, no body, and the version. */
static void test_before_auth(void) {
  rwp_reader *r;
  uint8_t hello[48] = {0};
  hello[0] = 1, hello[1] = 1, hello[37] = 1, hello[41] = 1; /* versions, max_frame 64 KiB, inflight 1 */
  rawf ok = {.op = RWP_HELLO, .client_id = 9, .ops = hello, .ops_len = 44};
  rawf cases[] = {ok, ok, ok, ok, ok};
  cases[1].version = 2;
  cases[2].op = RWP_AUTH;
  cases[3].op = RWP_STATUS, cases[3].seq = 1, cases[3].ops = sess_ops, cases[3].ops_len = 4;
  uint8_t b = 0;
  cases[4].body = &b, cases[4].blen = 1;
  const char *want[] = {NULL, RW_E_PROTO_VERSION, RW_E_PROTO_BAD_FRAME, RW_E_PROTO_BAD_FRAME,
                        RW_E_PROTO_BAD_FRAME};
  for (int i = 0; i < 5; i++) {
    CHECK(rwp_reader_new(RWP_SIDE_SERVER, NULL, NULL, &r) == NULL);
    size_t len = build(&cases[i], fb[0]);
    rwp_frame f;
    rw_error *err = feed_one(r, fb[0], len, &f);
    if (want[i]) CHECK(is(err, want[i]));
    else CHECK(err == NULL && f.msg.op == RWP_HELLO && !rwp_reader_authed(r));
    rwp_reader_free(r);
  }
  /* a body over 64 KiB before negotiation */
  CHECK(rwp_reader_new(RWP_SIDE_SERVER, NULL, NULL, &r) == NULL);
  rawf big = ok;
  big.body_len = RWP_MIN_FRAME + 1;
  size_t used = 0;
  bool got;
  rwp_frame f;
  build(&big, fb[0]);
  CHECK(is(rwp_reader_feed(r, fb[0], RWP_HDR, &used, &f, &got), RW_E_PROTO_BAD_FRAME));
  rwp_reader_free(r);
  /* a truncated frame is no frame */
  CHECK(rwp_reader_new(RWP_SIDE_SERVER, NULL, NULL, &r) == NULL);
  size_t len = build(&ok, fb[0]);
  CHECK(rwp_reader_feed(r, fb[0], len - 1, &used, &f, &got) == NULL && !got && used == len - 1);
  CHECK(!rwp_reader_idle(r));
  CHECK(rwp_reader_feed(r, fb[0] + len - 1, 1, &used, &f, &got) == NULL && got);
  /* the client's reader: a CHALLENGE must carry client_id 0 and ack 0 */
  rwp_reader_free(r);
  conn c;
  conn_init(&c);
  rwp_msg m;
  rnd_msg(RWP_CHALLENGE, &m), m.client_id = 0, m.ack = 3;
  len = enc(&c.sw, &m, NULL, 0, fb[0], sizeof fb[0]);
  CHECK(is(feed_one(c.cr, fb[0], len, &f), RW_E_PROTO_BAD_FRAME));
  conn_free(&c);
}

/* Every proto.* code the codec makes is in the registry, retryable exactly
 * where PROTOCOL.md 6.1 says so. */
static void test_codes_registered(void) {
  static const struct {
    const char *code;
    bool retryable;
  } codes[] = {{RW_E_PROTO_BAD_FRAME, false},   {RW_E_PROTO_BAD_MAC, false},  {RW_E_PROTO_UNKNOWN_OP, false},
               {RW_E_PROTO_VERSION, false},     {RW_E_PROTO_AUTH_FAILED, false},
               {RW_E_PROTO_AUTH_TIMEOUT, false}, {RW_E_PROTO_TOO_MANY, false}, {RW_E_PROTO_EXPIRED, false},
               {RW_E_PROTO_RATE_LIMITED, true}, {RW_E_PROTO_BUSY, true},      {RW_E_PROTO_SHUTDOWN, true}};
  for (size_t i = 0; i < sizeof codes / sizeof codes[0]; i++) {
    const rw_code_info *ci = rw_code_lookup(codes[i].code);
    CHECK(ci != NULL);
    if (ci) CHECK(ci->retryable == codes[i].retryable && ci->hint && *ci->hint);
  }
}

int main(void) {
  rng_state = ct_seed();
  rnd_bytes(secret_a, sizeof secret_a), rnd_bytes(secret_b, sizeof secret_b);
  RUN(test_codes_registered);
  RUN(test_kat);
  RUN(test_ops_round_trip);
  RUN(test_ops_limits);
  RUN(test_handshake);
  RUN(test_stream_slicing);
  RUN(test_bounds);
  RUN(test_mac);
  RUN(test_unknown_op);
  RUN(test_before_auth);
  return ct_finish("test_frame");
}
