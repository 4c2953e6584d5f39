/* The proxy client sink: see proxy.h and docs/PROTOCOL.md. */
#include "sinks/proxy.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <jansson.h>
#include <math.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include "core/clock.h"
#include "proxy/auth.h"
#include "proxy/frame.h"

#define MAX_OUTSTANDING 1024
#define PIPELINE 8 /* WRITE_ATs unanswered at once on one connection, at most (HELLO) */
#define MISSED_PINGS 3

typedef struct pconn {
  int fd; /* -1: not connected */
  bool busy;
  rwp_writer wr;
  rwp_reader *rd;
  double ping_interval;
  unsigned max_inflight; /* requests unanswered at once on this connection (CHALLENGE) */
  int missed;
  uint64_t cid; /* the sink's client_id: every frame after HELLO carries it (PROTOCOL.md 3.1) */
  uint64_t ping_nonce;
  double last_rx, last_ping; /* monotonic: the last frame in, the last PING out */
  uint8_t buf[64 * 1024];
  size_t have, pos;
} pconn;

typedef struct proxy_sink {
  rw_sink base;
  pthread_mutex_t mu;
  pthread_cond_t cv;
  rw_proxy_sink_config cfg; /* strings below are our copies */
  char *addrs[RW_PROXY_SINK_MAX_ADDRS];
  char *key_id, *bucket, *object, *metadata;
  uint8_t *secret;
  char *session;
  uint64_t client_id, next_seq;
  uint64_t outstanding[MAX_OUTSTANDING];
  int noutstanding;
  size_t cur_addr;
  pconn *conns;
  uint32_t frame_limit; /* the smallest max_frame a connection negotiated */
  uint64_t epoch;       /* moves at each failover: the old proxy's accepted bytes may be lost */
  rw_proxy_sink_counts stats;
  int hb_holding;              /* connections the heartbeat thread holds this moment (mu) */
  struct proxy_sink *hb_next;  /* the heartbeat's list of sinks (hb.mu) */
  uint64_t hb_id;              /* unique in the process: a sink, not an address (hb.mu) */
} proxy_sink;

static const rw_sink_ops proxy_ops;
static void hb_kick(void);

rw_proxy_sink_config rw_proxy_sink_defaults(void) {
  rw_proxy_sink_config c = {0};
  c.connections = 4;
  c.connect_timeout = 5;
  c.request_timeout = 120;
  c.max_frame = 1u << 20;
  c.window = 64u << 20;
  return c;
}

rw_error *rw_proxy_sink_config_check(const rw_proxy_sink_config *c) {
  if (c->naddrs < 1 || c->naddrs > RW_PROXY_SINK_MAX_ADDRS)
    return rw_err(RW_E_INVALID, "proxy: addr must name 1 to %d \"host:port\" addresses (got %zu)",
                  RW_PROXY_SINK_MAX_ADDRS, c->naddrs);
  for (size_t i = 0; i < c->naddrs; i++) {
    const char *a = c->addrs[i], *colon = a ? strrchr(a, ':') : NULL;
    if (!colon || colon == a || !colon[1] || strspn(colon + 1, "0123456789") != strlen(colon + 1) ||
        atoi(colon + 1) < 1 || atoi(colon + 1) > 65535)
      return rw_err(RW_E_INVALID, "proxy: addr #%zu must be \"host:port\" with a port in 1..65535 (got \"%.100s\")",
                    i + 1, a ? a : "(nil)");
  }
  if (c->connections < 1 || c->connections > RW_PROXY_SINK_MAX_CONNECTIONS)
    return rw_err(RW_E_INVALID, "proxy: connections must be in 1..%d (got %d)", RW_PROXY_SINK_MAX_CONNECTIONS,
                  c->connections);
  if (!c->secret || c->secret_len < RWP_MIN_SECRET)
    return rw_err(RW_E_INVALID, "proxy: secret must be at least %d bytes (got %zu)", RWP_MIN_SECRET,
                  c->secret ? c->secret_len : 0);
  if (c->key_id && strlen(c->key_id) > RWP_MAX_KEY_ID)
    return rw_err(RW_E_INVALID, "proxy: key_id must be at most %d bytes", RWP_MAX_KEY_ID);
  if (!c->session && (!c->bucket || !*c->bucket || strlen(c->bucket) > RWP_MAX_BUCKET))
    return rw_err(RW_E_INVALID, "proxy: bucket must be 1 to %d bytes", RWP_MAX_BUCKET);
  if (!c->session && (!c->object || !*c->object || strlen(c->object) > RWP_MAX_OBJECT))
    return rw_err(RW_E_INVALID, "proxy: object must be 1 to %d bytes", RWP_MAX_OBJECT);
  if (c->metadata && strlen(c->metadata) > RWP_MAX_METADATA)
    return rw_err(RW_E_INVALID, "proxy: metadata must be at most %u bytes of JSON", RWP_MAX_METADATA);
  if (c->session && (!*c->session || strlen(c->session) > RWP_MAX_SESSION))
    return rw_err(RW_E_INVALID, "proxy: session must be 1 to %d bytes", RWP_MAX_SESSION);
  if (!(c->connect_timeout > 0) || !(c->request_timeout > 0) || !(c->ping_interval >= 0))
    return rw_err(RW_E_INVALID, "proxy: connect_timeout and request_timeout must be > 0, ping_interval >= 0");
  if (c->window < (1u << 20))
    return rw_err(RW_E_INVALID, "proxy: window must be at least 1 MiB (got %" PRIu64 ")", c->window);
  if (c->max_frame < RWP_MIN_FRAME || c->max_frame > RWP_MAX_FRAME)
    return rw_err(RW_E_INVALID, "proxy: max_frame must be in %u..%u (got %" PRIu32 ")", RWP_MIN_FRAME,
                  RWP_MAX_FRAME, c->max_frame);
  return NULL;
}

/* ---- sockets ---- */

static rw_error *errno_error(int en, const char *what, const char *addr) {
  const char *code = en == ECONNREFUSED ? RW_E_NET_REFUSED
                     : en == EPIPE      ? RW_E_NET_PIPE
                     : en == ECONNRESET ? RW_E_NET_RESET
                     : en == ETIMEDOUT  ? RW_E_NET_TIMEOUT
                     : en == EMFILE || en == ENFILE ? RW_E_RESOURCE
                                                    : RW_E_NET_OTHER;
  return rw_err(code, "proxy %s: %s: %s", addr, what, strerror(en));
}

/* Waits for ev on fd, for ctx, or until the monotonic time `until`.
 * *ready false on the deadline. */
static rw_error *wait_fd(int fd, short ev, rw_ctx *ctx, double until, bool *ready) {
  *ready = false;
  for (;;) {
    rw_error *e = rw_ctx_err(ctx);
    if (e) return e;
    double left = until - rw_mono_now();
    double cl = rw_ctx_timeout(ctx);
    if (cl >= 0 && cl < left) left = cl;
    if (left <= 0) return NULL;
    struct pollfd p[2] = {{.fd = fd, .events = ev}, {.fd = rw_ctx_pollfd(ctx), .events = POLLIN}};
    int ms = left > 3600 ? 3600000 : (int)ceil(left * 1000);
    int n = poll(p, p[1].fd >= 0 ? 2 : 1, ms);
    if (n < 0 && errno != EINTR) return errno_error(errno, "poll", "");
    if (n > 0 && p[0].revents) {
      *ready = true;
      return NULL;
    }
  }
}

