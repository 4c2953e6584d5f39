/* The at-most-once reply table (csrc/proxy/amo.h, PROTOCOL.md section 7):
 * a duplicate while pending runs once and gets the reply, a duplicate after
 * done gets the same reply, acks keep the table bounded over 10,000
 * requests, expiry and seq <= low give EXPIRED, never a second run. */
#include <stdint.h>

#include "ctest.h"
#include "proxy/amo.h"
#include "proxy/frame.h"

static unsigned rng;
static uint32_t rnd(void) {
  rng = rng * 1103515245u + 12345u;
  return rng >> 8;
}

static rw_amo *mk(double ttl) {
  rw_error *e = NULL;
  rw_amo_config cfg = {.ttl = ttl, .max_entries = 64, .max_clients = 1000};
  rw_amo *t = rw_amo_new(&cfg, &e);
  CHECK(t && !e);
  return t;
}

static rw_amo_verdict begin(rw_amo *t, uint64_t cid, uint64_t seq, uint64_t w, double now,
                            const void **r, size_t *len) {
  rw_amo_verdict v = (rw_amo_verdict)-1;
  rw_error *e = rw_amo_begin(t, cid, seq, w, now, &v, r, len);
  CHECK(e == NULL);
  rw_error_unref(e);
  return v;
}

static void test_pending_then_done(void) {
  rw_amo *t = mk(60);
  const void *r = NULL;
  size_t len = 0, nw = 0;
  uint64_t *w = NULL;
  int runs = 0;
  if (begin(t, 7, 1, 100, 0, &r, &len) == RW_AMO_RUN) runs++;
  CHECK_EQ_INT(begin(t, 7, 1, 101, 0.1, &r, &len), RW_AMO_WAIT); /* another connection */
  CHECK_EQ_INT(begin(t, 7, 1, 102, 0.2, &r, &len), RW_AMO_WAIT);
  CHECK(rw_amo_done(t, 7, 1, "reply-1", 7, &w, &nw) == NULL);
  CHECK_EQ_INT(nw, 2);
  CHECK(nw == 2 && w[0] == 101 && w[1] == 102);
  free(w);
  CHECK_EQ_INT(begin(t, 7, 1, 103, 0.3, &r, &len), RW_AMO_REPLAY);
  CHECK(len == 7 && memcmp(r, "reply-1", 7) == 0);
  CHECK_EQ_INT(runs, 1);
  /* another client's seq 1 is another request */
  CHECK_EQ_INT(begin(t, 8, 1, 100, 0.3, &r, &len), RW_AMO_RUN);
  /* a cancelled request (never ran) runs on retry; its waiters are handed back */
  CHECK_EQ_INT(begin(t, 8, 1, 104, 0.3, &r, &len), RW_AMO_WAIT);
  rw_amo_cancel(t, 8, 1, &w, &nw);
  CHECK(nw == 1 && w[0] == 104);
  free(w);
  CHECK_EQ_INT(begin(t, 8, 1, 100, 0.4, &r, &len), RW_AMO_RUN);
  /* a waiter that went away is not handed back */
  CHECK_EQ_INT(begin(t, 8, 1, 105, 0.4, &r, &len), RW_AMO_WAIT);
  rw_amo_forget_waiter(t, 105);
  CHECK(rw_amo_done(t, 8, 1, "x", 1, &w, &nw) == NULL);
  CHECK(nw == 0 && w == NULL);
  free(w);
  rw_amo_free(t);
}

/* 10,000 requests from 3 clients, each with up to 16 in flight answered in
 * random order, acked as the client would: the table never holds more than
 * the unacked window, and every request ran exactly once. */
static void test_bounded(void) {
  rw_amo *t = mk(60);
  enum { CLIENTS = 3, WINDOW = 16, TOTAL = 10000 };
  uint64_t next[CLIENTS], acked[CLIENTS];
  static uint8_t answered[CLIENTS][TOTAL + WINDOW + 2];
  memset(answered, 0, sizeof answered);
  for (int c = 0; c < CLIENTS; c++) next[c] = 1, acked[c] = 0;
  size_t peak = 0;
  int runs = 0, dups = 0;
  for (int i = 0; runs < TOTAL && i < 50 * TOTAL; i++) {
    int c = (int)(rnd() % CLIENTS);
    uint64_t cid = 1000 + (uint64_t)c;
    if (next[c] - acked[c] > WINDOW) goto answer;
    const void *r;
    size_t len;
    if (begin(t, cid, next[c], (uint64_t)c, i, &r, &len) == RW_AMO_RUN) runs++;
    if (rnd() % 4 == 0 && begin(t, cid, next[c], 99, i, &r, &len) == RW_AMO_WAIT) dups++;
    next[c]++;
  answer:
    /* answer a random unanswered one, then ack the contiguous prefix */
    for (uint64_t s = acked[c] + 1; s < next[c]; s++) {
      if (answered[c][s] || rnd() % 3) continue;
      uint64_t *w;
      size_t nw;
      char reply[16];
      int n = snprintf(reply, sizeof reply, "r%llu", (unsigned long long)s);
      CHECK(rw_amo_done(t, cid, s, reply, (size_t)n, &w, &nw) == NULL);
      free(w);
      answered[c][s] = 1;
      break;
    }
    while (acked[c] + 1 < next[c] && answered[c][acked[c] + 1]) acked[c]++;
    rw_amo_ack(t, cid, acked[c], i);
    if (rw_amo_entries(t) > peak) peak = rw_amo_entries(t);
  }
  fprintf(stderr, "  %d runs, %d duplicates waited, peak entries %zu\n", runs, dups, peak);
  CHECK_EQ_INT(runs, TOTAL);
  CHECK(peak <= CLIENTS * (WINDOW + 1));
  CHECK(rw_amo_clients(t) == CLIENTS);
  rw_amo_free(t);
}

