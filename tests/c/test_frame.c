/* RWP/1 frame codec and handshake crypto (csrc/proxy/frame.h, auth.h):
 * round trips of every opcode, the reader fed in every slicing, every bound
 * of docs/PROTOCOL.md section 3.2, MACs against replay/reorder/other keys,
 * the handshake, and known-answer tests for HMAC-SHA256 and HKDF-SHA256. */
#include <stdint.h>

#include "ctest.h"
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

int main(void) {
  rng_state = ct_seed();
  RUN(test_kat);
  RUN(test_ops_round_trip);
  RUN(test_ops_limits);
  return ct_finish("test_frame");
}
