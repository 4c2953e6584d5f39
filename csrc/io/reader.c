/* ReliableReader: see reader.h. */
#include "reader.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <libgen.h>
#include <math.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/checksum.h"
#include "core/clock.h"
#include "core/workgroup.h"

#define TTFB_SAMPLES 128
#define TTFB_MIN_SAMPLES 10
#define TTFB_INITIAL 1.0 /* hedge_after before enough samples */
#define WINDOW_SLOTS 10
#define MAX_IDLE_CLIENTS 16

struct rw_reader {
  atomic_int refs;
  pthread_mutex_t mu;
  rw_reader_config cfg;
  rw_gcs_source *src;
  rw_http_dialer dialer;
  bool has_dialer;
  rw_ctx *ctx;
  rw_pool *pool;
  rw_http *idle[MAX_IDLE_CLIENTS]; /* clients kept for reuse (their connections) */
  int nidle;
  /* under mu */
  bool pinned;
  rw_gcs_meta meta;
  rw_reader_stats stats;
  int hedges_in_flight;
  double ttfb[TTFB_SAMPLES];
  int nttfb, ttfb_next;
  double p95;
  bool p95_valid;
  struct {
    double start;
    uint64_t requests, hedges;
  } slots[WINDOW_SLOTS];
};

typedef struct attempt attempt;

struct rw_read_op {
  atomic_int refs;
  pthread_mutex_t mu;
  pthread_cond_t cond;
  rw_reader *r;
  rw_ctx *ctx; /* child of the reader's */
  unsigned char *buf;
  int fd;
  uint64_t file_off, off, len;
  int efd;
  /* under mu */
  uint64_t got;
  uint32_t crc;
  int owner, next_id, running;
  bool done, checked;
  rw_error *err;
  attempt *attempts;
};

struct attempt {
  attempt *next;
  rw_read_op *op;
  rw_ctx *ctx; /* child of the op's: cancelled when another attempt wins */
  int id;
  bool hedge, hedged, first;
  bool left; /* counted out of op->running by keep_going */
  double started;
  rw_backoff backoff;
};

static _Thread_local bool in_task;

/* ---- configuration ---- */

rw_reader_config rw_reader_defaults(void) {
  rw_reader_config c = {.connect_timeout = 10, .stall_timeout = 30, .retry = rw_backoff_defaults(),
                        .hedge_after = 0, .hedge_floor = 0.05, .max_hedges = 2,
                        .hedge_budget = 0.1, .hedge_window = 10};
  return c;
}

static void fill_defaults(rw_reader_config *c) {
  rw_reader_config d = rw_reader_defaults();
  if (c->connect_timeout <= 0) c->connect_timeout = d.connect_timeout;
  if (c->stall_timeout <= 0) c->stall_timeout = d.stall_timeout;
  if (c->retry.min_wait <= 0) c->retry = d.retry;
  if (c->hedge_floor <= 0) c->hedge_floor = d.hedge_floor;
  if (c->max_hedges < 0) c->max_hedges = d.max_hedges;
  if (c->hedge_budget < 0) c->hedge_budget = d.hedge_budget;
  if (c->hedge_window <= 0) c->hedge_window = d.hedge_window;
}

static rw_error *check_config(const rw_reader_config *c) {
  if (c->generation < 0)
    return rw_err(RW_E_INVALID, "reader: generation must be >= 1 (got %" PRId64 ")", c->generation);
  if (c->hedge_after < 0) return rw_err(RW_E_INVALID, "reader: hedge_after must be >= 0 (got %g)", c->hedge_after);
  return rw_backoff_config_check(&c->retry);
}

/* ---- reader lifetime ---- */

static void reader_destroy(rw_reader *r) {
  for (int i = 0; i < r->nidle; i++) rw_http_free(r->idle[i]);
  rw_gcs_source_free(r->src);
  if (r->has_dialer) rw_http_dialer_release(&r->dialer);
  rw_gcs_meta_clear(&r->meta);
  rw_ctx_unref(r->ctx);
  pthread_mutex_destroy(&r->mu);
  bool from_task = in_task;
  bool had_pool = r->pool != NULL;
  free(r);
  if (had_pool && from_task) rw_pool_shared_release_from_task();
  else if (had_pool) rw_pool_shared_release();
}

