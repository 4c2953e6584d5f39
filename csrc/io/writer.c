#include "io/writer.h"

#include <inttypes.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <errno.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "core/checksum.h"
#include "core/clock.h"
#include "core/workgroup.h"

#define MAX_CODES 24

typedef struct deferred {
  rw_seg_release_fn fn;
  void *ud;
  struct rw_writer *w;
  struct deferred *next;
} deferred;

typedef struct chunk {
  uint64_t off, len;
  bool final;
} chunk;

struct rw_writer {
  pthread_mutex_t mu;
  pthread_cond_t cv;
  rw_writer_config cfg;
  rw_sink *sink;
  rw_ctx *ctx;
  rw_pool *pool;
  rw_sgbuf *cache;

  uint64_t written, persisted, max_sent, total, hashed_end;
  uint64_t charged;     /* bytes counted against the process budget */
  uint64_t charged_ooo; /* the part of them past the contiguous prefix */
  uint32_t crc_all, crc_persisted;
  bool crc_persisted_ok;
  rw_md5 md5;
  bool md5_live;
  unsigned char md5_digest[16];

  /* The server's side, as far as we know it. server_end: bytes it holds
   * beyond persisted after a resume (the caller supplies them again; they
   * are hashed, not resent). server_final/server_obj: the session was found
   * finalized. unsure: what became of the last request is unknown. */
  uint64_t server_end;
  bool server_final, unsure, need_sync;
  bool final_rejected; /* the server finalized an object we did not take */
  uint64_t final_size; /* its size */
  rw_sink_object server_obj;
  char *session; /* our copy of the sink's handle; NULL while none */

  /* CRC32C of each whole 256 KiB block of the persisted prefix, from
   * blk_start on (blocks below a resume point are unknown), so a rewrite of
   * persisted bytes is checked (rw.overlap). blk_pos: bytes hashed so far. */
  uint32_t *blk, blk_run;
  size_t nblk, capblk;
  uint64_t blk_start, blk_pos;
  bool blk_ok;
  /* The hashing section (advance_persisted_locked): a thread hashes newly
   * confirmed bytes [persisted, hash_to) without mu; others hand it theirs. */
  bool hashing;
  uint64_t hash_to;
  /* Tests only: runs before each stretch of confirmed bytes is hashed. */
  void (*hash_hook)(void *ud, uint64_t from, uint64_t to);
  void *hash_hook_ud;

  rw_writer_state state;
  bool began, pumping, closing, aborting;
  /* Several chunks in flight (sink->max_inflight > 1; see "in flight"
   * below): tasks sending pieces, the end of the bytes handed to the sink
   * (in flight or accepted, not yet persisted), a begin/sync task or a poll
   * of the persisted size under way; the backoff of resends (rewinds) that
   * moved nothing, and where the last one started. pumping = any of them. */
  int max_inflight, ntasks;
  bool prepping, polling;
  uint64_t sched_end, rewind_at, epoch;
  rw_backoff rewind_backoff;
  bool stopping, stop_delete; /* an abort/suspend is under way */
  bool autofree;              /* closed by rw_writer_close: stop_finish frees */
  rw_error *fatal;
  rw_sink_object obj;

  deferred *released; /* to run on the owner thread */
  int efd;
  bool progressed;

  uint64_t retries, chunks, backoff_ms;
  struct {
    char code[40];
    uint64_t n;
  } codes[MAX_CODES];
  int ncodes;
};

const char *rw_writer_state_name(rw_writer_state s) {
  static const char *const names[] = {"open", "completing", "done", "failed", "aborted"};
  return s <= RW_WRITER_ABORTED ? names[s] : "?";
}

/* ---- the process-wide budget ----
 * Bytes a writer holds beyond its first max_chunk_size count against one
 * budget for the process (0 = none). The floor keeps every writer able to
 * fill a chunk, so writers never wait on each other in a circle.
 * Out-of-order bytes (past a writer's contiguous prefix) can only leave once
 * their gap is written, so they must never starve the bytes that fill gaps:
 * bytes that extend a contiguous prefix see the budget without the
 * out-of-order share (budget_ooo). Used stays under limit + budget_ooo, and
 * out-of-order bytes are admitted only under limit, so at most 2 x limit. */
static pthread_mutex_t budget_mu = PTHREAD_MUTEX_INITIALIZER;
static uint64_t budget_limit, budget_used, budget_ooo;

void rw_writer_set_process_budget(uint64_t bytes) {
  pthread_mutex_lock(&budget_mu);
  budget_limit = bytes;
  pthread_mutex_unlock(&budget_mu);
}

void rw_writer_process_budget(uint64_t *limit, uint64_t *used) {
  pthread_mutex_lock(&budget_mu);
  *limit = budget_limit;
  *used = budget_used;
  pthread_mutex_unlock(&budget_mu);
}

/* Bytes of the budget free now for bytes that extend a contiguous prefix
 * (in_order) or for others (UINT64_MAX without a budget). */
static uint64_t budget_available(bool in_order) {
  pthread_mutex_lock(&budget_mu);
  uint64_t used = in_order ? budget_used - budget_ooo : budget_used;
  uint64_t a = !budget_limit ? UINT64_MAX : (used < budget_limit ? budget_limit - used : 0);
  pthread_mutex_unlock(&budget_mu);
  return a;
}

static uint64_t data_end_locked(rw_writer *w);

/* Brings w->charged (and its out-of-order part) to what w holds beyond its
 * floor. mu held. */
static void budget_settle_locked(rw_writer *w) {
  uint64_t held = w->cache ? rw_sgbuf_bytes(w->cache) : 0, floor = w->cfg.max_chunk_size;
  uint64_t target = held > floor ? held - floor : 0;
  uint64_t in_order = w->cache ? data_end_locked(w) - w->persisted : 0;
  uint64_t ooo = held > in_order ? held - in_order : 0;
  if (ooo > target) ooo = target;
  if (target == w->charged && ooo == w->charged_ooo) return;
  pthread_mutex_lock(&budget_mu);
  budget_used = budget_used + target - w->charged;
  budget_ooo = budget_ooo + ooo - w->charged_ooo;
  pthread_mutex_unlock(&budget_mu);
  w->charged = target;
  w->charged_ooo = ooo;
}

/* How many of n more bytes at off w may hold now under the budget. mu held. */
static uint64_t budget_allow_locked(rw_writer *w, uint64_t off, uint64_t n) {
  uint64_t held = rw_sgbuf_bytes(w->cache), floor = w->cfg.max_chunk_size;
  uint64_t free_floor = held < floor ? floor - held : 0;
  if (n <= free_floor) return n;
  uint64_t avail = budget_available(off <= data_end_locked(w));
  return n - free_floor <= avail ? n : free_floor + avail;
}

rw_writer_config rw_writer_defaults(void) {
  rw_writer_config c = {0};
  c.max_cache_size = 64ull << 20;
  c.min_chunk_size = 256ull << 10;
  c.max_chunk_size = 16ull << 20;
  c.retry = rw_backoff_defaults();
  c.stall_timeout = 30;
  c.abort_timeout = 0.15;
  c.crc32c = true;
  return c;
}

rw_error *rw_writer_config_check(const rw_writer_config *c) {
  if (c->min_chunk_size < RW_CHUNK_QUANTUM || c->min_chunk_size % RW_CHUNK_QUANTUM)
    return rw_err(RW_E_INVALID, "min_chunk_size must be a multiple of 256 KiB, >= 256 KiB (got %" PRIu64 ")",
                  c->min_chunk_size);
  if (c->max_chunk_size < c->min_chunk_size || c->max_chunk_size % RW_CHUNK_QUANTUM)
    return rw_err(RW_E_INVALID,
                  "max_chunk_size must be a multiple of 256 KiB, >= min_chunk_size (got %" PRIu64 ")",
                  c->max_chunk_size);
  if (c->max_cache_size < c->max_chunk_size)
    return rw_err(RW_E_INVALID, "max_cache_size must be >= max_chunk_size (got %" PRIu64 " < %" PRIu64 ")",
                  c->max_cache_size, c->max_chunk_size);
  if (!(c->stall_timeout > 0)) return rw_err(RW_E_INVALID, "stall_timeout must be > 0");
  return rw_backoff_config_check(&c->retry);
}

/* ---- notification and deferred releases (mu held) ---- */

static void notify_locked(rw_writer *w) {
  w->progressed = true;
  pthread_cond_broadcast(&w->cv);
  if (w->efd >= 0) {
    uint64_t one = 1;
    ssize_t n = write(w->efd, &one, sizeof one);
    (void)n;
  }
}

/* sgbuf's release hook: runs wherever the cache drops a segment (pool thread
 * or owner), always with mu held or before the writer is shared; the real
 * release waits for the owner thread. */
static void defer_release(void *arg) {
  deferred *d = arg;
  d->next = d->w->released;
  d->w->released = d;
}

