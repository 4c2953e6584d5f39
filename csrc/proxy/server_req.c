/* The proxy's requests (PROTOCOL.md section 6): the at-most-once table,
 * rate limits, sessions with their writers, and GCS jobs on the pool. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <unistd.h>

#include "core/checksum.h"
#include "core/workgroup.h"
#include "proxy/server_int.h"
#include "sinks/gcs.h"

/* ---- bodies ---- */

rw_error *body_alloc(rw_proxy_server *s, const rwp_frame *f, uint8_t **buf, body **out) {
  if (s->held + f->body_len > s->cfg.cache)
    return rw_err(RW_E_PROTO_BUSY, "the proxy holds %llu bytes of request bodies; %u more would pass its cache (%llu)",
                  (unsigned long long)s->held, f->body_len, (unsigned long long)s->cfg.cache);
  body *b = calloc(1, sizeof *b);
  if (b) b->data = malloc(f->body_len ? f->body_len : 1);
  if (!b || !b->data) {
    free(b);
    return rw_err(RW_E_PROTO_BUSY, "the proxy is out of memory");
  }
  b->srv = s, b->len = f->body_len, b->refs = 1;
  s->held += b->len;
  *buf = b->data, *out = b;
  return NULL;
}

void body_unref(void *p) {
  body *b = p;
  if (--b->refs > 0) return;
  b->srv->held -= b->len;
  free(b->data), free(b);
}

/* ---- replies ---- */

/* A reply blob: op, for_op, u16 ops length, ops, body (amo.h keeps them). */
static uint8_t *blob_make(const rwp_msg *m, const void *body, size_t blen, size_t *len) {
  uint8_t ops[RWP_MAX_OP];
  size_t olen = 0;
  rw_error *e = rwp_encode_ops(m, ops, &olen);
  uint8_t *b = e ? NULL : malloc(4 + olen + blen);
  if (e) rw_error_log(RW_LOG_ERROR, e, "proxy: a reply could not be encoded");
  rw_error_unref(e);
  if (!b) return NULL;
  b[0] = m->op, b[1] = m->op == RWP_REPLY ? m->u.reply.for_op : 0;
  b[2] = (uint8_t)(olen >> 8), b[3] = (uint8_t)olen;
  memcpy(b + 4, ops, olen);
  if (blen) memcpy(b + 4 + olen, body, blen);
  *len = 4 + olen + blen;
  return b;
}

static void reply_sent(conn *c) {
  if (c->inflight > 0) c->inflight--;
  if (c->goodbye && c->inflight == 0) {
    c->closing = true;
    conn_flush(c);
  }
}

void reply_deliver(rw_proxy_server *s, uint64_t conn_id, uint64_t client_id, uint64_t seq,
                   const void *blob, size_t len) {
  conn *c = conn_find(s, conn_id);
  if (!c || c->state != C_AUTHED) return;
  const uint8_t *b = blob;
  size_t olen = (size_t)b[2] << 8 | b[3];
  rwp_msg m = {.op = b[0], .client_id = client_id, .seq = seq};
  rw_error *e = m.op == RWP_REPLY ? rwp_decode_reply(b[1], b + 4, olen, &m.u.reply)
                                  : rwp_decode_ops(m.op, b + 4, olen, &m);
  if (m.op == RWP_REPLY) m.u.reply.for_op = b[1];
  if (e) {
    rw_error_log(RW_LOG_ERROR, e, "proxy: a kept reply could not be decoded");
    rw_error_unref(e);
    return;
  }
  size_t blen = len - 4 - olen;
  conn_send(c, &m, blen ? b + 4 + olen : NULL, blen);
  reply_sent(c);
}

/* The request ran: keep the reply, send it to the requester and to every
 * duplicate that waits for it. */
static void finish(rw_proxy_server *s, uint64_t conn_id, uint64_t client_id, uint64_t seq,
                   const rwp_msg *m, const void *body, size_t blen) {
  size_t len = 0;
  uint8_t *blob = blob_make(m, body, blen, &len);
  uint64_t *w = NULL;
  size_t nw = 0;
  rw_error *e = NULL;
  if (blob) e = rw_amo_done(s->amo, client_id, seq, blob, len, &w, &nw);
  else rw_amo_cancel(s->amo, client_id, seq, &w, &nw);
  rw_error_unref(e);
  if (blob) {
    reply_deliver(s, conn_id, client_id, seq, blob, len);
    for (size_t i = 0; i < nw; i++) reply_deliver(s, w[i], client_id, seq, blob, len);
  }
  free(w), free(blob);
}

static rwp_str clip(const char *p, size_t max) {
  size_t n = p ? strlen(p) : 0;
  return (rwp_str){p, (uint16_t)(n > max ? max : n)};
}

