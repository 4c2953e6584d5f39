/* Token sources: see auth_src.h. No secret is ever put in an error or log
 * line: messages name the file, the URI, the field and the rule. */
#include "auth_src.h"

#include <errno.h>
#include <jansson.h>
#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "core/backoff.h"
#include "core/clock.h"
#include "net/auth.h"
#include "net/http.h"

#define MAX_KEY_FILE (64 * 1024)
#define JWT_LIFETIME 3600

static void free_secret(char *s) {
  if (!s) return;
  memset(s, 0, strlen(s));
  free(s);
}

void rw_auth_src_clear(rw_auth_src *s) {
  free(s->path);
  free(s->email);
  free_secret(s->key_pem);
  free(s->key_id);
  free(s->token_uri);
  free(s->client_id);
  free_secret(s->client_secret);
  free_secret(s->refresh_token);
  free(s->meta_host);
  free(s->ca_file);
  memset(s, 0, sizeof *s);
}

const char *rw_auth_src_describe(const rw_auth_src *s) { return s->desc; }

/* ---- key files ---- */

static rw_error *read_small_file(const char *path, const char *what, char **out) {
  *out = NULL;
  FILE *f = fopen(path, "rb");
  if (!f) return rw_err(RW_E_BAD_CREDENTIALS, "%s '%s': cannot open: %s", what, path, strerror(errno));
  char *buf = malloc(MAX_KEY_FILE + 1);
  size_t n = buf ? fread(buf, 1, MAX_KEY_FILE + 1, f) : 0;
  bool bad = ferror(f);
  fclose(f);
  if (!buf) return rw_err(RW_E_NOMEM, "%s: out of memory", what);
  if (bad || n > MAX_KEY_FILE) {
    free(buf);
    return rw_err(RW_E_BAD_CREDENTIALS, "%s '%s': %s", what, path,
                  bad ? "cannot read it" : "larger than 64 KiB: not a key file");
  }
  buf[n] = 0;
  *out = buf;
  return NULL;
}

/* A required string field; the message names the field, never its value. */
static rw_error *field(json_t *j, const char *name, bool required, const char *what, const char *path,
                       char **out) {
  json_t *v = json_object_get(j, name);
  *out = NULL;
  if (!v && !required) return NULL;
  if (!json_is_string(v) || json_string_length(v) == 0)
    return rw_err(RW_E_BAD_CREDENTIALS, "%s '%s': no '%s' (a non-empty string is required)", what, path,
                  name);
  if (!(*out = strdup(json_string_value(v)))) return rw_err(RW_E_NOMEM, "%s: out of memory", what);
  return NULL;
}

static rw_error *check_key(const rw_auth_src *s, const char *what) {
  BIO *bio = BIO_new_mem_buf(s->key_pem, -1);
  EVP_PKEY *k = bio ? PEM_read_bio_PrivateKey(bio, NULL, NULL, NULL) : NULL;
  bool rsa = k && EVP_PKEY_base_id(k) == EVP_PKEY_RSA;
  EVP_PKEY_free(k);
  BIO_free(bio);
  ERR_clear_error();
  if (rsa) return NULL;
  return rw_err(RW_E_BAD_CREDENTIALS, "%s '%s': 'private_key' is not a PEM RSA private key", what,
                s->path);
}

static rw_error *check_token_uri(const rw_auth_src *s, const char *what) {
  char origin[RW_HTTP_ORIGIN_MAX];
  if (rw_http_origin(s->token_uri, origin, sizeof origin)) return NULL;
  return rw_err(RW_E_BAD_CREDENTIALS, "%s '%s': token_uri '%.300s' is not an http(s) URL", what, s->path,
                s->token_uri);
}

static rw_error *load_service_account(rw_auth_src *s, json_t *j, const char *what) {
  rw_error *e;
  if ((e = field(j, "client_email", true, what, s->path, &s->email)) ||
      (e = field(j, "private_key", true, what, s->path, &s->key_pem)) ||
      (e = field(j, "private_key_id", false, what, s->path, &s->key_id)) ||
      (e = field(j, "token_uri", false, what, s->path, &s->token_uri)))
    return e;
  if (!s->token_uri && !(s->token_uri = strdup(RW_DEFAULT_TOKEN_URI)))
    return rw_err(RW_E_NOMEM, "%s: out of memory", what);
  if ((e = check_token_uri(s, what)) || (e = check_key(s, what))) return e;
  s->type = RW_SRC_SERVICE_ACCOUNT;
  snprintf(s->desc, sizeof s->desc, "service account %.200s (key file %.250s)", s->email, s->path);
  return NULL;
}

