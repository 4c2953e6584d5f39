/* The fake's credentials side (issue 11): an OAuth token endpoint, a GCE
 * metadata server, and a mode in which storage requests need a bearer token
 * the fake minted and that has not expired.
 *
 *   POST /token   grant_type=urn:ietf:params:oauth:grant-type:jwt-bearer&assertion=JWT
 *                 (RS256, verified with the configured public key; aud must be
 *                 <url>/token, iat/exp current and at most an hour apart, scope
 *                 a storage or cloud-platform scope), or
 *                 grant_type=refresh_token&client_id=&client_secret=&refresh_token=
 *                 (refresh_token must match the configured one, when set).
 *   GET /computeMetadata/v1/instance/service-accounts/default/token  and  GET /
 *                 need "Metadata-Flavor: Google" and answer with it.
 * Tokens live token_lifetime seconds. With a public key set, every other
 * request (but /retry_test) needs "Authorization: Bearer <live token>", else
 * 401. */
#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/clock.h"
#include "testbed/fg_internal.h"

#define FG_MAX_TOKENS 4096
#define JWT_GRANT "urn:ietf:params:oauth:grant-type:jwt-bearer"

typedef struct fg_token {
  char value[48];
  double expires; /* monotonic */
} fg_token;

struct fg_auth {
  pthread_mutex_t mu;
  EVP_PKEY *pub;        /* NULL: no JWT grant, no required tokens */
  char *refresh_token;  /* NULL: any non-empty one */
  double lifetime, delay;
  fg_token *tokens;     /* ring of the last FG_MAX_TOKENS */
  size_t ntokens, next;
  uint64_t token_requests, metadata_requests, unauthorized;
  bool reject_all;
};

bool fg_auth_init(rw_fakegcs *s, const rw_fakegcs_config *cfg, rw_error **err) {
  fg_auth *a = calloc(1, sizeof *a);
  if (!a || !(a->tokens = calloc(FG_MAX_TOKENS, sizeof *a->tokens))) {
    free(a);
    *err = rw_err(RW_E_NOMEM, "fakegcs: out of memory");
    return false;
  }
  pthread_mutex_init(&a->mu, NULL);
  a->lifetime = cfg->auth_token_lifetime > 0 ? cfg->auth_token_lifetime : 3600;
  a->delay = cfg->auth_token_delay > 0 ? cfg->auth_token_delay : 0;
  s->auth = a;
  if (cfg->auth_refresh_token && !(a->refresh_token = strdup(cfg->auth_refresh_token))) {
    *err = rw_err(RW_E_NOMEM, "fakegcs: out of memory");
    return false;
  }
  if (!cfg->auth_public_key) return true;
  BIO *bio = BIO_new_mem_buf(cfg->auth_public_key, -1);
  a->pub = bio ? PEM_read_bio_PUBKEY(bio, NULL, NULL, NULL) : NULL;
  BIO_free(bio);
  ERR_clear_error();
  if (!a->pub) *err = rw_err(RW_E_INVALID, "fakegcs: auth public_key is not a PEM public key");
  return a->pub != NULL;
}

void fg_auth_destroy(rw_fakegcs *s) {
  fg_auth *a = s->auth;
  if (!a) return;
  EVP_PKEY_free(a->pub);
  free(a->refresh_token);
  free(a->tokens);
  pthread_mutex_destroy(&a->mu);
  free(a);
  s->auth = NULL;
}

/* ---- tokens ---- */

static void mint(fg_auth *a, char *out, size_t n) {
  char hex[33];
  fg_random_hex(hex, 16);
  pthread_mutex_lock(&a->mu);
  fg_token *t = &a->tokens[a->next];
  snprintf(t->value, sizeof t->value, "ya29.fake-%s", hex);
  t->expires = rw_mono_now() + a->lifetime;
  a->next = (a->next + 1) % FG_MAX_TOKENS;
  if (a->ntokens < FG_MAX_TOKENS) a->ntokens++;
  snprintf(out, n, "%s", t->value);
  pthread_mutex_unlock(&a->mu);
}

