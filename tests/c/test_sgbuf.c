/* sgbuf: edge cases and a randomized comparison against a flat array. */
#include <stdint.h>

#include "core/sgbuf.h"
#include "ctest.h"

static unsigned rng_state;
static unsigned rnd(void) {
  rng_state = rng_state * 1103515245u + 12345u;
  return (rng_state >> 8) ^ (rng_state << 13);
}

/* Release bookkeeping: each insert gets a token; release must run once. */
typedef struct token {
  int released;
  uint64_t end; /* end of the inserted range */
} token;
static void on_release(void *ud) { ((token *)ud)->released++; }

static void fill_random(unsigned char *p, size_t n) {
  for (size_t i = 0; i < n; i++) p[i] = (unsigned char)(rnd() >> 5);
}

static void test_basic(void) {
  unsigned char data[100];
  fill_random(data, sizeof data);
  rw_sgbuf *b = rw_sgbuf_new(10);
  token t1 = {0}, t2 = {0}, t3 = {0};
  CHECK(rw_sgbuf_insert(b, 10, data + 10, 20, on_release, &t1) == NULL);
  CHECK(rw_sgbuf_insert(b, 40, data + 40, 10, on_release, &t2) == NULL);
  CHECK_EQ_INT(rw_sgbuf_contiguous_end(b), 30);
  CHECK_EQ_INT(rw_sgbuf_end(b), 50);
  CHECK_EQ_INT(rw_sgbuf_bytes(b), 30);
  uint64_t go, gl;
  CHECK(rw_sgbuf_first_gap(b, 50, &go, &gl));
  CHECK_EQ_INT(go, 30);
  CHECK_EQ_INT(gl, 10);
  CHECK(rw_sgbuf_first_gap(b, 35, &go, &gl));
  CHECK_EQ_INT(gl, 5);
  CHECK(!rw_sgbuf_first_gap(b, 30, &go, &gl));
  /* Fill the gap with an insert that overlaps both neighbours identically. */
  CHECK(rw_sgbuf_insert(b, 25, data + 25, 20, on_release, &t3) == NULL);
  CHECK_EQ_INT(rw_sgbuf_contiguous_end(b), 50);
  CHECK_EQ_INT(rw_sgbuf_segments(b), 3);
  CHECK_EQ_INT(rw_sgbuf_bytes(b), 40);
  struct iovec iov[4];
  CHECK_EQ_INT(rw_sgbuf_view_count(b, 12, 36), 3);
  CHECK_EQ_INT(rw_sgbuf_view(b, 12, 36, iov, 2), -1);
  CHECK_EQ_INT(rw_sgbuf_view(b, 12, 36, iov, 4), 3);
  CHECK(iov[0].iov_base == data + 12 && iov[0].iov_len == 18);
  CHECK(iov[1].iov_base == data + 30 && iov[1].iov_len == 10);
  CHECK(iov[2].iov_base == data + 40 && iov[2].iov_len == 8);
  CHECK_EQ_INT(rw_sgbuf_view(b, 5, 10, iov, 4), -1);  /* below base */
  CHECK_EQ_INT(rw_sgbuf_view(b, 45, 10, iov, 4), -1); /* past end */
  rw_sgbuf_release_upto(b, 35);
  CHECK_EQ_INT(t1.released, 1);
  CHECK_EQ_INT(t3.released, 0);
  CHECK_EQ_INT(rw_sgbuf_base(b), 35);
  CHECK_EQ_INT(rw_sgbuf_bytes(b), 15);
  rw_sgbuf_release_upto(b, 1000); /* clamped to 50 */
  CHECK_EQ_INT(rw_sgbuf_base(b), 50);
  CHECK_EQ_INT(t3.released, 1);
  CHECK_EQ_INT(t2.released, 1);
  CHECK_EQ_INT(rw_sgbuf_segments(b), 0);
  rw_sgbuf_free(b);
}

