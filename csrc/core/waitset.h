/* A wait set: what the Lua workgroup's scheduler sleeps on. It watches any
 * number of fds (epoll, level-triggered, readable) and of contexts (a waker
 * on each, so a watched context costs no fd), and wait() returns the ready
 * ones. Costs: add/remove and watch/unwatch O(1), wait O(ready); the set
 * itself holds two fds (the epoll fd and an eventfd the wakers write).
 *
 * Threads: one owner thread calls every function. Watched contexts may be
 * cancelled on any thread: their wakers only queue the watch and write the
 * eventfd, under the set's mutex. */
#ifndef RW_WAITSET_H
#define RW_WAITSET_H

#include <stddef.h>

#include "context.h"
#include "error.h"

typedef struct rw_waitset rw_waitset;

/* A new set, or an error (rw.resource_exhausted when no fd is left). */
rw_error *rw_waitset_new(rw_waitset **out);
/* Unwatches every context (waits for a waker running on another thread),
 * closes the set's fds. NULL is fine. The caller's fds stay open. */
void rw_waitset_free(rw_waitset *s);

/* Watches fd for readability until removed; adding it twice is fine.
 * rw.invalid_argument naming the fd when it is closed or not pollable. */
rw_error *rw_waitset_add_fd(rw_waitset *s, int fd);
/* Unknown or already closed fds are ignored. */
void rw_waitset_remove_fd(rw_waitset *s, int fd);

/* Watches c (a reference is taken) until unwatched: once c is cancelled,
 * the next wait reports *id (> 0) once. An already cancelled c is reported
 * by the next wait. Deadlines are not reported: wait with c's timeout. */
rw_error *rw_waitset_watch(rw_waitset *s, rw_ctx *c, int *id);
/* Drops the watch (unknown ids are ignored); its id may be reused. */
void rw_waitset_unwatch(rw_waitset *s, int id);

/* Blocks up to timeout seconds (< 0: no limit) until an fd is readable or a
 * watched context is cancelled. Fills fds[0..*nfds) (at most max_fds, never
 * the set's own fds) and ids[0..*nids) (at most max_ids; the rest are
 * reported by the next wait). Interrupted by a signal: returns with none. */
rw_error *rw_waitset_wait(rw_waitset *s, double timeout, int *fds, int max_fds, int *nfds,
                          int *ids, int max_ids, int *nids);

/* The epoll fd: readable while wait would return at once (for event loops). */
int rw_waitset_pollfd(const rw_waitset *s);
size_t rw_waitset_fd_count(const rw_waitset *s);
size_t rw_waitset_watch_count(const rw_waitset *s);

#endif
