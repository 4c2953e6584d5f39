/* The ReliableReader against the fake GCS: random ranges compared with what
 * was written, the end and past it, the download conformance cases, a stall
 * resumed, generation pinning, 404, read_to_file with its CRC check, hedging
 * and its budget, concurrent reads from several threads. */
#include <jansson.h>
#include <pthread.h>
#include <stdint.h>
#include <sys/stat.h>

#include "core/checksum.h"
#include "core/clock.h"
#include "core/workgroup.h"
#include "ctest.h"
#include "io/reader.h"
#include "net/http.h"
#include "testbed/fakegcs.h"

static unsigned seed;
static rw_fakegcs *fake;

static unsigned char *random_bytes(size_t n) {
  unsigned char *p = malloc(n ? n : 1);
  for (size_t i = 0; i < n; i++) p[i] = (unsigned char)(rand_r(&seed) >> 7);
  return p;
}

static rw_error *http_post(const char *url, const char *ctype, const void *body, size_t n, char **reply) {
  rw_error *e = NULL;
  rw_http_config hc = {.max_body = 1 << 20};
  rw_http *h = rw_http_new(&hc, &e);
  if (!h) return e;
  char ct[128];
  snprintf(ct, sizeof ct, "Content-Type: %s", ctype);
  const char *hs[] = {ct, NULL};
  struct iovec v = {(void *)body, n};
  rw_http_request req = {.method = "POST", .url = url, .headers = hs, .iov = &v, .iovcnt = 1, .len = n};
  rw_http_response res;
  rw_ctx *ctx = rw_ctx_background();
  e = rw_http_do(h, ctx, &req, &res);
  if (!e && res.status != 200) e = rw_err(RW_E_INTERNAL, "POST %s: %d %s", url, res.status, res.body ? res.body : "");
  if (!e && reply) *reply = res.body ? strdup(res.body) : NULL;
  rw_http_response_clear(&res);
  rw_http_free(h);
  rw_ctx_unref(ctx);
  return e;
}

static void put_object(const char *name, const unsigned char *data, size_t n) {
  char url[512];
  snprintf(url, sizeof url, "%s/upload/storage/v1/b/bkt/o?uploadType=media&name=%s", rw_fakegcs_url(fake), name);
  rw_error *e = http_post(url, "application/octet-stream", data, n, NULL);
  CHECK(e == NULL);
  rw_error_unref(e);
}

/* A retry test for downloads: {"storage.objects.get": [what...]} -> id. */
static char *retry_test(const char *what) {
  char url[256], body[4096], *reply = NULL, *id = NULL;
  snprintf(url, sizeof url, "%s/retry_test", rw_fakegcs_url(fake));
  snprintf(body, sizeof body, "{\"instructions\":{\"storage.objects.get\":[%s]}}", what);
  rw_error *e = http_post(url, "application/json", body, strlen(body), &reply);
  CHECK(e == NULL);
  rw_error_unref(e);
  json_error_t je;
  json_t *j = reply ? json_loads(reply, 0, &je) : NULL;
  const char *s = json_string_value(json_object_get(j, "id"));
  if (s) id = strdup(s);
  json_decref(j);
  free(reply);
  return id;
}

static rw_reader *open_reader(const char *name, const char *test_id, rw_reader_config *over) {
  rw_gcs_header hs[] = {{"x-retry-test-id", test_id}};
  rw_reader_config c = over ? *over : rw_reader_defaults();
  c.source = (rw_gcs_source_config){.bucket = "bkt", .object = name, .endpoint = rw_fakegcs_url(fake),
                                    .headers = hs, .nheaders = test_id ? 1 : 0};
  c.retry.min_wait = 0.01;
  c.retry.max_wait = 0.05;
  rw_error *e = NULL;
  rw_reader *r = rw_reader_new(NULL, &c, &e);
  CHECK(r && !e);
  rw_error_unref(e);
  return r;
}

static bool read_equal(rw_reader *r, const unsigned char *data, uint64_t off, uint64_t len) {
  unsigned char *buf = malloc(len ? len : 1);
  rw_error *e = rw_reader_read_at(r, NULL, off, len, buf);
  bool ok = !e && memcmp(buf, data + off, len) == 0;
  if (e) fprintf(stderr, "read [%llu,+%llu): %s\n", (unsigned long long)off, (unsigned long long)len,
                 rw_error_message(e));
  rw_error_unref(e);
  free(buf);
  return ok;
}

