/* Cancellation contexts: a reference-counted tree with deadlines and a cause.
 *
 * - Cancelling a context cancels all its descendants; a child never cancels
 *   its parent. A child's deadline is the earlier of its own and its parent's.
 * - Deadlines need no timer thread: rw_ctx_err() compares the clock, and every
 *   wait is bounded by the deadline.
 * - Waiting: rw_ctx_wait() (condvar), rw_ctx_pollfd() (an eventfd made on first
 *   use, readable once cancelled; pair it with rw_ctx_timeout() for the
 *   deadline), and wakers: callbacks run once on cancellation so that code
 *   waiting on its own condition variable wakes up.
 * - Any thread may hold a reference; the last unref frees. */
#ifndef RW_CONTEXT_H
#define RW_CONTEXT_H

#include <math.h>
#include <pthread.h>
#include <stdbool.h>

#include "error.h"

typedef struct rw_ctx rw_ctx;

rw_ctx *rw_ctx_background(void);                /* a new root, never cancelled by itself */
rw_ctx *rw_ctx_with_cancel(rw_ctx *parent);     /* NULL parent = background */
/* Deadline in monotonic seconds (rw_mono_now() + timeout). */
rw_ctx *rw_ctx_with_deadline(rw_ctx *parent, double mono_deadline);
rw_ctx *rw_ctx_with_timeout(rw_ctx *parent, double seconds);

rw_ctx *rw_ctx_ref(rw_ctx *c);
void rw_ctx_unref(rw_ctx *c); /* NULL is fine */

/* Cancels c and its descendants with cause (ownership taken; NULL = "rw.canceled").
 * Returns false if it was already cancelled (cause is then released). */
bool rw_ctx_cancel(rw_ctx *c, rw_error *cause);

/* NULL while live; else a new reference to the cancellation error
 * (code rw.canceled, rw.deadline_exceeded or the cause given to cancel). */
rw_error *rw_ctx_err(rw_ctx *c);
bool rw_ctx_done(rw_ctx *c);
double rw_ctx_deadline(const rw_ctx *c); /* monotonic; INFINITY when none */
/* Seconds until the deadline (>= 0), or -1 when there is none. */
double rw_ctx_timeout(const rw_ctx *c);

/* Blocks until cancelled, the deadline, or `timeout` seconds (< 0 = no limit).
 * Returns true when the context is done. */
bool rw_ctx_wait(rw_ctx *c, double timeout);

/* An eventfd that becomes readable once c is cancelled by rw_ctx_cancel
 * (deadlines: use rw_ctx_timeout). -1 on failure. Owned by c. */
int rw_ctx_pollfd(rw_ctx *c);

/* Wakers. The node is owned by the caller and must stay valid until removed.
 * fn runs at most once, on the cancelling thread, with no context lock held.
 * rw_ctx_remove_waker waits for a running fn to return, so never call it while
 * holding a lock that fn takes. */
typedef struct rw_ctx_waker {
  void (*fn)(void *arg);
  void *arg;
  struct rw_ctx_waker *next, *prev;
  int state; /* private */
} rw_ctx_waker;
/* Returns false (and does not register) if c is already cancelled. */
bool rw_ctx_add_waker(rw_ctx *c, rw_ctx_waker *w);
void rw_ctx_remove_waker(rw_ctx *c, rw_ctx_waker *w);

/* Waits on the caller's mutex and condition (mutex held on entry and return)
 * until pred(arg) is true, ctx is done, or the monotonic time `until`.
 * Returns NULL when pred is true, else the ctx error or rw.deadline_exceeded
 * for `until`. cond must use CLOCK_MONOTONIC (rw_cond_init). */
rw_error *rw_ctx_cond_wait(rw_ctx *c, pthread_mutex_t *m, pthread_cond_t *cond,
                           bool (*pred)(void *), void *arg, double until);

/* Number of contexts alive in the process (tests use it to find leaks). */
long rw_ctx_live_count(void);

#endif
