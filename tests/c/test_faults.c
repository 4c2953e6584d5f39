/* net/faults and net/chaos: schedules, relays through the chaos proxy to an
 * echo server (no faults, reset, close, truncate, stall, latency, bandwidth,
 * refuse), and the libcurl dialer against the fake GCS (upload, refused,
 * cancel while blackholed). Run under ASan and TSan by make check-*. */
#include <arpa/inet.h>
#include <errno.h>
#include <math.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <sys/socket.h>

#include "core/backoff.h"
#include "core/clock.h"
#include "ctest.h"
#include "fake/fakegcs.h"
#include "net/chaos.h"
#include "net/faults.h"
#include "net/http.h"

static unsigned seed;

/* ---- an echo server: one thread, one connection at a time ---- */

typedef struct echo {
  int lfd;
  atomic_bool stop;
  pthread_t th;
  char addr[64];
} echo;

static void *echo_main(void *arg) {
  echo *e = arg;
  while (!atomic_load(&e->stop)) {
    struct pollfd p = {e->lfd, POLLIN, 0};
    if (poll(&p, 1, 50) <= 0) continue;
    int fd = accept(e->lfd, NULL, NULL);
    if (fd < 0) continue;
    char buf[65536];
    for (;;) {
      struct pollfd q = {fd, POLLIN, 0};
      int rc = poll(&q, 1, 50);
      if (atomic_load(&e->stop)) break;
      if (rc <= 0) continue;
      ssize_t n = recv(fd, buf, sizeof buf, 0);
      if (n <= 0) break;
      ssize_t off = 0;
      while (off < n) {
        ssize_t w = send(fd, buf + off, (size_t)(n - off), MSG_NOSIGNAL);
        if (w <= 0) break;
        off += w;
      }
      if (off < n) break;
    }
    close(fd);
  }
  return NULL;
}

static void echo_start(echo *e) {
  memset(e, 0, sizeof *e);
  e->lfd = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  socklen_t len = sizeof a;
  bind(e->lfd, (struct sockaddr *)&a, sizeof a);
  listen(e->lfd, 16);
  getsockname(e->lfd, (struct sockaddr *)&a, &len);
  snprintf(e->addr, sizeof e->addr, "127.0.0.1:%d", ntohs(a.sin_port));
  pthread_create(&e->th, NULL, echo_main, e);
}

static void echo_stop(echo *e) {
  atomic_store(&e->stop, true);
  pthread_join(e->th, NULL);
  close(e->lfd);
}

static int dial(const rw_chaos *p) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)rw_chaos_port(p)),
                          .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  if (connect(fd, (struct sockaddr *)&a, sizeof a) < 0) {
    close(fd);
    return -1;
  }
  return fd;
}

/* Sends len bytes and reads the echo back at the same time. Returns the bytes
 * echoed (== len when nothing broke); *err gets errno of a failure (0: EOF). */
static size_t echo_roundtrip(int fd, const unsigned char *data, size_t len, unsigned char *back, int *err,
                             double timeout) {
  size_t sent = 0, got = 0;
  *err = 0;
  double until = rw_mono_now() + timeout;
  while (got < len && rw_mono_now() < until) {
    struct pollfd p = {fd, (short)(POLLIN | (sent < len ? POLLOUT : 0)), 0};
    if (poll(&p, 1, 50) <= 0) continue;
    if (p.revents & POLLIN) {
      ssize_t n = recv(fd, back + got, len - got, 0);
      if (n <= 0) {
        *err = n < 0 ? errno : 0;
        return got;
      }
      got += (size_t)n;
    }
    if (sent < len && (p.revents & POLLOUT)) {
      size_t chunk = len - sent < 65536 ? len - sent : 65536;
      ssize_t n = send(fd, data + sent, chunk, MSG_NOSIGNAL | MSG_DONTWAIT);
      if (n < 0 && errno != EAGAIN) {
        *err = errno;
        return got;
      }
      if (n > 0) sent += (size_t)n;
    }
  }
  return got;
}

static unsigned char *random_bytes(size_t n, uint64_t *rng) {
  unsigned char *b = malloc(n);
  for (size_t i = 0; i < n; i++) b[i] = (unsigned char)(rw_rand_next(rng) >> 56);
  return b;
}

