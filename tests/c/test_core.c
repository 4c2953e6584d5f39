/* Unit tests for errors, contexts, backoff, rate limiter, the pool and logging. */
#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>

#include "core/backoff.h"
#include "core/clock.h"
#include "core/context.h"
#include "core/error.h"
#include "core/ratelimit.h"
#include "core/workgroup.h"
#include "ctest.h"

static unsigned seed;

static void test_errors(void) {
  rw_error *cause = rw_err(RW_E_NET_RESET, "reset after %d bytes", 42);
  rw_error *e = rw_err_wrap(RW_E_RETRY_BUDGET, cause, "gave up");
  CHECK(strcmp(rw_error_code(e), "rw.retry_budget_exhausted") == 0);
  CHECK(rw_error_is(e, "net.reset"));
  CHECK(!rw_error_is(e, "http.503"));
  CHECK(rw_error_retryable(cause) && !rw_error_retryable(e));
  CHECK(strstr(rw_error_where(e), "test_core.c:") != NULL);
  CHECK(strcmp(rw_error_id(e), rw_error_id(cause)) != 0);
  char buf[512];
  rw_error_format(e, buf, sizeof buf);
  CHECK(strstr(buf, rw_error_id(e)) && strstr(buf, "gave up"));
  rw_error *h = rw_err_http(503, "busy");
  CHECK(strcmp(rw_error_code(h), "http.503") == 0 && rw_error_retryable(h));
  CHECK_EQ_INT(rw_error_status(h), 503);
  rw_error *p = rw_err_http(412, "precondition");
  CHECK(strcmp(rw_error_code(p), "gcs.precondition_failed") == 0 && !rw_error_retryable(p));
  static const int retry[] = {408, 429, 500, 502, 503, 504};
  static const int fatal[] = {400, 401, 403, 404, 409, 412, 499};
  for (size_t i = 0; i < 6; i++) CHECK(rw_http_status_retryable(retry[i]));
  for (size_t i = 0; i < 7; i++) CHECK(!rw_code_retryable(rw_http_status_code(fatal[i])));
  rw_error_unref(e);
  rw_error_unref(h);
  rw_error_unref(p);
}

static void test_context_tree(void) {
  long before = rw_ctx_live_count();
  rw_ctx *root = rw_ctx_background();
  rw_ctx *a = rw_ctx_with_cancel(root), *b = rw_ctx_with_timeout(a, 100), *c = rw_ctx_with_cancel(b);
  rw_ctx *sib = rw_ctx_with_cancel(root);
  CHECK(!rw_ctx_done(c));
  CHECK(rw_ctx_cancel(b, NULL));
  CHECK(!rw_ctx_cancel(b, NULL));
  CHECK(rw_ctx_done(c) && rw_ctx_done(b));
  CHECK(!rw_ctx_done(a) && !rw_ctx_done(sib)); /* a child never cancels its parent */
  rw_error *e = rw_ctx_err(c);
  CHECK(e && rw_error_is(e, RW_E_CANCELED));
  rw_error_unref(e);
  rw_ctx *late = rw_ctx_with_cancel(b); /* born cancelled */
  CHECK(rw_ctx_done(late));
  rw_ctx_cancel(root, rw_err("test.cause", "why"));
  e = rw_ctx_err(sib);
  CHECK(e && rw_error_is(e, "test.cause"));
  rw_error_unref(e);
  rw_ctx_unref(late);
  rw_ctx_unref(c);
  rw_ctx_unref(b);
  rw_ctx_unref(sib);
  rw_ctx_unref(a);
  rw_ctx_unref(root);
  CHECK_EQ_INT(rw_ctx_live_count(), before);
}

static void test_context_deadline(void) {
  rw_ctx *p = rw_ctx_with_timeout(NULL, 0.05);
  rw_ctx *k = rw_ctx_with_timeout(p, 10); /* inherits the earlier deadline */
  CHECK(fabs(rw_ctx_deadline(k) - rw_ctx_deadline(p)) < 1e-9);
  double t0 = rw_mono_now();
  CHECK(rw_ctx_wait(k, 5));
  double took = rw_mono_now() - t0;
  CHECK(took >= 0.04 && took < 0.5);
  rw_error *e = rw_ctx_err(k);
  CHECK(e && rw_error_is(e, RW_E_DEADLINE));
  rw_error_unref(e);
  rw_ctx_unref(k);
  rw_ctx_unref(p);
  rw_ctx *q = rw_ctx_background();
  CHECK(!rw_ctx_wait(q, 0.01));
  CHECK(rw_ctx_timeout(q) < 0);
  rw_ctx_unref(q);
}

