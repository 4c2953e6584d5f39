/* libcurl glue: see http.h. */
#include "http.h"

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>
#include <linux/sockios.h>

#include "core/clock.h"

#define SLICE_MS 50
#define DEFAULT_MAX_BODY (1u << 20)
#define MAX_HEAD_BYTES (256u << 10) /* all header lines of one reply */

struct rw_http {
  CURL *easy;
  CURLM *multi;
  rw_http_config cfg;
  rw_http_dialer dialer;
  bool has_dialer;
  curl_socket_t fd; /* the connection's socket, for SIOCOUTQ; CURL_SOCKET_BAD when none */
  int open_errno;   /* errno of the last socket that could not be opened, 0 when none */
  char *ca_file;    /* CURLOPT_CAINFO, NULL: the system's */
};

/* State of one request while it runs. */
typedef struct xfer {
  const rw_http_request *req;
  rw_http_response *res;
  size_t max_body;
  int iov_i;       /* current iovec */
  size_t iov_off;  /* offset inside it */
  uint64_t moved;  /* body bytes handed to curl: the stall clock watches it */
  size_t head_bytes; /* header bytes of the reply so far */
  bool alloc_failed, too_big;
  int status;        /* of the status line seen last (streamed replies) */
  uint64_t received; /* body bytes handed to req->on_body */
} xfer;

static pthread_once_t global_once = PTHREAD_ONCE_INIT;
static CURLcode global_rc;
static void global_init(void) { global_rc = curl_global_init(CURL_GLOBAL_DEFAULT); }

/* Out of descriptors (or of another per-process resource) at errno. */
static bool out_of_fds(int err) { return err == EMFILE || err == ENFILE; }

static rw_error *handle_error(const char *what, int err) {
  if (out_of_fds(err))
    return rw_err(RW_E_RESOURCE, "cannot make %s: %s", what, strerror(err));
  return rw_err(RW_E_NOMEM, "cannot make %s", what);
}

/* The multi handle's wakeup pair (a socketpair) is made quietly by
 * curl_multi_init; without it a cancelled context would not wake the
 * transfer. One wakeup now tells whether it exists (the byte it leaves only
 * makes the first poll return at once). */
static rw_error *check_wakeup(CURLM *multi) {
  if (curl_multi_wakeup(multi) == CURLM_OK) return NULL;
  return rw_err(RW_E_RESOURCE, "cannot make the curl multi handle's wakeup pair "
                               "(out of file descriptors?)");
}

rw_http *rw_http_new(const rw_http_config *cfg, rw_error **err) {
  pthread_once(&global_once, global_init);
  if (global_rc != CURLE_OK) {
    rw_http_dialer_release(cfg ? cfg->dialer : NULL);
    *err = rw_err(RW_E_INTERNAL, "curl_global_init failed: %s", curl_easy_strerror(global_rc));
    return NULL;
  }
  rw_http *h = calloc(1, sizeof *h);
  if (!h) {
    rw_http_dialer_release(cfg ? cfg->dialer : NULL);
    *err = handle_error("an HTTP client", errno);
    return NULL;
  }
  if (cfg) h->cfg = *cfg;
  if (h->cfg.connect_timeout <= 0) h->cfg.connect_timeout = 10;
  if (h->cfg.max_body == 0) h->cfg.max_body = DEFAULT_MAX_BODY;
  if (cfg && cfg->dialer) {
    h->dialer = *cfg->dialer;
    h->has_dialer = true;
  }
  h->cfg.dialer = NULL;
  h->cfg.ca_file = NULL;
  if (cfg && cfg->ca_file && !(h->ca_file = strdup(cfg->ca_file))) {
    *err = handle_error("an HTTP client", errno);
    goto fail;
  }
  h->fd = CURL_SOCKET_BAD;
  errno = 0;
  if (!(h->easy = curl_easy_init())) {
    *err = handle_error("a curl handle", errno);
    goto fail;
  }
  errno = 0;
  if (!(h->multi = curl_multi_init())) {
    *err = handle_error("a curl multi handle", errno);
    goto fail;
  }
  if ((*err = check_wakeup(h->multi))) goto fail;
  return h;
fail:
  rw_http_free(h);
  return NULL;
}

void rw_http_free(rw_http *h) {
  if (!h) return;
  if (h->easy) curl_easy_cleanup(h->easy);
  if (h->multi) curl_multi_cleanup(h->multi);
  if (h->has_dialer) rw_http_dialer_release(&h->dialer);
  free(h->ca_file);
  free(h);
}