static rw_faults *profile(rw_faults_config c) {
  rw_error *e = NULL;
  rw_faults *f = rw_faults_new(&c, &e);
  CHECK(f != NULL);
  rw_error_unref(e);
  return f;
}

static rw_chaos *proxy(const echo *up, rw_faults *f) {
  rw_chaos_config cc = {.listen = "127.0.0.1:0", .upstream = up->addr, .profile = f};
  rw_error *e = NULL;
  rw_chaos *p = rw_chaos_start(&cc, &e);
  CHECK(p != NULL);
  rw_error_unref(e);
  return p;
}

/* ---- tests ---- */

static void test_config_check(void) {
  const struct { rw_faults_config c; const char *needle; } bad[] = {
      {{.refuse = 1.5}, "refuse"},           {{.reset_per_mib = -1}, "reset_per_mib"},
      {{.stall_per_mib = NAN}, "stall_per_mib"}, {{.latency = 61}, "latency"},
      {{.bandwidth = 10}, "bandwidth"},      {{.stall_for = 1e9}, "stall_for"},
      {{.truncate_per_mib = INFINITY}, "truncate_per_mib"}};
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    rw_error *e = NULL;
    rw_faults *f = rw_faults_new(&bad[i].c, &e);
    CHECK(f == NULL);
    CHECK(e && strcmp(rw_error_code(e), RW_E_INVALID) == 0);
    CHECK(e && strstr(rw_error_message(e), bad[i].needle) != NULL);
    rw_error_unref(e);
  }
  rw_faults_config ok = {.stall_for = -1, .bandwidth = 1e6};
  CHECK(rw_faults_config_check(&ok) == NULL);
  CHECK(strcmp(rw_fault_kind_name(RW_FAULT_TRUNCATE), "truncate") == 0);
}

static void test_plans(void) {
  rw_faults_config c = {.seed = seed, .reset_per_mib = 0.25, .stall_per_mib = 1.0 / 32, .refuse = 0.3};
  rw_faults_config c2 = c;
  c2.seed = seed + 1;
  int same = 0, refused = 0, differ = 0;
  double sum = 0;
  for (uint64_t i = 0; i < 2000; i++) {
    rw_faults_plan a, b, d;
    memset(&b, 0xff, sizeof b);
    rw_faults_plan_of(&c, i, &a);
    rw_faults_plan_of(&c, i, &b);
    rw_faults_plan_of(&c2, i, &d);
    same += a.refused == b.refused && a.reset_at == b.reset_at && a.stall_at == b.stall_at &&
            a.close_at == b.close_at && a.truncate_at == b.truncate_at;
    differ += a.reset_at != d.reset_at;
    refused += a.refused;
    sum += (double)a.reset_at;
    CHECK(a.close_at == UINT64_MAX && a.truncate_at == UINT64_MAX);
  }
  CHECK_EQ_INT(same, 2000);
  CHECK(differ > 1990);
  CHECK(refused > 500 && refused < 700); /* 30% of 2000 */
  double mean_mib = sum / 2000 / 1048576.0;
  CHECK(mean_mib > 3.5 && mean_mib < 4.5); /* one reset per 4 MiB on average */
}

static void test_proxy_clean(void) {
  echo up;
  echo_start(&up);
  rw_faults *f = profile((rw_faults_config){.seed = seed});
  rw_chaos *p = proxy(&up, f);
  CHECK(strncmp(rw_chaos_url(p), "http://127.0.0.1:", 17) == 0);
  uint64_t rng = seed;
  size_t n = 3 * 1048576 + 17;
  unsigned char *data = random_bytes(n, &rng), *back = malloc(n);
  for (int round = 0; round < 3; round++) {
    int fd = dial(p), err;
    CHECK(fd >= 0);
    CHECK_EQ_INT(echo_roundtrip(fd, data, n, back, &err, 10), n);
    CHECK(memcmp(data, back, n) == 0);
    close(fd);
  }
  rw_chaos_stop(p); /* joins the relays: their counts are final */
  rw_faults_stats st;
  rw_faults_stats_read(f, &st);
  CHECK_EQ_INT(st.connections, 3);
  CHECK_EQ_INT(st.bytes_up, 3 * n);
  CHECK_EQ_INT(st.bytes_down, 3 * n);
  CHECK_EQ_INT(st.resets + st.closes + st.stalls + st.refused, 0);
  CHECK_EQ_INT(st.active, 0);
  rw_faults_unref(f);
  free(data);
  free(back);
  echo_stop(&up);
}