static void *cancel_later(void *arg) {
  struct timespec ts = {0, 30 * 1000000};
  nanosleep(&ts, NULL);
  rw_ctx_cancel(arg, NULL);
  return NULL;
}

static bool never(void *arg) { return false; }

static void test_context_wake(void) {
  rw_ctx *c = rw_ctx_background();
  int fd = rw_ctx_pollfd(c);
  CHECK(fd >= 0);
  pthread_mutex_t m = PTHREAD_MUTEX_INITIALIZER;
  pthread_cond_t cv;
  rw_cond_init(&cv);
  pthread_t t;
  pthread_create(&t, NULL, cancel_later, c);
  double t0 = rw_mono_now();
  pthread_mutex_lock(&m);
  rw_error *e = rw_ctx_cond_wait(c, &m, &cv, never, NULL, INFINITY);
  pthread_mutex_unlock(&m);
  CHECK(e && rw_error_is(e, RW_E_CANCELED));
  CHECK(rw_mono_now() - t0 < 1.0);
  rw_error_unref(e);
  pthread_join(t, NULL);
  uint64_t v = 0;
  CHECK(read(fd, &v, sizeof v) == sizeof v && v == 1);
  pthread_cond_destroy(&cv);
  rw_ctx_unref(c);
}

/* Many threads make, cancel and drop contexts in one tree (TSan food). */
static void *churn(void *arg) {
  rw_ctx *root = arg;
  for (int i = 0; i < 300; i++) {
    rw_ctx *a = rw_ctx_with_cancel(root), *b = rw_ctx_with_cancel(a);
    if (i % 3 == 0) rw_ctx_cancel(a, NULL);
    rw_error_unref(rw_ctx_err(b));
    rw_ctx_unref(a);
    rw_ctx_unref(b);
  }
  return NULL;
}

static void test_context_race(void) {
  long before = rw_ctx_live_count();
  rw_ctx *root = rw_ctx_background();
  pthread_t t[4];
  for (int i = 0; i < 4; i++) pthread_create(&t[i], NULL, churn, root);
  rw_ctx_cancel(root, NULL);
  for (int i = 0; i < 4; i++) pthread_join(t[i], NULL);
  rw_ctx_unref(root);
  CHECK_EQ_INT(rw_ctx_live_count(), before);
}

static void test_backoff(void) {
  static const rw_jitter kinds[] = {RW_JITTER_FULL, RW_JITTER_EQUAL, RW_JITTER_DECORRELATED,
                                    RW_JITTER_NONE};
  for (int k = 0; k < 4; k++) {
    rw_backoff_config c = {.min_wait = 0.1, .max_wait = 2, .total_wait = 1e9, .multiplier = 2,
                           .jitter = kinds[k], .seed = seed + 1};
    CHECK(rw_backoff_config_check(&c) == NULL);
    rw_backoff b;
    rw_backoff_init(&b, &c);
    for (int i = 0; i < 2000; i++) {
      double d;
      rw_error *e = rw_backoff_next(&b, &d);
      CHECK(!e && d >= 0.1 && d <= 2.0);
      if (k != RW_JITTER_DECORRELATED) CHECK(d <= fmin(2.0, 0.1 * pow(2, i < 60 ? i : 60)) + 1e-12);
    }
  }
  rw_backoff_config c = {.min_wait = 0.1, .max_wait = 1, .total_wait = 3, .multiplier = 2,
                         .jitter = RW_JITTER_FULL, .seed = seed};
  rw_backoff b;
  rw_backoff_init(&b, &c);
  double sum = 0, d;
  rw_error *e;
  int n = 0;
  while (!(e = rw_backoff_next(&b, &d))) sum += d, n++;
  CHECK(sum <= 3.0 && n > 2);
  CHECK(rw_error_is(e, RW_E_RETRY_BUDGET));
  rw_error_unref(e);
  rw_backoff_config bad = c;
  bad.min_wait = 2;
  e = rw_backoff_config_check(&bad);
  CHECK(e && strstr(rw_error_message(e), "max_wait"));
  rw_error_unref(e);
  /* wait wakes at once on cancellation */
  c.min_wait = 5, c.max_wait = 5, c.total_wait = 100;
  rw_backoff_init(&b, &c);
  rw_ctx *ctx = rw_ctx_background();
  pthread_t t;
  pthread_create(&t, NULL, cancel_later, ctx);
  double t0 = rw_mono_now();
  e = rw_backoff_wait(&b, ctx);
  CHECK(e && rw_error_is(e, RW_E_CANCELED) && rw_mono_now() - t0 < 1);
  rw_error_unref(e);
  pthread_join(t, NULL);
  rw_ctx_unref(ctx);
}

