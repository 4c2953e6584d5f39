/* The GCS sink against a hostile server (tests/c/hostile.h): session URIs
 * off the endpoint's origin, replies that never come, trickle or never end,
 * lying Range headers and objects, and a server that rejects our checksum.
 * The sink's ops are called directly, without the writer. Every case runs
 * under a context of a few seconds, so code that hangs fails instead. */
#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>

#include "core/checksum.h"
#include "core/clock.h"
#include "ctest.h"
#include "sinks/gcs_read.h"
#include "hostile.h"
#include "sinks/gcs.h"

#define STALL 0.5
#define MARGIN 1.0 /* slack for a loaded machine */
#define TOKEN "tok-secret-42"

static unsigned rng_state;
static unsigned rnd(void) {
  rng_state = rng_state * 1103515245u + 12345u;
  return (rng_state >> 8) ^ (rng_state << 13);
}
static unsigned char *random_bytes(size_t n) {
  unsigned char *p = malloc(n ? n : 1);
  for (size_t i = 0; i < n; i++) p[i] = (unsigned char)(rnd() >> 3);
  return p;
}

static hs_server *server_new(void) {
  hs_server *s = malloc(sizeof *s);
  if (s && hs_start(s)) return s;
  free(s);
  CHECK(!"hostile server did not start");
  return NULL;
}

static void server_free(hs_server *s) {
  if (!s) return;
  hs_stop(s);
  free(s);
}

static rw_sink *sink_at(const char *endpoint, const char *session_uri, rw_error **e) {
  rw_gcs_config cfg = {.bucket = session_uri ? NULL : "bkt", .object = session_uri ? NULL : "dir/obj",
                       .endpoint = endpoint, .session_uri = session_uri, .token = TOKEN,
                       .connect_timeout = 2, .abort_timeout = 10};
  rw_sink *s = rw_gcs_sink_new(&cfg, e);
  if (s) s->stall_timeout = STALL;
  return s;
}

static rw_sink *sink_for(hs_server *h) {
  rw_error *e = NULL;
  rw_sink *s = sink_at(h->origin, NULL, &e);
  CHECK(s && !e);
  rw_error_unref(e);
  return s;
}

/* A sink with an open session on h (the POST answered with a same-origin Location). */
static rw_sink *sink_with_session(hs_server *h, rw_ctx *ctx) {
  rw_sink *s = sink_for(h);
  hs_answer(h, "HTTP/1.1 200 OK\r\nLocation: %s/upload/s?upload_id=u1\r\nContent-Length: 0\r\n\r\n",
            h->origin);
  rw_error *e = s->ops->begin(s, ctx);
  CHECK(e == NULL);
  rw_error_unref(e);
  return s;
}

static void show(const char *what, const rw_error *e, double took) {
  char text[768] = "(no error)";
  if (e) rw_error_format(e, text, sizeof text);
  fprintf(stderr, "   %s: %.3f s: %s\n", what, took, text);
}

static bool is(const rw_error *e, const char *code) { return e && strcmp(rw_error_code(e), code) == 0; }

/* One 256 KiB non-final chunk at 0. */
static rw_error *put_chunk(rw_sink *s, rw_ctx *ctx, rw_sink_result *r) {
  unsigned char *data = random_bytes(262144);
  struct iovec v = {data, 262144};
  rw_sink_put p = {.offset = 0, .iov = &v, .iovcnt = 1, .len = 262144, .stall_timeout = STALL};
  rw_error *e = s->ops->put(s, ctx, &p, r);
  free(data);
  return e;
}

/* ---- 1: session URIs must stay on the endpoint's origin ---- */

