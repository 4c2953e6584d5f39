/* Reading GCS objects: see gcs_read.h. */
#include "gcs_read.h"

#include <errno.h>
#include <inttypes.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/checksum.h"

#define MAX_HEADERS 32
#define DEFAULT_STALL 30.0

struct rw_gcs_source {
  char *endpoint, *bucket, *object, *name;
  char *base_url; /* {endpoint}/storage/v1/b/BUCKET/o/OBJECT, escaped */
  char origin[RW_HTTP_ORIGIN_MAX];
  char **extra; /* "Name: value" lines, then the Authorization line of a fixed token */
  size_t nextra;
  bool fixed_token;
  rw_cred *cred; /* NULL: a fixed token or anonymous */
  char *ca_file;
};

static char *str_printf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static char *str_printf(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  char *out = NULL;
  if (vasprintf(&out, fmt, ap) < 0) out = NULL;
  va_end(ap);
  return out;
}

void rw_gcs_source_free(rw_gcs_source *s) {
  if (!s) return;
  for (size_t i = 0; i < s->nextra; i++) free(s->extra[i]);
  free(s->extra);
  free(s->endpoint);
  free(s->bucket);
  free(s->object);
  free(s->name);
  free(s->base_url);
  free(s->ca_file);
  rw_cred_unref(s->cred);
  free(s);
}

const char *rw_gcs_source_name(const rw_gcs_source *s) { return s->name; }

const char *rw_gcs_source_ca_file(const rw_gcs_source *s) { return s->ca_file; }

static rw_error *check_config(const rw_gcs_source_config *c) {
  if (!c || !c->bucket || !*c->bucket) return rw_err(RW_E_INVALID, "gcs source: bucket is required");
  if (!c->object || !*c->object) return rw_err(RW_E_INVALID, "gcs source: object is required");
  if (c->nheaders > MAX_HEADERS)
    return rw_err(RW_E_INVALID, "gcs source: at most %d extra headers", MAX_HEADERS);
  for (size_t i = 0; i < c->nheaders; i++) {
    const rw_gcs_header *h = &c->headers[i];
    if (!h->name || !*h->name || !h->value || strpbrk(h->name, ":\r\n ") || strpbrk(h->value, "\r\n"))
      return rw_err(RW_E_INVALID, "gcs source: bad header #%zu", i + 1);
  }
  if (c->token && strpbrk(c->token, "\r\n"))
    return rw_err(RW_E_INVALID, "gcs source: the token holds a line break");
  return NULL;
}

static bool copy_headers(rw_gcs_source *s, const rw_gcs_source_config *c) {
  if (!(s->extra = calloc(c->nheaders + 1, sizeof *s->extra))) return false;
  for (size_t i = 0; i < c->nheaders; i++) {
    if (!(s->extra[i] = str_printf("%s: %s", c->headers[i].name, c->headers[i].value))) return false;
    s->nextra++;
  }
  if (c->token) {
    if (!(s->extra[s->nextra] = str_printf("Authorization: Bearer %s", c->token))) return false;
    s->nextra++;
    s->fixed_token = true;
  }
  return true;
}

static char *make_base_url(const rw_gcs_source *s) {
  char *b = rw_http_escape(s->bucket), *o = rw_http_escape(s->object);
  char *url = b && o ? str_printf("%s/storage/v1/b/%s/o/%s", s->endpoint, b, o) : NULL;
  free(b);
  free(o);
  return url;
}

rw_gcs_source *rw_gcs_source_new(const rw_gcs_source_config *c, rw_error **err) {
  if ((*err = check_config(c))) return NULL;
  rw_gcs_source *s = calloc(1, sizeof *s);
  if (!s) goto nomem;
  s->endpoint = rw_gcs_endpoint_resolve(c->endpoint);
  s->bucket = strdup(c->bucket);
  s->object = strdup(c->object);
  s->name = str_printf("gs://%s/%s", c->bucket, c->object);
  if (!s->endpoint || !s->bucket || !s->object || !s->name || !copy_headers(s, c)) goto nomem;
  if (!rw_http_origin(s->endpoint, s->origin, sizeof s->origin)) {
    *err = rw_err(RW_E_INVALID, "gcs source: endpoint '%.300s' is not an http or https URL with a host",
                  s->endpoint);
    rw_gcs_source_free(s);
    return NULL;
  }
  if (!(s->base_url = make_base_url(s))) goto nomem;
  if (c->ca_file && !(s->ca_file = strdup(c->ca_file))) goto nomem;
  if ((*err = rw_cred_pick(s->endpoint, c->token != NULL, c->anonymous, c->cred, c->ca_file, &s->cred))) {
    rw_gcs_source_free(s);
    return NULL;
  }
  return s;
nomem:
  rw_gcs_source_free(s);
  *err = rw_err(RW_E_NOMEM, "gcs source: out of memory");
  return NULL;
}

/* ---- one request ---- */