/* remaining() is the budget left: total_wait less every delay handed out. */
static void test_backoff_remaining(void) {
  rw_backoff_config c = {.min_wait = 0.1, .max_wait = 0.1, .total_wait = 1, .multiplier = 1,
                         .jitter = RW_JITTER_NONE, .seed = seed + 2};
  rw_backoff b;
  rw_backoff_init(&b, &c);
  CHECK(fabs(rw_backoff_remaining(&b) - 1) < 1e-12);
  double d;
  CHECK(rw_backoff_next(&b, &d) == NULL);
  CHECK(fabs(rw_backoff_remaining(&b) - 0.9) < 1e-9);
  rw_backoff_reset(&b);
  CHECK(fabs(rw_backoff_remaining(&b) - 1) < 1e-12);
  /* with jitter: the sum of the delays plus what remains is the budget */
  c = (rw_backoff_config){.min_wait = 0.01, .max_wait = 0.5, .total_wait = 4, .multiplier = 2,
                          .jitter = RW_JITTER_FULL, .seed = seed + 3};
  rw_backoff_init(&b, &c);
  double sum = 0;
  rw_error *e;
  while (!(e = rw_backoff_next(&b, &d))) {
    sum += d;
    CHECK(fabs(rw_backoff_remaining(&b) - (4 - sum)) < 1e-9);
  }
  CHECK(rw_error_is(e, RW_E_RETRY_BUDGET));
  rw_error_unref(e);
  double left = rw_backoff_remaining(&b);
  CHECK(fabs(left - (4 - sum)) < 1e-9); /* the refused delay was not spent */
  CHECK(left >= 0 && left < 0.5);       /* and it (<= max_wait) did not fit */
  /* wait() spends what it slept */
  c = (rw_backoff_config){.min_wait = 0.01, .max_wait = 0.01, .total_wait = 1, .multiplier = 1,
                          .jitter = RW_JITTER_NONE, .seed = seed + 4};
  rw_backoff_init(&b, &c);
  rw_ctx *ctx = rw_ctx_background();
  CHECK(rw_backoff_wait(&b, ctx) == NULL);
  CHECK(fabs(rw_backoff_remaining(&b) - 0.99) < 1e-9);
  rw_ctx_unref(ctx);
}

static void test_ratelimit(void) {
  rw_error *err = NULL;
  CHECK(rw_ratelimit_new(0, 1, &err) == NULL && err);
  rw_error_unref(err);
  rw_ratelimit *rl = rw_ratelimit_new(1000, 10, &err);
  for (int i = 0; i < 10; i++) CHECK(rw_ratelimit_try(rl, 1));
  CHECK(!rw_ratelimit_try(rl, 5));
  double d;
  CHECK(rw_ratelimit_reserve(rl, 10, &d) == NULL && d > 0.005 && d < 0.02);
  rw_error *e = rw_ratelimit_reserve(rl, 11, &d);
  CHECK(e && rw_error_is(e, RW_E_INVALID));
  rw_error_unref(e);
  rw_ratelimit_free(rl);
  /* long-run rate within 5% */
  rl = rw_ratelimit_new(2000, 20, &err);
  rw_ctx *ctx = rw_ctx_background();
  double t0 = rw_mono_now();
  for (int i = 0; i < 600; i++) CHECK(rw_ratelimit_wait(rl, ctx, 2) == NULL);
  double rate = (1200 - 20) / (rw_mono_now() - t0);
  CHECK(rate > 1900 && rate < 2100);
  rw_ctx_unref(ctx);
  rw_ratelimit_free(rl);
}

