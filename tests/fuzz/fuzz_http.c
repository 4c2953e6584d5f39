/* libFuzzer harness: raw HTTP requests to the fake GCS over a socket.
 * Occurrences of "@ID@" in the input become the upload_id of a live session,
 * and "@RT@" the id of a live retry test, so inputs reach chunk handling and
 * faults. After each input the server must still answer a health check.
 * Build and run: tests/fuzz/run.sh [seconds] */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <errno.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "testbed/fakegcs.h"

static rw_fakegcs *srv;
static char session_id[64] = "none", retry_id[32] = "none";
static int counter, last_poll, last_errno;
static ssize_t last_recv;

/* libFuzzer's -timeout alarm (SIGALRM) can interrupt a blocking connect: the
 * connection then completes in the background, so wait for it and read its
 * result instead of treating EINTR as "the server stopped accepting". */
static int dial(void) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)rw_fakegcs_port(srv))};
  inet_pton(AF_INET, "127.0.0.1", &sa.sin_addr);
  int rc = connect(fd, (struct sockaddr *)&sa, sizeof sa), e = rc == 0 ? 0 : errno;
  if (rc != 0 && (e == EINTR || e == EINPROGRESS)) {
    struct pollfd p = {.fd = fd, .events = POLLOUT};
    int pr;
    for (int i = 0; i < 100 && (pr = poll(&p, 1, 100)) <= 0; i++)
      if (pr < 0 && errno != EINTR) break;
    socklen_t el = sizeof e;
    if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &e, &el) != 0) e = errno;
    if (e == 0 && !(p.revents & POLLOUT)) e = ETIMEDOUT;
  }
  if (e != 0) {
    fprintf(stderr, "fuzz_http: connect to the fake failed: %s\n", strerror(e));
    close(fd);
    return -1;
  }
  return fd;
}

/* Sends req, reads the reply into buf until close or timeout. */
static size_t exchange(const char *req, size_t len, char *buf, size_t cap, int timeout_ms) {
  int fd = dial();
  if (fd < 0) abort(); /* the server must keep accepting */
  for (size_t off = 0; off < len;) {
    ssize_t w = send(fd, req + off, len - off, MSG_NOSIGNAL);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) break;
    off += (size_t)w;
  }
  shutdown(fd, SHUT_WR);
  size_t got = 0;
  struct pollfd p = {.fd = fd, .events = POLLIN};
  int pr = 0;
  ssize_t r = 0;
  /* libFuzzer's -timeout alarm interrupts poll: retry on EINTR */
  while (got < cap - 1 && ((pr = poll(&p, 1, timeout_ms)) > 0 || (pr < 0 && errno == EINTR))) {
    if (pr < 0) continue;
    r = recv(fd, buf + got, cap - 1 - got, 0);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) break;
    got += (size_t)r;
  }
  last_poll = pr, last_recv = r, last_errno = r < 0 ? errno : 0;
  buf[got] = 0;
  close(fd);
  return got;
}

static void find_value(const char *reply, const char *key, char *out, size_t cap) {
  const char *p = strstr(reply, key);
  if (!p) return;
  p += strlen(key);
  size_t n = strcspn(p, "&\"\r\n ");
  if (n >= cap) n = cap - 1;
  memcpy(out, p, n);
  out[n] = 0;
}

static void refresh_ids(void) {
  char buf[4096];
  const char *start =
      "POST /upload/storage/v1/b/b/o?uploadType=resumable&name=fz HTTP/1.1\r\nHost: x\r\n"
      "Content-Length: 2\r\nConnection: close\r\n\r\n{}";
  exchange(start, strlen(start), buf, sizeof buf, 2000);
  find_value(buf, "upload_id=", session_id, sizeof session_id);
  const char *rt_body = "{\"instructions\":{\"storage.objects.insert\":[\"return-503-after-256K\","
                        "\"return-broken-stream\",\"stall-for-0.01s-after-1K\"]}}";
  char rt[512];
  snprintf(rt, sizeof rt, "POST /retry_test HTTP/1.1\r\nHost: x\r\nContent-Length: %zu\r\n"
           "Connection: close\r\n\r\n%s", strlen(rt_body), rt_body);
  exchange(rt, strlen(rt), buf, sizeof buf, 2000);
  find_value(buf, "\"id\":\"", retry_id, sizeof retry_id);
}

static char *substitute(const uint8_t *data, size_t size, size_t *out_len) {
  char *out = malloc(size * 16 + 1);
  size_t o = 0;
  for (size_t i = 0; i < size;) {
    if (i + 4 <= size && memcmp(data + i, "@ID@", 4) == 0) {
      o += (size_t)sprintf(out + o, "%s", session_id), i += 4;
    } else if (i + 4 <= size && memcmp(data + i, "@RT@", 4) == 0) {
      o += (size_t)sprintf(out + o, "%s", retry_id), i += 4;
    } else {
      out[o++] = (char)data[i++];
    }
  }
  *out_len = o;
  return out;
}

int LLVMFuzzerInitialize(int *argc, char ***argv) {
  const char *buckets[] = {"b", NULL};
  rw_fakegcs_config cfg = {.buckets = buckets};
  rw_error *err = NULL;
  srv = rw_fakegcs_start(&cfg, &err);
  if (!srv) abort();
  refresh_ids();
  return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  static char reply[1 << 16];
  if (++counter % 50 == 0) refresh_ids();
  size_t len;
  char *req = substitute(data, size, &len);
  exchange(req, len, reply, sizeof reply, 1000);
  free(req);
  /* A reply, when there is one, is HTTP; JSON errors are JSON objects. */
  if (strncmp(reply, "HTTP/1.", 7) != 0 && reply[0]) abort();
  const char *health = "GET /storage/v1/b/b HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
  exchange(health, strlen(health), reply, sizeof reply, 5000);
  if (!strstr(reply, " 200 ")) {
    fprintf(stderr, "health check failed after input; poll=%d recv=%zd errno=%d reply: %.200s\n",
            last_poll, last_recv, last_errno, reply);
    if (getenv("FUZZ_GDB"))
      system("gdb -p $PPID -batch -ex 'thread apply all bt 10' 2>/dev/null | grep -E '^#|^Thread'");
    abort();
  }
  return 0;
}
