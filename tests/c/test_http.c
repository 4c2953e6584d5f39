/* The curl glue's error classification: a table over every curl code it
 * names, then the two TLS cases end to end on loopback: a certificate that
 * fails verification is net.tls_verify (never retried), a handshake cut by
 * the peer is net.tls (retried). */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <openssl/evp.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <poll.h>
#include <pthread.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>

#include "core/backoff.h"
#include "core/clock.h"
#include "ctest.h"
#include "net/http.h"
#include "sinks/gcs.h"

static uint64_t rng;

typedef struct row {
  CURLcode rc;
  long os_errno;
  const char *code;
  bool retryable;
} row;

static const row table[] = {
    {CURLE_COULDNT_CONNECT, ECONNREFUSED, RW_E_NET_REFUSED, true},
    {CURLE_COULDNT_CONNECT, 0, RW_E_NET_REFUSED, true},
    {CURLE_COULDNT_CONNECT, ETIMEDOUT, RW_E_NET_TIMEOUT, true},
    {CURLE_COULDNT_RESOLVE_HOST, 0, RW_E_NET_DNS, true},
    {CURLE_COULDNT_RESOLVE_PROXY, 0, RW_E_NET_DNS, true},
    {CURLE_SEND_ERROR, EPIPE, RW_E_NET_PIPE, true},
    {CURLE_SEND_ERROR, ECONNRESET, RW_E_NET_RESET, true},
    {CURLE_SEND_ERROR, 0, RW_E_NET_RESET, true},
    {CURLE_RECV_ERROR, ECONNRESET, RW_E_NET_RESET, true},
    {CURLE_RECV_ERROR, 0, RW_E_NET_RESET, true},
    {CURLE_GOT_NOTHING, 0, RW_E_NET_EOF, true},
    {CURLE_PARTIAL_FILE, 0, RW_E_NET_EOF, true},
    {CURLE_OPERATION_TIMEDOUT, 0, RW_E_NET_TIMEOUT, true},
    /* TLS on the wire: worth another attempt */
    {CURLE_SSL_CONNECT_ERROR, ECONNRESET, RW_E_NET_TLS, true},
    {CURLE_SSL_CONNECT_ERROR, 0, RW_E_NET_TLS, true},
    {CURLE_SSL_SHUTDOWN_FAILED, 0, RW_E_NET_TLS, true},
    /* certificates and local TLS setup: the same answer every time */
    {CURLE_PEER_FAILED_VERIFICATION, 0, RW_E_NET_TLS_VERIFY, false},
    {CURLE_SSL_CACERT, 0, RW_E_NET_TLS_VERIFY, false},
    {CURLE_SSL_CACERT_BADFILE, 0, RW_E_NET_TLS_VERIFY, false},
    {CURLE_SSL_CRL_BADFILE, 0, RW_E_NET_TLS_VERIFY, false},
    {CURLE_SSL_ISSUER_ERROR, 0, RW_E_NET_TLS_VERIFY, false},
    {CURLE_SSL_PINNEDPUBKEYNOTMATCH, 0, RW_E_NET_TLS_VERIFY, false},
    {CURLE_SSL_INVALIDCERTSTATUS, 0, RW_E_NET_TLS_VERIFY, false},
    {CURLE_SSL_CERTPROBLEM, 0, RW_E_NET_TLS_VERIFY, false},
    {CURLE_SSL_CLIENTCERT, 0, RW_E_NET_TLS_VERIFY, false},
    {CURLE_SSL_CIPHER, 0, RW_E_NET_TLS_VERIFY, false},
    {CURLE_SSL_ENGINE_NOTFOUND, 0, RW_E_NET_TLS_VERIFY, false},
    {CURLE_SSL_ENGINE_SETFAILED, 0, RW_E_NET_TLS_VERIFY, false},
    {CURLE_SSL_ENGINE_INITFAILED, 0, RW_E_NET_TLS_VERIFY, false},
    /* everything else: not known to be transient */
    {CURLE_URL_MALFORMAT, 0, RW_E_NET_OTHER, false},
    {CURLE_UNSUPPORTED_PROTOCOL, 0, RW_E_NET_OTHER, false},
    {CURLE_TOO_MANY_REDIRECTS, 0, RW_E_NET_OTHER, false},
    {CURLE_ABORTED_BY_CALLBACK, 0, RW_E_NET_OTHER, false},
    {CURLE_OUT_OF_MEMORY, ECONNRESET, RW_E_NET_OTHER, false},
};