/* One fault kind at a high rate: the connection breaks where the plan says. */
static void test_proxy_breaks(void) {
  echo up;
  echo_start(&up);
  uint64_t rng = seed ^ 99;
  size_t n = 4 * 1048576;
  unsigned char *data = random_bytes(n, &rng), *back = malloc(n);
  const struct { rw_faults_config c; rw_fault_kind kind; } cases[] = {
      {{.seed = seed, .reset_per_mib = 2}, RW_FAULT_RESET},
      {{.seed = seed, .close_per_mib = 2}, RW_FAULT_CLOSE},
      {{.seed = seed, .truncate_per_mib = 2}, RW_FAULT_TRUNCATE}};
  for (size_t i = 0; i < 3; i++) {
    rw_faults *f = profile(cases[i].c);
    rw_chaos *p = proxy(&up, f);
    rw_faults_plan plan;
    rw_faults_plan_of(&cases[i].c, 0, &plan);
    int fd = dial(p), err;
    size_t got = echo_roundtrip(fd, data, n, back, &err, 10);
    close(fd);
    uint64_t at = cases[i].kind == RW_FAULT_RESET ? plan.reset_at
                  : cases[i].kind == RW_FAULT_CLOSE ? plan.close_at : plan.truncate_at;
    rw_fault_event ev[4];
    size_t nev = rw_faults_events(f, ev, 4);
    if (at < n) { /* the plan falls inside this transfer (with rate 2/MiB: nearly always) */
      CHECK(got < n);
      CHECK(memcmp(data, back, got) == 0);
      CHECK_EQ_INT(nev, 1);
      CHECK(nev >= 1 && ev[0].kind == cases[i].kind && ev[0].pos == at && ev[0].conn == 0);
      if (cases[i].kind == RW_FAULT_RESET) CHECK_EQ_INT(err, ECONNRESET);
      else CHECK(err == 0 || err == EPIPE || err == ECONNRESET); /* EOF, or sending after it */
    }
    rw_chaos_stop(p);
    rw_faults_unref(f);
  }
  free(data);
  free(back);
  echo_stop(&up);
}

static void test_proxy_refuse_and_pace(void) {
  echo up;
  echo_start(&up);
  rw_faults *f = profile((rw_faults_config){.seed = seed, .refuse = 1});
  rw_chaos *p = proxy(&up, f);
  int fd = dial(p), err;
  unsigned char b[4] = {1, 2, 3, 4}, back[4];
  CHECK_EQ_INT(echo_roundtrip(fd, b, 4, back, &err, 2), 0);
  CHECK(err == ECONNRESET || err == 0 || err == EPIPE);
  close(fd);
  rw_chaos_stop(p);
  rw_faults_stats st;
  rw_faults_stats_read(f, &st);
  CHECK_EQ_INT(st.refused, 1);
  rw_faults_unref(f);

  /* 1 MiB/s each way: 512 KiB takes about 0.5 s; 100 ms latency each way. */
  f = profile((rw_faults_config){.seed = seed, .bandwidth = 1048576, .latency = 0.1});
  p = proxy(&up, f);
  size_t n = 512 * 1024;
  uint64_t rng = seed;
  unsigned char *data = random_bytes(n, &rng), *bk = malloc(n);
  fd = dial(p);
  double t0 = rw_mono_now();
  CHECK_EQ_INT(echo_roundtrip(fd, data, n, bk, &err, 10), n);
  double dt = rw_mono_now() - t0;
  CHECK(memcmp(data, bk, n) == 0);
  if (!(dt > 0.45 && dt < 3)) fprintf(stderr, "512 KiB at 1 MiB/s took %.3f s\n", dt);
  CHECK(dt > 0.45 && dt < 3);
  unsigned char one = 7, r;
  t0 = rw_mono_now();
  CHECK_EQ_INT(echo_roundtrip(fd, &one, 1, &r, &err, 5), 1);
  dt = rw_mono_now() - t0;
  CHECK(dt >= 0.2 && dt < 1);
  close(fd);
  rw_chaos_stop(p);
  rw_faults_unref(f);
  free(data);
  free(bk);
  echo_stop(&up);
}

