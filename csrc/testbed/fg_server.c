/* The fake GCS server: MHD daemon, per-request state, the request log.
 * Replies and request helpers: fg_http.c; routing: fg_route.c. */
#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>

#include "testbed/fg_internal.h"

/* ---- the request log ---- */

#define FG_LOG_STRING_MAX 4096

/* A copy of s cut at FG_LOG_STRING_MAX bytes; NULL stays NULL. */
static char *log_string(const char *s) {
  return s ? strndup(s, FG_LOG_STRING_MAX) : NULL;
}

static void log_entry_free(rw_fakegcs_request *e) {
  free(e->path);
  free(e->content_range);
  free(e->goog_hash);
  memset(e, 0, sizeof *e);
}

/* The slot for a new entry, log_mu held: grows up to max, then reuses the
 * oldest. NULL when out of memory. */
static rw_fakegcs_request *log_slot(fg_log *l) {
  if (l->n == l->max) {
    rw_fakegcs_request *e = &l->items[l->head];
    l->head = (l->head + 1) % l->cap;
    log_entry_free(e);
    return e;
  }
  if (l->n == l->cap) { /* head is 0 until the ring is full */
    size_t cap = l->cap ? l->cap * 2 : 64;
    if (cap > l->max) cap = l->max;
    rw_fakegcs_request *p = realloc(l->items, cap * sizeof *p);
    if (!p) return NULL;
    l->items = p;
    l->cap = cap;
  }
  return &l->items[l->n++];
}

void fg_log_add(rw_fakegcs *s, fg_req *r, int status) {
  pthread_mutex_lock(&s->log_mu);
  rw_fakegcs_request *e = log_slot(&s->log);
  if (e) {
    snprintf(e->method, sizeof e->method, "%s", r->method);
    e->path = log_string(r->log_path);
    e->content_range = log_string(r->content_range);
    e->goog_hash = log_string(fg_header(r, "X-Goog-Hash"));
    e->status = status;
  }
  pthread_mutex_unlock(&s->log_mu);
}

/* ---- per-request state ---- */

typedef struct query_buf {
  char *s;
  size_t len, cap;
} query_buf;

static enum MHD_Result add_arg(void *cls, enum MHD_ValueKind kind, const char *k, const char *v) {
  query_buf *q = cls;
  size_t need = q->len + strlen(k) + (v ? strlen(v) : 0) + 3;
  if (need > q->cap) {
    size_t cap = need * 2;
    char *p = realloc(q->s, cap);
    if (!p) return MHD_NO;
    q->s = p, q->cap = cap;
  }
  q->len += (size_t)sprintf(q->s + q->len, "%c%s%s%s", q->len ? '&' : '?', k, v ? "=" : "",
                            v ? v : "");
  return MHD_YES;
}

static fg_req *req_new(struct MHD_Connection *conn, const char *url, const char *method) {
  fg_req *r = calloc(1, sizeof *r);
  if (!r) return NULL;
  r->conn = conn;
  snprintf(r->method, sizeof r->method, "%s", method);
  r->path = strdup(url);
  query_buf q = {0};
  MHD_get_connection_values(conn, MHD_GET_ARGUMENT_KIND, add_arg, &q);
  if (asprintf(&r->log_path, "%s%s", url, q.s ? q.s : "") < 0) r->log_path = NULL;
  free(q.s);
  r->content_range = fg_strdup(MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "Content-Range"));
  r->body_max = FG_MAX_JSON_BODY;
  if (!r->path || !r->log_path) {
    free(r->path);
    free(r->log_path);
    free(r->content_range);
    free(r);
    return NULL;
  }
  return r;
}

static void req_free(fg_req *r) {
  fg_req_release_upload(r);
  free(r->path);
  free(r->log_path);
  free(r->content_range);
  free(r->body);
  free(r->retry_id);
  free(r);
}

/* Request headers over this many bytes get a JSON 431. libmicrohttpd itself
 * answers 431 (with its own HTML body) once headers outgrow the connection's
 * memory pool (MHD_OPTION_CONNECTION_MEMORY_LIMIT, 1 MiB here), before we see
 * the request; between the two limits the reply is ours. */
