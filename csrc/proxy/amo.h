/* The at-most-once reply table of docs/PROTOCOL.md section 7: per client_id,
 * requests by seq, each either PENDING (running; duplicates wait for its
 * reply) or DONE (the reply kept, a duplicate gets it again). The client's
 * ack drops the entries it covers and raises the client's `low`; a request
 * with seq <= low that is not in the table is EXPIRED, never run again.
 * A client silent for ttl seconds loses its entries (its `low` becomes the
 * highest seq it ever sent, so none of them runs again); pending entries stay
 * until their request ends. The remaining record (a few bytes) is forgotten
 * after 4 x ttl.
 *
 * Pure C, no sockets, no locks: one thread (the proxy's event loop) uses a
 * table. Replies are opaque bytes the table copies and owns; waiters are
 * opaque 64-bit tokens (the proxy's connection ids). */
#ifndef RW_PROXY_AMO_H
#define RW_PROXY_AMO_H

#include <stddef.h>
#include <stdint.h>

#include "core/error.h"

typedef struct rw_amo rw_amo;

typedef enum {
  RW_AMO_RUN = 0,  /* new: an entry is now PENDING; run the request */
  RW_AMO_WAIT,     /* a duplicate of a PENDING request: the waiter was added */
  RW_AMO_REPLAY,   /* a duplicate of a DONE request: *reply holds the reply */
  RW_AMO_EXPIRED,  /* seq <= low and not in the table: answer proto.expired */
} rw_amo_verdict;

typedef struct rw_amo_config {
  double ttl;                 /* seconds of silence before a client's entries go; > 0 */
  size_t max_entries;         /* per client (pending + done); over it: proto.busy */
  size_t max_clients;         /* clients remembered; over it: proto.busy */
} rw_amo_config;

rw_amo *rw_amo_new(const rw_amo_config *cfg, rw_error **err);
void rw_amo_free(rw_amo *t); /* NULL is fine */

/* A request (client_id, seq) arrives at time now (monotonic seconds), from
 * waiter. RW_AMO_REPLAY: *reply and *len borrow the kept reply (valid until the
 * next call on t). Errors: proto.busy (a bound), rw.out_of_memory. */
rw_error *rw_amo_begin(rw_amo *t, uint64_t client_id, uint64_t seq, uint64_t waiter, double now,
                       rw_amo_verdict *v, const void **reply, size_t *len);
/* The request ran: keep its reply (copied) and hand back the duplicates'
 * waiters, not the original requester (its caller knows it): *waiters is
 * malloc'd (NULL when none), the caller frees it. An entry no longer there (dropped by expiry) keeps
 * nothing and has no waiters. */
rw_error *rw_amo_done(rw_amo *t, uint64_t client_id, uint64_t seq, const void *reply, size_t len,
                      uint64_t **waiters, size_t *nwaiters);
/* A request that could not run at all (no reply to keep): drops its PENDING
 * entry so that a retry runs it; returns its waiters like rw_amo_done. */
void rw_amo_cancel(rw_amo *t, uint64_t client_id, uint64_t seq, uint64_t **waiters,
                   size_t *nwaiters);
/* A waiter (connection) went away: it no longer waits for any reply. */
void rw_amo_forget_waiter(rw_amo *t, uint64_t waiter);
/* The client received every reply with seq <= ack: drop those DONE entries
 * and raise low. Counts as a sign of life (now). */
void rw_amo_ack(rw_amo *t, uint64_t client_id, uint64_t ack, double now);
/* Drops the entries of clients silent for ttl, and the records of clients
 * silent for 4 x ttl. */
void rw_amo_expire(rw_amo *t, double now);

size_t rw_amo_entries(const rw_amo *t); /* all clients' entries */
size_t rw_amo_clients(const rw_amo *t);
uint64_t rw_amo_low(const rw_amo *t, uint64_t client_id); /* 0 when unknown */

#endif
