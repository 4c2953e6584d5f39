#include "error.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

struct rw_error {
  atomic_int refs;
  bool is_static; /* the preallocated out-of-memory error: never freed */
  int status;
  bool retryable;
  rw_error *cause;
  char code[40];
  char id[24];
  char where[112];
  char message[]; /* flexible */
};

static const rw_code_info registry[] = {
    {"rw.canceled", false, "the operation's context was cancelled"},
    {"rw.deadline_exceeded", false, "the context's deadline passed; give it more time"},
    {"rw.invalid_argument", false, "fix the argument named in the message"},
    {"rw.out_of_memory", false, "lower max_cache_size or free memory"},
    {"rw.closed", false, "the object was closed; make a new one"},
    {"rw.internal", false, "a bug in reliablewriter; please report it with the id"},
    {"rw.retry_budget_exhausted", false, "retries used the whole total_wait; raise it or check the service"},
    {"rw.overlap", false, "two writes at the same offset carried different bytes"},
    {"rw.gap", false, "some bytes were never written; write the missing range"},
    {"rw.unsupported", false, "this build or platform does not offer it"},
    {"rw.no_session", false,
     "no upload session exists yet (nothing was sent): there is nothing to resume; start a new upload"},
    {"rw.out_of_window", false,
     "the write lies beyond the cache window, or needs bytes below it that only the caller can write: "
     "write the missing range first, or raise max_cache_size"},
    {"rw.resource_exhausted", false,
     "the process ran out of file descriptors or a similar resource: raise the limit (ulimit -n) or "
     "run fewer writers at once"},
    {"rw.source_changed", false,
     "the file being uploaded was truncated or rewritten while its bytes were still needed; upload a "
     "file that does not change (a snapshot or a copy)"},
    {"net.stall", true,
     "no byte moved for stall_timeout, or the reply did not arrive within stall_timeout of the "
     "request's end; the connection was dropped and retried"},
    {"net.reset", true, "the connection was reset by the peer"},
    {"net.refused", true, "nothing listens at the address; check the endpoint"},
    {"net.timeout", true, "the connection timed out"},
    {"net.dns", true, "the host name could not be resolved (temporarily)"},
    {"net.eof", true, "the peer closed the connection before answering"},
    {"net.broken_pipe", true, "the peer stopped reading"},
    {"net.tls", true, "a TLS record error"},
    {"net.tls_verify", false,
     "the peer's TLS certificate could not be verified, or the local TLS setup is unusable (wrong host "
     "name, expired or self-signed certificate, unreadable CA bundle, bad client certificate or cipher); "
     "fix that, retrying will not help"},
    {"net.other", false, "a network error that is not known to be transient"},
    {"io.error", false, "a local I/O error; check the path, permissions and disk space"},
    {"io.transient", true, "a local I/O error that may pass (EINTR, EAGAIN, ENOSPC retried)"},
    {"gcs.session_conflict", false, "the upload session changed under us (another writer?); start a new upload"},
    {"gcs.checksum_mismatch", false, "the bytes the server holds differ from those sent"},
    {"gcs.precondition_failed", false, "a precondition (e.g. if_generation_match) did not hold"},
    {"gcs.session_canceled", false, "the upload session was cancelled (499)"},
    {"gcs.protocol", false, "the server answered something the protocol does not allow"},
    {"gcs.not_found", false, "the bucket or object (or the generation asked for) does not exist"},
    {"gcs.generation_changed", false,
     "the object was overwritten or deleted after the reader pinned its generation; open a new reader "
     "to read the new version"},
    {"gcs.no_progress", true,
     "the server answered but persisted none of the chunk; it is sent again after a backoff"},
    /* credentials (net/auth.h, issue 11) */
    {"auth.no_credentials", false,
     "no credentials were found: pass token, token_fn or credentials_file, set "
     "GOOGLE_APPLICATION_CREDENTIALS, run `gcloud auth application-default login`, or run on GCE"},
    {"auth.unauthenticated", false,
     "the server or the token URI refused the credentials (a 401 after one refresh, or a refused "
     "grant): check the key, its account's permissions and the clock"},
    {"auth.bad_credentials", false, "the credentials file is unusable: fix the file named in the message"},
    {"auth.token_pending", true, "the token function has not given a token yet; it is asked on the Lua thread"},
    /* the proxy protocol (docs/PROTOCOL.md 6.1) */
    {"proto.bad_frame", false, "a frame broke the protocol's rules; the connection was closed"},
    {"proto.bad_mac", false, "a frame failed its MAC (altered, replayed or reordered); the connection was closed"},
    {"proto.unknown_op", false, "the peer does not know this operation (an older version?)"},
    {"proto.version", false, "client and proxy share no protocol version; upgrade one of them"},
    {"proto.auth_failed", false, "the proxy refused the secret (wrong secret or key id); check both sides' secret"},
    {"proto.auth_timeout", false, "the handshake did not finish within 1 s"},
    {"proto.too_many", false, "more requests in flight than negotiated; a client bug"},
    {"proto.expired", false,
     "the proxy can no longer tell whether this request ran; ask STATUS where the upload stands"},
    {"proto.rate_limited", true, "the proxy's rate limit for this client was reached; retried after retry_after"},
    {"proto.busy", true, "the proxy reached a connection or memory bound; retried, or use another proxy"},
    {"proto.shutdown", true, "the proxy is stopping; the request goes to another instance"},
    {"http.400", false, "the request was malformed"},
    {"http.401", false, "the credentials were refused"},
    {"http.403", false, "the credentials lack permission"},
    {"http.404", false, "the bucket, object or session does not exist"},
    {"http.408", true, "the server timed out waiting for the request"},
    {"http.409", false, "a conflict on the server"},
    {"http.410", false, "the upload session expired; start a new upload"},
    {"http.429", true, "rate limited; backing off"},
    {"http.500", true, "a server error"},
    {"http.502", true, "a bad gateway"},
    {"http.503", true, "the service is unavailable"},
    {"http.504", true, "a gateway timeout"},
};

