/* Credentials (issue 11) against the fake GCS's token endpoint, metadata
 * server and required-token mode, on 127.0.0.1 only. The RSA key is made
 * here at test time. GCE_METADATA_HOST always points at the fake or at a
 * closed loopback port. */
#include <jansson.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rsa.h>
#include <pthread.h>
#include <stdatomic.h>
#include <sys/stat.h>

#include "core/clock.h"
#include "ctest.h"
#include "net/auth.h"
#include "net/auth_src.h"
#include "sinks/gcs.h"
#include "testbed/fakegcs.h"

static char *priv_pem, *pub_pem, *other_pem; /* other: a key the fake does not know */
static char dir[128];
static unsigned rng;

/* ---- captured log: every line, to grep for secrets ---- */
static pthread_mutex_t log_mu = PTHREAD_MUTEX_INITIALIZER;
static char *logbuf;
static size_t loglen;
static void log_hook(void *ud, rw_log_level lvl, const char *line) {
  pthread_mutex_lock(&log_mu);
  size_t n = strlen(line);
  char *b = realloc(logbuf, loglen + n + 2);
  if (b) {
    memcpy(b + loglen, line, n);
    loglen += n;
    b[loglen++] = '\n';
    b[loglen] = 0;
    logbuf = b;
  }
  pthread_mutex_unlock(&log_mu);
}
static bool log_has(const char *s) {
  pthread_mutex_lock(&log_mu);
  bool has = logbuf && strstr(logbuf, s);
  pthread_mutex_unlock(&log_mu);
  return has;
}

/* ---- keys and files ---- */

static char *pem_of(EVP_PKEY *k, bool priv) {
  BIO *b = BIO_new(BIO_s_mem());
  if (priv) PEM_write_bio_PrivateKey(b, k, NULL, NULL, 0, NULL, NULL);
  else PEM_write_bio_PUBKEY(b, k);
  char *p = NULL;
  long n = BIO_get_mem_data(b, &p);
  char *out = strndup(p, (size_t)n);
  BIO_free(b);
  return out;
}

static void make_keys(void) {
  EVP_PKEY *k = EVP_RSA_gen(2048), *o = EVP_RSA_gen(2048);
  priv_pem = pem_of(k, true);
  pub_pem = pem_of(k, false);
  other_pem = pem_of(o, true);
  EVP_PKEY_free(k);
  EVP_PKEY_free(o);
}

/* A distinctive line of the private key (its 5th base64 line). */
static char key_line[80];
static void pick_key_line(void) {
  const char *p = priv_pem;
  for (int i = 0; i < 5 && p; i++) p = strchr(p, '\n'), p = p ? p + 1 : NULL;
  snprintf(key_line, sizeof key_line, "%.40s", p ? p : "");
}

static char *write_file(const char *name, const char *text) {
  char *path = NULL;
  if (asprintf(&path, "%s/%s", dir, name) < 0) return NULL;
  FILE *f = fopen(path, "w");
  fputs(text, f);
  fclose(f);
  return path;
}

static char *sa_file(const char *name, const char *token_uri, const char *pem, bool with_key) {
  json_t *j = json_pack("{s:s, s:s, s:s, s:s}", "type", "service_account", "client_email",
                        "writer@test.iam.gserviceaccount.com", "private_key_id", "kid-1", "token_uri", token_uri);
  if (with_key) json_object_set_new(j, "private_key", json_string(pem));
  char *text = json_dumps(j, JSON_INDENT(2));
  json_decref(j);
  char *p = write_file(name, text);
  free(text);
  return p;
}

static rw_fakegcs *start_fake_slow(double lifetime, const char *refresh, double delay) {
  const char *buckets[] = {"b", NULL};
  rw_fakegcs_config c = {.buckets = buckets, .auth_public_key = pub_pem, .auth_token_lifetime = lifetime,
                         .auth_refresh_token = refresh, .auth_token_delay = delay};
  rw_error *e = NULL;
  rw_fakegcs *s = rw_fakegcs_start(&c, &e);
  CHECK(s != NULL);
  rw_error_unref(e);
  return s;
}

static rw_fakegcs *start_fake(double lifetime, const char *refresh) {
  return start_fake_slow(lifetime, refresh, 0);
}

static char *token_uri(rw_fakegcs *s) {
  char *u = NULL;
  if (asprintf(&u, "%s/token", rw_fakegcs_url(s)) < 0) return NULL;
  return u;
}