static rw_error *load_authorized_user(rw_auth_src *s, json_t *j, const char *what) {
  rw_error *e;
  if ((e = field(j, "client_id", true, what, s->path, &s->client_id)) ||
      (e = field(j, "client_secret", true, what, s->path, &s->client_secret)) ||
      (e = field(j, "refresh_token", true, what, s->path, &s->refresh_token)) ||
      (e = field(j, "token_uri", false, what, s->path, &s->token_uri)))
    return e;
  if (!s->token_uri && !(s->token_uri = strdup(RW_DEFAULT_TOKEN_URI)))
    return rw_err(RW_E_NOMEM, "%s: out of memory", what);
  if ((e = check_token_uri(s, what))) return e;
  s->type = RW_SRC_AUTHORIZED_USER;
  snprintf(s->desc, sizeof s->desc, "authorized user (file %.400s)", s->path);
  return NULL;
}

static rw_error *load_json(rw_auth_src *s, const char *text, const char *what) {
  json_error_t je;
  json_t *j = json_loads(text, 0, &je);
  rw_error *e = NULL;
  const char *type = json_string_value(json_object_get(j, "type"));
  if (!json_is_object(j))
    e = rw_err(RW_E_BAD_CREDENTIALS, "%s '%s': not a JSON object (line %d)", what, s->path, je.line);
  else if (type && strcmp(type, "service_account") == 0) e = load_service_account(s, j, what);
  else if (type && strcmp(type, "authorized_user") == 0) e = load_authorized_user(s, j, what);
  else
    e = rw_err(RW_E_BAD_CREDENTIALS, "%s '%s': 'type' must be \"service_account\" or \"authorized_user\"",
               what, s->path);
  json_decref(j);
  return e;
}

rw_error *rw_auth_src_load_file(rw_auth_src *s, const char *path, const char *what) {
  char *text = NULL;
  if (!(s->path = strdup(path))) return rw_err(RW_E_NOMEM, "%s: out of memory", what);
  rw_error *e = read_small_file(path, what, &text);
  if (!e) e = load_json(s, text, what);
  free_secret(text);
  return e;
}

rw_error *rw_auth_src_metadata(rw_auth_src *s) {
  const char *h = getenv("GCE_METADATA_HOST");
  if (!h || !*h) h = RW_DEFAULT_METADATA_HOST;
  if (!(s->meta_host = strdup(h))) return rw_err(RW_E_NOMEM, "metadata: out of memory");
  s->type = RW_SRC_METADATA;
  snprintf(s->desc, sizeof s->desc, "the metadata server at %.400s", h);
  return NULL;
}

/* ---- JWT ---- */

char *rw_auth_b64url(const unsigned char *p, size_t n) {
  char *out = malloc(4 * ((n + 2) / 3) + 1);
  if (!out) return NULL;
  int len = EVP_EncodeBlock((unsigned char *)out, p, (int)n);
  while (len > 0 && out[len - 1] == '=') len--;
  out[len] = 0;
  for (char *c = out; *c; c++) *c = *c == '+' ? '-' : *c == '/' ? '_' : *c;
  return out;
}

static char *json_b64(json_t *j) {
  char *text = j ? json_dumps(j, JSON_COMPACT) : NULL;
  char *out = text ? rw_auth_b64url((const unsigned char *)text, strlen(text)) : NULL;
  free(text);
  json_decref(j);
  return out;
}

static char *jwt_signing_input(const rw_auth_src *s, double now) {
  json_t *h = json_pack("{s:s, s:s}", "alg", "RS256", "typ", "JWT");
  if (h && s->key_id) json_object_set_new(h, "kid", json_string(s->key_id));
  json_int_t iat = (json_int_t)now;
  json_t *c = json_pack("{s:s, s:s, s:s, s:I, s:I}", "iss", s->email, "scope", RW_STORAGE_SCOPE, "aud",
                        s->token_uri, "iat", iat, "exp", iat + JWT_LIFETIME);
  char *hb = json_b64(h), *cb = json_b64(c), *out = NULL;
  if (hb && cb && asprintf(&out, "%s.%s", hb, cb) < 0) out = NULL;
  free(hb);
  free(cb);
  return out;
}

