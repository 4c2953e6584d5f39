/* Reference client for bench/writer: a plain libcurl resumable upload of a
 * file in CHUNK-byte PUTs over one connection, no retry logic.
 *   curl_ref ENDPOINT BUCKET OBJECT FILE chunk_mib
 * POSTs to start a session, read()s each chunk of FILE into one buffer,
 * chains the CRC32C (ISA-L) and PUTs the chunk with Content-Range; the final
 * chunk carries X-Goog-Hash: crc32c=... and the total. Checks the object's
 * crc32c in the reply. Prints "seconds bytes MiB/s crc32c_b64".
 * Adapted from bench/fakegcs/upload.c. */
#include <curl/curl.h>
#include <fcntl.h>
#include <isa-l/crc.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static char location[2048];
static char body[8192];
static size_t body_len;

static size_t on_header(char *b, size_t size, size_t n, void *ud) {
  (void)ud;
  size_t len = size * n;
  if (len > 10 && strncasecmp(b, "Location: ", 10) == 0)
    snprintf(location, sizeof location, "%.*s", (int)(len - 12), b + 10);
  return len;
}

static size_t on_body(char *b, size_t size, size_t n, void *ud) {
  (void)ud;
  size_t len = size * n, room = sizeof body - 1 - body_len;
  memcpy(body + body_len, b, len < room ? len : room);
  body_len += len < room ? len : room;
  body[body_len] = 0;
  return len;
}

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void b64(const unsigned char *in, size_t n, char *out) {
  static const char t[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  size_t i, o = 0;
  for (i = 0; i + 2 < n; i += 3) {
    uint32_t v = (uint32_t)in[i] << 16 | (uint32_t)in[i + 1] << 8 | in[i + 2];
    out[o++] = t[v >> 18], out[o++] = t[(v >> 12) & 63], out[o++] = t[(v >> 6) & 63], out[o++] = t[v & 63];
  }
  if (n - i == 1) {
    uint32_t v = (uint32_t)in[i] << 16;
    out[o++] = t[v >> 18], out[o++] = t[(v >> 12) & 63], out[o++] = '=', out[o++] = '=';
  } else if (n - i == 2) {
    uint32_t v = (uint32_t)in[i] << 16 | (uint32_t)in[i + 1] << 8;
    out[o++] = t[v >> 18], out[o++] = t[(v >> 12) & 63], out[o++] = t[(v >> 6) & 63], out[o++] = '=';
  }
  out[o] = 0;
}

static long put(CURL *c, const char *url, const char *range, const char *hash, const char *data,
                size_t n) {
  struct curl_slist *h = NULL;
  char cr[160];
  snprintf(cr, sizeof cr, "Content-Range: %s", range);
  h = curl_slist_append(h, cr);
  h = curl_slist_append(h, "Expect:");
  if (hash) h = curl_slist_append(h, hash);
  curl_easy_setopt(c, CURLOPT_URL, url);
  curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, "PUT");
  curl_easy_setopt(c, CURLOPT_HTTPHEADER, h);
  curl_easy_setopt(c, CURLOPT_POSTFIELDS, data);
  curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)n);
  long status = 0;
  curl_off_t sent = 0;
  body_len = 0;
  if (curl_easy_perform(c) == CURLE_OK) curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status);
  curl_easy_getinfo(c, CURLINFO_SIZE_UPLOAD_T, &sent);
  if ((size_t)sent != n) status = -1;
  curl_slist_free_all(h);
  return status;
}

int main(int argc, char **argv) {
  if (argc != 6) return fprintf(stderr, "usage: curl_ref ENDPOINT BUCKET OBJECT FILE chunk_mib\n"), 2;
  const char *ep = argv[1], *bucket = argv[2], *object = argv[3], *path = argv[4];
  size_t chunk = strtoull(argv[5], NULL, 10) << 20;
  int fd = open(path, O_RDONLY);
  struct stat st;
  if (fd < 0 || fstat(fd, &st) != 0) return perror(path), 1;
  uint64_t total = (uint64_t)st.st_size;
  char *data = malloc(chunk);
  curl_global_init(CURL_GLOBAL_ALL);
  CURL *c = curl_easy_init();
  curl_easy_setopt(c, CURLOPT_HEADERFUNCTION, on_header);
  curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_body);
  char init[4096];
  snprintf(init, sizeof init, "%s/upload/storage/v1/b/%s/o?uploadType=resumable&name=%s", ep, bucket,
           object);
  double t0 = now();
  struct curl_slist *ih = curl_slist_append(NULL, "Content-Type: application/json");
  ih = curl_slist_append(ih, "X-Upload-Content-Type: application/octet-stream");
  curl_easy_setopt(c, CURLOPT_URL, init);
  curl_easy_setopt(c, CURLOPT_HTTPHEADER, ih);
  curl_easy_setopt(c, CURLOPT_POSTFIELDS, "{}");
  if (curl_easy_perform(c) != CURLE_OK || !location[0]) return fprintf(stderr, "no session\n"), 1;
  curl_slist_free_all(ih);
  char url[2048];
  snprintf(url, sizeof url, "%s", location);
  uint32_t crc = 0;
  char crc_b64[16] = "";
  for (uint64_t off = 0; off < total || total == 0; off += chunk) {
    size_t n = total - off < chunk ? (size_t)(total - off) : chunk, got = 0;
    while (got < n) {
      ssize_t r = pread(fd, data + got, n - got, (off_t)(off + got));
      if (r <= 0) return perror("read"), 1;
      got += (size_t)r;
    }
    crc = crc32_iscsi((unsigned char *)data, (int)n, crc ^ 0xFFFFFFFFu) ^ 0xFFFFFFFFu;
    bool final = off + n >= total;
    char range[128], hash[64];
    if (n == 0)
      snprintf(range, sizeof range, "bytes */0");
    else
      snprintf(range, sizeof range, final ? "bytes %llu-%llu/%llu" : "bytes %llu-%llu/*",
               (unsigned long long)off, (unsigned long long)(off + n - 1), (unsigned long long)total);
    if (final) {
      unsigned char be[4] = {crc >> 24, crc >> 16, crc >> 8, crc};
      b64(be, 4, crc_b64);
      snprintf(hash, sizeof hash, "X-Goog-Hash: crc32c=%s", crc_b64);
    }
    long code = put(c, url, range, final ? hash : NULL, data, n);
    if (final ? (code != 200 && code != 201) : code != 308)
      return fprintf(stderr, "status %ld at %llu\n", code, (unsigned long long)off), 1;
    if (final) {
      char want[40];
      snprintf(want, sizeof want, "\"crc32c\":\"%s\"", crc_b64);
      if (!strstr(body, want)) return fprintf(stderr, "crc32c mismatch: %s\n", body), 1;
      break;
    }
  }
  double dt = now() - t0;
  printf("%.3f %llu %.1f %s\n", dt, (unsigned long long)total, total / dt / 1048576.0, crc_b64);
  curl_easy_cleanup(c);
  free(data);
  close(fd);
  return 0;
}
