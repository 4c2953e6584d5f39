/* Internals of the proxy server (server.c: loop, accept, timers; server_conn.c:
 * frames, handshake, replies; server_req.c: requests, sessions, GCS jobs).
 * Everything here is owned by the loop thread, except the job queue (jobs_mu)
 * and the stats copy (stats_mu). */
#ifndef RW_PROXY_SERVER_INT_H
#define RW_PROXY_SERVER_INT_H

#include <pthread.h>
#include <stdbool.h>

#include "core/context.h"
#include "core/ratelimit.h"
#include "io/writer.h"
#include "proxy/amo.h"
#include "proxy/frame.h"
#include "proxy/server.h"

enum { W_LISTEN, W_WAKE, W_CONN, W_SESSION };
typedef struct watch {
  int kind;
  void *obj;
} watch;

typedef struct psecret {
  char *key_id;
  uint8_t *bytes;
  size_t len;
} psecret;

/* A request body, shared by the writer's cache segments (refcounted). */
typedef struct body {
  struct rw_proxy_server *srv;
  uint8_t *data;
  size_t len;
  int refs;
} body;

enum { C_HELLO, C_AUTH, C_AUTHED };

typedef struct conn {
  watch w;
  struct rw_proxy_server *srv;
  struct conn *next;
  int fd;
  uint64_t id, client_id;
  int state;
  rwp_reader *rd;
  rwp_writer wr;
  const psecret *sec;       /* NULL: unknown key_id (fails at AUTH) */
  uint8_t cnonce[32], snonce[32], th[32];
  uint32_t max_frame;
  uint16_t max_inflight;
  int inflight;             /* requests unanswered on this connection */
  double accepted_at, last_rx, closing_at;
  int pings_out;
  uint64_t ping_nonce;
  bool goodbye, closing, dead;
  bool lingering;           /* FIN sent after the last frame; reading to drop until the peer's EOF */
  double linger_at;
  size_t lingered;          /* bytes dropped while lingering */
  uint32_t events;          /* the epoll mask armed on fd */
  body *pbody;              /* the WRITE_AT body being read (before handover) */
  uint8_t *out;             /* bytes to send: out[out_off .. out_len) */
  size_t out_off, out_len, out_cap;
  uint8_t rbuf[64 * 1024];
} conn;

/* A request waiting on a session (WRITE_AT or COMPLETE). */
typedef struct op {
  struct op *next;
  uint8_t kind;             /* RWP_WRITE_AT, RWP_COMPLETE, RWP_ABORT */
  uint64_t conn_id, client_id, seq;
  uint64_t offset;          /* WRITE_AT */
  body *b;
  size_t pos;               /* bytes of b accepted so far */
  uint64_t total;           /* COMPLETE */
  uint8_t sums;
  uint32_t crc32c;
  uint8_t md5[16];
  bool started;
} op;

enum { S_OPENING, S_OPEN, S_GONE };
typedef struct session {
  watch w;
  struct rw_proxy_server *srv;
  struct session *next;
  double last_used;
  char *uri;
  int state;
  rw_writer *writer;
  op *ops, **ops_tail;
} session;

/* Work for the pool: one blocking GCS call. */
enum { J_CREATE, J_STATUS, J_ABORT, J_OPEN };
typedef struct job {
  struct job *next;
  struct rw_proxy_server *srv;
  int kind;
  uint64_t conn_id, client_id, seq;
  char *bucket, *object, *metadata, *uri;
  bool has_gen, has_metagen;
  int64_t gen, metagen;
  /* results */
  rw_error *err;
  char *session;
  uint64_t persisted;
  bool finalized;
  char *json;
} job;

typedef struct client_rl {
  struct client_rl *next;
  uint64_t client_id;       /* or the IPv4 address when by_addr */
  bool by_addr;
  rw_ratelimit *req, *bytes;
  double seen;
} client_rl;

struct rw_proxy_server {
  rw_proxy_config cfg;
  char *upstream, *token, *listen;
  struct rw_cred *cred; /* GCS credential of every session; NULL: token or anonymous */
  char *ca_file;
  psecret *secrets;
  size_t nsecrets;
  char addr[64];
  int lfd, epfd, wakefd;
  watch lw, ww;
  pthread_t thread;
  bool stopping;            /* loop thread only (set from the wake) */
  _Atomic bool stop_asked;
  rw_ctx *ctx;              /* cancelled at stop: GCS jobs end */
  rw_amo *amo;
  conn *conns;
  session *sessions, *dead_sessions;
  client_rl *rls;
  uint64_t next_conn_id, held;
  int nconns, nsessions;
  int nlinger;              /* lingering connections (not in nconns), at most max_connections */
  double last_expire;
  double accept_paused_at, accept_logged_at; /* listener unwatched since (0: watched) */
  pthread_mutex_t jobs_mu;
  pthread_cond_t jobs_cv;
  job *done;                /* finished jobs, for the loop */
  int jobs_running;
  pthread_mutex_t stats_mu;
  rw_proxy_stats stats;     /* loop's copy under stats_mu */
  rw_proxy_stats live;      /* loop thread only */
};

double rw_proxy_now(void);

/* server_conn.c */
rw_error *conn_reader_new(conn *c);
void conn_on_readable(conn *c);
void conn_flush(conn *c);
void conn_drain(conn *c); /* a lingering connection is readable */
void conn_close(conn *c);
conn *conn_find(struct rw_proxy_server *s, uint64_t id);
void conn_send(conn *c, const rwp_msg *m, const void *body, size_t len);
void conn_send_error(conn *c, uint64_t seq, rw_error *e, bool has_persisted, uint64_t persisted,
                     uint32_t retry_after_ms);
void conn_fatal(conn *c, rw_error *e); /* ERROR seq 0, then close (takes e) */
void conn_tick(conn *c, double now);

/* server_req.c */
void req_handle(conn *c, rwp_frame *f);
void req_jobs_done(struct rw_proxy_server *s);
void session_on_event(session *ss);
void sessions_free_all(struct rw_proxy_server *s);
void sessions_reap(struct rw_proxy_server *s);
void req_expire(struct rw_proxy_server *s, double now);
/* A new connection from ipv4 (host order): 0 when allowed, else ms to wait. */
uint32_t req_rate_addr(struct rw_proxy_server *s, uint32_t ipv4);
void shutdown_ops(struct rw_proxy_server *s);
void body_unref(void *b);
rw_error *body_alloc(struct rw_proxy_server *s, const rwp_frame *f, uint8_t **buf, body **out);
/* A reply blob (amo.h): op, for_op, ops length (u16), ops, body. */
void reply_deliver(struct rw_proxy_server *s, uint64_t conn_id, uint64_t client_id, uint64_t seq,
                   const void *blob, size_t len);

#endif