static void location_case(hs_server *h, hs_server *other, const char *location, const char *path) {
  rw_ctx *ctx = rw_ctx_with_timeout(NULL, 4);
  rw_sink *s = sink_for(h);
  int before = hs_nreqs(h);
  hs_answer(h, "HTTP/1.1 200 OK\r\nLocation: %s\r\nContent-Length: 0\r\n\r\n", location);
  rw_error *e = s->ops->begin(s, ctx);
  show(location, e, 0);
  CHECK(is(e, RW_E_PROTOCOL) && !rw_error_retryable(e));
  CHECK(strcmp(s->ops->session(s), "") == 0);
  rw_error_unref(e);
  /* Nothing may reach the foreign URI, whatever the caller does next. */
  rw_sink_result r = {0};
  e = put_chunk(s, ctx, &r);
  CHECK(e != NULL);
  rw_error_unref(e);
  rw_sink_result_clear(&r);
  e = s->ops->query(s, ctx, &r);
  CHECK(e != NULL);
  rw_error_unref(e);
  rw_sink_result_clear(&r);
  e = s->ops->abort(s, ctx);
  rw_error_unref(e);
  CHECK_EQ_INT(hs_nreqs(h) - before, 1); /* only the POST */
  hs_request post = hs_req(h, before);
  CHECK(strcmp(post.auth, "Bearer " TOKEN) == 0);
  if (other) CHECK_EQ_INT(hs_nconns(other), 0); /* not even a connection: no Authorization leaked */
  if (path) {
    char buf[64] = "";
    int fd = open(path, O_RDONLY);
    ssize_t n = fd >= 0 ? read(fd, buf, sizeof buf - 1) : -1;
    if (fd >= 0) close(fd);
    CHECK(n == 9 && strcmp(buf, "precious\n") == 0); /* untouched */
  }
  rw_sink_destroy(s);
  rw_ctx_unref(ctx);
}

static void test_location_off_origin(void) {
  hs_server *h = server_new(), *other = server_new();
  if (!h || !other) goto done;
  char path[] = "/tmp/rw_test_hostile_XXXXXX";
  int fd = mkstemp(path);
  CHECK(fd >= 0 && write(fd, "precious\n", 9) == 9);
  close(fd);
  char uri[512];
  snprintf(uri, sizeof uri, "file://%s", path);
  location_case(h, NULL, uri, path);
  snprintf(uri, sizeof uri, "ftp://127.0.0.1:%d/upload/s?upload_id=u1", other->port);
  location_case(h, other, uri, NULL);
  snprintf(uri, sizeof uri, "http://127.0.0.1:%d/upload/s?upload_id=u1", other->port);
  location_case(h, other, uri, NULL); /* another port */
  snprintf(uri, sizeof uri, "https://127.0.0.1:%d/upload/s?upload_id=u1", h->port);
  location_case(h, NULL, uri, NULL); /* another scheme */
  snprintf(uri, sizeof uri, "http://localhost:%d/upload/s?upload_id=u1", h->port);
  location_case(h, NULL, uri, NULL); /* another host name */
  location_case(h, NULL, "/upload/s?upload_id=u1", NULL); /* not absolute */
  unlink(path);
done:
  server_free(other);
  server_free(h);
}

/* The same origin written differently is the same origin. */
static void test_location_same_origin(void) {
  hs_server *h = server_new();
  if (!h) return;
  rw_ctx *ctx = rw_ctx_with_timeout(NULL, 4);
  rw_sink *s = sink_for(h);
  hs_answer(h, "HTTP/1.1 200 OK\r\nLocation: HTTP://127.0.0.1:%d/upload/s?upload_id=u2\r\nContent-Length: 0\r\n\r\n",
            h->port);
  CHECK(s->ops->begin(s, ctx) == NULL);
  hs_answer(h, "HTTP/1.1 308 Resume Incomplete\r\nRange: bytes=0-262143\r\nContent-Length: 0\r\n\r\n");
  rw_sink_result r = {0};
  rw_error *e = s->ops->query(s, ctx, &r);
  CHECK(e == NULL && r.persisted == 262144);
  rw_error_unref(e);
  hs_request q = hs_req(h, 1);
  CHECK(strcmp(q.method, "PUT") == 0 && strcmp(q.target, "/upload/s?upload_id=u2") == 0);
  CHECK(strcmp(q.auth, "Bearer " TOKEN) == 0);
  rw_sink_destroy(s);
  rw_ctx_unref(ctx);
  server_free(h);
}

