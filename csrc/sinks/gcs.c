/* GCS resumable upload sink: see gcs.h. */
#include "gcs.h"

#include <inttypes.h>
#include <jansson.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "core/checksum.h"

#define DEFAULT_ENDPOINT "https://storage.googleapis.com"
#define MAX_HEADERS 32
#define DEFAULT_STALL 30.0 /* seconds, when the writer set none */

typedef struct gcs_sink {
  rw_sink base;
  rw_http *http;
  char *endpoint, *bucket, *object, *metadata_json;
  char origin[RW_HTTP_ORIGIN_MAX]; /* the endpoint's: every request goes there */
  bool has_igm, has_imgm;
  int64_t igm, imgm;
  char **extra; /* "Name: value" lines */
  size_t nextra;
  double abort_timeout;
  char *session; /* session URI, "" before begin */
  pthread_mutex_t token_mu;
  char *auth;    /* "Authorization: Bearer ..." or NULL */
  rw_cred *cred; /* used when auth is NULL; NULL: anonymous */
} gcs_sink;

static const rw_sink_ops gcs_ops;

static char *dup_or_null(const char *s) { return s ? strdup(s) : NULL; }

static char *str_printf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static char *str_printf(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  char *out = NULL;
  if (vasprintf(&out, fmt, ap) < 0) out = NULL;
  va_end(ap);
  return out;
}

char *rw_gcs_endpoint_resolve(const char *endpoint) {
  const char *e = endpoint;
  if (!e || !*e) e = getenv("STORAGE_EMULATOR_HOST");
  if (!e || !*e) e = getenv("CLOUD_STORAGE_EMULATOR_ENDPOINT");
  if (!e || !*e) e = DEFAULT_ENDPOINT;
  bool has_scheme = strstr(e, "://") != NULL;
  char *out = str_printf("%s%s", has_scheme ? "" : "http://", e);
  if (!out) return NULL;
  size_t n = strlen(out);
  while (n > 0 && out[n - 1] == '/') out[--n] = 0;
  return out;
}

/* ---- construction ---- */

static void gcs_destroy(rw_sink *s) {
  gcs_sink *g = (gcs_sink *)s;
  rw_http_free(g->http);
  for (size_t i = 0; i < g->nextra; i++) free(g->extra[i]);
  free(g->extra);
  free(g->endpoint);
  free(g->bucket);
  free(g->object);
  free(g->metadata_json);
  free(g->session);
  free(g->auth);
  rw_cred_unref(g->cred);
  pthread_mutex_destroy(&g->token_mu);
  free(g);
}

static bool copy_headers(gcs_sink *g, const rw_gcs_config *cfg) {
  if (cfg->nheaders == 0) return true;
  g->extra = calloc(cfg->nheaders, sizeof *g->extra);
  if (!g->extra) return false;
  for (size_t i = 0; i < cfg->nheaders; i++) {
    g->extra[i] = str_printf("%s: %s", cfg->headers[i].name, cfg->headers[i].value);
    if (!g->extra[i]) return false;
    g->nextra++;
  }
  return true;
}

static rw_error *check_config(const rw_gcs_config *cfg) {
  if (!cfg) return rw_err(RW_E_INVALID, "gcs sink: no config");
  if (!cfg->session_uri && (!cfg->bucket || !*cfg->bucket))
    return rw_err(RW_E_INVALID, "gcs sink: bucket is required");
  if (!cfg->session_uri && (!cfg->object || !*cfg->object))
    return rw_err(RW_E_INVALID, "gcs sink: object is required");
  if (cfg->nheaders > MAX_HEADERS)
    return rw_err(RW_E_INVALID, "gcs sink: at most %d extra headers", MAX_HEADERS);
  for (size_t i = 0; i < cfg->nheaders; i++) {
    const rw_gcs_header *h = &cfg->headers[i];
    if (!h->name || !*h->name || !h->value || strpbrk(h->name, ":\r\n ") || strpbrk(h->value, "\r\n"))
      return rw_err(RW_E_INVALID, "gcs sink: bad header #%zu", i + 1);
  }
  if (cfg->token && strpbrk(cfg->token, "\r\n"))
    return rw_err(RW_E_INVALID, "gcs sink: the token holds a line break");
  if (cfg->metadata_json) {
    json_error_t je;
    json_t *j = json_loads(cfg->metadata_json, 0, &je);
    bool obj = j && json_is_object(j);
    json_decref(j);
    if (!obj) return rw_err(RW_E_INVALID, "gcs sink: metadata is not a JSON object");
  }
  return NULL;
}