/* The request ran and failed: its ERROR is its reply, with retry_after_ms
 * (0: none). Takes e. */
static void finish_error_after(rw_proxy_server *s, uint64_t conn_id, uint64_t client_id, uint64_t seq,
                               rw_error *e, bool has_persisted, uint64_t persisted, uint32_t retry_ms) {
  char what[96];
  snprintf(what, sizeof what, "proxy: client %016llx request %llu", (unsigned long long)client_id,
           (unsigned long long)seq);
  rw_error_log(RW_LOG_WARN, e, what);
  s->live.errors++;
  rwp_msg m = {.op = RWP_ERROR};
  m.u.error.flags2 = (rw_error_retryable(e) ? RWP_ERR_RETRYABLE : 0) | (has_persisted ? RWP_ERR_PERSISTED : 0);
  m.u.error.persisted = has_persisted ? persisted : 0;
  m.u.error.retry_after_ms = retry_ms;
  m.u.error.code = clip(rw_error_code(e), RWP_MAX_CODE);
  m.u.error.message = clip(rw_error_message(e), RWP_MAX_MESSAGE);
  m.u.error.id = clip(rw_error_id(e), RWP_MAX_ERROR_ID);
  finish(s, conn_id, client_id, seq, &m, NULL, 0);
  rw_error_unref(e);
}

static void finish_error(rw_proxy_server *s, uint64_t conn_id, uint64_t client_id, uint64_t seq,
                         rw_error *e, bool has_persisted, uint64_t persisted) {
  finish_error_after(s, conn_id, client_id, seq, e, has_persisted, persisted, 0);
}

/* ---- GCS jobs (pool threads) ---- */

static rw_sink *job_sink(job *j, rw_error **err) {
  rw_proxy_server *s = j->srv;
  rw_gcs_config gc = {.bucket = j->bucket, .object = j->object, .endpoint = s->upstream,
                      .metadata_json = j->metadata, .session_uri = j->uri, .token = s->token,
                      .cred = s->cred, .anonymous = !s->token && !s->cred, .ca_file = s->ca_file,
                      .has_if_generation_match = j->has_gen, .if_generation_match = j->gen,
                      .has_if_metageneration_match = j->has_metagen,
                      .if_metageneration_match = j->metagen, .abort_timeout = 5};
  return rw_gcs_sink_new(&gc, err);
}

static bool on_origin(rw_proxy_server *s, const char *uri) {
  const char *up = s->upstream, *p = strstr(up, "://");
  size_t olen = p ? (size_t)(strchrnul(p + 3, '/') - up) : 0;
  return olen && !strncmp(uri, up, olen) && uri[olen] == '/';
}

static rw_error *job_create(job *j, rw_sink *sk, rw_ctx *ctx) {
  rw_error *e = sk->ops->begin(sk, ctx);
  if (e) return e;
  const char *uri = sk->ops->session(sk);
  if (!uri || !*uri || strlen(uri) > RWP_MAX_SESSION || !on_origin(j->srv, uri))
    return rw_err(RW_E_PROTOCOL, "the upstream's session URI is not on its origin or too long");
  return (j->session = strdup(uri)) ? NULL : rw_err(RW_E_NOMEM, "proxy: out of memory");
}

static rw_error *job_query(job *j, rw_sink *sk, rw_ctx *ctx) {
  rw_sink_result res = {0};
  rw_error *e = sk->ops->query(sk, ctx, &res);
  if (!e) {
    j->persisted = res.finalized ? res.obj.size : res.persisted;
    j->finalized = res.finalized;
    if (res.finalized && res.obj.json) j->json = strdup(res.obj.json);
  }
  rw_sink_result_clear(&res);
  return e;
}

static rw_error *job_abort(rw_sink *sk, rw_ctx *ctx) {
  rw_error *e = sk->ops->abort(sk, ctx);
  if (e && (rw_error_status(e) == 404 || rw_error_status(e) == 410)) {
    rw_error_unref(e); /* already gone: ABORT is idempotent */
    return NULL;
  }
  return e;
}

static void job_run(void *arg) {
  job *j = arg;
  rw_proxy_server *s = j->srv;
  rw_ctx *ctx = rw_ctx_with_timeout(s->ctx, 60);
  rw_sink *sk = ctx ? job_sink(j, &j->err) : NULL;
  if (!ctx && !j->err) j->err = rw_err(RW_E_NOMEM, "proxy: out of memory");
  if (sk) {
    if (j->kind == J_CREATE) j->err = job_create(j, sk, ctx);
    else if (j->kind == J_ABORT) j->err = job_abort(sk, ctx);
    else j->err = job_query(j, sk, ctx);
  }
  rw_sink_destroy(sk);
  rw_ctx_unref(ctx);
  pthread_mutex_lock(&s->jobs_mu);
  j->next = s->done, s->done = j;
  uint64_t one = 1;
  if (write(s->wakefd, &one, sizeof one) < 0) { /* the loop looks every 50 ms */ }
  s->jobs_running--;
  pthread_cond_broadcast(&s->jobs_cv);
  pthread_mutex_unlock(&s->jobs_mu);
}