/* NULL when the token is live, else why not. */
static const char *token_problem(fg_auth *a, const char *tok) {
  const char *why = "the token was not issued by this server";
  pthread_mutex_lock(&a->mu);
  for (size_t i = 0; i < a->ntokens; i++)
    if (strcmp(a->tokens[i].value, tok) == 0) {
      why = rw_mono_now() >= a->tokens[i].expires ? "the token expired" : NULL;
      break;
    }
  if (a->reject_all) why = "every token is refused (reject_tokens)";
  if (why) a->unauthorized++;
  pthread_mutex_unlock(&a->mu);
  return why;
}

static enum MHD_Result reply_token(rw_fakegcs *s, fg_req *r) {
  char tok[64];
  if (s->auth->delay > 0) fg_sleep_unless_stopping(s, s->auth->delay);
  mint(s->auth, tok, sizeof tok);
  return fg_reply_json(s, r, 200, json_pack("{s:s, s:I, s:s}", "access_token", tok, "expires_in",
                                            (json_int_t)s->auth->lifetime, "token_type", "Bearer"));
}

static enum MHD_Result oauth_error(rw_fakegcs *s, fg_req *r, int status, const char *code, const char *desc) {
  return fg_reply_json(s, r, status, json_pack("{s:s, s:s}", "error", code, "error_description", desc));
}

/* ---- forms and JWTs ---- */

static char *url_decode(const char *p, size_t n) {
  char *out = malloc(n + 1), *o = out;
  if (!out) return NULL;
  for (size_t i = 0; i < n; i++) {
    if (p[i] == '+') *o++ = ' ';
    else if (p[i] == '%' && i + 2 < n && sscanf(p + i + 1, "%2hhx", (unsigned char *)o) == 1) o++, i += 2;
    else *o++ = p[i];
  }
  *o = 0;
  return out;
}

/* The value of key in a form body (malloc'd), NULL when absent. */
static char *form_value(const char *body, size_t len, const char *key) {
  size_t k = strlen(key);
  const char *p = body, *end = body + len;
  while (p < end) {
    const char *amp = memchr(p, '&', (size_t)(end - p));
    const char *stop = amp ? amp : end;
    if ((size_t)(stop - p) > k && memcmp(p, key, k) == 0 && p[k] == '=')
      return url_decode(p + k + 1, (size_t)(stop - p - k - 1));
    p = stop + 1;
  }
  return NULL;
}

static unsigned char *b64url_decode(const char *s, size_t n, size_t *out_len) {
  size_t padded = (n + 3) / 4 * 4;
  char *t = malloc(padded + 1);
  unsigned char *out = malloc(padded / 4 * 3 + 1);
  if (!t || !out) goto fail;
  for (size_t i = 0; i < n; i++) t[i] = s[i] == '-' ? '+' : s[i] == '_' ? '/' : s[i];
  for (size_t i = n; i < padded; i++) t[i] = '=';
  t[padded] = 0;
  int len = EVP_DecodeBlock(out, (unsigned char *)t, (int)padded);
  if (len < 0) goto fail;
  *out_len = (size_t)len - (padded - n);
  out[*out_len] = 0;
  free(t);
  return out;
fail:
  free(t);
  free(out);
  return NULL;
}

static json_t *b64_json(const char *s, size_t n) {
  size_t len = 0;
  unsigned char *raw = b64url_decode(s, n, &len);
  json_error_t je;
  json_t *j = raw ? json_loadb((const char *)raw, len, 0, &je) : NULL;
  free(raw);
  return j;
}

