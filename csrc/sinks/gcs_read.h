/* Reading GCS objects (JSON API): object metadata and ranged alt=media GETs.
 * One request per call, no retries (the reader, io/reader.h, retries).
 *
 *   stat  GET {endpoint}/storage/v1/b/BUCKET/o/OBJECT[?generation=G]
 *   get   GET {endpoint}/storage/v1/b/BUCKET/o/OBJECT?alt=media&generation=G
 *         with "Range: bytes=A-B"; the body is streamed to the caller.
 *
 * A source is immutable once made: any number of threads may use it at once,
 * each with its own rw_http client. 404 is gcs.not_found (not retryable); other
 * HTTP failures are rw_err_http(status, ...) naming the request and the
 * server's message; transport failures are the net.* codes of net/http.h. */
#ifndef RW_GCS_READ_H
#define RW_GCS_READ_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "net/http.h"
#include "net/auth.h"
#include "sinks/gcs.h"

#define RW_E_NOT_FOUND "gcs.not_found"
#define RW_E_GENERATION_CHANGED "gcs.generation_changed"

/* A value config: the source copies every string. */
typedef struct rw_gcs_source_config {
  const char *bucket, *object;  /* required */
  const char *endpoint;         /* NULL: as rw_gcs_endpoint_resolve */
  const rw_gcs_header *headers; /* extra headers on every request */
  size_t nheaders;
  const char *token;            /* a fixed bearer token (never refreshed) */
  /* Without a token: the credential (a reference is taken), none with
   * anonymous, an endpoint or an emulator variable, else the ADC chain; as
   * the sink does (rw_cred_pick). */
  struct rw_cred *cred;
  bool anonymous;
  const char *ca_file;          /* CA bundle (PEM) for https; NULL: the system's */
} rw_gcs_source_config;

typedef struct rw_gcs_source rw_gcs_source;

rw_gcs_source *rw_gcs_source_new(const rw_gcs_source_config *cfg, rw_error **err);
void rw_gcs_source_free(rw_gcs_source *s); /* NULL is fine */
const char *rw_gcs_source_name(const rw_gcs_source *s); /* "gs://bucket/object" */
const char *rw_gcs_source_ca_file(const rw_gcs_source *s); /* NULL: the system's */

/* What stat returns. json is the object resource (malloc'd). */
typedef struct rw_gcs_meta {
  uint64_t size;
  int64_t generation, metageneration;
  bool has_crc32c, has_md5;
  uint32_t crc32c;
  char crc32c_b64[9], md5_b64[25];
  char content_type[128];
  char *json;
} rw_gcs_meta;
void rw_gcs_meta_clear(rw_gcs_meta *m);

/* generation 0: the live one. */
rw_error *rw_gcs_source_stat(const rw_gcs_source *s, rw_http *h, rw_ctx *ctx, int64_t generation,
                             double stall_timeout, rw_gcs_meta *out);

typedef struct rw_gcs_get {
  uint64_t off, len;    /* len >= 1 */
  int64_t generation;   /* >= 1: pinned */
  double stall_timeout; /* see rw_http_request */
  /* Body bytes in order, starting at off (after the reply's Content-Range and
   * generation were checked); false ends the request. */
  bool (*on_body)(void *ud, const char *p, size_t n);
  void (*on_tick)(void *ud); /* may be NULL */
  void *ud;
} rw_gcs_get;

/* NULL once exactly len bytes were delivered. A reply of another generation
 * is gcs.generation_changed; a short body net.eof (retryable). */
rw_error *rw_gcs_source_get(const rw_gcs_source *s, rw_http *h, rw_ctx *ctx, const rw_gcs_get *g);

#endif
