/* An in-process fake of the GCS JSON API on libmicrohttpd, with faults in
 * storage-testbench's language (POST /retry_test) and a seeded random mode.
 *
 * One server = one MHD daemon (a thread per connection, poll(), so no
 * FD_SETSIZE limit; at most 4096 connections, idle ones closed after 60 s)
 * plus its store of
 * buckets, objects and upload sessions. Uploads are streamed into the store
 * as the body arrives; checksums are kept running. All functions are thread
 * safe; rw_fakegcs_stop joins every thread and frees everything. */
#ifndef RW_FAKEGCS_H
#define RW_FAKEGCS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/error.h"

typedef struct rw_fakegcs rw_fakegcs;

typedef enum {
  RW_FAKEGCS_MEMORY = 0, /* bytes kept in memory */
  RW_FAKEGCS_DISCARD,    /* only sizes and checksums */
  RW_FAKEGCS_DIR         /* bytes in files under dir */
} rw_fakegcs_store_kind;

typedef struct rw_fakegcs_config {
  const char *host;            /* NULL: "127.0.0.1" */
  int port;                    /* 0: ephemeral */
  rw_fakegcs_store_kind store;
  const char *dir;             /* for RW_FAKEGCS_DIR */
  const char *const *buckets;  /* NULL-terminated, created at start; may be NULL */
  /* MD5 costs more than the rest of an upload together (~500 MB/s): by
   * default it is on, except in discard mode (benchmarks). Without it objects
   * have no md5Hash, like GCS composite objects. */
  enum { RW_FAKEGCS_MD5_DEFAULT = 0, RW_FAKEGCS_MD5_ON, RW_FAKEGCS_MD5_OFF } md5;
  /* The request log keeps the last request_log requests (0: the default,
   * RW_FAKEGCS_REQUEST_LOG_DEFAULT); older ones are dropped. */
  size_t request_log;
  /* Credentials (issue 11, fg_auth.c). With auth_public_key (PEM), POST /token
   * verifies JWT bearer grants with it, and every storage request needs a
   * bearer token this server minted, alive for auth_token_lifetime seconds
   * (<= 0: 3600); else 401. auth_refresh_token: the one refresh-token grant
   * accepted (NULL: any). The metadata endpoint always answers. */
  const char *auth_public_key;
  double auth_token_lifetime;
  const char *auth_refresh_token;
  double auth_token_delay;     /* seconds each token reply waits (tests of overlap) */
  /* HTTPS (PEM): both set: the server speaks TLS and its url is https://. */
  const char *tls_cert, *tls_key;
} rw_fakegcs_config;

#define RW_FAKEGCS_REQUEST_LOG_DEFAULT 10000
#define RW_FAKEGCS_REQUEST_LOG_MAX 10000000

/* Starts a server; returns NULL and sets *err on failure. */
rw_fakegcs *rw_fakegcs_start(const rw_fakegcs_config *cfg, rw_error **err);
/* Stops the daemon, joins its threads and frees everything. NULL is fine. */
void rw_fakegcs_stop(rw_fakegcs *s);

int rw_fakegcs_port(const rw_fakegcs *s);
/* "http://127.0.0.1:PORT"; valid until stop. */
const char *rw_fakegcs_url(const rw_fakegcs *s);

/* A finished object: bytes (NULL in discard mode) and metadata. */
typedef struct rw_fakegcs_object {
  unsigned char *data;  /* malloc'd copy, NULL when the store keeps no bytes */
  uint64_t size;
  int64_t generation;
  uint32_t crc32c;
  bool has_md5;
  unsigned char md5[16];
  char *json;           /* the object resource as GCS returns it (malloc'd) */
} rw_fakegcs_object;

/* Copies the object out; false when it does not exist. */
bool rw_fakegcs_object_get(rw_fakegcs *s, const char *bucket, const char *name,
                           rw_fakegcs_object *out);
void rw_fakegcs_object_free(rw_fakegcs_object *o);

/* One line of the request log. */
typedef struct rw_fakegcs_request {
  char method[8];
  char *path;          /* with the query string */
  char *content_range; /* NULL when absent */
  int status;          /* 0 when the connection was cut without a reply */
  char *goog_hash;     /* the X-Goog-Hash header as sent; NULL when absent */
} rw_fakegcs_request;

/* Copies the log, oldest first: the last request_log requests. *n is its
 * length. Strings longer than 4 KiB are cut there. Free with
 * rw_fakegcs_requests_free. */
rw_fakegcs_request *rw_fakegcs_requests(rw_fakegcs *s, size_t *n);
void rw_fakegcs_requests_free(rw_fakegcs_request *r, size_t n);
void rw_fakegcs_requests_clear(rw_fakegcs *s);

/* Seeded random faults on upload requests (storage.objects.insert). All
 * probabilities 0 turns the mode off. */
typedef struct rw_fakegcs_faults {
  uint64_t seed;
  double p_503;     /* reply 503 before persisting */
  double p_408;     /* reply 408 before persisting */
  double p_reset;   /* TCP RST before persisting */
  double p_partial; /* persist a random 256 KiB-aligned prefix, then 503 */
  double p_broken;  /* persist everything, then cut the reply */
  double p_stall;   /* pause stall_ms before reading the body */
  int stall_ms;
} rw_fakegcs_faults;
void rw_fakegcs_set_faults(rw_fakegcs *s, const rw_fakegcs_faults *f);

/* Credentials side (fg_auth.c). */
typedef struct rw_fakegcs_auth_counts {
  uint64_t token_requests;    /* POST /token */
  uint64_t metadata_requests; /* metadata token GETs */
  uint64_t unauthorized;      /* 401s for a missing, unknown, expired or refused token */
} rw_fakegcs_auth_counts;
void rw_fakegcs_auth_stats(rw_fakegcs *s, rw_fakegcs_auth_counts *out);
/* Forgets every minted token: the next storage request with one gets 401. */
void rw_fakegcs_auth_revoke(rw_fakegcs *s);
/* Mints a token as /token would (tests hand it to a token_fn). */
void rw_fakegcs_auth_mint(rw_fakegcs *s, char *out, size_t n);
/* While on, every bearer token is refused (401). */
void rw_fakegcs_auth_reject_all(rw_fakegcs *s, bool on);

/* Creates a bucket (idempotent). */
void rw_fakegcs_bucket_create(rw_fakegcs *s, const char *name);

#endif