/* The dialer seam (issue 9): a dialer value carries one reference on its
 * owner; whoever takes it releases it exactly once, on success and on every
 * failure path, so the binding keeps no wrapper alive to hold it. */
static int releases;
static void count_release(void *owner) {
  CHECK(owner == &releases);
  releases++;
}

static void test_dialer_release(void) {
  rw_http_dialer d = {.owner = &releases, .release = count_release};
  rw_http_config hc = {.dialer = &d};
  rw_error *e = NULL;
  releases = 0;
  rw_http *h = rw_http_new(&hc, &e);
  CHECK(h != NULL);
  CHECK_EQ_INT(releases, 0);
  rw_http_free(h);
  CHECK_EQ_INT(releases, 1);
  /* a gcs sink hands it to its client */
  rw_gcs_config gc = {.bucket = "b", .object = "o", .endpoint = "http://127.0.0.1:1", .dialer = &d};
  rw_sink *s = rw_gcs_sink_new(&gc, &e);
  CHECK(s != NULL);
  CHECK_EQ_INT(releases, 1);
  rw_sink_destroy(s);
  CHECK_EQ_INT(releases, 2);
  /* a config the sink rejects still releases it, once */
  gc.endpoint = "ftp://127.0.0.1:1";
  CHECK(rw_gcs_sink_new(&gc, &e) == NULL);
  CHECK(e != NULL);
  rw_error_unref(e);
  e = NULL;
  CHECK_EQ_INT(releases, 3);
  gc.endpoint = "http://127.0.0.1:1";
  gc.bucket = NULL;
  CHECK(rw_gcs_sink_new(&gc, &e) == NULL);
  rw_error_unref(e);
  CHECK_EQ_INT(releases, 4);
}

static void test_code_table(void) {
  for (size_t i = 0; i < sizeof table / sizeof table[0]; i++) {
    const row *r = &table[i];
    const char *got = rw_http_code_for_curl(r->rc, r->os_errno);
    if (strcmp(got, r->code) != 0)
      fprintf(stderr, "curl %d errno %ld: got %s, want %s\n", (int)r->rc, r->os_errno, got, r->code);
    CHECK(strcmp(got, r->code) == 0);
    CHECK(rw_code_retryable(got) == r->retryable);
  }
  /* every answer, for every curl code, is a registered code with a hint */
  for (int rc = 1; rc < CURL_LAST; rc++) {
    static const long errnos[] = {0, EPIPE, ECONNRESET, ETIMEDOUT};
    for (int k = 0; k < 4; k++) {
      const rw_code_info *ci = rw_code_lookup(rw_http_code_for_curl((CURLcode)rc, errnos[k]));
      CHECK(ci && ci->hint && ci->hint[0]);
    }
  }
  const rw_code_info *ci = rw_code_lookup(RW_E_NET_TLS_VERIFY);
  CHECK(ci && !ci->retryable && strstr(ci->hint, "certificate"));
}

/* ---- a loopback TLS server with a throwaway self-signed certificate ---- */

typedef struct tls_server {
  int lfd, port;
  SSL_CTX *ssl;
  bool cut; /* reset the connection in the middle of the handshake */
  pthread_t th;
  int accepted, handshakes_ok;
} tls_server;

static SSL_CTX *self_signed_ctx(void) {
  EVP_PKEY *key = EVP_EC_gen("P-256");
  X509 *x = X509_new();
  SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
  if (!key || !x || !ctx) goto fail;
  X509_set_version(x, 2);
  ASN1_INTEGER_set(X509_get_serialNumber(x), (long)(rw_rand_next(&rng) & 0x7fffffff));
  X509_gmtime_adj(X509_getm_notBefore(x), 0);
  X509_gmtime_adj(X509_getm_notAfter(x), 3600);
  X509_set_pubkey(x, key);
  X509_NAME *name = X509_get_subject_name(x);
  X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC, (const unsigned char *)"127.0.0.1", -1, -1, 0);
  X509_set_issuer_name(x, name);
  if (!X509_sign(x, key, EVP_sha256())) goto fail;
  if (SSL_CTX_use_certificate(ctx, x) != 1 || SSL_CTX_use_PrivateKey(ctx, key) != 1) goto fail;
  X509_free(x);
  EVP_PKEY_free(key);
  return ctx;