/* A session URI (from a Location or a resume) must be on the endpoint's
 * origin: the bytes and the bearer token go nowhere else. */
static rw_error *check_session_uri(const gcs_sink *g, const char *uri, const char *from) {
  if (rw_http_same_origin(uri, g->endpoint)) return NULL;
  return rw_err(RW_E_PROTOCOL, "gcs sink: the session URI '%.300s' (%s) is not http(s) on the endpoint's "
                "origin %s; nothing is sent to it", uri, from, g->origin);
}

/* The credential of a config without a token (see rw_cred_pick). */
static rw_error *pick_cred(gcs_sink *g, const rw_gcs_config *cfg) {
  return rw_cred_pick(cfg->endpoint, cfg->token != NULL, cfg->anonymous, cfg->cred, cfg->ca_file, &g->cred);
}

rw_sink *rw_gcs_sink_new(const rw_gcs_config *cfg, rw_error **err) {
  bool handed = false; /* cfg->dialer given to the HTTP client, which releases it */
  gcs_sink *g = NULL;
  if ((*err = check_config(cfg))) goto fail;
  g = calloc(1, sizeof *g);
  if (!g) goto nomem;
  g->base.ops = &gcs_ops;
  pthread_mutex_init(&g->token_mu, NULL);
  g->has_igm = cfg->has_if_generation_match;
  g->igm = cfg->if_generation_match;
  g->has_imgm = cfg->has_if_metageneration_match;
  g->imgm = cfg->if_metageneration_match;
  g->base.has_precondition = g->has_igm || g->has_imgm;
  g->abort_timeout = cfg->abort_timeout > 0 ? cfg->abort_timeout : 2.0;
  g->endpoint = rw_gcs_endpoint_resolve(cfg->endpoint);
  g->bucket = dup_or_null(cfg->bucket ? cfg->bucket : "");
  g->object = dup_or_null(cfg->object ? cfg->object : "");
  g->metadata_json = strdup(cfg->metadata_json ? cfg->metadata_json : "{}");
  g->session = strdup(cfg->session_uri ? cfg->session_uri : "");
  if (cfg->token && !(g->auth = str_printf("Authorization: Bearer %s", cfg->token))) goto nomem;
  if (!g->endpoint || !g->bucket || !g->object || !g->metadata_json || !g->session) goto nomem;
  if (!copy_headers(g, cfg)) goto nomem;
  if (!rw_http_origin(g->endpoint, g->origin, sizeof g->origin)) {
    *err = rw_err(RW_E_INVALID, "gcs sink: endpoint '%.300s' is not an http or https URL with a host",
                  g->endpoint);
    goto fail;
  }
  if (g->session[0] && (*err = check_session_uri(g, g->session, "session_uri"))) goto fail;
  if ((*err = pick_cred(g, cfg))) goto fail;
  rw_http_config hc = {.connect_timeout = cfg->connect_timeout, .dialer = cfg->dialer, .ca_file = cfg->ca_file};
  handed = true;
  if (!(g->http = rw_http_new(&hc, err))) goto fail;
  return &g->base;
nomem:
  *err = rw_err(RW_E_NOMEM, "gcs sink: out of memory");
fail:
  if (!handed) rw_http_dialer_release(cfg->dialer);
  if (g) gcs_destroy(&g->base);
  return NULL;
}