static rw_error *split_addr(const char *addr, char *host, size_t cap, const char **port) {
  const char *colon = strrchr(addr, ':');
  size_t hl = (size_t)(colon - addr);
  if (hl >= 2 && addr[0] == '[' && addr[hl - 1] == ']') addr++, hl -= 2;
  if (hl >= cap) return rw_err(RW_E_INVALID, "proxy: address too long");
  memcpy(host, addr, hl);
  host[hl] = 0;
  *port = colon + 1;
  return NULL;
}

static rw_error *dial(const char *addr, rw_ctx *ctx, double until, int *out) {
  char host[256];
  const char *port = NULL;
  rw_error *e = split_addr(addr, host, sizeof host, &port);
  if (e) return e;
  struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM, .ai_flags = AI_NUMERICSERV};
  struct addrinfo *ai = NULL;
  int gr = getaddrinfo(host, port, &hints, &ai);
  if (gr) return rw_err(RW_E_NET_DNS, "proxy %s: cannot resolve: %s", addr, gai_strerror(gr));
  int fd = socket(ai->ai_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (fd < 0) {
    freeaddrinfo(ai);
    return errno_error(errno, "socket", addr);
  }
  int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  int r = connect(fd, ai->ai_addr, ai->ai_addrlen);
  freeaddrinfo(ai);
  bool ready = true;
  if (r < 0 && errno != EINPROGRESS) e = errno_error(errno, "connect", addr);
  else if (r < 0 && !(e = wait_fd(fd, POLLOUT, ctx, until, &ready)) && !ready)
    e = rw_err(RW_E_NET_TIMEOUT, "proxy %s: connect timed out", addr);
  if (!e && r < 0) {
    int soerr = 0;
    socklen_t sl = sizeof soerr;
    getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &sl);
    if (soerr) e = errno_error(soerr, "connect", addr);
  }
  if (e) {
    close(fd);
    return e;
  }
  *out = fd;
  return NULL;
}

static rw_error *send_all(int fd, struct iovec *iov, int n, rw_ctx *ctx, double stall) {
  while (n > 0) {
    struct msghdr mh = {.msg_iov = iov, .msg_iovlen = (size_t)n};
    ssize_t w = sendmsg(fd, &mh, MSG_NOSIGNAL); /* a closed peer is an error, never SIGPIPE */
    if (w < 0 && errno == EINTR) continue;
    if (w < 0 && errno != EAGAIN) return errno_error(errno, "send", "");
    if (w < 0) {
      bool ready;
      rw_error *e = wait_fd(fd, POLLOUT, ctx, rw_mono_now() + stall, &ready);
      if (e) return e;
      if (!ready) return rw_err(RW_E_STALL, "proxy: no byte could be sent for %.1f s", stall);
      continue;
    }
    while (n > 0 && (size_t)w >= iov->iov_len) w -= (ssize_t)iov->iov_len, iov++, n--;
    if (n > 0) iov->iov_base = (char *)iov->iov_base + w, iov->iov_len -= (size_t)w;
  }
  return NULL;
}

/* ---- one connection ---- */

static void conn_close(pconn *c) {
  if (c->fd >= 0) close(c->fd);
  c->fd = -1;
  rwp_reader_free(c->rd);
  c->rd = NULL;
  rwp_writer_wipe(&c->wr);
  c->have = c->pos = 0;
  c->missed = 0;
}

static rw_error *conn_send(pconn *c, const rwp_msg *m, const void *body, size_t len, rw_ctx *ctx,
                           double stall, rwp_encoded *enc) {
  rw_error *e = rwp_encode(&c->wr, m, body, len, enc);
  if (e) return e;
  struct iovec iov[3];
  int n = rwp_encoded_iov(enc, iov);
  return send_all(c->fd, iov, n, ctx, stall);
}

static rw_error *send_ping_msg(pconn *c, uint8_t op, uint64_t nonce, rw_ctx *ctx) {
  rwp_msg m = {.op = op, .client_id = c->cid};
  m.u.ping.nonce = nonce;
  rwp_encoded enc;
  return conn_send(c, &m, NULL, 0, ctx, 5, &enc);
}

/* Reads the next frame that is not a heartbeat. Silence for ping_interval
 * sends a PING; MISSED_PINGS of them unanswered drop the connection
 * (net.stall). until bounds the whole wait. */
static rw_error *conn_recv(proxy_sink *ps, pconn *c, rw_ctx *ctx, double until, rwp_frame *f) {
  for (;;) {
    while (c->pos < c->have) {
      size_t used = 0;
      bool got = false;
      rw_error *e = rwp_reader_feed(c->rd, c->buf + c->pos, c->have - c->pos, &used, f, &got);
      c->pos += used;
      if (e) return e;
      if (!got) continue;
      c->missed = 0;
      c->last_rx = rw_mono_now();
      if (f->msg.op == RWP_PING && (e = send_ping_msg(c, RWP_PONG, f->msg.u.ping.nonce, ctx))) return e;
      if (f->msg.op == RWP_PING || f->msg.op == RWP_PONG || f->msg.op == RWP_GOODBYE) {
        rwp_frame_clear(f);
        continue;
      }
      return NULL;
    }
    c->have = c->pos = 0;
    double slice = rw_mono_now() + c->ping_interval;
    bool ready;
    rw_error *e = wait_fd(c->fd, POLLIN, ctx, slice < until ? slice : until, &ready);
    if (e) return e;
    if (!ready) {
      if (rw_mono_now() >= until) return rw_err(RW_E_NET_TIMEOUT, "proxy: no reply within the request timeout");
      if (c->missed >= MISSED_PINGS)
        return rw_err(RW_E_STALL, "proxy: %d PINGs unanswered (%.1f s apart): dropping the connection",
                      MISSED_PINGS, c->ping_interval);
      c->missed++;
      c->last_ping = rw_mono_now();
      pthread_mutex_lock(&ps->mu);
      ps->stats.pings++;
      pthread_mutex_unlock(&ps->mu);
      if ((e = send_ping_msg(c, RWP_PING, ++c->ping_nonce, ctx))) return e;
      continue;
    }
    ssize_t r = read(c->fd, c->buf, sizeof c->buf);
    if (r == 0) return rw_err(RW_E_NET_EOF, "proxy: the connection was closed");
    if (r < 0 && (errno == EINTR || errno == EAGAIN)) continue;
    if (r < 0) return errno_error(errno, "recv", "");
    c->have = (size_t)r;
  }
}

/* An ERROR frame as our error: the registry decides what is retryable. */
static rw_error *remote_error(const rwp_frame *f) {
  const rwp_error_op *o = &f->msg.u.error;
  char code[RWP_MAX_CODE + 1];
  snprintf(code, sizeof code, "%.*s", (int)o->code.len, o->code.p);
  int status = strncmp(code, "http.", 5) == 0 ? atoi(code + 5) : 0;
  if (status >= 100 && status <= 599)
    return rw_err_http(status, "proxy: %.*s [%.*s]", (int)o->message.len, o->message.p, (int)o->id.len,
                       o->id.p);
  if (!*code) strcpy(code, RW_E_PROTOCOL);
  return rw_err(code, "proxy: %.*s [%.*s]", (int)o->message.len, o->message.p, (int)o->id.len, o->id.p);
}

/* An ERROR after the handshake: a retryable one with retry_after_ms (a
 * rate limit, a busy proxy) waits that long (at most 30 s, ctx permitting)
 * before the request is tried again. */