static unsigned char *rs256(const char *pem, const char *input, size_t *siglen) {
  BIO *bio = BIO_new_mem_buf(pem, -1);
  EVP_PKEY *k = bio ? PEM_read_bio_PrivateKey(bio, NULL, NULL, NULL) : NULL;
  EVP_MD_CTX *md = k ? EVP_MD_CTX_new() : NULL;
  unsigned char *sig = NULL;
  *siglen = 0;
  if (md && EVP_DigestSignInit(md, NULL, EVP_sha256(), NULL, k) == 1 &&
      EVP_DigestSign(md, NULL, siglen, (const unsigned char *)input, strlen(input)) == 1 &&
      (sig = malloc(*siglen)) &&
      EVP_DigestSign(md, sig, siglen, (const unsigned char *)input, strlen(input)) != 1) {
    free(sig);
    sig = NULL;
  }
  EVP_MD_CTX_free(md);
  EVP_PKEY_free(k);
  BIO_free(bio);
  ERR_clear_error();
  return sig;
}

char *rw_auth_jwt(const rw_auth_src *s, double now, rw_error **err) {
  char *input = jwt_signing_input(s, now), *sb = NULL, *jwt = NULL;
  size_t siglen = 0;
  unsigned char *sig = input ? rs256(s->key_pem, input, &siglen) : NULL;
  if (sig) sb = rw_auth_b64url(sig, siglen);
  if (sb && asprintf(&jwt, "%s.%s", input, sb) < 0) jwt = NULL;
  if (!jwt)
    *err = input && !sig ? rw_err(RW_E_BAD_CREDENTIALS, "service account key '%s': cannot sign the JWT "
                                  "with its private_key", s->path)
                         : rw_err(RW_E_NOMEM, "JWT: out of memory");
  free(sig);
  free(sb);
  free(input);
  return jwt;
}

/* ---- one request ---- */

typedef struct token_req {
  const char *method, *url, *body, *extra_header;
  const char *what; /* "service account ... token URI https://..." for messages */
  double connect_timeout;
} token_req;

static rw_error *do_request(const rw_auth_src *s, rw_ctx *ctx, const token_req *t, rw_http_response *res) {
  rw_http_config hc = {.connect_timeout = t->connect_timeout, .max_body = 64 * 1024, .ca_file = s->ca_file};
  rw_error *e = NULL;
  rw_http *h = rw_http_new(&hc, &e);
  if (!h) return e;
  const char *lines[] = {RW_USER_AGENT_LINE, RW_API_CLIENT_LINE,
                         t->body ? "Content-Type: application/x-www-form-urlencoded" : t->extra_header,
                         t->body ? t->extra_header : NULL, NULL};
  struct iovec iov = {(void *)t->body, t->body ? strlen(t->body) : 0};
  rw_http_request r = {.method = t->method, .url = t->url, .headers = lines, .iov = t->body ? &iov : NULL,
                       .iovcnt = t->body ? 1 : 0, .len = iov.iov_len, .stall_timeout = 10};
  e = rw_http_do(h, ctx, &r, res);
  rw_http_free(h);
  /* http's messages name the URL (no secret: bodies are never quoted). */
  if (e) return rw_err_wrap(rw_error_code(e), e, "%s: %s", t->what, rw_error_message(e));
  return NULL;
}

/* The OAuth error of a refusal ("invalid_grant: Invalid JWT Signature."), cut short. */
static void oauth_error(const rw_http_response *res, char *out, size_t n) {
  json_error_t je;
  json_t *j = res->body ? json_loadb(res->body, res->body_len, 0, &je) : NULL;
  json_t *err = json_object_get(j, "error");
  const char *code = json_string_value(err);
  if (!code) code = json_string_value(json_object_get(err, "status"));
  const char *desc = json_string_value(json_object_get(j, "error_description"));
  if (!desc) desc = json_string_value(json_object_get(err, "message"));
  snprintf(out, n, "%.80s%s%.200s", code ? code : "(no OAuth error)", desc ? ": " : "", desc ? desc : "");
  json_decref(j);
}

static rw_error *judge(const token_req *t, const rw_http_response *res) {
  if (res->status == 200) return NULL;
  char why[300];
  oauth_error(res, why, sizeof why);
  if (rw_http_status_retryable(res->status))
    return rw_err_http(res->status, "%s: HTTP %d (%s); retried", t->what, res->status, why);
  return rw_error_make(RW_E_UNAUTHENTICATED, res->status, NULL, __FILE__, __LINE__, __func__,
                       "%s: the token request was refused: HTTP %d (%s)", t->what, res->status, why);
}