bool rw_writer_drain(rw_writer *w) {
  pthread_mutex_lock(&w->mu);
  deferred *d = w->released;
  w->released = NULL;
  bool progressed = w->progressed;
  w->progressed = false;
  if (w->efd >= 0) {
    uint64_t v;
    ssize_t n = read(w->efd, &v, sizeof v);
    (void)n;
  }
  pthread_mutex_unlock(&w->mu);
  while (d) {
    deferred *next = d->next;
    if (d->fn) d->fn(d->ud);
    free(d);
    d = next;
  }
  return progressed;
}

static void count_error_locked(rw_writer *w, const rw_error *e) {
  const char *code = rw_error_code(e);
  for (int i = 0; i < w->ncodes; i++)
    if (strcmp(w->codes[i].code, code) == 0) {
      w->codes[i].n++;
      return;
    }
  if (w->ncodes == MAX_CODES) return;
  snprintf(w->codes[w->ncodes].code, sizeof w->codes[0].code, "%s", code);
  w->codes[w->ncodes++].n = 1;
}

static void fail_locked(rw_writer *w, rw_error *e) {
  if (w->fatal || w->state == RW_WRITER_DONE) {
    rw_error_unref(e);
    return;
  }
  count_error_locked(w, e);
  w->fatal = e;
  w->state = w->aborting ? RW_WRITER_ABORTED : RW_WRITER_FAILED;
  char what[256];
  uint64_t held = w->server_end > w->persisted ? w->server_end : w->persisted;
  if (w->final_rejected)
    snprintf(what, sizeof what,
             "upload failed (the server finalized an object of %" PRIu64 " bytes that failed our "
             "checks; it was not taken):",
             w->final_size);
  else
    snprintf(what, sizeof what,
             "upload failed (the server holds %sbytes [0, %" PRIu64 ")%s; w:Suspend() keeps the session "
             "for rw.resume, Abort or close deletes it):",
             w->unsure ? "at least " : "", held,
             w->unsure ? ", what became of the last request is unknown" : "");
  rw_error_log(RW_LOG_ERROR, e, what);
  notify_locked(w);
}

/* ---- construction ---- */

static void kick_locked(rw_writer *w);

rw_writer *rw_writer_new(rw_ctx *parent, rw_sink *sink, const rw_writer_config *cfg,
                         rw_error **err) {
  if ((*err = rw_writer_config_check(cfg)) || (parent && (*err = rw_ctx_err(parent)))) {
    rw_sink_destroy(sink); /* a context already ended: no writer to hand out */
    return NULL;
  }
  rw_writer *w = calloc(1, sizeof *w);
  if (!w) goto nomem;
  w->efd = -1;
  w->cfg = *cfg;
  w->sink = sink;
  sink->stall_timeout = cfg->stall_timeout;
  w->persisted = w->max_sent = w->hashed_end = w->server_end = cfg->start_offset;
  w->total = UINT64_MAX;
  w->crc_persisted = cfg->has_start_crc ? cfg->start_crc : 0;
  w->crc_persisted_ok = cfg->start_offset == 0 || cfg->has_start_crc;
  w->crc_all = w->crc_persisted;
  w->blk_start = w->blk_pos = cfg->start_offset;
  if (w->blk_start % RW_CHUNK_QUANTUM) w->blk_start += RW_CHUNK_QUANTUM - w->blk_start % RW_CHUNK_QUANTUM;
  w->blk_ok = true;
  w->max_inflight = sink->max_inflight > 1 ? sink->max_inflight : 1;
  w->sched_end = w->rewind_at = cfg->start_offset;
  rw_backoff_init(&w->rewind_backoff, &cfg->retry);
  /* A session handed in (rw.resume): ask the server what it holds first. */
  bool resume = cfg->resume || cfg->start_offset > 0;
  const char *handle = resume ? sink->ops->session(sink) : NULL;
  w->began = w->need_sync = w->unsure = resume;
  if (resume && (!handle || !*handle)) {
    *err = rw_err(RW_E_INVALID, "resume: the sink has no session to resume");
    goto fail;
  }
  if (resume && !(w->session = strdup(handle))) goto nomem;
  if (!(w->ctx = rw_ctx_with_cancel(parent))) goto nomem;
  if (!(w->cache = rw_sgbuf_new(cfg->start_offset))) goto nomem;
  if (!(w->pool = rw_pool_shared_acquire())) goto nomem;
  if (cfg->md5 && !(w->md5_live = rw_md5_init(&w->md5))) goto nomem;
  w->efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (w->efd < 0) {
    int en = errno;
    *err = rw_err(en == EMFILE || en == ENFILE ? RW_E_RESOURCE : RW_E_INTERNAL,
                  "cannot make the writer's eventfd: %s", strerror(en));
    goto fail;
  }
  pthread_mutex_init(&w->mu, NULL);
  rw_cond_init(&w->cv);
  if (w->need_sync) {
    pthread_mutex_lock(&w->mu);
    kick_locked(w);
    pthread_mutex_unlock(&w->mu);
  }
  return w;
nomem:
  *err = rw_err(RW_E_NOMEM, "out of memory making a writer");
fail:
  if (w) {
    if (w->md5_live) rw_md5_free(&w->md5);
    if (w->pool) rw_pool_shared_release();
    rw_sgbuf_free(w->cache);
    rw_ctx_unref(w->ctx);
    free(w->session);
    free(w);
  }
  rw_sink_destroy(sink);
  return NULL;
}

/* ---- chunk selection and the pump ---- */

static uint64_t data_end_locked(rw_writer *w) {
  uint64_t end = rw_sgbuf_contiguous_end(w->cache);
  return end < w->persisted ? w->persisted : end;
}

static bool next_chunk_locked(rw_writer *w, chunk *c) {
  if (w->fatal || w->aborting || w->state >= RW_WRITER_DONE) return false;
  /* Bytes the server already holds are taken from the caller, not sent. */
  if (w->server_end > w->persisted || w->server_final) return false;
  uint64_t start = w->persisted, end = data_end_locked(w);
  if (w->closing && end >= w->total) {
    uint64_t avail = w->total - start;
    if (avail <= w->cfg.max_chunk_size) {
      *c = (chunk){start, avail, true};
      return true;
    }
    *c = (chunk){start, w->cfg.max_chunk_size, false};
    return true;
  }
  uint64_t avail = end - start;
  uint64_t n = avail < w->cfg.max_chunk_size ? avail : w->cfg.max_chunk_size;
  n -= n % RW_CHUNK_QUANTUM;
  if (n < w->cfg.min_chunk_size) return false;
  *c = (chunk){start, n, false};
  return true;
}

static void pump_main(void *arg);
static void multi_kick_locked(rw_writer *w);

static void kick_locked(rw_writer *w) {
  chunk c;
  if (w->max_inflight > 1) {
    multi_kick_locked(w);
    return;
  }
  if (w->pumping || (!w->need_sync && !next_chunk_locked(w, &c))) return;
  w->pumping = true;
  if (!rw_pool_submit(w->pool, pump_main, w)) {
    w->pumping = false;
    fail_locked(w, rw_err(RW_E_INTERNAL, "could not start upload work (pool refused)"));
  }
}

static void object_clear(rw_sink_object *o) {
  rw_sink_result r = {.obj = *o};
  rw_sink_result_clear(&r);
  memset(o, 0, sizeof *o);
}

/* Checks a finalized object against what we sent. mu held. */
static rw_error *verify_object_locked(rw_writer *w, const rw_sink_object *o) {
  if (o->size != w->total)
    return rw_err(RW_E_SESSION_CONFLICT,
                  "the server finalized an object of %" PRIu64 " bytes but %" PRIu64
                  " were written; the object is not what was sent",
                  o->size, w->total);
  if (w->cfg.crc32c && w->crc_persisted_ok && !o->crc32c)
    return rw_err(RW_E_PROTOCOL, "the server's object has no crc32c: the checksum we sent was not checked");
  if (w->cfg.md5 && !o->md5)
    return rw_err(RW_E_PROTOCOL, "the server's object has no md5Hash: the checksum we sent was not checked");
  if (w->cfg.crc32c && w->crc_persisted_ok && o->crc32c) {
    char want[16];
    rw_crc32c_base64(w->crc_all, want);
    if (strcmp(want, o->crc32c) != 0)
      return rw_err(RW_E_CHECKSUM, "crc32c mismatch: sent %s, the server has %s", want, o->crc32c);
  }
  if (w->cfg.md5 && o->md5) {
    char want[32];
    rw_md5_base64(w->md5_digest, want);
    if (strcmp(want, o->md5) != 0)
      return rw_err(RW_E_CHECKSUM, "md5 mismatch: sent %s, the server has %s", want, o->md5);
  }
  return NULL;
}

/* A stretch [from, to) of newly confirmed bytes, hashed without mu: its
 * view, the hash state it starts from (taken under mu) and, once hashed, the
 * state it ends with and the CRCs of the whole 256 KiB blocks it closed. */
