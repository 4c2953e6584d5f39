/* The RWP/1 proxy server (docs/PROTOCOL.md, docs/PROXY.md): accepts client
 * connections, authenticates them, and turns their requests into GCS
 * requests on an upstream endpoint: CREATE -> a GCS sink's begin, WRITE_AT ->
 * one ReliableWriter per session (resumed from what GCS holds), STATUS ->
 * the sink's query, COMPLETE -> the writer's complete, ABORT -> DELETE.
 *
 * Threads: one event-loop thread (epoll) owns every connection, session and
 * writer; blocking GCS calls (CREATE, STATUS, ABORT, opening a session) run
 * on the shared pool and hand their result back to the loop. Start returns a
 * listening server; stop sends GOODBYE and proto.shutdown, joins the loop and
 * every job, keeps the GCS sessions (clients go on through another proxy).
 * start, addr, stats and stop may be called from any one thread. */
#ifndef RW_PROXY_SERVER_H
#define RW_PROXY_SERVER_H

#include <stddef.h>
#include <stdint.h>

#include "core/error.h"

typedef struct rw_proxy_server rw_proxy_server;

/* A secret chosen by key_id ("" = the default, for clients sending none).
 * The server copies the bytes and wipes its copy at stop. */
typedef struct rw_proxy_secret {
  const char *key_id;
  const void *secret;
  size_t len; /* >= 32 (RWP_MIN_SECRET) */
} rw_proxy_secret;

/* A value config: strings and secrets are copied. */
typedef struct rw_proxy_config {
  const char *listen;            /* "127.0.0.1:PORT" (PORT 0: ephemeral); required */
  const char *upstream;          /* GCS endpoint URL (http or https); required */
  const char *token;             /* a fixed bearer token for GCS */
  /* Without token: a credential for GCS (net/auth.h), made once and shared by
   * every session: a key file (service account or authorized user), or the
   * ADC chain with credentials_default; neither: anonymous. */
  const char *credentials_file;
  bool credentials_default;
  const char *ca_file;           /* CA bundle (PEM) for the upstream and token URIs */
  const rw_proxy_secret *secrets;
  size_t nsecrets;               /* >= 1 */
  int max_connections;           /* over it: proto.busy and close; default 256 */
  int max_sessions;              /* sessions with a writer; over it proto.busy; default 256 */
  uint64_t cache;                /* bytes of request bodies held in all; default 256 MiB */
  uint64_t session_cache;        /* each session writer's cache; default 64 MiB */
  /* How far past a session's contiguous bytes a WRITE_AT may end and still
   * wait (proto.busy) for the bytes below it; past it, rw.out_of_window at
   * once: no client window reaches that far. >= session_cache; 0: 16 x
   * session_cache (1 GiB by default). */
  uint64_t max_ahead;
  uint32_t max_frame;            /* largest body offered (64 KiB .. 16 MiB); default 1 MiB */
  uint16_t max_inflight;         /* requests unanswered per connection; default 64 */
  uint32_t ping_interval_ms;     /* default 5000 */
  uint32_t table_ttl_s;          /* at-most-once table expiry; default 600 */
  double auth_timeout;           /* seconds; default 1 */
  double rate_requests;          /* per client, a second (0: none); burst = max(1, rate) */
  double rate_bytes;             /* WRITE_AT bytes per client a second (0: none); burst = max(rate, max_frame) */
} rw_proxy_config;

rw_proxy_config rw_proxy_defaults(void);
/* Checks a config; errors are rw.invalid_argument naming the field and rule. */
rw_error *rw_proxy_config_check(const rw_proxy_config *cfg);

rw_proxy_server *rw_proxy_server_start(const rw_proxy_config *cfg, rw_error **err);
/* "127.0.0.1:PORT" as bound (valid until stop). */
const char *rw_proxy_server_addr(const rw_proxy_server *s);

typedef struct rw_proxy_stats {
  uint64_t connections;      /* open now */
  uint64_t accepted;         /* since start */
  uint64_t authed;           /* handshakes that succeeded */
  uint64_t auth_failed;      /* wrong proofs, timeouts */
  uint64_t requests;         /* requests executed (duplicates not counted) */
  uint64_t duplicates;       /* answered from the table or waited */
  uint64_t errors;           /* ERROR frames sent */
  uint64_t rate_limited;
  uint64_t bytes_in;         /* WRITE_AT body bytes accepted */
  uint64_t sessions;         /* sessions with a writer now */
  uint64_t held;             /* request body bytes held now */
  uint64_t table_entries;    /* at-most-once entries now */
} rw_proxy_stats;
rw_proxy_stats rw_proxy_server_stats(rw_proxy_server *s);

/* Stops and frees (NULL is fine). */
void rw_proxy_server_stop(rw_proxy_server *s);

#endif
