/* The writer's lock is never held while confirmed bytes are hashed: a pool
 * thread hashing a big confirmed chunk (CRC32C of the object and of each
 * 256 KiB block) must not stall the owner thread's calls. A test hook makes
 * the hashing slow (a thread preempted there); the owner's calls must still
 * return at once. With several chunks in flight, confirmations hash one at a
 * time, in offset order, and the checksums stay right. */
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>
#include <time.h>

#include "core/backoff.h"
#include "core/checksum.h"
#include "core/clock.h"
#include "ctest.h"
#include "io/writer.h"
#include "writer_fixture.h"

/* ---- the hook: slow hashing, watched ---- */

typedef struct hook {
  atomic_int inside, overlapped, calls;
  atomic_uint_fast64_t last_to, disorder;
  unsigned first_ms, each_ms; /* sleep on the first call, on every later one */
  bool pool_only;             /* calls on the owner thread neither count nor sleep */
  pthread_t owner;
  atomic_int owner_calls;
} hook;

static void hook_fn(void *ud, uint64_t from, uint64_t to) {
  hook *h = ud;
  if (atomic_fetch_add(&h->inside, 1) > 0) atomic_fetch_add(&h->overlapped, 1);
  uint64_t last = atomic_load(&h->last_to);
  if (last && from != last) atomic_fetch_add(&h->disorder, 1);
  if (to <= from) atomic_fetch_add(&h->disorder, 1);
  if (h->pool_only && pthread_equal(pthread_self(), h->owner)) {
    atomic_fetch_add(&h->owner_calls, 1);
    atomic_store(&h->last_to, to);
    atomic_fetch_sub(&h->inside, 1);
    return;
  }
  int n = atomic_fetch_add(&h->calls, 1);
  fx_sleep_ms(n == 0 ? h->first_ms : h->each_ms);
  atomic_store(&h->last_to, to);
  atomic_fetch_sub(&h->inside, 1);
}

/* ---- driving the writer ---- */

/* Waits (bounded) until the hook has been entered. */
static bool wait_hashing(hook *h) {
  double t0 = rw_mono_now();
  while (atomic_load(&h->calls) == 0 && rw_mono_now() - t0 < 20) fx_sleep_ms(1);
  return atomic_load(&h->calls) > 0;
}

/* A writer on m: the defaults with a cache of `cache` bytes and chunks of
 * `chunk`; NULL (a CHECK failed, m freed) when it cannot be made. */
static rw_writer *lock_writer(mem_sink *m, uint64_t cache, uint64_t chunk, bool resume) {
  rw_writer_config c = rw_writer_defaults();
  c.max_cache_size = cache;
  c.min_chunk_size = c.max_chunk_size = chunk;
  c.resume = resume;
  rw_writer *w = new_writer(&m->base, &c);
  CHECK(w != NULL);
  if (!w) mem_free(m);
  return w;
}

#define BIG (64u << 20)
#define SLOW_MS 400u
#define QUICK_S 0.05 /* "at once": far below SLOW_MS, loose enough for TSan */

/* While one 64 MiB chunk's confirmation is being hashed (slowly), the owner's
 * stats, room, drain and a write all return at once. */