/* set_rate: the new rate prices the next reservation; a bad rate is ignored. */
static void test_ratelimit_set_rate(void) {
  rw_error *err = NULL;
  rw_ratelimit *rl = rw_ratelimit_new(10, 1, &err);
  CHECK(rw_ratelimit_try(rl, 1)); /* empty now */
  rw_ratelimit_set_rate(rl, 2);
  double d;
  CHECK(rw_ratelimit_reserve(rl, 1, &d) == NULL);
  CHECK(d > 0.3 && d <= 0.5 + 1e-9); /* a token at 2/s (0.1 s at the old 10/s) */
  rw_ratelimit_cancel(rl, 1);
  static const double bad[] = {0, -5, NAN, INFINITY};
  for (int i = 0; i < 4; i++) rw_ratelimit_set_rate(rl, bad[i]);
  CHECK(rw_ratelimit_reserve(rl, 1, &d) == NULL);
  CHECK(d > 0.3 && d <= 0.5 + 1e-9); /* still 2/s */
  rw_ratelimit_cancel(rl, 1);
  rw_ratelimit_set_rate(rl, 1000);
  CHECK(rw_ratelimit_reserve(rl, 1, &d) == NULL);
  CHECK(d >= 0 && d <= 0.001 + 1e-9); /* a token at 1000/s */
  rw_ctx *ctx = rw_ctx_background();
  double t0 = rw_mono_now();
  for (int i = 0; i < 50; i++) CHECK(rw_ratelimit_wait(rl, ctx, 1) == NULL);
  CHECK(rw_mono_now() - t0 < 1); /* 50 tokens at 2/s would take 25 s */
  rw_ctx_unref(ctx);
  rw_ratelimit_free(rl);
}

/* ---- the pool under the writers ---- */

static atomic_int ran, concurrent, max_concurrent;

/* A job: counts itself, notes how many jobs run at once, waits on the gate
 * (a context the test cancels) or 10 ms. */
static void job_sleepy(void *gate) {
  int now = atomic_fetch_add(&concurrent, 1) + 1;
  int m = atomic_load(&max_concurrent);
  while (now > m && !atomic_compare_exchange_weak(&max_concurrent, &m, now)) {
  }
  rw_ctx_wait(gate, 0.01);
  atomic_fetch_sub(&concurrent, 1);
  atomic_fetch_add(&ran, 1);
}

static void reset_counts(void) {
  atomic_store(&ran, 0);
  atomic_store(&concurrent, 0);
  atomic_store(&max_concurrent, 0);
}

static void nap(long ms) {
  struct timespec ts = {ms / 1000, (ms % 1000) * 1000000};
  nanosleep(&ts, NULL);
}

/* At most max_threads jobs at once, every queued job runs, free waits for them. */
static void test_pool_bound(void) {
  rw_error *err = NULL;
  rw_pool *pool = rw_pool_new(3, 0.2, &err);
  CHECK(pool != NULL);
  rw_ctx *gate = rw_ctx_background();
  reset_counts();
  int n = 10 + (int)(seed % 20);
  for (int i = 0; i < n; i++) CHECK(rw_pool_submit(pool, job_sleepy, gate));
  CHECK(rw_pool_threads(pool) <= 3);
  rw_ctx_cancel(gate, NULL);
  /* idle threads exit after idle_timeout and are joined by the next submit or free */
  for (int i = 0; i < 200 && (atomic_load(&ran) < n || rw_pool_threads(pool) > 0); i++) nap(10);
  CHECK_EQ_INT(atomic_load(&ran), n);
  CHECK_EQ_INT(rw_pool_threads(pool), 0);
  CHECK(atomic_load(&max_concurrent) <= 3 && atomic_load(&max_concurrent) >= 1);
  CHECK(rw_pool_peak_threads(pool) <= 3);
  CHECK_EQ_INT(rw_pool_max_threads(pool), 3);
  /* jobs still queued when free is called run before it returns */
  rw_ctx *slow = rw_ctx_background();
  reset_counts();
  for (int i = 0; i < 6; i++) CHECK(rw_pool_submit(pool, job_sleepy, slow));
  rw_pool_free(pool);
  CHECK_EQ_INT(atomic_load(&ran), 6);
  CHECK(atomic_load(&max_concurrent) <= 3);
  rw_ctx_unref(slow);
  rw_ctx_unref(gate);
  CHECK(rw_pool_new(0, 1, &err) == NULL && err && rw_error_is(err, RW_E_INVALID));
  rw_error_unref(err);
}

