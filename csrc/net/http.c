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
#include <unistd.h>
#include <linux/sockios.h>

#include "core/clock.h"

#define SLICE_MS 50
#define DEFAULT_MAX_BODY (1u << 20)

struct rw_http {
  CURL *easy;
  CURLM *multi;
  rw_http_config cfg;
  rw_http_dialer dialer;
  bool has_dialer;
  curl_socket_t fd; /* the connection's socket, for SIOCOUTQ; CURL_SOCKET_BAD when none */
};

/* State of one request while it runs. */
typedef struct xfer {
  const rw_http_request *req;
  rw_http_response *res;
  size_t max_body;
  int iov_i;       /* current iovec */
  size_t iov_off;  /* offset inside it */
  uint64_t moved;  /* bytes either way: the stall clock watches it */
  bool alloc_failed;
} xfer;

static pthread_once_t global_once = PTHREAD_ONCE_INIT;
static CURLcode global_rc;
static void global_init(void) { global_rc = curl_global_init(CURL_GLOBAL_DEFAULT); }

rw_http *rw_http_new(const rw_http_config *cfg, rw_error **err) {
  pthread_once(&global_once, global_init);
  if (global_rc != CURLE_OK) {
    *err = rw_err(RW_E_INTERNAL, "curl_global_init failed: %s", curl_easy_strerror(global_rc));
    return NULL;
  }
  rw_http *h = calloc(1, sizeof *h);
  if (!h) goto nomem;
  if (cfg) h->cfg = *cfg;
  if (h->cfg.connect_timeout <= 0) h->cfg.connect_timeout = 10;
  if (h->cfg.max_body == 0) h->cfg.max_body = DEFAULT_MAX_BODY;
  if (cfg && cfg->dialer) {
    h->dialer = *cfg->dialer;
    h->has_dialer = true;
  }
  h->cfg.dialer = NULL;
  h->fd = CURL_SOCKET_BAD;
  h->easy = curl_easy_init();
  if (!h->easy) goto fail;
  h->multi = curl_multi_init();
  if (!h->multi) goto fail;
  return h;
fail:
  if (h->easy) curl_easy_cleanup(h->easy);
  free(h);
nomem:
  *err = rw_err(RW_E_NOMEM, "cannot make a curl handle");
  return NULL;
}

void rw_http_free(rw_http *h) {
  if (!h) return;
  curl_easy_cleanup(h->easy);
  curl_multi_cleanup(h->multi);
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

static size_t write_body(char *p, size_t size, size_t nmemb, void *ud) {
  xfer *x = ud;
  rw_http_response *r = x->res;
  size_t n = size * nmemb;
  x->moved += n;
  size_t keep = n;
  if (r->body_len + keep > x->max_body) {
    keep = x->max_body - r->body_len;
    r->body_truncated = true;
  }
  if (keep == 0) return n;
  char *b = realloc(r->body, r->body_len + keep + 1);
  if (!b) {
    x->alloc_failed = true;
    return 0;
  }
  memcpy(b + r->body_len, p, keep);
  r->body_len += keep;
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
  x->moved += n;
  if (n >= 5 && memcmp(line, "HTTP/", 5) == 0) {
    drop_headers(x->res); /* a new response (after 100 Continue or a redirect) */
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
  curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(e, CURLOPT_ERRORBUFFER, errbuf);
  curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, (long)(h->cfg.connect_timeout * 1000));
  curl_easy_setopt(e, CURLOPT_HTTP_VERSION, (long)CURL_HTTP_VERSION_1_1);
  curl_easy_setopt(e, CURLOPT_TCP_KEEPALIVE, 1L);
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
  if (h->has_dialer && h->dialer.opensocket) {
    curl_easy_setopt(e, CURLOPT_OPENSOCKETFUNCTION, h->dialer.opensocket);
    curl_easy_setopt(e, CURLOPT_OPENSOCKETDATA, h->dialer.ud);
  }
  /* Ours, chaining to the dialer's: they keep h->fd, the socket the stall
   * clock watches (CURLINFO_ACTIVESOCKET has none while a transfer runs). */
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

static rw_error *transport_error(rw_http *h, const rw_http_request *req, CURLcode rc,
                                 const char *errbuf) {
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

/* Runs the transfer until curl finishes, the ctx ends or it stalls. The stall
 * clock restarts whenever a byte moves: through curl's callbacks, or out of
 * the kernel's send queue. */
static rw_error *drive(rw_http *h, rw_ctx *ctx, xfer *x, CURLcode *done_rc) {
  double stall = x->req->stall_timeout;
  uint64_t last_moved = x->moved;
  long last_queue = -1;
  double last_change = rw_mono_now();
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
    rw_error *e = rw_ctx_err(ctx);
    if (e) return e;
    double now = rw_mono_now();
    long queue = stall > 0 ? send_queue(h) : -1;
    if (x->moved != last_moved || (queue >= 0 && queue < last_queue)) {
      last_moved = x->moved;
      last_change = now;
    } else if (stall > 0 && now - last_change >= stall) {
      return rw_err(RW_E_STALL, "%s %s: no byte moved for %.3g s (%llu body bytes sent)",
                    x->req->method, x->req->url, stall, (unsigned long long)x->res->sent);
    }
    last_queue = queue;
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
    e = ce ? ce : transport_error(h, req, rc, errbuf);
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