fail:
  SSL_CTX_free(ctx);
  X509_free(x);
  EVP_PKEY_free(key);
  return NULL;
}

/* Serves one connection (or gives up after 5 s). */
static void *tls_serve(void *arg) {
  tls_server *s = arg;
  struct pollfd p = {.fd = s->lfd, .events = POLLIN};
  if (poll(&p, 1, 5000) != 1) return NULL;
  int fd = accept(s->lfd, NULL, NULL);
  if (fd < 0) return NULL;
  s->accepted++;
  if (s->cut) {
    char hello[64];
    ssize_t n = recv(fd, hello, sizeof hello, 0); /* part of the ClientHello */
    (void)n;
    struct linger lg = {1, 0};
    setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg); /* close sends RST */
  } else {
    SSL *ssl = SSL_new(s->ssl);
    SSL_set_fd(ssl, fd);
    if (SSL_accept(ssl) == 1) s->handshakes_ok++; /* the client should refuse first */
    SSL_free(ssl);
  }
  close(fd);
  return NULL;
}

static bool tls_server_start(tls_server *s, bool cut) {
  memset(s, 0, sizeof *s);
  s->cut = cut;
  if (!(s->ssl = self_signed_ctx())) return false;
  s->lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  socklen_t al = sizeof a;
  if (bind(s->lfd, (struct sockaddr *)&a, sizeof a) || listen(s->lfd, 4) ||
      getsockname(s->lfd, (struct sockaddr *)&a, &al)) {
    close(s->lfd);
    SSL_CTX_free(s->ssl);
    return false;
  }
  s->port = ntohs(a.sin_port);
  pthread_create(&s->th, NULL, tls_serve, s);
  return true;
}

static void tls_server_stop(tls_server *s) {
  pthread_join(s->th, NULL);
  close(s->lfd);
  SSL_CTX_free(s->ssl);
}

/* One GET to the server; returns the error (NULL when it answered). */
static rw_error *get_from(const tls_server *s) {
  rw_error *e = NULL;
  rw_http *h = rw_http_new(NULL, &e);
  CHECK(h != NULL);
  if (!h) return e;
  char url[64];
  snprintf(url, sizeof url, "https://127.0.0.1:%d/", s->port);
  rw_http_request rq = {.method = "GET", .url = url, .stall_timeout = 5};
  rw_http_response res;
  rw_ctx *ctx = rw_ctx_with_timeout(NULL, 10);
  e = rw_http_do(h, ctx, &rq, &res);
  rw_http_response_clear(&res);
  rw_ctx_unref(ctx);
  rw_http_free(h);
  return e;
}

static void test_tls_self_signed(void) {
  tls_server s;
  CHECK(tls_server_start(&s, false));
  rw_error *e = get_from(&s);
  tls_server_stop(&s);
  char text[512];
  rw_error_format(e, text, sizeof text);
  fprintf(stderr, "   %s\n", text);
  CHECK(e && strcmp(rw_error_code(e), RW_E_NET_TLS_VERIFY) == 0);
  CHECK(e && !rw_error_retryable(e));
  CHECK(strstr(text, "curl 60") != NULL); /* CURLE_PEER_FAILED_VERIFICATION */
  CHECK_EQ_INT(s.accepted, 1);
  CHECK_EQ_INT(s.handshakes_ok, 0);
  rw_error_unref(e);
}

static void test_tls_handshake_cut(void) {
  tls_server s;
  CHECK(tls_server_start(&s, true));
  rw_error *e = get_from(&s);
  tls_server_stop(&s);
  char text[512];
  rw_error_format(e, text, sizeof text);
  fprintf(stderr, "   %s\n", text);
  /* a reset mid-handshake: curl says 35 (net.tls) or a plain recv error (net.reset); both retry */
  CHECK(e && (rw_error_is(e, RW_E_NET_TLS) || rw_error_is(e, RW_E_NET_RESET)));
  CHECK(e && rw_error_retryable(e));
  CHECK_EQ_INT(s.accepted, 1);
  rw_error_unref(e);
}

/* A peer that never completes the handshake (its accept queue is full, so
 * the kernel drops our SYNs): connect_timeout ends the attempt as a retryable
 * net.timeout, on its own clock; a long stall_timeout does not delay it and a
 * short one does not pre-empt it. */