static bool verify_sig(EVP_PKEY *pub, const char *input, size_t in_len, const char *sig_b64, size_t n) {
  size_t sig_len = 0;
  unsigned char *sig = b64url_decode(sig_b64, n, &sig_len);
  EVP_MD_CTX *md = sig ? EVP_MD_CTX_new() : NULL;
  bool ok = md && EVP_DigestVerifyInit(md, NULL, EVP_sha256(), NULL, pub) == 1 &&
            EVP_DigestVerify(md, sig, sig_len, (const unsigned char *)input, in_len) == 1;
  EVP_MD_CTX_free(md);
  free(sig);
  ERR_clear_error();
  return ok;
}

static const char *claims_problem(rw_fakegcs *s, json_t *c) {
  char aud[160];
  snprintf(aud, sizeof aud, "%s/token", s->url);
  const char *got_aud = json_string_value(json_object_get(c, "aud"));
  const char *scope = json_string_value(json_object_get(c, "scope"));
  json_t *iat = json_object_get(c, "iat"), *exp = json_object_get(c, "exp");
  double now = rw_real_now();
  if (!got_aud || strcmp(got_aud, aud) != 0) return "aud is not this token URI";
  if (!json_string_value(json_object_get(c, "iss"))) return "no iss";
  if (!scope || (!strstr(scope, "devstorage") && !strstr(scope, "cloud-platform"))) return "no storage scope";
  if (!json_is_integer(iat) || !json_is_integer(exp)) return "iat and exp must be integers";
  double i = (double)json_integer_value(iat), e = (double)json_integer_value(exp);
  if (i > now + 60) return "iat is in the future";
  if (e <= now) return "the JWT expired";
  if (e - i > 3600 || e <= i) return "exp must be after iat by at most an hour";
  return NULL;
}

/* NULL when the JWT is good, else why not (no part of it is echoed). */
static const char *jwt_problem(rw_fakegcs *s, const char *jwt) {
  const char *d1 = strchr(jwt, '.'), *d2 = d1 ? strchr(d1 + 1, '.') : NULL;
  if (!d2 || strchr(d2 + 1, '.')) return "not a JWT (header.claims.signature)";
  json_t *h = b64_json(jwt, (size_t)(d1 - jwt));
  json_t *c = b64_json(d1 + 1, (size_t)(d2 - d1 - 1));
  const char *why = NULL;
  const char *alg = json_string_value(json_object_get(h, "alg"));
  if (!h || !c) why = "the header or claims are not base64url JSON";
  else if (!alg || strcmp(alg, "RS256") != 0) why = "alg must be RS256";
  else if (!verify_sig(s->auth->pub, jwt, (size_t)(d2 - jwt), d2 + 1, strlen(d2 + 1)))
    why = "Invalid JWT Signature.";
  else why = claims_problem(s, c);
  json_decref(h);
  json_decref(c);
  return why;
}

/* ---- handlers ---- */

static enum MHD_Result jwt_grant(rw_fakegcs *s, fg_req *r) {
  char *jwt = form_value(r->body, r->body_len, "assertion");
  const char *why = !s->auth->pub ? "this server has no public key (start it with auth.public_key)"
                    : !jwt        ? "no assertion"
                                  : jwt_problem(s, jwt);
  free(jwt);
  if (why) return oauth_error(s, r, 400, "invalid_grant", why);
  return reply_token(s, r);
}

static enum MHD_Result refresh_grant(rw_fakegcs *s, fg_req *r) {
  char *rt = form_value(r->body, r->body_len, "refresh_token");
  char *id = form_value(r->body, r->body_len, "client_id");
  char *secret = form_value(r->body, r->body_len, "client_secret");
  bool ok = rt && *rt && id && *id && secret && *secret &&
            (!s->auth->refresh_token || strcmp(rt, s->auth->refresh_token) == 0);
  free(rt);
  free(id);
  free(secret);
  if (!ok) return oauth_error(s, r, 400, "invalid_grant", "Bad Request");
  return reply_token(s, r);
}