static uint64_t token_requests(rw_fakegcs *s) {
  rw_fakegcs_auth_counts c;
  rw_fakegcs_auth_stats(s, &c);
  return c.token_requests;
}

static rw_cred *file_cred(const char *path, double total_wait, rw_error **e) {
  rw_cred_options o = {.kind = RW_CRED_FILE, .path = path, .fetch_total_wait = total_wait};
  *e = NULL;
  return rw_cred_new(&o, e);
}

/* ---- an upload through the sink ---- */

static rw_error *upload(rw_fakegcs *s, rw_cred *cred, const char *token, const char *name, size_t n,
                        bool revoke_midway) {
  unsigned char *data = malloc(n);
  for (size_t i = 0; i < n; i++) data[i] = (unsigned char)(rand_r(&rng) >> 5);
  rw_gcs_config c = {.bucket = "b", .object = name, .endpoint = rw_fakegcs_url(s), .cred = cred,
                     .token = token};
  rw_error *e = NULL;
  rw_sink *sink = rw_gcs_sink_new(&c, &e);
  rw_ctx *ctx = rw_ctx_with_timeout(NULL, 30);
  size_t half = 256 * 1024;
  rw_sink_result res = {0};
  if (sink) e = sink->ops->begin(sink, ctx);
  if (!e) {
    struct iovec iov = {data, half};
    rw_sink_put p = {.offset = 0, .iov = &iov, .iovcnt = 1, .len = half};
    e = sink->ops->put(sink, ctx, &p, &res);
  }
  if (!e && revoke_midway) rw_fakegcs_auth_revoke(s);
  if (!e) {
    rw_sink_result_clear(&res);
    struct iovec iov = {data + half, n - half};
    rw_sink_put p = {.offset = half, .iov = &iov, .iovcnt = 1, .len = n - half, .final = true};
    e = sink->ops->put(sink, ctx, &p, &res);
  }
  if (!e) {
    rw_fakegcs_object o;
    CHECK(rw_fakegcs_object_get(s, "b", name, &o));
    CHECK_EQ_INT(o.size, n);
    CHECK(o.data && memcmp(o.data, data, n) == 0);
    rw_fakegcs_object_free(&o);
  }
  rw_sink_result_clear(&res);
  rw_sink_destroy(sink);
  rw_ctx_unref(ctx);
  free(data);
  return e;
}

/* ---- tests ---- */

static void test_service_account_upload(void) {
  rw_fakegcs *s = start_fake(0, NULL);
  char *uri = token_uri(s), *path = sa_file("sa.json", uri, priv_pem, true);
  rw_error *e;
  rw_cred *c = file_cred(path, 5, &e);
  CHECK(c && !e);
  CHECK(strstr(rw_cred_describe(c), "writer@test.iam.gserviceaccount.com") != NULL);
  CHECK(strstr(rw_cred_describe(c), path) != NULL);
  e = upload(s, c, NULL, "sa-object", 600 * 1024, false);
  CHECK(e == NULL);
  rw_error_unref(e);
  CHECK_EQ_INT(token_requests(s), 1);
  CHECK_EQ_INT(rw_cred_fetches(c), 1);
  /* Shared per process: the same file gives the same credential. */
  rw_error *e2;
  rw_cred *c2 = file_cred(path, 5, &e2);
  CHECK(c2 == c);
  rw_cred_unref(c2);
  rw_cred_unref(c);
  /* Anonymous to a fake that needs tokens: the server's 401 (http.401), not retried. */
  e = upload(s, NULL, NULL, "anon", 300 * 1024, false);
  CHECK(e && rw_error_status(e) == 401 && !rw_error_retryable(e));
  rw_error_unref(e);
  /* A token that is not the fake's: auth.unauthenticated (it cannot be refreshed). */
  e = upload(s, NULL, "not-a-minted-token", "static", 300 * 1024, false);
  CHECK(e && rw_error_is(e, RW_E_UNAUTHENTICATED) && !rw_error_retryable(e));
  CHECK(e && !strstr(rw_error_message(e), "not-a-minted-token"));
  rw_error_unref(e);
  rw_fakegcs_stop(s);
  free(uri);
  free(path);
}