rw_error *rw_gcs_sink_set_token(rw_sink *s, const char *token) {
  if (s->ops != &gcs_ops) return rw_err(RW_E_INVALID, "not a gcs sink");
  if (token && strpbrk(token, "\r\n")) return rw_err(RW_E_INVALID, "the token holds a line break");
  char *auth = token ? str_printf("Authorization: Bearer %s", token) : NULL;
  if (token && !auth) return rw_err(RW_E_NOMEM, "out of memory");
  gcs_sink *g = (gcs_sink *)s;
  pthread_mutex_lock(&g->token_mu);
  char *old = g->auth;
  g->auth = auth;
  pthread_mutex_unlock(&g->token_mu);
  free(old);
  return NULL;
}

/* ---- requests ---- */

/* Header lines for one request: the caller's own lines, the library's name,
 * auth and extras. *auth_copy holds the auth line (freed by the caller);
 * token gets the credential's token (for a 401), "" when none. */
static rw_error *build_headers(gcs_sink *g, rw_ctx *ctx, const char **out, const char *const *own,
                               char **auth_copy, char *token) {
  size_t n = 0;
  token[0] = 0;
  for (; own && *own; own++) out[n++] = *own;
  out[n++] = RW_USER_AGENT_LINE;
  out[n++] = RW_API_CLIENT_LINE;
  pthread_mutex_lock(&g->token_mu);
  bool fixed = g->auth != NULL;
  *auth_copy = fixed ? strdup(g->auth) : NULL;
  pthread_mutex_unlock(&g->token_mu);
  if (!fixed && g->cred) {
    rw_error *e = rw_cred_token(g->cred, ctx, token, RW_TOKEN_MAX + 1);
    if (e) return e;
    *auth_copy = str_printf("Authorization: Bearer %s", token);
  }
  if ((fixed || g->cred) && !*auth_copy) return rw_err(RW_E_NOMEM, "gcs sink: out of memory");
  if (*auth_copy) out[n++] = *auth_copy;
  for (size_t i = 0; i < g->nextra; i++) out[n++] = g->extra[i];
  out[n] = NULL;
  return NULL;
}

typedef struct gcs_req {
  const char *method, *url, *what; /* what: "PUT <uri> bytes a-b/ *" for messages */
  const char *const *own_headers;
  const struct iovec *iov;
  int iovcnt;
  uint64_t len;
  double stall_timeout;
  void (*on_sent)(void *ud, uint64_t bytes);
  void *ud;
} gcs_req;

static double stall_for(const gcs_sink *g, const gcs_req *r) {
  if (r->stall_timeout > 0) return r->stall_timeout;
  return g->base.stall_timeout > 0 ? g->base.stall_timeout : DEFAULT_STALL;
}

/* *authorized: an Authorization line was sent. */
static rw_error *send_once(gcs_sink *g, rw_ctx *ctx, const gcs_req *r, rw_http_response *res,
                           char *token, bool *authorized) {
  const char *lines[MAX_HEADERS + 8];
  char *auth = NULL;
  rw_error *e = build_headers(g, ctx, lines, r->own_headers, &auth, token);
  *authorized = auth != NULL;
  if (e) {
    free(auth);
    return rw_err_wrap(rw_error_code(e), e, "%s: no token: %s", r->what, rw_error_message(e));
  }
  rw_http_request hr = {.method = r->method, .url = r->url, .headers = lines, .iov = r->iov,
                        .iovcnt = r->iovcnt, .len = r->len, .stall_timeout = stall_for(g, r),
                        .on_sent = r->on_sent, .ud = r->ud};
  e = rw_http_do(g->http, ctx, &hr, res);
  free(auth);
  if (!e) return NULL;
  /* net/http's messages already name the method and URL. */
  if (strstr(rw_error_message(e), r->what))
    return rw_err_wrap(rw_error_code(e), e, "%s", rw_error_message(e));
  return rw_err_wrap(rw_error_code(e), e, "%s: %s", r->what, rw_error_message(e));
}