/* The DELETE's answers: 499 (cancelled now), 404 and 410 (already gone) all
 * mean no session is left: success. Anything else is the server's failure. */
static void test_abort_statuses(void) {
  static const struct {
    int status;
    bool ok;
  } cases[] = {{499, true}, {404, true}, {410, true}, {204, true}, {200, true}, {403, false}, {503, false}};
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    hs_server *h = server_new();
    if (!h) return;
    rw_ctx *ctx = rw_ctx_with_timeout(NULL, 4);
    rw_sink *s = sink_for(h);
    hs_answer(h, "HTTP/1.1 200 OK\r\nLocation: http://127.0.0.1:%d/upload/s?upload_id=a\r\nContent-Length: 0\r\n\r\n",
              h->port);
    CHECK(s->ops->begin(s, ctx) == NULL);
    hs_answer(h, "HTTP/1.1 %d X\r\nContent-Length: 0\r\n\r\n", cases[i].status);
    rw_error *e = s->ops->abort(s, ctx);
    if (cases[i].ok != (e == NULL)) fprintf(stderr, "   DELETE answered %d: %s\n", cases[i].status, e ? rw_error_message(e) : "ok");
    CHECK(cases[i].ok == (e == NULL));
    CHECK_EQ_INT(hs_nreqs(h), 2);
    if (hs_nreqs(h) == 2) CHECK(strcmp(hs_req(h, 1).method, "DELETE") == 0);
    rw_error_unref(e);
    rw_sink_destroy(s);
    rw_ctx_unref(ctx);
    server_free(h);
  }
}

/* A resumed session URI is checked like a Location: before anything is sent. */
static void resume_case(hs_server *h, hs_server *other, const char *session_uri) {
  rw_ctx *ctx = rw_ctx_with_timeout(NULL, 4);
  rw_error *e = NULL;
  rw_sink *s = sink_at(h->origin, session_uri, &e);
  show(session_uri, e, 0);
  CHECK(s == NULL && is(e, RW_E_PROTOCOL) && !rw_error_retryable(e));
  rw_error_unref(e);
  if (s) { /* the old code: see what it does with it */
    rw_sink_result r = {0};
    rw_error_unref(s->ops->query(s, ctx, &r));
    rw_sink_result_clear(&r);
    rw_error_unref(s->ops->abort(s, ctx));
    rw_sink_destroy(s);
  }
  CHECK_EQ_INT(hs_nconns(other), 0);
  CHECK_EQ_INT(hs_nreqs(h), 0);
  rw_ctx_unref(ctx);
}

static void test_resume_foreign_session(void) {
  hs_server *h = server_new(), *other = server_new();
  if (!h || !other) goto done;
  char uri[256];
  snprintf(uri, sizeof uri, "http://127.0.0.1:%d/upload/s?upload_id=u1", other->port);
  resume_case(h, other, uri);
  snprintf(uri, sizeof uri, "ftp://127.0.0.1:%d/upload/s?upload_id=u1", other->port);
  resume_case(h, other, uri);
  resume_case(h, other, "file:///tmp/rw_test_hostile_resume");
  /* the endpoint's own origin is fine */
  snprintf(uri, sizeof uri, "%s/upload/s?upload_id=u3", h->origin);
  rw_error *e = NULL;
  rw_sink *s = sink_at(h->origin, uri, &e);
  CHECK(s && !e);
  rw_error_unref(e);
  rw_ctx *ctx = rw_ctx_with_timeout(NULL, 4);
  hs_answer(h, "HTTP/1.1 308 Resume Incomplete\r\nContent-Length: 0\r\n\r\n");
  rw_sink_result r = {0};
  CHECK(s && s->ops->query(s, ctx, &r) == NULL && r.persisted == 0);
  rw_sink_destroy(s);
  rw_ctx_unref(ctx);
done:
  server_free(other);
  server_free(h);
}