static rw_reader *reader_ref(rw_reader *r) {
  atomic_fetch_add(&r->refs, 1);
  return r;
}

static void reader_unref(rw_reader *r) {
  if (r && atomic_fetch_sub(&r->refs, 1) == 1) reader_destroy(r);
}

rw_reader *rw_reader_new(rw_ctx *ctx, const rw_reader_config *cfg, rw_error **err) {
  rw_reader *r = calloc(1, sizeof *r);
  if (!r) {
    rw_http_dialer_release(cfg->dialer);
    *err = rw_err(RW_E_NOMEM, "reader: out of memory");
    return NULL;
  }
  atomic_init(&r->refs, 1);
  pthread_mutex_init(&r->mu, NULL);
  r->cfg = *cfg;
  if (cfg->dialer) {
    r->dialer = *cfg->dialer;
    r->has_dialer = true;
  }
  r->cfg.dialer = NULL;
  r->cfg.source = (rw_gcs_source_config){0};
  fill_defaults(&r->cfg);
  r->ctx = rw_ctx_with_cancel(ctx);
  if (!r->ctx) *err = rw_err(RW_E_NOMEM, "reader: out of memory");
  else if (!(*err = check_config(&r->cfg)) && (r->src = rw_gcs_source_new(&cfg->source, err)) &&
           !(r->pool = rw_pool_shared_acquire()))
    *err = rw_err(RW_E_NOMEM, "reader: cannot make the shared pool");
  if (*err) {
    reader_destroy(r);
    return NULL;
  }
  if (cfg->generation > 0) r->meta.generation = cfg->generation;
  return r;
}

void rw_reader_free(rw_reader *r) {
  if (!r) return;
  rw_ctx_cancel(r->ctx, rw_err(RW_E_CLOSED, "the reader of %s was closed", rw_gcs_source_name(r->src)));
  reader_unref(r);
}

/* ---- HTTP clients (each used by one task at a time) ---- */

static rw_http *client_get(rw_reader *r, rw_error **err) {
  pthread_mutex_lock(&r->mu);
  rw_http *h = r->nidle > 0 ? r->idle[--r->nidle] : NULL;
  pthread_mutex_unlock(&r->mu);
  if (h) return h;
  rw_http_dialer borrowed = r->dialer; /* the reader keeps the reference */
  borrowed.release = NULL;
  rw_http_config hc = {.connect_timeout = r->cfg.connect_timeout,
                       .dialer = r->has_dialer ? &borrowed : NULL,
                       .ca_file = rw_gcs_source_ca_file(r->src)};
  return rw_http_new(&hc, err);
}

static void client_put(rw_reader *r, rw_http *h) {
  if (!h) return;
  pthread_mutex_lock(&r->mu);
  if (r->nidle < MAX_IDLE_CLIENTS) {
    r->idle[r->nidle++] = h;
    h = NULL;
  }
  pthread_mutex_unlock(&r->mu);
  rw_http_free(h);
}

/* ---- time to first byte, hedge budget (r->mu held) ---- */

static int cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

static double hedge_after_locked(rw_reader *r) {
  if (r->cfg.hedge_after > 0) return r->cfg.hedge_after;
  if (r->nttfb < TTFB_MIN_SAMPLES) return TTFB_INITIAL > r->cfg.hedge_floor ? TTFB_INITIAL : r->cfg.hedge_floor;
  if (!r->p95_valid) {
    double s[TTFB_SAMPLES];
    memcpy(s, r->ttfb, (size_t)r->nttfb * sizeof *s);
    qsort(s, (size_t)r->nttfb, sizeof *s, cmp_double);
    r->p95 = s[(r->nttfb * 95 + 99) / 100 - 1];
    r->p95_valid = true;
  }
  return r->p95 > r->cfg.hedge_floor ? r->p95 : r->cfg.hedge_floor;
}

static void add_ttfb(rw_reader *r, double t) {
  r->ttfb[r->ttfb_next] = t;
  r->ttfb_next = (r->ttfb_next + 1) % TTFB_SAMPLES;
  if (r->nttfb < TTFB_SAMPLES) r->nttfb++;
  r->p95_valid = false;
}