typedef struct persist_job {
  uint64_t from, to, blk_start, blk_pos;
  struct iovec *iov;
  int n;
  bool crc_ok, blk_ok;
  uint32_t crc, blk_run, *blocks;
  size_t nblocks;
  void (*hook)(void *ud, uint64_t from, uint64_t to);
  void *hook_ud;
} persist_job;

/* Feeds confirmed bytes to the per-block CRCs of j (room for every block
 * that [from, to) can close was made by persist_take_locked). */
static void blocks_feed(persist_job *j, const char *p, size_t len) {
  while (len) {
    uint64_t pos = j->blk_pos, boundary = (pos / RW_CHUNK_QUANTUM + 1) * RW_CHUNK_QUANTUM;
    size_t take = boundary - pos < len ? (size_t)(boundary - pos) : len;
    if (pos >= j->blk_start) j->blk_run = rw_crc32c(j->blk_run, p, take);
    j->blk_pos += take;
    p += take;
    len -= take;
    if (j->blk_pos != boundary) continue;
    if (boundary - RW_CHUNK_QUANTUM >= j->blk_start) j->blocks[j->nblocks++] = j->blk_run;
    j->blk_run = 0;
  }
}

/* Takes the next stretch to hash: [persisted, hash_to). The bytes below
 * hash_to stay in the cache until persist_publish_locked releases them, and
 * only the one hasher does that. mu held. */
static void persist_take_locked(rw_writer *w, persist_job *j) {
  *j = (persist_job){.from = w->persisted, .to = w->hash_to, .blk_start = w->blk_start,
                     .blk_pos = w->blk_pos, .crc_ok = w->crc_persisted_ok, .blk_ok = w->blk_ok,
                     .crc = w->crc_persisted, .blk_run = w->blk_run,
                     .hook = w->hash_hook, .hook_ud = w->hash_hook_ud};
  if (!j->crc_ok && !j->blk_ok) return;
  uint64_t len = j->to - j->from;
  int n = rw_sgbuf_view_count(w->cache, j->from, len);
  j->iov = n > 0 ? malloc((size_t)n * sizeof *j->iov) : NULL;
  if (!j->iov || rw_sgbuf_view(w->cache, j->from, len, j->iov, n) != n) {
    free(j->iov);
    j->iov = NULL;
    j->crc_ok = j->blk_ok = false; /* cannot vouch for either any more */
    return;
  }
  j->n = n;
  if (j->blk_ok && !(j->blocks = malloc((size_t)(len / RW_CHUNK_QUANTUM + 1) * sizeof *j->blocks)))
    j->blk_ok = false; /* no memory: stop checking rewrites, never fail the upload */
}

/* Runs without mu. */
static void persist_hash(persist_job *j) {
  if (j->hook) j->hook(j->hook_ud, j->from, j->to);
  for (int i = 0; i < j->n; i++) {
    if (j->crc_ok) j->crc = rw_crc32c(j->crc, j->iov[i].iov_base, j->iov[i].iov_len);
    if (j->blk_ok) blocks_feed(j, j->iov[i].iov_base, j->iov[i].iov_len);
  }
}

static void blocks_append_locked(rw_writer *w, const persist_job *j) {
  if (!j->nblocks) return;
  if (w->nblk + j->nblocks > w->capblk) {
    size_t cap = w->capblk ? w->capblk : 64;
    while (cap < w->nblk + j->nblocks) cap *= 2;
    uint32_t *b = realloc(w->blk, cap * sizeof *b);
    if (!b) {
      w->blk_ok = false; /* no memory: stop checking rewrites, never fail the upload */
      return;
    }
    w->blk = b;
    w->capblk = cap;
  }
  memcpy(w->blk + w->nblk, j->blocks, j->nblocks * sizeof *j->blocks);
  w->nblk += j->nblocks;
}

/* Publishes a hashed stretch: the checksums, then persisted moves and the
 * bytes leave the cache. mu held. */
static void persist_publish_locked(rw_writer *w, persist_job *j) {
  w->crc_persisted_ok = w->crc_persisted_ok && j->crc_ok; /* the owner may have given up on it */
  if (w->crc_persisted_ok) w->crc_persisted = j->crc;
  if (w->blk_ok && j->blk_ok) blocks_append_locked(w, j);
  else w->blk_ok = false;
  w->blk_run = j->blk_run;
  w->blk_pos = j->blk_pos;
  free(j->iov);
  free(j->blocks);
  rw_sgbuf_release_upto(w->cache, j->to);
  w->persisted = j->to;
  budget_settle_locked(w);
  notify_locked(w);
}

static void finish_if_ready_locked(rw_writer *w);

/* The hashing section: one thread at a time hashes [persisted, hash_to)
 * without mu, publishes, and goes on while others handed it more. Entered
 * and left with mu held. */
static void hash_section_locked(rw_writer *w) {
  w->hashing = true;
  while (w->hash_to > w->persisted) {
    persist_job j;
    persist_take_locked(w, &j);
    pthread_mutex_unlock(&w->mu);
    persist_hash(&j);
    pthread_mutex_lock(&w->mu);
    persist_publish_locked(w, &j);
  }
  w->hashing = false;
  finish_if_ready_locked(w); /* an owner's absorb may have handed its range over */
  notify_locked(w);
}

/* Moves persisted to p: the newly confirmed bytes are hashed for the session
 * checksum and the block CRCs, in offset order, without mu (nothing in the
 * owner's calls waits for hashing), then dropped from the cache. When another
 * thread is hashing, the range is handed to it; wait (pool threads): return
 * only once persisted reached p; the owner thread never waits. mu held (it
 * is released meanwhile). */
static void advance_persisted_locked(rw_writer *w, uint64_t p, bool wait) {
  if (p <= w->persisted) return;
  if (p > w->hash_to) w->hash_to = p;
  if (w->hashing) {
    if (!wait) return;
    while (w->hashing && w->persisted < p) pthread_cond_wait(&w->cv, &w->mu);
    if (w->persisted >= p) return;
  }
  hash_section_locked(w);
}

/* Applies what the sink said. *done: the chunk (or the object) is finished. */
static rw_error *apply_locked(rw_writer *w, rw_sink_result *res, const chunk *c, bool *done,
                              bool *progressed) {
  *done = *progressed = false;
  if (res->finalized) {
    w->final_rejected = true; /* until the object is taken below */
    w->final_size = res->obj.size;
    if (!c->final)
      return rw_err(RW_E_SESSION_CONFLICT,
                    "the server finalized the object (size %" PRIu64 ") on a non-final chunk "
                    "[%" PRIu64 ", %" PRIu64 "); refusing to call that a success",
                    res->obj.size, c->off, c->off + c->len);
    w->unsure = false;
    rw_error *e = verify_object_locked(w, &res->obj);
    if (e) return e;
    w->final_rejected = false;
    advance_persisted_locked(w, w->total, true);
    object_clear(&w->obj);
    w->obj = res->obj;
    memset(&res->obj, 0, sizeof res->obj);
    w->state = RW_WRITER_DONE;
    w->chunks++;
    notify_locked(w);
    *done = *progressed = true;
    return NULL;
  }
  w->unsure = false;
  uint64_t p = res->persisted;
  if (p < w->persisted)
    return rw_err(RW_E_SESSION_CONFLICT,
                  "the server's persisted size went backwards from %" PRIu64 " to %" PRIu64
                  " (another writer on this session?)",
                  w->persisted, p);
  if (p > w->max_sent)
    return rw_err(RW_E_SESSION_CONFLICT,
                  "the server persisted %" PRIu64 " bytes but only %" PRIu64
                  " were sent (another writer on this session?)",
                  p, w->max_sent);
  *progressed = p > w->persisted;
  advance_persisted_locked(w, p, true);
  if (!c->final && p >= c->off + c->len) {
    w->chunks++;
    *done = true;
  }
  return NULL;
}

/* The session was found finalized and the caller has now supplied every
 * byte and asked to complete: the object is the server's, once checked. */
static void finish_from_server_locked(rw_writer *w) {
  rw_error *e = verify_object_locked(w, &w->server_obj);
  if (e) {
    w->final_rejected = true;
    w->final_size = w->server_obj.size;
    fail_locked(w, e);
    return;
  }
  object_clear(&w->obj);
  w->obj = w->server_obj;
  memset(&w->server_obj, 0, sizeof w->server_obj);
  w->state = RW_WRITER_DONE;
  notify_locked(w);
}

/* Takes the bytes the server already holds (after a resume) as persisted
 * once the caller has supplied them: hashed for the final checksum, never
 * resent. mu held. */
static void absorb_locked(rw_writer *w, bool owner) {
  if (w->server_end > w->persisted) {
    uint64_t end = rw_sgbuf_contiguous_end(w->cache);
    advance_persisted_locked(w, end < w->server_end ? end : w->server_end, !owner);
  }
  finish_if_ready_locked(w);
}

static void finish_if_ready_locked(rw_writer *w) {
  if (w->server_final && w->closing && w->state == RW_WRITER_COMPLETING && w->persisted >= w->server_end)
    finish_from_server_locked(w);
}

