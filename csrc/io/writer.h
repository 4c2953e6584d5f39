/* ReliableWriter: turns an unreliable sink into a reliable one.
 *
 * Bytes are held in a scatter-gather cache (no copies) until the sink confirms
 * them. WriteAt may arrive out of order inside the window
 * [persisted, persisted + max_cache_size); the contiguous prefix is sent in
 * chunks (min..max chunk size, multiples of 256 KiB but the last) by one
 * task at a time on the shared pool. Failures that are retryable are retried
 * with backoff (budget per chunk): back off, ask the sink what it persisted,
 * resend only the rest. A persisted size that goes backwards or past what was
 * sent, or a finalization on a non-final chunk, is gcs.session_conflict.
 *
 * Threads: the owner thread calls the API (one thread at a time); network
 * work runs on the pool. Nothing here blocks except rw_writer_wait: the rest
 * are steps, so event loops can drive the writer with its pollfd.
 * Release callbacks of written segments run on the owner thread, inside API
 * calls (rw_writer_drain), never on a pool thread. */
#ifndef RW_WRITER_H
#define RW_WRITER_H

#include <stdbool.h>
#include <stdint.h>

#include "core/backoff.h"
#include "core/context.h"
#include "core/error.h"
#include "core/sgbuf.h"
#include "sinks/sink.h"

#define RW_CHUNK_QUANTUM (256u * 1024u)

typedef struct rw_writer rw_writer;

typedef struct rw_writer_config {
  uint64_t max_cache_size;  /* >= min_chunk_size */
  uint64_t min_chunk_size;  /* multiple of 256 KiB, >= 256 KiB */
  uint64_t max_chunk_size;  /* multiple of 256 KiB, >= min_chunk_size */
  rw_backoff_config retry;  /* budget per chunk */
  bool retry_conditional;   /* retry only when the sink has_precondition */
  double stall_timeout;     /* seconds without progress = net.stall */
  double abort_timeout;     /* the sink's abort (DELETE) deadline */
  bool crc32c, md5;
  /* Resume: the sink already holds [0, start_offset); crc32c of those bytes
   * (when has_start_crc) lets the final checksum cover the whole object. */
  uint64_t start_offset;
  bool resume;              /* the sink holds a session: ask it first */
  bool has_start_crc;
  uint32_t start_crc;
} rw_writer_config;

rw_writer_config rw_writer_defaults(void);
rw_error *rw_writer_config_check(const rw_writer_config *c);

typedef enum {
  RW_WRITER_OPEN = 0,    /* accepting writes */
  RW_WRITER_COMPLETING,  /* Complete asked; sending the rest */
  RW_WRITER_DONE,        /* the object exists */
  RW_WRITER_FAILED,      /* a fatal error; see rw_writer_error */
  RW_WRITER_ABORTED,
} rw_writer_state;

const char *rw_writer_state_name(rw_writer_state s);

typedef struct rw_writer_stats {
  uint64_t written;    /* bytes accepted by write calls */
  uint64_t persisted;  /* bytes the sink confirmed */
  uint64_t in_cache;   /* bytes held */
  uint64_t contiguous; /* end of the contiguous prefix */
  uint64_t retries, chunks, backoff_ms;
  rw_writer_state state;
} rw_writer_stats;

/* Takes ownership of sink (also on failure). parent: the writer's context
 * derives from it (NULL = background). */
rw_writer *rw_writer_new(rw_ctx *parent, rw_sink *sink, const rw_writer_config *cfg,
                         rw_error **err);
/* Aborts if unfinished (best effort), joins work, frees. May wait up to
 * abort_timeout for the session's DELETE. */
void rw_writer_free(rw_writer *w);
/* The finalizer's free: never waits on the network. Cancels the work, waits
 * only for the cancelled transfer to let go of the cache (local work), runs
 * every release on this thread, then hands the session's DELETE and the rest
 * of the freeing to the pool. w is gone when it returns. */
void rw_writer_close(rw_writer *w);