static rw_error *unauthenticated(const gcs_sink *g, const gcs_req *r, bool refreshed) {
  const char *how = g->cred ? rw_cred_describe(g->cred) : "the token option";
  return rw_error_make(RW_E_UNAUTHENTICATED, 401, NULL, __FILE__, __LINE__, __func__,
                       "%s: HTTP 401 with %s%s", r->what, how,
                       refreshed ? ", again after a fresh token" : " (it cannot be refreshed)");
}

/* One request; a 401 with a credential's token invalidates that token and
 * sends once more; a 401 to a token that no refresh can cure is
 * auth.unauthenticated (without credentials it stays the server's 401). */
static rw_error *send_req(gcs_sink *g, rw_ctx *ctx, const gcs_req *r, rw_http_response *res) {
  memset(res, 0, sizeof *res);
  /* Checked again here, where the Authorization line is added: whatever the
   * URL's history, nothing (and no token) leaves for another origin. */
  if (!rw_http_same_origin(r->url, g->endpoint))
    return rw_err(RW_E_PROTOCOL, "%s: not on the endpoint's origin %s; not sent", r->what, g->origin);
  char token[RW_TOKEN_MAX + 1];
  bool authorized = false;
  rw_error *e = send_once(g, ctx, r, res, token, &authorized);
  bool refreshable = !e && res->status == 401 && token[0];
  if (refreshable) {
    rw_log(RW_LOG_INFO, "%s: HTTP 401; fetching a fresh token from %s and sending once more", r->what,
           rw_cred_describe(g->cred));
    rw_cred_invalidate(g->cred, token);
    rw_http_response_clear(res);
    e = send_once(g, ctx, r, res, token, &authorized);
  }
  memset(token, 0, sizeof token);
  /* Anonymous: the server's 401 is the caller's to judge (http.401). */
  if (!e && res->status == 401 && authorized) e = unauthenticated(g, r, refreshable);
  return e;
}

/* The server's own words: error.message from a JSON error, else the body. */
char *rw_gcs_server_message(const rw_http_response *res) {
  if (!res->body || !res->body_len) return strdup("(no body)");
  json_error_t je;
  json_t *j = json_loadb(res->body, res->body_len, 0, &je);
  const char *msg = json_string_value(json_object_get(json_object_get(j, "error"), "message"));
  char *out = msg ? strdup(msg) : str_printf("%.300s", res->body);
  json_decref(j);
  return out;
}

static rw_error *http_failure(const gcs_req *r, const rw_http_response *res) {
  char *msg = rw_gcs_server_message(res);
  rw_error *e = rw_err_http(res->status, "%s: HTTP %d: %s", r->what, res->status, msg ? msg : "");
  free(msg);
  return e;
}

/* ---- object JSON ---- */

static char *json_text_field(json_t *o, const char *key) {
  json_t *v = json_object_get(o, key);
  if (json_is_string(v)) return strdup(json_string_value(v));
  if (json_is_integer(v)) return str_printf("%" JSON_INTEGER_FORMAT, json_integer_value(v));
  return NULL;
}

/* Strict decimal: digits only (no sign, space or prefix), below 2^63. */
static bool parse_u63(const char *p, size_t n, uint64_t *out) {
  if (n == 0 || n > 19) return false;
  uint64_t v = 0;
  for (size_t i = 0; i < n; i++) {
    if (p[i] < '0' || p[i] > '9') return false;
    v = v * 10 + (uint64_t)(p[i] - '0');
  }
  if (v > (uint64_t)INT64_MAX) return false;
  *out = v;
  return true;
}

/* The object must be the one asked for, when the sink knows it (a resumed
 * session may not). */
