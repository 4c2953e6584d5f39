/* The fake GCS under sanitizers: concurrent resumable uploads with libcurl,
 * stop while requests stall, the C API for objects and the request log. */
#include <arpa/inet.h>
#include <curl/curl.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdint.h>
#include <sys/resource.h>
#include <sys/socket.h>

#include "ctest.h"
#include "testbed/fakegcs.h"

#define Q (256 * 1024)

static rw_fakegcs *srv;
static unsigned seed;

typedef struct reply {
  long status;
  char location[512];
  char range[64];
} reply;

static size_t on_header(char *buf, size_t size, size_t n, void *ud) {
  reply *r = ud;
  size_t len = size * n;
  if (len > 10 && strncasecmp(buf, "Location: ", 10) == 0)
    snprintf(r->location, sizeof r->location, "%.*s", (int)(len - 12), buf + 10);
  if (len > 7 && strncasecmp(buf, "Range: ", 7) == 0)
    snprintf(r->range, sizeof r->range, "%.*s", (int)(len - 9), buf + 7);
  return len;
}

static size_t on_body(char *buf, size_t size, size_t n, void *ud) {
  return size * n;
}

/* One request; body may be NULL. */
static reply request(const char *method, const char *url, const char *range, const void *body,
                     size_t len, long timeout_ms) {
  reply r = {0};
  CURL *c = curl_easy_init();
  struct curl_slist *h = NULL;
  char cr[128];
  if (range) {
    snprintf(cr, sizeof cr, "Content-Range: %s", range);
    h = curl_slist_append(h, cr);
  }
  h = curl_slist_append(h, "Expect:");
  curl_easy_setopt(c, CURLOPT_URL, url);
  curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, method);
  curl_easy_setopt(c, CURLOPT_HTTPHEADER, h);
  curl_easy_setopt(c, CURLOPT_POSTFIELDS, body ? body : "");
  curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)(body ? len : 0));
  curl_easy_setopt(c, CURLOPT_HEADERFUNCTION, on_header);
  curl_easy_setopt(c, CURLOPT_HEADERDATA, &r);
  curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_body);
  curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
  if (timeout_ms) curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, timeout_ms);
  if (curl_easy_perform(c) == CURLE_OK) curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &r.status);
  curl_slist_free_all(h);
  curl_easy_cleanup(c);
  return r;
}

static unsigned char *random_data(size_t n, unsigned s) {
  unsigned char *d = malloc(n);
  uint64_t x = s * 0x9E3779B97F4A7C15ull + 1;
  for (size_t i = 0; i < n; i++) {
    x ^= x << 13, x ^= x >> 7, x ^= x << 17;
    d[i] = (unsigned char)(x >> 32);
  }
  return d;
}

typedef struct job {
  int index;
  size_t size;
  int ok;
} job;

static void *upload(void *arg) {
  job *j = arg;
  char url[512], name[32], range[128];
  unsigned char *d = random_data(j->size, seed + (unsigned)j->index);
  snprintf(name, sizeof name, "obj%d", j->index);
  snprintf(url, sizeof url, "%s/upload/storage/v1/b/b/o?uploadType=resumable&name=%s",
           rw_fakegcs_url(srv), name);
  reply r = request("POST", url, NULL, "{}", 2, 0);
  int ok = r.status == 200 && r.location[0];
  char loc[512];
  snprintf(loc, sizeof loc, "%s", r.location);
  for (size_t off = 0; ok && off < j->size;) {
    size_t n = j->size - off > 2 * Q ? 2 * Q : j->size - off;
    bool final = off + n == j->size;
    if (final) snprintf(range, sizeof range, "bytes %zu-%zu/%zu", off, off + n - 1, j->size);
    else snprintf(range, sizeof range, "bytes %zu-%zu/*", off, off + n - 1);
    r = request("PUT", loc, range, d + off, n, 0);
    ok = final ? r.status == 200 : r.status == 308;
    off += n;
  }
  rw_fakegcs_object o;
  ok = ok && rw_fakegcs_object_get(srv, "b", name, &o);
  if (ok) {
    ok = o.size == j->size && o.data && memcmp(o.data, d, j->size) == 0 && o.has_md5 && o.json;
    rw_fakegcs_object_free(&o);
  }
  j->ok = ok;
  free(d);
  return NULL;
}

