/* The writer under sanitizers: a concurrent pump, faults, abort mid-flight,
 * against the fake GCS and the faulty file sink. */
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>

#include "ctest.h"
#include "sinks/file.h"
#include "sinks/gcs.h"
#include "testbed/faulty.h"
#include "writer_fixture.h"

static atomic_int released;

static void count_release(void *ud) { atomic_fetch_add(&released, 1); }

static void test_faulty_file(void) {
  char path[] = "/tmp/rw-test-writer-XXXXXX";
  int fd = mkstemp(path);
  close(fd);
  rw_error *err = NULL;
  rw_sink *file = rw_file_sink_new(path, &err);
  static const char *const codes[] = {"net.reset", "http.503", "net.stall"};
  rw_faulty_config fc = {.seed = rng | 1, .p_error = 0.5, .codes = codes, .ncodes = 3,
                         .p_partial = 0.3, .p_after = 0.2};
  rw_sink *sink = rw_faulty_sink_new(file, &fc, &err);
  CHECK(sink != NULL);
  rw_writer_config c = small_config(512u << 10);
  rw_writer *w = rw_writer_new(NULL, sink, &c, &err);
  CHECK(w != NULL);
  size_t n = (6u << 20) + 12345; /* 13 puts: no fault at all is 1 in 8000 */
  unsigned char *data = random_data(n);
  atomic_store(&released, 0);
  CHECK(write_all(w, data, n, 200u << 10, count_release));
  CHECK(complete(w));
  rw_writer_stats st = rw_writer_get_stats(w);
  CHECK_EQ_INT(st.persisted, n);
  CHECK_EQ_INT(st.in_cache, 0);
  CHECK(st.retries > 0);
  rw_writer_free(w);
  CHECK(atomic_load(&released) > 0);
  FILE *f = fopen(path, "rb");
  unsigned char *got = malloc(n + 1);
  size_t r = fread(got, 1, n + 1, f);
  fclose(f);
  CHECK_EQ_INT(r, n);
  CHECK(memcmp(got, data, n) == 0);
  free(got);
  free(data);
  unlink(path);
}

static void test_gcs_with_faults(void) {
  rw_error *err = NULL;
  rw_fakegcs *srv = start_fake();
  CHECK(srv != NULL);
  rw_fakegcs_faults faults = {.seed = rng | 1, .p_503 = 0.1, .p_reset = 0.05, .p_partial = 0.1};
  rw_fakegcs_set_faults(srv, &faults);
  rw_gcs_config g = {.bucket = "b", .object = "o", .endpoint = rw_fakegcs_url(srv)};
  rw_sink *sink = rw_gcs_sink_new(&g, &err);
  rw_writer_config c = small_config(512u << 10);
  c.md5 = true;
  rw_writer *w = rw_writer_new(NULL, sink, &c, &err);
  size_t n = (4u << 20) + 77;
  unsigned char *data = random_data(n);
  CHECK(write_all(w, data, n, 200u << 10, count_release));
  CHECK(complete(w));
  rw_writer_free(w);
  rw_fakegcs_object obj;
  CHECK(rw_fakegcs_object_get(srv, "b", "o", &obj));
  CHECK(obj.size == n && memcmp(obj.data, data, n) == 0);
  rw_fakegcs_object_free(&obj);
  free(data);
  rw_fakegcs_stop(srv);
}

/* Abort from another thread while the pump is mid-transfer. */
typedef struct {
  rw_writer *w;
} abort_arg;

static void *abort_soon(void *arg) {
  struct timespec ts = {0, 20 * 1000000};
  nanosleep(&ts, NULL);
  rw_writer_abort(((abort_arg *)arg)->w);
  return NULL;
}

static void test_abort_race(void) {
  rw_error *err = NULL;
  rw_fakegcs *srv = start_fake();
  rw_fakegcs_faults faults = {.seed = 3, .p_stall = 0.5, .stall_ms = 3000};
  rw_fakegcs_set_faults(srv, &faults);
  for (int round = 0; round < 3; round++) {
    rw_gcs_config g = {.bucket = "b", .object = "a", .endpoint = rw_fakegcs_url(srv)};
    rw_sink *sink = rw_gcs_sink_new(&g, &err);
    rw_writer_config c = small_config(512u << 10);
    rw_writer *w = rw_writer_new(NULL, sink, &c, &err);
    size_t n = 1u << 20;
    unsigned char *data = random_data(n);
    size_t acc = 0;
    rw_error_unref(rw_writer_write_some(w, 0, data, n, NULL, NULL, &acc));
    abort_arg a = {w};
    pthread_t t;
    double t0 = rw_mono_now();
    pthread_create(&t, NULL, abort_soon, &a);
    rw_writer_wait(w, NULL, false, 0, 10); /* wakes once aborted */
    pthread_join(t, NULL);
    CHECK(rw_mono_now() - t0 < 1.0);
    CHECK(rw_writer_get_stats(w).state == RW_WRITER_ABORTED);
    CHECK(rw_writer_stopped(w));
    rw_writer_free(w);
    free(data);
  }
  rw_fakegcs_stop(srv);
}

/* abort_start never blocks; stopped() turns true once the work is joined. */
static void test_abort_start(void) {
  rw_error *err = NULL;
  rw_fakegcs *srv = start_fake();
  rw_fakegcs_faults faults = {.seed = 5, .p_stall = 1, .stall_ms = 3000};
  rw_fakegcs_set_faults(srv, &faults);
  rw_gcs_config g = {.bucket = "b", .object = "s", .endpoint = rw_fakegcs_url(srv)};
  rw_writer_config c = small_config(512u << 10);
  rw_writer *w = rw_writer_new(NULL, rw_gcs_sink_new(&g, &err), &c, &err);
  size_t n = 512u << 10, acc = 0;
  unsigned char *data = random_data(n);
  rw_error_unref(rw_writer_write_some(w, 0, data, n, NULL, NULL, &acc));
  struct timespec ts = {0, 50 * 1000000};
  nanosleep(&ts, NULL);
  double t0 = rw_mono_now();
  rw_writer_abort_start(w);
  CHECK(rw_mono_now() - t0 < 0.05);
  while (!rw_writer_stopped(w) && rw_mono_now() - t0 < 5) rw_writer_wait(w, NULL, false, 0, 0.01);
  CHECK(rw_writer_stopped(w));
  CHECK(rw_mono_now() - t0 < 1.0);
  rw_writer_free(w);
  free(data);
  rw_fakegcs_stop(srv);
}

static void test_config_check(void) {
  rw_writer_config c = rw_writer_defaults();
  c.min_chunk_size = 1000;
  rw_error *e = rw_writer_config_check(&c);
  CHECK(e && strstr(rw_error_message(e), "min_chunk_size"));
  rw_error_unref(e);
  c = rw_writer_defaults();
  c.max_cache_size = c.max_chunk_size - 1;
  e = rw_writer_config_check(&c);
  CHECK(e && strstr(rw_error_message(e), "max_cache_size"));
  rw_error_unref(e);
}

int main(void) {
  rng = ct_seed();
  RUN(test_config_check);
  RUN(test_faulty_file);
  RUN(test_gcs_with_faults);
  RUN(test_abort_race);
  RUN(test_abort_start);
  return ct_finish("test_writer");
}