void rw_http_response_clear(rw_http_response *res) {
  for (size_t i = 0; i < res->nheaders; i++) {
    free(res->headers[i].name);
    free(res->headers[i].value);
  }
  free(res->headers);
  free(res->body);
  memset(res, 0, sizeof *res);
}

const char *rw_http_response_header(const rw_http_response *res, const char *name) {
  for (size_t i = res->nheaders; i-- > 0;)
    if (strcasecmp(res->headers[i].name, name) == 0) return res->headers[i].value;
  return NULL;
}

char *rw_http_escape(const char *s) {
  static const char hex[] = "0123456789ABCDEF";
  size_t n = strlen(s);
  char *out = malloc(3 * n + 1), *o = out;
  if (!out) return NULL;
  for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
    unsigned char c = *p;
    bool keep = (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
                c == '-' || c == '.' || c == '_' || c == '~';
    if (keep) {
      *o++ = (char)c;
    } else {
      *o++ = '%';
      *o++ = hex[c >> 4];
      *o++ = hex[c & 15];
    }
  }
  *o = 0;
  return out;
}

/* ---- origins ---- */

/* One URL part from curl's parser, lower-cased; false when missing. */
static bool url_part(CURLU *u, CURLUPart what, unsigned flags, char *out, size_t n) {
  char *v = NULL;
  if (curl_url_get(u, what, &v, flags) != CURLUE_OK || !v || !*v || strlen(v) >= n) {
    curl_free(v);
    return false;
  }
  size_t i = 0;
  for (; v[i]; i++) out[i] = (char)((v[i] >= 'A' && v[i] <= 'Z') ? v[i] - 'A' + 'a' : v[i]);
  out[i] = 0;
  curl_free(v);
  return true;
}

bool rw_http_origin(const char *url, char *out, size_t n) {
  CURLU *u = url ? curl_url() : NULL;
  char scheme[16], host[256], port[8];
  bool ok = u && curl_url_set(u, CURLUPART_URL, url, CURLU_NON_SUPPORT_SCHEME) == CURLUE_OK &&
            url_part(u, CURLUPART_SCHEME, 0, scheme, sizeof scheme) &&
            (strcmp(scheme, "http") == 0 || strcmp(scheme, "https") == 0) &&
            url_part(u, CURLUPART_HOST, 0, host, sizeof host) &&
            url_part(u, CURLUPART_PORT, CURLU_DEFAULT_PORT, port, sizeof port);
  curl_url_cleanup(u);
  if (!ok) return false;
  int k = snprintf(out, n, "%s://%s:%s", scheme, host, port);
  return k > 0 && (size_t)k < n;
}

bool rw_http_same_origin(const char *url, const char *base) {
  char a[RW_HTTP_ORIGIN_MAX], b[RW_HTTP_ORIGIN_MAX];
  return rw_http_origin(url, a, sizeof a) && rw_http_origin(base, b, sizeof b) && strcmp(a, b) == 0;
}

/* ---- callbacks ---- */

static size_t read_body(char *dst, size_t size, size_t nitems, void *ud) {
  xfer *x = ud;
  size_t room = size * nitems, n = 0;
  const rw_http_request *req = x->req;
  while (n < room && x->iov_i < req->iovcnt) {
    const struct iovec *v = &req->iov[x->iov_i];
    size_t take = v->iov_len - x->iov_off;
    if (take > room - n) take = room - n;
    memcpy(dst + n, (const char *)v->iov_base + x->iov_off, take);
    n += take;
    x->iov_off += take;
    if (x->iov_off == v->iov_len) {
      x->iov_i++;
      x->iov_off = 0;
    }
  }
  x->moved += n;
  x->res->sent += n;
  if (n && req->on_sent) req->on_sent(req->ud, n);
  return n;
}

/* curl rewinds the body on some retries within a request (e.g. auth). */
static int seek_body(void *ud, curl_off_t offset, int origin) {
  xfer *x = ud;
  if (origin != SEEK_SET || offset < 0) return CURL_SEEKFUNC_CANTSEEK;
  uint64_t want = (uint64_t)offset;
  x->iov_i = 0;
  x->iov_off = 0;
  while (x->iov_i < x->req->iovcnt && want >= x->req->iov[x->iov_i].iov_len) {
    want -= x->req->iov[x->iov_i].iov_len;
    x->iov_i++;
  }
  if (want > 0 && x->iov_i >= x->req->iovcnt) return CURL_SEEKFUNC_FAIL;
  x->iov_off = (size_t)want;
  x->res->sent = (uint64_t)offset;
  return CURL_SEEKFUNC_OK;
}

