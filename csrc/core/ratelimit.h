/* Token bucket: `rate` tokens a second, at most `burst` held. Thread safe.
 * Reservations may drive the bucket negative: the reserver waits the debt off. */
#ifndef RW_RATELIMIT_H
#define RW_RATELIMIT_H

#include <pthread.h>
#include <stdbool.h>

#include "context.h"
#include "error.h"

typedef struct rw_ratelimit rw_ratelimit;

rw_ratelimit *rw_ratelimit_new(double rate, double burst, rw_error **err);
void rw_ratelimit_free(rw_ratelimit *rl);
/* Takes n tokens if they are there now. */
bool rw_ratelimit_try(rw_ratelimit *rl, double n);
/* Takes n tokens now, possibly on credit: returns the seconds to wait before
 * acting (0 when none). n must be <= burst. */
rw_error *rw_ratelimit_reserve(rw_ratelimit *rl, double n, double *delay);
/* Gives back n reserved tokens (a reservation that will not be used). */
void rw_ratelimit_cancel(rw_ratelimit *rl, double n);
/* Reserves and sleeps; on cancellation, gives the tokens back. Fails at once
 * with rw.deadline_exceeded when the wait would pass ctx's deadline. */
rw_error *rw_ratelimit_wait(rw_ratelimit *rl, rw_ctx *ctx, double n);
double rw_ratelimit_tokens(rw_ratelimit *rl);
void rw_ratelimit_set_rate(rw_ratelimit *rl, double rate);

#endif