#define FG_MAX_HEADER_BYTES (64 * 1024)

static enum MHD_Result add_header_size(void *cls, enum MHD_ValueKind kind, const char *key,
                                       const char *value) {
  size_t *total = cls;
  *total += strlen(key) + (value ? strlen(value) : 0) + 4; /* ": " and CRLF */
  return MHD_YES;
}

static void on_completed(void *cls, struct MHD_Connection *c, void **con_cls,
                         enum MHD_RequestTerminationCode toe) {
  if (*con_cls) {
    fg_req_finish(cls, *con_cls);
    req_free(*con_cls);
  }
  *con_cls = NULL;
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *conn, const char *url,
                                  const char *method, const char *version,
                                  const char *upload_data, size_t *upload_data_size,
                                  void **con_cls) {
  rw_fakegcs *s = cls;
  fg_req *r = *con_cls;
  if (!r) {
    if (!(r = req_new(conn, url, method))) return MHD_NO;
    *con_cls = r;
    size_t header_bytes = 0;
    MHD_get_connection_values(conn, MHD_HEADER_KIND, add_header_size, &header_bytes);
    if (header_bytes > FG_MAX_HEADER_BYTES) {
      enum MHD_Result res = fg_reply_error(
          s, r, 431, "request headers are %zu bytes; the limit is %d bytes: send fewer or shorter "
          "headers", header_bytes, FG_MAX_HEADER_BYTES);
      r->headers_seen = true;
      return res;
    }
    enum MHD_Result res = fg_route(s, r);
    if (!r->replied && !r->cut && !r->deferred && r->handler) {
      size_t zero = 0;
      res = r->handler(s, r, NULL, &zero);
    }
    r->headers_seen = true;
    return r->cut ? MHD_NO : res;
  }
  if (r->cut) return MHD_NO;
  if (r->deferred && !r->replied) {
    if (*upload_data_size == 0) return fg_reply_error(s, r, r->fail_status, "%s", r->fail_msg);
    *upload_data_size = 0;
    return MHD_YES;
  }
  if (r->replied) {
    *upload_data_size = 0;
    return MHD_YES;
  }
  return r->handler(s, r, upload_data, upload_data_size);
}

/* ---- lifecycle ---- */

static bool resolve(const char *host, int port, struct sockaddr_storage *sa, rw_error **err) {
  struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM,
                           .ai_flags = AI_NUMERICSERV}, *res = NULL;
  char ps[16];
  snprintf(ps, sizeof ps, "%d", port);
  int rc = getaddrinfo(host, ps, &hints, &res);
  if (rc != 0 || !res) {
    *err = rw_err(RW_E_INVALID, "fakegcs: cannot resolve host '%s': %s", host, gai_strerror(rc));
    return false;
  }
  memcpy(sa, res->ai_addr, res->ai_addrlen);
  freeaddrinfo(res);
  return true;
}

/* Connections beyond this wait in the listen backlog. A thread each. */
#define FG_MAX_CONNECTIONS 4096
#define FG_THREAD_STACK ((size_t)2 << 20)

/* FG_MAX_CONNECTIONS, or fewer when the descriptor limit is lower (each
 * connection holds one; keep some for files and the listener). */
static unsigned connection_limit(void) {
  struct rlimit rl;
  rlim_t max = FG_MAX_CONNECTIONS;
  if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY && rl.rlim_cur < max + 64)
    max = rl.rlim_cur > 64 + 16 ? rl.rlim_cur - 64 : 16;
  return (unsigned)max;
}