static void job_free(job *j) {
  free(j->bucket), free(j->object), free(j->metadata), free(j->uri);
  free(j->session), free(j->json);
  rw_error_unref(j->err);
  free(j);
}

static char *str_dup(rwp_str v) {
  char *p = malloc((size_t)v.len + 1);
  if (p) memcpy(p, v.p, v.len), p[v.len] = 0;
  return p;
}

static job *job_new(conn *c, int kind, uint64_t seq) {
  job *j = calloc(1, sizeof *j);
  if (j) j->srv = c->srv, j->kind = kind, j->conn_id = c->id, j->client_id = c->client_id, j->seq = seq;
  return j;
}

static rw_error *job_submit(rw_proxy_server *s, job *j) {
  pthread_mutex_lock(&s->jobs_mu);
  s->jobs_running++;
  pthread_mutex_unlock(&s->jobs_mu);
  rw_pool *pool = rw_pool_shared_peek();
  if (pool && rw_pool_submit(pool, job_run, j)) return NULL;
  pthread_mutex_lock(&s->jobs_mu);
  s->jobs_running--;
  pthread_cond_broadcast(&s->jobs_cv);
  pthread_mutex_unlock(&s->jobs_mu);
  return rw_err(RW_E_PROTO_BUSY, "the proxy cannot queue work on its pool");
}

/* ---- sessions ---- */

static session *session_find(rw_proxy_server *s, rwp_str uri) {
  for (session *ss = s->sessions; ss; ss = ss->next)
    if (strlen(ss->uri) == uri.len && !memcmp(ss->uri, uri.p, uri.len)) return ss;
  return NULL;
}

static void op_free(op *o) {
  if (o->b) body_unref(o->b);
  free(o);
}

static void session_drop(rw_proxy_server *s, session *ss) {
  for (session **pp = &s->sessions; *pp; pp = &(*pp)->next)
    if (*pp == ss) {
      *pp = ss->next;
      break;
    }
  if (ss->writer) {
    epoll_ctl(s->epfd, EPOLL_CTL_DEL, rw_writer_pollfd(ss->writer), NULL);
    rw_writer_suspend(ss->writer); /* the GCS session stays for the client */
    rw_writer_free(ss->writer);
    s->nsessions--;
  }
  for (op *o = ss->ops, *n; o; o = n) n = o->next, op_free(o);
  ss->ops = NULL, ss->writer = NULL, ss->state = S_GONE;
  /* freed by sessions_reap: an event of this batch may still name it */
  ss->next = s->dead_sessions, s->dead_sessions = ss;
}

void sessions_reap(rw_proxy_server *s) {
  for (session *ss = s->dead_sessions, *n; ss; ss = n) n = ss->next, free(ss->uri), free(ss);
  s->dead_sessions = NULL;
}

/* Fails every request waiting on the session (the writer failed). */
static void session_fail(rw_proxy_server *s, session *ss, rw_error *e) {
  uint64_t persisted = ss->writer ? rw_writer_get_stats(ss->writer).persisted : 0;
  for (op *o = ss->ops; o; o = o->next)
    finish_error(s, o->conn_id, o->client_id, o->seq, rw_error_ref(e), ss->writer != NULL, persisted);
  rw_error_unref(e);
  session_drop(s, ss);
}

static void op_unlink(session *ss, op *o) {
  op **pp = &ss->ops;
  while (*pp != o) pp = &(*pp)->next;
  *pp = o->next;
  if (ss->ops_tail == &o->next) ss->ops_tail = pp;
  op_free(o);
}

static void reply_persisted(rw_proxy_server *s, op *o, uint64_t persisted) {
  rwp_msg m = {.op = RWP_REPLY};
  m.u.reply.for_op = RWP_WRITE_AT, m.u.reply.persisted = persisted;
  finish(s, o->conn_id, o->client_id, o->seq, &m, NULL, 0);
}

/* rw.out_of_window from the session's writer: the bytes below the write
 * were not written yet. A client keeps its unanswered WRITE_ATs within its
 * window, so they are on their way (another connection's frame still being
 * read, or not sent yet): proto.busy, retryable, not a window error the
 * client would fail the upload with. But a write ending past max_ahead from
 * the contiguous bytes is out of any client's window (a bogus offset): it
 * stays rw.out_of_window, final, instead of busy until the client's retry
 * budget runs out. Takes e. */
