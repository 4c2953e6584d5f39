/* What the writer's C tests share (test_writer.c, test_hardening.c): seeded
 * random data, a small writer config, a fake GCS with bucket "b", and
 * writing / completing through the step API as the Lua binding does. */
#ifndef RW_TEST_WRITER_FIXTURE_H
#define RW_TEST_WRITER_FIXTURE_H
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include "core/backoff.h"
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

/* Writes all of data in random pieces of at most max_piece bytes (0: in one
 * piece), waiting for room; release(NULL) runs for every piece let go. */
static inline bool write_all(rw_writer *w, const unsigned char *data, size_t n, size_t max_piece,
                             void (*release)(void *)) {
  size_t off = 0;
  while (off < n) {
    size_t piece = max_piece ? 1 + rw_rand_next(&rng) % max_piece : n - off;
    if (piece > n - off) piece = n - off;
    size_t done = 0;
    while (done < piece) {
      size_t acc = 0;
      rw_error *e = rw_writer_write_some(w, off + done, data + off + done, piece - done, release,
                                         NULL, &acc);
      if (e) {
        print_error("write", e);
        rw_error_unref(e);
        return false;
      }
      done += acc;
      if (done < piece) rw_writer_wait(w, NULL, true, off + done, 5);
      rw_writer_drain(w);
    }
    off += piece;
  }
  return true;
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

#endif
