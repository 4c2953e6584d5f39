/* The bounded thread pool under the writers.
 *
 * rw_pool: at most max_threads threads, started on demand (never at load),
 * idle ones exit after idle_timeout and are joined by the pool. The shared
 * pool (rw_pool_shared_acquire) is what writers use: thousands of writers share a
 * few threads. Every thread is joined by rw_pool_free / rw_pool_shared_release.
 *
 * The workgroup of the design (a limit, the first error cancels) is the Lua
 * one: coroutines on a wait set (lua/reliablewriter/workgroup.lua). */
#ifndef RW_WORKGROUP_H
#define RW_WORKGROUP_H

#include <stdbool.h>

#include "context.h"
#include "error.h"

typedef struct rw_pool rw_pool;

rw_pool *rw_pool_new(int max_threads, double idle_timeout, rw_error **err);
/* Waits for queued and running jobs, then joins every thread. */
void rw_pool_free(rw_pool *p);
/* Queues fn(arg). Never blocks on the work; false only when out of memory
 * or the pool is shutting down. */
bool rw_pool_submit(rw_pool *p, void (*fn)(void *), void *arg);
int rw_pool_threads(rw_pool *p);       /* threads alive now */
int rw_pool_max_threads(rw_pool *p);
int rw_pool_peak_threads(rw_pool *p);

/* The process-wide pool, made on first acquire (max from RW_POOL_THREADS,
 * default 16). Acquire/release are counted; the last release joins it. */
rw_pool *rw_pool_shared_acquire(void);
void rw_pool_shared_release(void);
/* The same from inside a task of the shared pool (which cannot join its own
 * threads): the last release retires the pool, whose idle threads then exit
 * at once; the next rw_pool_shared_acquire takes it back and joins them. */
void rw_pool_shared_release_from_task(void);
/* The shared pool if it exists (no reference taken), else NULL. */
rw_pool *rw_pool_shared_peek(void);

#endif
