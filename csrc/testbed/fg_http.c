/* The fake GCS's replies (JSON, errors in GCS's shape, empty, a TCP reset)
 * and request helpers (headers, arguments, body collection, stalls), used by
 * the handlers (fg_route.c, fg_upload.c, fg_objects.c) and the server. */
#include <arpa/inet.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

#include "testbed/fg_internal.h"

enum MHD_Result fg_queue(rw_fakegcs *s, fg_req *r, int status, struct MHD_Response *resp) {
  if (!resp) return MHD_NO;
  fg_log_add(s, r, status);
  r->replied = true;
  enum MHD_Result ok = MHD_queue_response(r->conn, (unsigned)status, resp);
  MHD_destroy_response(resp);
  return ok;
}

enum MHD_Result fg_reply_json(rw_fakegcs *s, fg_req *r, int status, json_t *j) {
  char *text = json_dumps(j, JSON_COMPACT);
  json_decref(j);
  if (!text) return MHD_NO;
  size_t len = strlen(text);
  struct MHD_Response *resp =
      MHD_create_response_from_buffer(len, text, MHD_RESPMEM_MUST_FREE);
  if (!resp) {
    free(text);
    return MHD_NO;
  }
  MHD_add_response_header(resp, "Content-Type", "application/json; charset=UTF-8");
  return fg_queue(s, r, status, resp);
}

static const char *reason_for(int status) {
  switch (status) {
    case 400: return "invalid";
    case 401: return "required";
    case 403: return "forbidden";
    case 404: return "notFound";
    case 405: return "methodNotAllowed";
    case 408: return "requestTimeout";
    case 409: return "conflict";
    case 412: return "conditionNotMet";
    case 413: return "uploadTooLarge";
    case 429: return "rateLimitExceeded";
    case 431: return "requestHeaderFieldsTooLarge";
    case 499: return "clientClosedRequest";
    case 503: return "backendError";
    default: return status >= 500 ? "backendError" : "invalid";
  }
}

/* True when the request announces a body of at most 1 GiB. */
static bool small_body_expected(fg_req *r) {
  const char *len = fg_header(r, "Content-Length");
  uint64_t n = 0;
  if (fg_header(r, "Transfer-Encoding")) return true;
  return len && fg_parse_u64(len, &n) && n > 0 && n <= ((uint64_t)1 << 30);
}

enum MHD_Result fg_reply_error(rw_fakegcs *s, fg_req *r, int status, const char *fmt, ...) {
  char msg[512];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  if (!r->headers_seen && !r->deferred && small_body_expected(r)) {
    /* Read the body first: a client still sending would see a broken pipe
     * instead of the status. */
    r->deferred = true;
    r->fail_status = status;
    snprintf(r->fail_msg, sizeof r->fail_msg, "%s", msg);
    return MHD_YES;
  }
  json_t *j = json_pack("{s:{s:i, s:s, s:[{s:s, s:s, s:s}]}}", "error", "code", status, "message",
                        msg, "errors", "domain", "global", "reason", reason_for(status),
                        "message", msg);
  if (!j) /* the message was not UTF-8 (names from the request) */
    j = json_pack("{s:{s:i, s:s}}", "error", "code", status, "message", "request failed");
  return fg_reply_json(s, r, status, j);
}

enum MHD_Result fg_reply_empty(rw_fakegcs *s, fg_req *r, int status) {
  struct MHD_Response *resp = MHD_create_response_from_buffer(0, "", MHD_RESPMEM_PERSISTENT);
  return fg_queue(s, r, status, resp);
}

/* Aborts the connection with a TCP RST: MHD would shutdown() (a FIN) before
 * closing, so the socket is first disconnected with connect(AF_UNSPEC),
 * which resets an established TCP connection; MHD's own close follows. */
enum MHD_Result fg_cut(rw_fakegcs *s, fg_req *r) {
  const union MHD_ConnectionInfo *ci =
      MHD_get_connection_info(r->conn, MHD_CONNECTION_INFO_CONNECTION_FD);
  if (ci) {
    struct linger lg = {1, 0};
    struct sockaddr unspec = {.sa_family = AF_UNSPEC};
    setsockopt(ci->connect_fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
    if (connect(ci->connect_fd, &unspec, sizeof unspec) != 0) {
      /* already gone; MHD closes it */
    }
  }
  if (!r->replied) fg_log_add(s, r, 0);
  r->replied = true;
  r->cut = true;
  return MHD_NO;
}

const char *fg_header(fg_req *r, const char *name) {
  return MHD_lookup_connection_value(r->conn, MHD_HEADER_KIND, name);
}

const char *fg_arg(fg_req *r, const char *name) {
  return MHD_lookup_connection_value(r->conn, MHD_GET_ARGUMENT_KIND, name);
}

bool fg_collect(fg_req *r, const char *data, size_t *n) {
  if (*n == 0) return true;
  if (r->body_len + *n > r->body_max) r->body_too_big = true;
  if (!r->body_too_big && r->body_len + *n + 1 > r->body_cap) {
    size_t cap = r->body_cap ? r->body_cap : 4096;
    while (cap < r->body_len + *n + 1) cap *= 2;
    char *p = realloc(r->body, cap);
    if (!p) r->body_too_big = true;
    else r->body = p, r->body_cap = cap;
  }
  if (!r->body_too_big) {
    memcpy(r->body + r->body_len, data, *n);
    r->body_len += *n;
    r->body[r->body_len] = 0;
  }
  *n = 0;
  return false;
}

void fg_stall(rw_fakegcs *s, fg_req *r, double seconds) {
  fg_sleep_unless_stopping(s, seconds);
  /* the connection was not idle: restart its timeout clock */
  MHD_set_connection_option(r->conn, MHD_CONNECTION_OPTION_TIMEOUT, (unsigned)FG_IDLE_TIMEOUT_S);
}

bool fg_sleep_unless_stopping(rw_fakegcs *s, double seconds) {
  struct timespec until;
  clock_gettime(CLOCK_REALTIME, &until);
  long long ns = (long long)(seconds * 1e9) + until.tv_nsec;
  until.tv_sec += (time_t)(ns / 1000000000);
  until.tv_nsec = (long)(ns % 1000000000);
  pthread_mutex_lock(&s->stop_mu);
  while (!s->stopping)
    if (pthread_cond_timedwait(&s->stop_cv, &s->stop_mu, &until) == ETIMEDOUT) break;
  bool stopping = s->stopping;
  pthread_mutex_unlock(&s->stop_mu);
  return !stopping;
}