static void test_concurrent_uploads(void) {
  pthread_t t[8];
  job jobs[8];
  for (int i = 0; i < 8; i++) {
    jobs[i] = (job){i, (size_t)(rand_r(&seed) % (3 * Q)) + 1 + (i % 2) * 4 * Q, 0};
    pthread_create(&t[i], NULL, upload, &jobs[i]);
  }
  for (int i = 0; i < 8; i++) {
    pthread_join(t[i], NULL);
    CHECK(jobs[i].ok);
  }
  size_t n;
  rw_fakegcs_request *log = rw_fakegcs_requests(srv, &n);
  CHECK(n >= 16);
  CHECK(log != NULL && log[0].path != NULL);
  rw_fakegcs_requests_free(log, n);
}

static void *stalled_put(void *arg) {
  char *loc = arg;
  unsigned char *d = random_data(2 * Q, seed);
  request("PUT", loc, "bytes 0-524287/*", d, 2 * Q, 20000);
  free(d);
  return NULL;
}

static void test_stop_while_stalled(void) {
  rw_error *err = NULL;
  const char *buckets[] = {"b", NULL};
  rw_fakegcs_config cfg = {.buckets = buckets};
  rw_fakegcs *s = rw_fakegcs_start(&cfg, &err);
  CHECK(s != NULL);
  if (!s) return;
  char url[512];
  snprintf(url, sizeof url, "%s/retry_test", rw_fakegcs_url(s));
  const char *ins = "{\"instructions\":{\"storage.objects.insert\":[\"stall-for-30s-after-256K\"]}}";
  reply r = request("POST", url, NULL, ins, strlen(ins), 0);
  CHECK_EQ_INT(r.status, 200);
  snprintf(url, sizeof url, "%s/upload/storage/v1/b/b/o?uploadType=resumable&name=s",
           rw_fakegcs_url(s));
  r = request("POST", url, NULL, "{}", 2, 0);
  CHECK_EQ_INT(r.status, 200);
  /* the stall comes from a random fault with a stall instead (no id header here) */
  rw_fakegcs_faults f = {.seed = 1, .p_stall = 1, .stall_ms = 30000};
  rw_fakegcs_set_faults(s, &f);
  pthread_t t;
  pthread_create(&t, NULL, stalled_put, r.location);
  usleep(300000);
  time_t t0 = time(NULL);
  rw_fakegcs_stop(s);
  CHECK(time(NULL) - t0 < 5);
  pthread_join(t, NULL);
}


/* Opens n idle TCP connections to s; returns how many opened. */
static int open_idle(rw_fakegcs *s, int *fds, int n) {
  struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)rw_fakegcs_port(s))};
  inet_pton(AF_INET, "127.0.0.1", &sa.sin_addr);
  int i = 0;
  for (; i < n; i++) {
    fds[i] = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fds[i] < 0 || connect(fds[i], (struct sockaddr *)&sa, sizeof sa) != 0) {
      if (fds[i] >= 0) close(fds[i]);
      break;
    }
  }
  return i;
}

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

/* 1,100 idle connections (past select()'s FD_SETSIZE and MHD's default
 * limit of FD_SETSIZE - 4) must not lock another client out. */
static void test_idle_connections(void) {
  struct rlimit rl;
  getrlimit(RLIMIT_NOFILE, &rl);
  rl.rlim_cur = rl.rlim_max;
  setrlimit(RLIMIT_NOFILE, &rl);
  if (rl.rlim_cur < 2 * 1100 + 100) {
    fprintf(stderr, "test_idle_connections: skipped, RLIMIT_NOFILE hard limit %llu\n",
            (unsigned long long)rl.rlim_max);
    return;
  }
  rw_error *err = NULL;
  rw_fakegcs_config cfg = {0};
  rw_fakegcs *s = rw_fakegcs_start(&cfg, &err);
  CHECK(s != NULL);
  if (!s) return;
  enum { N = 1100 };
  int *fds = calloc(N, sizeof *fds);
  int opened = open_idle(s, fds, N);
  CHECK_EQ_INT(opened, N);
  usleep(200000); /* let the server accept them */
  char url[256];
  snprintf(url, sizeof url, "%s/storage/v1/b", rw_fakegcs_url(s));
  double t0 = now_s();
  reply r = request("GET", url, NULL, NULL, 0, 5000);
  double took = now_s() - t0;
  CHECK_EQ_INT(r.status, 200);
  CHECK(took < 2.0);
  fprintf(stderr, "  a request with %d idle connections open took %.3f s\n", opened, took);
  for (int i = 0; i < opened; i++) close(fds[i]);
  free(fds);
  rw_fakegcs_stop(s);
}