#define BUSY_RETRY_MS 20
static rw_error *gap_in_flight(rw_proxy_server *s, session *ss, const op *o, rw_error *e) {
  uint64_t contiguous = rw_writer_get_stats(ss->writer).contiguous, end = o->offset + o->b->len;
  uint64_t ahead = s->cfg.max_ahead ? s->cfg.max_ahead : 16 * s->cfg.session_cache;
  if (end > contiguous && end - contiguous > ahead) {
    rw_error *far = rw_err(RW_E_OUT_OF_WINDOW,
                           "WRITE_AT [%llu, %llu) ends %llu bytes past the session's contiguous bytes (%llu), "
                           "more than the proxy's max_ahead (%llu): no client window reaches that far (a "
                           "wrong offset, or a client window above max_ahead: keep it at most max_ahead)",
                           (unsigned long long)o->offset, (unsigned long long)end,
                           (unsigned long long)(end - contiguous), (unsigned long long)contiguous,
                           (unsigned long long)ahead);
    rw_error_unref(e);
    return far;
  }
  rw_error *busy = rw_err(RW_E_PROTO_BUSY, "the bytes below this WRITE_AT have not reached the session yet "
                          "(in flight on another connection?); send it again (session_cache %llu): %s",
                          (unsigned long long)s->cfg.session_cache, rw_error_message(e));
  rw_error_unref(e);
  return busy;
}

/* Tries to hand a WRITE_AT's rest to the writer; true when the op is over. */
static bool pump_write(rw_proxy_server *s, session *ss, op *o) {
  body *b = o->b;
  size_t acc = 0;
  b->refs++;
  rw_error *e = rw_writer_write_some(ss->writer, o->offset + o->pos, b->data + o->pos, b->len - o->pos,
                                     body_unref, b, &acc);
  if (e) b->refs--;
  uint64_t persisted = rw_writer_get_stats(ss->writer).persisted;
  if (e && rw_error_is(e, RW_E_OUT_OF_WINDOW)) e = gap_in_flight(s, ss, o, e);
  if (e) {
    finish_error_after(s, o->conn_id, o->client_id, o->seq, e, true, persisted,
                       rw_error_is(e, RW_E_PROTO_BUSY) ? BUSY_RETRY_MS : 0);
    return true;
  }
  o->pos += acc;
  if (o->pos < b->len) return false;
  s->live.bytes_in += b->len;
  reply_persisted(s, o, persisted);
  return true;
}

static bool writes_pending(session *ss) {
  for (op *o = ss->ops; o; o = o->next)
    if (o->kind == RWP_WRITE_AT) return true;
  return false;
}

static rw_error *check_sums(const op *o, const rw_sink_object *obj) {
  char want[25];
  if (o->total != obj->size)
    return rw_err(RW_E_SESSION_CONFLICT, "the object has %llu bytes, COMPLETE said %llu",
                  (unsigned long long)obj->size, (unsigned long long)o->total);
  if (o->sums & RWP_SUM_CRC32C) {
    rw_crc32c_base64(o->crc32c, want);
    if (!obj->crc32c || strcmp(obj->crc32c, want))
      return rw_err(RW_E_CHECKSUM, "crc32c: the object has %s, the client sent %s",
                    obj->crc32c ? obj->crc32c : "none", want);
  }
  if ((o->sums & RWP_SUM_MD5) && obj->md5) {
    rw_md5_base64(o->md5, want);
    if (strcmp(obj->md5, want))
      return rw_err(RW_E_CHECKSUM, "md5: the object has %s, the client sent %s", obj->md5, want);
  }
  return NULL;
}

/* COMPLETE: starts once no WRITE_AT before it waits; over when the writer is. */
static bool pump_complete(rw_proxy_server *s, session *ss, op *o, bool *drop) {
  if (!o->started) {
    rw_error *e = rw_writer_complete_start(ss->writer, o->total);
    if (e && rw_error_is(e, RW_E_GAP) && writes_pending(ss)) {
      rw_error_unref(e);
      return false;
    }
    if (e) {
      finish_error(s, o->conn_id, o->client_id, o->seq, e, true, rw_writer_get_stats(ss->writer).persisted);
      return true;
    }
    o->started = true;
  }
  if (!rw_writer_finished(ss->writer)) return false;
  const rw_sink_object *obj = rw_writer_object(ss->writer);
  rw_error *e = obj ? check_sums(o, obj) : rw_writer_error(ss->writer); /* a reference */
  if (!obj && !e) e = rw_err(RW_E_CLOSED, "the session's writer was aborted");
  if (e) {
    finish_error(s, o->conn_id, o->client_id, o->seq, e, false, 0);
  } else {
    rwp_msg m = {.op = RWP_REPLY};
    m.u.reply.for_op = RWP_COMPLETE;
    const char *json = obj->json ? obj->json : "{}";
    finish(s, o->conn_id, o->client_id, o->seq, &m, json, strlen(json));
  }
  *drop = true;
  return true;
}