static rw_error *unauthenticated(const rw_gcs_source *s, const rw_http_request *hr, bool refreshed) {
  const char *how = s->cred ? rw_cred_describe(s->cred) : "the token option";
  return rw_error_make(RW_E_UNAUTHENTICATED, 401, NULL, __FILE__, __LINE__, __func__,
                       "GET %s (%s): HTTP 401 with %s%s", hr->url, s->name, how,
                       refreshed ? ", again after a fresh token" : " (it cannot be refreshed)");
}

/* One GET with the library's name and the credential's token; a 401 to a
 * credential's token invalidates it and sends once more (a 401 reply has no
 * body streamed: on_body sees only 2xx); a 401 no refresh can cure is
 * auth.unauthenticated. */
static rw_error *send_get(const rw_gcs_source *s, rw_http *h, rw_ctx *ctx, rw_http_request *hr,
                          const char *range_line, rw_http_response *res) {
  char token[RW_TOKEN_MAX + 1];
  rw_error *e = NULL;
  for (int attempt = 0;; attempt++) {
    const char *lines[MAX_HEADERS + 8];
    size_t n = 0;
    char *auth = NULL;
    token[0] = 0;
    if (range_line) lines[n++] = range_line;
    lines[n++] = RW_USER_AGENT_LINE;
    lines[n++] = RW_API_CLIENT_LINE;
    for (size_t i = 0; i < s->nextra; i++) lines[n++] = s->extra[i];
    if (s->cred) {
      e = rw_cred_token(s->cred, ctx, token, sizeof token);
      if (e) return rw_err_wrap(rw_error_code(e), e, "GET %s: no token: %s", s->name, rw_error_message(e));
      if (!(auth = str_printf("Authorization: Bearer %s", token)))
        return rw_err(RW_E_NOMEM, "GET %s: out of memory", s->name);
      lines[n++] = auth;
    }
    lines[n] = NULL;
    hr->method = "GET";
    hr->headers = lines;
    if (hr->stall_timeout <= 0) hr->stall_timeout = DEFAULT_STALL;
    e = rw_http_do(h, ctx, hr, res);
    if (auth) {
      memset(auth, 0, strlen(auth));
      free(auth);
    }
    bool refreshable = !e && res->status == 401 && token[0];
    if (!e && res->status == 401 && (s->fixed_token || (refreshable && attempt == 1)))
      e = unauthenticated(s, hr, refreshable);
    if (e || !refreshable || attempt == 1) break;
    rw_log(RW_LOG_INFO, "GET %s: HTTP 401; fetching a fresh token from %s and sending once more", s->name,
           rw_cred_describe(s->cred));
    rw_cred_invalidate(s->cred, token);
    rw_http_response_clear(res);
  }
  memset(token, 0, sizeof token);
  return e;
}

static rw_error *http_failure(const rw_gcs_source *s, const char *what, const rw_http_response *res) {
  char *msg = rw_gcs_server_message(res);
  rw_error *e = res->status == 404
                    ? rw_error_make(RW_E_NOT_FOUND, 404, NULL, __FILE__, __LINE__, __func__,
                                    "%s %s: HTTP 404: %s", what, s->name, msg ? msg : "")
                    : rw_err_http(res->status, "%s %s: HTTP %d: %s", what, s->name, res->status,
                                  msg ? msg : "");
  free(msg);
  return e;
}

/* ---- stat ---- */

void rw_gcs_meta_clear(rw_gcs_meta *m) {
  free(m->json);
  memset(m, 0, sizeof *m);
}

static bool json_u64(json_t *o, const char *key, uint64_t *v) {
  const char *t = json_string_value(json_object_get(o, key));
  char *end;
  if (!t || !*t || *t == '-') return false;
  errno = 0;
  unsigned long long x = strtoull(t, &end, 10);
  if (*end || errno) return false;
  *v = x;
  return true;
}

static rw_error *parse_meta(const rw_gcs_source *s, const rw_http_response *res, rw_gcs_meta *m) {
  json_error_t je;
  json_t *j = res->body ? json_loadb(res->body, res->body_len, 0, &je) : NULL;
  uint64_t gen = 0, mgen = 0;
  bool ok = j && json_u64(j, "size", &m->size) && json_u64(j, "generation", &gen) && gen > 0 &&
            gen <= INT64_MAX;
  if (!ok) {
    json_decref(j);
    return rw_err(RW_E_PROTOCOL, "stat %s: the reply is not an object resource with size and generation",
                  s->name);
  }
  m->generation = (int64_t)gen;
  if (json_u64(j, "metageneration", &mgen)) m->metageneration = (int64_t)mgen;
  const char *crc = json_string_value(json_object_get(j, "crc32c"));
  const char *md5 = json_string_value(json_object_get(j, "md5Hash"));
  const char *ct = json_string_value(json_object_get(j, "contentType"));
  if (crc && rw_crc32c_from_base64(crc, &m->crc32c)) {
    m->has_crc32c = true;
    snprintf(m->crc32c_b64, sizeof m->crc32c_b64, "%s", crc);
  }
  if (md5 && strlen(md5) < sizeof m->md5_b64) {
    m->has_md5 = true;
    snprintf(m->md5_b64, sizeof m->md5_b64, "%s", md5);
  }
  snprintf(m->content_type, sizeof m->content_type, "%s", ct ? ct : "");
  m->json = strndup(res->body, res->body_len);
  json_decref(j);
  return m->json ? NULL : rw_err(RW_E_NOMEM, "stat %s: out of memory", s->name);
}

