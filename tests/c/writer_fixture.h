/* What the writer's C tests share (test_writer.c, test_hardening.c,
 * test_writer_lock.c, test_writer_inflight.c): seeded random data, a small
 * writer config, a fake GCS with bucket "b", a memory sink, and writing /
 * completing through the step API as the Lua binding does. */
#ifndef RW_TEST_WRITER_FIXTURE_H
#define RW_TEST_WRITER_FIXTURE_H
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/backoff.h"
#include "core/checksum.h"
#include "core/clock.h"
#include "io/writer.h"
#include "testbed/fakegcs.h"

static uint64_t rng; /* seeded by the test's main */

/* n random bytes (the caller frees them). */
static inline unsigned char *random_data(size_t n) {
  unsigned char *d = malloc(n);
  for (size_t i = 0; d && i < n; i++) d[i] = (unsigned char)rw_rand_next(&rng);
  return d;
}

/* A 1 MiB cache, 256 KiB chunks up to max_chunk, millisecond retries. */
static inline rw_writer_config small_config(uint64_t max_chunk) {
  rw_writer_config c = rw_writer_defaults();
  c.max_cache_size = 1u << 20;
  c.min_chunk_size = 256u << 10;
  c.max_chunk_size = max_chunk;
  c.retry.min_wait = 0.001;
  c.retry.max_wait = 0.01;
  c.retry.total_wait = 10;
  c.retry.seed = rng | 1;
  c.stall_timeout = 5;
  return c;
}

/* A fake GCS with bucket "b" (memory store), or NULL (the error printed). */
static inline rw_fakegcs *start_fake(void) {
  static const char *const buckets[] = {"b", NULL};
  rw_fakegcs_config fcfg = {.buckets = buckets};
  rw_error *err = NULL;
  rw_fakegcs *srv = rw_fakegcs_start(&fcfg, &err);
  if (!srv) {
    char buf[512];
    rw_error_format(err, buf, sizeof buf);
    fprintf(stderr, "fake GCS: %s\n", buf);
    rw_error_unref(err);
  }
  return srv;
}

static inline void print_error(const char *what, rw_error *e) {
  char buf[512];
  rw_error_format(e, buf, sizeof buf);
  fprintf(stderr, "%s: %s\n", what, buf);
}

/* Writes data[0, n) at offset off in random pieces of at most max_piece
 * bytes (0: in one piece), waiting for room (60 s in all at most);
 * release(NULL) runs for every piece let go. */
static inline bool write_at(rw_writer *w, uint64_t off, const unsigned char *data, size_t n,
                            size_t max_piece, void (*release)(void *)) {
  double until = rw_mono_now() + 60;
  size_t at = 0;
  while (at < n) {
    size_t piece = max_piece ? 1 + rw_rand_next(&rng) % max_piece : n - at;
    if (piece > n - at) piece = n - at;
    size_t done = 0;
    while (done < piece) {
      if (rw_mono_now() > until) {
        fprintf(stderr, "write: no room for offset %llu within 60 s\n", (unsigned long long)(off + at + done));
        return false;
      }
      size_t acc = 0;
      rw_error *e = rw_writer_write_some(w, off + at + done, data + at + done, piece - done, release,
                                         NULL, &acc);
      if (e) {
        print_error("write", e);
        rw_error_unref(e);
        return false;
      }
      done += acc;
      if (done < piece) rw_writer_wait(w, NULL, true, off + at + done, 5);
      rw_writer_drain(w);
    }
    at += piece;
  }
  return true;
}

/* Writes all of data from offset 0 (as write_at). */
static inline bool write_all(rw_writer *w, const unsigned char *data, size_t n, size_t max_piece,
                             void (*release)(void *)) {
  return write_at(w, 0, data, n, max_piece, release);
}

/* Complete, waiting up to 30 s: true when the writer has its object. */
static inline bool complete(rw_writer *w) {
  rw_error *e = rw_writer_complete_start(w, UINT64_MAX);
  if (!e) {
    double until = rw_mono_now() + 30;
    while (!rw_writer_finished(w) && rw_mono_now() < until) rw_writer_wait(w, NULL, false, 0, 0.1);
    rw_writer_drain(w);
    e = rw_writer_error(w);
  }
  bool ok = !e && rw_writer_object(w) != NULL;
  if (e) print_error("complete", e);
  rw_error_unref(e);
  return ok;
}

/* A writer on sink with config c, or NULL (the error printed). */
static inline rw_writer *new_writer(rw_sink *sink, const rw_writer_config *c) {
  rw_error *err = NULL;
  rw_writer *w = rw_writer_new(NULL, sink, c, &err);
  if (!w) print_error("rw_writer_new", err);
  rw_error_unref(err);
  return w;
}

/* ---- a memory sink (the writer's own tests): takes puts at any offset,
 * persists the contiguous prefix in whole 256 KiB blocks (lagging what it
 * accepted, as a proxy does), and can forget what it accepted above that ---- */

typedef struct mem_sink {
  rw_sink base;
  pthread_mutex_t mu;
  unsigned char *data, *have;
  uint64_t cap, persisted, total;
  bool finalized;
  double p_lose; /* per put (and every 8th put when > 0): forget every accepted byte above persisted */
  uint64_t rng, lost, puts, epoch;
  bool epochs;             /* forgetting moves the epoch (as a proxy sink's failover does) */
  atomic_bool gate_closed; /* query waits (20 s at most) until the test opens it */
  int active, peak;        /* puts in flight now, and at most */
  uint64_t bad_puts;       /* puts with bytes outside the cache's range */
  uint64_t past_ahead;     /* puts ending past persisted + max_ahead */
} mem_sink;