/* Non-blocking: inserts what fits of [off, off+len) now; *accepted is how many
 * bytes from the start of data were taken (bytes below persisted count as
 * taken once checked: whole 256 KiB blocks of the persisted prefix that the
 * write covers are compared by CRC32C with what was persisted). On success
 * release(ud) is called exactly once, on the owner thread: at once when
 * nothing was kept, else (from rw_writer_drain) once the bytes are confirmed
 * or dropped. On error it is not called.
 * Errors: rw.overlap, rw.out_of_window (the write can never fit: it lies
 * past the furthest window the bytes written so far can open, with a gap
 * below it that only the caller can fill), the writer's fatal error,
 * rw.closed after Complete/Abort. */
rw_error *rw_writer_write_some(rw_writer *w, uint64_t off, const void *data, size_t len,
                               rw_seg_release_fn release, void *ud, size_t *accepted);
/* Bytes that may be inserted at off right now (0 = wait). */
uint64_t rw_writer_room(rw_writer *w, uint64_t off);

/* Fails the writer with e (taken): the caller's source went wrong (e.g. a
 * file changed while it was read). No object is made from what was written;
 * the session is kept until Abort or close, as after any failure. */
void rw_writer_fail(rw_writer *w, rw_error *e);

/* Starts completion (idempotent). Fails with rw.gap naming the first missing
 * range (the writer stays open then). total: the object size, or UINT64_MAX
 * to take the end of the highest byte written. */
rw_error *rw_writer_complete_start(rw_writer *w, uint64_t total);
/* Non-blocking: true once finished (DONE, FAILED or ABORTED). */
bool rw_writer_finished(rw_writer *w);
/* The object after DONE (borrowed until free); NULL otherwise. */
const rw_sink_object *rw_writer_object(rw_writer *w);
/* The fatal error (reference) or NULL. */
rw_error *rw_writer_error(rw_writer *w);

/* Cancels everything, deletes the session (best effort, abort_timeout),
 * joins the work. Idempotent. */
void rw_writer_abort(rw_writer *w);
/* The same without blocking: cancels at once, then a pool thread waits for
 * the transfer to end and deletes the session. rw_writer_stopped tells when
 * all of it is over (the pollfd signals it). */
void rw_writer_abort_start(rw_writer *w);
bool rw_writer_stopped(rw_writer *w);
/* Stops all work but keeps the session for rw_writer_session / a later
 * resume (nothing is deleted). The writer is then closed. */
void rw_writer_suspend(rw_writer *w);

/* Blocks until pred holds: "room at off" (when want_room) or finished, the
 * writer fails, ctx is done, or timeout (< 0 = none). */
void rw_writer_wait(rw_writer *w, rw_ctx *ctx, bool want_room, uint64_t off, double timeout);
/* An eventfd readable whenever the writer's state changed (drained by
 * rw_writer_drain). */
int rw_writer_pollfd(rw_writer *w);
/* Runs deferred releases and clears the eventfd. Call from the owner thread.
 * Returns true when progress happened since the last drain. */
bool rw_writer_drain(rw_writer *w);

/* The process-wide budget: bytes held by all writers beyond each one's first
 * max_chunk_size stay under `bytes` (0 = no budget, the default). Writes
 * that do not fit wait like writes into a full cache. */
void rw_writer_set_process_budget(uint64_t bytes);
void rw_writer_process_budget(uint64_t *limit, uint64_t *used);

rw_writer_stats rw_writer_get_stats(rw_writer *w);
/* Tests only: fn(ud, from, to) runs on the thread that hashes bytes
 * [from, to) the sink newly confirmed, just before it hashes them, without
 * the writer's lock (stretches come one at a time, in offset order). Set it
 * before the first write. */
void rw_writer_set_hash_hook(rw_writer *w, void (*fn)(void *ud, uint64_t from, uint64_t to),
                             void *ud);
/* Calls fn(code, count) for each error code seen. */
void rw_writer_each_error(rw_writer *w, void (*fn)(void *ud, const char *code, uint64_t n),
                          void *ud);
/* The session to resume later: a copy of the sink's handle (malloc'd, the
 * caller frees it; NULL while no session exists), persisted bytes and the
 * crc32c of those bytes (has_crc false when unknown). The writer keeps its
 * own copy of the handle under its lock: safe while the pool works. */
char *rw_writer_session(rw_writer *w, uint64_t *persisted, bool *has_crc, uint32_t *crc);

#endif