static void pump_once(rw_proxy_server *s, session *ss, bool *drop) {
  for (op *o = ss->ops, *n; o; o = n) {
    n = o->next;
    bool over = o->kind == RWP_WRITE_AT ? pump_write(s, ss, o) : pump_complete(s, ss, o, drop);
    if (over) op_unlink(ss, o);
  }
}

/* Hands every waiting request to the writer; a writer that failed or
 * finished is dropped (a later request opens the session again). */
static void session_pump(rw_proxy_server *s, session *ss) {
  if (ss->state != S_OPEN) return;
  bool drop = false;
  ss->last_used = rw_proxy_now();
  pump_once(s, ss, &drop);
  rw_error *fatal = rw_writer_error(ss->writer);
  if (!fatal && drop && ss->ops) pump_once(s, ss, &drop); /* later ops on the finished writer */
  if (!fatal && drop && ss->ops) fatal = rw_err(RW_E_CLOSED, "the session was completed");
  if (fatal) session_fail(s, ss, fatal);
  else if (drop) session_drop(s, ss);
}

void session_on_event(session *ss) {
  if (ss->state != S_OPEN) return;
  rw_writer_drain(ss->writer);
  session_pump(ss->srv, ss);
}

/* Opening a session: ask GCS what it holds (a job), then make its writer. */
static rw_error *session_open(conn *c, rwp_str uri, session **out) {
  rw_proxy_server *s = c->srv;
  if ((*out = session_find(s, uri))) return NULL;
  int opening = 0;
  for (session *ss = s->sessions; ss; ss = ss->next) opening++;
  if (opening >= s->cfg.max_sessions)
    return rw_err(RW_E_PROTO_BUSY, "the proxy serves %d sessions (its max_sessions)", s->cfg.max_sessions);
  session *ss = calloc(1, sizeof *ss);
  job *j = job_new(c, J_OPEN, 0);
  if (!ss || !j || !(ss->uri = str_dup(uri)) || !(j->uri = strdup(ss->uri))) {
    if (ss) free(ss->uri);
    free(ss), free(j ? j->uri : NULL), free(j);
    return rw_err(RW_E_NOMEM, "proxy: out of memory");
  }
  rw_error *e = job_submit(s, j);
  if (e) {
    free(ss->uri), free(ss), job_free(j);
    return e;
  }
  ss->w = (watch){W_SESSION, ss};
  ss->srv = s, ss->state = S_OPENING, ss->ops_tail = &ss->ops, ss->last_used = rw_proxy_now();
  ss->next = s->sessions, s->sessions = ss;
  *out = ss;
  return NULL;
}

static rw_writer_config writer_config(rw_proxy_server *s, uint64_t persisted) {
  rw_writer_config wc = rw_writer_defaults();
  wc.max_cache_size = s->cfg.session_cache;
  /* Chunks of a quarter of the cache: one goes to GCS while the cache still
   * takes the client's next bytes (a chunk the size of the cache made the
   * session alternate between accepting and uploading). */
  uint64_t quarter = s->cfg.session_cache / 4 / RW_CHUNK_QUANTUM * RW_CHUNK_QUANTUM;
  if (quarter < RW_CHUNK_QUANTUM) quarter = RW_CHUNK_QUANTUM;
  if (wc.max_chunk_size > quarter) wc.max_chunk_size = quarter;
  if (wc.min_chunk_size > wc.max_chunk_size) wc.min_chunk_size = wc.max_chunk_size;
  wc.crc32c = wc.md5 = false; /* the client's sums are compared with the object's */
  wc.resume = true, wc.start_offset = persisted;
  return wc;
}

static void session_opened(rw_proxy_server *s, job *j) {
  session *ss = NULL;
  for (session *p = s->sessions; p; p = p->next)
    if (p->state == S_OPENING && !strcmp(p->uri, j->uri)) ss = p;
  if (!ss) return;
  rw_error *e = j->err ? rw_error_ref(j->err) : NULL;
  rw_sink *sk = e ? NULL : job_sink(j, &e);
  rw_writer_config wc = writer_config(s, j->persisted);
  if (sk) ss->writer = rw_writer_new(s->ctx, sk, &wc, &e);
  if (!ss->writer) {
    session_fail(s, ss, e ? e : rw_err(RW_E_INTERNAL, "proxy: no writer"));
    return;
  }
  s->nsessions++;
  ss->state = S_OPEN;
  struct epoll_event ev = {.events = EPOLLIN, .data.ptr = &ss->w};
  epoll_ctl(s->epfd, EPOLL_CTL_ADD, rw_writer_pollfd(ss->writer), &ev);
  session_pump(s, ss);
}