static rw_error *check_names(const gcs_sink *g, const gcs_req *r, const rw_sink_object *obj) {
  if (!g->bucket[0] || !g->object[0]) return NULL;
  if (obj->bucket && obj->name && strcmp(obj->bucket, g->bucket) == 0 && strcmp(obj->name, g->object) == 0)
    return NULL;
  return rw_err(RW_E_PROTOCOL, "%s: the server finalized gs://%.200s/%.300s, not gs://%.200s/%.300s",
                r->what, obj->bucket ? obj->bucket : "(no bucket)", obj->name ? obj->name : "(no name)",
                g->bucket, g->object);
}

static rw_error *parse_object(const gcs_sink *g, const gcs_req *r, const rw_http_response *res,
                              rw_sink_object *obj) {
  json_error_t je;
  json_t *j = res->body ? json_loadb(res->body, res->body_len, 0, &je) : NULL;
  if (!json_is_object(j)) {
    json_decref(j);
    return rw_err(RW_E_PROTOCOL, "%s: HTTP %d without an object resource", r->what, res->status);
  }
  char *size = json_text_field(j, "size");
  uint64_t sz = 0;
  bool size_ok = size && parse_u63(size, strlen(size), &sz);
  free(size);
  if (!size_ok) {
    json_decref(j);
    return rw_err(RW_E_PROTOCOL, "%s: the object resource has no valid size", r->what);
  }
  obj->size = sz;
  obj->bucket = json_text_field(j, "bucket");
  obj->name = json_text_field(j, "name");
  obj->generation = json_text_field(j, "generation");
  obj->crc32c = json_text_field(j, "crc32c");
  obj->md5 = json_text_field(j, "md5Hash");
  obj->json = strndup(res->body, res->body_len);
  json_decref(j);
  return check_names(g, r, obj);
}

static size_t count_headers(const rw_http_response *res, const char *name) {
  size_t n = 0;
  for (size_t i = 0; i < res->nheaders; i++) n += strcasecmp(res->headers[i].name, name) == 0;
  return n;
}

/* Exactly "bytes=0-N" (N decimal, < 2^63) -> N+1; no header -> 0. */
static rw_error *parse_range(const gcs_req *r, const rw_http_response *res, uint64_t *persisted) {
  static const char prefix[] = "bytes=0-";
  const char *range = rw_http_response_header(res, "Range");
  *persisted = 0;
  if (!range) return NULL;
  uint64_t last;
  size_t n = strlen(range), k = sizeof prefix - 1;
  if (count_headers(res, "Range") != 1 || n <= k || memcmp(range, prefix, k) != 0 ||
      !parse_u63(range + k, n - k, &last))
    return rw_err(RW_E_PROTOCOL, "%s: 308 with a bad Range header '%.100s' (want one 'bytes=0-N', "
                  "N < 2^63)", r->what, range);
  *persisted = last + 1;
  return NULL;
}

/* A 400 to a request that carried X-Goog-Hash, whose message says a CRC32C
 * or MD5 does not match: GCS ("Provided CRC32C \"..\" doesn't match
 * calculated CRC32C \"..\"") and our fake ("... does not match the computed
 * ..."). */
static bool checksum_rejected(const rw_http_response *res, const char *msg) {
  return res->status == 400 && msg && (strcasestr(msg, "crc32c") || strcasestr(msg, "md5")) &&
         (strcasestr(msg, "doesn't match") || strcasestr(msg, "does not match"));
}

static rw_error *put_failure(const gcs_req *r, const rw_http_response *res, bool sent_hash) {
  char *msg = rw_gcs_server_message(res);
  rw_error *e;
  if (sent_hash && checksum_rejected(res, msg))
    e = rw_error_make(RW_E_CHECKSUM, res->status, NULL, __FILE__, __LINE__, __func__,
                      "%s: the server rejected our checksum: HTTP %d: %s", r->what, res->status, msg);
  else
    e = rw_err_http(res->status, "%s: HTTP %d: %s", r->what, res->status, msg ? msg : "");
  free(msg);
  return e;
}