static void test_refresh_ahead_of_expiry(void) {
  rw_fakegcs *s = start_fake(2, NULL);
  char *uri = token_uri(s), *path = sa_file("sa-short.json", uri, priv_pem, true);
  rw_error *e;
  rw_cred *c = file_cred(path, 5, &e);
  rw_ctx *ctx = rw_ctx_background();
  char t1[RW_TOKEN_MAX + 1], t2[RW_TOKEN_MAX + 1];
  CHECK(rw_cred_token(c, ctx, t1, sizeof t1) == NULL);
  CHECK(rw_cred_token(c, ctx, t2, sizeof t2) == NULL);
  CHECK(strcmp(t1, t2) == 0); /* cached */
  CHECK_EQ_INT(token_requests(s), 1);
  usleep(1600 * 1000); /* past 3/4 of its 2 s life, still valid */
  CHECK(rw_cred_token(c, ctx, t2, sizeof t2) == NULL);
  CHECK(strcmp(t1, t2) != 0); /* refreshed ahead of expiry */
  CHECK_EQ_INT(token_requests(s), 2);
  /* An upload that outlives several tokens. */
  for (int i = 0; i < 3; i++) {
    e = upload(s, c, NULL, "long", 512 * 1024 + 1000, false);
    CHECK(e == NULL);
    rw_error_unref(e);
    usleep(1100 * 1000);
  }
  rw_fakegcs_auth_counts counts;
  rw_fakegcs_auth_stats(s, &counts);
  CHECK_EQ_INT(counts.unauthorized, 0);
  rw_cred_unref(c);
  rw_ctx_unref(ctx);
  rw_fakegcs_stop(s);
  free(uri);
  free(path);
}

typedef struct racer {
  rw_cred *c;
  rw_ctx *ctx;
  atomic_int *ok;
  pthread_barrier_t *go;
  const char *old;       /* counts callers that got this token */
  atomic_int *got_old;
} racer;

static void *race(void *arg) {
  racer *r = arg;
  char tok[RW_TOKEN_MAX + 1];
  pthread_barrier_wait(r->go);
  rw_error *e = rw_cred_token(r->c, r->ctx, tok, sizeof tok);
  if (!e) atomic_fetch_add(r->ok, 1);
  if (!e && r->old && strcmp(tok, r->old) == 0) atomic_fetch_add(r->got_old, 1);
  rw_error_unref(e);
  return NULL;
}

/* Ahead of expiry one caller fetches while the others go on with the still
 * valid token: with a slow token endpoint, most racers get the old token at
 * once, and only one request is made. */
static void test_others_use_valid_token(void) {
  enum { N = 20 };
  rw_fakegcs *s = start_fake_slow(2, NULL, 0.4);
  char *uri = token_uri(s), *path = sa_file("sa-ahead.json", uri, priv_pem, true);
  rw_error *e;
  rw_cred *c = file_cred(path, 5, &e);
  rw_ctx *ctx = rw_ctx_with_timeout(NULL, 20);
  char t1[RW_TOKEN_MAX + 1];
  CHECK(rw_cred_token(c, ctx, t1, sizeof t1) == NULL);
  usleep(1600 * 1000); /* inside the last quarter of the token's 2 s */
  atomic_int ok = 0, got_old = 0;
  pthread_barrier_t go;
  pthread_barrier_init(&go, NULL, N);
  pthread_t th[N];
  racer r = {c, ctx, &ok, &go, t1, &got_old};
  for (int i = 0; i < N; i++) pthread_create(&th[i], NULL, race, &r);
  for (int i = 0; i < N; i++) pthread_join(th[i], NULL);
  pthread_barrier_destroy(&go);
  CHECK_EQ_INT(atomic_load(&ok), N);
  CHECK(atomic_load(&got_old) >= N / 2);
  CHECK_EQ_INT(token_requests(s), 2);
  rw_cred_unref(c);
  rw_ctx_unref(ctx);
  rw_fakegcs_stop(s);
  free(uri);
  free(path);
}

static void test_single_flight(void) {
  enum { N = 100 };
  rw_fakegcs *s = start_fake(0, NULL);
  char *uri = token_uri(s), *path = sa_file("sa-race.json", uri, priv_pem, true);
  rw_error *e;
  rw_cred *c = file_cred(path, 5, &e);
  rw_ctx *ctx = rw_ctx_with_timeout(NULL, 20);
  atomic_int ok = 0;
  pthread_barrier_t go;
  pthread_barrier_init(&go, NULL, N);
  pthread_t th[N];
  racer r = {c, ctx, &ok, &go, NULL, NULL};
  for (int i = 0; i < N; i++) pthread_create(&th[i], NULL, race, &r);
  for (int i = 0; i < N; i++) pthread_join(th[i], NULL);
  pthread_barrier_destroy(&go);
  CHECK_EQ_INT(atomic_load(&ok), N);
  CHECK_EQ_INT(token_requests(s), 1);
  rw_cred_unref(c);
  rw_ctx_unref(ctx);
  rw_fakegcs_stop(s);
  free(uri);
  free(path);
}