/* A body past max_body ends the transfer (CURLE_WRITE_ERROR, then too_big):
 * a reply we cannot keep whole is not one we may judge. */
static size_t write_body(char *p, size_t size, size_t nmemb, void *ud) {
  xfer *x = ud;
  rw_http_response *r = x->res;
  size_t n = size * nmemb;
  if (x->req->on_body && x->status >= 200 && x->status < 300) {
    if (!x->req->on_body(x->req->ud, p, n)) return 0;
    x->received += n;
    return n;
  }
  if (n > x->max_body - r->body_len) {
    x->too_big = true;
    return 0;
  }
  if (n == 0) return 0;
  char *b = realloc(r->body, r->body_len + n + 1);
  if (!b) {
    x->alloc_failed = true;
    return 0;
  }
  memcpy(b + r->body_len, p, n);
  r->body_len += n;
  b[r->body_len] = 0;
  r->body = b;
  return n;
}

static void drop_headers(rw_http_response *r) {
  for (size_t i = 0; i < r->nheaders; i++) {
    free(r->headers[i].name);
    free(r->headers[i].value);
  }
  r->nheaders = 0;
}

static char *trimmed_dup(const char *s, size_t n) {
  while (n && (*s == ' ' || *s == '\t')) s++, n--;
  while (n && (s[n - 1] == ' ' || s[n - 1] == '\t' || s[n - 1] == '\r' || s[n - 1] == '\n')) n--;
  return strndup(s, n);
}

static bool add_header(rw_http_response *r, const char *line, size_t n) {
  const char *colon = memchr(line, ':', n);
  if (!colon) return true;
  rw_http_header *hs = realloc(r->headers, (r->nheaders + 1) * sizeof *hs);
  if (!hs) return false;
  r->headers = hs;
  char *name = trimmed_dup(line, (size_t)(colon - line));
  char *value = trimmed_dup(colon + 1, n - (size_t)(colon - line) - 1);
  if (!name || !value) {
    free(name);
    free(value);
    return false;
  }
  hs[r->nheaders++] = (rw_http_header){name, value};
  return true;
}

static size_t read_header(char *line, size_t size, size_t nitems, void *ud) {
  xfer *x = ud;
  size_t n = size * nitems;
  x->head_bytes += n;
  if (x->head_bytes > MAX_HEAD_BYTES) {
    x->too_big = true;
    return 0;
  }
  if (n >= 5 && memcmp(line, "HTTP/", 5) == 0) {
    drop_headers(x->res); /* a new response (after 100 Continue) */
    if (sscanf(line, "HTTP/%*s %d", &x->status) != 1) x->status = 0;
    return n;
  }
  if (!add_header(x->res, line, n)) {
    x->alloc_failed = true;
    return 0;
  }
  return n;
}

/* ---- setup ---- */

static struct curl_slist *make_headers(const rw_http_request *req) {
  struct curl_slist *list = NULL, *t;
  /* No "Expect: 100-continue" wait; no chunked encoding. */
  const char *fixed[] = {"Expect:", "Transfer-Encoding:"};
  for (size_t i = 0; i < 2; i++) {
    if (!(t = curl_slist_append(list, fixed[i]))) goto fail;
    list = t;
  }
  for (const char *const *hh = req->headers; hh && *hh; hh++) {
    if (!(t = curl_slist_append(list, *hh))) goto fail;
    list = t;
  }
  return list;
fail:
  curl_slist_free_all(list);
  return NULL;
}

/* Opens the socket (the dialer's, or a plain one) and keeps the errno of a
 * failure: curl reports it only as "could not connect", but running out of
 * descriptors is not a refused connection. */
static curl_socket_t open_socket(void *ud, curlsocktype purpose, struct curl_sockaddr *a) {
  rw_http *h = ud;
  errno = 0;
  curl_socket_t fd = h->has_dialer && h->dialer.opensocket
                         ? h->dialer.opensocket(h->dialer.ud, purpose, a)
                         : socket(a->family, a->socktype | SOCK_CLOEXEC, a->protocol);
  h->open_errno = fd == CURL_SOCKET_BAD ? errno : 0;
  return fd;
}

