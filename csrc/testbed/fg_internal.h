/* Internals of the fake GCS: store, sessions, faults, HTTP helpers. */
#ifndef RW_FG_INTERNAL_H
#define RW_FG_INTERNAL_H

#include <jansson.h>
#include <microhttpd.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>

#include "core/checksum.h" /* CRC32C, base64 of hashes: the core's */
#include "testbed/fakegcs.h"

#define FG_QUANTUM (256 * 1024)
#define FG_MAX_JSON_BODY (1 << 20)
#define FG_MAX_MULTIPART_BODY ((size_t)512 << 20)
#define FG_MAX_RESERVE ((uint64_t)64 << 20) /* up-front blob space per session */
#define FG_MAX_RETRY_TESTS 1000
/* A connection with no traffic for this long is closed (MHD's timeout;
 * a stall fault restarts the clock when it ends). */
#define FG_IDLE_TIMEOUT_S 60

/* ---- checksums (fg_util.c) ---- */
typedef struct fg_digest {
  uint32_t crc;
  void *md5; /* EVP_MD_CTX*, NULL when MD5 is off */
} fg_digest;
bool fg_digest_init(fg_digest *d, bool md5);
void fg_digest_update(fg_digest *d, const void *p, size_t n);
bool fg_digest_copy(fg_digest *dst, const fg_digest *src); /* dst initialised */
void fg_digest_finish(fg_digest *d, unsigned char md5[16]); /* frees md5 ctx */
void fg_digest_free(fg_digest *d);
void fg_random_hex(char *out, size_t nbytes); /* out gets 2*nbytes + NUL */
char *fg_strdup(const char *s);
char *fg_url_encode(const char *s);

/* Content-Range: "bytes a-b/N", "bytes a-b/STAR", "bytes STAR/N", "bytes STAR/STAR". */
typedef struct fg_range {
  bool has_bytes; /* a-b present */
  uint64_t first, last;
  int64_t total; /* -1 for '*' */
} fg_range;
bool fg_parse_content_range(const char *s, fg_range *r);
bool fg_parse_u64(const char *s, uint64_t *v);
bool fg_parse_i64(const char *s, int64_t *v);

/* ---- blobs and store (fg_store.c) ---- */
typedef struct fg_blob fg_blob;
fg_blob *fg_blob_new(rw_fakegcs_store_kind kind, const char *dir, uint64_t reserve);
bool fg_blob_write(fg_blob *b, uint64_t off, const void *p, size_t n);
void fg_blob_truncate(fg_blob *b, uint64_t len);
void fg_blob_trim(fg_blob *b); /* gives back spare capacity */
bool fg_blob_reserve(fg_blob *b, uint64_t need);
size_t fg_blob_read(fg_blob *b, uint64_t off, void *p, size_t n);
bool fg_blob_has_bytes(const fg_blob *b);
void fg_blob_free(fg_blob *b);

typedef struct fg_object {
  struct fg_object *next;
  int refs; /* store lock */
  char *bucket, *name, *content_type;
  json_t *metadata; /* user metadata object or NULL */
  int64_t generation, metageneration;
  uint64_t size;
  uint32_t crc;
  bool has_md5;
  unsigned char md5[16];
  int component_count;
  char created[40];
  fg_blob *blob;
} fg_object;

typedef struct fg_bucket {
  struct fg_bucket *next;
  char *name;
  char created[40];
} fg_bucket;

typedef struct fg_precond {
  bool has_gen, has_not_gen, has_meta, has_not_meta;
  int64_t gen, not_gen, meta, not_meta;
} fg_precond;

enum { FG_SESSION_ACTIVE, FG_SESSION_DONE, FG_SESSION_FAILED, FG_SESSION_CANCELLED };

typedef struct fg_session {
  struct fg_session *next;
  pthread_mutex_t mu;
  char id[33];
  char *bucket, *name, *content_type;
  json_t *metadata;   /* user metadata or NULL */
  char *want_crc_b64; /* from the initiation body, or NULL */
  char *want_md5_b64;
  fg_precond pre;
  int64_t declared_total; /* X-Upload-Content-Length or -1 */
  uint64_t persisted;
  fg_digest digest;
  fg_blob *blob;
  int state;
  int final_status;
  char *final_json;
  uint64_t epoch; /* bumped by every data request */
} fg_session;

typedef struct fg_store {
  pthread_mutex_t mu;
  rw_fakegcs_store_kind kind;
  char *dir;
  bool md5;
  fg_bucket *buckets;
  fg_object *objects;
  fg_session *sessions;
  int64_t next_generation;
  char base_url[96]; /* for mediaLink/selfLink */
} fg_store;