const rw_code_info *rw_code_at(size_t i) {
  return i < sizeof registry / sizeof registry[0] ? &registry[i] : NULL;
}

const rw_code_info *rw_code_lookup(const char *code) {
  if (!code) return NULL;
  for (size_t i = 0; i < sizeof registry / sizeof registry[0]; i++)
    if (strcmp(registry[i].code, code) == 0) return &registry[i];
  return NULL;
}

/* The one place that decides which HTTP statuses are retried: 408, 429, 500,
 * 502, 503, 504 (501 Not Implemented will not change on a retry). */
bool rw_http_status_retryable(int status) {
  return status == 408 || status == 429 || status == 500 || (status >= 502 && status <= 504);
}

static char http_codes[600][20];
static pthread_once_t http_codes_once = PTHREAD_ONCE_INIT;
static void http_codes_init(void) {
  for (unsigned s = 0; s < 600; s++) snprintf(http_codes[s], sizeof http_codes[s], "http.%u", s);
}

const char *rw_http_status_code(int status) {
  if (status == 412) return "gcs.precondition_failed";
  if (status == 499) return "gcs.session_canceled";
  if (status < 100 || status > 599) return "gcs.protocol";
  pthread_once(&http_codes_once, http_codes_init);
  return http_codes[status];
}

bool rw_code_retryable(const char *code) {
  const rw_code_info *ci = rw_code_lookup(code);
  if (ci) return ci->retryable;
  if (code && strncmp(code, "http.", 5) == 0) return rw_http_status_retryable(atoi(code + 5));
  return false;
}

/* Ids: a process-wide counter plus a per-process random tag, so ids from two
 * processes writing to one log do not collide. */
static atomic_uint_fast64_t id_counter;
static uint32_t id_tag;
static pthread_once_t id_once = PTHREAD_ONCE_INIT;
static void id_init(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  id_tag = (uint32_t)(ts.tv_nsec ^ ((uint64_t)ts.tv_sec << 20) ^ ((uint32_t)getpid() << 8));
}

rw_error *rw_error_makev(const char *code, int status, rw_error *cause, const char *file,
                         int line, const char *func, const char *fmt, va_list ap) {
  va_list ap2;
  va_copy(ap2, ap);
  int n = vsnprintf(NULL, 0, fmt, ap2);
  va_end(ap2);
  if (n < 0) n = 0;
  rw_error *e = malloc(sizeof *e + (size_t)n + 1);
  if (!e) {
    rw_error_unref(cause);
    return rw_error_out_of_memory(); /* never NULL: NULL means "ok" */
  }
  vsnprintf(e->message, (size_t)n + 1, fmt, ap);
  atomic_init(&e->refs, 1);
  e->is_static = false;
  e->status = status;
  e->cause = cause;
  if (!code) code = rw_http_status_code(status);
  snprintf(e->code, sizeof e->code, "%s", code);
  e->retryable = rw_code_retryable(e->code);
  const char *base = strrchr(file, '/');
  snprintf(e->where, sizeof e->where, "%s:%d:%s", base ? base + 1 : file, line, func);
  pthread_once(&id_once, id_init);
  unsigned long long seq = (unsigned long long)atomic_fetch_add(&id_counter, 1) + 1;
  snprintf(e->id, sizeof e->id, "E%08x-%llu", id_tag, seq);
  rw_error_log(RW_LOG_DEBUG, e, "made");
  return e;
}

rw_error *rw_error_make(const char *code, int status, rw_error *cause, const char *file,
                        int line, const char *func, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  rw_error *e = rw_error_makev(code, status, cause, file, line, func, fmt, ap);
  va_end(ap);
  return e;
}

/* Made once, before it can be needed (at the first error or explicitly), in
 * static storage: making it allocates nothing, so it exists when memory is
 * gone. Its message has no details; ref and unref leave it alone. */