static long rss_kib(void) {
  FILE *f = fopen("/proc/self/statm", "r");
  long pages = 0, res = 0;
  if (f && fscanf(f, "%ld %ld", &pages, &res) != 2) res = 0;
  if (f) fclose(f);
  return res * (sysconf(_SC_PAGESIZE) / 1024);
}

/* GETs n times over one connection, each with a long query (~1 KiB). */
static int many_gets(rw_fakegcs *s, int from, int n) {
  CURL *c = curl_easy_init();
  char url[1400], pad[1025];
  memset(pad, 'p', 1024);
  pad[1024] = 0;
  int ok = 0;
  curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_body);
  curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, 5000L);
  for (int i = from; i < from + n; i++) {
    snprintf(url, sizeof url, "%s/storage/v1/b/b?i=%d&pad=%s", rw_fakegcs_url(s), i, pad);
    curl_easy_setopt(c, CURLOPT_URL, url);
    long status = 0;
    if (curl_easy_perform(c) == CURLE_OK) curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status);
    ok += status == 200;
  }
  curl_easy_cleanup(c);
  return ok;
}

/* The request log keeps the last request_log requests, in order; memory
 * does not grow with the number of requests past that. */
static void test_request_log_bounded(void) {
  rw_error *err = NULL;
  const char *buckets[] = {"b", NULL};
  rw_fakegcs_config cfg = {.buckets = buckets, .request_log = 500};
  rw_fakegcs *s = rw_fakegcs_start(&cfg, &err);
  CHECK(s != NULL);
  if (!s) return;
  CHECK_EQ_INT(many_gets(s, 0, 1200), 1200);
  size_t n = 0;
  rw_fakegcs_request *log = rw_fakegcs_requests(s, &n);
  CHECK_EQ_INT(n, 500);
  int in_order = 1;
  for (size_t i = 0; log && i < n; i++) {
    char want[32];
    snprintf(want, sizeof want, "?i=%zu&", 700 + i);
    if (!log[i].path || !strstr(log[i].path, want)) in_order = 0;
  }
  CHECK(in_order);
  rw_fakegcs_requests_free(log, n);
  long before = rss_kib();
  CHECK_EQ_INT(many_gets(s, 1200, 10000), 10000);
  long grew = rss_kib() - before;
  fprintf(stderr, "  RSS grew %ld KiB over 10,000 more requests (log of 500)\n", grew);
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
  (void)grew; /* the sanitizers' allocators hold freed memory (ASan's quarantine) */
#else
  CHECK(grew < 4096); /* an unbounded log grows ~11 MiB here */
#endif
  log = rw_fakegcs_requests(s, &n);
  CHECK_EQ_INT(n, 500);
  CHECK(log && n == 500 && strstr(log[n - 1].path, "?i=11199&") != NULL);
  rw_fakegcs_requests_free(log, n);
  rw_fakegcs_requests_clear(s);
  log = rw_fakegcs_requests(s, &n);
  CHECK_EQ_INT(n, 0);
  rw_fakegcs_requests_free(log, n);
  rw_fakegcs_stop(s);
}

static void test_bad_start(void) {
  rw_error *err = NULL;
  rw_fakegcs_config cfg = {.host = "no.such.host.invalid"};
  CHECK(rw_fakegcs_start(&cfg, &err) == NULL);
  CHECK(err != NULL);
  rw_error_unref(err);
}

int main(void) {
  seed = ct_seed();
  curl_global_init(CURL_GLOBAL_ALL);
  rw_error *err = NULL;
  const char *buckets[] = {"b", NULL};
  rw_fakegcs_config cfg = {.buckets = buckets};
  srv = rw_fakegcs_start(&cfg, &err);
  CHECK(srv != NULL);
  if (srv) {
    RUN(test_concurrent_uploads);
    rw_fakegcs_stop(srv);
  }
  RUN(test_stop_while_stalled);
  RUN(test_bad_start);
  RUN(test_idle_connections);
  RUN(test_request_log_bounded);
  curl_global_cleanup();
  return ct_finish("test_fakegcs");
}
