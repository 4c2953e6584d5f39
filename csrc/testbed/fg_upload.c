/* Uploads: resumable sessions (start, chunk PUTs, status queries, cancel),
 * media and multipart. Bodies are streamed into the session's blob; the
 * session's persisted size and digest only move at 256 KiB boundaries (or
 * at the end of the final chunk), so a cut request never leaves a torn
 * state behind. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "testbed/fg_internal.h"

#define Q ((uint64_t)FG_QUANTUM)

/* "/upload/storage/v1/b/BUCKET/o" -> BUCKET in buf. */
static bool upload_bucket(const char *path, char *buf, size_t len) {
  const char *b = path + strlen("/upload/storage/v1/b/");
  const char *slash = strchr(b, '/');
  if (!slash || slash == b || strcmp(slash, "/o") != 0 || (size_t)(slash - b) >= len) return false;
  memcpy(buf, b, (size_t)(slash - b));
  buf[slash - b] = 0;
  return true;
}

static bool parse_precond_arg(fg_req *r, const char *name, bool *has, int64_t *v) {
  const char *s = fg_arg(r, name);
  *has = s != NULL;
  return !s || fg_parse_i64(s, v);
}

static bool parse_preconds(fg_req *r, fg_precond *p) {
  memset(p, 0, sizeof *p);
  return parse_precond_arg(r, "ifGenerationMatch", &p->has_gen, &p->gen) &&
         parse_precond_arg(r, "ifGenerationNotMatch", &p->has_not_gen, &p->not_gen) &&
         parse_precond_arg(r, "ifMetagenerationMatch", &p->has_meta, &p->meta) &&
         parse_precond_arg(r, "ifMetagenerationNotMatch", &p->has_not_meta, &p->not_meta);
}

/* What a new session needs, from the URL, headers and metadata body. */
typedef struct upload_spec {
  char bucket[256];
  const char *name;
  const char *content_type;
  json_t *meta; /* parsed body or NULL */
  fg_precond pre;
  int64_t declared;
} upload_spec;

static bool valid_utf8(const char *s) {
  json_t *j = json_string(s);
  json_decref(j);
  return j != NULL;
}

/* Fills spec; on a bad request replies and returns false. */
static bool read_spec(rw_fakegcs *s, fg_req *r, json_t *meta, upload_spec *u, enum MHD_Result *res) {
  memset(u, 0, sizeof *u);
  u->meta = meta;
  u->declared = -1;
  const char *len = fg_header(r, "X-Upload-Content-Length");
  const char *body_name = json_string_value(json_object_get(meta, "name"));
  const char *body_ct = json_string_value(json_object_get(meta, "contentType"));
  u->name = fg_arg(r, "name") ? fg_arg(r, "name") : body_name;
  u->content_type = body_ct ? body_ct : fg_header(r, "X-Upload-Content-Type");
  if (!upload_bucket(r->path, u->bucket, sizeof u->bucket))
    *res = fg_reply_error(s, r, 404, "no such endpoint: %s", r->path);
  else if (!u->name || !*u->name)
    *res = fg_reply_error(s, r, 400, "Required parameter: name");
  else if (!valid_utf8(u->name) || strlen(u->name) > 1024)
    *res = fg_reply_error(s, r, 400, "object name must be 1-1024 bytes of UTF-8");
  else if (u->content_type && !valid_utf8(u->content_type))
    *res = fg_reply_error(s, r, 400, "invalid content type");
  else if (len && (!fg_parse_i64(len, &u->declared) || u->declared < 0))
    *res = fg_reply_error(s, r, 400, "invalid X-Upload-Content-Length '%s': it must be a whole "
                          "number of bytes in 0..2^63-1", len);
  else if (!parse_preconds(r, &u->pre))
    *res = fg_reply_error(s, r, 400, "invalid precondition value");
  else
    return true;
  return false;
}

static char *opt_b64(json_t *meta, const char *key) {
  return fg_strdup(json_string_value(json_object_get(meta, key)));
}