/* Bytes past the end of a session found finalized can never be sent (and
 * no room would ever open for them): the caller's stream is not the one the
 * object was made from. */
static rw_error *past_final(rw_writer *w, uint64_t end) {
  return rw_err(RW_E_SESSION_CONFLICT,
                "the session was already finalized with %" PRIu64 " bytes, but bytes up to %" PRIu64
                " were written: the object is not what is being written",
                w->server_end, end);
}

/* After a resume, the caller's stream must fit what the server holds: no
 * byte past a finalized object, and a total that is the finalized size, or
 * no less than what a live session holds (nothing could send or finish it:
 * Complete would wait forever). Whichever comes first, Complete or the
 * server's answer, calls this. mu held. */
static rw_error *server_conflict_locked(rw_writer *w) {
  uint64_t end = w->cache ? rw_sgbuf_end(w->cache) : 0;
  if (w->server_final && end > w->server_end) return past_final(w, end);
  if (!w->closing) return NULL;
  if (w->server_final && w->total != w->server_end)
    return rw_err(RW_E_SESSION_CONFLICT,
                  "the session was already finalized with %" PRIu64 " bytes; Complete asked for %" PRIu64,
                  w->server_end, w->total);
  if (w->total < w->server_end)
    return rw_err(RW_E_SESSION_CONFLICT,
                  "the server holds %" PRIu64 " bytes of this session, more than the %" PRIu64
                  " Complete asked for",
                  w->server_end, w->total);
  return NULL;
}

/* What a resumed session's server holds decides where the upload goes on:
 * more than the saved state (the normal case after a crash) is taken from
 * the caller's bytes; a finalized session yields its object once the bytes
 * are supplied and match; less than the saved state is not this session's
 * state. mu held. */
static rw_error *sync_apply_locked(rw_writer *w, rw_sink_result *res) {
  w->need_sync = w->unsure = false;
  if (res->finalized) {
    object_clear(&w->server_obj);
    w->server_obj = res->obj;
    memset(&res->obj, 0, sizeof res->obj);
    w->server_final = true;
    w->server_end = w->server_obj.size;
  } else {
    w->server_end = res->persisted;
  }
  if (w->server_end < w->persisted)
    return rw_err(RW_E_SESSION_CONFLICT,
                  "the server holds %" PRIu64 " bytes of this session%s, fewer than the %" PRIu64
                  " the saved state says were persisted: the state is not this session's",
                  w->server_end, w->server_final ? " (finalized)" : "", w->persisted);
  rw_error *e = server_conflict_locked(w);
  if (e) return e;
  if (w->server_end > w->max_sent) w->max_sent = w->server_end;
  absorb_locked(w, false);
  notify_locked(w);
  return NULL;
}

typedef struct attempt {
  chunk c;
  struct iovec *iov;
  int iovcnt;
  uint64_t off, len;
  rw_sink_sums sums;
} attempt;

/* Builds the request for the unpersisted rest of chunk c. mu held. */
static rw_error *prepare_locked(rw_writer *w, const chunk *c, attempt *a) {
  uint64_t end = c->off + c->len, from = w->persisted > c->off ? w->persisted : c->off;
  a->c = *c;
  a->off = from < end ? from : end;
  a->len = end - a->off;
  a->iovcnt = 0;
  a->iov = NULL;
  if (a->len) {
    int n = rw_sgbuf_view_count(w->cache, a->off, a->len);
    a->iov = n > 0 ? malloc((size_t)n * sizeof *a->iov) : NULL;
    if (!a->iov || rw_sgbuf_view(w->cache, a->off, a->len, a->iov, n) != n) {
      free(a->iov);
      a->iov = NULL;
      return rw_err(RW_E_INTERNAL, "cache does not hold [%" PRIu64 ", %" PRIu64 ")", a->off, end);
    }
    a->iovcnt = n;
  }
  memset(&a->sums, 0, sizeof a->sums);
  if (c->final) {
    a->sums.has_crc32c = w->cfg.crc32c && w->crc_persisted_ok;
    a->sums.crc32c = w->crc_all;
    a->sums.has_md5 = w->cfg.md5;
    memcpy(a->sums.md5, w->md5_digest, 16);
  }
  if (end > w->max_sent) w->max_sent = end;
  return NULL;
}

/* *verdict: the error is our judgement of a usable answer (apply_locked),
 * not a failure to get one. */
static rw_error *put_once(rw_writer *w, const chunk *c, bool *done, bool *progressed, bool *verdict) {
  *verdict = false;
  attempt a;
  pthread_mutex_lock(&w->mu);
  rw_error *e = prepare_locked(w, c, &a);
  pthread_mutex_unlock(&w->mu);
  if (e) return e;
  rw_sink_put p = {.offset = a.off, .iov = a.iov, .iovcnt = a.iovcnt, .len = a.len,
                   .final = c->final, .sums = &a.sums, .stall_timeout = w->cfg.stall_timeout};
  rw_sink_result res = {0};
  e = w->sink->ops->put(w->sink, w->ctx, &p, &res);
  free(a.iov);
  if (!e) {
    pthread_mutex_lock(&w->mu);
    e = apply_locked(w, &res, c, done, progressed);
    pthread_mutex_unlock(&w->mu);
    *verdict = e != NULL;
  }
  rw_sink_result_clear(&res);
  return e;
}

static rw_error *query_once(rw_writer *w, const chunk *c, bool *done) {
  rw_sink_result res = {0};
  bool progressed;
  rw_error *e = w->sink->ops->query(w->sink, w->ctx, &res);
  if (!e) {
    pthread_mutex_lock(&w->mu);
    e = apply_locked(w, &res, c, done, &progressed);
    pthread_mutex_unlock(&w->mu);
  }
  rw_sink_result_clear(&res);
  return e;
}

/* Records a retryable failure and sleeps the backoff. Returns NULL to retry,
 * or the error to give up with (taking cause). */
static rw_error *backoff_or_give_up(rw_writer *w, rw_backoff *b, rw_error *cause) {
  rw_error *ctx_err = rw_ctx_err(w->ctx);
  if (ctx_err) {
    rw_error_unref(cause);
    return ctx_err;
  }
  if (!rw_error_retryable(cause)) return cause;
  /* retry = {policy = "conditional"}: like Google's clients, retry only an
   * upload that carries a precondition. */
  if (w->cfg.retry_conditional && !w->sink->has_precondition) return cause;
  pthread_mutex_lock(&w->mu);
  count_error_locked(w, cause);
  w->retries++;
  pthread_mutex_unlock(&w->mu);
  rw_error_log(RW_LOG_INFO, cause, "retrying after");
  double before = b->spent;
  rw_error *e = rw_backoff_wait(b, w->ctx);
  pthread_mutex_lock(&w->mu);
  w->backoff_ms += (uint64_t)((b->spent - before) * 1000);
  pthread_mutex_unlock(&w->mu);
  if (!e) {
    rw_error_unref(cause);
    return NULL;
  }
  if (rw_error_is(e, RW_E_RETRY_BUDGET)) {
    rw_error *out = rw_err_wrap(RW_E_RETRY_BUDGET, cause, "%s; last error: %s", rw_error_message(e),
                                rw_error_message(cause));
    rw_error_unref(e);
    return out;
  }
  rw_error_unref(cause);
  return e;
}

/* Keeps our own copy of the sink's handle, read under mu by
 * rw_writer_session while the pool works. */
static rw_error *copy_session(rw_writer *w) {
  const char *h = w->sink->ops->session(w->sink);
  char *copy = h && *h ? strdup(h) : NULL;
  if (h && *h && !copy) return rw_err(RW_E_NOMEM, "out of memory keeping the session");
  pthread_mutex_lock(&w->mu);
  free(w->session);
  w->session = copy;
  w->began = true;
  pthread_mutex_unlock(&w->mu);
  return NULL;
}

static rw_error *begin_with_retries(rw_writer *w, rw_backoff *b) {
  for (;;) {
    rw_error *e = w->sink->ops->begin(w->sink, w->ctx);
    if (!e) return copy_session(w);
    if ((e = backoff_or_give_up(w, b, e))) return e;
  }
}

/* After a resume: asks the server what it holds before anything is sent. */
static rw_error *sync_session(rw_writer *w) {
  rw_backoff b;
  rw_backoff_init(&b, &w->cfg.retry);
  for (;;) {
    rw_sink_result res = {0};
    rw_error *e = w->sink->ops->query(w->sink, w->ctx, &res);
    if (!e) {
      pthread_mutex_lock(&w->mu);
      e = sync_apply_locked(w, &res);
      pthread_mutex_unlock(&w->mu);
      rw_sink_result_clear(&res);
      return e;
    }
    rw_sink_result_clear(&res);
    if ((e = backoff_or_give_up(w, &b, e))) return e;
  }
}