static rw_error *request_error(const rwp_frame *f, rw_ctx *ctx) {
  rw_error *e = remote_error(f);
  uint32_t ms = f->msg.u.error.retry_after_ms;
  if (ms && rw_error_retryable(e)) rw_ctx_wait(ctx, (ms < 30000 ? ms : 30000) / 1000.0);
  return e;
}

typedef struct handshake {
  rwp_encoded hello;
  uint8_t cnonce[RWP_NONCE_LEN], th[32];
  rwp_challenge ch;
} handshake;

static rw_error *send_hello(proxy_sink *ps, pconn *c, rw_ctx *ctx, handshake *h) {
  rwp_msg m = {.op = RWP_HELLO, .client_id = ps->client_id};
  m.u.hello = (rwp_hello){.min_version = RWP_VERSION, .max_version = RWP_VERSION,
                          .max_frame = ps->cfg.max_frame,
                          .max_inflight = PIPELINE, /* per connection (PROTOCOL.md 6) */
                          .key_id = rwp_cstr(ps->key_id)};
  rw_error *e = rwp_random(m.u.hello.client_nonce, RWP_NONCE_LEN);
  if (e) return e;
  memcpy(h->cnonce, m.u.hello.client_nonce, RWP_NONCE_LEN);
  return conn_send(c, &m, NULL, 0, ctx, ps->cfg.connect_timeout, &h->hello);
}

/* CHALLENGE in: the transcript, AUTH out, keys set. */
static rw_error *answer_challenge(proxy_sink *ps, pconn *c, rw_ctx *ctx, double until, handshake *h) {
  rwp_frame f;
  rw_error *e = conn_recv(ps, c, ctx, until, &f);
  if (e) return e;
  if (f.msg.op == RWP_ERROR) e = remote_error(&f);
  else if (f.msg.op != RWP_CHALLENGE) e = rw_err(RW_E_PROTO_BAD_FRAME, "proxy: expected CHALLENGE");
  if (!e) e = rwp_transcript_hash(h->hello.head, h->hello.head_len, f.raw, f.hdr_len, h->th);
  if (!e) h->ch = f.msg.u.challenge;
  rwp_frame_clear(&f);
  if (e) return e;
  rwp_msg m = {.op = RWP_AUTH, .client_id = ps->client_id};
  uint8_t k_c2s[32], k_s2c[32];
  if (!(e = rwp_client_proof(ps->secret, ps->cfg.secret_len, h->th, m.u.auth.proof)) &&
      !(e = rwp_derive_keys(ps->secret, ps->cfg.secret_len, h->cnonce, h->ch.server_nonce, ps->client_id,
                            k_c2s, k_s2c))) {
    rwp_encoded enc;
    e = conn_send(c, &m, NULL, 0, ctx, ps->cfg.connect_timeout, &enc);
    rwp_writer_set_key(&c->wr, k_c2s);
    rwp_reader_set_key(c->rd, k_s2c);
    c->wr.max_frame = h->ch.max_frame;
    if (!e) e = rwp_reader_set_max_frame(c->rd, h->ch.max_frame);
  }
  rwp_wipe(k_c2s, 32), rwp_wipe(k_s2c, 32);
  return e;
}

static rw_error *check_welcome(proxy_sink *ps, pconn *c, rw_ctx *ctx, double until, handshake *h) {
  rwp_frame f;
  rw_error *e = conn_recv(ps, c, ctx, until, &f);
  if (e) return e;
  uint8_t want[32];
  if (f.msg.op == RWP_ERROR) e = remote_error(&f);
  else if (f.msg.op != RWP_WELCOME) e = rw_err(RW_E_PROTO_BAD_FRAME, "proxy: expected WELCOME");
  else if (!(e = rwp_server_proof(ps->secret, ps->cfg.secret_len, h->th, want)) &&
           !rwp_proof_equal(want, f.msg.u.welcome.proof))
    e = rw_err(RW_E_PROTO_AUTH_FAILED, "proxy: the server's proof is wrong (not a holder of the secret)");
  rwp_frame_clear(&f);
  return e;
}

static rw_error *conn_open(proxy_sink *ps, pconn *c, const char *addr, rw_ctx *ctx) {
  double until = rw_mono_now() + ps->cfg.connect_timeout;
  rwp_writer_init(&c->wr);
  c->cid = ps->client_id;
  rw_error *e = rwp_reader_new(RWP_SIDE_CLIENT, NULL, NULL, &c->rd);
  if (!e) e = dial(addr, ctx, until, &c->fd);
  c->ping_interval = ps->cfg.connect_timeout;
  handshake h;
  if (!e) e = send_hello(ps, c, ctx, &h);
  if (!e) e = answer_challenge(ps, c, ctx, until, &h);
  if (!e) e = check_welcome(ps, c, ctx, until, &h);
  if (e) {
    conn_close(c);
    return e;
  }
  pthread_mutex_lock(&ps->mu);
  if (h.ch.max_frame < ps->frame_limit) ps->frame_limit = h.ch.max_frame;
  pthread_mutex_unlock(&ps->mu);
  c->max_inflight = h.ch.max_inflight < 1 ? 1 : h.ch.max_inflight > PIPELINE ? PIPELINE : h.ch.max_inflight;
  double pi = h.ch.ping_interval_ms ? h.ch.ping_interval_ms / 1000.0 : 5.0;
  c->ping_interval = ps->cfg.ping_interval > 0 ? ps->cfg.ping_interval : pi;
  return NULL;
}

/* An idle connection is read by no one: before it is used again, answer
 * the proxy's PINGs, take stale replies, and close it when the proxy did
 * (EOF, GOODBYE) or the bytes are not frames. */
static void conn_refresh(pconn *c, rw_ctx *ctx) {
  bool bye = false;
  for (int rounds = 0; c->fd >= 0 && rounds < 64; rounds++) {
    if (c->pos >= c->have) { /* what the last reply left in buf comes first */
      struct pollfd pf = {.fd = c->fd, .events = POLLIN};
      if (poll(&pf, 1, 0) <= 0) break;
      ssize_t r = read(c->fd, c->buf, sizeof c->buf);
      if (r <= 0 && r < 0 && (errno == EINTR || errno == EAGAIN)) continue;
      if (r <= 0) {
        conn_close(c);
        return;
      }
      c->pos = 0;
      c->have = (size_t)r;
    }
    while (c->pos < c->have) {
      size_t used = 0;
      bool got = false;
      rwp_frame f;
      rw_error *e = rwp_reader_feed(c->rd, c->buf + c->pos, c->have - c->pos, &used, &f, &got);
      c->pos += used;
      if (e) {
        rw_error_unref(e);
        conn_close(c);
        return;
      }
      if (!got) continue;
      c->missed = 0; /* any frame is a sign of life (PROTOCOL.md 8) */
      c->last_rx = rw_mono_now();
      if (f.msg.op == RWP_PING) e = send_ping_msg(c, RWP_PONG, f.msg.u.ping.nonce, ctx);
      bye |= f.msg.op == RWP_GOODBYE || (f.msg.op == RWP_ERROR && f.msg.seq == 0);
      rwp_frame_clear(&f);
      if (e) {
        rw_error_unref(e);
        conn_close(c);
        return;
      }
    }
  }
  if (bye) conn_close(c);
}