/* Makes a session from spec; replies 404 when the bucket is missing. */
static fg_session *make_session(rw_fakegcs *s, fg_req *r, const upload_spec *u,
                                enum MHD_Result *res) {
  pthread_mutex_lock(&s->store.mu);
  fg_session *ss = NULL;
  bool bucket = fg_bucket_find(&s->store, u->bucket) != NULL;
  if (bucket) ss = fg_session_new(&s->store);
  pthread_mutex_unlock(&s->store.mu);
  if (!bucket) return *res = fg_reply_error(s, r, 404, "bucket %s not found", u->bucket), NULL;
  if (!ss) return *res = fg_reply_error(s, r, 500, "out of memory"), NULL;
  json_t *md = json_object_get(u->meta, "metadata");
  ss->bucket = strdup(u->bucket);
  ss->name = strdup(u->name);
  ss->content_type = strdup(u->content_type ? u->content_type : "application/octet-stream");
  ss->metadata = json_is_object(md) ? json_deep_copy(md) : NULL;
  ss->want_crc_b64 = opt_b64(u->meta, "crc32c");
  ss->want_md5_b64 = opt_b64(u->meta, "md5Hash");
  ss->pre = u->pre;
  ss->declared_total = u->declared;
  /* a declared size is a hint, not a promise: reserve at most 64 MiB up
   * front (blobs grow as bytes arrive), or sessions that never send a byte
   * could take the address space */
  uint64_t reserve = u->declared > 0 ? (uint64_t)u->declared : 0;
  if (reserve > FG_MAX_RESERVE) reserve = FG_MAX_RESERVE;
  ss->blob = fg_blob_new(s->store.kind, s->store.dir, reserve);
  /* GCS verifies an md5Hash it is given: with MD5 off (discard mode) this
   * upload computes it anyway (nothing is persisted yet). */
  bool md5_ok = !ss->want_md5_b64 || ss->digest.md5 || fg_digest_init(&ss->digest, true);
  if (!ss->blob || !md5_ok) {
    ss->state = FG_SESSION_CANCELLED;
    return *res = fg_reply_error(s, r, 500, "cannot allocate the upload's store"), NULL;
  }
  return ss;
}

static json_t *parse_meta_body(fg_req *r, bool *bad) {
  json_error_t jerr;
  *bad = false;
  if (!r->body_len) return NULL;
  json_t *j = json_loadb(r->body, r->body_len, 0, &jerr);
  if (!json_is_object(j)) {
    json_decref(j);
    *bad = true;
    return NULL;
  }
  return j;
}

/* Instructions that act on bodies do not apply to this request: keep them.
 * (return-broken-stream-final-chunk-after-YB on a session request stays on
 * the request: it acts on the reply if the session is final by then, and
 * goes back to the queue otherwise, see fg_req_finish.) */
static void keep_fault_for_later(rw_fakegcs *s, fg_req *r) {
  fg_fault_kind k = r->fault.kind;
  if (r->retry_id && (k == FG_F_RETURN_AFTER || k == FG_F_STALL_AFTER ||
                      k == FG_F_BROKEN_FINAL_AFTER))
    fg_retry_test_unpop(&s->faults, r->retry_id, r->fault_method, &r->fault);
  if (k != FG_F_BROKEN) r->fault.kind = FG_F_NONE;
}

static enum MHD_Result reply_location(rw_fakegcs *s, fg_req *r, fg_session *ss) {
  const char *host = fg_header(r, "Host");
  char *name = fg_url_encode(ss->name), *loc = NULL;
  int n = -1;
  if (name)
    n = asprintf(&loc, "%s%s%s/upload/storage/v1/b/%s/o?uploadType=resumable&name=%s&upload_id=%s",
                 host ? (s->tls_cert ? "https://" : "http://") : "", host ? host : s->url, "", ss->bucket, name, ss->id);
  free(name);
  if (n < 0) return MHD_NO;
  struct MHD_Response *resp = MHD_create_response_from_buffer(0, "", MHD_RESPMEM_PERSISTENT);
  if (resp) {
    MHD_add_response_header(resp, "Location", loc);
    MHD_add_response_header(resp, "X-GUploader-UploadID", ss->id);
  }
  free(loc);
  return fg_queue(s, r, 200, resp);
}

enum MHD_Result fg_h_upload_start(rw_fakegcs *s, fg_req *r, const char *data, size_t *n) {
  if (!fg_collect(r, data, n) || !r->headers_seen) return MHD_YES;
  if (r->body_too_big) return fg_reply_error(s, r, 413, "metadata body too large");
  bool bad;
  enum MHD_Result res = MHD_YES;
  json_t *meta = parse_meta_body(r, &bad);
  upload_spec u;
  if (bad) return fg_reply_error(s, r, 400, "metadata is not a JSON object");
  keep_fault_for_later(s, r);
  fg_session *ss = read_spec(s, r, meta, &u, &res) ? make_session(s, r, &u, &res) : NULL;
  json_decref(meta);
  if (!ss) return res;
  if (r->fault.kind == FG_F_BROKEN) return fg_cut(s, r);
  return reply_location(s, r, ss);
}