static int note_socket(void *ud, curl_socket_t fd, curlsocktype purpose) {
  rw_http *h = ud;
  if (purpose == CURLSOCKTYPE_IPCXN) h->fd = fd;
  if (h->has_dialer && h->dialer.sockopt) return h->dialer.sockopt(h->dialer.ud, fd, purpose);
  return CURL_SOCKOPT_OK;
}

static int forget_socket(void *ud, curl_socket_t fd) {
  rw_http *h = ud;
  if (h->fd == fd) h->fd = CURL_SOCKET_BAD;
  if (h->has_dialer && h->dialer.closesocket) return h->dialer.closesocket(h->dialer.ud, fd);
  return close(fd);
}

static void set_options(rw_http *h, xfer *x, struct curl_slist *headers, char *errbuf) {
  CURL *e = h->easy;
  const rw_http_request *req = x->req;
  curl_easy_reset(e);
  curl_easy_setopt(e, CURLOPT_URL, req->url);
  /* http and https only, and no redirect is ever followed: a server cannot
   * point us at a file, another protocol or another origin. */
  curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https");
  curl_easy_setopt(e, CURLOPT_REDIR_PROTOCOLS_STR, "http,https");
  curl_easy_setopt(e, CURLOPT_FOLLOWLOCATION, 0L);
  curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(e, CURLOPT_ERRORBUFFER, errbuf);
  curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, (long)(h->cfg.connect_timeout * 1000));
  curl_easy_setopt(e, CURLOPT_HTTP_VERSION, (long)CURL_HTTP_VERSION_1_1);
  curl_easy_setopt(e, CURLOPT_TCP_KEEPALIVE, 1L);
  if (h->ca_file) curl_easy_setopt(e, CURLOPT_CAINFO, h->ca_file);
  curl_easy_setopt(e, CURLOPT_HTTPHEADER, headers);
  curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, req->method);
  bool has_body = strcmp(req->method, "GET") != 0 && strcmp(req->method, "DELETE") != 0;
  if (has_body || req->len > 0) {
    curl_easy_setopt(e, CURLOPT_UPLOAD, 1L);
    curl_easy_setopt(e, CURLOPT_INFILESIZE_LARGE, (curl_off_t)req->len);
    curl_easy_setopt(e, CURLOPT_READFUNCTION, read_body);
    curl_easy_setopt(e, CURLOPT_READDATA, x);
    curl_easy_setopt(e, CURLOPT_SEEKFUNCTION, seek_body);
    curl_easy_setopt(e, CURLOPT_SEEKDATA, x);
  }
  curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, write_body);
  curl_easy_setopt(e, CURLOPT_WRITEDATA, x);
  curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, read_header);
  curl_easy_setopt(e, CURLOPT_HEADERDATA, x);
  /* Ours, chaining to the dialer's: they keep h->fd, the socket the stall
   * clock watches (CURLINFO_ACTIVESOCKET has none while a transfer runs),
   * and why a socket could not be opened. */
  curl_easy_setopt(e, CURLOPT_OPENSOCKETFUNCTION, open_socket);
  curl_easy_setopt(e, CURLOPT_OPENSOCKETDATA, h);
  curl_easy_setopt(e, CURLOPT_SOCKOPTFUNCTION, note_socket);
  curl_easy_setopt(e, CURLOPT_SOCKOPTDATA, h);
  curl_easy_setopt(e, CURLOPT_CLOSESOCKETFUNCTION, forget_socket);
  curl_easy_setopt(e, CURLOPT_CLOSESOCKETDATA, h);
}

/* ---- errors ---- */

