/* The GCS resumable-upload sink (JSON API): one attempt per call, no retries.
 *
 *   begin  POST {endpoint}/upload/storage/v1/b/BUCKET/o?uploadType=resumable&name=OBJ
 *          with the metadata JSON; the Location header is the session URI.
 *   put    PUT session, Content-Range "bytes A-B/ *" (or A-B/TOTAL, or * /TOTAL when
 *          final and empty); X-Goog-Hash on the final chunk. 308 -> persisted from
 *          "Range: bytes=0-N" (none = 0); 200/201 -> finalized with the object (also on
 *          a non-final put: the writer flags that as gcs.session_conflict).
 *   query  PUT session with "Content-Range: bytes * / *" and no body.
 *   abort  DELETE session with its own 2 s deadline; 499 is success.
 * HTTP failures are rw_err_http(status, ...) naming the request and the server's
 * message; transport failures are the net.* codes of net/http.h.
 * put's on_sent gets the number of body bytes newly handed to the connection. */
#ifndef RW_GCS_H
#define RW_GCS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "net/auth.h"
#include "net/http.h"
#include "sinks/sink.h"

typedef struct rw_gcs_header {
  const char *name, *value;
} rw_gcs_header;

/* A value config: the sink copies every string it needs. */
typedef struct rw_gcs_config {
  const char *bucket, *object;   /* required unless session_uri is given */
  /* NULL: $STORAGE_EMULATOR_HOST, else $CLOUD_STORAGE_EMULATOR_ENDPOINT (either may
   * lack the scheme: http:// is added), else https://storage.googleapis.com */
  const char *endpoint;
  const char *metadata_json;     /* object resource for the POST body; NULL: "{}" */
  bool has_if_generation_match;
  int64_t if_generation_match;   /* ifGenerationMatch=N on the POST (0 = must not exist) */
  bool has_if_metageneration_match;
  int64_t if_metageneration_match; /* ifMetagenerationMatch=N on the POST */
  const rw_gcs_header *headers;  /* extra headers on every request (x-retry-test-id) */
  size_t nheaders;
  double connect_timeout;        /* seconds; <= 0: 10 */
  const char *session_uri;       /* non-NULL: resume that session; begin() is a no-op */
  const char *token;             /* bearer token (never refreshed); see cred */
  /* Credentials (net/auth.h), used when token is NULL; the sink takes its own
   * reference. Each request asks it for a token; a 401 invalidates that token
   * and the request is sent once more with a fresh one, a second 401 is
   * auth.unauthenticated. NULL and no token: anonymous with an emulator
   * variable or an endpoint, else the application default credentials. */
  rw_cred *cred;
  bool anonymous;                /* no credentials at all, whatever the endpoint */
  const char *ca_file;           /* CA bundle for https; NULL: the system's */
  double abort_timeout;          /* DELETE's own deadline; <= 0: 2 s */
  const rw_http_dialer *dialer;  /* dialer seam (net/http.h); NULL: none */
} rw_gcs_config;

/* Takes over cfg->dialer's reference, even when it fails. */
rw_sink *rw_gcs_sink_new(const rw_gcs_config *cfg, rw_error **err);

/* The endpoint a config resolves to (malloc'd, no trailing slash). */
char *rw_gcs_endpoint_resolve(const char *endpoint);

/* Replaces the bearer token (thread safe; used by the next request). */
rw_error *rw_gcs_sink_set_token(rw_sink *s, const char *token);

/* The server's own words for a failed reply: error.message of a JSON error
 * body, else the body's first 300 bytes, "(no body)" without one; malloc'd
 * (NULL when out of memory). The sink and the reader's source share it. */
struct rw_http_response;
char *rw_gcs_server_message(const struct rw_http_response *res);

#endif