/* The window's slot for now, emptied when it is stale. */
static int window_slot(rw_reader *r, double now) {
  double width = r->cfg.hedge_window / WINDOW_SLOTS;
  double start = floor(now / width) * width;
  int i = (int)fmod(floor(now / width), WINDOW_SLOTS);
  if (r->slots[i].start != start) {
    r->slots[i].start = start;
    r->slots[i].requests = r->slots[i].hedges = 0;
  }
  return i;
}

static void count_request(rw_reader *r, bool hedge) {
  int i = window_slot(r, rw_mono_now());
  if (hedge) r->slots[i].hedges++;
  else r->slots[i].requests++;
  r->stats.requests++;
  if (hedge) r->stats.hedges_issued++;
}

static bool hedge_allowed(rw_reader *r) {
  if (r->cfg.max_hedges == 0 || r->hedges_in_flight >= r->cfg.max_hedges) return false;
  double now = rw_mono_now();
  window_slot(r, now);
  uint64_t req = 0, hedges = 0;
  for (int i = 0; i < WINDOW_SLOTS; i++)
    if (now - r->slots[i].start < r->cfg.hedge_window) {
      req += r->slots[i].requests;
      hedges += r->slots[i].hedges;
    }
  return (double)(hedges + 1) <= 1.0 + r->cfg.hedge_budget * (double)req;
}

/* ---- stat and pinning ---- */

/* Pins the generation from m (the first stat wins), or checks m against it. */
static rw_error *pin(rw_reader *r, const rw_gcs_meta *m) {
  rw_error *e = NULL;
  pthread_mutex_lock(&r->mu);
  if (!r->pinned) {
    char *json = m->json ? strdup(m->json) : NULL;
    r->meta = *m;
    r->meta.json = json;
    r->pinned = true;
  } else if (r->meta.generation != m->generation) {
    e = rw_err(RW_E_GENERATION_CHANGED, "%s is now generation %" PRId64 "; the reader is pinned to "
               "generation %" PRId64, rw_gcs_source_name(r->src), m->generation, r->meta.generation);
  }
  pthread_mutex_unlock(&r->mu);
  return e;
}

static rw_error *explain_not_found(rw_reader *r, rw_http *h, rw_ctx *ctx, rw_error *e);

static rw_error *ensure_pinned(rw_reader *r, rw_http *h, rw_ctx *ctx) {
  pthread_mutex_lock(&r->mu);
  bool pinned = r->pinned;
  int64_t gen = r->meta.generation;
  pthread_mutex_unlock(&r->mu);
  if (pinned) return NULL;
  rw_gcs_meta m;
  rw_error *e = rw_gcs_source_stat(r->src, h, ctx, gen, r->cfg.stall_timeout, &m);
  if (!e) e = pin(r, &m);
  else if (rw_error_is(e, RW_E_NOT_FOUND)) e = explain_not_found(r, h, ctx, e);
  rw_gcs_meta_clear(&m);
  return e;
}

/* A 404 for the pinned (or asked for) generation: overwritten
 * (generation_changed) or gone (e stays). */
static rw_error *explain_not_found(rw_reader *r, rw_http *h, rw_ctx *ctx, rw_error *e) {
  pthread_mutex_lock(&r->mu);
  int64_t want = r->meta.generation;
  pthread_mutex_unlock(&r->mu);
  rw_gcs_meta m;
  rw_error *se = want > 0 ? rw_gcs_source_stat(r->src, h, ctx, 0, r->cfg.stall_timeout, &m) : NULL;
  if (want > 0 && !se && m.generation != want) {
    rw_error_unref(e);
    e = rw_err(RW_E_GENERATION_CHANGED, "%s is now generation %" PRId64 "; the reader is pinned to "
               "generation %" PRId64, rw_gcs_source_name(r->src), m.generation, want);
  }
  if (want > 0 && !se) rw_gcs_meta_clear(&m);
  rw_error_unref(se);
  return e;
}