/* Judges a reply to a PUT on the session: 308, 200/201 or a failure. */
static rw_error *judge_put(const gcs_sink *g, const gcs_req *r, const rw_http_response *res,
                           bool sent_hash, rw_sink_result *out) {
  memset(out, 0, sizeof *out);
  if (res->status == 308) return parse_range(r, res, &out->persisted);
  if (res->status == 200 || res->status == 201) {
    rw_error *e = parse_object(g, r, res, &out->obj);
    if (e) {
      rw_sink_result_clear(out);
      return e;
    }
    out->finalized = true;
    out->persisted = out->obj.size;
    return NULL;
  }
  return put_failure(r, res, sent_hash);
}

/* ---- ops ---- */

static char *initiate_url(gcs_sink *g) {
  char *b = rw_http_escape(g->bucket), *o = rw_http_escape(g->object), *url = NULL;
  char igm[48] = "", imgm[48] = "";
  if (g->has_igm) snprintf(igm, sizeof igm, "&ifGenerationMatch=%" PRId64, g->igm);
  if (g->has_imgm) snprintf(imgm, sizeof imgm, "&ifMetagenerationMatch=%" PRId64, g->imgm);
  if (b && o)
    url = str_printf("%s/upload/storage/v1/b/%s/o?uploadType=resumable&name=%s%s%s", g->endpoint, b, o, igm,
                     imgm);
  free(b);
  free(o);
  return url;
}

static rw_error *gcs_begin(rw_sink *s, rw_ctx *ctx) {
  gcs_sink *g = (gcs_sink *)s;
  if (g->session[0]) return NULL; /* resuming */
  char *url = initiate_url(g);
  char *what = url ? str_printf("POST %s", url) : NULL;
  if (!what) {
    free(url);
    return rw_err(RW_E_NOMEM, "gcs begin: out of memory");
  }
  const char *own[] = {"Content-Type: application/json; charset=UTF-8", NULL};
  struct iovec body = {g->metadata_json, strlen(g->metadata_json)};
  gcs_req r = {.method = "POST", .url = url, .what = what, .own_headers = own,
               .iov = &body, .iovcnt = 1, .len = body.iov_len};
  rw_http_response res;
  rw_error *e = send_req(g, ctx, &r, &res);
  if (!e && res.status != 200 && res.status != 201) e = http_failure(&r, &res);
  const char *loc = e ? NULL : rw_http_response_header(&res, "Location");
  if (!e && (!loc || !*loc)) e = rw_err(RW_E_PROTOCOL, "%s: HTTP %d without a Location", what, res.status);
  if (!e) e = check_session_uri(g, loc, "the Location of the initiating POST");
  if (!e) {
    char *session = strdup(loc);
    if (session) {
      free(g->session);
      g->session = session;
    } else {
      e = rw_err(RW_E_NOMEM, "gcs begin: out of memory");
    }
  }
  rw_http_response_clear(&res);
  free(what);
  free(url);
  return e;
}

static char *content_range(const rw_sink_put *p) {
  unsigned long long a = p->offset, b = p->offset + p->len - 1, total = p->offset + p->len;
  if (p->len == 0) return p->final ? str_printf("Content-Range: bytes */%llu", total)
                                   : strdup("Content-Range: bytes */*");
  if (p->final) return str_printf("Content-Range: bytes %llu-%llu/%llu", a, b, total);
  return str_printf("Content-Range: bytes %llu-%llu/*", a, b);
}

static char *hash_header(const rw_sink_sums *sums) {
  if (!sums || (!sums->has_crc32c && !sums->has_md5)) return NULL;
  char crc[9] = "", md5[25] = "";
  if (sums->has_crc32c) rw_crc32c_base64(sums->crc32c, crc);
  if (sums->has_md5) rw_md5_base64(sums->md5, md5);
  return str_printf("X-Goog-Hash: %s%s%s%s%s", sums->has_crc32c ? "crc32c=" : "", crc,
                    sums->has_crc32c && sums->has_md5 ? "," : "", sums->has_md5 ? "md5=" : "", md5);
}