/* ---- 9: every request has a stall clock; replies are bounded ---- */

static bool count_body(void *ud, const char *p, size_t n) {
  (void)p;
  *(size_t *)ud += n;
  return true;
}

static void check_stall(const char *what, rw_error *e, double took) {
  show(what, e, took);
  CHECK(is(e, RW_E_STALL) && rw_error_retryable(e));
  CHECK(took >= STALL * 0.9 && took < STALL + MARGIN);
  rw_error_unref(e);
}

/* Each request on its own 4 s context, so one that hangs fails alone. */
static void blackholed(hs_server *h, rw_sink *s, int op, const char *what) {
  rw_ctx *ctx = rw_ctx_with_timeout(NULL, 4);
  hs_do(h, HS_SILENT);
  rw_sink_result r = {0};
  double t0 = rw_mono_now();
  rw_error *e = op == 0 ? s->ops->begin(s, ctx) : op == 1 ? s->ops->query(s, ctx, &r)
              : op == 2 ? s->ops->abort(s, ctx) : put_chunk(s, ctx, &r);
  check_stall(what, e, rw_mono_now() - t0);
  rw_sink_result_clear(&r);
  rw_ctx_unref(ctx);
}

static void test_blackholed_requests(void) {
  hs_server *h = server_new();
  if (!h) return;
  rw_sink *s = sink_for(h);
  blackholed(h, s, 0, "blackholed POST");
  rw_sink_destroy(s);
  rw_ctx *ctx = rw_ctx_with_timeout(NULL, 4);
  s = sink_with_session(h, ctx);
  rw_ctx_unref(ctx);
  blackholed(h, s, 1, "blackholed status query");
  blackholed(h, s, 2, "blackholed DELETE"); /* abort_timeout is 10 s: the stall clock must end it */
  blackholed(h, s, 3, "blackholed chunk PUT (had a stall clock before)");
  rw_sink_destroy(s);
  server_free(h);
}

/* The POST's reply trickles one byte every 20 ms (about 3 s in all). */
static void test_trickled_headers(void) {
  hs_server *h = server_new();
  if (!h) return;
  rw_ctx *ctx = rw_ctx_with_timeout(NULL, 6);
  rw_sink *s = sink_for(h);
  char raw[512];
  int n = snprintf(raw, sizeof raw,
                   "HTTP/1.1 200 OK\r\nX-Pad: %s\r\nLocation: %s/upload/s?upload_id=u1\r\n"
                   "Content-Length: 0\r\n\r\n",
                   "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", h->origin);
  hs_push(h, HS_TRICKLE, raw, (size_t)n, 0, 20, 0);
  double t0 = rw_mono_now();
  rw_error *e = s->ops->begin(s, ctx);
  check_stall("trickled POST reply head", e, rw_mono_now() - t0);
  rw_sink_destroy(s);
  rw_ctx_unref(ctx);
  server_free(h);
}

/* A final object whose body trickles (a valid object, padded: about 4 s). */
static void test_trickled_body(void) {
  hs_server *h = server_new();
  if (!h) return;
  rw_ctx *ctx = rw_ctx_with_timeout(NULL, 8);
  rw_sink *s = sink_with_session(h, ctx);
  char body[512], raw[1024];
  int bn = snprintf(body, sizeof body, "{\"bucket\":\"bkt\",\"name\":\"dir/obj\",\"size\":\"262144\"}%150s", "");
  int n = snprintf(raw, sizeof raw, "HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s", bn, body);
  hs_push(h, HS_TRICKLE, raw, (size_t)n, 0, 20, (size_t)(n - bn));
  rw_sink_result r = {0};
  double t0 = rw_mono_now();
  rw_error *e = put_chunk(s, ctx, &r);
  check_stall("trickled reply body", e, rw_mono_now() - t0);
  rw_sink_result_clear(&r);
  rw_sink_destroy(s);
  rw_ctx_unref(ctx);
  server_free(h);
}