typedef struct {
  rw_pool *pool;
  rw_ctx *gate;
  atomic_int accepted; /* jobs the pool took while it was stopping */
} resubmit;

/* A running job that submits another once the test opens its gate. */
static void job_resubmit(void *arg) {
  resubmit *r = arg;
  rw_ctx_wait(r->gate, 10);
  if (rw_pool_submit(r->pool, job_sleepy, r->gate)) atomic_fetch_add(&r->accepted, 1);
  atomic_fetch_add(&ran, 1);
}

static void *free_pool(void *p) {
  rw_pool_free(p);
  return NULL;
}

/* Nothing runs after rw_pool_free returns: a job submitted while the pool
 * stops either runs before free returns or is refused (and never runs). */
static void test_pool_nothing_after_free(void) {
  rw_error *err = NULL;
  resubmit r = {rw_pool_new(2, 5, &err), rw_ctx_background(), 0};
  reset_counts();
  CHECK(rw_pool_submit(r.pool, job_resubmit, &r));
  pthread_t t;
  CHECK(pthread_create(&t, NULL, free_pool, r.pool) == 0);
  nap(50); /* free is waiting for the job (most of the time: the check below holds either way) */
  rw_ctx_cancel(r.gate, NULL);
  pthread_join(t, NULL);
  int after_free = atomic_load(&ran);
  CHECK_EQ_INT(after_free, 1 + atomic_load(&r.accepted));
  nap(50);
  CHECK_EQ_INT(atomic_load(&ran), after_free);
  rw_ctx_unref(r.gate);
}

static atomic_int task_released;

/* What a writer's last job does: drop the shared pool from inside it. */
static void job_release_shared(void *arg) {
  rw_pool_shared_release_from_task();
  atomic_store(&task_released, 1);
}

/* The shared pool: counted acquires, the last release joins it; a release
 * from a task retires it and the next acquire takes it back. */
static void test_pool_shared(void) {
  CHECK(rw_pool_shared_peek() == NULL);
  rw_pool *a = rw_pool_shared_acquire(), *b = rw_pool_shared_acquire();
  CHECK(a != NULL && a == b && rw_pool_shared_peek() == a);
  rw_pool_shared_release();
  CHECK(rw_pool_shared_peek() == a); /* one owner left */
  atomic_store(&task_released, 0);
  CHECK(rw_pool_submit(a, job_release_shared, NULL));
  for (int i = 0; i < 200 && (!atomic_load(&task_released) || rw_pool_threads(a) > 0); i++) nap(10);
  CHECK(atomic_load(&task_released));
  CHECK_EQ_INT(rw_pool_threads(a), 0); /* retired: its idle thread left at once, not after 2 s */
  rw_pool *c = rw_pool_shared_acquire(); /* takes the retired pool back and reaps its thread */
  CHECK(c == a);
  reset_counts();
  rw_ctx *gate = rw_ctx_background();
  rw_ctx_cancel(gate, NULL);
  CHECK(rw_pool_submit(c, job_sleepy, gate));
  rw_pool_shared_release(); /* the last owner: joins every thread */
  CHECK_EQ_INT(atomic_load(&ran), 1);
  CHECK(rw_pool_shared_peek() == NULL);
  rw_ctx_unref(gate);
}

/* ---- logging ---- */

static pthread_mutex_t log_mu = PTHREAD_MUTEX_INITIALIZER;
static char log_lines[8][1024];
static rw_log_level log_levels[8];
static int log_count;

static void log_capture(void *ud, rw_log_level lvl, const char *line) {
  pthread_mutex_lock(&log_mu);
  if (ud == (void *)log_lines && log_count < 8) {
    snprintf(log_lines[log_count], sizeof log_lines[0], "%s", line);
    log_levels[log_count] = lvl;
  }
  log_count++;
  pthread_mutex_unlock(&log_mu);
}

