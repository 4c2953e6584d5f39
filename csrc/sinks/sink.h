/* Sinks: the "unreliable writers" under the ReliableWriter.
 *
 * A sink does one attempt of one operation and says exactly what happened; it
 * never retries. The writer owns retries, backoff, the cache and checksums.
 * Calls on one sink are made by one thread at a time (the writer serializes
 * them), from a pool thread, unless the sink declares max_inflight > 1: then
 * up to that many puts (and a query) run at once, on consecutive pieces of
 * the cache, and the sink must be thread-safe. Every call honours ctx
 * promptly (a cancelled ctx ends a transfer within tens of milliseconds, even
 * mid-stall). */
#ifndef RW_SINK_H
#define RW_SINK_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/uio.h>

#include "core/context.h"
#include "core/error.h"

typedef struct rw_sink rw_sink;

typedef struct rw_sink_sums {
  bool has_crc32c, has_md5;
  uint32_t crc32c;
  unsigned char md5[16];
} rw_sink_sums;

/* What the server said about the object once finalized. Strings are owned by
 * the result (freed by rw_sink_result_clear). json is the object resource as
 * the server sent it (NULL for sinks without one). */
typedef struct rw_sink_object {
  char *bucket, *name, *generation, *crc32c, *md5, *json;
  uint64_t size;
} rw_sink_object;

typedef struct rw_sink_result {
  uint64_t persisted; /* bytes the server confirms it holds (from 0) */
  /* With max_inflight > 1: changes when the server may have lost bytes it
   * accepted and had not persisted (a proxy failover); the writer then
   * sends again from persisted. */
  uint64_t epoch;
  bool finalized;     /* the object exists; obj is filled */
  rw_sink_object obj;
} rw_sink_result;

void rw_sink_result_clear(rw_sink_result *r);

typedef struct rw_sink_put {
  uint64_t offset;           /* of the first byte in iov */
  const struct iovec *iov;   /* the bytes, straight from the cache */
  int iovcnt;
  uint64_t len;              /* sum of iov lengths */
  bool final;                /* this ends the object at offset + len */
  const rw_sink_sums *sums;  /* with final: checksums of the whole object */
  double stall_timeout;      /* seconds without a byte moving = net.stall */
  /* Called from the transfer as bytes go out (may be NULL). */
  void (*on_sent)(void *ud, uint64_t bytes);
  void *ud;
} rw_sink_put;

typedef struct rw_sink_ops {
  const char *kind; /* "gcs", "file", "faulty" */
  /* Opens the session (GCS: POST ...uploadType=resumable). Called once. */
  rw_error *(*begin)(rw_sink *s, rw_ctx *ctx);
  /* One attempt to send the bytes. On success res->persisted says what the
   * server holds (it may be less than offset+len: e.g. a partial 308), and
   * with final, res->finalized and res->obj. */
  rw_error *(*put)(rw_sink *s, rw_ctx *ctx, const rw_sink_put *p, rw_sink_result *res);
  /* Asks what is persisted (GCS: PUT with Content-Range bytes * / *). */
  rw_error *(*query)(rw_sink *s, rw_ctx *ctx, rw_sink_result *res);
  /* Cancels the session (GCS: DELETE, expects 499). Best effort. */
  rw_error *(*abort)(rw_sink *s, rw_ctx *ctx);
  /* A resumable handle: the session URI or the path ("" when none). */
  const char *(*session)(rw_sink *s);
  void (*destroy)(rw_sink *s);
} rw_sink_ops;

struct rw_sink {
  const rw_sink_ops *ops;
  /* Seconds without a byte moving that end any request of this sink (begin,
   * query, abort as well as put); set by the writer from its config, 0 = the
   * sink's default. */
  double stall_timeout;
  /* The upload carries a precondition (if_generation_match or
   * if_metageneration_match): set by the sink; retry policy "conditional"
   * retries only such uploads. */
  bool has_precondition;
  /* Chunks the sink takes in flight at once (set by the sink; 0 or 1: one
   * call at a time, in order). With N > 1 a put's success means the server
   * accepted the bytes; res->persisted says what it persisted (it may lag,
   * and replies may arrive out of order: a smaller value is old news). The
   * writer keeps every byte until persisted passes it, and resends from
   * persisted when a final put finds the server short of bytes it accepted
   * (e.g. a proxy that died before passing them on). */
  int max_inflight;
  /* With max_inflight > 1: the most bytes past the persisted offset the
   * sink's server takes at once (a proxy's per-session cache); 0 = no bound
   * but the writer's own cache. */
  uint64_t max_ahead;
};

static inline void rw_sink_destroy(rw_sink *s) {
  if (s) s->ops->destroy(s);
}

#endif
