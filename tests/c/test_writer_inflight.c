/* The writer with several chunks in flight (sink->max_inflight > 1), under
 * the sanitizers: a memory sink that takes puts at any offset at once,
 * persists with a lag, and can forget what it accepted (a proxy that died),
 * alone and under the faulty sink. The bytes it ends with must be those
 * written. */
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <time.h>

#include "core/backoff.h"
#include "core/checksum.h"
#include "core/clock.h"
#include "ctest.h"
#include "io/writer.h"
#include "testbed/faulty.h"

static uint64_t rng;

/* ---- the memory sink ---- */

typedef struct mem_sink {
  rw_sink base;
  pthread_mutex_t mu;
  unsigned char *data, *have;
  uint64_t cap, persisted, total;
  bool finalized;
  double p_lose; /* per put (and every 8th put when > 0): forget every accepted byte above persisted */
  uint64_t rng, lost, puts, epoch;
  bool epochs; /* forgetting moves the epoch */
  int active, peak;
  uint64_t bad_puts; /* puts with bytes outside the cache's range */
  uint64_t past_ahead; /* puts ending past persisted + max_ahead */
} mem_sink;

/* Persisted: the contiguous prefix, in whole 256 KiB blocks (a proxy passes
 * bytes on in chunks: it lags what it accepted). mu held. */
static void mem_settle(mem_sink *m) {
  uint64_t c = m->persisted;
  while (c < m->cap && m->have[c]) c++;
  c -= c % RW_CHUNK_QUANTUM;
  if (c > m->persisted) m->persisted = c;
}

static void mem_forget(mem_sink *m) {
  uint64_t from = m->persisted;
  if (from < m->cap) memset(m->have + from, 0, m->cap - from);
  m->lost++;
  if (m->epochs) m->epoch++; /* says so, as a proxy sink does at a failover */
}

