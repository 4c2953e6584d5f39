#include "backoff.h"

#include <math.h>
#include <stdatomic.h>

#include "clock.h"

uint64_t rw_rand_next(uint64_t *s) {
  uint64_t z = (*s += 0x9e3779b97f4a7c15ULL);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

double rw_rand_unit(uint64_t *s) { return (double)(rw_rand_next(s) >> 11) * 0x1.0p-53; }

uint64_t rw_rand_seed_from_clock(void) {
  static atomic_uint_fast64_t salt;
  uint64_t s = (uint64_t)(rw_real_now() * 1e9) ^ ((uint64_t)atomic_fetch_add(&salt, 1) << 48);
  return rw_rand_next(&s);
}

rw_backoff_config rw_backoff_defaults(void) {
  return (rw_backoff_config){.min_wait = 0.1, .max_wait = 32, .total_wait = 600,
                             .multiplier = 2, .jitter = RW_JITTER_FULL};
}

rw_error *rw_backoff_config_check(const rw_backoff_config *c) {
  if (!(c->min_wait > 0) || !isfinite(c->min_wait))
    return rw_err(RW_E_INVALID, "min_wait must be a finite number > 0 (got %g)", c->min_wait);
  if (!(c->max_wait >= c->min_wait) || !isfinite(c->max_wait))
    return rw_err(RW_E_INVALID, "max_wait must be finite and >= min_wait (got %g < %g)",
                  c->max_wait, c->min_wait);
  if (!(c->total_wait >= 0) || !isfinite(c->total_wait))
    return rw_err(RW_E_INVALID, "total_wait must be a finite number >= 0 (got %g)", c->total_wait);
  if (!(c->multiplier >= 1) || !isfinite(c->multiplier))
    return rw_err(RW_E_INVALID, "multiplier must be a finite number >= 1 (got %g)", c->multiplier);
  if (c->jitter < RW_JITTER_FULL || c->jitter > RW_JITTER_NONE)
    return rw_err(RW_E_INVALID, "jitter must be full, equal, decorrelated or none");
  return NULL;
}

void rw_backoff_init(rw_backoff *b, const rw_backoff_config *c) {
  b->cfg = *c;
  b->rng = c->seed ? c->seed : rw_rand_seed_from_clock();
  rw_backoff_reset(b);
}

void rw_backoff_reset(rw_backoff *b) {
  b->attempt = 0;
  b->prev = b->cfg.min_wait;
  b->spent = 0;
}

double rw_backoff_remaining(const rw_backoff *b) { return b->cfg.total_wait - b->spent; }

static double ceiling_at(const rw_backoff_config *c, int n) {
  double d = c->min_wait * pow(c->multiplier, n);
  return d < c->max_wait ? d : c->max_wait;
}

static double draw(rw_backoff *b) {
  const rw_backoff_config *c = &b->cfg;
  double cap = ceiling_at(c, b->attempt), u = rw_rand_unit(&b->rng), d;
  switch (c->jitter) {
    case RW_JITTER_EQUAL:
      d = cap / 2 + u * cap / 2;
      break;
    case RW_JITTER_DECORRELATED: {
      double hi = b->prev * 3 > c->min_wait ? b->prev * 3 : c->min_wait;
      d = c->min_wait + u * (hi - c->min_wait);
      break;
    }
    case RW_JITTER_NONE:
      d = cap;
      break;
    default:
      d = c->min_wait + u * (cap - c->min_wait);
      break;
  }
  if (d < c->min_wait) d = c->min_wait;
  if (d > c->max_wait) d = c->max_wait;
  return d;
}

rw_error *rw_backoff_next(rw_backoff *b, double *delay) {
  double d = draw(b);
  if (b->spent + d > b->cfg.total_wait)
    return rw_err(RW_E_RETRY_BUDGET,
                  "retry budget exhausted: %.3f s waited of total_wait %.3f s after %d attempts "
                  "(next delay %.3f s)",
                  b->spent, b->cfg.total_wait, b->attempt, d);
  b->spent += d;
  b->prev = d;
  if (b->attempt < 1000) b->attempt++;
  *delay = d;
  return NULL;
}

rw_error *rw_backoff_wait(rw_backoff *b, rw_ctx *ctx) {
  double d;
  rw_error *e = rw_backoff_next(b, &d);
  if (e) return e;
  if (rw_ctx_wait(ctx, d)) return rw_ctx_err(ctx);
  return NULL;
}