static inline void fx_sleep_ms(unsigned ms) {
  struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
  nanosleep(&ts, NULL);
}

/* mu held. */
static inline void mem_settle(mem_sink *m) {
  uint64_t c = m->persisted;
  while (c < m->cap && m->have[c]) c++;
  c -= c % RW_CHUNK_QUANTUM;
  if (c > m->persisted) m->persisted = c;
}

static inline void mem_forget(mem_sink *m) {
  uint64_t from = m->persisted;
  if (from < m->cap) memset(m->have + from, 0, m->cap - from);
  m->lost++;
  if (m->epochs) m->epoch++;
}

static inline void mem_result(mem_sink *m, rw_sink_result *res) {
  memset(res, 0, sizeof *res);
  res->epoch = m->epoch;
  res->persisted = m->finalized ? m->total : m->persisted;
  if (!m->finalized) return;
  res->finalized = true;
  res->obj.size = m->total;
  char b64[16];
  rw_crc32c_base64(rw_crc32c(0, m->data, m->total), b64);
  res->obj.crc32c = strdup(b64);
}

/* A put that ends the object finalizes it when every byte below its end is held. */
static inline void mem_finalize(mem_sink *m, const rw_sink_put *p, uint64_t copied_to) {
  if (!p->final || copied_to != p->offset + p->len) return;
  uint64_t c = m->persisted;
  while (c < m->cap && m->have[c]) c++;
  if (c < copied_to) return;
  m->total = m->persisted = copied_to;
  m->finalized = true;
}

static inline rw_error *mem_put(rw_sink *s, rw_ctx *ctx, const rw_sink_put *p, rw_sink_result *res) {
  (void)ctx;
  mem_sink *m = (mem_sink *)s;
  pthread_mutex_lock(&m->mu);
  if (++m->active > m->peak) m->peak = m->active;
  pthread_mutex_unlock(&m->mu);
  fx_sleep_ms(2); /* long enough for puts to overlap */
  pthread_mutex_lock(&m->mu);
  m->active--;
  if (p->offset + p->len > m->cap) m->bad_puts++;
  if (m->base.max_ahead && p->offset + p->len > m->persisted + m->base.max_ahead) m->past_ahead++;
  uint64_t at = p->offset;
  for (int i = 0; i < p->iovcnt && at + p->iov[i].iov_len <= m->cap; i++) {
    memcpy(m->data + at, p->iov[i].iov_base, p->iov[i].iov_len);
    memset(m->have + at, 1, p->iov[i].iov_len);
    at += p->iov[i].iov_len;
  }
  if (m->p_lose > 0 && (rw_rand_unit(&m->rng) < m->p_lose || ++m->puts % 8 == 0)) mem_forget(m);
  mem_settle(m);
  mem_finalize(m, p, at);
  mem_result(m, res);
  pthread_mutex_unlock(&m->mu);
  return NULL;
}

static inline rw_error *mem_query(rw_sink *s, rw_ctx *ctx, rw_sink_result *res) {
  (void)ctx;
  mem_sink *m = (mem_sink *)s;
  double until = rw_mono_now() + 20;
  while (atomic_load(&m->gate_closed) && rw_mono_now() < until) fx_sleep_ms(1);
  pthread_mutex_lock(&m->mu);
  mem_result(m, res);
  pthread_mutex_unlock(&m->mu);
  return NULL;
}

static inline rw_error *mem_begin(rw_sink *s, rw_ctx *ctx) { (void)s, (void)ctx; return NULL; }
static inline rw_error *mem_abort(rw_sink *s, rw_ctx *ctx) { (void)s, (void)ctx; return NULL; }
static inline const char *mem_session(rw_sink *s) { (void)s; return "mem://test"; }
static inline void mem_destroy(rw_sink *s) { (void)s; } /* owned by the test: mem_free */

static inline const rw_sink_ops *mem_ops(void) {
  static const rw_sink_ops ops = {.kind = "mem", .begin = mem_begin, .put = mem_put,
                                  .query = mem_query, .abort = mem_abort,
                                  .session = mem_session, .destroy = mem_destroy};
  return &ops;
}

/* A memory sink of cap bytes taking max_inflight puts at once; the test
 * frees it with mem_free after the writer. */
static inline mem_sink *mem_new(uint64_t cap, int max_inflight, double p_lose) {
  mem_sink *m = calloc(1, sizeof *m);
  m->base.ops = mem_ops();
  m->base.max_inflight = max_inflight;
  pthread_mutex_init(&m->mu, NULL);
  m->cap = cap;
  m->data = calloc(1, cap);
  m->have = calloc(1, cap);
  m->p_lose = p_lose;
  m->rng = rw_rand_next(&rng);
  return m;
}

/* As after an earlier run: m already holds (and persisted) data[0, held). */
static inline void mem_hold(mem_sink *m, const unsigned char *data, uint64_t held) {
  memcpy(m->data, data, held);
  memset(m->have, 1, held);
  m->persisted = held;
}

static inline void mem_free(mem_sink *m) {
  pthread_mutex_destroy(&m->mu);
  free(m->data);
  free(m->have);
  free(m);
}

#endif