/* Asks the sink what it holds until it answers (retrying what is retryable). */
static rw_error *resync(rw_writer *w, rw_backoff *b, const chunk *c, bool *done) {
  for (;;) {
    rw_error *e = query_once(w, c, done);
    if (!e) return NULL;
    if ((e = backoff_or_give_up(w, b, e))) return e;
  }
}

/* True when the server persisted part of non-final chunk c and the rest is
 * not a multiple of 256 KiB: sent as it is, that rest would be a non-final
 * chunk GCS refuses (400) or only partly persists. The chunk then ends here
 * and the next one is cut from the persisted offset, in whole quanta, with
 * the data that follows (or becomes the final chunk). mu held. */
static bool rest_misaligned_locked(rw_writer *w, const chunk *c) {
  uint64_t end = c->off + c->len;
  return !c->final && w->persisted > c->off && w->persisted < end &&
         (end - w->persisted) % RW_CHUNK_QUANTUM != 0;
}

static bool rest_misaligned(rw_writer *w, const chunk *c) {
  pthread_mutex_lock(&w->mu);
  bool r = rest_misaligned_locked(w, c);
  pthread_mutex_unlock(&w->mu);
  return r;
}

/* The final request got no usable answer: the connection broke or stalled
 * (net.*), or a reply the protocol does not allow (gcs.protocol, e.g. a 200
 * whose body is cut short or is not the object). The object may exist. */
static bool ambiguous_final(const chunk *c, const rw_error *e) {
  const char *code = rw_error_code(e);
  return c->final && (strncmp(code, "net.", 4) == 0 || strcmp(code, RW_E_PROTOCOL) == 0);
}

static void set_unsure(rw_writer *w, bool v) {
  pthread_mutex_lock(&w->mu);
  w->unsure = v;
  pthread_mutex_unlock(&w->mu);
}

/* A final request whose answer was unusable and is not retryable (e.g. a
 * 200 that is not an object): ask the session once. Finalized: the object
 * is taken (and verified); else the original error stands. */
static rw_error *settle_final(rw_writer *w, const chunk *c, rw_error *e, bool *done) {
  bool d = false;
  rw_error *qe = query_once(w, c, &d);
  if (qe) {
    rw_error_unref(qe);
    return e;
  }
  if (d) {
    rw_error_unref(e);
    *done = true;
    return NULL;
  }
  return e;
}

static rw_error *send_chunk(rw_writer *w, const chunk *c) {
  rw_backoff b;
  rw_backoff_init(&b, &w->cfg.retry);
  if (!w->began) {
    rw_error *e = begin_with_retries(w, &b);
    if (e) return e;
  }
  for (;;) {
    bool done = false, progressed = false, verdict = false;
    if (rest_misaligned(w, c)) return NULL;
    rw_error *e = put_once(w, c, &done, &progressed, &verdict);
    if (!e && done) return NULL;
    if (!e && progressed) continue; /* partial 308: send the rest at once */
    if (!e) e = rw_err(RW_E_NO_PROGRESS, "the server took none of chunk [%" PRIu64 ", %" PRIu64 ")",
                       c->off, c->off + c->len);
    if (verdict || rw_error_is(e, RW_E_SESSION_CONFLICT) || rw_error_is(e, RW_E_CHECKSUM)) return e;
    if (ambiguous_final(c, e)) {
      set_unsure(w, true);
      if (!rw_error_retryable(e)) {
        e = settle_final(w, c, e, &done);
        if (!e && done) return NULL;
        return e;
      }
    }
    if ((e = backoff_or_give_up(w, &b, e))) return e;
    if ((e = resync(w, &b, c, &done))) return e;
    if (done) return NULL;
  }
}

static void pump_main(void *arg) {
  rw_writer *w = arg;
  pthread_mutex_lock(&w->mu);
  if (w->need_sync && !w->fatal && !w->aborting) {
    pthread_mutex_unlock(&w->mu);
    rw_error *e = sync_session(w);
    pthread_mutex_lock(&w->mu);
    if (e) {
      if (w->aborting) rw_error_unref(e);
      else fail_locked(w, e);
    }
  }
  chunk c;
  while (next_chunk_locked(w, &c)) {
    pthread_mutex_unlock(&w->mu);
    rw_error *e = send_chunk(w, &c);
    pthread_mutex_lock(&w->mu);
    if (e) {
      if (w->aborting) rw_error_unref(e);
      else fail_locked(w, e);
      break;
    }
  }
  w->pumping = false;
  notify_locked(w);
  pthread_mutex_unlock(&w->mu);
}

/* ---- several chunks in flight (sink->max_inflight > 1) ----
 * Consecutive pieces of the cache from sched_end on go out as their own puts,
 * up to max_inflight at once, each a pool task with its own retries. A put's
 * success means the sink accepted the piece; bytes leave the cache only below
 * the persisted offset the sink reports. The final put goes alone, once every
 * other piece is answered. When the server turns out to hold fewer bytes than
 * it accepted (a final put or a long poll finds persisted short of sched_end:
 * a proxy that died before passing them on), the writer resends from the
 * persisted offset ("rewinds"). */

static void multi_settle_locked(rw_writer *w) {
  w->pumping = w->ntasks > 0 || w->prepping || w->polling;
}

static bool live_locked(rw_writer *w) {
  return !w->fatal && !w->aborting && w->state < RW_WRITER_DONE;
}

/* Where pieces must end now: the sink's max_ahead past persisted. mu held. */
static uint64_t ahead_end_locked(rw_writer *w) {
  uint64_t a = w->sink->max_ahead;
  return a && w->persisted + a > w->persisted ? w->persisted + a : UINT64_MAX;
}

/* The next piece from sched_end (not yet taken). mu held. */
static bool next_piece_locked(rw_writer *w, chunk *c) {
  if (!live_locked(w) || w->server_end > w->persisted || w->server_final) return false;
  if (w->sched_end < w->persisted) w->sched_end = w->persisted;
  uint64_t start = w->sched_end, end = data_end_locked(w), ahead = ahead_end_locked(w);
  if (end > ahead) end = ahead;
  if (w->closing && end >= w->total) {
    uint64_t avail = w->total - start;
    if (avail > w->cfg.max_chunk_size) {
      *c = (chunk){start, w->cfg.max_chunk_size, false};
      return true;
    }
    if (w->ntasks > 0 || w->polling) return false; /* the final put goes alone */
    *c = (chunk){start, avail, true};
    return true;
  }
  if (w->closing && end - start >= w->cfg.min_chunk_size) { /* up to the bound, before the end */
    uint64_t n = end - start < w->cfg.max_chunk_size ? end - start : w->cfg.max_chunk_size;
    *c = (chunk){start, n - n % RW_CHUNK_QUANTUM, false};
    return c->len > 0;
  }
  uint64_t avail = end > start ? end - start : 0;
  uint64_t n = avail < w->cfg.max_chunk_size ? avail : w->cfg.max_chunk_size;
  n -= n % RW_CHUNK_QUANTUM;
  if (n < w->cfg.min_chunk_size) return false;
  *c = (chunk){start, n, false};
  return true;
}

/* Every accepted byte waits for the server and no new piece can start
 * until persisted moves (the cache or the sink's max_ahead is full, or
 * Complete waits for room for the rest): ask the sink. mu held. */
static bool poll_wanted_locked(rw_writer *w) {
  if (!live_locked(w) || w->ntasks > 0 || w->sched_end <= w->persisted) return false;
  uint64_t room = w->persisted + w->cfg.max_cache_size, ahead = ahead_end_locked(w);
  if (ahead < room) room = ahead;
  if (room < w->sched_end + w->cfg.min_chunk_size) return true;
  return w->closing && room < w->total; /* the rest cannot go out yet */
}

/* The sink's epoch moved: what it accepted past persisted may be lost;
 * the next pieces start from persisted again. mu held. */
static void epoch_check_locked(rw_writer *w, const rw_sink_result *res) {
  if (w->max_inflight <= 1 || res->epoch == w->epoch) return;
  w->epoch = res->epoch;
  if (w->sched_end > w->persisted) {
    rw_log(RW_LOG_INFO, "writer: the sink changed servers (epoch %" PRIu64 "): resending from %" PRIu64, res->epoch,
           w->persisted);
    w->sched_end = w->persisted;
  }
}

/* A piece's answer: persisted may lag or be old news (replies cross). */
static rw_error *apply_piece_locked(rw_writer *w, const rw_sink_result *res, const chunk *c) {
  epoch_check_locked(w, res);
  if (res->finalized)
    return rw_err(RW_E_SESSION_CONFLICT,
                  "the server finalized the object (size %" PRIu64 ") on a non-final chunk "
                  "[%" PRIu64 ", %" PRIu64 "); refusing to call that a success",
                  res->obj.size, c->off, c->off + c->len);
  if (res->persisted > w->max_sent)
    return rw_err(RW_E_SESSION_CONFLICT,
                  "the server persisted %" PRIu64 " bytes but only %" PRIu64
                  " were sent (another writer on this session?)",
                  res->persisted, w->max_sent);
  advance_persisted_locked(w, res->persisted, true);
  return NULL;
}

