/* Issue 8 from C: the session handle read while the pool opens the session
 * (#13, a TSan test), a writer that cannot get its eventfd (#14), and the
 * preallocated rw.out_of_memory error (#15). The fork cases run first, while
 * this process has no other thread. */
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <fcntl.h>

#include "ctest.h"
#include "sinks/gcs.h"
#include "writer_fixture.h"

#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#define RW_SANITIZED 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer)
#define RW_SANITIZED 1
#endif
#endif

/* Runs fn in a child process; true when it exited 0 (its own CHECKs passed). */
static bool in_child(int (*fn)(void)) {
  fflush(stderr);
  pid_t pid = fork();
  if (pid == 0) exit(fn());
  int st = 0;
  if (pid < 0 || waitpid(pid, &st, 0) != pid) return false;
  return WIFEXITED(st) && WEXITSTATUS(st) == 0;
}

/* ---- #14: no descriptor left for the writer's eventfd ---- */

/* A sink that needs no descriptor and records that it was destroyed. */
static atomic_int stub_destroyed;
static rw_error *stub_begin(rw_sink *s, rw_ctx *ctx) { return NULL; }
static rw_error *stub_put(rw_sink *s, rw_ctx *ctx, const rw_sink_put *p, rw_sink_result *res) {
  res->persisted = p->offset + p->len;
  return NULL;
}
static rw_error *stub_query(rw_sink *s, rw_ctx *ctx, rw_sink_result *res) { return NULL; }
static rw_error *stub_abort(rw_sink *s, rw_ctx *ctx) { return NULL; }
static const char *stub_session(rw_sink *s) { return ""; }
static void stub_destroy(rw_sink *s) {
  atomic_fetch_add(&stub_destroyed, 1);
  free(s);
}
static const rw_sink_ops stub_ops = {"stub", stub_begin, stub_put, stub_query, stub_abort, stub_session,
                                     stub_destroy};

static rw_sink *stub_sink(void) {
  rw_sink *s = calloc(1, sizeof *s);
  s->ops = &stub_ops;
  return s;
}

static int eventfd_child(void) {
  struct rlimit rl = {64, 64};
  CHECK(setrlimit(RLIMIT_NOFILE, &rl) == 0);
  int fds[64], n = 0;
  while (n < 64 && (fds[n] = open("/dev/null", O_RDONLY | O_CLOEXEC)) >= 0) n++;
  CHECK(n > 0 && n < 64);
  rw_writer_config c = small_config(256u << 10);
  rw_error *err = NULL;
  rw_writer *w = rw_writer_new(NULL, stub_sink(), &c, &err);
  CHECK(w == NULL);
  CHECK(err && strcmp(rw_error_code(err), RW_E_RESOURCE) == 0);
  CHECK(err && strstr(rw_error_message(err), "eventfd") != NULL);
  CHECK(err && !rw_error_retryable(err));
  if (err) {
    char text[512];
    rw_error_format(err, text, sizeof text);
    fprintf(stderr, "   with no descriptor left: %s\n", text);
  }
  CHECK_EQ_INT(atomic_load(&stub_destroyed), 1); /* the sink was taken and released */
  rw_error_unref(err);
  if (w) rw_writer_free(w);
  /* one descriptor free: the same call works */
  close(fds[--n]);
  err = NULL;
  w = rw_writer_new(NULL, stub_sink(), &c, &err);
  CHECK(w != NULL && err == NULL);
  rw_error_unref(err);
  rw_writer_free(w);
  CHECK_EQ_INT(atomic_load(&stub_destroyed), 2);
  while (n > 0) close(fds[--n]);
  return ct_failed ? 1 : 0;
}

static void test_eventfd_exhausted(void) { CHECK(in_child(eventfd_child)); }

/* ---- #15: the preallocated out-of-memory error ---- */

static void test_oom_error(void) {
  rw_error *e = rw_error_out_of_memory();
  CHECK(e != NULL);
  if (!e) return;
  CHECK(strcmp(rw_error_code(e), RW_E_NOMEM) == 0);
  CHECK(strcmp(rw_error_code(e), "rw.out_of_memory") == 0);
  CHECK(rw_error_is(e, RW_E_NOMEM));
  CHECK(!rw_error_retryable(e));
  CHECK(rw_error_message(e)[0] != 0);
  for (int i = 0; i < 1000; i++) rw_error_unref(e);
  CHECK(rw_error_ref(e) == e);
  for (int i = 0; i < 1000; i++) rw_error_unref(rw_error_ref(e));
  CHECK(rw_error_out_of_memory() == e);
  CHECK(strcmp(rw_error_code(e), RW_E_NOMEM) == 0);
  CHECK(rw_error_message(e)[0] != 0);
  char text[256];
  CHECK(rw_error_format(e, text, sizeof text) > 0 && strstr(text, "rw.out_of_memory") != NULL);
}

#ifndef RW_SANITIZED
/* Address space capped 256 MiB above what the process maps now: a 1 GiB
 * message cannot be allocated. */