/* A download whose body trickles one byte every 20 ms (50 B/s, for ever):
 * each byte must not restart the reply clock, or it never ends. */
static void test_trickled_download(void) {
  hs_server *h = server_new();
  if (!h) return;
  rw_ctx *ctx = rw_ctx_with_timeout(NULL, 6);
  rw_gcs_source_config sc = {.bucket = "bkt", .object = "obj", .endpoint = h->origin};
  rw_error *e = NULL;
  rw_gcs_source *src = rw_gcs_source_new(&sc, &e);
  rw_http_config hc = {0};
  rw_http *http = src ? rw_http_new(&hc, &e) : NULL;
  CHECK(src && http && !e);
  char raw[1024];
  int head = snprintf(raw, sizeof raw,
                      "HTTP/1.1 206 Partial Content\r\nContent-Range: bytes 0-999999/1000000\r\n"
                      "x-goog-generation: 7\r\nContent-Length: 1000000\r\n\r\n");
  memset(raw + head, 'x', 400); /* 400 bytes at 50 B/s: 8 s, far past the stall clock */
  hs_push(h, HS_TRICKLE, raw, (size_t)head + 400, 0, 20, (size_t)head);
  rw_gcs_get g = {.off = 0, .len = 1000000, .generation = 7, .stall_timeout = STALL,
                  .on_body = count_body};
  size_t got = 0;
  g.ud = &got;
  double t0 = rw_mono_now();
  if (http) e = rw_gcs_source_get(src, http, ctx, &g);
  double took = rw_mono_now() - t0;
  CHECK(got > 0); /* bytes did come, slowly */
  check_stall("trickled download body", e, took);
  rw_http_free(http);
  rw_gcs_source_free(src);
  rw_ctx_unref(ctx);
  server_free(h);
}

static void endless_case(hs_server *h, rw_ctx *ctx, rw_sink *s, const char *head, size_t fill,
                         const char *what) {
  hs_push(h, HS_ANSWER, head, strlen(head), fill, 0, 0);
  rw_sink_result r = {0};
  double t0 = rw_mono_now();
  rw_error *e = s->ops->query(s, ctx, &r);
  double took = rw_mono_now() - t0;
  show(what, e, took);
  CHECK(is(e, RW_E_PROTOCOL) && !rw_error_retryable(e));
  CHECK(e && strstr(rw_error_message(e), "1 MiB"));
  CHECK(took < STALL + MARGIN);
  rw_error_unref(e);
  rw_sink_result_clear(&r);
}

static void test_big_bodies(void) {
  hs_server *h = server_new();
  if (!h) return;
  rw_ctx *ctx = rw_ctx_with_timeout(NULL, 4);
  rw_sink *s = sink_with_session(h, ctx);
  endless_case(h, ctx, s, "HTTP/1.1 308 Resume Incomplete\r\nRange: bytes=0-262143\r\n"
               "Content-Length: 2097152\r\n\r\n", 2097152, "308 with a 2 MiB body");
  endless_case(h, ctx, s, "HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n{\"size\":\"0\",", SIZE_MAX,
               "200 with an endless body");
  /* a 1 MiB body is still fine */
  char head[128];
  snprintf(head, sizeof head, "HTTP/1.1 308 Resume Incomplete\r\nRange: bytes=0-5\r\nContent-Length: %d\r\n\r\n",
           1 << 20);
  hs_push(h, HS_ANSWER, head, strlen(head), 1 << 20, 0, 0);
  rw_sink_result r = {0};
  rw_error *e = s->ops->query(s, ctx, &r);
  CHECK(e == NULL && r.persisted == 6);
  rw_error_unref(e);
  rw_sink_destroy(s);
  rw_ctx_unref(ctx);
  server_free(h);
}

/* ---- 7: Range parsed strictly; the object must be ours; checksum rejections ---- */