static rw_error *put_piece_once(rw_writer *w, const chunk *c) {
  attempt a;
  pthread_mutex_lock(&w->mu);
  rw_error *e = prepare_locked(w, c, &a);
  pthread_mutex_unlock(&w->mu);
  if (e || !a.len) {
    free(a.iov);
    return e;
  }
  rw_sink_put p = {.offset = a.off, .iov = a.iov, .iovcnt = a.iovcnt, .len = a.len,
                   .stall_timeout = w->cfg.stall_timeout};
  rw_sink_result res = {0};
  e = w->sink->ops->put(w->sink, w->ctx, &p, &res);
  free(a.iov);
  if (!e) {
    pthread_mutex_lock(&w->mu);
    e = apply_piece_locked(w, &res, c);
    if (!e) w->chunks++;
    pthread_mutex_unlock(&w->mu);
  }
  rw_sink_result_clear(&res);
  return e;
}

static rw_error *send_piece(rw_writer *w, const chunk *c) {
  rw_backoff b;
  rw_backoff_init(&b, &w->cfg.retry);
  for (;;) {
    rw_error *e = put_piece_once(w, c);
    if (!e) return NULL;
    if (rw_error_is(e, RW_E_SESSION_CONFLICT)) return e;
    if ((e = backoff_or_give_up(w, &b, e))) return e;
  }
}

/* The server holds fewer bytes than it accepted: send again from what it
 * persisted. A rewind that finds persisted where the last one left it
 * backs off (the retry budget bounds a server that never keeps them). */
static rw_error *rewind_to_persisted(rw_writer *w, const char *why) {
  pthread_mutex_lock(&w->mu);
  uint64_t from = w->persisted, had = w->sched_end;
  bool stuck = from == w->rewind_at;
  w->rewind_at = from;
  if (!stuck) rw_backoff_reset(&w->rewind_backoff);
  w->sched_end = from;
  pthread_mutex_unlock(&w->mu);
  rw_error *cause = rw_err(RW_E_NO_PROGRESS,
                           "%s: the server holds %" PRIu64 " bytes, fewer than the %" PRIu64
                           " it accepted; resending from %" PRIu64,
                           why, from, had, from);
  if (!stuck) {
    rw_error_log(RW_LOG_INFO, cause, "resending");
    rw_error_unref(cause);
    return NULL;
  }
  return backoff_or_give_up(w, &w->rewind_backoff, cause);
}

static bool persisted_below(rw_writer *w, uint64_t off) {
  pthread_mutex_lock(&w->mu);
  bool below = w->persisted < off;
  pthread_mutex_unlock(&w->mu);
  return below;
}

static rw_error *send_final_piece(rw_writer *w, const chunk *c) {
  rw_backoff b;
  rw_backoff_init(&b, &w->cfg.retry);
  for (;;) {
    bool done = false, progressed = false, verdict = false;
    rw_error *e = put_once(w, c, &done, &progressed, &verdict);
    if (!e && done) return NULL;
    if (!e && persisted_below(w, c->off)) return rewind_to_persisted(w, "final put");
    if (!e && progressed) continue;
    if (!e) e = rw_err(RW_E_NO_PROGRESS, "the server took none of the final chunk [%" PRIu64 ", %" PRIu64 ")",
                       c->off, c->off + c->len);
    if (verdict || rw_error_is(e, RW_E_SESSION_CONFLICT) || rw_error_is(e, RW_E_CHECKSUM)) return e;
    if (ambiguous_final(c, e)) {
      set_unsure(w, true);
      if (!rw_error_retryable(e)) {
        e = settle_final(w, c, e, &done);
        return e || done ? e : rewind_to_persisted(w, "final put");
      }
    }
    if ((e = backoff_or_give_up(w, &b, e))) return e;
    if ((e = resync(w, &b, c, &done))) return e;
    if (done) return NULL;
    if (persisted_below(w, c->off)) return rewind_to_persisted(w, "status after a failed final put");
  }
}

typedef struct piece_task {
  rw_writer *w;
  chunk c;
} piece_task;

static void task_end(rw_writer *w, rw_error *e) {
  pthread_mutex_lock(&w->mu);
  if (e && w->aborting) rw_error_unref(e);
  else if (e) fail_locked(w, e);
  multi_kick_locked(w);
  multi_settle_locked(w);
  notify_locked(w);
  pthread_mutex_unlock(&w->mu);
}

static void piece_main(void *arg) {
  piece_task *t = arg;
  rw_writer *w = t->w;
  chunk c = t->c;
  free(t);
  rw_error *e = c.final ? send_final_piece(w, &c) : send_piece(w, &c);
  pthread_mutex_lock(&w->mu);
  w->ntasks--;
  pthread_mutex_unlock(&w->mu);
  task_end(w, e);
}

/* Begin (the first time) or ask a resumed session what it holds. */
static void prep_main(void *arg) {
  rw_writer *w = arg;
  rw_backoff b;
  rw_backoff_init(&b, &w->cfg.retry);
  pthread_mutex_lock(&w->mu);
  bool sync = w->need_sync;
  pthread_mutex_unlock(&w->mu);
  rw_error *e = sync ? sync_session(w) : begin_with_retries(w, &b);
  pthread_mutex_lock(&w->mu);
  w->prepping = false;
  pthread_mutex_unlock(&w->mu);
  task_end(w, e);
}

/* One look at the persisted size. *moved: it advanced. */
static rw_error *poll_once(rw_writer *w, bool *moved) {
  rw_sink_result res = {0};
  rw_error *e = w->sink->ops->query(w->sink, w->ctx, &res);
  pthread_mutex_lock(&w->mu);
  uint64_t before = w->persisted;
  chunk all = {w->persisted, w->sched_end - w->persisted, false};
  if (!e) e = apply_piece_locked(w, &res, &all);
  *moved = w->persisted > before;
  if (e && rw_error_retryable(e)) count_error_locked(w, e);
  pthread_mutex_unlock(&w->mu);
  rw_sink_result_clear(&res);
  return e;
}

/* Polls the persisted size while every accepted byte waits for the server;
 * no progress for stall_timeout: the server lost them, resend. */
static void poll_main(void *arg) {
  rw_writer *w = arg;
  rw_backoff_config pc = {.min_wait = 0.005, .max_wait = 0.2, .total_wait = 1e12, .multiplier = 2};
  rw_backoff b;
  rw_backoff_init(&b, &pc);
  double since = rw_mono_now();
  rw_error *err = NULL;
  for (;;) {
    if ((err = rw_backoff_wait(&b, w->ctx))) break;
    bool moved = false;
    rw_error *e = poll_once(w, &moved);
    if (e && !rw_error_retryable(e)) {
      err = e;
      break;
    }
    rw_error_unref(e);
    if (moved) since = rw_mono_now();
    pthread_mutex_lock(&w->mu);
    bool want = poll_wanted_locked(w);
    pthread_mutex_unlock(&w->mu);
    if (!want) break;
    if (rw_mono_now() - since > w->cfg.stall_timeout) {
      err = rewind_to_persisted(w, "persisted size stalled");
      break;
    }
  }
  pthread_mutex_lock(&w->mu);
  w->polling = false;
  pthread_mutex_unlock(&w->mu);
  task_end(w, err);
}

static bool submit_locked(rw_writer *w, void (*fn)(void *), void *arg) {
  if (rw_pool_submit(w->pool, fn, arg)) return true;
  fail_locked(w, rw_err(RW_E_INTERNAL, "could not start upload work (pool refused)"));
  return false;
}

static void start_pieces_locked(rw_writer *w) {
  chunk c;
  while (w->ntasks < w->max_inflight && !w->polling && next_piece_locked(w, &c)) {
    piece_task *t = malloc(sizeof *t);
    if (!t) {
      fail_locked(w, rw_err(RW_E_NOMEM, "out of memory starting a chunk"));
      return;
    }
    *t = (piece_task){w, c};
    w->ntasks++;
    if (!submit_locked(w, piece_main, t)) {
      w->ntasks--;
      free(t);
      return;
    }
    w->sched_end = c.off + c.len;
  }
}

static void multi_kick_locked(rw_writer *w) {
  chunk c;
  if (!live_locked(w) || w->prepping) goto out;
  if (!w->began || w->need_sync) {
    if (w->ntasks == 0 && !w->polling && (w->need_sync || next_piece_locked(w, &c))) {
      w->prepping = true;
      if (!submit_locked(w, prep_main, w)) w->prepping = false;
    }
    goto out;
  }
  start_pieces_locked(w);
  if (!w->polling && poll_wanted_locked(w)) {
    w->polling = true;
    if (!submit_locked(w, poll_main, w)) w->polling = false;
  }
out:
  multi_settle_locked(w);
}

/* ---- the owner's API ---- */