static bool start_daemon(rw_fakegcs *s, const char *host, int port, rw_error **err) {
  struct sockaddr_storage sa;
  memset(&sa, 0, sizeof sa);
  if (!resolve(host, port, &sa, err)) return false;
  /* poll(), not select(): descriptors past FD_SETSIZE (1024) still work. */
  unsigned flags = MHD_USE_POLL_INTERNAL_THREAD | MHD_USE_THREAD_PER_CONNECTION | MHD_USE_TURBO;
  if (sa.ss_family == AF_INET6) flags |= MHD_USE_IPv6;
  struct MHD_OptionItem tls[] = {{MHD_OPTION_HTTPS_MEM_KEY, 0, s->tls_key},
                                 {MHD_OPTION_HTTPS_MEM_CERT, 0, s->tls_cert},
                                 {MHD_OPTION_END, 0, NULL}};
  if (s->tls_cert) flags |= MHD_USE_TLS;
  s->mhd = MHD_start_daemon(flags, (uint16_t)port, NULL, NULL, on_request, s,
                            MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&sa,
                            MHD_OPTION_CONNECTION_MEMORY_LIMIT, (size_t)(1024 * 1024),
                            MHD_OPTION_NOTIFY_COMPLETED, on_completed, s,
                            MHD_OPTION_LISTEN_BACKLOG_SIZE, 256,
                            MHD_OPTION_CONNECTION_LIMIT, connection_limit(),
                            MHD_OPTION_THREAD_STACK_SIZE, FG_THREAD_STACK,
                            MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)FG_IDLE_TIMEOUT_S,
                            MHD_OPTION_ARRAY, s->tls_cert ? tls : tls + 2,
                            MHD_OPTION_END);
  if (!s->mhd) {
    *err = rw_err(RW_E_IO, "fakegcs: cannot listen on %s:%d (%s)", host, port, strerror(errno));
    return false;
  }
  const union MHD_DaemonInfo *di = MHD_get_daemon_info(s->mhd, MHD_DAEMON_INFO_BIND_PORT);
  s->port = di ? di->port : port;
  bool v6 = sa.ss_family == AF_INET6;
  snprintf(s->url, sizeof s->url, "%s://%s%s%s:%d", s->tls_cert ? "https" : "http", v6 ? "[" : "", host,
           v6 ? "]" : "", s->port);
  snprintf(s->store.base_url, sizeof s->store.base_url, "%s", s->url);
  return true;
}

/* Both or neither of the TLS pair. */
static bool copy_tls(rw_fakegcs *s, const rw_fakegcs_config *cfg, rw_error **err) {
  if (!cfg->tls_cert && !cfg->tls_key) return true;
  if (!cfg->tls_cert || !cfg->tls_key)
    return *err = rw_err(RW_E_INVALID, "fakegcs: tls needs both cert and key (PEM)"), false;
  if (!MHD_is_feature_supported(MHD_FEATURE_TLS))
    return *err = rw_err("rw.unsupported", "fakegcs: this libmicrohttpd has no TLS"), false;
  s->tls_cert = strdup(cfg->tls_cert);
  s->tls_key = strdup(cfg->tls_key);
  if (!s->tls_cert || !s->tls_key) return *err = rw_err(RW_E_NOMEM, "fakegcs: out of memory"), false;
  return true;
}

rw_fakegcs *rw_fakegcs_start(const rw_fakegcs_config *cfg, rw_error **err) {
  *err = NULL;
  if (cfg->request_log > RW_FAKEGCS_REQUEST_LOG_MAX)
    return *err = rw_err(RW_E_INVALID, "fakegcs: request_log must be at most %d (got %zu)",
                         RW_FAKEGCS_REQUEST_LOG_MAX, cfg->request_log), NULL;
  rw_fakegcs *s = calloc(1, sizeof *s);
  if (!s) return *err = rw_err(RW_E_NOMEM, "fakegcs: out of memory"), NULL;
  if (!fg_store_init(&s->store, cfg)) {
    free(s);
    *err = rw_err(RW_E_IO, "fakegcs: cannot use store directory '%s'", cfg->dir ? cfg->dir : "");
    return NULL;
  }
  fg_faults_init(&s->faults);
  s->log.max = cfg->request_log ? cfg->request_log : RW_FAKEGCS_REQUEST_LOG_DEFAULT;
  pthread_mutex_init(&s->log_mu, NULL);
  pthread_mutex_init(&s->stop_mu, NULL);
  pthread_cond_init(&s->stop_cv, NULL);
  for (const char *const *b = cfg->buckets; b && *b; b++) rw_fakegcs_bucket_create(s, *b);
  if (!fg_auth_init(s, cfg, err) || !copy_tls(s, cfg, err)) {
    rw_fakegcs_stop(s);
    return NULL;
  }
  if (!start_daemon(s, cfg->host ? cfg->host : "127.0.0.1", cfg->port, err)) {
    rw_fakegcs_stop(s);
    return NULL;
  }
  return s;
}