static void test_owner_not_blocked(void) {
  mem_sink *m = mem_new(2 * (size_t)BIG, 1, 0);
  rw_writer *w = lock_writer(m, 2 * (uint64_t)BIG, BIG, false);
  if (!w) return;
  hook h = {.first_ms = SLOW_MS, .each_ms = 0};
  rw_writer_set_hash_hook(w, hook_fn, &h);
  unsigned char *data = random_data(2 * (size_t)BIG);
  CHECK(write_at(w, 0, data, BIG, 0, NULL)); /* one whole chunk: sent and confirmed */
  CHECK(wait_hashing(&h));
  double t0 = rw_mono_now();
  rw_writer_stats st = rw_writer_get_stats(w);
  double t_stats = rw_mono_now() - t0;
  t0 = rw_mono_now();
  uint64_t room = rw_writer_room(w, BIG);
  rw_writer_drain(w);
  size_t acc = 0;
  rw_error *e = rw_writer_write_some(w, BIG, data + BIG, 1u << 20, NULL, NULL, &acc);
  double t_write = rw_mono_now() - t0;
  fprintf(stderr, "while hashing %u MiB (hook sleeps %u ms): stats %.3f ms, room+drain+write %.3f ms\n",
          BIG >> 20, SLOW_MS, t_stats * 1e3, t_write * 1e3);
  CHECK(t_stats < QUICK_S);
  CHECK(t_write < QUICK_S);
  CHECK(st.persisted == 0 || st.persisted == BIG); /* never half published */
  CHECK(room > 0);
  CHECK(e == NULL);
  rw_error_unref(e);
  CHECK(acc == 1u << 20);
  CHECK(write_at(w, BIG + acc, data + BIG + acc, BIG - acc, 0, NULL));
  CHECK(complete(w));
  st = rw_writer_get_stats(w);
  CHECK(st.persisted == 2 * (uint64_t)BIG);
  CHECK(m->total == 2 * (uint64_t)BIG && memcmp(m->data, data, m->total) == 0);
  CHECK(atomic_load(&h.overlapped) == 0 && atomic_load(&h.disorder) == 0);
  rw_writer_free(w);
  mem_free(m);
  free(data);
}

/* The same without a hook: how long the owner's calls take while real
 * hashing of 64 MiB confirmations runs (printed, not asserted). */
static void test_measure_stall(void) {
  mem_sink *m = mem_new(4 * (size_t)BIG, 1, 0);
  rw_writer *w = lock_writer(m, 2 * (uint64_t)BIG, BIG, false);
  if (!w) return;
  unsigned char *data = random_data(4 * (size_t)BIG);
  double t0 = rw_mono_now();
  uint32_t crc = rw_crc32c(0, data, BIG);
  fprintf(stderr, "crc32c of %u MiB here: %.3f ms (crc %08x)\n", BIG >> 20, (rw_mono_now() - t0) * 1e3,
          (unsigned)crc);
  double worst = 0, t_end = rw_mono_now() + 30;
  size_t off = 0;
  while (off < 4 * (size_t)BIG && rw_mono_now() < t_end) {
    size_t acc = 0;
    t0 = rw_mono_now();
    rw_writer_stats st = rw_writer_get_stats(w);
    double dt = rw_mono_now() - t0;
    (void)st;
    if (dt > worst) worst = dt;
    rw_error *e = rw_writer_write_some(w, off, data + off, 1u << 20, NULL, NULL, &acc);
    if (e) {
      CHECK(e == NULL);
      print_error("write", e);
      rw_error_unref(e);
      break;
    }
    off += acc;
    if (!acc) sched_yield(); /* poll hard: catch the owner's calls while a pool thread hashes */
    rw_writer_drain(w);
  }
  fprintf(stderr, "rw_writer_get_stats while 64 MiB chunks are confirmed: worst %.3f ms\n", worst * 1e3);
  CHECK(complete(w));
  CHECK(m->total == 4 * (uint64_t)BIG && memcmp(m->data, data, m->total) == 0);
  rw_writer_free(w);
  mem_free(m);
  free(data);
}

/* Several chunks in flight, each confirmation hashed slowly: hashing stays
 * one at a time and in order, the object's crc32c matches, and the block
 * CRCs still catch a rewrite of persisted bytes. */