static rw_error *no_session(const char *op) {
  return rw_err(RW_E_INVALID, "gcs %s: no session (begin was not called or failed)", op);
}

static rw_error *gcs_put(rw_sink *s, rw_ctx *ctx, const rw_sink_put *p, rw_sink_result *out) {
  gcs_sink *g = (gcs_sink *)s;
  memset(out, 0, sizeof *out);
  if (!g->session[0]) return no_session("put");
  char *range = content_range(p);
  char *hash = p->final ? hash_header(p->sums) : NULL;
  char *what = range ? str_printf("PUT %s %s", g->session, range + strlen("Content-Range: ")) : NULL;
  rw_error *e = NULL;
  if (!range || !what || (p->final && p->sums && (p->sums->has_crc32c || p->sums->has_md5) && !hash)) {
    e = rw_err(RW_E_NOMEM, "gcs put: out of memory");
    goto done;
  }
  const char *own[] = {range, hash, NULL};
  gcs_req r = {.method = "PUT", .url = g->session, .what = what, .own_headers = own,
               .iov = p->iov, .iovcnt = p->iovcnt, .len = p->len,
               .stall_timeout = p->stall_timeout, .on_sent = p->on_sent, .ud = p->ud};
  rw_http_response res;
  e = send_req(g, ctx, &r, &res);
  if (!e) e = judge_put(g, &r, &res, hash != NULL, out);
  rw_http_response_clear(&res);
done:
  free(what);
  free(hash);
  free(range);
  return e;
}

static rw_error *gcs_query(rw_sink *s, rw_ctx *ctx, rw_sink_result *out) {
  gcs_sink *g = (gcs_sink *)s;
  memset(out, 0, sizeof *out);
  if (!g->session[0]) return no_session("query");
  char *what = str_printf("PUT %s bytes */*", g->session);
  if (!what) return rw_err(RW_E_NOMEM, "gcs query: out of memory");
  const char *own[] = {"Content-Range: bytes */*", NULL};
  gcs_req r = {.method = "PUT", .url = g->session, .what = what, .own_headers = own};
  rw_http_response res;
  rw_error *e = send_req(g, ctx, &r, &res);
  if (!e) e = judge_put(g, &r, &res, false, out);
  rw_http_response_clear(&res);
  free(what);
  return e;
}

static rw_error *gcs_abort(rw_sink *s, rw_ctx *ctx) {
  gcs_sink *g = (gcs_sink *)s;
  if (!g->session[0]) return NULL;
  /* Its own short deadline; a cancelled caller context must not stop it. */
  rw_ctx *dctx = rw_ctx_with_timeout(rw_ctx_done(ctx) ? NULL : ctx, g->abort_timeout);
  if (!dctx) return rw_err(RW_E_NOMEM, "gcs abort: out of memory");
  char *what = str_printf("DELETE %s", g->session);
  gcs_req r = {.method = "DELETE", .url = g->session, .what = what ? what : "DELETE"};
  rw_http_response res;
  rw_error *e = send_req(g, dctx, &r, &res);
  /* 499: cancelled now; 404/410: already gone (expired, finalized or never
   * made): either way there is no session left to delete. */
  bool gone = res.status == 499 || res.status == 404 || res.status == 410;
  if (!e && !gone && res.status != 200 && res.status != 204) e = http_failure(&r, &res);
  rw_http_response_clear(&res);
  free(what);
  rw_ctx_unref(dctx);
  return e;
}

static const char *gcs_session(rw_sink *s) { return ((gcs_sink *)s)->session; }

static const rw_sink_ops gcs_ops = {
    .kind = "gcs",
    .begin = gcs_begin,
    .put = gcs_put,
    .query = gcs_query,
    .abort = gcs_abort,
    .session = gcs_session,
    .destroy = gcs_destroy,
};