const char *rw_http_code_for_curl(CURLcode rc, long os_errno) {
  switch (rc) {
  case CURLE_COULDNT_CONNECT:
    return os_errno == ETIMEDOUT ? RW_E_NET_TIMEOUT : RW_E_NET_REFUSED;
  case CURLE_COULDNT_RESOLVE_HOST:
  case CURLE_COULDNT_RESOLVE_PROXY:
    return RW_E_NET_DNS;
  case CURLE_SEND_ERROR:
    return os_errno == EPIPE ? RW_E_NET_PIPE : RW_E_NET_RESET;
  case CURLE_RECV_ERROR:
    return RW_E_NET_RESET;
  case CURLE_GOT_NOTHING:
  case CURLE_PARTIAL_FILE:
    return RW_E_NET_EOF;
  case CURLE_OPERATION_TIMEDOUT:
    return RW_E_NET_TIMEOUT;
  case CURLE_SSL_CONNECT_ERROR:   /* the handshake failed on the wire */
  case CURLE_SSL_SHUTDOWN_FAILED: /* close_notify lost */
    return RW_E_NET_TLS;
  case CURLE_PEER_FAILED_VERIFICATION: /* also CURLE_SSL_CACERT */
  case CURLE_SSL_CACERT_BADFILE:
  case CURLE_SSL_CRL_BADFILE:
  case CURLE_SSL_ISSUER_ERROR:
  case CURLE_SSL_PINNEDPUBKEYNOTMATCH:
  case CURLE_SSL_INVALIDCERTSTATUS:
  case CURLE_SSL_CERTPROBLEM:
  case CURLE_SSL_CLIENTCERT:
  case CURLE_SSL_CIPHER:
  case CURLE_SSL_ENGINE_NOTFOUND:
  case CURLE_SSL_ENGINE_SETFAILED:
  case CURLE_SSL_ENGINE_INITFAILED:
    return RW_E_NET_TLS_VERIFY; /* the same on every attempt */
  default:
    return RW_E_NET_OTHER;
  }
}

static rw_error *transport_error(rw_http *h, xfer *x, CURLcode rc, const char *errbuf) {
  const rw_http_request *req = x->req;
  if (x->too_big)
    return rw_err(RW_E_PROTOCOL, "%s %s: the reply is larger than we accept (headers above %u KiB or "
                  "a body above %zu bytes = %.3g MiB)", req->method, req->url, MAX_HEAD_BYTES >> 10,
                  x->max_body, (double)x->max_body / (1 << 20));
  if (rc == CURLE_COULDNT_CONNECT && out_of_fds(h->open_errno))
    return rw_err(RW_E_RESOURCE, "%s %s: cannot open a socket: %s", req->method, req->url,
                  strerror(h->open_errno));
  long os_errno = 0;
  curl_easy_getinfo(h->easy, CURLINFO_OS_ERRNO, &os_errno);
  return rw_err(rw_http_code_for_curl(rc, os_errno), "%s %s: %s (curl %d%s%s)", req->method, req->url,
                errbuf[0] ? errbuf : curl_easy_strerror(rc), (int)rc, os_errno ? ", " : "",
                os_errno ? strerror((int)os_errno) : "");
}

/* ---- the loop ---- */

static void wake_multi(void *arg) { curl_multi_wakeup(arg); }

/* Bytes in the connection's send queue not yet acknowledged by the peer
 * (SIOCOUTQ), or -1. Once curl has handed the whole body to the kernel, a
 * slow link still drains this queue: that is progress too. */
static long send_queue(rw_http *h) {
  int q = 0;
  if (h->fd == CURL_SOCKET_BAD || ioctl(h->fd, SIOCOUTQ, &q) != 0) return -1;
  return q;
}

#define RW_HTTP_STREAM_PROGRESS (64u * 1024u)

/* The two clocks of one request. Until the body is delivered (curl has
 * handed all of it over and the kernel's send queue is empty), the stall
 * clock restarts whenever body bytes go to curl or leave the send queue.
 * From then on the whole reply must arrive within stall seconds: a fixed
 * deadline that trickled reply bytes cannot move. */
typedef struct clocks {
  double stall, last_change, reply_by; /* reply_by < 0: body not delivered yet */
  uint64_t last_moved, last_received;
  long last_queue;
} clocks;

static rw_error *stalled(const xfer *x, const char *why, double stall) {
  return rw_err(RW_E_STALL, "%s %s: %s (stall_timeout %.3g s; %llu body bytes sent)", x->req->method,
                x->req->url, why, stall, (unsigned long long)x->res->sent);
}

