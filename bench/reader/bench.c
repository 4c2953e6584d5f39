/* Benchmark (not a test) of the ReliableReader against the in-process fake GCS.
 *   1. N reads of 1 MiB at random offsets from T threads, the fake stalling 5%
 *      of the requests for 2 s: p50 / p99 / p99.9 latency without and with
 *      hedging, and the extra requests hedging cost.
 *   2. read_to_file of a SIZE MiB object against a plain libcurl client
 *      downloading the same object to a file (best of 3 each).
 *   bench [reads=2000] [threads=8] [size_mib=256] [seed] */
#include <curl/curl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/clock.h"
#include "core/workgroup.h"
#include "io/reader.h"
#include "net/http.h"
#include "testbed/fakegcs.h"

#define MiB (1024 * 1024)
static rw_fakegcs *fake;
static unsigned seed;

static void die(const char *what, rw_error *e) {
  fprintf(stderr, "bench: %s: %s\n", what, e ? rw_error_message(e) : "failed");
  exit(1);
}

static char *post(const char *url, const char *ctype, const void *body, size_t n) {
  rw_error *e = NULL;
  rw_http *h = rw_http_new(NULL, &e);
  if (!h) die("http", e);
  char ct[128];
  snprintf(ct, sizeof ct, "Content-Type: %s", ctype);
  const char *hs[] = {ct, NULL};
  struct iovec v = {(void *)body, n};
  rw_http_request req = {.method = "POST", .url = url, .headers = hs, .iov = &v, .iovcnt = 1, .len = n};
  rw_http_response res;
  rw_ctx *ctx = rw_ctx_background();
  if ((e = rw_http_do(h, ctx, &req, &res)) || res.status != 200) die(url, e);
  char *out = res.body ? strdup(res.body) : NULL;
  rw_http_response_clear(&res);
  rw_http_free(h);
  rw_ctx_unref(ctx);
  return out;
}

static void put_object(const char *name, size_t n) {
  unsigned char *d = malloc(n);
  for (size_t i = 0; i < n; i++) d[i] = (unsigned char)(rand_r(&seed) >> 5);
  char url[512];
  snprintf(url, sizeof url, "%s/upload/storage/v1/b/b/o?uploadType=media&name=%s", rw_fakegcs_url(fake), name);
  free(post(url, "application/octet-stream", d, n));
  free(d);
}

/* A retry test with `count` instructions, 5% of them a 2 s stall. */
static char *stall_test(int count) {
  size_t cap = (size_t)count * 32 + 128, len = 0;
  char *body = malloc(cap);
  len += (size_t)snprintf(body, cap, "{\"instructions\":{\"storage.objects.get\":[");
  for (int i = 0; i < count; i++)
    len += (size_t)snprintf(body + len, cap - len, "%s\"stall-for-%ds-after-0K\"", i ? "," : "",
                            rand_r(&seed) % 100 < 5 ? 2 : 0);
  len += (size_t)snprintf(body + len, cap - len, "]}}");
  char url[256];
  snprintf(url, sizeof url, "%s/retry_test", rw_fakegcs_url(fake));
  char *reply = post(url, "application/json", body, len);
  free(body);
  char *id = strstr(reply, "\"id\"");
  char out[64] = "";
  if (id) sscanf(id, "\"id\": \"%63[^\"]\"", out);
  if (!*out && id) sscanf(id, "\"id\":\"%63[^\"]\"", out);
  free(reply);
  return strdup(out);
}

static rw_reader *open_reader(const char *name, const char *test_id, int max_hedges) {
  rw_gcs_header hs[] = {{"x-retry-test-id", test_id}};
  rw_reader_config c = rw_reader_defaults();
  c.source = (rw_gcs_source_config){.bucket = "b", .object = name, .endpoint = rw_fakegcs_url(fake),
                                    .headers = hs, .nheaders = test_id ? 1 : 0};
  c.max_hedges = max_hedges;
  rw_error *e = NULL;
  rw_reader *r = rw_reader_new(NULL, &c, &e);
  if (!r) die("reader", e);
  return r;
}

typedef struct job {
  rw_reader *r;
  uint64_t size;
  int reads;
  unsigned seed;
  double *lat;
} job;

static void *reads_main(void *arg) {
  job *j = arg;
  unsigned char *buf = malloc(MiB);
  for (int i = 0; i < j->reads; i++) {
    uint64_t off = (uint64_t)rand_r(&j->seed) % (j->size - MiB);
    double t0 = rw_mono_now();
    rw_error *e = rw_reader_read_at(j->r, NULL, off, MiB, buf);
    if (e) die("read", e);
    j->lat[i] = rw_mono_now() - t0;
  }
  free(buf);
  return NULL;
}