bool fg_store_init(fg_store *st, const rw_fakegcs_config *cfg);
void fg_store_destroy(fg_store *st);
void fg_now_rfc3339(char out[40]);
/* All with st->mu held. */
fg_bucket *fg_bucket_find(fg_store *st, const char *name);
fg_bucket *fg_bucket_add(fg_store *st, const char *name);
fg_object *fg_object_find(fg_store *st, const char *bucket, const char *name);
void fg_object_insert(fg_store *st, fg_object *o); /* replaces a same-named one */
bool fg_object_remove(fg_store *st, const char *bucket, const char *name);
void fg_object_release(fg_store *st, fg_object *o); /* drops a ref */
fg_session *fg_session_find(fg_store *st, const char *id);
fg_session *fg_session_new(fg_store *st); /* linked in, ACTIVE */
/* A 412 precondition check against the current object, st->mu held. */
bool fg_precond_ok(fg_store *st, const fg_precond *p, const char *bucket, const char *name);
json_t *fg_object_json(const fg_store *st, const fg_object *o);
json_t *fg_bucket_json(const fg_bucket *b);

/* ---- faults (fg_faults.c) ---- */
typedef enum {
  FG_F_NONE = 0,
  FG_F_RETURN,            /* return-X */
  FG_F_RESET,             /* return-reset-connection */
  FG_F_BROKEN,            /* return-broken-stream */
  FG_F_RETURN_AFTER,      /* return-X-after-YK */
  FG_F_STALL_AFTER,       /* stall-for-Ts-after-YK */
  FG_F_BROKEN_FINAL_AFTER, /* return-broken-stream-final-chunk-after-YB */
  FG_F_CORRUPT             /* return-corrupted-data: a download flips a byte it serves */
} fg_fault_kind;

typedef struct fg_fault {
  fg_fault_kind kind;
  int status;
  uint64_t after_bytes;
  double stall_s;
  bool relative; /* after_bytes counts from the request's first new byte */
} fg_fault;

bool fg_fault_parse(const char *s, fg_fault *f);

typedef struct fg_retry_test fg_retry_test;
typedef struct fg_faults {
  pthread_mutex_t mu;
  fg_retry_test *tests;
  int ntests; /* at most FG_MAX_RETRY_TESTS */
  int next_id;
  rw_fakegcs_faults random;
  uint64_t rng;
  bool random_on;
} fg_faults;
void fg_faults_init(fg_faults *f);
void fg_faults_destroy(fg_faults *f);
/* Creates a test from {"instructions": {...}}; returns its JSON or NULL. */
json_t *fg_retry_test_create(fg_faults *f, json_t *body, char *why, size_t whylen);
json_t *fg_retry_test_json(fg_faults *f, const char *id); /* NULL if unknown */
json_t *fg_retry_test_list(fg_faults *f);
bool fg_retry_test_delete(fg_faults *f, const char *id);
/* Pops the next instruction for method; kind NONE when none. Returns false
 * when the id is unknown. */
bool fg_retry_test_next(fg_faults *f, const char *id, const char *method, fg_fault *out);
/* Puts an instruction back at the head (for after-Y faults not reached). */
void fg_retry_test_unpop(fg_faults *f, const char *id, const char *method, const fg_fault *fault);
void fg_faults_set_random(fg_faults *f, const rw_fakegcs_faults *r);
/* Draws a random fault for an upload request (NONE most of the time). */
void fg_faults_draw(fg_faults *f, fg_fault *out);

/* ---- server ---- */
/* A ring of the last `max` requests: items[(head + i) % cap], i < n. */
typedef struct fg_log {
  rw_fakegcs_request *items;
  size_t n, cap, head, max;
} fg_log;

typedef struct fg_auth fg_auth; /* fg_auth.c */

struct rw_fakegcs {
  fg_auth *auth;
  char *tls_cert, *tls_key; /* copies, for the daemon's life */
  struct MHD_Daemon *mhd;
  int port;
  char url[96];
  fg_store store;
  fg_faults faults;
  pthread_mutex_t log_mu;
  fg_log log;
  pthread_mutex_t stop_mu;
  pthread_cond_t stop_cv;
  bool stopping;
};

/* Per-request state, the MHD con_cls. */
typedef struct fg_req fg_req;
typedef enum MHD_Result (*fg_handler)(rw_fakegcs *s, fg_req *r, const char *data, size_t *n);