/* ---- replies for sessions ---- */

static enum MHD_Result reply_308(rw_fakegcs *s, fg_req *r, uint64_t persisted) {
  const char *no308 = fg_header(r, "X-GUploader-No-308");
  bool override = no308 && strcmp(no308, "yes") == 0;
  struct MHD_Response *resp = MHD_create_response_from_buffer(0, "", MHD_RESPMEM_PERSISTENT);
  if (!resp) return MHD_NO;
  if (persisted > 0) {
    char range[64];
    snprintf(range, sizeof range, "bytes=0-%llu", (unsigned long long)(persisted - 1));
    MHD_add_response_header(resp, "Range", range);
  }
  if (override) MHD_add_response_header(resp, "X-Http-Status-Code-Override", "308");
  return fg_queue(s, r, override ? 200 : 308, resp);
}

static enum MHD_Result reply_text_json(rw_fakegcs *s, fg_req *r, int status, const char *text) {
  json_error_t jerr;
  json_t *j = json_loads(text, 0, &jerr);
  return j ? fg_reply_json(s, r, status, j) : fg_reply_error(s, r, 500, "bad stored reply");
}

/* return-broken-stream-final-chunk-after-YB, as storage-testbench does it:
 * the object is final, the reply is a 200 whose JSON body is cut to its
 * first Y bytes (Content-Length Y). */
static enum MHD_Result reply_cut_json(rw_fakegcs *s, fg_req *r, const char *text) {
  size_t n = strlen(text);
  if (r->fault.after_bytes < n) n = (size_t)r->fault.after_bytes;
  r->fault_used = true;
  struct MHD_Response *resp = MHD_create_response_from_buffer(n, (void *)text, MHD_RESPMEM_MUST_COPY);
  if (resp) MHD_add_response_header(resp, "Content-Type", "application/json; charset=UTF-8");
  return fg_queue(s, r, 200, resp);
}

/* A reply for a session that is no longer active; ss->mu held. */
static enum MHD_Result reply_finished(rw_fakegcs *s, fg_req *r, fg_session *ss) {
  int state = ss->state, status = ss->final_status;
  char *text = fg_strdup(ss->final_json);
  pthread_mutex_unlock(&ss->mu);
  enum MHD_Result res;
  bool cut = r->fault.kind == FG_F_BROKEN_FINAL_AFTER && state == FG_SESSION_DONE && text;
  if (cut)
    res = reply_cut_json(s, r, text);
  else if (state == FG_SESSION_CANCELLED)
    res = fg_reply_error(s, r, 404, "upload session not found (cancelled)");
  else
    res = text ? reply_text_json(s, r, status, text) : fg_reply_error(s, r, 500, "lost reply");
  free(text);
  return res;
}

/* ---- finalization ---- */

/* "crc32c=...,md5=..." into the session's wanted values. */
static void take_goog_hash(fg_session *ss, const char *h) {
  while (h && *h) {
    const char *comma = strchr(h, ',');
    size_t len = comma ? (size_t)(comma - h) : strlen(h);
    char item[128];
    if (len < sizeof item) {
      memcpy(item, h, len);
      item[len] = 0;
      char *v = item;
      while (*v == ' ') v++;
      if (!strncmp(v, "crc32c=", 7)) free(ss->want_crc_b64), ss->want_crc_b64 = strdup(v + 7);
      if (!strncmp(v, "md5=", 4)) free(ss->want_md5_b64), ss->want_md5_b64 = strdup(v + 4);
    }
    h = comma ? comma + 1 : NULL;
  }
}

static void fail_session(fg_session *ss, int status, const char *msg) {
  json_t *j = json_pack("{s:{s:i, s:s, s:[{s:s, s:s, s:s}]}}", "error", "code", status, "message",
                        msg, "errors", "domain", "global", "reason",
                        status == 412 ? "conditionNotMet" : "invalid", "message", msg);
  ss->state = FG_SESSION_FAILED;
  ss->final_status = status;
  free(ss->final_json);
  ss->final_json = json_dumps(j, JSON_COMPACT);
  json_decref(j);
  fg_blob_free(ss->blob);
  ss->blob = NULL;
}