static void test_range_forms(void) {
  static const char *const bad[] = {
      "Range: bytes=0-",       "Range: bytes= 0-5",      "Range: bytes=0-+5",
      "Range: bytes=1-5",      "Range: bytes=0-99999999999999999999",
      "Range: bytes=0-5x",     "Range: bytes=0--5",      "Range: bytes=0-9223372036854775808",
      "Range: bytes=0- 5",     "Range: bytes=00-5",      "Range: Bytes=0-5",
      "Range: bytes=0-5, 7-9", "Range: bytes=0-18446744073709551615",
      "Range: bytes=0-5\r\nRange: bytes=0-7", "Range:",
  };
  static const struct { const char *range; uint64_t persisted; } good[] = {
      {"Range: bytes=0-0", 1},
      {"Range: bytes=0-262143", 262144},
      {"Range: bytes=0-9223372036854775806", 9223372036854775807ull},
      {"Range: bytes=0-9223372036854775807", 9223372036854775808ull},
      {"X-Other: 1", 0},
  };
  hs_server *h = server_new();
  if (!h) return;
  rw_ctx *ctx = rw_ctx_with_timeout(NULL, 4);
  rw_sink *s = sink_with_session(h, ctx);
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    hs_answer(h, "HTTP/1.1 308 Resume Incomplete\r\n%s\r\nContent-Length: 0\r\n\r\n", bad[i]);
    rw_sink_result r = {0};
    rw_error *e = s->ops->query(s, ctx, &r);
    if (!is(e, RW_E_PROTOCOL))
      fprintf(stderr, "   accepted '%s' as %llu persisted\n", bad[i], (unsigned long long)r.persisted);
    CHECK(is(e, RW_E_PROTOCOL) && !rw_error_retryable(e));
    rw_error_unref(e);
    rw_sink_result_clear(&r);
  }
  for (size_t i = 0; i < sizeof good / sizeof good[0]; i++) {
    hs_answer(h, "HTTP/1.1 308 Resume Incomplete\r\n%s\r\nContent-Length: 0\r\n\r\n", good[i].range);
    rw_sink_result r = {0};
    rw_error *e = s->ops->query(s, ctx, &r);
    CHECK(e == NULL && r.persisted == good[i].persisted);
    rw_error_unref(e);
  }
  rw_sink_destroy(s);
  rw_ctx_unref(ctx);
  server_free(h);
}

static rw_error *final_put(rw_sink *s, rw_ctx *ctx, rw_sink_result *r, bool with_sums) {
  unsigned char *data = random_bytes(1000);
  struct iovec v = {data, 1000};
  rw_sink_sums sums = {.has_crc32c = true, .crc32c = rw_crc32c(0, data, 1000), .has_md5 = true};
  rw_sink_put p = {.offset = 0, .iov = &v, .iovcnt = 1, .len = 1000, .final = true,
                   .sums = with_sums ? &sums : NULL, .stall_timeout = STALL};
  rw_error *e = s->ops->put(s, ctx, &p, r);
  free(data);
  return e;
}

static void object_case(hs_server *h, rw_sink *s, rw_ctx *ctx, const char *bucket, const char *name,
                        bool ok) {
  char body[256];
  int n = snprintf(body, sizeof body, "{\"bucket\":\"%s\",\"name\":\"%s\",\"size\":\"1000\"}", bucket, name);
  hs_answer(h, "HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s", n, body);
  rw_sink_result r = {0};
  rw_error *e = final_put(s, ctx, &r, false);
  show(body, e, 0);
  if (ok) CHECK(e == NULL && r.finalized && r.persisted == 1000);
  else CHECK(is(e, RW_E_PROTOCOL) && !rw_error_retryable(e) && !r.finalized);
  rw_error_unref(e);
  rw_sink_result_clear(&r);
}