enum MHD_Result fg_h_auth_token(rw_fakegcs *s, fg_req *r, const char *data, size_t *n) {
  if (!fg_collect(r, data, n) || !r->headers_seen) return MHD_YES;
  if (r->body_too_big) return fg_reply_error(s, r, 413, "body too large");
  pthread_mutex_lock(&s->auth->mu);
  s->auth->token_requests++;
  pthread_mutex_unlock(&s->auth->mu);
  if (strcmp(r->method, "POST") != 0) return fg_reply_error(s, r, 405, "POST /token only");
  char *grant = r->body ? form_value(r->body, r->body_len, "grant_type") : NULL;
  enum MHD_Result res;
  if (grant && strcmp(grant, JWT_GRANT) == 0) res = jwt_grant(s, r);
  else if (grant && strcmp(grant, "refresh_token") == 0) res = refresh_grant(s, r);
  else res = oauth_error(s, r, 400, "unsupported_grant_type", "grant_type is not supported");
  free(grant);
  return res;
}

static enum MHD_Result metadata(rw_fakegcs *s, fg_req *r) {
  const char *flavor = fg_header(r, "Metadata-Flavor");
  if (!flavor || strcmp(flavor, "Google") != 0)
    return fg_reply_error(s, r, 403, "Missing Metadata-Flavor:Google header.");
  if (strcmp(r->path, "/") == 0 || strcmp(r->path, "/computeMetadata/v1/") == 0) {
    struct MHD_Response *resp = MHD_create_response_from_buffer(0, (void *)"", MHD_RESPMEM_PERSISTENT);
    if (resp) MHD_add_response_header(resp, "Metadata-Flavor", "Google");
    return fg_queue(s, r, 200, resp);
  }
  if (strcmp(r->path, "/computeMetadata/v1/instance/service-accounts/default/token") != 0)
    return fg_reply_error(s, r, 404, "no such metadata: %s", r->path);
  pthread_mutex_lock(&s->auth->mu);
  s->auth->metadata_requests++;
  pthread_mutex_unlock(&s->auth->mu);
  return reply_token(s, r);
}

static bool needs_bearer(const fg_req *r) {
  return strncmp(r->path, "/retry_test", 11) != 0;
}

bool fg_auth_route(rw_fakegcs *s, fg_req *r, enum MHD_Result *res) {
  if (strcmp(r->path, "/token") == 0) {
    r->handler = fg_h_auth_token;
    r->body_max = 64 * 1024;
    *res = MHD_YES;
    return true;
  }
  if (strcmp(r->path, "/") == 0 || strncmp(r->path, "/computeMetadata/", 17) == 0) {
    *res = metadata(s, r);
    return true;
  }
  if (!s->auth->pub || !needs_bearer(r)) return false;
  const char *h = fg_header(r, "Authorization");
  const char *why = !h || strncmp(h, "Bearer ", 7) != 0 ? "no bearer token" : token_problem(s->auth, h + 7);
  if (!why) return false;
  *res = fg_reply_error(s, r, 401, "Invalid Credentials: %s", why);
  return true;
}

/* ---- the public side ---- */

void rw_fakegcs_auth_stats(rw_fakegcs *s, rw_fakegcs_auth_counts *out) {
  pthread_mutex_lock(&s->auth->mu);
  out->token_requests = s->auth->token_requests;
  out->metadata_requests = s->auth->metadata_requests;
  out->unauthorized = s->auth->unauthorized;
  pthread_mutex_unlock(&s->auth->mu);
}

void rw_fakegcs_auth_reject_all(rw_fakegcs *s, bool on) {
  pthread_mutex_lock(&s->auth->mu);
  s->auth->reject_all = on;
  pthread_mutex_unlock(&s->auth->mu);
}

void rw_fakegcs_auth_revoke(rw_fakegcs *s) {
  pthread_mutex_lock(&s->auth->mu);
  s->auth->ntokens = 0;
  s->auth->next = 0;
  pthread_mutex_unlock(&s->auth->mu);
}

void rw_fakegcs_auth_mint(rw_fakegcs *s, char *out, size_t n) { mint(s->auth, out, n); }