static void test_overlap_error(void) {
  unsigned char a[64], c[64];
  fill_random(a, sizeof a);
  memcpy(c, a, sizeof c);
  c[37] ^= 0x5a;
  rw_sgbuf *b = rw_sgbuf_new(0);
  token t1 = {0}, t2 = {0}, t3 = {0};
  CHECK(rw_sgbuf_insert(b, 0, a, 40, on_release, &t1) == NULL);
  rw_error *e = rw_sgbuf_insert(b, 20, c + 20, 40, on_release, &t2);
  CHECK(e != NULL);
  CHECK(rw_error_is(e, RW_E_OVERLAP));
  CHECK(e && strstr(rw_error_message(e), "37") != NULL);
  rw_error_unref(e);
  CHECK_EQ_INT(t2.released, 0); /* caller keeps ownership on error */
  CHECK_EQ_INT(rw_sgbuf_end(b), 40);
  /* Wholly contained identical insert: released at once. */
  CHECK(rw_sgbuf_insert(b, 5, a + 5, 10, on_release, &t3) == NULL);
  CHECK_EQ_INT(t3.released, 1);
  /* Below the base: skipped, released at once. */
  rw_sgbuf_release_upto(b, 30);
  token t4 = {0};
  CHECK(rw_sgbuf_insert(b, 0, c, 20, on_release, &t4) == NULL);
  CHECK_EQ_INT(t4.released, 1);
  /* Straddling the base with different bytes below it: not compared. */
  token t5 = {0};
  unsigned char d[64];
  memcpy(d, a, sizeof d);
  d[3] ^= 1;
  CHECK(rw_sgbuf_insert(b, 0, d, 50, on_release, &t5) == NULL);
  CHECK_EQ_INT(rw_sgbuf_contiguous_end(b), 50);
  CHECK_EQ_INT(t5.released, 0);
  rw_sgbuf_free(b);
  CHECK_EQ_INT(t1.released, 1);
  CHECK_EQ_INT(t5.released, 1);
  rw_sgbuf *o = rw_sgbuf_new(0);
  rw_error *ov = rw_sgbuf_insert(o, UINT64_MAX - 2, a, 10, NULL, NULL);
  CHECK(ov != NULL);
  rw_error_unref(ov);
  rw_sgbuf_free(o);
}

/* Random inserts in random order, random releases, compared to a flat copy. */
static void test_random_against_flat(void) {
  enum { N = 1 << 16, MAXT = 4096 };
  unsigned char *truth = malloc(N), *have = calloc(1, N), *buf = malloc(N);
  static token toks[MAXT];
  memset(toks, 0, sizeof toks);
  fill_random(truth, N);
  rw_sgbuf *b = rw_sgbuf_new(0);
  int nt = 0;
  uint64_t released_to = 0;
  for (int round = 0; round < 3000 && nt < MAXT; round++) {
    uint64_t win = rnd() % 8 == 0 ? N : released_to + 8192;
    if (win > N) win = N;
    uint64_t off = released_to / 2 + rnd() % (win - released_to / 2);
    size_t len = 1 + rnd() % 700;
    if (off + len > N) len = N - off;
    bool corrupt = rnd() % 16 == 0;
    unsigned char *src = truth + off;
    if (corrupt) { /* a private copy with one byte changed */
      src = buf;
      memcpy(buf, truth + off, len);
      buf[rnd() % len] ^= 0x80;
    }
    bool diff_held = false;
    for (size_t k = 0; k < len; k++) {
      if (off + k < released_to || !have[off + k]) continue;
      if (src[k] != truth[off + k]) diff_held = true;
    }
    if (corrupt && !diff_held) continue; /* would be accepted: not part of truth */
    token *t = &toks[nt];
    t->end = off + len;
    rw_error *e = rw_sgbuf_insert(b, off, src, len, on_release, t);
    if (diff_held) {
      CHECK(e != NULL && rw_error_is(e, RW_E_OVERLAP));
      rw_error_unref(e);
      continue;
    }
    CHECK(e == NULL);
    nt++;
    for (size_t k = 0; k < len; k++)
      if (off + k >= released_to) have[off + k] = 1;
    /* Compare metadata with the flat view. */
    uint64_t ce = released_to;
    while (ce < N && have[ce]) ce++;
    CHECK_EQ_INT(rw_sgbuf_contiguous_end(b), ce);
    uint64_t bytes = 0, end = released_to;
    for (uint64_t k = released_to; k < N; k++)
      if (have[k]) bytes++, end = k + 1;
    CHECK_EQ_INT(rw_sgbuf_bytes(b), bytes);
    CHECK_EQ_INT(rw_sgbuf_end(b), end);
    uint64_t go, gl;
    if (rw_sgbuf_first_gap(b, end, &go, &gl)) {
      CHECK_EQ_INT(go, ce);
      uint64_t ge = go;
      while (ge < end && !have[ge]) ge++;
      CHECK_EQ_INT(gl, ge - go);
    } else {
      CHECK_EQ_INT(ce, end);
    }
    /* A random held range must read back exactly, by copy and by view. */
    if (ce > released_to) {
      uint64_t a = released_to + rnd() % (ce - released_to);
      size_t l = 1 + rnd() % (size_t)(ce - a);
      CHECK(rw_sgbuf_copy(b, a, buf, l));
      CHECK(memcmp(buf, truth + a, l) == 0);
      int cnt = rw_sgbuf_view_count(b, a, l);
      CHECK(cnt > 0);
      struct iovec *iov = malloc(sizeof *iov * (size_t)cnt);
      CHECK_EQ_INT(rw_sgbuf_view(b, a, l, iov, cnt), cnt);
      size_t at = 0;
      bool same = true;
      for (int k = 0; k < cnt; k++) {
        same = same && memcmp(iov[k].iov_base, truth + a + at, iov[k].iov_len) == 0;
        at += iov[k].iov_len;
      }
      CHECK(same && at == l);
      free(iov);
    }
    if (ce < end) CHECK(!rw_sgbuf_copy(b, ce, buf, (size_t)(end - ce)));
    /* Sometimes release part of the contiguous prefix. */
    if (rnd() % 5 == 0 && ce > released_to) {
      uint64_t upto = released_to + rnd() % (ce - released_to + 1);
      rw_sgbuf_release_upto(b, upto);
      released_to = upto;
      CHECK_EQ_INT(rw_sgbuf_base(b), upto);
    }
  }
  rw_sgbuf_free(b);
  int bad = 0;
  for (int k = 0; k < nt; k++)
    if (toks[k].released != 1) bad++;
  CHECK_EQ_INT(bad, 0);
  free(truth);
  free(have);
  free(buf);
}

