/* Exponential backoff with jitter, bounded by a total budget.
 *
 * The n-th ceiling is min(max_wait, min_wait * multiplier^n). Jitter:
 *   full:         uniform in [min_wait, ceiling]
 *   equal:        ceiling/2 + uniform in [0, ceiling/2], at least min_wait
 *   decorrelated: min(max_wait, uniform in [min_wait, 3 * previous])
 *   none:         the ceiling
 * next() fails with rw.retry_budget_exhausted once the sum of the delays
 * would pass total_wait. A value type: one owner, no lock. */
#ifndef RW_BACKOFF_H
#define RW_BACKOFF_H

#include <stdbool.h>
#include <stdint.h>

#include "context.h"
#include "error.h"

typedef enum { RW_JITTER_FULL = 0, RW_JITTER_EQUAL, RW_JITTER_DECORRELATED, RW_JITTER_NONE } rw_jitter;

typedef struct rw_backoff_config {
  double min_wait;   /* seconds, > 0 */
  double max_wait;   /* >= min_wait */
  double total_wait; /* >= 0 */
  double multiplier; /* >= 1 */
  rw_jitter jitter;
  uint64_t seed;     /* 0 = from the clock */
} rw_backoff_config;

typedef struct rw_backoff {
  rw_backoff_config cfg;
  uint64_t rng;
  int attempt;
  double prev;
  double spent;
} rw_backoff;

/* Defaults: 0.1 s, 32 s, 600 s, x2, full jitter. */
rw_backoff_config rw_backoff_defaults(void);
/* NULL when valid, else rw.invalid_argument naming the field and the rule. */
rw_error *rw_backoff_config_check(const rw_backoff_config *c);
void rw_backoff_init(rw_backoff *b, const rw_backoff_config *c);
/* The next delay in seconds, or rw.retry_budget_exhausted. */
rw_error *rw_backoff_next(rw_backoff *b, double *delay);
/* next() then sleeps it; wakes at once when ctx is cancelled (returns its error). */
rw_error *rw_backoff_wait(rw_backoff *b, rw_ctx *ctx);
void rw_backoff_reset(rw_backoff *b);
/* Seconds of budget left. */
double rw_backoff_remaining(const rw_backoff *b);

/* A small seeded PRNG (splitmix64) shared by the project's seeded parts. */
uint64_t rw_rand_next(uint64_t *state);
double rw_rand_unit(uint64_t *state); /* [0, 1) */
uint64_t rw_rand_seed_from_clock(void);

#endif