static void job_done(rw_proxy_server *s, job *j) {
  if (j->kind == J_OPEN) {
    session_opened(s, j);
    return;
  }
  if (j->err) {
    finish_error(s, j->conn_id, j->client_id, j->seq, rw_error_ref(j->err), false, 0);
    return;
  }
  rwp_msg m = {.op = RWP_REPLY};
  m.u.reply.for_op = j->kind == J_CREATE ? RWP_CREATE : j->kind == J_STATUS ? RWP_STATUS : RWP_ABORT;
  if (j->kind == J_CREATE) m.u.reply.session = rwp_cstr(j->session);
  m.u.reply.persisted = j->persisted, m.u.reply.finalized = j->finalized;
  const char *json = j->kind == J_STATUS && j->finalized && j->json ? j->json : NULL;
  finish(s, j->conn_id, j->client_id, j->seq, &m, json, json ? strlen(json) : 0);
}

void req_jobs_done(rw_proxy_server *s) {
  pthread_mutex_lock(&s->jobs_mu);
  job *list = s->done;
  s->done = NULL;
  pthread_mutex_unlock(&s->jobs_mu);
  while (list) {
    job *j = list;
    list = j->next;
    if (!s->stopping) job_done(s, j);
    job_free(j);
  }
}

/* Drops what a silent client left: idle sessions (their GCS sessions stay)
 * and rate limiters (full again by then). */
void req_expire(rw_proxy_server *s, double now) {
  double ttl = s->cfg.table_ttl_s;
  for (session *ss = s->sessions, *n; ss; ss = n) {
    n = ss->next;
    if (ss->state == S_OPEN && !ss->ops && now - ss->last_used >= ttl) session_drop(s, ss);
  }
  for (client_rl **pp = &s->rls; *pp;) {
    client_rl *r = *pp;
    if (now - r->seen < ttl) {
      pp = &r->next;
      continue;
    }
    *pp = r->next;
    rw_ratelimit_free(r->req), rw_ratelimit_free(r->bytes), free(r);
  }
}

void sessions_free_all(rw_proxy_server *s) {
  while (s->sessions) session_drop(s, s->sessions);
}

/* Stop: every waiting request gets proto.shutdown (retryable; not kept). */
void shutdown_ops(rw_proxy_server *s) {
  for (session *ss = s->sessions; ss; ss = ss->next) {
    for (op *o = ss->ops, *n; o; o = n) {
      n = o->next;
      uint64_t *w = NULL;
      size_t nw = 0;
      rw_amo_cancel(s->amo, o->client_id, o->seq, &w, &nw);
      conn *c = conn_find(s, o->conn_id);
      if (c) conn_send_error(c, o->seq, rw_err(RW_E_PROTO_SHUTDOWN, "the proxy is stopping"), false, 0, 0);
      for (size_t i = 0; i < nw; i++)
        if ((c = conn_find(s, w[i])))
          conn_send_error(c, o->seq, rw_err(RW_E_PROTO_SHUTDOWN, "the proxy is stopping"), false, 0, 0);
      free(w);
      op_free(o);
    }
    ss->ops = NULL, ss->ops_tail = &ss->ops;
  }
}

/* ---- requests ---- */

/* The buckets of a client (by_addr false) or of a source address (true:
 * connections before AUTH, burst 64 so a client may open its pool at once). */
static client_rl *rate_for(rw_proxy_server *s, uint64_t key, bool by_addr) {
  for (client_rl *r = s->rls; r; r = r->next)
    if (r->client_id == key && r->by_addr == by_addr) return r;
  client_rl *r = calloc(1, sizeof *r);
  if (!r) return NULL;
  rw_error *e = NULL;
  double rq = s->cfg.rate_requests, rb = by_addr ? 0 : s->cfg.rate_bytes;
  double burst = by_addr ? (rq < 64 ? 64 : rq) : (rq < 1 ? 1 : rq);
  if (rq > 0) r->req = rw_ratelimit_new(rq, burst, &e);
  if (rb > 0 && !e) r->bytes = rw_ratelimit_new(rb, rb < s->cfg.max_frame ? s->cfg.max_frame : rb, &e);
  if (e) {
    rw_error_unref(e);
    rw_ratelimit_free(r->req), free(r);
    return NULL;
  }
  r->client_id = key, r->by_addr = by_addr;
  r->next = s->rls, s->rls = r;
  return r;
}