struct fg_req {
  struct MHD_Connection *conn;
  char method[8];
  char *path;          /* decoded path */
  char *log_path;      /* path?query for the log */
  char *content_range; /* copy */
  fg_handler handler;
  bool headers_seen; /* false during the first (headers) call */
  bool replied;
  /* buffered bodies */
  char *body;
  size_t body_len, body_cap, body_max;
  bool body_too_big;
  /* faults */
  fg_fault fault;
  bool fault_used; /* return-broken-stream-final-chunk-after-YB acted */
  char *retry_id;
  const char *fault_method;
  /* uploads */
  fg_session *session;
  bool simple;  /* media upload: a session made for this request */
  uint64_t epoch;
  uint64_t pos;   /* absolute offset of the next incoming byte */
  uint64_t limit; /* persist only below this */
  uint64_t end;   /* last+1 per Content-Range */
  uint64_t wend;  /* written but not committed up to here */
  fg_digest wd;
  bool wd_live;
  bool final;
  bool stale;
  int fail_status; /* reply with this at the end */
  char fail_msg[512];
  bool cut; /* cut the connection at the end */
  bool deferred; /* an error waits for the end of the body */
};

/* Replies and request helpers (fg_http.c); the request log (fg_server.c). */
enum MHD_Result fg_reply_json(rw_fakegcs *s, fg_req *r, int status, json_t *j); /* steals j */
enum MHD_Result fg_reply_error(rw_fakegcs *s, fg_req *r, int status, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
enum MHD_Result fg_reply_empty(rw_fakegcs *s, fg_req *r, int status);
enum MHD_Result fg_queue(rw_fakegcs *s, fg_req *r, int status, struct MHD_Response *resp);
enum MHD_Result fg_cut(rw_fakegcs *s, fg_req *r); /* TCP RST, no reply */
void fg_log_add(rw_fakegcs *s, fg_req *r, int status);
const char *fg_header(fg_req *r, const char *name);
const char *fg_arg(fg_req *r, const char *name);
/* Collects a body up to r->body_max; true when done (at *n == 0). */
bool fg_collect(fg_req *r, const char *data, size_t *n);
bool fg_sleep_unless_stopping(rw_fakegcs *s, double seconds);
/* A stall fault: sleeps (woken by stop), then restarts the idle clock. */
void fg_stall(rw_fakegcs *s, fg_req *r, double seconds);

/* Handlers. */
enum MHD_Result fg_route(rw_fakegcs *s, fg_req *r);
enum MHD_Result fg_h_objects(rw_fakegcs *s, fg_req *r, const char *data, size_t *n);
enum MHD_Result fg_h_buckets(rw_fakegcs *s, fg_req *r, const char *data, size_t *n);
enum MHD_Result fg_h_retry_test(rw_fakegcs *s, fg_req *r, const char *data, size_t *n);
enum MHD_Result fg_h_upload_start(rw_fakegcs *s, fg_req *r, const char *data, size_t *n);
enum MHD_Result fg_h_upload_put(rw_fakegcs *s, fg_req *r, const char *data, size_t *n);
enum MHD_Result fg_h_upload_multipart(rw_fakegcs *s, fg_req *r, const char *data, size_t *n);
enum MHD_Result fg_h_upload_media(rw_fakegcs *s, fg_req *r, const char *data, size_t *n);
enum MHD_Result fg_h_upload_delete(rw_fakegcs *s, fg_req *r, const char *data, size_t *n);
/* Finishes an object from a completed session, session->mu held. Returns
 * the status (200, 400, 412) and sets session->final_json. */
int fg_finalize(rw_fakegcs *s, fg_session *ss, const char *goog_hash);
void fg_req_release_upload(fg_req *r);
/* At the end of a request: an instruction it took but did not use goes back
 * to the head of its queue. */
void fg_req_finish(rw_fakegcs *s, fg_req *r);
/* Takes the request's fault (retry test or random) for method; replies or
 * cuts for return-X and reset. True when the request is answered. */
bool fg_take_fault(rw_fakegcs *s, fg_req *r, const char *method, enum MHD_Result *res);
/* Credentials (fg_auth.c): the token and metadata endpoints and the
 * bearer check; true when it answered (or set r->handler). */
bool fg_auth_init(rw_fakegcs *s, const rw_fakegcs_config *cfg, rw_error **err);
void fg_auth_destroy(rw_fakegcs *s);
bool fg_auth_route(rw_fakegcs *s, fg_req *r, enum MHD_Result *res);
enum MHD_Result fg_h_auth_token(rw_fakegcs *s, fg_req *r, const char *data, size_t *n);
uint32_t fg_crc32c_combine(uint32_t crc1, uint32_t crc2, uint64_t len2);

#endif