rw_error *rw_reader_stat(rw_reader *r, rw_ctx *ctx, rw_gcs_meta *out) {
  memset(out, 0, sizeof *out);
  rw_error *e = NULL;
  rw_http *h = client_get(r, &e);
  if (!h) return e;
  rw_ctx *c = ctx ? rw_ctx_ref(ctx) : rw_ctx_ref(r->ctx);
  e = ensure_pinned(r, h, c);
  client_put(r, h);
  rw_ctx_unref(c);
  if (e) return e;
  pthread_mutex_lock(&r->mu);
  *out = r->meta;
  out->json = r->meta.json ? strdup(r->meta.json) : NULL;
  pthread_mutex_unlock(&r->mu);
  return NULL;
}

void rw_reader_get_stats(rw_reader *r, rw_reader_stats *out) {
  pthread_mutex_lock(&r->mu);
  *out = r->stats;
  out->hedge_after = hedge_after_locked(r);
  pthread_mutex_unlock(&r->mu);
}

/* ---- read ops ---- */

static void op_unref(rw_read_op *op) {
  if (!op || atomic_fetch_sub(&op->refs, 1) != 1) return;
  rw_error_unref(op->err);
  rw_ctx_unref(op->ctx);
  if (op->efd >= 0) close(op->efd);
  pthread_mutex_destroy(&op->mu);
  pthread_cond_destroy(&op->cond);
  rw_reader *r = op->r;
  free(op);
  reader_unref(r);
}

void rw_read_op_unref(rw_read_op *op) { op_unref(op); }

static void cancel_others_locked(rw_read_op *op, int keep) {
  for (attempt *a = op->attempts; a; a = a->next)
    if (a->id != keep) rw_ctx_cancel(a->ctx, NULL);
}

/* Ends the op (once) with e (taken; NULL = success). */
static void op_finish(rw_read_op *op, rw_error *e) {
  pthread_mutex_lock(&op->mu);
  if (op->done) {
    pthread_mutex_unlock(&op->mu);
    rw_error_unref(e);
    return;
  }
  op->done = true;
  op->err = e;
  cancel_others_locked(op, -1);
  pthread_cond_broadcast(&op->cond);
  pthread_mutex_unlock(&op->mu);
  uint64_t one = 1;
  if (write(op->efd, &one, sizeof one) < 0) { /* an eventfd write fails only on overflow */
  }
}

static bool op_done_pred(void *arg) { return ((rw_read_op *)arg)->done; }

bool rw_read_op_done(rw_read_op *op) {
  pthread_mutex_lock(&op->mu);
  bool d = op->done;
  pthread_mutex_unlock(&op->mu);
  return d;
}

int rw_read_op_pollfd(rw_read_op *op) { return op->efd; }

bool rw_read_op_wait(rw_read_op *op, rw_ctx *ctx, double timeout) {
  rw_ctx *c = ctx ? rw_ctx_ref(ctx) : rw_ctx_background();
  double until = timeout < 0 ? INFINITY : rw_mono_now() + timeout;
  pthread_mutex_lock(&op->mu);
  rw_error *e = rw_ctx_cond_wait(c, &op->mu, &op->cond, op_done_pred, op, until);
  bool d = op->done;
  pthread_mutex_unlock(&op->mu);
  rw_error_unref(e);
  rw_ctx_unref(c);
  return d;
}

void rw_read_op_cancel(rw_read_op *op, rw_error *cause) {
  op_finish(op, cause ? cause : rw_err(RW_E_CANCELED, "the read was cancelled"));
}

rw_error *rw_read_op_error(rw_read_op *op) {
  pthread_mutex_lock(&op->mu);
  rw_error *e = op->err ? rw_error_ref(op->err) : NULL;
  pthread_mutex_unlock(&op->mu);
  return e;
}

uint32_t rw_read_op_crc32c(rw_read_op *op) {
  pthread_mutex_lock(&op->mu);
  uint32_t c = op->crc;
  pthread_mutex_unlock(&op->mu);
  return c;
}

/* ---- one attempt's callbacks ---- */

static bool put_bytes(rw_read_op *op, uint64_t at, const char *p, size_t n) {
  if (op->buf) {
    memcpy(op->buf + at, p, n);
    return true;
  }
  while (n > 0) {
    ssize_t w = pwrite(op->fd, p, n, (off_t)(op->file_off + at));
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) return false;
    p += w, n -= (size_t)w, at += (uint64_t)w;
  }
  return true;
}