static void test_random_ranges(void) {
  size_t n = 3 * 262144 + rand_r(&seed) % 262144;
  unsigned char *data = random_bytes(n);
  put_object("rand", data, n);
  rw_reader *r = open_reader("rand", NULL, NULL);
  int bad = 0;
  for (int i = 0; i < 200; i++) {
    uint64_t off = rand_r(&seed) % n, len = rand_r(&seed) % (n - off + 1);
    if (i % 10 == 0) len = rand_r(&seed) % 100;
    if (off + len > n) len = n - off;
    if (!read_equal(r, data, off, len)) bad++;
  }
  CHECK_EQ_INT(bad, 0);
  CHECK(read_equal(r, data, n - 1, 1));  /* the last byte */
  CHECK(read_equal(r, data, n, 0));      /* 0 bytes at the end */
  CHECK(read_equal(r, data, 0, n));      /* all */
  unsigned char b[2];
  rw_error *e = rw_reader_read_at(r, NULL, n - 1, 2, b);
  char size[32];
  snprintf(size, sizeof size, "%zu bytes", n);
  CHECK(e && rw_error_is(e, RW_E_INVALID) && strstr(rw_error_message(e), size));
  rw_error_unref(e);
  rw_reader_stats st;
  rw_reader_get_stats(r, &st);
  CHECK(st.requests >= 200);
  rw_reader_free(r);
  free(data);
}

static void test_conformance(void) {
  size_t n = 1024 * 1024 + rand_r(&seed) % 1000;
  unsigned char *data = random_bytes(n);
  put_object("conf", data, n);
  const char *cases[] = {"\"return-broken-stream\",\"return-broken-stream\"",
                         "\"return-broken-stream-after-256K\"", "\"return-503\",\"return-reset-connection\""};
  for (size_t i = 0; i < 3; i++) {
    char *id = retry_test(cases[i]);
    rw_reader *r = open_reader("conf", id, NULL);
    CHECK(read_equal(r, data, 0, n));
    rw_reader_stats st;
    rw_reader_get_stats(r, &st);
    CHECK(st.retries >= 1);
    rw_reader_free(r);
    free(id);
  }
  /* a stall after 256K, ended by the stall clock, resumed from there */
  char *id = retry_test("\"stall-for-5s-after-256K\"");
  rw_reader_config c = rw_reader_defaults();
  c.stall_timeout = 0.5;
  c.max_hedges = 0;
  rw_reader *r = open_reader("conf", id, &c);
  double t0 = rw_mono_now();
  CHECK(read_equal(r, data, 0, n));
  CHECK(rw_mono_now() - t0 < 4);
  rw_reader_stats st;
  rw_reader_get_stats(r, &st);
  CHECK_EQ_INT(st.retries, 1);
  CHECK(st.bytes == n); /* resumed: no byte twice */
  rw_reader_free(r);
  free(id);
  free(data);
}

static void test_generation_and_404(void) {
  size_t n = 100000;
  unsigned char *a = random_bytes(n), *b = random_bytes(n);
  put_object("gen", a, n);
  rw_reader *r = open_reader("gen", NULL, NULL);
  CHECK(read_equal(r, a, 0, 1000));
  put_object("gen", b, n);
  unsigned char buf[1000];
  rw_error *e = rw_reader_read_at(r, NULL, 0, sizeof buf, buf);
  CHECK(e && rw_error_is(e, RW_E_GENERATION_CHANGED));
  CHECK(e && !rw_error_retryable(e));
  rw_error_unref(e);
  rw_reader_free(r);
  r = open_reader("missing", NULL, NULL);
  e = rw_reader_read_at(r, NULL, 0, 10, buf);
  CHECK(e && rw_error_is(e, RW_E_NOT_FOUND));
  rw_reader_stats st;
  rw_reader_get_stats(r, &st);
  CHECK_EQ_INT(st.retries, 0);
  rw_error_unref(e);
  rw_reader_free(r);
  free(a);
  free(b);
}

static bool file_equal(const char *path, const unsigned char *data, size_t n) {
  FILE *f = fopen(path, "rb");
  if (!f) return false;
  unsigned char *buf = malloc(n + 1);
  size_t got = fread(buf, 1, n + 1, f);
  fclose(f);
  bool same = got == n && memcmp(buf, data, n) == 0;
  free(buf);
  return same;
}

static int count_files(const char *dir) {
  char cmd[300];
  snprintf(cmd, sizeof cmd, "ls -A %s | wc -l", dir);
  FILE *p = popen(cmd, "r");
  int n = -1;
  if (p && fscanf(p, "%d", &n) != 1) n = -1;
  if (p) pclose(p);
  return n;
}