static bool token_chars_ok(const char *tok) {
  for (const unsigned char *p = (const unsigned char *)tok; *p; p++)
    if (*p <= ' ' || *p >= 127) return false;
  return true;
}

static rw_error *parse_token(const token_req *t, const rw_http_response *res, char *tok, size_t n,
                             double *expires_in) {
  json_error_t je;
  json_t *j = res->body ? json_loadb(res->body, res->body_len, 0, &je) : NULL;
  const char *at = json_string_value(json_object_get(j, "access_token"));
  json_t *ei = json_object_get(j, "expires_in");
  rw_error *e = NULL;
  if (!at || !*at || strlen(at) >= n || !token_chars_ok(at))
    e = rw_err(RW_E_PROTOCOL, "%s: the reply has no usable access_token (a printable string of at most "
               "%zu bytes)", t->what, n - 1);
  else if (ei && !json_is_number(ei))
    e = rw_err(RW_E_PROTOCOL, "%s: the reply's expires_in is not a number", t->what);
  if (!e) {
    memcpy(tok, at, strlen(at) + 1);
    *expires_in = ei ? json_number_value(ei) : 3600;
    if (*expires_in <= 0) *expires_in = 1;
  }
  json_decref(j);
  return e;
}

static rw_error *request_token(const rw_auth_src *s, rw_ctx *ctx, const token_req *t, char *tok, size_t n,
                               double *expires_in) {
  rw_http_response res;
  rw_error *e = do_request(s, ctx, t, &res);
  if (!e) e = judge(t, &res);
  if (!e) e = parse_token(t, &res, tok, n, expires_in);
  rw_http_response_clear(&res);
  return e;
}

/* ---- the grants ---- */

static char *form(const char *const *kv) {
  char *out = strdup(""), *next = NULL;
  for (size_t i = 0; out && kv[i]; i += 2) {
    char *v = rw_http_escape(kv[i + 1]);
    int k = v ? asprintf(&next, "%s%s%s=%s", out, i ? "&" : "", kv[i], v) : -1;
    free_secret(v);
    free_secret(out);
    out = k < 0 ? NULL : next;
  }
  return out;
}

static char *grant_body(const rw_auth_src *s, rw_error **err) {
  char *body = NULL;
  if (s->type == RW_SRC_SERVICE_ACCOUNT) {
    char *jwt = rw_auth_jwt(s, rw_real_now(), err);
    if (!jwt) return NULL;
    const char *kv[] = {"grant_type", "urn:ietf:params:oauth:grant-type:jwt-bearer", "assertion", jwt, NULL};
    body = form(kv);
    free_secret(jwt);
  } else {
    const char *kv[] = {"grant_type", "refresh_token", "client_id", s->client_id, "client_secret",
                        s->client_secret, "refresh_token", s->refresh_token, NULL};
    body = form(kv);
  }
  if (!body) *err = rw_err(RW_E_NOMEM, "token request: out of memory");
  return body;
}

static rw_error *fetch_once(const rw_auth_src *s, rw_ctx *ctx, char *tok, size_t n, double *expires_in) {
  char what[1100];
  if (s->type == RW_SRC_METADATA) {
    char *url = NULL;
    if (asprintf(&url, "http://%s/computeMetadata/v1/instance/service-accounts/default/token",
                 s->meta_host) < 0)
      return rw_err(RW_E_NOMEM, "metadata: out of memory");
    snprintf(what, sizeof what, "%s: GET %.400s", s->desc, url);
    token_req t = {.method = "GET", .url = url, .extra_header = "Metadata-Flavor: Google", .what = what,
                   .connect_timeout = 2};
    rw_error *e = request_token(s, ctx, &t, tok, n, expires_in);
    free(url);
    return e;
  }
  rw_error *e = NULL;
  char *body = grant_body(s, &e);
  if (!body) return e;
  snprintf(what, sizeof what, "%s: token URI %.400s", s->desc, s->token_uri);
  token_req t = {.method = "POST", .url = s->token_uri, .body = body, .what = what, .connect_timeout = 5};
  e = request_token(s, ctx, &t, tok, n, expires_in);
  free_secret(body);
  return e;
}

