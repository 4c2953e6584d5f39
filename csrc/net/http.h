/* libcurl glue: one HTTP client per sink, one request at a time.
 *
 * A client owns an easy handle and a private multi handle; the multi keeps the
 * connection cache, so connections are reused between requests. Each request
 * is driven with curl_multi_poll in slices of at most 50 ms and a context
 * waker that calls curl_multi_wakeup, so a cancelled context (or its deadline)
 * ends the transfer within tens of milliseconds, even mid-stall. The body is
 * read straight from an iovec array by CURLOPT_READFUNCTION; it is never
 * flattened into one buffer. curl_global_init runs once, lazily, on the first
 * rw_http_new (never at module load).
 *
 * Only http and https: curl is limited to those protocols and follows no
 * redirect (a Location is the caller's to judge; see rw_http_same_origin).
 *
 * A client is used by one thread at a time; only the context may be cancelled
 * from another thread. */
#ifndef RW_HTTP_H
#define RW_HTTP_H

#include <curl/curl.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/uio.h>

#include "core/context.h"
#include "core/error.h"

/* The dialer seam (a fault-injecting dialer from the test bed, issue 5/9):
 * when set, its functions are installed as CURLOPT_OPENSOCKETFUNCTION /
 * CURLOPT_SOCKOPTFUNCTION / CURLOPT_CLOSESOCKETFUNCTION (any may be NULL) with
 * ud as their data. Ownership as hiredis' privdata/free_privdata: a dialer
 * value carries one reference on `owner` (what keeps ud alive), and whoever
 * it is handed to calls release(owner) once when done (release may be NULL).
 * rw_http_new takes it over, even when it fails; rw_http_free releases it. */
typedef struct rw_http_dialer {
  curl_opensocket_callback opensocket;
  curl_sockopt_callback sockopt;
  curl_closesocket_callback closesocket;
  void *ud;
  void *owner;
  void (*release)(void *owner);
} rw_http_dialer;

/* Drops d's reference (NULL-safe); the HTTP client and the gcs sink use it. */
static inline void rw_http_dialer_release(const rw_http_dialer *d) {
  if (d && d->release) d->release(d->owner);
}

typedef struct rw_http_config {
  double connect_timeout;       /* seconds; <= 0: 10 s */
  size_t max_body;              /* largest reply body; 0: 1 MiB; more is gcs.protocol */
  const rw_http_dialer *dialer; /* NULL: plain sockets; taken over (see above) */
  const char *ca_file;          /* CA bundle (PEM) for https; NULL: the system's. Copied. */
} rw_http_config;

typedef struct rw_http rw_http;

rw_http *rw_http_new(const rw_http_config *cfg, rw_error **err);
void rw_http_free(rw_http *h); /* NULL is fine */

typedef struct rw_http_request {
  const char *method;               /* "GET", "POST", "PUT", "DELETE" */
  const char *url;
  const char *const *headers;       /* "Name: value" lines, NULL-terminated; may be NULL */
  const struct iovec *iov;          /* body, read in place; may be NULL when len is 0 */
  int iovcnt;
  uint64_t len;                     /* body length (sum of iov lengths) */
  /* Seconds; <= 0: no clock. Until the body is delivered (handed to the
   * connection and acknowledged: the kernel's send queue is empty), a stall is
   * that long without a body byte going out or leaving the send queue; from
   * then on the whole reply must arrive within that long (a fixed deadline:
   * trickled reply bytes do not extend it). Both are net.stall. */
  double stall_timeout;
  /* Called (on the calling thread) with the number of body bytes newly handed
   * to the connection. May be NULL. */
  void (*on_sent)(void *ud, uint64_t bytes);
  void *ud;
  /* Streamed replies (downloads). When set, the body of a 2xx reply goes to
   * on_body (on the calling thread) instead of res->body, and max_body does
   * not apply; return false to end the transfer (rw_http_do then fails with
   * net.other, or the context's error). Other replies are kept as usual.
   * While such a body arrives, every byte restarts the reply clock: only
   * stall_timeout without a byte is net.stall. */
  bool (*on_body)(void *ud, const char *p, size_t n);
  /* Called on the calling thread about every 50 ms while the request runs
   * (hedging decisions). May be NULL. */
  void (*on_tick)(void *ud);
} rw_http_request;

typedef struct rw_http_header {
  char *name, *value;
} rw_http_header;

typedef struct rw_http_response {
  int status;
  rw_http_header *headers; /* of the last response (after any 100 Continue) */
  size_t nheaders;
  char *body;              /* NUL-terminated; at most max_body bytes */
  size_t body_len;
  uint64_t sent;           /* body bytes handed to the connection */
} rw_http_response;

/* Performs one request. Transport failures give net.* codes (net.refused,
 * net.dns, net.reset, net.broken_pipe, net.eof, net.timeout, net.tls,
 * net.tls_verify, net.stall, net.other) or the context's error; a reply with
 * headers above 256 KiB or a body above max_body is gcs.protocol; no socket
 * for want of file descriptors (EMFILE, ENFILE) is rw.resource_exhausted, as
 * is an rw_http_new that cannot get its descriptors. Any HTTP status is a
 * success here (res->status), the caller judges it. res is cleared first; release it
 * with rw_http_response_clear (also after an error). */
rw_error *rw_http_do(rw_http *h, rw_ctx *ctx, const rw_http_request *req, rw_http_response *res);
void rw_http_response_clear(rw_http_response *res);
/* Our error code for a failed transfer: curl's code and the OS errno curl
 * saw (CURLINFO_OS_ERRNO, 0 when none). TLS record and handshake failures are
 * net.tls (retryable); certificate and verification failures, and a local TLS
 * setup that cannot work (cipher, engine), are net.tls_verify (not retryable). */
const char *rw_http_code_for_curl(CURLcode rc, long os_errno);
/* Last header of that name (case-insensitive), or NULL. */
const char *rw_http_response_header(const rw_http_response *res, const char *name);

/* The origin of an absolute http or https URL, "scheme://host:port" in lower
 * case with the default port filled in (parsed by curl_url), into out; false
 * for any other scheme, a URL without a host, or one curl cannot parse. */
#define RW_HTTP_ORIGIN_MAX 300
bool rw_http_origin(const char *url, char *out, size_t n);
/* True when both are http(s) URLs of the same origin. */
bool rw_http_same_origin(const char *url, const char *base);

/* Percent-encodes s for a query value or path segment (RFC 3986 unreserved
 * kept). Returns malloc'd text, NULL when out of memory. */
char *rw_http_escape(const char *s);

#endif