/* Compares the wanted checksums with the computed ones; NULL when fine. */
static const char *checksum_problem(fg_session *ss, uint32_t crc, const unsigned char *md5,
                                    bool has_md5) {
  char crc_b64[9], md5_b64[25];
  rw_crc32c_base64(crc, crc_b64);
  if (ss->want_crc_b64 && strcmp(ss->want_crc_b64, crc_b64) != 0)
    return "Provided CRC32C does not match the computed CRC32C of the object data";
  if (ss->want_md5_b64 && has_md5) {
    rw_md5_base64(md5, md5_b64);
    if (strcmp(ss->want_md5_b64, md5_b64) != 0)
      return "Provided MD5 hash does not match the computed MD5 hash of the object data";
  }
  return NULL;
}

static fg_object *object_from_session(fg_session *ss, const unsigned char *md5, bool has_md5) {
  fg_object *o = calloc(1, sizeof *o);
  if (!o) return NULL;
  o->bucket = strdup(ss->bucket);
  o->name = strdup(ss->name);
  o->content_type = strdup(ss->content_type);
  o->metadata = ss->metadata ? json_incref(ss->metadata) : NULL;
  o->metageneration = 1;
  o->size = ss->persisted;
  o->crc = ss->digest.crc;
  o->has_md5 = has_md5;
  if (has_md5) memcpy(o->md5, md5, 16);
  fg_now_rfc3339(o->created);
  fg_blob_truncate(ss->blob, ss->persisted);
  fg_blob_trim(ss->blob);
  o->blob = ss->blob;
  ss->blob = NULL;
  return o;
}

int fg_finalize(rw_fakegcs *s, fg_session *ss, const char *goog_hash) {
  unsigned char md5[16] = {0};
  bool has_md5 = ss->digest.md5 != NULL;
  take_goog_hash(ss, goog_hash);
  fg_digest_finish(&ss->digest, md5);
  const char *bad = checksum_problem(ss, ss->digest.crc, md5, has_md5);
  if (bad) return fail_session(ss, 400, bad), 400;
  pthread_mutex_lock(&s->store.mu);
  if (!fg_precond_ok(&s->store, &ss->pre, ss->bucket, ss->name)) {
    pthread_mutex_unlock(&s->store.mu);
    fail_session(ss, 412, "At least one of the pre-conditions you specified did not hold.");
    return 412;
  }
  fg_object *o = object_from_session(ss, md5, has_md5);
  if (o) {
    o->generation = ++s->store.next_generation;
    fg_object_insert(&s->store, o);
    json_t *j = fg_object_json(&s->store, o);
    ss->final_json = json_dumps(j, JSON_COMPACT);
    json_decref(j);
  }
  pthread_mutex_unlock(&s->store.mu);
  if (!o) return fail_session(ss, 500, "out of memory"), 500;
  ss->state = FG_SESSION_DONE;
  ss->final_status = 200;
  return 200;
}

/* Finalizes and replies; ss->mu held, released here. */
static enum MHD_Result finalize_and_reply(rw_fakegcs *s, fg_req *r, fg_session *ss) {
  fg_finalize(s, ss, fg_header(r, "X-Goog-Hash"));
  return reply_finished(s, r, ss);
}

/* ---- streaming the body into the session ---- */

void fg_req_finish(rw_fakegcs *s, fg_req *r) {
  if (r->fault.kind == FG_F_BROKEN_FINAL_AFTER && !r->fault_used && r->retry_id)
    fg_retry_test_unpop(&s->faults, r->retry_id, r->fault_method, &r->fault);
  r->fault.kind = FG_F_NONE;
}

void fg_req_release_upload(fg_req *r) {
  if (r->wd_live) fg_digest_free(&r->wd);
  r->wd_live = false;
}

/* Makes wend..upto the session's persisted state; ss->mu held. */
static void commit(fg_session *ss, fg_req *r) {
  if (r->wend <= ss->persisted) return;
  fg_digest_copy(&ss->digest, &r->wd);
  ss->persisted = r->wend;
}

/* How far this request may persist. */
static uint64_t persist_limit(const fg_req *r) {
  if (r->fault.kind == FG_F_RETURN_AFTER && r->fault.after_bytes < r->limit)
    return r->fault.after_bytes;
  return r->limit;
}