/* ---- heartbeats on idle connections: one thread for the process ----
 *
 * A connection no put holds is watched by one heartbeat thread shared by
 * every proxy sink (DESIGN.md: bounded threads). The first connection given
 * back idle starts it (never module load: nginx forks after loading); the
 * last sink's destroy stops and joins it. It answers the proxy's PINGs,
 * sends a PING after ping_interval of silence, and closes a connection after
 * MISSED_PINGS unanswered, so the next put opens a fresh one. To touch a
 * connection it takes it as a put does (busy, under the sink's mutex) for one
 * short pass, so frames keep their MAC counter order (one writer at a time);
 * a put that wants a connection meanwhile waits for that pass only
 * (hb_holding). With no idle connection it sleeps until kicked. Lock order:
 * hb.mu, then a sink's mu. */

static struct {
  pthread_mutex_t mu;
  proxy_sink *sinks; /* every live proxy sink */
  uint64_t next_id;
  bool running;
  unsigned gen; /* a thread runs while gen is the one it started with */
  pthread_t tid;
  int wakefd; /* the running thread's eventfd */
} hb = {.mu = PTHREAD_MUTEX_INITIALIZER, .wakefd = -1};

typedef struct hb_watch {
  proxy_sink *ps;
  uint64_t id;
  int conn, fd;
  double due; /* a PING (or the close) is due then */
} hb_watch;

static void hb_wake_locked(void) {
  uint64_t one = 1;
  if (hb.wakefd >= 0 && write(hb.wakefd, &one, sizeof one) < 0) { /* a full counter: awake anyway */
  }
}

static void *hb_main(void *arg);

/* A put gave a connection back: the thread runs and looks at it. Without a
 * thread (none could start) idle connections are refreshed at checkout. */
static void hb_kick(void) {
  pthread_mutex_lock(&hb.mu);
  if (!hb.running && hb.sinks) {
    int fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    hb.gen++;
    hb.wakefd = fd;
    if (fd >= 0 && pthread_create(&hb.tid, NULL, hb_main, (void *)(uintptr_t)hb.gen) == 0) hb.running = true;
    else if (fd >= 0) close(fd), hb.wakefd = -1;
    if (hb.running) pthread_setname_np(hb.tid, "rw-heartbeat"); /* named before anyone looks */
  }
  hb_wake_locked();
  pthread_mutex_unlock(&hb.mu);
}

/* fork: only the forking thread lives on in the child, so the child has no
 * heartbeat thread, and the sinks it inherited share their sockets with the
 * parent: the child's heartbeat (if it starts one) never watches them.
 * hb.mu is held across the fork: no thread is mid-update of it. */
static void hb_fork_prepare(void) { pthread_mutex_lock(&hb.mu); }
static void hb_fork_parent(void) { pthread_mutex_unlock(&hb.mu); }
static void hb_fork_child(void) {
  pthread_mutex_init(&hb.mu, NULL);
  if (hb.wakefd >= 0) close(hb.wakefd);
  hb.wakefd = -1, hb.running = false, hb.gen++, hb.sinks = NULL;
}
static void hb_once_init(void) { pthread_atfork(hb_fork_prepare, hb_fork_parent, hb_fork_child); }

static void hb_register(proxy_sink *ps) {
  static pthread_once_t once = PTHREAD_ONCE_INIT;
  pthread_once(&once, hb_once_init); /* the first sink, never module load */
  pthread_mutex_lock(&hb.mu);
  ps->hb_id = ++hb.next_id;
  ps->hb_next = hb.sinks;
  hb.sinks = ps;
  pthread_mutex_unlock(&hb.mu);
}

/* The sink leaves the list: the thread never touches it again. After the
 * last one the thread is stopped and joined. */
static void hb_unregister(proxy_sink *ps) {
  pthread_mutex_lock(&hb.mu);
  for (proxy_sink **pp = &hb.sinks; *pp; pp = &(*pp)->hb_next)
    if (*pp == ps) {
      *pp = ps->hb_next;
      break;
    }
  pthread_mutex_lock(&ps->mu); /* out of the list: a pass already begun ends first */
  while (ps->hb_holding) pthread_cond_wait(&ps->cv, &ps->mu);
  pthread_mutex_unlock(&ps->mu);
  bool stop = hb.running && !hb.sinks;
  pthread_t tid = hb.tid;
  int fd = hb.wakefd;
  if (stop) {
    hb_wake_locked();
    hb.gen++, hb.running = false, hb.wakefd = -1;
  }
  pthread_mutex_unlock(&hb.mu);
  if (!stop) return;
  pthread_join(tid, NULL);
  close(fd);
}

/* The idle connections of every sink, and the first time one is due.
 * -1: this thread is to stop. */
static int hb_gather(unsigned gen, hb_watch **w, size_t *cap, double *next) {
  pthread_mutex_lock(&hb.mu);
  if (hb.gen != gen) {
    pthread_mutex_unlock(&hb.mu);
    return -1;
  }
  int n = 0;
  *next = rw_mono_now() + 1;
  for (proxy_sink *ps = hb.sinks; ps; ps = ps->hb_next) {
    pthread_mutex_lock(&ps->mu);
    for (int i = 0; i < ps->cfg.connections; i++) {
      pconn *c = &ps->conns[i];
      if (c->busy || c->fd < 0) continue;
      if ((size_t)n == *cap) {
        hb_watch *g = realloc(*w, 2 * *cap * sizeof **w);
        if (!g) continue; /* watched once memory allows; refreshed at checkout anyway */
        *w = g, *cap *= 2;
      }
      double due = (c->last_rx > c->last_ping ? c->last_rx : c->last_ping) + c->ping_interval;
      (*w)[n++] = (hb_watch){.ps = ps, .id = ps->hb_id, .conn = i, .fd = c->fd, .due = due};
      if (due < *next) *next = due;
    }
    pthread_mutex_unlock(&ps->mu);
  }
  pthread_mutex_unlock(&hb.mu);
  return n;
}

static proxy_sink *hb_find(const hb_watch *w) { /* hb.mu held */
  for (proxy_sink *ps = hb.sinks; ps; ps = ps->hb_next)
    if (ps == w->ps && ps->hb_id == w->id) return ps;
  return NULL;
}

typedef enum { HB_KEPT, HB_PINGED, HB_DROPPED } hb_outcome;

/* One pass over an idle connection the thread holds: frames in (PINGs
 * answered, EOF or GOODBYE closes), then a PING when one is due, or the
 * close after MISSED_PINGS unanswered. Sends have 1 s: a connection that
 * cannot take a PING by then is gone. */
static hb_outcome hb_tend_conn(pconn *c, bool readable) {
  rw_ctx *ctx = rw_ctx_with_timeout(NULL, 1);
  if (!ctx) return HB_KEPT;
  hb_outcome out = HB_KEPT;
  if (readable || c->pos < c->have) conn_refresh(c, ctx);
  double now = rw_mono_now();
  double base = c->last_rx > c->last_ping ? c->last_rx : c->last_ping;
  if (c->fd >= 0 && now >= base + c->ping_interval) {
    rw_error *e = NULL;
    if (c->missed >= MISSED_PINGS) out = HB_DROPPED;
    else if ((e = send_ping_msg(c, RWP_PING, ++c->ping_nonce, ctx))) out = HB_DROPPED;
    else c->missed++, c->last_ping = now, out = HB_PINGED;
    rw_error_unref(e);
    if (out == HB_DROPPED) conn_close(c);
  }
  rw_ctx_unref(ctx);
  return out;
}

/* Every watched connection that is readable or due gets its pass. */
/* hb.mu is not held during a pass (other sinks' puts kick meanwhile): a
 * destroy waits for hb_holding to fall to 0 instead. */