static uint64_t op_got(rw_read_op *op) {
  pthread_mutex_lock(&op->mu);
  uint64_t g = op->got;
  pthread_mutex_unlock(&op->mu);
  return g;
}

/* The first byte decides the owner; only the owner writes, under op->mu,
 * so that nothing is written once the op is done (the caller may free the
 * buffer then). */
static bool on_body(void *ud, const char *p, size_t n) {
  attempt *a = ud;
  rw_read_op *op = a->op;
  rw_reader *r = op->r;
  pthread_mutex_lock(&op->mu);
  bool mine = !op->done && (op->owner == 0 || op->owner == a->id);
  bool won = mine && op->owner == 0;
  if (won) {
    op->owner = a->id;
    cancel_others_locked(op, a->id);
  }
  errno = 0;
  bool wrote = mine && put_bytes(op, op->got, p, n);
  int err = errno;
  if (wrote) {
    op->crc = rw_crc32c(op->crc, p, n);
    op->got += n;
  }
  pthread_mutex_unlock(&op->mu);
  if (mine && !wrote)
    op_finish(op, rw_err(RW_E_IO, "read_to_file: cannot write %zu bytes at %" PRIu64 ": %s", n,
                         op->file_off + op_got(op), strerror(err ? err : EIO)));
  pthread_mutex_lock(&r->mu);
  if (won && a->first) add_ttfb(r, rw_mono_now() - a->started);
  if (won && a->hedge) r->stats.hedges_won++;
  if (wrote) r->stats.bytes += n;
  pthread_mutex_unlock(&r->mu);
  a->first = false;
  return wrote;
}

static void attempt_main(void *arg);

static attempt *attempt_new(rw_read_op *op, bool hedge) {
  attempt *a = calloc(1, sizeof *a);
  if (!a) return NULL;
  if (!(a->ctx = rw_ctx_with_cancel(op->ctx))) {
    free(a);
    return NULL;
  }
  a->op = op;
  a->hedge = hedge;
  rw_backoff_init(&a->backoff, &op->r->cfg.retry);
  atomic_fetch_add(&op->refs, 1);
  pthread_mutex_lock(&op->mu);
  a->id = ++op->next_id;
  a->next = op->attempts;
  op->attempts = a;
  op->running++;
  pthread_mutex_unlock(&op->mu);
  return a;
}

static void attempt_free(attempt *a) {
  rw_read_op *op = a->op;
  pthread_mutex_lock(&op->mu);
  for (attempt **pp = &op->attempts; *pp; pp = &(*pp)->next)
    if (*pp == a) {
      *pp = a->next;
      break;
    }
  if (!a->left) op->running--;
  pthread_mutex_unlock(&op->mu);
  if (a->hedge) {
    pthread_mutex_lock(&op->r->mu);
    op->r->hedges_in_flight--;
    pthread_mutex_unlock(&op->r->mu);
  }
  rw_ctx_unref(a->ctx);
  free(a);
  op_unref(op);
}

/* Every ~50 ms while a request waits: hedge it once hedge_after passed
 * without a first byte, within the budget. */
static void on_tick(void *ud) {
  attempt *a = ud;
  rw_read_op *op = a->op;
  rw_reader *r = op->r;
  if (a->hedge || a->hedged || !a->first) return;
  pthread_mutex_lock(&op->mu);
  bool open = !op->done && op->owner == 0;
  pthread_mutex_unlock(&op->mu);
  if (!open) return;
  pthread_mutex_lock(&r->mu);
  bool go = rw_mono_now() - a->started >= hedge_after_locked(r) && hedge_allowed(r);
  if (go) r->hedges_in_flight++;
  pthread_mutex_unlock(&r->mu);
  if (!go) return;
  a->hedged = true;
  attempt *h = attempt_new(op, true);
  if (h && rw_pool_submit(r->pool, attempt_main, h)) return;
  if (h) attempt_free(h);
  else {
    pthread_mutex_lock(&r->mu);
    r->hedges_in_flight--;
    pthread_mutex_unlock(&r->mu);
  }
}

/* ---- the attempt loop ---- */

