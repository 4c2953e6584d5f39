/* A wake-up bridge for event loops that can wait only on sockets (an nginx
 * worker's cosockets): it turns "this fd became readable" (a writer's or any
 * op's eventfd) into a byte on a unix stream connection the loop reads.
 *
 *   slot = rw_wakeup_register()        id + a 16-byte token
 *   loop connects to rw_wakeup_path() and sends the token
 *   rw_wakeup_bind(slot)               accepts (non-blocking), pairs token
 *   rw_wakeup_arm(slot, fd)            one byte is written once fd is readable
 *   loop reads the connection (with its own timeout), then arms again
 *   rw_wakeup_release(slot)            also done by the bridge when the loop
 *                                      closes its end (a killed request)
 *
 * One bridge thread (epoll) per rw_wakeup, started by the first arm, never
 * before: nginx forks its workers after loading modules. Nothing here blocks
 * the calling thread: accept, recv and the bridge's writes are non-blocking.
 * The socket lives in a fresh 0700 folder (mkdtemp) under dir; free removes
 * both.
 *
 * Threads: register/bind/arm/release/free on the owner thread; the bridge
 * thread only writes to connections and drops slots whose peer hung up, under
 * the object's mutex. */
#ifndef RW_WAKEUP_H
#define RW_WAKEUP_H

#include <stddef.h>
#include <stdint.h>

#include "error.h"

typedef struct rw_wakeup rw_wakeup;

#define RW_WAKEUP_TOKEN_LEN 16

/* A new bridge listening on <dir>/rw-wake.XXXXXX/s (dir NULL: $TMPDIR or /tmp).
 * rw.invalid_argument naming dir when the path would not fit a unix socket
 * address or dir cannot be used; rw.resource_exhausted when no fd is left. */
rw_error *rw_wakeup_new(const char *dir, rw_wakeup **out);
/* Stops and joins the bridge thread (it never waits on anything but its own
 * epoll), closes every fd, removes the socket and its folder. NULL is fine. */
void rw_wakeup_free(rw_wakeup *wk);
const char *rw_wakeup_path(const rw_wakeup *wk);

/* A new slot: *id (> 0) and its token (RW_WAKEUP_TOKEN_LEN bytes + NUL). */
rw_error *rw_wakeup_register(rw_wakeup *wk, uint64_t *id, char token[RW_WAKEUP_TOKEN_LEN + 1]);
/* Accepts pending connections and pairs them with their slots by token.
 * *bound: whether slot id has its connection now. Unknown ids: false. */
rw_error *rw_wakeup_bind(rw_wakeup *wk, uint64_t id, int *bound);
/* Watches fd (duplicated: the caller may close its own) until it is readable
 * once, then writes one byte to the slot's connection. Arming again re-arms;
 * a readable fd fires at once. rw.invalid_argument for an unknown or unbound
 * id or an fd epoll cannot watch. */
rw_error *rw_wakeup_arm(rw_wakeup *wk, uint64_t id, int fd);
/* Forgets the slot and closes its fds; unknown (already released) ids are ignored. */
void rw_wakeup_release(rw_wakeup *wk, uint64_t id);

/* For tests: slots in use, whether the thread runs, fds held. */
size_t rw_wakeup_slots(rw_wakeup *wk);
int rw_wakeup_thread_started(rw_wakeup *wk);

#endif