static void test_401_refreshes_once(void) {
  rw_fakegcs *s = start_fake(0, NULL);
  char *uri = token_uri(s), *path = sa_file("sa-401.json", uri, priv_pem, true);
  rw_error *e;
  rw_cred *c = file_cred(path, 5, &e);
  /* Tokens revoked between two chunks: one 401, one refresh, no failure. */
  e = upload(s, c, NULL, "revoked", 400 * 1024, true);
  CHECK(e == NULL);
  rw_error_unref(e);
  CHECK_EQ_INT(token_requests(s), 2);
  /* Every token refused: the refreshed one too -> auth.unauthenticated. */
  rw_fakegcs_auth_reject_all(s, true);
  rw_fakegcs_auth_counts before, after;
  rw_fakegcs_auth_stats(s, &before);
  e = upload(s, c, NULL, "refused", 300 * 1024, false);
  rw_fakegcs_auth_stats(s, &after);
  CHECK(e && rw_error_is(e, RW_E_UNAUTHENTICATED) && rw_error_status(e) == 401);
  CHECK(e && !rw_error_retryable(e));
  CHECK_EQ_INT(after.unauthorized - before.unauthorized, 2);
  CHECK_EQ_INT(after.token_requests - before.token_requests, 1);
  rw_error_unref(e);
  rw_cred_unref(c);
  rw_fakegcs_stop(s);
  free(uri);
  free(path);
}

static void test_authorized_user(void) {
  rw_fakegcs *s = start_fake(0, "1//refresh-SECRET-abc");
  char *uri = token_uri(s), *text = NULL;
  if (asprintf(&text, "{\"type\":\"authorized_user\",\"client_id\":\"cid\",\"client_secret\":"
                      "\"CLIENT-SECRET-xyz\",\"refresh_token\":\"%s\",\"token_uri\":\"%s\"}",
               "1//refresh-SECRET-abc", uri) < 0)
    return;
  char *path = write_file("user.json", text);
  rw_error *e;
  rw_cred *c = file_cred(path, 5, &e);
  e = upload(s, c, NULL, "user-object", 300 * 1024, false);
  CHECK(e == NULL);
  rw_error_unref(e);
  rw_cred_unref(c);
  /* A wrong refresh token: refused, clear, no secret in the message. */
  free(text);
  if (asprintf(&text, "{\"type\":\"authorized_user\",\"client_id\":\"cid\",\"client_secret\":"
                      "\"CLIENT-SECRET-xyz\",\"refresh_token\":\"WRONG-refresh-123\",\"token_uri\":\"%s\"}",
               uri) < 0)
    return;
  char *bad = write_file("user-bad.json", text);
  c = file_cred(bad, 5, &e);
  char tok[RW_TOKEN_MAX + 1];
  rw_ctx *ctx = rw_ctx_background();
  e = rw_cred_token(c, ctx, tok, sizeof tok);
  CHECK(e && rw_error_is(e, RW_E_UNAUTHENTICATED) && strstr(rw_error_message(e), uri));
  CHECK(e && !strstr(rw_error_message(e), "WRONG-refresh") && !strstr(rw_error_message(e), "CLIENT-SECRET"));
  rw_error_unref(e);
  rw_cred_unref(c);
  rw_ctx_unref(ctx);
  rw_fakegcs_stop(s);
  free(uri);
  free(text);
  free(path);
  free(bad);
}