/* Writes the new part of [pos, pos+n) into the blob; ss->mu held. */
static void persist(fg_session *ss, fg_req *r, const char *data, size_t n) {
  uint64_t lim = persist_limit(r);
  while (n > 0 && r->pos + n > r->wend && r->wend < lim) {
    if (r->pos < r->wend) {
      size_t skip = (size_t)(r->wend - r->pos);
      data += skip, n -= skip, r->pos += skip;
      continue;
    }
    uint64_t boundary = (r->wend / Q + 1) * Q;
    uint64_t stop = boundary < lim ? boundary : lim;
    size_t k = (size_t)(stop - r->wend < n ? stop - r->wend : n);
    if (!fg_blob_write(ss->blob, r->wend, data, k)) {
      r->fail_status = 503;
      snprintf(r->fail_msg, sizeof r->fail_msg, "store write failed");
      return;
    }
    fg_digest_update(&r->wd, data, k);
    r->wend += k, r->pos += k, data += k, n -= k;
    if (r->wend % Q == 0) commit(ss, r);
  }
  r->pos += n;
}

static void feed(rw_fakegcs *s, fg_req *r, const char *data, size_t n) {
  fg_session *ss = r->session;
  pthread_mutex_lock(&ss->mu);
  if (ss->epoch != r->epoch || ss->state != FG_SESSION_ACTIVE) r->stale = true;
  if (!r->stale) persist(ss, r, data, n);
  else r->pos += n;
  pthread_mutex_unlock(&ss->mu);
}

/* Splits pieces at fault points (stall, cut) and feeds them. */
static enum MHD_Result take_body(rw_fakegcs *s, fg_req *r, const char *data, size_t *n) {
  size_t len = *n;
  *n = 0;
  if (r->fail_status) return MHD_YES;
  if (r->pos + len > r->end) {
    r->fail_status = 400;
    snprintf(r->fail_msg, sizeof r->fail_msg, "body longer than the Content-Range says");
    return MHD_YES;
  }
  while (len > 0) {
    size_t k = len;
    uint64_t at = r->fault.after_bytes;
    bool pending = r->fault.kind == FG_F_STALL_AFTER;
    if (pending && r->pos < at && r->pos + k > at) k = (size_t)(at - r->pos);
    if (pending && r->pos >= at) {
      r->fault.kind = FG_F_NONE;
      fg_stall(s, r, r->fault.stall_s);
      continue;
    }
    feed(s, r, data, k);
    data += k, len -= k;
  }
  return MHD_YES;
}

/* ---- chunk PUTs ---- */

typedef struct chunk_plan {
  fg_range range;
  bool query; /* no bytes: a status query or an empty final */
} chunk_plan;

/* The Content-Range of this request, with the forms a missing header implies. */
static bool read_range(fg_req *r, fg_range *rg) {
  const char *len_s = fg_header(r, "Content-Length");
  uint64_t len = 0;
  if (r->content_range) return fg_parse_content_range(r->content_range, rg);
  if (len_s && !fg_parse_u64(len_s, &len)) return false;
  memset(rg, 0, sizeof *rg);
  rg->total = (int64_t)len;
  if (len > 0) rg->has_bytes = true, rg->last = len - 1;
  return true;
}

/* Checks the chunk against the session; ss->mu held. NULL when acceptable. */
static const char *chunk_problem(fg_req *r, fg_session *ss, const fg_range *rg) {
  const char *len_s = fg_header(r, "Content-Length");
  uint64_t len;
  if (len_s && !fg_parse_u64(len_s, &len)) return "invalid Content-Length";
  if (ss->declared_total >= 0 && rg->total >= 0 && rg->total != ss->declared_total)
    return "total size differs from X-Upload-Content-Length";
  if (rg->total >= 0 && (uint64_t)rg->total < ss->persisted)
    return "total size is smaller than what is already persisted";
  if (!rg->has_bytes) {
    if (len_s && len != 0) return "a Content-Range without bytes needs an empty body";
    return NULL;
  }
  if (ss->declared_total >= 0 && rg->last + 1 > (uint64_t)ss->declared_total)
    return "chunk goes past X-Upload-Content-Length";
  if (len_s && len != rg->last - rg->first + 1)
    return "Content-Length differs from the Content-Range";
  if (rg->first > ss->persisted) return "chunk starts after the persisted offset (a gap)";
  bool final = rg->total >= 0 && rg->last + 1 == (uint64_t)rg->total;
  if (!final && rg->last - rg->first + 1 < Q)
    return "a non-final chunk must be at least 256 KiB";
  return NULL;
}

/* Arms after-Y faults that this request reaches; others wait for later. */
static void arm_fault(rw_fakegcs *s, fg_req *r, uint64_t start) {
  fg_fault *f = &r->fault;
  if (f->relative) f->after_bytes += start;
  bool reached = r->end >= f->after_bytes;
  if ((f->kind == FG_F_RETURN_AFTER || f->kind == FG_F_STALL_AFTER) && !reached)
    keep_fault_for_later(s, r);
}