static void test_expired(void) {
  rw_amo *t = mk(10);
  const void *r;
  size_t len, nw;
  uint64_t *w;
  for (uint64_t s = 1; s <= 5; s++) {
    CHECK_EQ_INT(begin(t, 9, s, 1, 0, &r, &len), RW_AMO_RUN);
    CHECK(rw_amo_done(t, 9, s, "ok", 2, &w, &nw) == NULL);
    free(w);
  }
  rw_amo_ack(t, 9, 3, 1);
  CHECK_EQ_INT(rw_amo_low(t, 9), 3);
  CHECK_EQ_INT(begin(t, 9, 2, 1, 2, &r, &len), RW_AMO_EXPIRED); /* acked: gone */
  CHECK_EQ_INT(begin(t, 9, 4, 1, 2, &r, &len), RW_AMO_REPLAY);  /* not acked: kept */
  /* silence past ttl: the replies go, none of those requests runs again */
  CHECK_EQ_INT(begin(t, 9, 6, 1, 3, &r, &len), RW_AMO_RUN); /* pending over the expiry */
  rw_amo_expire(t, 14);
  CHECK_EQ_INT(rw_amo_entries(t), 1); /* only the pending one */
  CHECK_EQ_INT(begin(t, 9, 4, 1, 14, &r, &len), RW_AMO_EXPIRED);
  CHECK_EQ_INT(begin(t, 9, 5, 1, 14, &r, &len), RW_AMO_EXPIRED);
  CHECK_EQ_INT(begin(t, 9, 6, 2, 14, &r, &len), RW_AMO_WAIT);
  CHECK(rw_amo_done(t, 9, 6, "six", 3, &w, &nw) == NULL);
  CHECK(nw == 1);
  free(w);
  CHECK_EQ_INT(begin(t, 9, 7, 1, 15, &r, &len), RW_AMO_RUN); /* a new request runs */
  CHECK(rw_amo_done(t, 9, 7, "seven", 5, &w, &nw) == NULL);
  free(w);
  /* 4 x ttl of silence: the record goes too */
  rw_amo_expire(t, 15 + 10);
  rw_amo_expire(t, 15 + 40);
  CHECK_EQ_INT(rw_amo_clients(t), 0);
  CHECK_EQ_INT(rw_amo_entries(t), 0);
  rw_amo_free(t);
}

static void test_bounds(void) {
  rw_error *e = NULL;
  rw_amo_config cfg = {.ttl = 10, .max_entries = 4, .max_clients = 2};
  rw_amo *t = rw_amo_new(&cfg, &e);
  CHECK(t != NULL);
  rw_amo_verdict v;
  const void *r;
  size_t len;
  for (uint64_t s = 1; s <= 4; s++) CHECK(rw_amo_begin(t, 1, s, 1, 0, &v, &r, &len) == NULL);
  e = rw_amo_begin(t, 1, 5, 1, 0, &v, &r, &len);
  CHECK(e && strcmp(rw_error_code(e), RW_E_PROTO_BUSY) == 0);
  rw_error_unref(e);
  CHECK(rw_amo_begin(t, 2, 1, 1, 0, &v, &r, &len) == NULL);
  e = rw_amo_begin(t, 3, 1, 1, 0, &v, &r, &len);
  CHECK(e && strcmp(rw_error_code(e), RW_E_PROTO_BUSY) == 0);
  rw_error_unref(e);
  rw_amo_free(t);
  cfg.ttl = 0;
  CHECK(rw_amo_new(&cfg, &e) == NULL && e && strcmp(rw_error_code(e), RW_E_INVALID) == 0);
  rw_error_unref(e);
}

int main(void) {
  setenv("RW_LOG_LEVEL", "error", 0);
  rng = ct_seed();
  RUN(test_pending_then_done);
  RUN(test_bounded);
  RUN(test_expired);
  RUN(test_bounds);
  return ct_finish("test_proxy_amo");
}