static void test_metadata_and_chain(void) {
  rw_fakegcs *s = start_fake(0, NULL);
  const char *url = rw_fakegcs_url(s) + strlen("http://");
  char empty[200];
  snprintf(empty, sizeof empty, "%s/gcloud-empty", dir);
  mkdir(empty, 0700);
  setenv("CLOUDSDK_CONFIG", empty, 1);
  unsetenv("GOOGLE_APPLICATION_CREDENTIALS");
  setenv("GCE_METADATA_HOST", url, 1);
  rw_cred_forget_shared();
  rw_cred_options o = {.kind = RW_CRED_DEFAULT};
  rw_error *e = NULL;
  rw_cred *c = rw_cred_new(&o, &e);
  e = upload(s, c, NULL, "meta-object", 300 * 1024, false);
  CHECK(e == NULL);
  rw_error_unref(e);
  rw_fakegcs_auth_counts counts;
  rw_fakegcs_auth_stats(s, &counts);
  CHECK_EQ_INT(counts.metadata_requests, 1);
  rw_cred_unref(c);
  /* The chain prefers GOOGLE_APPLICATION_CREDENTIALS over the metadata server. */
  char *uri = token_uri(s), *path = sa_file("sa-env.json", uri, priv_pem, true);
  setenv("GOOGLE_APPLICATION_CREDENTIALS", path, 1);
  rw_cred_forget_shared();
  c = rw_cred_new(&o, &e);
  e = upload(s, c, NULL, "env-object", 300 * 1024, false);
  CHECK(e == NULL);
  rw_error_unref(e);
  CHECK_EQ_INT(token_requests(s), 1);
  rw_cred_unref(c);
  /* Then the gcloud file. */
  unsetenv("GOOGLE_APPLICATION_CREDENTIALS");
  char gpath[300];
  snprintf(gpath, sizeof gpath, "%s/application_default_credentials.json", empty);
  rename(path, gpath);
  rw_cred_forget_shared();
  c = rw_cred_new(&o, &e);
  e = upload(s, c, NULL, "gcloud-object", 300 * 1024, false);
  CHECK(e == NULL);
  rw_error_unref(e);
  CHECK_EQ_INT(token_requests(s), 2);
  rw_cred_unref(c);
  unlink(gpath);
  rw_fakegcs_stop(s);
  free(uri);
  free(path);
}

static void test_no_credentials(void) {
  char empty[200];
  snprintf(empty, sizeof empty, "%s/gcloud-none", dir);
  mkdir(empty, 0700);
  setenv("CLOUDSDK_CONFIG", empty, 1);
  unsetenv("GOOGLE_APPLICATION_CREDENTIALS");
  setenv("GCE_METADATA_HOST", "127.0.0.1:1", 1);
  rw_cred_forget_shared();
  rw_cred_options o = {.kind = RW_CRED_DEFAULT};
  rw_error *e = NULL;
  rw_cred *c = rw_cred_new(&o, &e);
  rw_ctx *ctx = rw_ctx_background();
  char tok[RW_TOKEN_MAX + 1];
  double t0 = rw_mono_now();
  e = rw_cred_token(c, ctx, tok, sizeof tok);
  CHECK(rw_mono_now() - t0 < 2); /* not a retry loop */
  CHECK(e && rw_error_is(e, RW_E_NO_CREDENTIALS) && !rw_error_retryable(e));
  const char *m = e ? rw_error_message(e) : "";
  CHECK(strstr(m, "GOOGLE_APPLICATION_CREDENTIALS") && strstr(m, empty) && strstr(m, "127.0.0.1:1"));
  rw_error_unref(e);
  rw_cred_unref(c);
  rw_ctx_unref(ctx);
}

/* Each bad file: a clear error naming the file and the rule, no secret. */
static void check_bad(const char *path, const char *want, const char *code) {
  rw_error *e;
  rw_cred *c = file_cred(path, 0.5, &e);
  CHECK(!c && e && rw_error_is(e, code));
  const char *m = e ? rw_error_message(e) : "";
  CHECK(strstr(m, path) && strstr(m, want));
  CHECK(!strstr(m, key_line));
  if (!(e && strstr(m, want))) fprintf(stderr, "  got: %s\n", m);
  rw_error_unref(e);
  rw_cred_unref(c);
}

