#include "ratelimit.h"

#include <math.h>
#include <stdlib.h>

#include "clock.h"

struct rw_ratelimit {
  pthread_mutex_t mu;
  double rate, burst, tokens, last;
};

rw_ratelimit *rw_ratelimit_new(double rate, double burst, rw_error **err) {
  if (!(rate > 0) || !isfinite(rate)) {
    *err = rw_err(RW_E_INVALID, "rate must be a finite number > 0 (got %g)", rate);
    return NULL;
  }
  if (!(burst >= 1) || !isfinite(burst)) {
    *err = rw_err(RW_E_INVALID, "burst must be a finite number >= 1 (got %g)", burst);
    return NULL;
  }
  rw_ratelimit *rl = calloc(1, sizeof *rl);
  if (!rl) {
    *err = rw_err(RW_E_NOMEM, "out of memory making a rate limiter");
    return NULL;
  }
  pthread_mutex_init(&rl->mu, NULL);
  rl->rate = rate;
  rl->burst = burst;
  rl->tokens = burst;
  rl->last = rw_mono_now();
  return rl;
}

void rw_ratelimit_free(rw_ratelimit *rl) {
  if (!rl) return;
  pthread_mutex_destroy(&rl->mu);
  free(rl);
}

static void refill(rw_ratelimit *rl) {
  double now = rw_mono_now();
  rl->tokens += (now - rl->last) * rl->rate;
  if (rl->tokens > rl->burst) rl->tokens = rl->burst;
  rl->last = now;
}

bool rw_ratelimit_try(rw_ratelimit *rl, double n) {
  pthread_mutex_lock(&rl->mu);
  refill(rl);
  bool ok = rl->tokens >= n;
  if (ok) rl->tokens -= n;
  pthread_mutex_unlock(&rl->mu);
  return ok;
}

rw_error *rw_ratelimit_reserve(rw_ratelimit *rl, double n, double *delay) {
  pthread_mutex_lock(&rl->mu);
  if (!(n >= 0) || n > rl->burst) {
    double burst = rl->burst;
    pthread_mutex_unlock(&rl->mu);
    return rw_err(RW_E_INVALID, "n must be in [0, burst=%g] (got %g)", burst, n);
  }
  refill(rl);
  rl->tokens -= n;
  *delay = rl->tokens < 0 ? -rl->tokens / rl->rate : 0;
  pthread_mutex_unlock(&rl->mu);
  return NULL;
}

void rw_ratelimit_cancel(rw_ratelimit *rl, double n) {
  pthread_mutex_lock(&rl->mu);
  refill(rl);
  rl->tokens += n;
  if (rl->tokens > rl->burst) rl->tokens = rl->burst;
  pthread_mutex_unlock(&rl->mu);
}

rw_error *rw_ratelimit_wait(rw_ratelimit *rl, rw_ctx *ctx, double n) {
  rw_error *e = rw_ctx_err(ctx);
  if (e) return e;
  double delay;
  if ((e = rw_ratelimit_reserve(rl, n, &delay))) return e;
  if (delay <= 0) return NULL;
  double left = rw_ctx_timeout(ctx);
  if (left >= 0 && left < delay) {
    rw_ratelimit_cancel(rl, n);
    return rw_err(RW_E_DEADLINE, "rate limit wait of %.3f s would pass the deadline (%.3f s left)",
                  delay, left);
  }
  if (rw_ctx_wait(ctx, delay) && (e = rw_ctx_err(ctx))) {
    rw_ratelimit_cancel(rl, n);
    return e;
  }
  return NULL;
}

double rw_ratelimit_tokens(rw_ratelimit *rl) {
  pthread_mutex_lock(&rl->mu);
  refill(rl);
  double t = rl->tokens;
  pthread_mutex_unlock(&rl->mu);
  return t;
}

void rw_ratelimit_set_rate(rw_ratelimit *rl, double rate) {
  pthread_mutex_lock(&rl->mu);
  refill(rl);
  if (rate > 0 && isfinite(rate)) rl->rate = rate;
  pthread_mutex_unlock(&rl->mu);
}