static void hb_tend(const hb_watch *w, const struct pollfd *pf, int n) {
  double now = rw_mono_now();
  for (int i = 0; i < n; i++) {
    if (!pf[i].revents && w[i].due > now) continue;
    pthread_mutex_lock(&hb.mu);
    proxy_sink *ps = hb_find(&w[i]);
    pconn *c = ps ? &ps->conns[w[i].conn] : NULL;
    bool mine = false;
    if (ps) {
      pthread_mutex_lock(&ps->mu);
      mine = !c->busy && c->fd == w[i].fd;
      if (mine) c->busy = true, ps->hb_holding++;
      pthread_mutex_unlock(&ps->mu);
    }
    pthread_mutex_unlock(&hb.mu);
    if (!mine) continue; /* gone, or a put took it meanwhile */
    hb_outcome o = hb_tend_conn(c, pf[i].revents != 0);
    pthread_mutex_lock(&ps->mu);
    c->busy = false, ps->hb_holding--;
    if (o == HB_PINGED) ps->stats.pings++;
    if (o == HB_DROPPED) ps->stats.dropped++;
    pthread_cond_broadcast(&ps->cv);
    pthread_mutex_unlock(&ps->mu);
  }
}

static void *hb_main(void *arg) {
  unsigned gen = (unsigned)(uintptr_t)arg;
  pthread_mutex_lock(&hb.mu);
  int wakefd = hb.wakefd;
  pthread_mutex_unlock(&hb.mu);
  size_t cap = 16;
  hb_watch *w = malloc(cap * sizeof *w);
  struct pollfd *pf = NULL;
  double next;
  int n;
  while (w && (n = hb_gather(gen, &w, &cap, &next)) >= 0) {
    struct pollfd *g = realloc(pf, (cap + 1) * sizeof *pf);
    if (!g) break;
    pf = g;
    pf[0] = (struct pollfd){.fd = wakefd, .events = POLLIN};
    for (int i = 0; i < n; i++) pf[i + 1] = (struct pollfd){.fd = w[i].fd, .events = POLLIN};
    double left = next - rw_mono_now();
    int ms = !n ? -1 : left <= 0 ? 0 : left >= 1 ? 1000 : (int)ceil(left * 1000); /* none: a kick wakes it */
    if (poll(pf, (nfds_t)n + 1, ms) < 0)
      for (int i = 0; i <= n; i++) pf[i].revents = 0;
    uint64_t v;
    if (pf[0].revents && read(wakefd, &v, sizeof v) < 0) { /* EAGAIN: another read took it */
    }
    hb_tend(w, pf + 1, n);
  }
  free(w);
  free(pf);
  return NULL;
}

/* ---- the connection pool and requests ---- */

static bool has_free(void *arg) {
  proxy_sink *ps = arg;
  if (ps->hb_holding) return false; /* the heartbeat hands it back in a moment */
  for (int i = 0; i < ps->cfg.connections; i++)
    if (!ps->conns[i].busy) return true;
  return false;
}

/* A connection for one request, open and authenticated. A proxy that cannot
 * be reached moves the sink to the next address (tried once each). */
static rw_error *checkout(proxy_sink *ps, rw_ctx *ctx, pconn **out) {
  pthread_mutex_lock(&ps->mu);
  rw_error *e = rw_ctx_cond_wait(ctx, &ps->mu, &ps->cv, has_free, ps, INFINITY);
  pconn *c = NULL;
  for (int i = 0; !e && i < ps->cfg.connections; i++)
    if (!ps->conns[i].busy && (!c || (c->fd < 0 && ps->conns[i].fd >= 0))) c = &ps->conns[i];
  if (c) c->busy = true;
  size_t at = ps->cur_addr;
  pthread_mutex_unlock(&ps->mu);
  if (e) return e;
  conn_refresh(c, ctx);
  for (size_t tried = 0; c->fd < 0 && tried < ps->cfg.naddrs; tried++) {
    size_t i = (at + tried) % ps->cfg.naddrs;
    rw_error *oe = conn_open(ps, c, ps->addrs[i], ctx);
    pthread_mutex_lock(&ps->mu);
    if (!oe) ps->stats.connects++;
    if (oe && ps->cur_addr == i && ps->cfg.naddrs > 1) {
      ps->cur_addr = (i + 1) % ps->cfg.naddrs;
      ps->stats.failovers++;
      ps->epoch++;
    }
    pthread_mutex_unlock(&ps->mu);
    rw_error_unref(e);
    e = oe;
    if (rw_ctx_done(ctx) || (e && !rw_error_retryable(e) && !rw_error_is(e, RW_E_NET_REFUSED))) break;
  }
  if (c->fd >= 0) {
    rw_error_unref(e);
    *out = c;
    return NULL;
  }
  pthread_mutex_lock(&ps->mu);
  c->busy = false;
  pthread_cond_broadcast(&ps->cv);
  pthread_mutex_unlock(&ps->mu);
  return e;
}

static void checkin(proxy_sink *ps, pconn *c, bool drop) {
  if (drop) conn_close(c);
  c->last_rx = rw_mono_now(); /* the put's last reply: the idle clock starts here */
  pthread_mutex_lock(&ps->mu);
  if (drop) ps->stats.dropped++;
  c->busy = false;
  pthread_cond_broadcast(&ps->cv);
  pthread_mutex_unlock(&ps->mu);
  if (!drop) hb_kick();
}

static uint64_t seq_new(proxy_sink *ps) {
  pthread_mutex_lock(&ps->mu);
  uint64_t s = ps->next_seq++;
  if (ps->noutstanding < MAX_OUTSTANDING) ps->outstanding[ps->noutstanding++] = s;
  ps->stats.requests++;
  pthread_mutex_unlock(&ps->mu);
  return s;
}

static void seq_done(proxy_sink *ps, uint64_t s) {
  pthread_mutex_lock(&ps->mu);
  for (int i = 0; i < ps->noutstanding; i++)
    if (ps->outstanding[i] == s) {
      ps->outstanding[i] = ps->outstanding[--ps->noutstanding];
      break;
    }
  pthread_mutex_unlock(&ps->mu);
}

/* Every reply with seq <= ack was received. */
static uint64_t ack_now(proxy_sink *ps) {
  pthread_mutex_lock(&ps->mu);
  uint64_t low = ps->next_seq;
  for (int i = 0; i < ps->noutstanding; i++)
    if (ps->outstanding[i] < low) low = ps->outstanding[i];
  pthread_mutex_unlock(&ps->mu);
  return low - 1;
}

/* The reply of one request: op fields and the body (owned). */
typedef struct reply {
  rwp_reply r;
  char session[RWP_MAX_SESSION + 1];
  char *body;
  size_t body_len;
} reply;