static void test_bad_files(void) {
  char *p1 = write_file("malformed.json", "{\"type\": \"service_account\", \"private_key\": ");
  check_bad(p1, "not a JSON object", RW_E_BAD_CREDENTIALS);
  char *p2 = sa_file("nokey.json", "http://127.0.0.1:1/token", priv_pem, false);
  check_bad(p2, "'private_key'", RW_E_BAD_CREDENTIALS);
  /* The real key cut after 8 lines: holds key_line, which must not leak. */
  char cut[1024] = "";
  const char *end = priv_pem;
  for (int i = 0; i < 8 && end; i++) end = strchr(end, '\n'), end = end ? end + 1 : NULL;
  snprintf(cut, sizeof cut, "%.*s", end ? (int)(end - priv_pem) : 0, priv_pem);
  char *p3 = sa_file("badpem.json", "http://127.0.0.1:1/token", cut, true);
  check_bad(p3, "PEM RSA private key", RW_E_BAD_CREDENTIALS);
  char *p4 = write_file("notype.json", "{\"client_email\": \"x\"}");
  check_bad(p4, "'type'", RW_E_BAD_CREDENTIALS);
  char missing[200];
  snprintf(missing, sizeof missing, "%s/does-not-exist.json", dir);
  check_bad(missing, "cannot open", RW_E_BAD_CREDENTIALS);
  /* An unreachable token URI: retried within fetch_total_wait, then an error naming the URI. */
  char *p5 = sa_file("unreachable.json", "http://127.0.0.1:1/token", priv_pem, true);
  rw_error *e;
  rw_cred *c = file_cred(p5, 0.5, &e);
  rw_ctx *ctx = rw_ctx_background();
  char tok[RW_TOKEN_MAX + 1];
  e = rw_cred_token(c, ctx, tok, sizeof tok);
  CHECK(e && rw_error_is(e, RW_E_NET_REFUSED));
  CHECK(e && strstr(rw_error_message(e), "http://127.0.0.1:1/token") && strstr(rw_error_message(e), p5));
  CHECK(e && !strstr(rw_error_message(e), key_line));
  rw_error_unref(e);
  /* A cancelled context ends a fetch at once. */
  rw_ctx *dead = rw_ctx_with_cancel(NULL);
  rw_ctx_cancel(dead, NULL);
  e = rw_cred_token(c, dead, tok, sizeof tok);
  CHECK(e && rw_error_is(e, RW_E_CANCELED));
  rw_error_unref(e);
  rw_ctx_unref(dead);
  rw_cred_unref(c);
  rw_ctx_unref(ctx);
  free(p1);
  free(p2);
  free(p3);
  free(p4);
  free(p5);
}

static void test_wrong_key_refused(void) {
  rw_fakegcs *s = start_fake(0, NULL);
  char *uri = token_uri(s), *path = sa_file("sa-other.json", uri, other_pem, true);
  rw_error *e;
  rw_cred *c = file_cred(path, 5, &e);
  rw_ctx *ctx = rw_ctx_background();
  char tok[RW_TOKEN_MAX + 1];
  e = rw_cred_token(c, ctx, tok, sizeof tok);
  CHECK(e && rw_error_is(e, RW_E_UNAUTHENTICATED) && strstr(rw_error_message(e), "Invalid JWT Signature"));
  CHECK_EQ_INT(token_requests(s), 1); /* a refusal is not retried */
  rw_error_unref(e);
  rw_cred_unref(c);
  rw_ctx_unref(ctx);
  rw_fakegcs_stop(s);
  free(uri);
  free(path);
}

/* Nothing logged (at debug, through every test above) holds a secret. */
static void test_no_secret_logged(void) {
  CHECK(loglen > 0);
  CHECK(!log_has(key_line));
  CHECK(!log_has("ya29.fake-"));
  CHECK(!log_has("CLIENT-SECRET"));
  CHECK(!log_has("refresh-SECRET"));
  CHECK(!log_has("WRONG-refresh"));
}

int main(void) {
  rng = ct_seed();
  snprintf(dir, sizeof dir, "/tmp/rw_test_auth_%d", (int)getpid());
  mkdir(dir, 0700);
  setenv("GCE_METADATA_HOST", "127.0.0.1:1", 1);
  unsetenv("GOOGLE_APPLICATION_CREDENTIALS");
  setenv("RW_LOG_LEVEL", "debug", 1);
  rw_log_set_hook(log_hook, NULL);
  make_keys();
  pick_key_line();
  RUN(test_service_account_upload);
  RUN(test_refresh_ahead_of_expiry);
  RUN(test_single_flight);
  RUN(test_others_use_valid_token);
  RUN(test_401_refreshes_once);
  RUN(test_authorized_user);
  RUN(test_metadata_and_chain);
  RUN(test_no_credentials);
  RUN(test_bad_files);
  RUN(test_wrong_key_refused);
  RUN(test_no_secret_logged);
  rw_cred_forget_shared();
  rw_log_set_hook(NULL, NULL);
  free(logbuf);
  free(priv_pem);
  free(pub_pem);
  free(other_pem);
  char cmd[300];
  snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
  if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", dir);
  return ct_finish("test_auth");
}
