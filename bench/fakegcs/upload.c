/* A plain libcurl client: one resumable upload of TOTAL bytes in CHUNK-byte
 * PUTs over one connection. Prints "seconds bytes MiB/s".
 *   upload INIT_URL|PUT_URL total_mib chunk_mib
 * With an ".../upload/storage/v1/..." URL it first POSTs to start a session;
 * otherwise it PUTs straight to the URL (for nginx). */
#include <curl/curl.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

static char location[1024];

static size_t on_header(char *b, size_t size, size_t n, void *ud) {
  size_t len = size * n;
  if (len > 10 && strncasecmp(b, "Location: ", 10) == 0)
    snprintf(location, sizeof location, "%.*s", (int)(len - 12), b + 10);
  return len;
}

static size_t sink(char *b, size_t size, size_t n, void *ud) { return size * n; }

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec + ts.tv_nsec / 1e9;
}

static long put(CURL *c, const char *url, const char *range, const char *data, size_t n) {
  struct curl_slist *h = NULL;
  char cr[128];
  snprintf(cr, sizeof cr, "Content-Range: %s", range);
  h = curl_slist_append(h, cr);
  h = curl_slist_append(h, "Expect:");
  curl_easy_setopt(c, CURLOPT_URL, url);
  curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, "PUT");
  curl_easy_setopt(c, CURLOPT_HTTPHEADER, h);
  curl_easy_setopt(c, CURLOPT_POSTFIELDS, data);
  curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)n);
  long status = 0;
  curl_off_t sent = 0;
  if (curl_easy_perform(c) == CURLE_OK) curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status);
  curl_easy_getinfo(c, CURLINFO_SIZE_UPLOAD_T, &sent);
  if ((size_t)sent != n) status = -1; /* a server that answered early did not take the body */
  curl_slist_free_all(h);
  return status;
}

int main(int argc, char **argv) {
  if (argc != 4) return fprintf(stderr, "usage: upload URL total_mib chunk_mib\n"), 2;
  uint64_t total = strtoull(argv[2], NULL, 10) << 20, chunk = strtoull(argv[3], NULL, 10) << 20;
  char *data = malloc(chunk);
  uint64_t x = 88172645463325252ull;
  for (size_t i = 0; i < chunk; i++) x ^= x << 13, x ^= x >> 7, x ^= x << 17, data[i] = (char)x;
  curl_global_init(CURL_GLOBAL_ALL);
  CURL *c = curl_easy_init();
  curl_easy_setopt(c, CURLOPT_HEADERFUNCTION, on_header);
  curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, sink);
  const char *url = argv[1];
  if (strstr(url, "/upload/storage/v1/")) {
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_POSTFIELDS, "{}");
    if (curl_easy_perform(c) != CURLE_OK || !location[0]) return fprintf(stderr, "no session\n"), 1;
    url = location;
  }
  double t0 = now();
  for (uint64_t off = 0; off < total; off += chunk) {
    char range[128];
    bool final = off + chunk >= total;
    snprintf(range, sizeof range, final ? "bytes %llu-%llu/%llu" : "bytes %llu-%llu/*",
             (unsigned long long)off, (unsigned long long)(off + chunk - 1),
             (unsigned long long)total);
    long st = put(c, url, range, data, chunk);
    if (st != 308 && st != 200) return fprintf(stderr, "status %ld at %llu\n", st, (unsigned long long)off), 1;
  }
  double dt = now() - t0;
  printf("%.3f %llu %.1f\n", dt, (unsigned long long)total, total / dt / 1048576.0);
  curl_easy_cleanup(c);
  free(data);
  return 0;
}