static int cmp(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

static double pct(const double *s, int n, double p) {
  int i = (int)(p * n + 0.999999) - 1;
  return s[i < 0 ? 0 : i >= n ? n - 1 : i];
}

static void latency_run(const char *label, int reads, int threads, int max_hedges, uint64_t size) {
  char *id = stall_test(reads * 2 + 100);
  rw_reader *r = open_reader("lat", id, max_hedges);
  double *lat = calloc((size_t)reads, sizeof *lat);
  pthread_t t[64];
  job jobs[64];
  int per = reads / threads;
  for (int i = 0; i < threads; i++) {
    jobs[i] = (job){r, size, per, seed + (unsigned)i, lat + i * per};
    pthread_create(&t[i], NULL, reads_main, &jobs[i]);
  }
  for (int i = 0; i < threads; i++) pthread_join(t[i], NULL);
  int n = per * threads;
  qsort(lat, (size_t)n, sizeof *lat, cmp);
  rw_reader_stats st;
  rw_reader_get_stats(r, &st);
  printf("%-22s %8.3f %8.3f %8.3f %8llu %8llu %8.1f%%\n", label, pct(lat, n, 0.5), pct(lat, n, 0.99),
         pct(lat, n, 0.999), (unsigned long long)st.hedges_issued, (unsigned long long)st.hedges_won,
         100.0 * (double)st.hedges_issued / (double)(st.requests - st.hedges_issued));
  rw_reader_free(r);
  free(lat);
  free(id);
}

static size_t to_file(char *p, size_t size, size_t n, void *ud) { return fwrite(p, size, n, ud) * size; }

static double curl_download(const char *url, const char *path) {
  CURL *c = curl_easy_init();
  FILE *f = fopen(path, "wb");
  curl_easy_setopt(c, CURLOPT_URL, url);
  curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, to_file);
  curl_easy_setopt(c, CURLOPT_WRITEDATA, f);
  double t0 = rw_mono_now();
  CURLcode rc = curl_easy_perform(c);
  fflush(f);
  fsync(fileno(f));
  double t = rw_mono_now() - t0;
  fclose(f);
  curl_easy_cleanup(c);
  if (rc != CURLE_OK) die("curl download", NULL);
  return t;
}

static double reader_download(const char *path) {
  rw_reader *r = open_reader("big", NULL, 2);
  double t0 = rw_mono_now();
  rw_error *e = rw_reader_read_to_file(r, NULL, path, 0, -1);
  double t = rw_mono_now() - t0;
  if (e) die("read_to_file", e);
  rw_reader_free(r);
  return t;
}

int main(int argc, char **argv) {
  int reads = argc > 1 ? atoi(argv[1]) : 2000, threads = argc > 2 ? atoi(argv[2]) : 8;
  int size_mib = argc > 3 ? atoi(argv[3]) : 256;
  seed = argc > 4 ? (unsigned)strtoul(argv[4], NULL, 0) : (unsigned)(time(NULL) ^ getpid());
  if (threads < 1 || threads > 64 || reads < threads) threads = 8;
  fprintf(stderr, "seed=%u\n", seed);
  static const char *const buckets[] = {"b", NULL};
  rw_fakegcs_config fc = {.store = RW_FAKEGCS_MEMORY, .buckets = buckets, .md5 = RW_FAKEGCS_MD5_OFF};
  rw_error *e = NULL;
  if (!(fake = rw_fakegcs_start(&fc, &e))) die("fake", e);
  uint64_t lat_size = 64 * MiB;
  put_object("lat", lat_size);
  printf("%d reads of 1 MiB, %d threads, 5%% of requests stalled 2 s\n", reads, threads);
  printf("%-22s %8s %8s %8s %8s %8s %9s\n", "", "p50 s", "p99 s", "p99.9 s", "hedges", "won", "extra");
  latency_run("no hedging", reads, threads, 0, lat_size);
  latency_run("hedging (p95 auto)", reads, threads, 2, lat_size);

  put_object("big", (size_t)size_mib * MiB);
  char dir[] = "/tmp/rw_bench_reader_XXXXXX", path[64], url[512];
  if (!mkdtemp(dir)) die("mkdtemp", NULL);
  snprintf(path, sizeof path, "%s/out.bin", dir);
  snprintf(url, sizeof url, "%s/storage/v1/b/b/o/big?alt=media", rw_fakegcs_url(fake));
  double best_c = 1e9, best_r = 1e9;
  for (int i = 0; i < 3; i++) {
    double c = curl_download(url, path), r = reader_download(path);
    if (c < best_c) best_c = c;
    if (r < best_r) best_r = r;
  }
  unlink(path);
  rmdir(dir);
  double mb = size_mib;
  printf("\n%d MiB to a file (best of 3)    %8s %8s\n", size_mib, "MiB/s", "ratio");
  printf("%-30s %8.1f %8s\n", "plain libcurl", mb / best_c, "1.00");
  printf("%-30s %8.1f %8.2f\n", "reader read_to_file", mb / best_r, best_c / best_r);
  rw_fakegcs_stop(fake);
  return 0;
}