/* Prepares the request to stream its bytes; ss->mu held. */
static bool start_chunk(rw_fakegcs *s, fg_req *r, fg_session *ss, const fg_range *rg) {
  r->session = ss;
  r->epoch = ++ss->epoch;
  r->pos = rg->first;
  r->end = rg->last + 1;
  r->final = rg->total >= 0 && r->end == (uint64_t)rg->total;
  r->limit = r->final ? r->end : r->end / Q * Q;
  r->wend = ss->persisted;
  if (!fg_digest_init(&r->wd, false) || !fg_digest_copy(&r->wd, &ss->digest)) return false;
  r->wd_live = true;
  arm_fault(s, r, r->pos > ss->persisted ? r->pos : ss->persisted);
  return true;
}

/* Headers of a chunk PUT: validate, answer queries, or get ready for bytes. */
static enum MHD_Result chunk_begin(rw_fakegcs *s, fg_req *r, fg_session *ss) {
  fg_range rg;
  if (!read_range(r, &rg)) {
    pthread_mutex_unlock(&ss->mu);
    return fg_reply_error(s, r, 400, "malformed Content-Range '%s'",
                          r->content_range ? r->content_range : "");
  }
  const char *bad = chunk_problem(r, ss, &rg);
  if (bad) {
    pthread_mutex_unlock(&ss->mu);
    return fg_reply_error(s, r, 400, "%s", bad);
  }
  if (!rg.has_bytes) {
    if (r->fault.kind != FG_F_BROKEN_FINAL_AFTER) keep_fault_for_later(s, r);
    if (rg.total >= 0 && (uint64_t)rg.total == ss->persisted)
      return finalize_and_reply(s, r, ss);
    uint64_t p = ss->persisted;
    pthread_mutex_unlock(&ss->mu);
    return reply_308(s, r, p);
  }
  bool ok = start_chunk(s, r, ss, &rg);
  pthread_mutex_unlock(&ss->mu);
  return ok ? MHD_YES : fg_reply_error(s, r, 500, "out of memory");
}

static fg_session *find_session(rw_fakegcs *s, const char *id) {
  pthread_mutex_lock(&s->store.mu);
  fg_session *ss = id ? fg_session_find(&s->store, id) : NULL;
  pthread_mutex_unlock(&s->store.mu);
  return ss;
}

static enum MHD_Result put_headers(rw_fakegcs *s, fg_req *r) {
  const char *id = fg_arg(r, "upload_id");
  fg_session *ss = find_session(s, id);
  if (!ss) return fg_reply_error(s, r, 404, "No such upload session: %s", id ? id : "");
  pthread_mutex_lock(&ss->mu);
  if (ss->state != FG_SESSION_ACTIVE) return reply_finished(s, r, ss);
  return chunk_begin(s, r, ss);
}

/* After the last byte of a chunk: commit, finalize, or fail as told. */
static enum MHD_Result chunk_end(rw_fakegcs *s, fg_req *r) {
  fg_session *ss = r->session;
  if (r->fail_status) return fg_reply_error(s, r, r->fail_status, "%s", r->fail_msg);
  if (r->pos != r->end)
    return fg_reply_error(s, r, 400, "body shorter than the Content-Range says");
  pthread_mutex_lock(&ss->mu);
  bool stale = r->stale || ss->epoch != r->epoch || ss->state != FG_SESSION_ACTIVE;
  if (stale) {
    pthread_mutex_unlock(&ss->mu);
    return fg_reply_error(s, r, 503, "superseded by a newer request on this session");
  }
  if (r->fault.kind == FG_F_RETURN_AFTER) {
    commit(ss, r);
    pthread_mutex_unlock(&ss->mu);
    return fg_reply_error(s, r, r->fault.status, "injected fault: return-%d-after-%lluK",
                          r->fault.status, (unsigned long long)(r->fault.after_bytes / 1024));
  }
  if (r->final) commit(ss, r);
  if (r->fault.kind == FG_F_BROKEN) {
    if (r->final && ss->persisted == r->end) fg_finalize(s, ss, fg_header(r, "X-Goog-Hash"));
    pthread_mutex_unlock(&ss->mu);
    return fg_cut(s, r);
  }
  if (r->final && ss->persisted == r->end) return finalize_and_reply(s, r, ss);
  uint64_t p = ss->persisted;
  pthread_mutex_unlock(&ss->mu);
  return reply_308(s, r, p);
}

