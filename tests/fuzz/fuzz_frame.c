/* libFuzzer harness: the RWP/1 frame reader (csrc/proxy/frame.c) fed in
 * random slices, on both sides, before and after authentication.
 * Input: [mode][slice seed] then bytes. mode bit 0: the client's reader
 * (else the server's); bit 1: after the handshake (canned HELLO+AUTH, or
 * CHALLENGE, then the key); bit 2: "seal" the bytes as frames (fix each
 * hcrc and append the right MAC) so the fuzzer gets past both checks.
 * Each REPLY's op fields are also decoded as every request's reply.
 * Build and run: tests/fuzz/run.sh [seconds] */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "core/checksum.h"
#include "proxy/frame.h"

static const uint8_t key[32] = "fuzz key fuzz key fuzz key 1234";
static uint8_t srv_pre[2 * (RWP_HDR + RWP_MAX_OP)], cli_pre[RWP_HDR + RWP_MAX_OP];
static size_t srv_pre_len, cli_pre_len;

static size_t put(const rwp_msg *m, uint8_t *out, size_t cap) {
  static rwp_encoded e;
  rwp_writer w;
  rwp_writer_init(&w);
  rw_error *err = rwp_encode(&w, m, NULL, 0, &e);
  if (err) abort();
  return rwp_encoded_copy(&e, out, cap);
}

static void init_canned(void) {
  rwp_msg m = {.op = RWP_HELLO, .client_id = 42};
  m.u.hello = (rwp_hello){.min_version = 1, .max_version = 1, .max_frame = RWP_MIN_FRAME,
                          .max_inflight = 4, .key_id = rwp_cstr("k")};
  srv_pre_len = put(&m, srv_pre, sizeof srv_pre);
  m = (rwp_msg){.op = RWP_AUTH, .client_id = 42};
  srv_pre_len += put(&m, srv_pre + srv_pre_len, sizeof srv_pre - srv_pre_len);
  m = (rwp_msg){.op = RWP_CHALLENGE};
  m.u.challenge = (rwp_challenge){.version = 1, .max_frame = RWP_MIN_FRAME, .max_inflight = 4};
  cli_pre_len = put(&m, cli_pre, sizeof cli_pre);
}

static void be(uint8_t *p, uint64_t v, int n) {
  for (int i = n - 1; i >= 0; i--, v >>= 8) p[i] = (uint8_t)v;
}

/* Copies in to out frame by frame (lengths from each header, clamped to the
 * input), fixing hcrc and, when mac, appending the MAC with counter n. */
static size_t seal(const uint8_t *in, size_t len, uint8_t *out, bool mac) {
  size_t o = 0;
  uint64_t n = 0;
  while (len >= RWP_HDR) {
    size_t hl = (size_t)in[8] << 8 | in[9];
    if (hl < RWP_HDR) hl = RWP_HDR;
    if (hl > len) hl = len;
    size_t bl = (size_t)in[12] << 24 | (size_t)in[13] << 16 | (size_t)in[14] << 8 | in[15];
    if (bl > len - hl) bl = len - hl;
    memcpy(out + o, in, hl + bl);
    be(out + o + 44, rw_crc32c(rw_crc32c(0, out + o, 44), out + o + RWP_HDR, hl - RWP_HDR), 4);
    if (mac) {
      rw_error *err = rwp_frame_mac(key, n++, out + o, hl + bl, out + o + hl + bl);
      if (err) abort();
      o += RWP_MAC_LEN;
    }
    o += hl + bl, in += hl + bl, len -= hl + bl;
  }
  memcpy(out + o, in, len);
  return o + len;
}

static void look(const rwp_frame *f) {
  if (f->msg.op != RWP_REPLY) return;
  static const uint8_t reqs[] = {RWP_CREATE, RWP_WRITE_AT, RWP_STATUS, RWP_COMPLETE, RWP_ABORT};
  for (size_t i = 0; i < sizeof reqs; i++) {
    rwp_reply r;
    rw_error_unref(rwp_decode_reply(reqs[i], f->ops, f->hdr_len - RWP_HDR, &r));
  }
}

/* Feeds st in slices; returns false once the reader is dead. */
static bool feed(rwp_reader *r, const uint8_t *st, size_t len, uint32_t *rng) {
  size_t off = 0;
  while (off < len) {
    *rng = *rng * 1103515245u + 12345u;
    size_t want = 1 + (*rng >> 16) % ((*rng & 0x100) ? 7 : 3000);
    if (want > len - off) want = len - off;
    size_t used = 0;
    bool got = false;
    rwp_frame f;
    rw_error *err = rwp_reader_feed(r, st + off, want, &used, &f, &got);
    off += used;
    if (got) {
      look(&f);
      rwp_frame_clear(&f);
    }
    if (err) {
      bool go_on = strcmp(rw_error_code(err), RW_E_PROTO_UNKNOWN_OP) == 0;
      rw_error_unref(err);
      if (!go_on) return false;
    }
    if (!err && !got && used < want) abort(); /* a reader that stalls */
  }
  return true;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  static bool inited;
  if (!inited) init_canned(), inited = true;
  if (size < 2) return 0;
  int mode = data[0];
  uint32_t rng = data[1];
  data += 2, size -= 2;
  bool client = mode & 1, authed = mode & 2, sealed = mode & 4;
  rwp_reader *r;
  if (rwp_reader_new(client ? RWP_SIDE_CLIENT : RWP_SIDE_SERVER, NULL, NULL, &r)) abort();
  bool alive = true;
  if (authed || client) {
    alive = client ? feed(r, cli_pre, cli_pre_len, &rng) : feed(r, srv_pre, srv_pre_len, &rng);
    if (!alive) abort(); /* the canned handshake must pass */
    rwp_reader_set_key(r, key);
  }
  uint8_t *st = malloc(size + (size / RWP_HDR + 1) * 32);
  size_t len = sealed ? seal(data, size, st, authed || client) : (memcpy(st, data, size), size);
  if (alive) feed(r, st, len, &rng);
  free(st);
  rwp_reader_free(r);
  return 0;
}