/* The bytes that became contiguous, to hash once, in order, on the owner
 * thread. Taken under mu; hashed after it is released (a mapped file faults
 * its pages in here: the pump must not wait for that). The memory stays
 * valid meanwhile: releases only run in rw_writer_drain, on this thread. */
typedef struct hash_job {
  struct iovec stack[16], *iov;
  int n;
} hash_job;

static void hash_take_locked(rw_writer *w, hash_job *j) {
  j->n = 0;
  j->iov = j->stack;
  uint64_t end = rw_sgbuf_contiguous_end(w->cache);
  if (end <= w->hashed_end) return;
  uint64_t len = end - w->hashed_end;
  int n = rw_sgbuf_view_count(w->cache, w->hashed_end, len);
  if (n > 16) j->iov = malloc((size_t)n * sizeof *j->iov);
  if (!j->iov || rw_sgbuf_view(w->cache, w->hashed_end, len, j->iov, n) != n) {
    if (j->iov != j->stack) free(j->iov);
    j->iov = j->stack;
    w->crc_persisted_ok = false; /* cannot vouch for the checksum any more */
    return;
  }
  j->n = n;
  w->hashed_end = end;
}

static void hash_run(rw_writer *w, hash_job *j) {
  for (int i = 0; i < j->n; i++) {
    if (w->cfg.crc32c) w->crc_all = rw_crc32c(w->crc_all, j->iov[i].iov_base, j->iov[i].iov_len);
    if (w->md5_live) rw_md5_update(&w->md5, j->iov[i].iov_base, j->iov[i].iov_len);
  }
  if (j->iov != j->stack) free(j->iov);
}

static rw_error *usable_locked(rw_writer *w) {
  if (w->fatal) return rw_error_ref(w->fatal);
  if (w->aborting || w->state == RW_WRITER_ABORTED) return rw_err(RW_E_CLOSED, "the writer was aborted");
  if (w->closing) return rw_err(RW_E_CLOSED, "the writer is completing; no more writes");
  return NULL;
}

uint64_t rw_writer_room(rw_writer *w, uint64_t off) {
  pthread_mutex_lock(&w->mu);
  uint64_t window_end = w->persisted + w->cfg.max_cache_size;
  uint64_t room = off < w->persisted ? UINT64_MAX : (off < window_end ? window_end - off : 0);
  if (room && room != UINT64_MAX) room = budget_allow_locked(w, off, room);
  pthread_mutex_unlock(&w->mu);
  return room;
}

/* A rewrite of bytes already persisted: every whole 256 KiB block it covers
 * whose CRC32C we kept must match. Parts of blocks at the edges of the write,
 * and blocks below a resume point, cannot be compared. mu held. */
static rw_error *check_persisted_locked(rw_writer *w, uint64_t off, const char *data, uint64_t len) {
  uint64_t end = off + len;
  uint64_t b = (off + RW_CHUNK_QUANTUM - 1) / RW_CHUNK_QUANTUM;
  for (; (b + 1) * RW_CHUNK_QUANTUM <= end; b++) {
    uint64_t at = b * RW_CHUNK_QUANTUM;
    if (at < w->blk_start || !w->blk_ok) continue;
    size_t i = (size_t)((at - w->blk_start) / RW_CHUNK_QUANTUM);
    if (i >= w->nblk) break;
    if (rw_crc32c(0, data + (at - off), RW_CHUNK_QUANTUM) != w->blk[i])
      return rw_err(RW_E_OVERLAP,
                    "bytes [%" PRIu64 ", %" PRIu64 ") differ from those already persisted at that offset "
                    "(rewrites of persisted bytes are compared in whole 256 KiB blocks)",
                    at, at + RW_CHUNK_QUANTUM);
  }
  return NULL;
}

/* A write that no progress can ever make room for: it starts past the
 * contiguous prefix (a gap only the caller can fill) and ends past the
 * furthest window that prefix can open. mu held. */
static rw_error *check_window_locked(rw_writer *w, uint64_t off, uint64_t len) {
  uint64_t end = data_end_locked(w), reach = end + w->cfg.max_cache_size;
  if (off <= end || off + len <= reach) return NULL;
  return rw_err(RW_E_OUT_OF_WINDOW,
                "write [%" PRIu64 ", %" PRIu64 ") does not fit the cache window [%" PRIu64 ", %" PRIu64
                ") and bytes [%" PRIu64 ", %" PRIu64 ") below it were never written: write them first "
                "(or raise max_cache_size above %" PRIu64 ")",
                off, off + len, w->persisted, w->persisted + w->cfg.max_cache_size, end, off,
                off + len - end);
}

rw_error *rw_writer_write_some(rw_writer *w, uint64_t off, const void *data, size_t len,
                               rw_seg_release_fn release, void *ud, size_t *accepted) {
  *accepted = 0;
  if (off + len < off) return rw_err(RW_E_INVALID, "offset + length overflows");
  bool kept = false;
  hash_job hj = {.n = 0};
  hj.iov = hj.stack;
  pthread_mutex_lock(&w->mu);
  rw_error *e = usable_locked(w);
  if (e) goto out;
  if (w->server_final && off + len > w->server_end) {
    e = past_final(w, off + len);
    fail_locked(w, rw_error_ref(e));
    goto out;
  }
  uint64_t skip = w->persisted > off ? w->persisted - off : 0;
  if (skip > len) skip = len;
  if (skip && (e = check_persisted_locked(w, off, data, skip))) goto out;
  if (skip == len) { /* all already persisted */
    *accepted = len;
    goto out;
  }
  uint64_t o = off + skip, window_end = w->persisted + w->cfg.max_cache_size;
  if ((e = check_window_locked(w, o, len - skip))) goto out;
  if (o >= window_end) {
    *accepted = (size_t)skip;
    goto out;
  }
  uint64_t n = len - skip;
  if (n > window_end - o) n = window_end - o;
  n = budget_allow_locked(w, o, n);
  if (n == 0) {
    *accepted = (size_t)skip;
    goto out;
  }
  deferred *d = malloc(sizeof *d);
  if (!d) {
    e = rw_err(RW_E_NOMEM, "out of memory holding a write");
    goto out;
  }
  *d = (deferred){release, ud, w, NULL};
  e = rw_sgbuf_insert(w->cache, o, (const char *)data + skip, (size_t)n, defer_release, d);
  if (e) {
    free(d);
    goto out;
  }
  kept = true;
  budget_settle_locked(w);
  *accepted = (size_t)(skip + n);
  w->written += n;
  hash_take_locked(w, &hj);
  absorb_locked(w, true);
  kick_locked(w);
out:
  pthread_mutex_unlock(&w->mu);
  hash_run(w, &hj);
  if (!e && !kept && release) release(ud); /* nothing held: give it back now */
  return e;
}

void rw_writer_fail(rw_writer *w, rw_error *e) {
  pthread_mutex_lock(&w->mu);
  fail_locked(w, e);
  pthread_mutex_unlock(&w->mu);
}

rw_error *rw_writer_complete_start(rw_writer *w, uint64_t total) {
  pthread_mutex_lock(&w->mu);
  rw_error *e = NULL;
  if (w->closing || w->state >= RW_WRITER_DONE) {
    e = w->fatal ? rw_error_ref(w->fatal) : NULL;
    goto out;
  }
  if ((e = usable_locked(w))) goto out;
  uint64_t end = rw_sgbuf_end(w->cache);
  if (end < w->persisted) end = w->persisted;
  if (total == UINT64_MAX) total = end;
  if (total < end) {
    e = rw_err(RW_E_INVALID, "total %" PRIu64 " is less than the bytes written (up to %" PRIu64 ")", total, end);
    goto out;
  }
  uint64_t gap_off, gap_len;
  if (rw_sgbuf_first_gap(w->cache, total, &gap_off, &gap_len) || data_end_locked(w) < total) {
    if (!rw_sgbuf_first_gap(w->cache, total, &gap_off, &gap_len)) {
      gap_off = data_end_locked(w);
      gap_len = total - gap_off;
    }
    e = rw_err(RW_E_GAP, "bytes [%" PRIu64 ", %" PRIu64 ") were never written; write them, then Complete",
               gap_off, gap_off + gap_len);
    goto out;
  }
  w->total = total;
  w->closing = true;
  w->state = RW_WRITER_COMPLETING;
  if (w->md5_live) {
    rw_md5_final(&w->md5, w->md5_digest);
    w->md5_live = false;
  }
  rw_error *conflict = server_conflict_locked(w);
  if (conflict) fail_locked(w, conflict);
  absorb_locked(w, true);
  kick_locked(w);
  notify_locked(w);
out:
  pthread_mutex_unlock(&w->mu);
  return e;
}

bool rw_writer_finished(rw_writer *w) {
  pthread_mutex_lock(&w->mu);
  bool f = w->state >= RW_WRITER_DONE && !w->pumping;
  pthread_mutex_unlock(&w->mu);
  return f;
}