static void log_reset(void) {
  pthread_mutex_lock(&log_mu);
  log_count = 0;
  memset(log_lines, 0, sizeof log_lines);
  pthread_mutex_unlock(&log_mu);
}

/* The i-th captured line, when it was at lvl and holds every one of the
 * NULL-terminated pieces. */
static bool logged(int i, rw_log_level lvl, ...) {
  pthread_mutex_lock(&log_mu);
  bool ok = i < log_count && i < 8 && log_levels[i] == lvl;
  va_list ap;
  va_start(ap, lvl);
  for (const char *piece; ok && (piece = va_arg(ap, const char *));)
    if (!strstr(log_lines[i], piece)) {
      fprintf(stderr, "log line %d lacks '%s': %s\n", i, piece, log_lines[i]);
      ok = false;
    }
  va_end(ap);
  pthread_mutex_unlock(&log_mu);
  return ok;
}

static void test_logging(void) {
  /* without a hook: RW_LOG_LEVEL decides (default warn) */
  CHECK(rw_log_enabled(RW_LOG_ERROR));
  const char *lv = getenv("RW_LOG_LEVEL");
  if (!lv || strcmp(lv, "warn") == 0) {
    CHECK(rw_log_enabled(RW_LOG_WARN));
    CHECK(!rw_log_enabled(RW_LOG_INFO) && !rw_log_enabled(RW_LOG_DEBUG));
  }
  rw_log_set_hook(log_capture, log_lines);
  log_reset();
  CHECK(rw_log_enabled(RW_LOG_DEBUG)); /* a hook hears every level */
  rw_log(RW_LOG_INFO, "hello %d from %s", 42, "test_core");
  CHECK_EQ_INT(log_count, 1);
  CHECK(logged(0, RW_LOG_INFO, "reliablewriter info: hello 42 from test_core", NULL));

  /* making an error logs it at debug, with its id */
  log_reset();
  rw_error *cause = rw_err(RW_E_NET_RESET, "peer reset after %d bytes", 7);
  CHECK_EQ_INT(log_count, 1);
  CHECK(logged(0, RW_LOG_DEBUG, rw_error_id(cause), "net.reset", "peer reset after 7 bytes", "made", NULL));
  rw_error *e = rw_err_wrap(RW_E_RETRY_BUDGET, cause, "gave up");
  CHECK(logged(1, RW_LOG_DEBUG, rw_error_id(e), NULL));

  /* rw_error_log: the id, code, where, status, message and the cause's id */
  log_reset();
  rw_error_log(RW_LOG_WARN, e, "while testing");
  CHECK_EQ_INT(log_count, 1);
  char id[32];
  snprintf(id, sizeof id, "id=%s", rw_error_id(e));
  char cause_id[40];
  snprintf(cause_id, sizeof cause_id, "cause=%s", rw_error_id(cause));
  CHECK(logged(0, RW_LOG_WARN, "reliablewriter warn: while testing", id, "code=rw.retry_budget_exhausted",
               rw_error_where(e), "gave up", cause_id, NULL));
  rw_error *h = rw_err_http(503, "busy");
  rw_error_log(RW_LOG_ERROR, h, "http");
  CHECK(logged(2, RW_LOG_ERROR, rw_error_id(h), "status=503", "code=http.503", NULL));
  rw_error_log(RW_LOG_ERROR, NULL, "nothing"); /* no error, no line */
  CHECK_EQ_INT(log_count, 3);

  /* unhooked: the hook hears nothing more */
  rw_log_set_hook(NULL, NULL);
  log_reset();
  rw_log(RW_LOG_DEBUG, "not for the hook");
  rw_error_unref(rw_err("test.quiet", "not for the hook either"));
  CHECK_EQ_INT(log_count, 0);
  rw_error_unref(e);
  rw_error_unref(h);
}

int main(void) {
  seed = ct_seed();
  RUN(test_errors);
  RUN(test_context_tree);
  RUN(test_context_deadline);
  RUN(test_context_wake);
  RUN(test_context_race);
  RUN(test_backoff);
  RUN(test_ratelimit);
  RUN(test_backoff_remaining);
  RUN(test_ratelimit_set_rate);
  RUN(test_pool_bound);
  RUN(test_pool_nothing_after_free);
  RUN(test_pool_shared);
  RUN(test_logging);
  return ct_finish("test_core");
}