static void test_proxy_blackhole_stop(void) {
  echo up;
  echo_start(&up);
  rw_faults *f = profile((rw_faults_config){.seed = seed, .stall_per_mib = 16, .stall_for = -1});
  rw_chaos *p = proxy(&up, f);
  size_t n = 1048576;
  uint64_t rng = seed;
  unsigned char *data = random_bytes(n, &rng), *back = malloc(n);
  rw_faults_stats st;
  int err;
  /* A client that aborts (RST) a blackholed connection ends its relay. (A
   * plain close cannot be seen: its FIN waits behind the unsent bytes.) */
  int fd = dial(p);
  CHECK(echo_roundtrip(fd, data, n, back, &err, 0.5) < n);
  rw_faults_stats_read(f, &st);
  CHECK_EQ_INT(st.stalls, 1);
  CHECK_EQ_INT(st.active, 1);
  struct linger l = {1, 0};
  setsockopt(fd, SOL_SOCKET, SO_LINGER, &l, sizeof l);
  close(fd);
  double t1 = rw_mono_now();
  while (rw_mono_now() - t1 < 1 && (rw_faults_stats_read(f, &st), st.active) > 0) usleep(10000);
  CHECK_EQ_INT(st.active, 0);
  CHECK(rw_mono_now() - t1 < 0.5);
  /* Stop ends a blackholed relay at once. */
  fd = dial(p);
  CHECK(echo_roundtrip(fd, data, n, back, &err, 0.5) < n);
  rw_faults_stats_read(f, &st);
  CHECK_EQ_INT(st.stalls, 2);
  CHECK_EQ_INT(st.active, 1);
  double t0 = rw_mono_now();
  rw_chaos_stop(p);
  CHECK(rw_mono_now() - t0 < 0.2);
  rw_faults_stats_read(f, &st);
  CHECK_EQ_INT(st.active, 0);
  close(fd);
  rw_faults_unref(f);
  free(data);
  free(back);
  echo_stop(&up);
}

/* ---- the dialer under libcurl, against the fake GCS ---- */

typedef struct cancel_arg {
  rw_ctx *ctx;
  double after;
} cancel_arg;

static void *cancel_later(void *arg) {
  cancel_arg *a = arg;
  usleep((useconds_t)(a->after * 1e6));
  rw_ctx_cancel(a->ctx, NULL);
  return NULL;
}

static rw_error *media_upload(rw_fakegcs *srv, rw_faults *f, rw_ctx *ctx, const char *name,
                              const unsigned char *data, size_t n, int *status) {
  rw_http_dialer d = rw_faults_dialer(f);
  rw_http_config hc = {.dialer = &d, .connect_timeout = 2};
  rw_error *e = NULL;
  rw_http *h = rw_http_new(&hc, &e);
  if (!h) return e;
  char url[256];
  snprintf(url, sizeof url, "%s/upload/storage/v1/b/b/o?uploadType=media&name=%s", rw_fakegcs_url(srv), name);
  struct iovec iov = {(void *)data, n};
  const char *hdrs[] = {"Content-Type: application/octet-stream", NULL};
  rw_http_request rq = {.method = "POST", .url = url, .headers = hdrs, .iov = &iov, .iovcnt = 1, .len = n,
                        .stall_timeout = 30};
  rw_http_response res;
  e = rw_http_do(h, ctx, &rq, &res);
  *status = res.status;
  rw_http_response_clear(&res);
  rw_http_free(h);
  return e;
}