const rw_sink_object *rw_writer_object(rw_writer *w) {
  pthread_mutex_lock(&w->mu);
  const rw_sink_object *o = w->state == RW_WRITER_DONE ? &w->obj : NULL;
  pthread_mutex_unlock(&w->mu);
  return o;
}

rw_error *rw_writer_error(rw_writer *w) {
  pthread_mutex_lock(&w->mu);
  rw_error *e = rw_error_ref(w->fatal);
  pthread_mutex_unlock(&w->mu);
  return e;
}

static void destroy(rw_writer *w, bool from_pool);

/* Stopping: cancel the work (prompt), then, off the caller's thread when
 * asked, wait for the pump and delete the session (abort_timeout). */
static bool stop_begin(rw_writer *w, bool delete_session) {
  pthread_mutex_lock(&w->mu);
  bool go = !w->aborting && w->state != RW_WRITER_DONE;
  if (go) {
    w->aborting = w->stopping = true;
    /* After a session conflict the session may be another writer's: leave it. */
    w->stop_delete = delete_session && !(w->fatal && rw_error_is(w->fatal, RW_E_SESSION_CONFLICT));
  }
  pthread_mutex_unlock(&w->mu);
  if (go) rw_ctx_cancel(w->ctx, rw_err(RW_E_CANCELED, "the writer was aborted"));
  return go;
}

static void stop_finish(void *arg) {
  rw_writer *w = arg;
  pthread_mutex_lock(&w->mu);
  while (w->pumping) pthread_cond_wait(&w->cv, &w->mu);
  bool del = w->began && w->stop_delete;
  pthread_mutex_unlock(&w->mu);
  if (del) {
    rw_ctx *actx = rw_ctx_with_timeout(NULL, w->cfg.abort_timeout);
    rw_error *e = actx ? w->sink->ops->abort(w->sink, actx) : NULL;
    if (e) rw_error_log(RW_LOG_WARN, e, "abort: deleting the session failed (it expires by itself)");
    rw_error_unref(e);
    rw_ctx_unref(actx);
  }
  pthread_mutex_lock(&w->mu);
  if (w->state < RW_WRITER_DONE) w->state = RW_WRITER_ABORTED;
  w->stopping = false;
  notify_locked(w);
  bool autofree = w->autofree;
  pthread_mutex_unlock(&w->mu);
  if (autofree) destroy(w, true); /* closed while this task ran (from abort_start) */
}

static void wait_stopped(rw_writer *w) {
  pthread_mutex_lock(&w->mu);
  while (w->stopping || w->pumping) pthread_cond_wait(&w->cv, &w->mu);
  pthread_mutex_unlock(&w->mu);
}

void rw_writer_abort_start(rw_writer *w) {
  if (stop_begin(w, true) && !rw_pool_submit(w->pool, stop_finish, w)) stop_finish(w);
}

bool rw_writer_stopped(rw_writer *w) {
  pthread_mutex_lock(&w->mu);
  bool s = !w->stopping && !w->pumping && (w->aborting || w->state >= RW_WRITER_DONE);
  pthread_mutex_unlock(&w->mu);
  return s;
}

void rw_writer_abort(rw_writer *w) {
  if (stop_begin(w, true)) stop_finish(w);
  wait_stopped(w);
}

void rw_writer_suspend(rw_writer *w) {
  if (stop_begin(w, false)) stop_finish(w);
  wait_stopped(w);
}

typedef struct wait_pred {
  rw_writer *w;
  bool want_room;
  uint64_t off;
} wait_pred;

static bool wait_ready(void *arg) {
  wait_pred *p = arg;
  rw_writer *w = p->w;
  if (w->fatal) return true;
  if (w->state >= RW_WRITER_DONE) return !w->pumping;
  if (!p->want_room) return false;
  if (p->off >= w->persisted + w->cfg.max_cache_size) return false;
  return budget_allow_locked(w, p->off, 1) > 0;
}

void rw_writer_wait(rw_writer *w, rw_ctx *ctx, bool want_room, uint64_t off, double timeout) {
  wait_pred p = {w, want_room, off};
  double until = timeout < 0 ? INFINITY : rw_mono_now() + timeout;
  /* Room freed by other writers under the process budget does not signal
   * this writer: look again every 20 ms while a budget is set. */
  uint64_t limit, used;
  rw_writer_process_budget(&limit, &used);
  if (limit && want_room && until > rw_mono_now() + 0.02) until = rw_mono_now() + 0.02;
  pthread_mutex_lock(&w->mu);
  rw_error_unref(rw_ctx_cond_wait(ctx ? ctx : w->ctx, &w->mu, &w->cv, wait_ready, &p, until));
  pthread_mutex_unlock(&w->mu);
}

int rw_writer_pollfd(rw_writer *w) { return w->efd; }

rw_writer_stats rw_writer_get_stats(rw_writer *w) {
  pthread_mutex_lock(&w->mu);
  rw_writer_stats s = {.written = w->written, .persisted = w->persisted,
                       .in_cache = rw_sgbuf_bytes(w->cache),
                       .contiguous = data_end_locked(w), .retries = w->retries,
                       .chunks = w->chunks, .backoff_ms = w->backoff_ms, .state = w->state};
  pthread_mutex_unlock(&w->mu);
  return s;
}

void rw_writer_set_hash_hook(rw_writer *w, void (*fn)(void *ud, uint64_t from, uint64_t to), void *ud) {
  pthread_mutex_lock(&w->mu);
  w->hash_hook = fn;
  w->hash_hook_ud = ud;
  pthread_mutex_unlock(&w->mu);
}

void rw_writer_each_error(rw_writer *w, void (*fn)(void *, const char *, uint64_t), void *ud) {
  pthread_mutex_lock(&w->mu);
  int n = w->ncodes;
  char codes[MAX_CODES][40];
  uint64_t counts[MAX_CODES];
  for (int i = 0; i < n; i++) {
    memcpy(codes[i], w->codes[i].code, 40);
    counts[i] = w->codes[i].n;
  }
  pthread_mutex_unlock(&w->mu);
  for (int i = 0; i < n; i++) fn(ud, codes[i], counts[i]);
}

char *rw_writer_session(rw_writer *w, uint64_t *persisted, bool *has_crc, uint32_t *crc) {
  pthread_mutex_lock(&w->mu);
  char *handle = w->session ? strdup(w->session) : NULL;
  *persisted = w->persisted;
  *has_crc = w->crc_persisted_ok;
  *crc = w->crc_persisted;
  pthread_mutex_unlock(&w->mu);
  return handle;
}

/* Drops the cache (its releases are deferred) and runs the releases on the
 * calling (owner) thread. Nothing may read the cache any more. */
static void drop_cache(rw_writer *w) {
  pthread_mutex_lock(&w->mu);
  rw_sgbuf_free(w->cache); /* defers every release */
  w->cache = NULL;
  budget_settle_locked(w);
  pthread_mutex_unlock(&w->mu);
  rw_writer_drain(w);
}

/* Frees what is left once no work runs. from_pool: called by a pool task,
 * which must not be the one to join the pool. */
static void destroy(rw_writer *w, bool from_pool) {
  if (w->md5_live) rw_md5_free(&w->md5);
  object_clear(&w->obj);
  object_clear(&w->server_obj);
  rw_error_unref(w->fatal);
  rw_sink_destroy(w->sink);
  rw_ctx_unref(w->ctx);
  if (from_pool) rw_pool_shared_release_from_task();
  else rw_pool_shared_release();
  if (w->efd >= 0) close(w->efd);
  pthread_cond_destroy(&w->cv);
  pthread_mutex_destroy(&w->mu);
  free(w->session);
  free(w->blk);
  free(w);
}

void rw_writer_free(rw_writer *w) {
  if (!w) return;
  rw_writer_abort(w); /* a no-op once the object exists; joins the work */
  drop_cache(w);
  destroy(w, false);
}

static void close_finish(void *arg) {
  rw_writer *w = arg;
  stop_finish(w);
  destroy(w, true);
}

void rw_writer_close(rw_writer *w) {
  if (!w) return;
  bool started = stop_begin(w, true);
  pthread_mutex_lock(&w->mu);
  /* Cancelled: the transfer lets go of the cache within a poll slice. */
  while (w->pumping) pthread_cond_wait(&w->cv, &w->mu);
  pthread_mutex_unlock(&w->mu);
  drop_cache(w);
  pthread_mutex_lock(&w->mu);
  /* an earlier abort_start's task is still deleting: it frees w */
  bool pending = !started && w->stopping;
  if (pending) w->autofree = true;
  pthread_mutex_unlock(&w->mu);
  if (pending) return;
  if (!started) {
    destroy(w, false); /* finished or stopped: nothing left on the network */
    return;
  }
  if (!rw_pool_submit(w->pool, close_finish, w)) {
    pthread_mutex_lock(&w->mu);
    w->stop_delete = false; /* no thread for the DELETE: the session expires by itself */
    pthread_mutex_unlock(&w->mu);
    stop_finish(w);
    destroy(w, false);
  }
}