static int oom_child(void) {
  long pages = 0;
  FILE *f = fopen("/proc/self/statm", "r");
  CHECK(f && fscanf(f, "%ld", &pages) == 1);
  if (f) fclose(f);
  rlim_t cap = (rlim_t)pages * (rlim_t)sysconf(_SC_PAGESIZE) + (256u << 20);
  struct rlimit rl = {cap, cap};
  CHECK(setrlimit(RLIMIT_AS, &rl) == 0);
  void *volatile big = malloc((size_t)1 << 30);
  CHECK(big == NULL); /* the cap holds */
  free(big);
  rw_error *e = rw_err(RW_E_INTERNAL, "%*s", 1 << 30, "");
  CHECK(e != NULL); /* never NULL: NULL would read as success */
  CHECK(e == rw_error_out_of_memory());
  CHECK(e && strcmp(rw_error_code(e), RW_E_NOMEM) == 0);
  rw_error_unref(e);
  /* with a cause: the cause is released, the answer is the same */
  rw_error *cause = rw_err(RW_E_INTERNAL, "a small cause");
  CHECK(cause && strcmp(rw_error_code(cause), RW_E_INTERNAL) == 0);
  e = rw_err_wrap(RW_E_INTERNAL, cause, "%*s", 1 << 30, "");
  CHECK(e == rw_error_out_of_memory());
  rw_error_unref(e);
  /* small errors still work */
  e = rw_err(RW_E_INVALID, "fine");
  CHECK(e && e != rw_error_out_of_memory() && strcmp(rw_error_code(e), RW_E_INVALID) == 0);
  rw_error_unref(e);
  return ct_failed ? 1 : 0;
}
#endif

static void test_oom_make(void) {
#ifdef RW_SANITIZED
  fprintf(stderr, "   skipped under a sanitizer (its allocator ignores RLIMIT_AS)\n");
#else
  CHECK(in_child(oom_child));
#endif
}

/* ---- #13: the session handle read while the pool opens the session ---- */

typedef struct reader {
  rw_writer *w;
  atomic_bool stop;
  long reads, seen;
  bool bad;
} reader;

/* A copy of the writer's session handle, NULL while there is none. */
static char *session_copy(rw_writer *w, uint64_t *persisted) {
  bool has_crc;
  uint32_t crc;
  return rw_writer_session(w, persisted, &has_crc, &crc);
}

static void *read_sessions(void *arg) {
  reader *r = arg;
  uint64_t last = 0;
  while (!atomic_load(&r->stop)) {
    uint64_t p = 0;
    char *h = session_copy(r->w, &p);
    r->reads++;
    if (h) {
      r->seen++;
      if (strncmp(h, "http://127.0.0.1:", 17) != 0 || !strstr(h, "upload_id=")) r->bad = true;
    }
    if (p < last) r->bad = true; /* persisted never goes backwards */
    last = p;
    free(h);
  }
  return NULL;
}

static void session_round(rw_fakegcs *srv, int round) {
  char name[32];
  snprintf(name, sizeof name, "race-%d", round);
  rw_error *err = NULL;
  rw_gcs_config g = {.bucket = "b", .object = name, .endpoint = rw_fakegcs_url(srv)};
  rw_sink *sink = rw_gcs_sink_new(&g, &err);
  CHECK(sink != NULL);
  rw_writer_config c = small_config(256u << 10);
  rw_writer *w = sink ? rw_writer_new(NULL, sink, &c, &err) : NULL;
  CHECK(w != NULL);
  if (!w) {
    rw_error_unref(err);
    return;
  }
  uint64_t p = 0;
  char *before = session_copy(w, &p);
  CHECK(before == NULL); /* no session before the first chunk */
  free(before);
  reader r = {.w = w};
  atomic_init(&r.stop, false);
  pthread_t t;
  CHECK(pthread_create(&t, NULL, read_sessions, &r) == 0);
  size_t n = (1u << 20) + 1000 + rw_rand_next(&rng) % (256u << 10);
  unsigned char *data = random_data(n);
  CHECK(write_all(w, data, n, 0, NULL));
  CHECK(complete(w));
  atomic_store(&r.stop, true);
  pthread_join(t, NULL);
  CHECK(r.reads > 0);
  CHECK(r.seen > 0);
  CHECK(!r.bad);
  char *after = session_copy(w, &p);
  CHECK(after != NULL);
  CHECK_EQ_INT(p, n);
  free(after);
  rw_writer_free(w);
  rw_fakegcs_object o;
  CHECK(rw_fakegcs_object_get(srv, "b", name, &o));
  CHECK(o.size == n && o.data && memcmp(o.data, data, n) == 0);
  rw_fakegcs_object_free(&o);
  free(data);
}

static void test_session_race(void) {
  rw_fakegcs *srv = start_fake();
  CHECK(srv != NULL);
  if (!srv) return;
  for (int round = 0; round < 4; round++) session_round(srv, round);
  rw_fakegcs_stop(srv);
}

int main(void) {
  rng = ct_seed();
  RUN(test_oom_error);
  RUN(test_oom_make);
  RUN(test_eventfd_exhausted);
  RUN(test_session_race);
  return ct_finish("test_hardening");
}