static void test_foreign_object(void) {
  hs_server *h = server_new();
  if (!h) return;
  rw_ctx *ctx = rw_ctx_with_timeout(NULL, 4);
  rw_sink *s = sink_with_session(h, ctx);
  object_case(h, s, ctx, "other", "dir/obj", false);
  object_case(h, s, ctx, "bkt", "dir/obj2", false);
  object_case(h, s, ctx, "bkt", "dir", false);
  object_case(h, s, ctx, "bkt", "dir/obj", true);
  rw_sink_destroy(s);
  /* A resumed session that knows no names takes the server's. */
  char uri[256];
  snprintf(uri, sizeof uri, "%s/upload/s?upload_id=u9", h->origin);
  rw_error *e = NULL;
  s = sink_at(h->origin, uri, &e);
  CHECK(s && !e);
  if (s) object_case(h, s, ctx, "any", "thing", true);
  rw_sink_destroy(s);
  rw_ctx_unref(ctx);
  server_free(h);
}

static void reject_case(hs_server *h, rw_sink *s, rw_ctx *ctx, const char *message, bool with_sums,
                        const char *code) {
  char body[512];
  int n = snprintf(body, sizeof body, "{\"error\":{\"code\":400,\"message\":\"%s\"}}", message);
  hs_answer(h, "HTTP/1.1 400 Bad Request\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s",
            n, body);
  rw_sink_result r = {0};
  rw_error *e = final_put(s, ctx, &r, with_sums);
  show(message, e, 0);
  CHECK(is(e, code) && !rw_error_retryable(e) && rw_error_status(e) == 400);
  rw_error_unref(e);
  rw_sink_result_clear(&r);
}

static void test_checksum_rejected(void) {
  hs_server *h = server_new();
  if (!h) return;
  rw_ctx *ctx = rw_ctx_with_timeout(NULL, 4);
  rw_sink *s = sink_with_session(h, ctx);
  /* real GCS */
  reject_case(h, s, ctx, "Provided CRC32C \\\"ZYxwVQ==\\\" doesn't match calculated CRC32C \\\"AAAAAA==\\\".",
              true, RW_E_CHECKSUM);
  reject_case(h, s, ctx, "Provided MD5 hash \\\"1B2M2Y8AsgTpgAmY7PhCfg==\\\" doesn't match calculated MD5 hash "
              "\\\"XrY7u+Ae7tCTyyK7j1rNww==\\\".", true, RW_E_CHECKSUM);
  /* our fake */
  reject_case(h, s, ctx, "Provided CRC32C does not match the computed CRC32C of the object data", true,
              RW_E_CHECKSUM);
  reject_case(h, s, ctx, "Provided MD5 hash does not match the computed MD5 hash of the object data", true,
              RW_E_CHECKSUM);
  /* other 400s, or no X-Goog-Hash sent: a plain http.400 */
  reject_case(h, s, ctx, "Invalid argument.", true, "http.400");
  reject_case(h, s, ctx, "Provided CRC32C does not match the computed CRC32C of the object data", false,
              "http.400");
  hs_request q = hs_req(h, hs_nreqs(h) - 2);
  CHECK(strcasestr(q.head, "X-Goog-Hash: crc32c=") != NULL);
  rw_sink_destroy(s);
  rw_ctx_unref(ctx);
  server_free(h);
}

int main(void) {
  signal(SIGPIPE, SIG_IGN);
  static const char *const proxies[] = {"http_proxy", "HTTP_PROXY", "ftp_proxy", "all_proxy", "ALL_PROXY"};
  for (int i = 0; i < 5; i++) unsetenv(proxies[i]); /* loopback only, never through a proxy */
  rng_state = ct_seed();
  RUN(test_location_off_origin);
  RUN(test_location_same_origin);
  RUN(test_abort_statuses);
  RUN(test_resume_foreign_session);
  RUN(test_blackholed_requests);
  RUN(test_trickled_headers);
  RUN(test_trickled_body);
  RUN(test_trickled_download);
  RUN(test_big_bodies);
  RUN(test_range_forms);
  RUN(test_foreign_object);
  RUN(test_checksum_rejected);
  return ct_finish("test_hostile");
}