rw_error *rw_gcs_source_stat(const rw_gcs_source *s, rw_http *h, rw_ctx *ctx, int64_t generation,
                             double stall_timeout, rw_gcs_meta *out) {
  memset(out, 0, sizeof *out);
  char *url = generation > 0 ? str_printf("%s?generation=%" PRId64, s->base_url, generation)
                             : strdup(s->base_url);
  if (!url) return rw_err(RW_E_NOMEM, "stat %s: out of memory", s->name);
  rw_http_request hr = {.url = url, .stall_timeout = stall_timeout};
  rw_http_response res;
  rw_error *e = send_get(s, h, ctx, &hr, NULL, &res);
  if (!e && res.status != 200) e = http_failure(s, "stat", &res);
  if (!e) e = parse_meta(s, &res, out);
  rw_http_response_clear(&res);
  free(url);
  return e;
}

/* ---- ranged GET ---- */

typedef struct get_state {
  const rw_gcs_source *s;
  const rw_gcs_get *g;
  rw_http_response *res;
  uint64_t got;
  bool checked;
  rw_error *err; /* why on_body refused */
} get_state;

/* The reply must be the range and generation asked for. */
static rw_error *check_reply_head(const get_state *st) {
  const rw_gcs_get *g = st->g;
  const char *gen = rw_http_response_header(st->res, "x-goog-generation");
  if (gen) {
    char want[24];
    snprintf(want, sizeof want, "%" PRId64, g->generation);
    if (strcmp(gen, want) != 0)
      return rw_err(RW_E_GENERATION_CHANGED, "read %s: the server sent generation %s, the reader is pinned "
                    "to generation %s", st->s->name, gen, want);
  }
  const char *cr = rw_http_response_header(st->res, "Content-Range");
  unsigned long long a, b;
  if (cr && (sscanf(cr, "bytes %llu-%llu/", &a, &b) != 2 || a != g->off || b != g->off + g->len - 1))
    return rw_err(RW_E_PROTOCOL, "read %s: asked for bytes %" PRIu64 "-%" PRIu64 ", the reply's "
                  "Content-Range is '%.80s'", st->s->name, g->off, g->off + g->len - 1, cr);
  if (!cr && g->off != 0)
    return rw_err(RW_E_PROTOCOL, "read %s: asked for bytes from %" PRIu64 ", the reply has no Content-Range",
                  st->s->name, g->off);
  return NULL;
}

static bool get_body(void *ud, const char *p, size_t n) {
  get_state *st = ud;
  if (!st->checked) {
    st->checked = true;
    if ((st->err = check_reply_head(st))) return false;
  }
  if (n > st->g->len - st->got) {
    st->err = rw_err(RW_E_PROTOCOL, "read %s: the reply holds more than the %" PRIu64 " bytes asked for",
                     st->s->name, st->g->len);
    return false;
  }
  st->got += n;
  return st->g->on_body(st->g->ud, p, n);
}

static void get_tick(void *ud) {
  get_state *st = ud;
  if (st->g->on_tick) st->g->on_tick(st->g->ud);
}

rw_error *rw_gcs_source_get(const rw_gcs_source *s, rw_http *h, rw_ctx *ctx, const rw_gcs_get *g) {
  char *url = str_printf("%s?alt=media&generation=%" PRId64, s->base_url, g->generation);
  char *range = str_printf("Range: bytes=%" PRIu64 "-%" PRIu64, g->off, g->off + g->len - 1);
  rw_http_response res;
  memset(&res, 0, sizeof res);
  get_state st = {.s = s, .g = g, .res = &res};
  rw_error *e = NULL;
  if (!url || !range) {
    e = rw_err(RW_E_NOMEM, "read %s: out of memory", s->name);
    goto out;
  }
  rw_http_request hr = {.url = url, .stall_timeout = g->stall_timeout, .on_body = get_body,
                        .on_tick = get_tick, .ud = &st};
  e = send_get(s, h, ctx, &hr, range, &res);
  if (st.err) { /* ours is the reason the transfer ended */
    rw_error_unref(e);
    e = st.err;
    st.err = NULL;
  }
  if (!e && (res.status < 200 || res.status > 299)) e = http_failure(s, "read", &res);
  if (!e && st.got != g->len)
    e = rw_err(RW_E_NET_EOF, "read %s: the reply ended after %" PRIu64 " of %" PRIu64 " bytes from %" PRIu64,
               s->name, st.got, g->len, g->off);
out:
  rw_http_response_clear(&res);
  free(url);
  free(range);
  return e;
}