uint32_t req_rate_addr(rw_proxy_server *s, uint32_t ipv4) {
  if (s->cfg.rate_requests <= 0) return 0;
  client_rl *r = rate_for(s, ipv4, true);
  if (!r) return 1000;
  r->seen = rw_proxy_now();
  if (rw_ratelimit_try(r->req, 1)) return 0;
  return (uint32_t)((1 - rw_ratelimit_tokens(r->req)) / s->cfg.rate_requests * 1000) + 1;
}

/* 0 when allowed, else the milliseconds to wait. */
static uint32_t rate_check(rw_proxy_server *s, uint64_t client_id, double bytes) {
  if (s->cfg.rate_requests <= 0 && s->cfg.rate_bytes <= 0) return 0;
  client_rl *r = rate_for(s, client_id, false);
  if (!r) return 1000;
  r->seen = rw_proxy_now();
  if (r->req && !rw_ratelimit_try(r->req, 1)) {
    double need = 1 - rw_ratelimit_tokens(r->req);
    return (uint32_t)(need / s->cfg.rate_requests * 1000) + 1;
  }
  if (r->bytes && bytes > 0 && !rw_ratelimit_try(r->bytes, bytes)) {
    if (r->req) rw_ratelimit_cancel(r->req, 1);
    double need = bytes - rw_ratelimit_tokens(r->bytes);
    return (uint32_t)(need / s->cfg.rate_bytes * 1000) + 1;
  }
  return 0;
}

static bool uri_ok(rw_proxy_server *s, rwp_str uri) {
  char buf[RWP_MAX_SESSION + 1];
  if (uri.len == 0 || memchr(uri.p, 0, uri.len)) return false;
  memcpy(buf, uri.p, uri.len), buf[uri.len] = 0;
  return on_origin(s, buf);
}

static rw_error *run_create(conn *c, rwp_frame *f) {
  const rwp_create *cr = &f->msg.u.create;
  if (!cr->bucket.len || !cr->object.len || memchr(cr->bucket.p, 0, cr->bucket.len) ||
      memchr(cr->object.p, 0, cr->object.len))
    return rw_err(RW_E_INVALID, "CREATE: bucket and object must be non-empty, without NUL bytes");
  if (f->body_len > RWP_MAX_METADATA)
    return rw_err(RW_E_INVALID, "CREATE: metadata is at most %u bytes", RWP_MAX_METADATA);
  job *j = job_new(c, J_CREATE, f->msg.seq);
  if (!j) return rw_err(RW_E_NOMEM, "proxy: out of memory");
  j->bucket = str_dup(cr->bucket), j->object = str_dup(cr->object);
  j->metadata = malloc(f->body_len ? f->body_len + 1 : 3);
  if (j->metadata && f->body_len) memcpy(j->metadata, f->body, f->body_len), j->metadata[f->body_len] = 0;
  else if (j->metadata) strcpy(j->metadata, "{}");
  j->has_gen = cr->flags2 & RWP_CREATE_IF_GEN, j->gen = (int64_t)cr->if_generation_match;
  j->has_metagen = cr->flags2 & RWP_CREATE_IF_METAGEN, j->metagen = (int64_t)cr->if_metageneration_match;
  if (!j->bucket || !j->object || !j->metadata) {
    job_free(j);
    return rw_err(RW_E_NOMEM, "proxy: out of memory");
  }
  rw_error *e = job_submit(c->srv, j);
  if (e) job_free(j);
  return e;
}

static rw_error *run_session_job(conn *c, rwp_frame *f, int kind) {
  rwp_str uri = f->msg.u.session_op.session;
  if (kind == J_ABORT) {
    session *ss = session_find(c->srv, uri);
    if (ss && ss->state == S_OPEN) session_fail(c->srv, ss, rw_err(RW_E_CLOSED, "the session was aborted"));
  }
  job *j = job_new(c, kind, f->msg.seq);
  if (!j || !(j->uri = str_dup(uri))) {
    free(j);
    return rw_err(RW_E_NOMEM, "proxy: out of memory");
  }
  rw_error *e = job_submit(c->srv, j);
  if (e) job_free(j);
  return e;
}

static rw_error *run_on_session(conn *c, rwp_frame *f) {
  bool w = f->msg.op == RWP_WRITE_AT;
  rwp_str uri = w ? f->msg.u.write_at.session : f->msg.u.complete.session;
  session *ss;
  rw_error *e = session_open(c, uri, &ss);
  if (e) return e;
  op *o = calloc(1, sizeof *o);
  if (!o) return rw_err(RW_E_NOMEM, "proxy: out of memory");
  o->kind = f->msg.op, o->conn_id = c->id, o->client_id = c->client_id, o->seq = f->msg.seq;
  if (w) {
    o->offset = f->msg.u.write_at.offset;
    o->b = c->pbody, c->pbody = NULL;
  } else {
    const rwp_complete *cp = &f->msg.u.complete;
    o->total = cp->total, o->sums = cp->sums, o->crc32c = cp->crc32c;
    memcpy(o->md5, cp->md5, 16);
  }
  *ss->ops_tail = o, ss->ops_tail = &o->next;
  session_pump(c->srv, ss);
  return NULL;
}