/* Waits for the reply to seq on c. *conn_err: the connection is unusable. */
static rw_error *await_reply(proxy_sink *ps, pconn *c, rw_ctx *ctx, const rwp_msg *m, reply *out,
                             bool *conn_err) {
  double until = rw_mono_now() + ps->cfg.request_timeout;
  for (;;) {
    rwp_frame f;
    rw_error *e = conn_recv(ps, c, ctx, until, &f);
    if (e) {
      *conn_err = true;
      return e;
    }
    if (f.msg.op == RWP_ERROR && f.msg.seq == 0) { /* about the connection */
      *conn_err = true;
      e = request_error(&f, ctx);
    } else if (f.msg.seq != m->seq) {
      rwp_frame_clear(&f); /* an old reply to a request given up on */
      continue;
    } else if (f.msg.op == RWP_ERROR) {
      e = request_error(&f, ctx);
    } else if (!(e = rwp_decode_reply(m->op, f.ops, f.hdr_len - RWP_HDR, &out->r))) {
      snprintf(out->session, sizeof out->session, "%.*s", (int)out->r.session.len, out->r.session.p);
      out->r.session = (rwp_str){out->session, out->r.session.len};
      if (f.body_len) {
        out->body = f.body_owned ? (char *)f.body : NULL;
        out->body_len = f.body_len;
        if (f.body_owned) f.body = NULL, f.body_owned = false;
      }
    } else {
      *conn_err = true;
    }
    rwp_frame_clear(&f);
    return e;
  }
}

static bool resendable(const rw_error *e) {
  const char *code = rw_error_code(e);
  return rw_error_retryable(e) || strncmp(code, "net.", 4) == 0 || strncmp(code, "proto.", 6) == 0;
}

/* One request, resent (same seq, RETRY) on another connection while
 * connections break, at most twice per connection and address. */
static rw_error *call_seq(proxy_sink *ps, rw_ctx *ctx, rwp_msg *m, const void *body, size_t len, reply *out) {
  memset(out, 0, sizeof *out);
  m->client_id = ps->client_id;
  m->seq = seq_new(ps);
  int limit = 2 * (ps->cfg.connections + (int)ps->cfg.naddrs);
  rw_error *e = NULL;
  for (int attempt = 0; attempt < limit; attempt++) {
    pconn *c = NULL;
    rw_error_unref(e);
    if ((e = checkout(ps, ctx, &c))) break;
    m->flags = attempt ? RWP_FLAG_RETRY : 0;
    m->ack = ack_now(ps);
    if (attempt) {
      pthread_mutex_lock(&ps->mu);
      ps->stats.resent++;
      pthread_mutex_unlock(&ps->mu);
    }
    rwp_encoded enc;
    bool conn_err = false;
    e = conn_send(c, m, body, len, ctx, ps->base.stall_timeout > 0 ? ps->base.stall_timeout : 30, &enc);
    if (e) conn_err = true;
    else e = await_reply(ps, c, ctx, m, out, &conn_err);
    checkin(ps, c, conn_err);
    if (!e || !conn_err || rw_ctx_done(ctx) || !resendable(e)) break;
    rw_error_log(RW_LOG_INFO, e, "proxy: resending the request on another connection after");
  }
  seq_done(ps, m->seq);
  return e;
}

/* proxy.expired: the proxy's table forgot the request (section 7.4). Every
 * operation is safe to run again (7.5), so it goes out once more as a new
 * request; a WRITE_AT's reply then says where the upload stands. */
static rw_error *call(proxy_sink *ps, rw_ctx *ctx, rwp_msg *m, const void *body, size_t len, reply *out) {
  rw_error *e = call_seq(ps, ctx, m, body, len, out);
  if (!e || !rw_error_is(e, RW_E_PROTO_EXPIRED)) return e;
  rw_error_log(RW_LOG_INFO, e, "proxy: sending the request again as a new one after");
  rw_error_unref(e);
  free(out->body);
  return call_seq(ps, ctx, m, body, len, out);
}

/* ---- the sink ---- */

static rw_error *proxy_begin(rw_sink *s, rw_ctx *ctx) {
  proxy_sink *ps = (proxy_sink *)s;
  rwp_msg m = {.op = RWP_CREATE};
  m.u.create = (rwp_create){.bucket = rwp_cstr(ps->bucket), .object = rwp_cstr(ps->object),
                            .if_generation_match = ps->cfg.if_generation_match,
                            .if_metageneration_match = ps->cfg.if_metageneration_match};
  if (ps->cfg.has_if_generation_match) m.u.create.flags2 |= RWP_CREATE_IF_GEN;
  if (ps->cfg.has_if_metageneration_match) m.u.create.flags2 |= RWP_CREATE_IF_METAGEN;
  const char *md = ps->metadata ? ps->metadata : "";
  reply r;
  rw_error *e = call(ps, ctx, &m, md, strlen(md), &r);
  if (!e && !r.r.session.len) e = rw_err(RW_E_PROTOCOL, "proxy: CREATE answered without a session");
  if (!e) {
    char *copy = strdup(r.session);
    if (!copy) e = rw_err(RW_E_NOMEM, "proxy: out of memory");
    pthread_mutex_lock(&ps->mu);
    if (copy) free(ps->session), ps->session = copy;
    pthread_mutex_unlock(&ps->mu);
  }
  free(r.body);
  return e;
}

static char *json_text(json_t *o, const char *key) {
  json_t *v = json_object_get(o, key);
  if (json_is_string(v)) return strdup(json_string_value(v));
  if (json_is_integer(v)) {
    char b[32];
    snprintf(b, sizeof b, "%" JSON_INTEGER_FORMAT, json_integer_value(v));
    return strdup(b);
  }
  return NULL;
}

static rw_error *parse_object(const char *body, size_t len, rw_sink_object *obj) {
  json_t *j = body ? json_loadb(body, len, 0, NULL) : NULL;
  char *size = json_is_object(j) ? json_text(j, "size") : NULL;
  char *end = NULL;
  unsigned long long sz = size ? strtoull(size, &end, 10) : 0;
  bool ok = size && *size && end && !*end;
  free(size);
  if (!ok) {
    json_decref(j);
    return rw_err(RW_E_PROTOCOL, "proxy: the reply carries no object resource with a size");
  }
  obj->size = sz;
  obj->bucket = json_text(j, "bucket");
  obj->name = json_text(j, "name");
  obj->generation = json_text(j, "generation");
  obj->crc32c = json_text(j, "crc32c");
  obj->md5 = json_text(j, "md5Hash");
  obj->json = strndup(body, len);
  json_decref(j);
  return NULL;
}

static uint64_t epoch_of(proxy_sink *ps) {
  pthread_mutex_lock(&ps->mu);
  uint64_t e = ps->epoch;
  pthread_mutex_unlock(&ps->mu);
  return e;
}

static const char *session_of(proxy_sink *ps, char *buf, size_t cap) {
  pthread_mutex_lock(&ps->mu);
  snprintf(buf, cap, "%s", ps->session ? ps->session : "");
  pthread_mutex_unlock(&ps->mu);
  return buf;
}

static rw_error *proxy_query(rw_sink *s, rw_ctx *ctx, rw_sink_result *res) {
  proxy_sink *ps = (proxy_sink *)s;
  char sess[RWP_MAX_SESSION + 1];
  memset(res, 0, sizeof *res);
  rwp_msg m = {.op = RWP_STATUS};
  m.u.session_op.session = rwp_cstr(session_of(ps, sess, sizeof sess));
  reply r;
  rw_error *e = call(ps, ctx, &m, NULL, 0, &r);
  if (!e) {
    res->persisted = r.r.persisted;
    res->finalized = r.r.finalized != 0;
    if (res->finalized) e = parse_object(r.body, r.body_len, &res->obj);
    if (!e && res->finalized) res->persisted = res->obj.size;
  }
  res->epoch = epoch_of(ps);
  free(r.body);
  return e;
}

/* ---- WRITE_AT: a put's frames pipelined on one connection ---- */


typedef struct wframe {
  uint64_t off, seq; /* seq 0: not sent yet (or expired: sent again as new) */
  const char *body;
  size_t len;
  bool done, unsent; /* unsent: not (yet) sent on the current connection */
} wframe;