static rw_error *check_range(rw_read_op *op) {
  rw_reader *r = op->r;
  pthread_mutex_lock(&r->mu);
  uint64_t size = r->meta.size;
  int64_t gen = r->meta.generation;
  pthread_mutex_unlock(&r->mu);
  if (op->off > size || op->len > size - op->off)
    return rw_err(RW_E_INVALID, "read of bytes [%" PRIu64 ", %" PRIu64 ") is past the end of %s: its size is "
                  "%" PRIu64 " bytes (generation %" PRId64 ")", op->off, op->off + op->len,
                  rw_gcs_source_name(r->src), size, gen);
  return NULL;
}

/* One request for what is still missing. NULL when the op is complete. */
static rw_error *request_rest(attempt *a, rw_http *h, bool *complete) {
  rw_read_op *op = a->op;
  rw_reader *r = op->r;
  pthread_mutex_lock(&op->mu);
  uint64_t from = op->got;
  bool done = op->done;
  pthread_mutex_unlock(&op->mu);
  *complete = !done && from == op->len;
  if (done || *complete) return NULL;
  pthread_mutex_lock(&r->mu);
  int64_t gen = r->meta.generation;
  count_request(r, a->hedge);
  pthread_mutex_unlock(&r->mu);
  a->started = rw_mono_now();
  a->first = true;
  a->hedged = false;
  rw_gcs_get g = {.off = op->off + from, .len = op->len - from, .generation = gen,
                  .stall_timeout = r->cfg.stall_timeout, .on_body = on_body, .on_tick = on_tick, .ud = a};
  rw_error *e = rw_gcs_source_get(r->src, h, a->ctx, &g);
  if (e && rw_error_is(e, RW_E_NOT_FOUND)) e = explain_not_found(r, h, a->ctx, e);
  *complete = !e;
  return e;
}

/* A retryable failure: false when this attempt leaves the rest to another
 * one still running (a->left), or when the backoff ends (budget: *e becomes
 * rw.retry_budget_exhausted; a cancelled context). Else it has backed off
 * (the budget is reset after progress) and tries again. */
static bool keep_going(attempt *a, uint64_t before, rw_error **e) {
  rw_read_op *op = a->op;
  pthread_mutex_lock(&op->mu);
  bool owner = op->owner == a->id;
  if (owner) op->owner = 0;
  a->left = !owner && op->running > 1;
  if (a->left) op->running--;
  uint64_t now_got = op->got;
  pthread_mutex_unlock(&op->mu);
  if (a->left) return false;
  if (now_got > before) rw_backoff_reset(&a->backoff);
  pthread_mutex_lock(&op->r->mu);
  op->r->stats.retries++;
  pthread_mutex_unlock(&op->r->mu);
  rw_error *be = rw_backoff_wait(&a->backoff, a->ctx);
  if (!be) return true;
  if (rw_error_is(be, RW_E_RETRY_BUDGET)) {
    rw_error *cause = *e;
    *e = rw_err_wrap(RW_E_RETRY_BUDGET, cause, "read of %s gave up (retry budget spent): %s",
                     rw_gcs_source_name(op->r->src), rw_error_message(cause));
  }
  rw_error_unref(be);
  return false;
}


/* Pins the generation and checks the range once per op. */
static rw_error *prepare(attempt *a, rw_http *h) {
  rw_read_op *op = a->op;
  rw_error *e = ensure_pinned(op->r, h, a->ctx);
  if (e) return e;
  pthread_mutex_lock(&op->mu);
  bool checked = op->checked;
  pthread_mutex_unlock(&op->mu);
  if (checked || (e = check_range(op))) return e;
  pthread_mutex_lock(&op->mu);
  op->checked = true;
  pthread_mutex_unlock(&op->mu);
  return NULL;
}

/* After a failed request: ends the op, leaves quietly, or (true) retries. */
static bool after_failure(attempt *a, uint64_t before, rw_error *e) {
  rw_read_op *op = a->op;
  bool again = rw_error_retryable(e) && !rw_ctx_done(a->ctx) && keep_going(a, before, &e);
  if (again) {
    rw_error_unref(e);
    return true;
  }
  rw_error *oe = rw_ctx_err(op->ctx);
  if (oe) { /* the op was cancelled (reader closed, caller's context) */
    op_finish(op, oe);
    rw_error_unref(e);
  } else if (a->left || rw_ctx_done(a->ctx)) { /* another attempt goes on, or won */
    rw_error_unref(e);
  } else {
    op_finish(op, e);
  }
  return false;
}