void rw_fakegcs_stop(rw_fakegcs *s) {
  if (!s) return;
  pthread_mutex_lock(&s->stop_mu);
  s->stopping = true;
  pthread_cond_broadcast(&s->stop_cv);
  pthread_mutex_unlock(&s->stop_mu);
  if (s->mhd) MHD_stop_daemon(s->mhd);
  rw_fakegcs_requests_clear(s);
  free(s->log.items);
  fg_store_destroy(&s->store);
  fg_faults_destroy(&s->faults);
  fg_auth_destroy(s);
  free(s->tls_cert);
  free(s->tls_key);
  pthread_mutex_destroy(&s->log_mu);
  pthread_mutex_destroy(&s->stop_mu);
  pthread_cond_destroy(&s->stop_cv);
  free(s);
}

int rw_fakegcs_port(const rw_fakegcs *s) {
  return s->port;
}

const char *rw_fakegcs_url(const rw_fakegcs *s) {
  return s->url;
}

void rw_fakegcs_bucket_create(rw_fakegcs *s, const char *name) {
  pthread_mutex_lock(&s->store.mu);
  if (!fg_bucket_find(&s->store, name)) fg_bucket_add(&s->store, name);
  pthread_mutex_unlock(&s->store.mu);
}

void rw_fakegcs_set_faults(rw_fakegcs *s, const rw_fakegcs_faults *f) {
  fg_faults_set_random(&s->faults, f);
}

rw_fakegcs_request *rw_fakegcs_requests(rw_fakegcs *s, size_t *n) {
  pthread_mutex_lock(&s->log_mu);
  const fg_log *l = &s->log;
  size_t count = l->n;
  rw_fakegcs_request *out = calloc(count ? count : 1, sizeof *out);
  for (size_t i = 0; out && i < count; i++) {
    const rw_fakegcs_request *e = &l->items[(l->head + i) % l->cap];
    out[i] = *e;
    out[i].path = fg_strdup(e->path);
    out[i].content_range = fg_strdup(e->content_range);
    out[i].goog_hash = fg_strdup(e->goog_hash);
  }
  pthread_mutex_unlock(&s->log_mu);
  *n = out ? count : 0;
  return out;
}

void rw_fakegcs_requests_free(rw_fakegcs_request *r, size_t n) {
  for (size_t i = 0; r && i < n; i++) log_entry_free(&r[i]);
  free(r);
}

void rw_fakegcs_requests_clear(rw_fakegcs *s) {
  pthread_mutex_lock(&s->log_mu);
  fg_log *l = &s->log;
  for (size_t i = 0; i < l->n; i++) log_entry_free(&l->items[(l->head + i) % l->cap]);
  l->n = 0;
  l->head = 0;
  pthread_mutex_unlock(&s->log_mu);
}

bool rw_fakegcs_object_get(rw_fakegcs *s, const char *bucket, const char *name,
                           rw_fakegcs_object *out) {
  memset(out, 0, sizeof *out);
  pthread_mutex_lock(&s->store.mu);
  fg_object *o = fg_object_find(&s->store, bucket, name);
  if (o) o->refs++;
  pthread_mutex_unlock(&s->store.mu);
  if (!o) return false;
  out->size = o->size;
  out->generation = o->generation;
  out->crc32c = o->crc;
  out->has_md5 = o->has_md5;
  memcpy(out->md5, o->md5, 16);
  json_t *j = fg_object_json(&s->store, o);
  out->json = json_dumps(j, JSON_COMPACT);
  json_decref(j);
  if (fg_blob_has_bytes(o->blob)) {
    out->data = malloc(o->size ? o->size : 1);
    if (out->data) fg_blob_read(o->blob, 0, out->data, o->size);
  }
  pthread_mutex_lock(&s->store.mu);
  fg_object_release(&s->store, o);
  pthread_mutex_unlock(&s->store.mu);
  return true;
}

void rw_fakegcs_object_free(rw_fakegcs_object *o) {
  free(o->data);
  free(o->json);
  memset(o, 0, sizeof *o);
}