static rw_error *run(conn *c, rwp_frame *f) {
  rwp_str uri = f->msg.op == RWP_CREATE ? (rwp_str){0} : f->msg.op == RWP_WRITE_AT ? f->msg.u.write_at.session
                : f->msg.op == RWP_COMPLETE ? f->msg.u.complete.session : f->msg.u.session_op.session;
  if (f->msg.op == RWP_WRITE_AT && (!f->body_len || !c->pbody))
    return rw_err(RW_E_INVALID, "WRITE_AT: the body must hold 1 .. max_frame bytes");
  if (f->msg.op != RWP_CREATE && !uri_ok(c->srv, uri))
    return rw_err(RW_E_INVALID, "%s: the session is not a session URI of this proxy's upstream",
                  rwp_op_name(f->msg.op));
  switch (f->msg.op) {
  case RWP_CREATE: return run_create(c, f);
  case RWP_STATUS: return run_session_job(c, f, J_STATUS);
  case RWP_ABORT: return run_session_job(c, f, J_ABORT);
  default: return run_on_session(c, f);
  }
}

/* A request not run (a limit): ERROR, nothing kept. */
static void refuse(conn *c, uint64_t seq, rw_error *e, uint32_t retry_ms) {
  c->srv->live.rate_limited += rw_error_is(e, RW_E_PROTO_RATE_LIMITED);
  conn_send_error(c, seq, e, false, 0, retry_ms);
}

static void request(conn *c, rwp_frame *f) {
  rw_proxy_server *s = c->srv;
  uint64_t seq = f->msg.seq;
  if (c->inflight >= c->max_inflight) {
    conn_fatal(c, rw_err(RW_E_PROTO_TOO_MANY, "more than %u requests unanswered on this connection",
                         c->max_inflight));
    return;
  }
  uint32_t wait_ms = rate_check(s, c->client_id, f->msg.op == RWP_WRITE_AT ? f->body_len : 0);
  if (wait_ms) {
    refuse(c, seq, rw_err(RW_E_PROTO_RATE_LIMITED, "client %016llx is over its rate limit",
                          (unsigned long long)c->client_id), wait_ms);
    return;
  }
  rw_amo_verdict v;
  const void *blob;
  size_t len;
  rw_error *e = rw_amo_begin(s->amo, c->client_id, seq, c->id, rw_proxy_now(), &v, &blob, &len);
  if (e) {
    refuse(c, seq, e, 0);
    return;
  }
  c->inflight++;
  if (v == RW_AMO_REPLAY || v == RW_AMO_WAIT) s->live.duplicates++;
  if (v == RW_AMO_REPLAY) reply_deliver(s, c->id, c->client_id, seq, blob, len);
  if (v == RW_AMO_EXPIRED) {
    c->inflight--;
    refuse(c, seq, rw_err(RW_E_PROTO_EXPIRED, "request (client %016llx, seq %llu) is no longer in the reply table: ask STATUS",
                          (unsigned long long)c->client_id, (unsigned long long)seq), 0);
  }
  if (v != RW_AMO_RUN) return;
  s->live.requests++;
  if ((e = run(c, f))) finish_error(s, c->id, c->client_id, seq, e, false, 0);
}

void req_handle(conn *c, rwp_frame *f) {
  rw_proxy_server *s = c->srv;
  rw_amo_ack(s->amo, c->client_id, f->msg.ack, rw_proxy_now());
  switch (f->msg.op) {
  case RWP_PING:
    conn_send(c, &(rwp_msg){.op = RWP_PONG, .client_id = c->client_id, .u.ping.nonce = f->msg.u.ping.nonce}, NULL, 0);
    break;
  case RWP_PONG: break;
  case RWP_GOODBYE:
    c->goodbye = true;
    if (c->inflight == 0) c->closing = true, conn_flush(c);
    break;
  case RWP_ERROR: conn_close(c); break;
  default:
    if (s->stopping) refuse(c, f->msg.seq, rw_err(RW_E_PROTO_SHUTDOWN, "the proxy is stopping"), 0);
    else request(c, f);
  }
  if (c->pbody) body_unref(c->pbody), c->pbody = NULL; /* a WRITE_AT not run */
}
