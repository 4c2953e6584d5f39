/* ReliableReader: reads a GCS object (one generation of it) by ranges.
 *
 * - The generation is pinned by the first stat (or given): every read asks
 *   for that generation, and a reply or stat of another is
 *   gcs.generation_changed, never a mix of two versions.
 * - A read is a ranged alt=media GET on the shared pool. A broken or stalled
 *   stream (stall_timeout without a byte) resumes from the last byte
 *   received; only retryable errors are retried, with backoff and a budget
 *   (reset whenever bytes arrive). 404 is gcs.not_found, not retried.
 * - Hedging: when a request's first byte has not come after hedge_after
 *   (default: the 95th percentile of this reader's time to first byte, at
 *   least hedge_floor), the same range is asked again; the first to deliver
 *   a byte owns the read, the others are cancelled. At most max_hedges hedges
 *   in flight per reader, and at most hedge_budget x the requests of the last
 *   hedge_window seconds (plus one) are hedges.
 *
 * Threads: every function may be called from any thread. Reads run on the
 * shared pool; a read op is reference counted, its completion is a condition
 * variable and an eventfd. Ownership: the caller's buffer is written only by
 * the op's tasks, and never after the op is done. rw_reader_free cancels
 * what runs and drops the caller's reference; tasks hold their own, the last
 * one frees (never waits on the network). */
#ifndef RW_READER_H
#define RW_READER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/backoff.h"
#include "core/context.h"
#include "core/error.h"
#include "net/http.h"
#include "sinks/gcs_read.h"

typedef struct rw_reader_config {
  rw_gcs_source_config source;
  int64_t generation;           /* 0: the live one at the first stat */
  double connect_timeout;       /* <= 0: 10 s */
  const rw_http_dialer *dialer; /* NULL: none; taken over (released by the reader) */
  double stall_timeout;         /* <= 0: 30 s */
  rw_backoff_config retry;      /* min_wait 0: rw_backoff_defaults() */
  double hedge_after;           /* > 0: fixed; 0: p95 of time to first byte */
  double hedge_floor;           /* <= 0: 0.05 s */
  int max_hedges;               /* hedges in flight; 0: no hedging; < 0: 2 */
  double hedge_budget;          /* < 0: 0.1 (of the window's requests) */
  double hedge_window;          /* <= 0: 10 s */
} rw_reader_config;

/* Defaults for every field but the source. */
rw_reader_config rw_reader_defaults(void);

typedef struct rw_reader rw_reader;

/* No network here. ctx (NULL: background) ends every read when cancelled. */
rw_reader *rw_reader_new(rw_ctx *ctx, const rw_reader_config *cfg, rw_error **err);
void rw_reader_free(rw_reader *r); /* NULL is fine; see above */

/* The object's metadata (the pinned generation; pins it when first). */
rw_error *rw_reader_stat(rw_reader *r, rw_ctx *ctx, rw_gcs_meta *out);

typedef struct rw_reader_stats {
  uint64_t requests, retries, hedges_issued, hedges_won, bytes;
  double hedge_after; /* what a request would wait now */
} rw_reader_stats;
void rw_reader_get_stats(rw_reader *r, rw_reader_stats *out);

/* ---- asynchronous reads ---- */
typedef struct rw_read_op rw_read_op;

/* Starts reading [off, off+len) into buf (len bytes, the caller's until the
 * op is done), or into fd at file_off + i when buf is NULL. Never blocks.
 * Past the end: the op fails with rw.invalid_argument naming the size. */
rw_read_op *rw_reader_start(rw_reader *r, uint64_t off, uint64_t len, void *buf, int fd,
                            uint64_t file_off, rw_error **err);
bool rw_read_op_done(rw_read_op *op);
/* An eventfd readable once the op is done (owned by the op). */
int rw_read_op_pollfd(rw_read_op *op);
/* Waits up to timeout seconds (< 0: no limit) or until ctx is done (NULL:
 * none); true when the op is done. */
bool rw_read_op_wait(rw_read_op *op, rw_ctx *ctx, double timeout);
/* Ends the op with cause (taken; NULL: rw.canceled) unless it is done. */
void rw_read_op_cancel(rw_read_op *op, rw_error *cause);
/* Once done: NULL or a new reference to the error. */
rw_error *rw_read_op_error(rw_read_op *op);
/* Once done: CRC32C of the bytes read. */
uint32_t rw_read_op_crc32c(rw_read_op *op);
void rw_read_op_unref(rw_read_op *op);

/* Blocking: exactly len bytes into buf, or an error. */
rw_error *rw_reader_read_at(rw_reader *r, rw_ctx *ctx, uint64_t off, uint64_t len, void *buf);

/* ---- straight to a file ----
 * A temporary file beside path (".<name>.<16 hex>.rwtmp", O_EXCL); commit
 * fsyncs it, renames it over path and fsyncs the folder; abort removes it. */
typedef struct rw_read_file rw_read_file;
rw_read_file *rw_read_file_open(const char *path, rw_error **err);
int rw_read_file_fd(const rw_read_file *f);
rw_error *rw_read_file_commit(rw_read_file *f); /* frees f */
void rw_read_file_abort(rw_read_file *f);       /* frees f; NULL is fine */
/* Blocking read_to_file; a full read is checked against the object's CRC32C
 * (a mismatch is gcs.checksum_mismatch and no file is left). len < 0: to the end. */
rw_error *rw_reader_read_to_file(rw_reader *r, rw_ctx *ctx, const char *path, uint64_t off, int64_t len);
/* The object's size and CRC32C for checking a full read (pins the generation). */
rw_error *rw_reader_check_full(rw_reader *r, uint64_t off, uint64_t len, uint32_t crc);

#endif
