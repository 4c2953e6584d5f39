/* Fault wrapper sink: see faulty.h. */
#include "faulty.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "core/error.h"

struct rw_faulty_counters {
  atomic_int refs;
  atomic_uint_fast64_t puts, queries, injected, partial, after;
};

rw_faulty_counters *rw_faulty_counters_new(void) {
  rw_faulty_counters *c = calloc(1, sizeof *c);
  if (c) atomic_init(&c->refs, 1);
  return c;
}

rw_faulty_counters *rw_faulty_counters_ref(rw_faulty_counters *c) {
  if (c) atomic_fetch_add(&c->refs, 1);
  return c;
}

void rw_faulty_counters_unref(rw_faulty_counters *c) {
  if (c && atomic_fetch_sub(&c->refs, 1) == 1) free(c);
}

void rw_faulty_counters_read(const rw_faulty_counters *c, rw_faulty_stats *out) {
  rw_faulty_counters *m = (rw_faulty_counters *)c;
  out->puts = atomic_load(&m->puts);
  out->queries = atomic_load(&m->queries);
  out->injected = atomic_load(&m->injected);
  out->partial = atomic_load(&m->partial);
  out->after = atomic_load(&m->after);
}

typedef struct faulty_sink {
  rw_sink base;
  rw_sink *inner;
  pthread_mutex_t rng_mu; /* puts may run at once (max_inflight > 1) */
  uint64_t rng;
  double p_error, p_partial, p_after;
  uint64_t align;
  char **codes;
  size_t ncodes;
  rw_faulty_counters *own, *shared;
} faulty_sink;

static const rw_sink_ops faulty_ops;

static uint64_t next_rand(faulty_sink *f) { /* splitmix64 */
  pthread_mutex_lock(&f->rng_mu);
  uint64_t z = (f->rng += 0x9E3779B97F4A7C15ull);
  pthread_mutex_unlock(&f->rng_mu);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}
static double uniform(faulty_sink *f) { return (double)(next_rand(f) >> 11) * 0x1.0p-53; }

static void count(faulty_sink *f, size_t field) {
  rw_faulty_counters *cs[2] = {f->own, f->shared};
  for (int i = 0; i < 2; i++)
    if (cs[i]) atomic_fetch_add((atomic_uint_fast64_t *)((char *)cs[i] + field), 1);
}
#define COUNT(f, name) count((f), offsetof(rw_faulty_counters, name))

static void faulty_destroy(rw_sink *s) {
  faulty_sink *f = (faulty_sink *)s;
  rw_sink_destroy(f->inner);
  for (size_t i = 0; i < f->ncodes; i++) free(f->codes[i]);
  free(f->codes);
  rw_faulty_counters_unref(f->own);
  rw_faulty_counters_unref(f->shared);
  pthread_mutex_destroy(&f->rng_mu);
  free(f);
}

static rw_error *check_config(const rw_faulty_config *c) {
  if (!(c->p_error >= 0 && c->p_error <= 1)) return rw_err(RW_E_INVALID, "faulty: p_error must be in [0, 1]");
  if (!(c->p_partial >= 0 && c->p_after >= 0 && c->p_partial + c->p_after <= 1))
    return rw_err(RW_E_INVALID, "faulty: p_partial and p_after must be >= 0 with a sum <= 1");
  if (c->max_inflight < 0 || c->max_inflight > 1024)
    return rw_err(RW_E_INVALID, "faulty: max_inflight must be in [0, 1024] (got %d)", c->max_inflight);
  for (size_t i = 0; c->codes && i < c->ncodes; i++)
    if (!c->codes[i] || !*c->codes[i] || strlen(c->codes[i]) >= 40)
      return rw_err(RW_E_INVALID, "faulty: code #%zu is empty or too long", i + 1);
  return NULL;
}

static bool copy_codes(faulty_sink *f, const rw_faulty_config *c) {
  static const char *const fallback[] = {"net.reset"};
  const char *const *src = c->codes && c->ncodes ? c->codes : fallback;
  size_t n = c->codes && c->ncodes ? c->ncodes : 1;
  if (!(f->codes = calloc(n, sizeof *f->codes))) return false;
  for (size_t i = 0; i < n; i++) {
    if (!(f->codes[i] = strdup(src[i]))) return false;
    f->ncodes++;
  }
  return true;
}