enum MHD_Result fg_h_upload_put(rw_fakegcs *s, fg_req *r, const char *data, size_t *n) {
  if (!r->headers_seen) return put_headers(s, r);
  if (*n > 0) return take_body(s, r, data, n);
  return chunk_end(s, r);
}

enum MHD_Result fg_h_upload_delete(rw_fakegcs *s, fg_req *r, const char *data, size_t *n) {
  *n = 0;
  if (r->headers_seen) return MHD_YES;
  if (r->fault.kind == FG_F_STALL_AFTER) {
    /* "stall-for-Ts-after-0K" on storage.objects.delete: a DELETE has no
     * body, so the stall comes before the answer (a server that hangs). */
    fg_stall(s, r, r->fault.stall_s);
    r->fault.kind = FG_F_NONE;
  }
  const char *id = fg_arg(r, "upload_id");
  fg_session *ss = find_session(s, id);
  if (!ss) return fg_reply_error(s, r, 404, "No such upload session: %s", id ? id : "");
  pthread_mutex_lock(&ss->mu);
  bool gone = ss->state == FG_SESSION_CANCELLED;
  if (!gone) {
    ss->state = FG_SESSION_CANCELLED;
    ss->epoch++;
    fg_blob_free(ss->blob);
    ss->blob = NULL;
  }
  pthread_mutex_unlock(&ss->mu);
  if (gone) return fg_reply_error(s, r, 404, "upload session not found (cancelled)");
  return fg_reply_error(s, r, 499, "upload session cancelled");
}

/* ---- uploadType=media ---- */

static enum MHD_Result media_begin(rw_fakegcs *s, fg_req *r) {
  upload_spec u;
  enum MHD_Result res = MHD_YES;
  const char *len_s = fg_header(r, "Content-Length");
  uint64_t len = 0;
  if (len_s && (!fg_parse_u64(len_s, &len) || len > (uint64_t)INT64_MAX))
    return fg_reply_error(s, r, 400, "bad Content-Length");
  if (!read_spec(s, r, NULL, &u, &res)) return res;
  if (len_s) u.declared = (int64_t)len;
  keep_fault_for_later(s, r);
  fg_session *ss = make_session(s, r, &u, &res);
  if (!ss) return res;
  r->simple = true;
  pthread_mutex_lock(&ss->mu);
  fg_range rg = {.has_bytes = len > 0, .first = 0, .last = len ? len - 1 : 0,
                 .total = (int64_t)len};
  if (!len_s) rg = (fg_range){.has_bytes = true, .first = 0, .last = UINT64_MAX - 1, .total = -1};
  bool ok = start_chunk(s, r, ss, &rg);
  r->final = true;
  r->end = len_s ? len : UINT64_MAX;
  r->limit = r->end;
  pthread_mutex_unlock(&ss->mu);
  return ok ? MHD_YES : fg_reply_error(s, r, 500, "out of memory");
}

static enum MHD_Result media_end(rw_fakegcs *s, fg_req *r) {
  if (r->fail_status) return fg_reply_error(s, r, r->fail_status, "%s", r->fail_msg);
  fg_session *ss = r->session;
  pthread_mutex_lock(&ss->mu);
  r->end = r->pos; /* chunked bodies end where they end */
  commit(ss, r);
  if (r->fault.kind == FG_F_BROKEN) {
    fg_finalize(s, ss, fg_header(r, "X-Goog-Hash"));
    pthread_mutex_unlock(&ss->mu);
    return fg_cut(s, r);
  }
  return finalize_and_reply(s, r, ss);
}

enum MHD_Result fg_h_upload_media(rw_fakegcs *s, fg_req *r, const char *data, size_t *n) {
  if (!r->headers_seen) return media_begin(s, r);
  if (*n > 0) return take_body(s, r, data, n);
  return media_end(s, r);
}

/* ---- uploadType=multipart ---- */

/* The boundary from "multipart/related; boundary=XYZ" (quotes allowed). */
static bool multipart_boundary(const char *ct, char *out, size_t len) {
  const char *b = ct ? strstr(ct, "boundary=") : NULL;
  if (!b) return false;
  b += 9;
  bool quoted = *b == '"';
  if (quoted) b++;
  size_t n = 0;
  while (b[n] && b[n] != (quoted ? '"' : ';') && b[n] != ' ' && n < len - 1) n++;
  if (n == 0 || n >= len - 1) return false;
  memcpy(out, b, n);
  out[n] = 0;
  return true;
}

typedef struct part {
  const char *data;
  size_t len;
  char type[128];
} part;