static void test_inflight_confirmers(void) {
  size_t n = 24u << 20;
  mem_sink *m = mem_new(n, 4, 0);
  rw_writer *w = lock_writer(m, 8u << 20, 1u << 20, false);
  if (!w) return;
  hook h = {.first_ms = 5, .each_ms = 5};
  rw_writer_set_hash_hook(w, hook_fn, &h);
  unsigned char *data = random_data(n);
  CHECK(write_at(w, 0, data, n / 2, 0, NULL));
  double t0 = rw_mono_now();
  while (rw_writer_get_stats(w).persisted < RW_CHUNK_QUANTUM * 4 && rw_mono_now() - t0 < 20) fx_sleep_ms(1);
  unsigned char *bad = malloc(RW_CHUNK_QUANTUM);
  memcpy(bad, data, RW_CHUNK_QUANTUM);
  bad[rw_rand_next(&rng) % RW_CHUNK_QUANTUM] ^= 1;
  size_t acc = 0;
  rw_error *e = rw_writer_write_some(w, 0, bad, RW_CHUNK_QUANTUM, NULL, NULL, &acc);
  CHECK(e != NULL && rw_error_is(e, RW_E_OVERLAP));
  rw_error_unref(e);
  e = rw_writer_write_some(w, 0, data, RW_CHUNK_QUANTUM, NULL, NULL, &acc);
  CHECK(e == NULL && acc == RW_CHUNK_QUANTUM);
  rw_error_unref(e);
  free(bad);
  CHECK(write_at(w, n / 2, data + n / 2, n - n / 2, 0, NULL));
  CHECK(complete(w)); /* the object's crc32c is compared with ours */
  CHECK(m->total == n && memcmp(m->data, data, n) == 0);
  CHECK(rw_writer_get_stats(w).persisted == n);
  CHECK(atomic_load(&h.overlapped) == 0 && atomic_load(&h.disorder) == 0);
  CHECK(atomic_load(&h.last_to) == n);
  fprintf(stderr, "hashing stretches: %d\n", atomic_load(&h.calls));
  rw_writer_free(w);
  mem_free(m);
  free(data);
}

/* After a resume the server already holds the first bytes: the caller's
 * writes of them are hashed, not resent. While a pool thread hashes the
 * part the session query found (slowly), the owner's next write of held
 * bytes hands its range to that thread instead of waiting for the lock. */
static void test_resume_handoff(void) {
  size_t n = 32u << 20, held = 16u << 20, first = 8u << 20;
  mem_sink *m = mem_new(n, 1, 0);
  unsigned char *data = random_data(n);
  mem_hold(m, data, held);
  atomic_store(&m->gate_closed, true);
  rw_writer *w = lock_writer(m, n, 4u << 20, true);
  if (!w) {
    free(data);
    return;
  }
  hook h = {.first_ms = SLOW_MS, .each_ms = 0, .pool_only = true, .owner = pthread_self()};
  rw_writer_set_hash_hook(w, hook_fn, &h);
  CHECK(write_at(w, 0, data, first, 0, NULL)); /* before the session query answers */
  atomic_store(&m->gate_closed, false);
  CHECK(wait_hashing(&h)); /* the query's answer: [0, first) is hashed on the pool */
  double t0 = rw_mono_now();
  size_t acc = 0;
  rw_error *e = rw_writer_write_some(w, first, data + first, held - first, NULL, NULL, &acc);
  double dt = rw_mono_now() - t0;
  fprintf(stderr, "write of held bytes while the pool hashes (hook sleeps %u ms): %.3f ms\n", SLOW_MS,
          dt * 1e3);
  CHECK(dt < QUICK_S);
  CHECK(e == NULL && acc == held - first);
  rw_error_unref(e);
  CHECK(write_at(w, held, data + held, n - held, 0, NULL));
  CHECK(complete(w)); /* the object's crc32c is compared with ours */
  CHECK(m->total == n && memcmp(m->data, data, n) == 0);
  rw_writer_stats st = rw_writer_get_stats(w);
  CHECK(st.persisted == n);
  CHECK(atomic_load(&h.overlapped) == 0 && atomic_load(&h.disorder) == 0);
  CHECK(atomic_load(&h.last_to) == n);
  uint64_t p = 0;
  bool has_crc = false;
  uint32_t crc = 0;
  free(rw_writer_session(w, &p, &has_crc, &crc));
  CHECK(p == n && has_crc && crc == rw_crc32c(0, data, n));
  rw_writer_free(w);
  mem_free(m);
  free(data);
}

int main(void) {
  rng = ct_seed();
  RUN(test_owner_not_blocked);
  RUN(test_measure_stall);
  RUN(test_inflight_confirmers);
  RUN(test_resume_handoff);
  return ct_finish("test_writer_lock");
}
