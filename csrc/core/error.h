/* Structured errors: a stable code, a message for people, a cause chain,
 * a retryable flag, an HTTP status, where it was made, and a unique id that
 * also appears in the log line written when the error is made.
 *
 * Errors are immutable once made and reference counted, so any thread may
 * hold one. Every function that can fail returns an rw_error* (NULL = ok)
 * and the caller owns that reference. */
#ifndef RW_ERROR_H
#define RW_ERROR_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>

typedef struct rw_error rw_error;

/* One row of the registry of codes. */
typedef struct rw_code_info {
  const char *code;  /* "net.reset" */
  bool retryable;
  const char *hint;  /* what a person can do about it */
} rw_code_info;

/* Codes used across the project (the strings are the contract). */
#define RW_E_CANCELED "rw.canceled"
#define RW_E_DEADLINE "rw.deadline_exceeded"
#define RW_E_INVALID "rw.invalid_argument"
#define RW_E_NOMEM "rw.out_of_memory"
#define RW_E_CLOSED "rw.closed"
#define RW_E_INTERNAL "rw.internal"
#define RW_E_RETRY_BUDGET "rw.retry_budget_exhausted"
#define RW_E_OVERLAP "rw.overlap"
#define RW_E_GAP "rw.gap"
#define RW_E_OUT_OF_WINDOW "rw.out_of_window"
#define RW_E_NO_SESSION "rw.no_session"
#define RW_E_NO_PROGRESS "gcs.no_progress"
#define RW_E_RESOURCE "rw.resource_exhausted"
#define RW_E_SOURCE_CHANGED "rw.source_changed"
#define RW_E_STALL "net.stall"
#define RW_E_NET_RESET "net.reset"
#define RW_E_NET_REFUSED "net.refused"
#define RW_E_NET_TIMEOUT "net.timeout"
#define RW_E_NET_DNS "net.dns"
#define RW_E_NET_EOF "net.eof"
#define RW_E_NET_PIPE "net.broken_pipe"
#define RW_E_NET_TLS "net.tls"
#define RW_E_NET_TLS_VERIFY "net.tls_verify"
#define RW_E_NET_OTHER "net.other"
#define RW_E_IO "io.error"
#define RW_E_SESSION_CONFLICT "gcs.session_conflict"
#define RW_E_CHECKSUM "gcs.checksum_mismatch"
#define RW_E_PRECONDITION "gcs.precondition_failed"
#define RW_E_PROTOCOL "gcs.protocol"

rw_error *rw_error_make(const char *code, int http_status, rw_error *cause,
                        const char *file, int line, const char *func,
                        const char *fmt, ...)
    __attribute__((format(printf, 7, 8)));
rw_error *rw_error_makev(const char *code, int http_status, rw_error *cause,
                         const char *file, int line, const char *func,
                         const char *fmt, va_list ap);

/* rw_err(code, fmt, ...): a new error made here. */
#define rw_err(code, ...) \
  rw_error_make((code), 0, NULL, __FILE__, __LINE__, __func__, __VA_ARGS__)
/* rw_err_wrap(code, cause, fmt, ...): takes ownership of cause. */
#define rw_err_wrap(code, cause, ...) \
  rw_error_make((code), 0, (cause), __FILE__, __LINE__, __func__, __VA_ARGS__)
/* rw_err_http(status, fmt, ...): code "http.<status>". */
#define rw_err_http(status, ...) \
  rw_error_make(NULL, (status), NULL, __FILE__, __LINE__, __func__, __VA_ARGS__)

/* The preallocated rw.out_of_memory error, returned by rw_error_make when
 * it cannot allocate (so a failed allocation never reads as NULL = ok). Its
 * ref and unref are no-ops. */
rw_error *rw_error_out_of_memory(void);
rw_error *rw_error_ref(rw_error *e);
void rw_error_unref(rw_error *e); /* NULL is fine */

const char *rw_error_code(const rw_error *e);
const char *rw_error_message(const rw_error *e);
const rw_error *rw_error_cause(const rw_error *e);
int rw_error_status(const rw_error *e);     /* 0 when none */
const char *rw_error_where(const rw_error *e); /* "file.c:12:func" */
const char *rw_error_id(const rw_error *e);  /* "E-00000001-3fa2c1d9" */
bool rw_error_retryable(const rw_error *e);
/* True when e or any error in its cause chain has this code. */
bool rw_error_is(const rw_error *e, const char *code);
/* The friendly one-line form: "message (code; hint) [id]". */
size_t rw_error_format(const rw_error *e, char *buf, size_t len);

/* Registry. */
const rw_code_info *rw_code_lookup(const char *code); /* NULL if unknown */
bool rw_code_retryable(const char *code);
const rw_code_info *rw_code_at(size_t i); /* NULL past the end */
bool rw_http_status_retryable(int status);
/* The code for an HTTP status: named ones ("gcs.precondition_failed" for 412)
 * or "http.NNN"; the returned string is static. */
const char *rw_http_status_code(int status);

/* Logging: every error is logged at "debug" when made and its id is in the
 * line. Level from RW_LOG_LEVEL (error|warn|info|debug, default warn), sink
 * is stderr unless a hook is set. */
typedef enum { RW_LOG_ERROR = 0, RW_LOG_WARN, RW_LOG_INFO, RW_LOG_DEBUG } rw_log_level;
typedef void (*rw_log_fn)(void *ud, rw_log_level lvl, const char *line);
void rw_log_set_hook(rw_log_fn fn, void *ud);
void rw_log(rw_log_level lvl, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
bool rw_log_enabled(rw_log_level lvl);
/* Emits a line already made by rw_log (the test bed's copy of this code
 * forwards its lines here) through the hook, or to stderr by level. */
void rw_log_line(rw_log_level lvl, const char *line);
/* Logs a line naming the error's id at the given level. */
void rw_error_log(rw_log_level lvl, const rw_error *e, const char *what);

#endif