static int blackhole_listener(int *port, int fillers[8], int *nfill) {
  int l = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  socklen_t al = sizeof a;
  if (l < 0 || bind(l, (struct sockaddr *)&a, sizeof a) || listen(l, 0) ||
      getsockname(l, (struct sockaddr *)&a, &al)) {
    if (l >= 0) close(l);
    return -1;
  }
  *port = ntohs(a.sin_port);
  *nfill = 0;
  /* Fill the accept queue until a connect no longer completes. */
  while (*nfill < 8) {
    int c = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    connect(c, (struct sockaddr *)&a, sizeof a);
    fillers[(*nfill)++] = c;
    struct pollfd p = {.fd = c, .events = POLLOUT};
    if (poll(&p, 1, 200) == 0) break; /* this SYN was dropped: the queue is full */
  }
  return l;
}

static void connect_case(double connect_timeout, double stall_timeout) {
  int port, fillers[8], nfill;
  int l = blackhole_listener(&port, fillers, &nfill);
  CHECK(l >= 0);
  if (l < 0) return;
  rw_error *e = NULL;
  rw_http_config cfg = {.connect_timeout = connect_timeout};
  rw_http *h = rw_http_new(&cfg, &e);
  CHECK(h != NULL);
  char url[64];
  snprintf(url, sizeof url, "http://127.0.0.1:%d/", port);
  rw_http_request rq = {.method = "GET", .url = url, .stall_timeout = stall_timeout};
  rw_http_response res;
  rw_ctx *ctx = rw_ctx_with_timeout(NULL, 10);
  double t0 = rw_mono_now();
  e = rw_http_do(h, ctx, &rq, &res);
  double took = rw_mono_now() - t0;
  char text[512] = "";
  if (e) rw_error_format(e, text, sizeof text);
  fprintf(stderr, "   connect_timeout %.2f, stall_timeout %.2f: %.3f s: %s\n", connect_timeout,
          stall_timeout, took, text);
  CHECK(e && rw_error_retryable(e));
  double want = connect_timeout < stall_timeout || stall_timeout <= 0 ? connect_timeout : stall_timeout;
  CHECK(took >= want * 0.9 && took < want + 0.7);
  if (connect_timeout < stall_timeout) CHECK(e && rw_error_is(e, RW_E_NET_TIMEOUT));
  rw_error_unref(e);
  rw_http_response_clear(&res);
  rw_ctx_unref(ctx);
  rw_http_free(h);
  for (int i = 0; i < nfill; i++) close(fillers[i]);
  close(l);
}

static void test_connect_timeout(void) {
  connect_case(0.3, 5);  /* the connect clock ends it, not the stall clock */
  connect_case(0.5, 0);  /* no stall clock at all */
  connect_case(2, 0.3);  /* no byte moves while connecting: the stall clock may end it first */
}

/* ---- only http(s); origins ---- */

static void test_origins(void) {
  static const struct { const char *url, *origin; } ok[] = {
      {"http://127.0.0.1:8080/a?b", "http://127.0.0.1:8080"},
      {"HTTPS://Storage.GoogleAPIs.com/upload", "https://storage.googleapis.com:443"},
      {"http://h", "http://h:80"},
      {"http://h:80/x", "http://h:80"},
      {"http://[::1]:9/", "http://[::1]:9"},
  };
  for (size_t i = 0; i < sizeof ok / sizeof ok[0]; i++) {
    char o[RW_HTTP_ORIGIN_MAX] = "";
    CHECK(rw_http_origin(ok[i].url, o, sizeof o) && strcmp(o, ok[i].origin) == 0);
  }
  static const char *const bad[] = {"file:///tmp/x", "ftp://h/x", "gopher://h/", "/relative",
                                    "http://", "", "ldap://h", "javascript:alert(1)"};
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    char o[RW_HTTP_ORIGIN_MAX];
    CHECK(!rw_http_origin(bad[i], o, sizeof o));
  }
  CHECK(rw_http_same_origin("http://h:80/a", "http://H/b"));
  CHECK(rw_http_same_origin("https://h/a", "https://h:443"));
  CHECK(!rw_http_same_origin("http://h:443/a", "https://h"));
  CHECK(!rw_http_same_origin("http://h:81/a", "http://h"));
  CHECK(!rw_http_same_origin("http://g/a", "http://h"));
  CHECK(!rw_http_same_origin("ftp://h/a", "ftp://h/b"));
  CHECK(!rw_http_same_origin(NULL, "http://h"));
}

/* curl speaks http and https only: a PUT to a file:// URL must not write it
 * (libcurl's file protocol would), a GET must not read it. */