/* Finds where the part's data ends (the next delimiter) and moves *p past it. */
static bool part_end(const char **p, const char *end, const char *delim, part *out) {
  const char *next = memmem(out->data, (size_t)(end - out->data), delim, strlen(delim));
  if (!next) return false;
  out->len = (size_t)(next - out->data);
  *p = next + strlen(delim);
  return true;
}

/* Finds the part starting at *p (just after a delimiter line). */
static bool next_part(const char **p, const char *end, const char *delim, part *out) {
  out->type[0] = 0;
  if (end - *p >= 2 && memcmp(*p, "\r\n", 2) == 0) { /* a part without headers */
    out->data = *p + 2;
    return part_end(p, end, delim, out);
  }
  const char *hdr_end = memmem(*p, (size_t)(end - *p), "\r\n\r\n", 4);
  if (!hdr_end) return false;
  const char *ct = memmem(*p, (size_t)(hdr_end - *p), "Content-Type:", 13);
  if (!ct) ct = memmem(*p, (size_t)(hdr_end - *p), "content-type:", 13);
  if (ct) {
    ct += 13;
    while (*ct == ' ') ct++;
    const char *eol = memmem(ct, (size_t)(hdr_end + 2 - ct), "\r\n", 2);
    size_t n = eol ? (size_t)(eol - ct) : 0;
    if (n >= sizeof out->type) n = sizeof out->type - 1;
    memcpy(out->type, ct, n);
    out->type[n] = 0;
  }
  out->data = hdr_end + 4;
  return part_end(p, end, delim, out);
}

static bool split_multipart(fg_req *r, part *meta, part *media) {
  char boundary[128], delim[140];
  if (!multipart_boundary(fg_header(r, "Content-Type"), boundary, sizeof boundary)) return false;
  snprintf(delim, sizeof delim, "\r\n--%s", boundary);
  const char *end = r->body + r->body_len, *p = r->body;
  size_t first = strlen(delim) - 2;
  if (r->body_len < first || memcmp(p, delim + 2, first) != 0) return false;
  p += first;
  if (end - p < 2 || memcmp(p, "\r\n", 2) != 0) return false;
  p += 2;
  if (!next_part(&p, end, delim, meta) || end - p < 2 || memcmp(p, "\r\n", 2) != 0) return false;
  p += 2;
  return next_part(&p, end, delim, media) && end - p >= 2 && memcmp(p, "--", 2) == 0;
}

static enum MHD_Result multipart_store(rw_fakegcs *s, fg_req *r, fg_session *ss, const part *media) {
  pthread_mutex_lock(&ss->mu);
  if (media->len && !fg_blob_write(ss->blob, 0, media->data, media->len)) {
    pthread_mutex_unlock(&ss->mu);
    return fg_reply_error(s, r, 503, "store write failed");
  }
  fg_digest_update(&ss->digest, media->data, media->len);
  ss->persisted = media->len;
  if (r->fault.kind == FG_F_BROKEN) {
    fg_finalize(s, ss, fg_header(r, "X-Goog-Hash"));
    pthread_mutex_unlock(&ss->mu);
    return fg_cut(s, r);
  }
  return finalize_and_reply(s, r, ss);
}

enum MHD_Result fg_h_upload_multipart(rw_fakegcs *s, fg_req *r, const char *data, size_t *n) {
  r->body_max = FG_MAX_MULTIPART_BODY;
  if (!fg_collect(r, data, n) || !r->headers_seen) return MHD_YES;
  if (r->body_too_big) return fg_reply_error(s, r, 413, "multipart body too large");
  part meta, media;
  if (!r->body || !split_multipart(r, &meta, &media))
    return fg_reply_error(s, r, 400, "malformed multipart/related body");
  json_error_t jerr;
  json_t *mj = json_loadb(meta.data, meta.len, 0, &jerr);
  if (!json_is_object(mj)) {
    json_decref(mj);
    return fg_reply_error(s, r, 400, "multipart metadata is not a JSON object");
  }
  upload_spec u;
  enum MHD_Result res = MHD_YES;
  keep_fault_for_later(s, r);
  fg_session *ss = read_spec(s, r, mj, &u, &res) ? make_session(s, r, &u, &res) : NULL;
  if (ss && !json_object_get(mj, "contentType") && media.type[0]) {
    free(ss->content_type);
    ss->content_type = strdup(media.type);
  }
  json_decref(mj);
  if (!ss) return res;
  r->simple = true;
  return multipart_store(s, r, ss, &media);
}
