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
#include "writer_fixture.h"

/* 2 MiB cache, 256 KiB pieces, quick retries; a poll that sees no progress
 * for 0.3 s resends. */
static rw_writer_config inflight_config(void) {
  rw_writer_config c = small_config(256u << 10);
  c.max_cache_size = 2u << 20;
  c.retry.total_wait = 20;
  c.stall_timeout = 0.3;
  return c;
}

/* Uploads n random bytes through sink (wrapping m) and checks m's bytes. */
static void upload_and_check(mem_sink *m, rw_sink *sink, size_t n, rw_writer_stats *st) {
  rw_writer_config c = inflight_config();
  rw_writer *w = new_writer(sink, &c);
  CHECK(w != NULL);
  if (!w) return;
  unsigned char *data = random_data(n);
  CHECK(write_all(w, data, n, 300u << 10, NULL));
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
  if (!sink) {
    print_error("rw_faulty_sink_new", err);
    rw_error_unref(err);
    mem_free(m);
    return;
  }
  rw_writer_stats st = {0};
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
  rw_writer_config c = inflight_config();
  rw_writer *w = new_writer(&m->base, &c);
  CHECK(w != NULL);
  if (!w) {
    mem_free(m);
    return;
  }
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
  mem_hold(m, data, held);
  rw_writer_config c = inflight_config();
  c.resume = true;
  rw_writer *w = new_writer(&m->base, &c);
  CHECK(w != NULL);
  if (!w) {
    mem_free(m);
    free(data);
    return;
  }
  CHECK(write_all(w, data, n, 300u << 10, NULL));
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
  rw_writer_config c = inflight_config();
  c.stall_timeout = 30;
  rw_writer *w = new_writer(&m->base, &c);
  CHECK(w != NULL);
  if (!w) {
    mem_free(m);
    return;
  }
  unsigned char *data = random_data(n);
  double t0 = rw_mono_now();
  CHECK(write_all(w, data, n, 300u << 10, NULL));
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