static void test_to_file(void) {
  size_t n = 700000 + rand_r(&seed) % 1000;
  unsigned char *data = random_bytes(n);
  put_object("file", data, n);
  char dir[] = "/tmp/rw_test_reader_XXXXXX", path[64];
  CHECK(mkdtemp(dir) != NULL);
  snprintf(path, sizeof path, "%s/out.bin", dir);
  rw_reader *r = open_reader("file", NULL, NULL);
  rw_error *e = rw_reader_read_to_file(r, NULL, path, 0, -1);
  CHECK(e == NULL);
  rw_error_unref(e);
  CHECK(file_equal(path, data, n));
  e = rw_reader_read_to_file(r, NULL, path, 1000, 5000);
  CHECK(e == NULL && file_equal(path, data + 1000, 5000));
  rw_error_unref(e);
  rw_reader_free(r);
  unlink(path);
  char *id = retry_test("\"return-corrupted-data\"");
  r = open_reader("file", id, NULL);
  e = rw_reader_read_to_file(r, NULL, path, 0, -1);
  CHECK(e && rw_error_is(e, RW_E_CHECKSUM));
  rw_error_unref(e);
  CHECK(access(path, F_OK) != 0);
  CHECK_EQ_INT(count_files(dir), 0); /* no temporary file left either */
  rw_reader_free(r);
  free(id);
  rmdir(dir);
  free(data);
}

static void test_hedging(void) {
  size_t n = 300000;
  unsigned char *data = random_bytes(n);
  put_object("hedge", data, n);
  char *id = retry_test("\"stall-for-3s-after-0K\"");
  rw_reader_config c = rw_reader_defaults();
  c.hedge_after = 0.2;
  rw_reader *r = open_reader("hedge", id, &c);
  double t0 = rw_mono_now();
  CHECK(read_equal(r, data, 1000, 200000));
  double took = rw_mono_now() - t0;
  fprintf(stderr, "hedged read took %.3f s\n", took);
  rw_reader_stats st;
  rw_reader_get_stats(r, &st);
  CHECK(took < 1.0);
  CHECK_EQ_INT(st.hedges_won, 1);
  CHECK_EQ_INT(st.hedges_issued, 1);
  rw_reader_free(r);
  free(id);
  free(data);
}

/* Every request slow: the budget keeps hedges to 1 + 10% of the requests. */
static void test_hedge_budget(void) {
  size_t n = 50000;
  unsigned char *data = random_bytes(n);
  put_object("budget", data, n);
  char what[2048] = "";
  for (int i = 0; i < 40; i++) strcat(what, i ? ",\"stall-for-0.3s-after-0K\"" : "\"stall-for-0.3s-after-0K\"");
  char *id = retry_test(what);
  rw_reader_config c = rw_reader_defaults();
  c.hedge_after = 0.05;
  rw_reader *r = open_reader("budget", id, &c);
  int bad = 0;
  for (int i = 0; i < 20; i++)
    if (!read_equal(r, data, (uint64_t)i * 1000, 1000)) bad++;
  CHECK_EQ_INT(bad, 0);
  rw_reader_stats st;
  rw_reader_get_stats(r, &st);
  fprintf(stderr, "requests %llu hedges %llu\n", (unsigned long long)st.requests,
          (unsigned long long)st.hedges_issued);
  CHECK(st.hedges_issued >= 1);
  CHECK((double)st.hedges_issued <= 1 + 0.1 * (double)(st.requests - st.hedges_issued));
  rw_reader_free(r);
  free(id);
  free(data);
}

typedef struct par {
  rw_reader *r;
  const unsigned char *data;
  size_t n;
  unsigned seed;
  int bad;
} par;

static void *par_main(void *arg) {
  par *p = arg;
  for (int i = 0; i < 30; i++) {
    uint64_t off = rand_r(&p->seed) % p->n, len = rand_r(&p->seed) % (p->n - off + 1);
    if (!read_equal(p->r, p->data, off, len)) p->bad++;
  }
  return NULL;
}

static void test_concurrent(void) {
  size_t n = 2000000;
  unsigned char *data = random_bytes(n);
  put_object("par", data, n);
  rw_reader *r = open_reader("par", NULL, NULL);
  pthread_t t[4];
  par ps[4];
  for (int i = 0; i < 4; i++) {
    ps[i] = (par){r, data, n, seed + (unsigned)i, 0};
    pthread_create(&t[i], NULL, par_main, &ps[i]);
  }
  int bad = 0;
  for (int i = 0; i < 4; i++) {
    pthread_join(t[i], NULL);
    bad += ps[i].bad;
  }
  CHECK_EQ_INT(bad, 0);
  rw_reader_free(r);
  free(data);
}

int main(void) {
  seed = ct_seed();
  static const char *const buckets[] = {"bkt", NULL};
  rw_fakegcs_config fc = {.store = RW_FAKEGCS_MEMORY, .buckets = buckets};
  rw_error *e = NULL;
  fake = rw_fakegcs_start(&fc, &e);
  CHECK(fake && !e);
  if (!fake) return ct_finish("test_reader");
  RUN(test_random_ranges);
  RUN(test_conformance);
  RUN(test_generation_and_404);
  RUN(test_to_file);
  RUN(test_hedging);
  RUN(test_hedge_budget);
  RUN(test_concurrent);
  rw_fakegcs_stop(fake);
  rw_pool *p = rw_pool_shared_acquire(); /* join the pool's threads */
  (void)p;
  rw_pool_shared_release();
  return ct_finish("test_reader");
}