typedef struct wbatch {
  wframe *f;
  size_t n, next, inflight, done; /* next: the first frame never sent */
  const char *sess;
  uint64_t persisted;
  int busy; /* frames the proxy answered proto.busy, sent again as new */
} wbatch;

/* A frame the proxy could not take yet (proto.busy: the bytes below it are
 * still on their way on another connection) goes again as a new request,
 * after the retry_after_ms the proxy asked for, this many times per put;
 * then the put fails with it (retryable: the writer backs off and resends).
 * A proto.busy without retry_after_ms fails the put at once. */
#define BUSY_RESENDS 64

/* A put's bytes cut into frames of at most limit bytes, each a slice of one
 * iovec (straight from the cache: no copy). */
static rw_error *batch_cut(const rw_sink_put *p, size_t limit, wbatch *b) {
  size_t n = 0;
  for (int i = 0; i < p->iovcnt; i++) n += (p->iov[i].iov_len + limit - 1) / limit;
  b->f = calloc(n ? n : 1, sizeof *b->f);
  if (!b->f) return rw_err(RW_E_NOMEM, "proxy: out of memory cutting a put into frames");
  uint64_t off = p->offset;
  for (int i = 0; i < p->iovcnt; i++)
    for (size_t at = 0; at < p->iov[i].iov_len; at += limit) {
      size_t len = p->iov[i].iov_len - at < limit ? p->iov[i].iov_len - at : limit;
      b->f[b->n++] = (wframe){.off = off, .body = (const char *)p->iov[i].iov_base + at, .len = len};
      off += len;
    }
  return NULL;
}

static rw_error *send_write(proxy_sink *ps, pconn *c, rw_ctx *ctx, wbatch *b, wframe *f) {
  bool again = f->seq != 0;
  if (!again) f->seq = seq_new(ps);
  rwp_msg m = {.op = RWP_WRITE_AT, .client_id = ps->client_id, .seq = f->seq,
               .flags = again ? RWP_FLAG_RETRY : 0, .ack = ack_now(ps)};
  m.u.write_at = (rwp_write_at){.session = rwp_cstr(b->sess), .offset = f->off};
  if (again) {
    pthread_mutex_lock(&ps->mu);
    ps->stats.resent++;
    pthread_mutex_unlock(&ps->mu);
  }
  rwp_encoded enc;
  return conn_send(c, &m, f->body, f->len, ctx, ps->base.stall_timeout > 0 ? ps->base.stall_timeout : 30, &enc);
}

static wframe *batch_find(wbatch *b, uint64_t seq) {
  for (size_t i = 0; i < b->next; i++)
    if (b->f[i].seq == seq && !b->f[i].done) return &b->f[i];
  return NULL;
}

/* One reply to a frame of the batch (others are old news). *conn_err: the
 * connection is unusable. proto.expired, and proto.busy BUSY_RESENDS times:
 * the frame goes again as new. */
static rw_error *batch_take(proxy_sink *ps, pconn *c, rw_ctx *ctx, wbatch *b, bool *conn_err) {
  rwp_frame fr;
  rw_error *e = conn_recv(ps, c, ctx, rw_mono_now() + ps->cfg.request_timeout, &fr);
  if (e) {
    *conn_err = true;
    return e;
  }
  wframe *f = fr.msg.seq ? batch_find(b, fr.msg.seq) : NULL;
  rwp_reply r;
  if (fr.msg.op == RWP_ERROR && fr.msg.seq == 0) {
    *conn_err = true;
    e = request_error(&fr, ctx);
  } else if (f && fr.msg.op == RWP_ERROR) {
    e = request_error(&fr, ctx); /* waits retry_after_ms of a retryable one */
    b->inflight--; /* answered, whatever comes next */
    /* Only a busy that says when to come back (a gap still in flight) goes
     * again as new; one without (no session, pool or reply-table room left)
     * fails the put, and the writer's backoff paces the next try. */
    bool busy = rw_error_is(e, RW_E_PROTO_BUSY) && fr.msg.u.error.retry_after_ms > 0 && b->busy < BUSY_RESENDS;
    b->busy += busy;
    if (busy || rw_error_is(e, RW_E_PROTO_EXPIRED)) {
      seq_done(ps, f->seq);
      f->seq = 0; /* sent again as a new request (PROTOCOL.md 7.4, 7.5) */
      f->unsent = true;
      rw_error_unref(e);
      e = NULL;
    }
  } else if (f && !(e = rwp_decode_reply(RWP_WRITE_AT, fr.ops, fr.hdr_len - RWP_HDR, &r))) {
    f->done = true;
    b->done++, b->inflight--;
    seq_done(ps, f->seq);
    if (r.persisted > b->persisted) b->persisted = r.persisted;
  } else if (f) {
    *conn_err = true;
  }
  rwp_frame_clear(&fr);
  return e;
}

/* The next frame to send on the current connection: one a lost connection
 * took or that expired (marked unsent), else the first never sent. */
static wframe *next_to_send(wbatch *b) {
  for (size_t i = 0; i < b->next; i++)
    if (b->f[i].unsent && !b->f[i].done) return &b->f[i];
  return b->next < b->n ? &b->f[b->next++] : NULL;
}

/* Sends the batch on c, at most the connection's max_inflight unanswered,
 * until every frame is answered. */
static rw_error *batch_run(proxy_sink *ps, pconn *c, rw_ctx *ctx, wbatch *b, bool *conn_err) {
  b->inflight = 0;
  for (size_t i = 0; i < b->next; i++) b->f[i].unsent = !b->f[i].done;
  while (b->done < b->n) {
    wframe *f;
    while (b->inflight < c->max_inflight && (f = next_to_send(b))) {
      f->unsent = false;
      rw_error *e = send_write(ps, c, ctx, b, f);
      if (e) return *conn_err = true, e;
      b->inflight++;
    }
    rw_error *e = batch_take(ps, c, ctx, b, conn_err);
    if (e) return e;
  }
  return NULL;
}

static rw_error *write_pieces(proxy_sink *ps, rw_ctx *ctx, const rw_sink_put *p, const char *sess,
                              uint64_t *persisted) {
  pthread_mutex_lock(&ps->mu);
  size_t limit = ps->frame_limit;
  pthread_mutex_unlock(&ps->mu);
  wbatch b = {.sess = sess};
  rw_error *e = batch_cut(p, limit, &b);
  int tries = 2 * (ps->cfg.connections + (int)ps->cfg.naddrs);
  for (int attempt = 0; !e && b.done < b.n; attempt++) {
    pconn *c = NULL;
    if ((e = checkout(ps, ctx, &c))) break;
    bool conn_err = false;
    e = batch_run(ps, c, ctx, &b, &conn_err);
    /* A put that failed with frames still unanswered on c: those count
     * against c's max_inflight at the proxy until it answers them, so the
     * next put on c could get proto.too_many and a closed connection. */
    checkin(ps, c, conn_err || b.inflight > 0);
    if (!e || !conn_err || rw_ctx_done(ctx) || !resendable(e) || attempt + 1 >= tries) break;
    rw_error_log(RW_LOG_INFO, e, "proxy: resending the unanswered WRITE_ATs on another connection after");
    rw_error_unref(e);
    e = NULL;
  }
  for (size_t i = 0; i < b.next; i++)
    if (b.f[i].seq && !b.f[i].done) seq_done(ps, b.f[i].seq);
  *persisted = b.persisted;
  free(b.f);
  return e;
}