static void mem_result(mem_sink *m, rw_sink_result *res) {
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

static void mem_enter(mem_sink *m) {
  pthread_mutex_lock(&m->mu);
  if (++m->active > m->peak) m->peak = m->active;
  pthread_mutex_unlock(&m->mu);
  struct timespec ts = {0, 2 * 1000000}; /* long enough for puts to overlap */
  nanosleep(&ts, NULL);
}

static rw_error *mem_put(rw_sink *s, rw_ctx *ctx, const rw_sink_put *p, rw_sink_result *res) {
  mem_sink *m = (mem_sink *)s;
  mem_enter(m);
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
  if (p->final) {
    uint64_t c = m->persisted;
    while (c < m->cap && m->have[c]) c++;
    if (c >= p->offset + p->len) { /* every byte below the end: the object */
      m->total = p->offset + p->len;
      m->persisted = m->total;
      m->finalized = true;
    }
  }
  mem_result(m, res);
  pthread_mutex_unlock(&m->mu);
  return NULL;
}

static rw_error *mem_query(rw_sink *s, rw_ctx *ctx, rw_sink_result *res) {
  mem_sink *m = (mem_sink *)s;
  pthread_mutex_lock(&m->mu);
  mem_result(m, res);
  pthread_mutex_unlock(&m->mu);
  return NULL;
}

static rw_error *mem_begin(rw_sink *s, rw_ctx *ctx) { return NULL; }
static rw_error *mem_abort(rw_sink *s, rw_ctx *ctx) { return NULL; }
static const char *mem_session(rw_sink *s) { return "mem://test"; }
static void mem_destroy(rw_sink *s) { (void)s; } /* owned by the test */

static const rw_sink_ops mem_ops = {.kind = "mem", .begin = mem_begin, .put = mem_put,
                                    .query = mem_query, .abort = mem_abort,
                                    .session = mem_session, .destroy = mem_destroy};

static mem_sink *mem_new(uint64_t cap, int max_inflight, double p_lose) {
  mem_sink *m = calloc(1, sizeof *m);
  m->base.ops = &mem_ops;
  m->base.max_inflight = max_inflight;
  pthread_mutex_init(&m->mu, NULL);
  m->cap = cap;
  m->data = calloc(1, cap);
  m->have = calloc(1, cap);
  m->p_lose = p_lose;
  m->rng = rw_rand_next(&rng);
  return m;
}

static void mem_free(mem_sink *m) {
  pthread_mutex_destroy(&m->mu);
  free(m->data);
  free(m->have);
  free(m);
}

/* ---- driving the writer ---- */

static unsigned char *random_data(size_t n) {
  unsigned char *d = malloc(n);
  for (size_t i = 0; i < n; i++) d[i] = (unsigned char)rw_rand_next(&rng);
  return d;
}

static rw_writer_config small_config(void) {
  rw_writer_config c = rw_writer_defaults();
  c.max_cache_size = 2u << 20;
  c.min_chunk_size = 256u << 10;
  c.max_chunk_size = 256u << 10;
  c.retry.min_wait = 0.001;
  c.retry.max_wait = 0.01;
  c.retry.total_wait = 20;
  c.stall_timeout = 0.3; /* a poll that sees no progress this long resends */
  return c;
}

static void log_err(const char *what, rw_error *e) {
  char buf[512];
  rw_error_format(e, buf, sizeof buf);
  fprintf(stderr, "%s: %s\n", what, buf);
}

static bool write_all(rw_writer *w, const unsigned char *data, size_t n) {
  size_t off = 0;
  while (off < n) {
    size_t piece = 1 + rw_rand_next(&rng) % (300u << 10), acc = 0;
    if (piece > n - off) piece = n - off;
    rw_error *e = rw_writer_write_some(w, off, data + off, piece, NULL, NULL, &acc);
    if (e) {
      log_err("write", e);
      rw_error_unref(e);
      return false;
    }
    off += acc;
    if (!acc) rw_writer_wait(w, NULL, true, off, 5);
    rw_writer_drain(w);
  }
  return true;
}

static bool complete(rw_writer *w) {
  rw_error *e = rw_writer_complete_start(w, UINT64_MAX);
  double t0 = rw_mono_now();
  while (!e && !rw_writer_finished(w) && rw_mono_now() - t0 < 30) rw_writer_wait(w, NULL, false, 0, 1);
  rw_writer_drain(w);
  if (!e) e = rw_writer_error(w);
  if (e) log_err("complete", e);
  bool ok = !e && rw_writer_object(w) != NULL;
  rw_error_unref(e);
  return ok;
}

/* Uploads n random bytes through sink (wrapping m) and checks m's bytes. */
static void upload_and_check(mem_sink *m, rw_sink *sink, size_t n, rw_writer_stats *st) {
  rw_writer_config c = small_config();
  rw_error *err = NULL;
  rw_writer *w = rw_writer_new(NULL, sink, &c, &err);
  CHECK(w != NULL);
  if (!w) return;
  unsigned char *data = random_data(n);
  CHECK(write_all(w, data, n));
  CHECK(complete(w));
  *st = rw_writer_get_stats(w);
  CHECK_EQ_INT(st->persisted, n);
  CHECK_EQ_INT(st->in_cache, 0);
  rw_writer_free(w);
  pthread_mutex_lock(&m->mu);
  CHECK(m->finalized);
  CHECK_EQ_INT(m->total, n);
  CHECK(memcmp(m->data, data, n) == 0);
  CHECK_EQ_INT(m->bad_puts, 0);
  pthread_mutex_unlock(&m->mu);
  free(data);
}

/* N pieces go out at once, never more than N. */
static void test_concurrent_puts(void) {
  size_t n = (6u << 20) + 4321;
  mem_sink *m = mem_new(n + (1u << 20), 4, 0);
  rw_writer_stats st;
  upload_and_check(m, &m->base, n, &st);
  fprintf(stderr, "peak puts in flight: %d\n", m->peak);
  CHECK(m->peak >= 2);
  CHECK(m->peak <= 4);
  mem_free(m);
}

/* max_inflight 0 and 1: one put at a time, as before. */
static void test_one_at_a_time(void) {
  size_t n = (3u << 20) + 99;
  mem_sink *m = mem_new(n + (1u << 20), 1, 0);
  rw_writer_stats st;
  upload_and_check(m, &m->base, n, &st);
  CHECK_EQ_INT(m->peak, 1);
  mem_free(m);
}

/* The sink forgets bytes it accepted (a new proxy that only knows the GCS
 * session): the writer still holds them and sends them again. */
static void test_lost_bytes_resent(void) {
  size_t n = (6u << 20) + 777;
  mem_sink *m = mem_new(n + (1u << 20), 4, 0.08);
  rw_writer_stats st;
  upload_and_check(m, &m->base, n, &st);
  fprintf(stderr, "times the sink forgot accepted bytes: %llu\n", (unsigned long long)m->lost);
  CHECK(m->lost > 0);
  mem_free(m);
}

/* Injected errors (before, partial, reply lost) on concurrent puts. */
static void test_faulty_inflight(void) {
  size_t n = (6u << 20) + 12345;
  mem_sink *m = mem_new(n + (1u << 20), 1, 0.03);
  static const char *const codes[] = {"net.reset", "http.503", "net.stall"};
  rw_faulty_config fc = {.seed = rng | 1, .p_error = 0.3, .codes = codes, .ncodes = 3,
                         .p_partial = 0.3, .p_after = 0.3, .max_inflight = 4};
  rw_error *err = NULL;
  rw_sink *sink = rw_faulty_sink_new(&m->base, &fc, &err);
  CHECK(sink != NULL);
  rw_writer_stats st;
  upload_and_check(m, sink, n, &st);
  CHECK(st.retries > 0);
  CHECK(m->peak >= 2);
  mem_free(m);
}

/* Abort with pieces in flight: prompt, every task joined (ASan/TSan see
 * the rest), and the sink's abort is called. */
static void test_abort_in_flight(void) {
  size_t n = 3u << 20;
  mem_sink *m = mem_new(n + (1u << 20), 4, 0);
  rw_writer_config c = small_config();
  rw_error *err = NULL;
  rw_writer *w = rw_writer_new(NULL, &m->base, &c, &err);
  unsigned char *data = random_data(n);
  size_t acc = 0;
  rw_error_unref(rw_writer_write_some(w, 0, data, 2u << 20, NULL, NULL, &acc));
  struct timespec ts = {0, 3 * 1000000};
  nanosleep(&ts, NULL);
  double t0 = rw_mono_now();
  rw_writer_abort(w);
  CHECK(rw_mono_now() - t0 < 1.0);
  rw_writer_stats st = rw_writer_get_stats(w);
  CHECK_EQ_INT(st.state, RW_WRITER_ABORTED);
  rw_writer_free(w);
  pthread_mutex_lock(&m->mu);
  CHECK_EQ_INT(m->active, 0);
  CHECK(!m->finalized);
  pthread_mutex_unlock(&m->mu);
  mem_free(m);
  free(data);
}

/* Resume: the sink holds a prefix; the writer asks first (one task), then
 * sends the rest with pieces in flight. */
static void test_resume_in_flight(void) {
  size_t n = (4u << 20) + 321, held = 1u << 20;
  mem_sink *m = mem_new(n + (1u << 20), 4, 0);
  unsigned char *data = random_data(n);
  memcpy(m->data, data, held);
  memset(m->have, 1, held);
  m->persisted = held;
  rw_writer_config c = small_config();
  c.resume = true;
  rw_error *err = NULL;
  rw_writer *w = rw_writer_new(NULL, &m->base, &c, &err);
  CHECK(w != NULL);
  CHECK(write_all(w, data, n));
  CHECK(complete(w));
  rw_writer_free(w);
  pthread_mutex_lock(&m->mu);
  CHECK(m->finalized && m->total == n && memcmp(m->data, data, n) == 0);
  CHECK(m->peak >= 2);
  pthread_mutex_unlock(&m->mu);
  mem_free(m);
  free(data);
}

/* A sink that takes at most max_ahead bytes past what it persisted (a
 * proxy's session cache): no put ends beyond it, and the upload finishes
 * (the writer asks for the persisted size while it waits). */
static void test_max_ahead(void) {
  size_t n = (5u << 20) + 1;
  mem_sink *m = mem_new(n + (1u << 20), 4, 0);
  m->base.max_ahead = 512u << 10; /* less than 4 pieces of 256 KiB */
  rw_writer_stats st;
  upload_and_check(m, &m->base, n, &st);
  CHECK_EQ_INT(m->past_ahead, 0);
  CHECK(m->peak >= 2);
  mem_free(m);
}

/* A sink that says it lost what it accepted (its epoch moves, as a proxy
 * sink's does at a failover): the writer resends at once, not after a
 * stall_timeout of polling. */
static void test_epoch_resend(void) {
  size_t n = (6u << 20) + 5;
  mem_sink *m = mem_new(n + (1u << 20), 4, 0.05);
  m->epochs = true;
  rw_writer_config c = small_config();
  c.stall_timeout = 30;
  rw_error *err = NULL;
  rw_writer *w = rw_writer_new(NULL, &m->base, &c, &err);
  unsigned char *data = random_data(n);
  double t0 = rw_mono_now();
  CHECK(write_all(w, data, n));
  CHECK(complete(w));
  double dt = rw_mono_now() - t0;
  rw_writer_free(w);
  fprintf(stderr, "epoch moved %llu times; upload %.2f s\n", (unsigned long long)m->epoch, dt);
  CHECK(m->epoch > 0);
  CHECK(dt < 10);
  pthread_mutex_lock(&m->mu);
  CHECK(m->finalized && m->total == n && memcmp(m->data, data, n) == 0);
  pthread_mutex_unlock(&m->mu);
  mem_free(m);
  free(data);
}

int main(void) {
  rng = ct_seed();
  RUN(test_concurrent_puts);
  RUN(test_one_at_a_time);
  RUN(test_lost_bytes_resent);
  RUN(test_faulty_inflight);
  RUN(test_abort_in_flight);
  RUN(test_resume_in_flight);
  RUN(test_max_ahead);
  RUN(test_epoch_resend);
  return ct_finish("test_writer_inflight");
}