static _Alignas(max_align_t) unsigned char oom_store[sizeof(rw_error) + 96];
static pthread_once_t oom_once = PTHREAD_ONCE_INIT;
static void oom_init(void) {
  rw_error *e = (rw_error *)(void *)oom_store;
  atomic_init(&e->refs, 1);
  e->is_static = true;
  e->status = 0;
  e->retryable = false;
  e->cause = NULL;
  snprintf(e->code, sizeof e->code, "%s", RW_E_NOMEM);
  snprintf(e->id, sizeof e->id, "E-oom");
  snprintf(e->where, sizeof e->where, "error.c:rw_error_out_of_memory");
  snprintf(e->message, 96, "out of memory (no details: making the error itself failed)");
}

rw_error *rw_error_out_of_memory(void) {
  pthread_once(&oom_once, oom_init);
  return (rw_error *)(void *)oom_store;
}

rw_error *rw_error_ref(rw_error *e) {
  if (e && !e->is_static) atomic_fetch_add(&e->refs, 1);
  return e;
}

void rw_error_unref(rw_error *e) {
  while (e && !e->is_static && atomic_fetch_sub(&e->refs, 1) == 1) {
    rw_error *cause = e->cause;
    free(e);
    e = cause;
  }
}

const char *rw_error_code(const rw_error *e) { return e ? e->code : NULL; }
const char *rw_error_message(const rw_error *e) { return e ? e->message : NULL; }
const rw_error *rw_error_cause(const rw_error *e) { return e ? e->cause : NULL; }
int rw_error_status(const rw_error *e) { return e ? e->status : 0; }
const char *rw_error_where(const rw_error *e) { return e ? e->where : NULL; }
const char *rw_error_id(const rw_error *e) { return e ? e->id : NULL; }
bool rw_error_retryable(const rw_error *e) { return e && e->retryable; }

bool rw_error_is(const rw_error *e, const char *code) {
  for (; e; e = e->cause)
    if (strcmp(e->code, code) == 0) return true;
  return false;
}

size_t rw_error_format(const rw_error *e, char *buf, size_t len) {
  if (!e) return (size_t)snprintf(buf, len, "no error");
  const rw_code_info *ci = rw_code_lookup(e->code);
  int n = snprintf(buf, len, "%s (%s%s%s) [%s]", e->message, e->code, ci ? "; " : "",
                   ci ? ci->hint : "", e->id);
  size_t used = n < 0 ? 0 : (size_t)n;
  if (e->cause && used < len) {
    int m = snprintf(buf + used, len - used, ": caused by %s (%s) [%s]", e->cause->message,
                     e->cause->code, e->cause->id);
    if (m > 0) used += (size_t)m;
  }
  return used;
}

/* ---- logging ---- */
static rw_log_fn log_hook;
static void *log_hook_ud;
static pthread_mutex_t log_mu = PTHREAD_MUTEX_INITIALIZER;
static int log_level = -1; /* read from RW_LOG_LEVEL once */

static int level_from_env(void) {
  const char *s = getenv("RW_LOG_LEVEL");
  if (!s) return RW_LOG_WARN;
  if (strcmp(s, "error") == 0) return RW_LOG_ERROR;
  if (strcmp(s, "info") == 0) return RW_LOG_INFO;
  if (strcmp(s, "debug") == 0) return RW_LOG_DEBUG;
  return RW_LOG_WARN;
}

void rw_log_set_hook(rw_log_fn fn, void *ud) {
  pthread_mutex_lock(&log_mu);
  log_hook = fn;
  log_hook_ud = ud;
  pthread_mutex_unlock(&log_mu);
}

bool rw_log_enabled(rw_log_level lvl) {
  pthread_mutex_lock(&log_mu);
  if (log_level < 0) log_level = level_from_env();
  bool on = (int)lvl <= log_level || log_hook != NULL;
  pthread_mutex_unlock(&log_mu);
  return on;
}

void rw_log(rw_log_level lvl, const char *fmt, ...) {
  static const char *names[] = {"error", "warn", "info", "debug"};
  if (!rw_log_enabled(lvl)) return;
  char line[1024];
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  int n = snprintf(line, sizeof line, "%lld.%03ld reliablewriter %s: ", (long long)ts.tv_sec,
                   ts.tv_nsec / 1000000, names[lvl]);
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(line + n, sizeof line - (size_t)n, fmt, ap);
  va_end(ap);
  rw_log_line(lvl, line);
}

void rw_log_line(rw_log_level lvl, const char *line) {
  if (!rw_log_enabled(lvl)) return;
  pthread_mutex_lock(&log_mu);
  if (log_hook)
    log_hook(log_hook_ud, lvl, line);
  else if ((int)lvl <= log_level)
    fprintf(stderr, "%s\n", line);
  pthread_mutex_unlock(&log_mu);
}

void rw_error_log(rw_log_level lvl, const rw_error *e, const char *what) {
  if (!e || !rw_log_enabled(lvl)) return;
  rw_log(lvl, "%s error id=%s code=%s where=%s status=%d: %s%s%s", what, e->id, e->code,
         e->where, e->status, e->message, e->cause ? " cause=" : "", e->cause ? e->cause->id : "");
}
