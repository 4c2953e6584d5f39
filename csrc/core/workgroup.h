/* A bounded thread pool and, on top of it, workgroups.
 *
 * rw_pool: at most max_threads threads, started on demand (never at load),
 * idle ones exit after idle_timeout and are joined by the pool. The shared
 * pool (rw_pool_shared) is what writers use: thousands of writers share a
 * few threads. Every thread is joined by rw_pool_free / rw_pool_shared_release.
 *
 * rw_workgroup: wait group + semaphore + first error (errgroup with a limit).
 * go() waits for a slot when `limit` tasks run; the first task error cancels
 * the group's context; wait() returns once every task has returned. */
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

typedef struct rw_workgroup rw_workgroup;
typedef rw_error *(*rw_task_fn)(rw_ctx *ctx, void *arg);

/* parent NULL = background; pool NULL = the shared pool. limit >= 1. */
rw_workgroup *rw_workgroup_new(rw_ctx *parent, int limit, rw_pool *pool, rw_error **err);
/* Starts fn(group ctx, arg) once fewer than limit run. Fails (and does not
 * run fn) when the group's context is done. */
rw_error *rw_workgroup_go(rw_workgroup *wg, rw_task_fn fn, void *arg);
/* Like go, but never waits: false when no slot is free. */
bool rw_workgroup_try_go(rw_workgroup *wg, rw_task_fn fn, void *arg);
/* Waits for every task; returns a reference to the first error or NULL. */
rw_error *rw_workgroup_wait(rw_workgroup *wg);
rw_error *rw_workgroup_error(rw_workgroup *wg); /* reference or NULL, no wait */
rw_ctx *rw_workgroup_ctx(rw_workgroup *wg);     /* borrowed */
int rw_workgroup_running(rw_workgroup *wg);
/* Cancels the group, waits for its tasks, frees it. */
void rw_workgroup_free(rw_workgroup *wg);

#endif