rw_sink *rw_faulty_sink_new(rw_sink *inner, const rw_faulty_config *cfg, rw_error **err) {
  if (!inner) {
    *err = rw_err(RW_E_INVALID, "faulty: no inner sink");
    return NULL;
  }
  if ((*err = check_config(cfg))) {
    rw_sink_destroy(inner);
    return NULL;
  }
  faulty_sink *f = calloc(1, sizeof *f);
  if (!f) {
    rw_sink_destroy(inner);
    goto nomem;
  }
  f->base.ops = &faulty_ops;
  f->base.max_inflight = cfg->max_inflight ? cfg->max_inflight : inner->max_inflight;
  pthread_mutex_init(&f->rng_mu, NULL);
  f->inner = inner;
  f->rng = cfg->seed;
  f->p_error = cfg->p_error;
  f->p_partial = cfg->p_partial;
  f->p_after = cfg->p_after;
  f->align = cfg->partial_align ? cfg->partial_align : 256 * 1024;
  f->shared = rw_faulty_counters_ref(cfg->counters);
  if (!copy_codes(f, cfg) || !(f->own = rw_faulty_counters_new())) {
    faulty_destroy(&f->base);
    goto nomem;
  }
  return &f->base;
nomem:
  *err = rw_err(RW_E_NOMEM, "faulty: out of memory");
  return NULL;
}

void rw_faulty_sink_stats(rw_sink *s, rw_faulty_stats *out) {
  memset(out, 0, sizeof *out);
  if (s->ops == &faulty_ops) rw_faulty_counters_read(((faulty_sink *)s)->own, out);
}

static rw_error *injected(faulty_sink *f, const char *op, const char *kind) {
  const char *code = f->codes[next_rand(f) % f->ncodes];
  COUNT(f, injected);
  if (strncmp(code, "http.", 5) == 0 && atoi(code + 5) >= 100)
    return rw_err_http(atoi(code + 5), "injected fault on %s (%s)", op, kind);
  return rw_err(code, "injected fault on %s (%s)", op, kind);
}

static rw_error *faulty_begin(rw_sink *s, rw_ctx *ctx) {
  faulty_sink *f = (faulty_sink *)s;
  return f->inner->ops->begin(f->inner, ctx);
}

/* Sends the first `keep` bytes of p as a non-final put. */
static rw_error *put_prefix(faulty_sink *f, rw_ctx *ctx, const rw_sink_put *p, uint64_t keep) {
  struct iovec *iov = calloc((size_t)p->iovcnt, sizeof *iov);
  if (!iov) return rw_err(RW_E_NOMEM, "faulty: out of memory");
  int n = 0;
  for (uint64_t left = keep; n < p->iovcnt && left > 0; n++) {
    iov[n] = p->iov[n];
    if (iov[n].iov_len > left) iov[n].iov_len = (size_t)left;
    left -= iov[n].iov_len;
  }
  rw_sink_put part = *p;
  part.iov = iov;
  part.iovcnt = n;
  part.len = keep;
  part.final = false;
  part.sums = NULL;
  rw_sink_result r;
  rw_error *e = f->inner->ops->put(f->inner, ctx, &part, &r);
  rw_sink_result_clear(&r);
  free(iov);
  return e;
}

static rw_error *faulty_put(rw_sink *s, rw_ctx *ctx, const rw_sink_put *p, rw_sink_result *res) {
  faulty_sink *f = (faulty_sink *)s;
  COUNT(f, puts);
  memset(res, 0, sizeof *res);
  if (!(uniform(f) < f->p_error)) return f->inner->ops->put(f->inner, ctx, p, res);
  double kind = uniform(f);
  if (kind < f->p_partial) {
    uint64_t keep = p->len > f->align ? (next_rand(f) % (p->len / f->align)) * f->align : 0;
    if (keep == p->len && keep >= f->align) keep -= f->align; /* len 0: keep 0, not -align */
    COUNT(f, partial);
    rw_error *e = keep ? put_prefix(f, ctx, p, keep) : NULL;
    return e ? e : injected(f, "put", "after a partial send");
  }
  if (kind < f->p_partial + f->p_after) {
    COUNT(f, after);
    rw_error *e = f->inner->ops->put(f->inner, ctx, p, res);
    rw_sink_result_clear(res);
    return e ? e : injected(f, "put", "reply lost");
  }
  return injected(f, "put", "before sending");
}

static rw_error *faulty_query(rw_sink *s, rw_ctx *ctx, rw_sink_result *res) {
  faulty_sink *f = (faulty_sink *)s;
  COUNT(f, queries);
  memset(res, 0, sizeof *res);
  if (uniform(f) < f->p_error) return injected(f, "query", "before sending");
  return f->inner->ops->query(f->inner, ctx, res);
}

static rw_error *faulty_abort(rw_sink *s, rw_ctx *ctx) {
  faulty_sink *f = (faulty_sink *)s;
  return f->inner->ops->abort(f->inner, ctx);
}

static const char *faulty_session(rw_sink *s) {
  faulty_sink *f = (faulty_sink *)s;
  return f->inner->ops->session(f->inner);
}

static const rw_sink_ops faulty_ops = {
    .kind = "faulty",
    .begin = faulty_begin,
    .put = faulty_put,
    .query = faulty_query,
    .abort = faulty_abort,
    .session = faulty_session,
    .destroy = faulty_destroy,
};