/* COMPLETE; when it fails, STATUS says whether the object exists or the
 * proxy lacks bytes it accepted (a new proxy): then the writer resends. */
static rw_error *complete(proxy_sink *ps, rw_ctx *ctx, const rw_sink_put *p, const char *sess,
                          rw_sink_result *res) {
  rwp_msg m = {.op = RWP_COMPLETE};
  m.u.complete = (rwp_complete){.session = rwp_cstr(sess), .total = p->offset + p->len};
  if (p->sums && p->sums->has_crc32c) m.u.complete.sums |= RWP_SUM_CRC32C, m.u.complete.crc32c = p->sums->crc32c;
  if (p->sums && p->sums->has_md5) m.u.complete.sums |= RWP_SUM_MD5, memcpy(m.u.complete.md5, p->sums->md5, 16);
  reply r;
  rw_error *e = call(ps, ctx, &m, NULL, 0, &r);
  if (!e) {
    e = parse_object(r.body, r.body_len, &res->obj);
    if (!e) res->finalized = true, res->persisted = res->obj.size;
    free(r.body);
    return e;
  }
  free(r.body);
  if (rw_error_retryable(e) || rw_error_is(e, RW_E_CHECKSUM) || rw_error_is(e, RW_E_PRECONDITION)) return e;
  rw_sink_result st;
  rw_error *qe = proxy_query(&ps->base, ctx, &st);
  if (qe || (!st.finalized && st.persisted >= p->offset + p->len)) {
    rw_error_unref(qe);
    rw_sink_result_clear(&st);
    return e;
  }
  rw_error_unref(e);
  rw_sink_result_clear(res);
  *res = st;
  return NULL;
}

static rw_error *proxy_put(rw_sink *s, rw_ctx *ctx, const rw_sink_put *p, rw_sink_result *res) {
  proxy_sink *ps = (proxy_sink *)s;
  char sess[RWP_MAX_SESSION + 1];
  memset(res, 0, sizeof *res);
  session_of(ps, sess, sizeof sess);
  if (!*sess) return rw_err(RW_E_NO_SESSION, "proxy: put before the session exists");
  uint64_t persisted = 0;
  rw_error *e = write_pieces(ps, ctx, p, sess, &persisted);
  res->persisted = persisted;
  if (!e && p->final) e = complete(ps, ctx, p, sess, res);
  res->epoch = epoch_of(ps);
  return e;
}

static rw_error *proxy_abort(rw_sink *s, rw_ctx *ctx) {
  proxy_sink *ps = (proxy_sink *)s;
  char sess[RWP_MAX_SESSION + 1];
  if (!*session_of(ps, sess, sizeof sess)) return NULL;
  rwp_msg m = {.op = RWP_ABORT};
  m.u.session_op.session = rwp_cstr(sess);
  reply r;
  rw_error *e = call(ps, ctx, &m, NULL, 0, &r);
  free(r.body);
  return e;
}

/* The writer reads it after begin and at resume, never while a begin runs. */
static const char *proxy_session(rw_sink *s) {
  proxy_sink *ps = (proxy_sink *)s;
  pthread_mutex_lock(&ps->mu);
  const char *h = ps->session ? ps->session : "";
  pthread_mutex_unlock(&ps->mu);
  return h;
}

static void proxy_destroy(rw_sink *s) {
  proxy_sink *ps = (proxy_sink *)s;
  hb_unregister(ps); /* the heartbeat thread lets go of our connections first */
  for (int i = 0; ps->conns && i < ps->cfg.connections; i++) conn_close(&ps->conns[i]);
  free(ps->conns);
  for (size_t i = 0; i < RW_PROXY_SINK_MAX_ADDRS; i++) free(ps->addrs[i]);
  free(ps->key_id), free(ps->bucket), free(ps->object), free(ps->metadata), free(ps->session);
  if (ps->secret) rwp_wipe(ps->secret, ps->cfg.secret_len);
  free(ps->secret);
  pthread_cond_destroy(&ps->cv);
  pthread_mutex_destroy(&ps->mu);
  free(ps);
}

void rw_proxy_sink_stats(rw_sink *s, rw_proxy_sink_counts *out) {
  memset(out, 0, sizeof *out);
  if (s->ops != &proxy_ops) return;
  proxy_sink *ps = (proxy_sink *)s;
  pthread_mutex_lock(&ps->mu);
  *out = ps->stats;
  pthread_mutex_unlock(&ps->mu);
}

static char *dup_or_null(const char *s, bool *ok) {
  char *d = s ? strdup(s) : NULL;
  if (s && !d) *ok = false;
  return d;
}

static bool copy_config(proxy_sink *ps, const rw_proxy_sink_config *cfg) {
  bool ok = true;
  ps->cfg = *cfg;
  for (size_t i = 0; i < cfg->naddrs; i++) ps->addrs[i] = dup_or_null(cfg->addrs[i], &ok);
  ps->key_id = dup_or_null(cfg->key_id, &ok);
  ps->bucket = dup_or_null(cfg->bucket, &ok);
  ps->object = dup_or_null(cfg->object, &ok);
  ps->metadata = dup_or_null(cfg->metadata, &ok);
  ps->session = dup_or_null(cfg->session, &ok);
  ps->secret = malloc(cfg->secret_len);
  if (ps->secret) memcpy(ps->secret, cfg->secret, cfg->secret_len);
  ps->conns = calloc((size_t)cfg->connections, sizeof *ps->conns);
  for (int i = 0; ps->conns && i < cfg->connections; i++) ps->conns[i].fd = -1;
  /* the copies own the strings now: the config's pointers are not kept */
  for (size_t i = 0; i < RW_PROXY_SINK_MAX_ADDRS; i++) ps->cfg.addrs[i] = NULL;
  ps->cfg.secret = NULL;
  ps->cfg.key_id = ps->cfg.bucket = ps->cfg.object = ps->cfg.metadata = ps->cfg.session = NULL;
  return ok && ps->secret && ps->conns;
}

rw_sink *rw_proxy_sink_new(const rw_proxy_sink_config *cfg, rw_error **err) {
  if ((*err = rw_proxy_sink_config_check(cfg))) return NULL;
  proxy_sink *ps = calloc(1, sizeof *ps);
  if (!ps) goto nomem;
  pthread_mutex_init(&ps->mu, NULL);
  rw_cond_init(&ps->cv);
  ps->base.ops = &proxy_ops;
  ps->base.max_inflight = cfg->connections;
  ps->base.max_ahead = cfg->window;
  ps->base.has_precondition = cfg->has_if_generation_match || cfg->has_if_metageneration_match;
  ps->next_seq = 1;
  ps->frame_limit = cfg->max_frame;
  if (!copy_config(ps, cfg)) {
    proxy_destroy(&ps->base);
    goto nomem;
  }
  while (!ps->client_id)
    if ((*err = rwp_random(&ps->client_id, sizeof ps->client_id))) {
      proxy_destroy(&ps->base);
      return NULL;
    }
  hb_register(ps);
  return &ps->base;
nomem:
  *err = rw_err(RW_E_NOMEM, "proxy: out of memory making the sink");
  return NULL;
}

static const rw_sink_ops proxy_ops = {
    .kind = "proxy",
    .begin = proxy_begin,
    .put = proxy_put,
    .query = proxy_query,
    .abort = proxy_abort,
    .session = proxy_session,
    .destroy = proxy_destroy,
};