rw_error *rw_auth_src_fetch(rw_auth_src *s, rw_ctx *ctx, char *tok, size_t n, double *expires_in) {
  rw_backoff_config bc = rw_backoff_defaults();
  bc.min_wait = 0.1;
  bc.max_wait = 2;
  bc.total_wait = s->total_wait;
  rw_backoff b;
  rw_backoff_init(&b, &bc);
  for (;;) {
    rw_error *e = fetch_once(s, ctx, tok, n, expires_in);
    if (!e || !rw_error_retryable(e)) return e;
    rw_error *w = rw_backoff_wait(&b, ctx);
    if (!w) {
      rw_error_unref(e);
      continue;
    }
    if (!rw_error_is(w, RW_E_RETRY_BUDGET)) {
      rw_error_unref(e);
      return w;
    }
    rw_error_unref(w);
    return rw_err_wrap(rw_error_code(e), e, "%s (retries used fetch_total_wait %.3g s)", rw_error_message(e),
                       s->total_wait);
  }
}

/* ---- the ADC chain ---- */

static void tried(char *buf, size_t n, const char *fmt, const char *a, const char *b) {
  size_t len = strlen(buf);
  if (len) snprintf(buf + len, n - len, "; ");
  len = strlen(buf);
  snprintf(buf + len, n - len, fmt, a, b);
}

/* A quick GET of the metadata root: true when it answers as the metadata server. */
static bool probe_metadata(const rw_auth_src *s, rw_ctx *ctx, char *why, size_t n) {
  char *url = NULL;
  if (asprintf(&url, "http://%s/", s->meta_host) < 0) return false;
  rw_ctx *pc = rw_ctx_with_timeout(ctx, s->probe_timeout);
  rw_http_config hc = {.connect_timeout = s->probe_timeout, .max_body = 64 * 1024};
  rw_error *e = NULL;
  rw_http *h = pc ? rw_http_new(&hc, &e) : NULL;
  const char *lines[] = {"Metadata-Flavor: Google", RW_USER_AGENT_LINE, NULL};
  rw_http_request r = {.method = "GET", .url = url, .headers = lines, .stall_timeout = s->probe_timeout};
  rw_http_response res;
  memset(&res, 0, sizeof res);
  if (h) e = rw_http_do(h, pc, &r, &res);
  const char *flavor = e ? NULL : rw_http_response_header(&res, "Metadata-Flavor");
  bool ok = flavor && strcmp(flavor, "Google") == 0;
  snprintf(why, n, "%s", e ? rw_error_code(e) : ok ? "answered" : "answered without Metadata-Flavor: Google");
  rw_error_unref(e);
  rw_http_response_clear(&res);
  rw_http_free(h);
  rw_ctx_unref(pc);
  free(url);
  return ok;
}

static bool gcloud_path(char *out, size_t n) {
  const char *dir = getenv("CLOUDSDK_CONFIG"), *home = getenv("HOME");
  int k = dir && *dir ? snprintf(out, n, "%s/application_default_credentials.json", dir)
          : home && *home ? snprintf(out, n, "%s/.config/gcloud/application_default_credentials.json", home)
                          : -1;
  return k > 0 && (size_t)k < n;
}

/* Back to an unresolved source, keeping its settings. */
static void unresolve(rw_auth_src *s) {
  rw_auth_src keep = {.ca_file = s->ca_file, .total_wait = s->total_wait, .probe_timeout = s->probe_timeout};
  s->ca_file = NULL;
  rw_auth_src_clear(s);
  *s = keep;
  snprintf(s->desc, sizeof s->desc, "application default credentials");
}

rw_error *rw_auth_src_resolve_default(rw_auth_src *s, rw_ctx *ctx) {
  char list[1200] = "", path[1024], why[120];
  unresolve(s);
  const char *env = getenv("GOOGLE_APPLICATION_CREDENTIALS");
  if (env && *env) return rw_auth_src_load_file(s, env, "GOOGLE_APPLICATION_CREDENTIALS");
  tried(list, sizeof list, "GOOGLE_APPLICATION_CREDENTIALS (unset)%s%s", "", "");
  if (gcloud_path(path, sizeof path)) {
    if (access(path, F_OK) == 0) return rw_auth_src_load_file(s, path, "gcloud credentials file");
    tried(list, sizeof list, "gcloud file %.400s (%s)", path, "absent");
  }
  rw_error *e = rw_auth_src_metadata(s);
  if (e) return e;
  if (probe_metadata(s, ctx, why, sizeof why)) return NULL;
  if ((e = rw_ctx_err(ctx))) return e;
  tried(list, sizeof list, "metadata server %.200s (%s)", s->meta_host, why);
  unresolve(s);
  return rw_err(RW_E_NO_CREDENTIALS, "no Google credentials found; tried: %s", list);
}