static void attempt_run(attempt *a, rw_http *h) {
  for (;;) {
    bool complete = false;
    uint64_t before = op_got(a->op);
    rw_error *e = prepare(a, h);
    if (!e) e = request_rest(a, h, &complete);
    if (!e) {
      if (complete) op_finish(a->op, NULL);
      return;
    }
    if (!after_failure(a, before, e)) return;
  }
}

static void attempt_main(void *arg) {
  attempt *a = arg;
  in_task = true;
  rw_error *e = NULL;
  rw_http *h = client_get(a->op->r, &e);
  if (h) attempt_run(a, h);
  else op_finish(a->op, e);
  client_put(a->op->r, h);
  attempt_free(a);
  in_task = false;
}

rw_read_op *rw_reader_start(rw_reader *r, uint64_t off, uint64_t len, void *buf, int fd,
                            uint64_t file_off, rw_error **err) {
  rw_read_op *op = calloc(1, sizeof *op);
  if (!op) return (*err = rw_err(RW_E_NOMEM, "read: out of memory")), NULL;
  atomic_init(&op->refs, 1);
  pthread_mutex_init(&op->mu, NULL);
  rw_cond_init(&op->cond);
  op->r = reader_ref(r);
  op->buf = buf;
  op->fd = fd;
  op->file_off = file_off;
  op->off = off;
  op->len = len;
  op->efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  op->ctx = rw_ctx_with_cancel(r->ctx);
  if (op->efd < 0 || !op->ctx) {
    *err = op->efd < 0 ? rw_err(RW_E_RESOURCE, "read: cannot make an eventfd: %s", strerror(errno))
                       : rw_err(RW_E_NOMEM, "read: out of memory");
    op_unref(op);
    return NULL;
  }
  attempt *a = attempt_new(op, false);
  if (!a || !rw_pool_submit(r->pool, attempt_main, a)) {
    if (a) attempt_free(a);
    *err = rw_err(RW_E_NOMEM, "read: cannot start the request");
    op_unref(op);
    return NULL;
  }
  return op;
}

/* ---- blocking forms ---- */

static rw_error *run_op(rw_read_op *op, rw_ctx *ctx) {
  if (!rw_read_op_wait(op, ctx, -1)) {
    rw_error *ce = ctx ? rw_ctx_err(ctx) : NULL;
    rw_read_op_cancel(op, ce ? rw_error_ref(ce) : NULL);
    rw_error_unref(ce);
  }
  /* the op is done; its tasks may still be leaving, but no longer write */
  return rw_read_op_error(op);
}

rw_error *rw_reader_read_at(rw_reader *r, rw_ctx *ctx, uint64_t off, uint64_t len, void *buf) {
  rw_error *e = NULL;
  rw_read_op *op = rw_reader_start(r, off, len, buf, -1, 0, &e);
  if (!op) return e;
  e = run_op(op, ctx);
  op_unref(op);
  return e;
}

rw_error *rw_reader_check_full(rw_reader *r, uint64_t off, uint64_t len, uint32_t crc) {
  pthread_mutex_lock(&r->mu);
  bool full = r->pinned && off == 0 && len == r->meta.size && r->meta.has_crc32c;
  uint32_t want = r->meta.crc32c;
  int64_t gen = r->meta.generation;
  pthread_mutex_unlock(&r->mu);
  if (!full || crc == want) return NULL;
  char got_b64[9], want_b64[9];
  rw_crc32c_base64(crc, got_b64);
  rw_crc32c_base64(want, want_b64);
  return rw_err(RW_E_CHECKSUM, "read of %s (generation %" PRId64 ", %" PRIu64 " bytes): the bytes' CRC32C "
                "is %s, the object's metadata says %s", rw_gcs_source_name(r->src), gen, len, got_b64, want_b64);
}

/* ---- files ---- */