static void test_only_http(void) {
  char path[] = "/tmp/rw_test_http_XXXXXX";
  int fd = mkstemp(path);
  CHECK(fd >= 0 && write(fd, "precious\n", 9) == 9);
  close(fd);
  char url[64];
  snprintf(url, sizeof url, "file://%s", path);
  rw_error *e = NULL;
  rw_http *h = rw_http_new(NULL, &e);
  CHECK(h != NULL);
  rw_ctx *ctx = rw_ctx_with_timeout(NULL, 5);
  static const char *const methods[] = {"PUT", "GET", "POST"};
  for (int i = 0; i < 3; i++) {
    struct iovec v = {"overwritten", 11};
    rw_http_request rq = {.method = methods[i], .url = url, .iov = &v, .iovcnt = 1, .len = 11,
                          .stall_timeout = 2};
    rw_http_response res;
    e = rw_http_do(h, ctx, &rq, &res);
    char text[512] = "(no error)";
    if (e) rw_error_format(e, text, sizeof text);
    fprintf(stderr, "   %s %s: %s\n", methods[i], url, text);
    CHECK(e && !rw_error_retryable(e));
    CHECK(res.body == NULL);
    rw_error_unref(e);
    rw_http_response_clear(&res);
  }
  char buf[32] = "";
  fd = open(path, O_RDONLY);
  CHECK(fd >= 0 && read(fd, buf, sizeof buf) == 9 && memcmp(buf, "precious\n", 9) == 0);
  close(fd);
  unlink(path);
  rw_ctx_unref(ctx);
  rw_http_free(h);
}

/* ---- out of file descriptors ---- */

/* Lowers RLIMIT_NOFILE and takes every descriptor left (in a forked child). */
static void exhaust_fds(void) {
  struct rlimit r;
  getrlimit(RLIMIT_NOFILE, &r);
  if (r.rlim_cur > 256) r.rlim_cur = 256;
  setrlimit(RLIMIT_NOFILE, &r);
  int fd = open("/dev/null", O_RDONLY);
  while (fd >= 0 && dup(fd) >= 0) {}
}

static bool resource_error(rw_error *e, const char *what) {
  char text[512] = "(no error)";
  if (e) rw_error_format(e, text, sizeof text);
  fprintf(stderr, "   %s: %s\n", what, text);
  return e && strcmp(rw_error_code(e), RW_E_RESOURCE) == 0 && !rw_error_retryable(e) &&
         strstr(text, "ulimit");
}

/* Child: 0 when the client could not be made for want of descriptors. */
static int child_new(void) {
  exhaust_fds();
  rw_error *e = NULL;
  rw_http *h = rw_http_new(NULL, &e);
  return h == NULL && resource_error(e, "rw_http_new without descriptors") ? 0 : 1;
}

/* Child: 0 when a request that cannot open its socket says so. */
static int child_request(void) {
  rw_error *e = NULL;
  rw_http *h = rw_http_new(NULL, &e);
  if (!h) return 2;
  exhaust_fds();
  rw_http_request rq = {.method = "GET", .url = "http://127.0.0.1:1/", .stall_timeout = 2};
  rw_http_response res;
  rw_ctx *ctx = rw_ctx_with_timeout(NULL, 5);
  e = rw_http_do(h, ctx, &rq, &res);
  return resource_error(e, "GET without descriptors") ? 0 : 1;
}

static int in_child(int (*fn)(void)) {
  fflush(stderr);
  pid_t pid = fork();
  if (pid == 0) _exit(fn());
  int st = 0;
  if (pid < 0 || waitpid(pid, &st, 0) != pid) return -1;
  return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

static void test_out_of_fds(void) {
  CHECK_EQ_INT(in_child(child_new), 0);
  CHECK_EQ_INT(in_child(child_request), 0);
}

int main(void) {
  signal(SIGPIPE, SIG_IGN);
  static const char *const proxies[] = {"https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"};
  for (int i = 0; i < 4; i++) unsetenv(proxies[i]); /* loopback only, never through a proxy */
  rng = ct_seed();
  RUN(test_dialer_release);
  RUN(test_code_table);
  RUN(test_tls_self_signed);
  RUN(test_tls_handshake_cut);
  RUN(test_connect_timeout);
  RUN(test_origins);
  RUN(test_only_http);
  RUN(test_out_of_fds);
  return ct_finish("test_http");
}