/* Thousands of appends and a full release stay fast and exact. */
static void test_many_appends(void) {
  enum { SEGS = 20000, SZ = 100 };
  unsigned char *data = malloc(SEGS * SZ);
  fill_random(data, SEGS * SZ);
  token *toks = calloc(SEGS, sizeof *toks);
  rw_sgbuf *b = rw_sgbuf_new(0);
  for (int i = 0; i < SEGS; i++)
    CHECK_EQ_INT(rw_sgbuf_insert(b, (uint64_t)i * SZ, data + i * SZ, SZ, on_release, &toks[i]) == NULL, 1);
  CHECK_EQ_INT(rw_sgbuf_segments(b), SEGS);
  CHECK_EQ_INT(rw_sgbuf_contiguous_end(b), SEGS * SZ);
  CHECK_EQ_INT(rw_sgbuf_view_count(b, 50, SZ * 10), 11);
  for (int i = 0; i < SEGS; i += 7) rw_sgbuf_release_upto(b, (uint64_t)i * SZ + 3);
  rw_sgbuf_release_upto(b, SEGS * SZ);
  int bad = 0;
  for (int i = 0; i < SEGS; i++) bad += toks[i].released != 1;
  CHECK_EQ_INT(bad, 0);
  CHECK_EQ_INT(rw_sgbuf_bytes(b), 0);
  rw_sgbuf_free(b);
  free(toks);
  free(data);
}

/* Release order: a token is released only once nothing of it is held. */
static int early;
static uint64_t releasing_upto; /* set before each release_upto */
typedef struct wtok {
  uint64_t end;
  int released;
} wtok;
static void on_release_watch(void *ud) {
  wtok *t = ud;
  t->released++;
  if (t->end > releasing_upto) early++;
}

static void test_release_timing(void) {
  unsigned char data[4096];
  fill_random(data, sizeof data);
  rw_sgbuf *b = rw_sgbuf_new(0);
  wtok t[64];
  memset(t, 0, sizeof t);
  int order[64];
  for (int i = 0; i < 64; i++) order[i] = i;
  for (int i = 63; i > 0; i--) {
    int j = (int)(rnd() % (unsigned)(i + 1)), tmp = order[i];
    order[i] = order[j];
    order[j] = tmp;
  }
  for (int k = 0; k < 64; k++) {
    int i = order[k];
    t[i].end = (uint64_t)(i + 1) * 64;
    CHECK(rw_sgbuf_insert(b, (uint64_t)i * 64, data + i * 64, 64, on_release_watch, &t[i]) == NULL);
  }
  for (uint64_t up = 0; up <= 4096; up += 1 + rnd() % 100) {
    releasing_upto = up;
    rw_sgbuf_release_upto(b, up);
  }
  releasing_upto = 4096;
  rw_sgbuf_release_upto(b, 4096);
  CHECK_EQ_INT(early, 0);
  for (int i = 0; i < 64; i++) CHECK_EQ_INT(t[i].released, 1);
  rw_sgbuf_free(b);
}

int main(void) {
  rng_state = ct_seed();
  RUN(test_basic);
  RUN(test_overlap_error);
  RUN(test_random_against_flat);
  RUN(test_many_appends);
  RUN(test_release_timing);
  return ct_finish("test_sgbuf");
}