struct rw_read_file {
  char *target, *tmp, *dir;
  int fd;
};

void rw_read_file_abort(rw_read_file *f) {
  if (!f) return;
  if (f->fd >= 0) close(f->fd);
  if (f->tmp) unlink(f->tmp);
  free(f->target);
  free(f->tmp);
  free(f->dir);
  free(f);
}

int rw_read_file_fd(const rw_read_file *f) { return f->fd; }

static rw_error *file_error(const char *what, const char *path, int err) {
  return rw_err(err == EMFILE || err == ENFILE ? RW_E_RESOURCE : RW_E_IO, "read_to_file: %s '%s': %s", what,
                path, strerror(err));
}

/* The target must be absent or a regular file (never replace a FIFO, device
 * or directory), in a folder we can write. */
static rw_error *check_target(const char *path) {
  struct stat st;
  if (!*path) return rw_err(RW_E_INVALID, "read_to_file: path is empty");
  if (stat(path, &st) == 0 && !S_ISREG(st.st_mode))
    return rw_err(RW_E_INVALID, "read_to_file: '%s' exists and is not a regular file", path);
  return NULL;
}

rw_read_file *rw_read_file_open(const char *path, rw_error **err) {
  if ((*err = check_target(path))) return NULL;
  rw_read_file *f = calloc(1, sizeof *f);
  char *copy1 = strdup(path), *copy2 = strdup(path);
  if (!f || !copy1 || !copy2) goto nomem;
  f->fd = -1;
  f->target = strdup(path);
  f->dir = strdup(dirname(copy1));
  uint64_t rnd = 0;
  if (getrandom(&rnd, sizeof rnd, 0) != (ssize_t)sizeof rnd) rnd = (uint64_t)(uintptr_t)f ^ (uint64_t)rw_mono_now();
  if (!f->target || !f->dir || asprintf(&f->tmp, "%s/.%s.%016" PRIx64 ".rwtmp", f->dir, basename(copy2), rnd) < 0) {
    f->tmp = NULL;
    goto nomem;
  }
  f->fd = open(f->tmp, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0666);
  if (f->fd < 0) {
    *err = file_error("cannot create a temporary file beside", path, errno);
    free(f->tmp);
    f->tmp = NULL;
    goto fail;
  }
  free(copy1);
  free(copy2);
  return f;
nomem:
  *err = rw_err(RW_E_NOMEM, "read_to_file: out of memory");
fail:
  free(copy1);
  free(copy2);
  rw_read_file_abort(f);
  return NULL;
}

rw_error *rw_read_file_commit(rw_read_file *f) {
  rw_error *e = NULL;
  if (fsync(f->fd) != 0) e = file_error("cannot fsync", f->tmp, errno);
  if (!e && rename(f->tmp, f->target) != 0) e = file_error("cannot rename over", f->target, errno);
  if (e) {
    rw_read_file_abort(f);
    return e;
  }
  free(f->tmp);
  f->tmp = NULL; /* renamed: nothing to remove */
  int dfd = open(f->dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd >= 0) {
    if (fsync(dfd) != 0 && errno != EINVAL) e = file_error("cannot fsync the folder of", f->target, errno);
    close(dfd);
  }
  rw_read_file_abort(f);
  return e;
}

rw_error *rw_reader_read_to_file(rw_reader *r, rw_ctx *ctx, const char *path, uint64_t off, int64_t len) {
  rw_gcs_meta m;
  rw_error *e = rw_reader_stat(r, ctx, &m);
  if (e) return e;
  uint64_t size = m.size;
  rw_gcs_meta_clear(&m);
  uint64_t n = len < 0 ? (off <= size ? size - off : 0) : (uint64_t)len;
  rw_read_file *f = rw_read_file_open(path, &e);
  if (!f) return e;
  rw_read_op *op = rw_reader_start(r, off, n, NULL, rw_read_file_fd(f), 0, &e);
  if (op) {
    e = run_op(op, ctx);
    if (!e) e = rw_reader_check_full(r, off, n, rw_read_op_crc32c(op));
    op_unref(op);
  }
  if (e) {
    rw_read_file_abort(f);
    return e;
  }
  return rw_read_file_commit(f);
}