static void test_dialer(void) {
  const char *buckets[] = {"b", NULL};
  rw_fakegcs_config fc = {.store = RW_FAKEGCS_MEMORY, .buckets = buckets};
  rw_error *e = NULL;
  rw_fakegcs *srv = rw_fakegcs_start(&fc, &e);
  CHECK(srv != NULL);
  if (!srv) return;
  size_t n = 2 * 1048576 + 5;
  uint64_t rng = seed;
  unsigned char *data = random_bytes(n, &rng);
  rw_ctx *bg = rw_ctx_background();
  int status = 0;

  /* Clean: the bytes arrive. */
  rw_faults *f = profile((rw_faults_config){.seed = seed});
  e = media_upload(srv, f, bg, "clean", data, n, &status);
  CHECK(e == NULL);
  CHECK_EQ_INT(status, 200);
  rw_error_unref(e);
  rw_fakegcs_object o;
  CHECK(rw_fakegcs_object_get(srv, "b", "clean", &o));
  CHECK(o.size == n && o.data && memcmp(o.data, data, n) == 0);
  rw_fakegcs_object_free(&o);
  rw_faults_stats st;
  rw_faults_stats_read(f, &st);
  CHECK_EQ_INT(st.connections, 1);
  CHECK(st.bytes_up > n);
  CHECK_EQ_INT(st.active, 0); /* joined on CURLOPT_CLOSESOCKETFUNCTION */
  rw_faults_unref(f);

  /* Refused: net.refused. */
  f = profile((rw_faults_config){.seed = seed, .refuse = 1});
  e = media_upload(srv, f, bg, "refused", data, n, &status);
  CHECK(e && strcmp(rw_error_code(e), RW_E_NET_REFUSED) == 0);
  rw_error_unref(e);
  rw_faults_unref(f);

  /* Reset mid-body: a retryable net.* error. */
  f = profile((rw_faults_config){.seed = seed, .reset_per_mib = 8});
  e = media_upload(srv, f, bg, "reset", data, n, &status);
  CHECK(e && strncmp(rw_error_code(e), "net.", 4) == 0 && rw_error_retryable(e));
  rw_error_unref(e);
  rw_faults_stats_read(f, &st);
  CHECK_EQ_INT(st.resets, 1);
  rw_faults_unref(f);

  /* Blackholed: cancelling the context ends it at once, relay joined. */
  f = profile((rw_faults_config){.seed = seed, .stall_per_mib = 16, .stall_for = -1});
  rw_ctx *ctx = rw_ctx_with_cancel(bg);
  cancel_arg ca = {ctx, 0.5};
  pthread_t th;
  pthread_create(&th, NULL, cancel_later, &ca);
  double t0 = rw_mono_now();
  e = media_upload(srv, f, ctx, "hole", data, n, &status);
  double dt = rw_mono_now() - t0;
  pthread_join(th, NULL);
  CHECK(e != NULL);
  CHECK(dt < 0.5 + 0.2);
  rw_error_unref(e);
  rw_faults_stats_read(f, &st);
  CHECK_EQ_INT(st.stalls, 1);
  CHECK_EQ_INT(st.active, 0);
  rw_ctx_unref(ctx);
  rw_faults_unref(f);

  rw_ctx_unref(bg);
  free(data);
  rw_fakegcs_stop(srv);
}

static void test_chaos_errors(void) {
  rw_error *e = NULL;
  rw_chaos_config c = {.upstream = NULL};
  CHECK(rw_chaos_start(&c, &e) == NULL);
  CHECK(e && strstr(rw_error_message(e), "upstream"));
  rw_error_unref(e);
  /* A 70-byte label: the resolver library refuses it (labels > 63 bytes)
   * without asking any DNS server; a plain "x.invalid" would query the
   * configured nameserver, and this test must not send past loopback. */
  c.upstream = "http://"
               "uuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuu"
               ".invalid:80/";
  e = NULL;
  CHECK(rw_chaos_start(&c, &e) == NULL);
  CHECK(e && strcmp(rw_error_code(e), RW_E_NET_DNS) == 0);
  rw_error_unref(e);
  c.upstream = "127.0.0.1:9";
  c.listen = "127.0.0.1:1"; /* privileged or taken: cannot listen (unless root) */
  e = NULL;
  rw_chaos *p = rw_chaos_start(&c, &e);
  if (p) rw_chaos_stop(p); /* as root port 1 is fine */
  else CHECK(e && strstr(rw_error_message(e), "listen"));
  rw_error_unref(e);
}

int main(void) {
  signal(SIGPIPE, SIG_IGN);
  seed = ct_seed();
  RUN(test_config_check);
  RUN(test_plans);
  RUN(test_proxy_clean);
  RUN(test_proxy_breaks);
  RUN(test_proxy_refuse_and_pace);
  RUN(test_proxy_blackhole_stop);
  RUN(test_dialer);
  RUN(test_chaos_errors);
  return ct_finish("test_faults");
}