/* NULL while the request may go on, else net.stall. */
static rw_error *check_clocks(rw_http *h, const xfer *x, clocks *c, double now) {
  if (c->stall <= 0) return NULL;
  /* A streamed body (a download) moves the deadline, but only by whole
   * RW_HTTP_STREAM_PROGRESS steps: a peer that trickles a byte at a time
   * cannot keep a request alive (it must deliver that much per stall). */
  if (c->reply_by >= 0 && x->received - c->last_received >= RW_HTTP_STREAM_PROGRESS) {
    c->last_received = x->received;
    c->reply_by = now + c->stall;
  }
  if (c->reply_by >= 0 && now >= c->reply_by && x->received > 0)
    return stalled(x, "the reply's body brought less than 64 KiB within stall_timeout (a trickle is a stall)",
                   c->stall);
  if (c->reply_by >= 0)
    return now >= c->reply_by ? stalled(x, "no complete reply within stall_timeout of sending the request "
                                           "(or of starting to connect)", c->stall)
                              : NULL;
  long queue = send_queue(h);
  if (x->moved != c->last_moved || (queue >= 0 && queue < c->last_queue)) {
    c->last_moved = x->moved;
    c->last_change = now;
  }
  c->last_queue = queue;
  if (x->res->sent >= x->req->len && queue <= 0) {
    c->reply_by = now + c->stall;
    return NULL;
  }
  return now - c->last_change >= c->stall ? stalled(x, "no byte of the request moved for stall_timeout", c->stall) : NULL;
}

/* Runs the transfer until curl finishes, the ctx ends or a clock runs out. */
static rw_error *drive(rw_http *h, rw_ctx *ctx, xfer *x, CURLcode *done_rc) {
  clocks c = {.stall = x->req->stall_timeout, .last_change = rw_mono_now(), .reply_by = -1,
              .last_moved = x->moved, .last_queue = -1};
  for (;;) {
    int running = 0;
    CURLMcode mc = curl_multi_perform(h->multi, &running);
    if (mc != CURLM_OK) return rw_err(RW_E_NET_OTHER, "curl_multi_perform: %s", curl_multi_strerror(mc));
    int left;
    CURLMsg *m;
    while ((m = curl_multi_info_read(h->multi, &left)))
      if (m->msg == CURLMSG_DONE) {
        *done_rc = m->data.result;
        return NULL;
      }
    if (x->req->on_tick) x->req->on_tick(x->req->ud);
    rw_error *e = rw_ctx_err(ctx);
    if (!e) e = check_clocks(h, x, &c, rw_mono_now());
    if (e) return e;
    int ms = SLICE_MS;
    double left_s = rw_ctx_timeout(ctx);
    if (left_s >= 0 && left_s * 1000 < ms) ms = (int)(left_s * 1000) + 1;
    curl_multi_poll(h->multi, NULL, 0, ms, NULL);
  }
}

rw_error *rw_http_do(rw_http *h, rw_ctx *ctx, const rw_http_request *req, rw_http_response *res) {
  memset(res, 0, sizeof *res);
  rw_error *e = rw_ctx_err(ctx);
  if (e) return e;
  xfer x = {.req = req, .res = res, .max_body = h->cfg.max_body};
  h->open_errno = 0;
  char errbuf[CURL_ERROR_SIZE] = "";
  struct curl_slist *headers = make_headers(req);
  if (!headers) return rw_err(RW_E_NOMEM, "no memory for request headers");
  set_options(h, &x, headers, errbuf);
  rw_ctx_waker waker = {.fn = wake_multi, .arg = h->multi};
  if (!rw_ctx_add_waker(ctx, &waker)) {
    curl_slist_free_all(headers);
    e = rw_ctx_err(ctx);
    return e ? e : rw_err(RW_E_CANCELED, "cancelled");
  }
  CURLcode rc = CURLE_OK;
  CURLMcode mc = curl_multi_add_handle(h->multi, h->easy);
  if (mc != CURLM_OK) e = rw_err(RW_E_INTERNAL, "curl_multi_add_handle: %s", curl_multi_strerror(mc));
  else e = drive(h, ctx, &x, &rc);
  if (mc == CURLM_OK) curl_multi_remove_handle(h->multi, h->easy);
  rw_ctx_remove_waker(ctx, &waker);
  if (!e && rc == CURLE_OK && x.alloc_failed) e = rw_err(RW_E_NOMEM, "no memory for the response");
  if (!e && rc != CURLE_OK) {
    rw_error *ce = rw_ctx_err(ctx); /* a callback abort while cancelling */
    e = ce ? ce : transport_error(h, &x, rc, errbuf);
  }
  if (!e) {
    long status = 0;
    curl_easy_getinfo(h->easy, CURLINFO_RESPONSE_CODE, &status);
    res->status = (int)status;
  }
  curl_easy_setopt(h->easy, CURLOPT_HTTPHEADER, NULL);
  curl_easy_setopt(h->easy, CURLOPT_ERRORBUFFER, NULL);
  curl_slist_free_all(headers);
  return e;
}
