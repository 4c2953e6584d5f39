/* Signal trap: turns SIGINT/SIGTERM (or any catchable signals) into the
 * cancellation of a context, so that every wait in the library (which all
 * honour contexts) ends promptly and the caller can save its state before
 * exiting. For programs such as rwup; a library user who owns the process's
 * signals simply does not make one.
 *
 * - One trap per process at a time (signal dispositions are process-wide):
 *   a second rw_sigtrap_new fails with rw.invalid_argument until the first is
 *   freed.
 * - The handler only writes a byte to a pipe (async-signal-safe). One watcher
 *   thread, owned by the trap and joined by rw_sigtrap_free, reads it and
 *   cancels the context with rw.canceled ("interrupted by SIGINT"); it then
 *   restores that signal's previous action, so a second Ctrl-C stops the
 *   process the usual way.
 * - rw_sigtrap_free restores every previous action and closes the pipe. */
#ifndef RW_SIGTRAP_H
#define RW_SIGTRAP_H

#include "context.h"
#include "error.h"

typedef struct rw_sigtrap rw_sigtrap;

#define RW_SIGTRAP_MAX 8

/* parent: the trap's context derives from it (NULL = background).
 * sigs: 1..RW_SIGTRAP_MAX catchable signal numbers. */
rw_sigtrap *rw_sigtrap_new(rw_ctx *parent, const int *sigs, int n, rw_error **err);
/* The context cancelled by the first signal (borrowed; ref it to keep it). */
rw_ctx *rw_sigtrap_ctx(rw_sigtrap *t);
/* The first signal caught, 0 while none. */
int rw_sigtrap_caught(rw_sigtrap *t);
void rw_sigtrap_free(rw_sigtrap *t); /* NULL is fine */

/* "INT" / "SIGINT" -> SIGINT; 0 for an unknown or uncatchable name. */
int rw_sigtrap_signum(const char *name);
const char *rw_sigtrap_name(int sig); /* "SIGINT", or "signal N" style "SIG?" */

#endif
