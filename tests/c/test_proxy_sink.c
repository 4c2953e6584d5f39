/* The proxy client sink (csrc/sinks/proxy.c) under the writer, against a
 * small scripted RWP/1 peer built from the codec: uploads byte-identical
 * over several connections, a silent connection dropped after 3 PINGs and
 * its request resent (same seq, RETRY) on another, a proxy killed mid-upload
 * with the upload finishing through the other address, a wrong secret, and
 * bad options. */
#include <arpa/inet.h>
#include <dirent.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>

#include "core/backoff.h"
#include "core/checksum.h"
#include "core/clock.h"
#include "ctest.h"
#include "io/writer.h"
#include "proxy/auth.h"
#include "proxy/frame.h"
#include "sinks/proxy.h"
#include "testbed/chaos.h"
#include "testbed/faults.h"

#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#define RW_SANITIZED 1
#endif

static uint64_t rng;
static uint8_t secret[32], other_secret[32];

/* ---- the "GCS" behind the peers: bytes at offsets, one session ---- */

typedef struct store {
  pthread_mutex_t mu;
  unsigned char *data, *have;
  uint64_t cap, total, prefix;
  bool finalized;
} store;

static uint64_t store_prefix(store *s) { /* mu held; the prefix only grows */
  while (s->prefix < s->cap && s->have[s->prefix]) s->prefix++;
  return s->prefix;
}

/* ---- a scripted peer: one listener, a thread per connection ---- */

#define MAX_PEER_CONNS 64
typedef struct peer {
  store *st;
  const uint8_t *secret;
  int lfd, port;
  pthread_t acceptor;
  atomic_bool stop;
  pthread_mutex_t mu;
  pthread_t threads[MAX_PEER_CONNS];
  int fds[MAX_PEER_CONNS], nconns;
  atomic_int writes, active, peak_active, retries_known, dup_without_retry, silenced;
  atomic_int expire_once;
  atomic_int limit_once; /* the next WRITE_AT: proto.rate_limited, retry_after_ms 300, not run */
  atomic_int busy0;      /* this many WRITE_ATs: proto.busy without retry_after_ms, not run */
  atomic_int busy0_sent; /* how many were answered so */
  double limited_at, retried_at; /* when it was refused, when that offset came again (mu) */
  uint64_t limited_off;
  uint64_t window; /* bytes past the contiguous prefix taken (0: any); past it: rw.out_of_window */
  atomic_int out_of_window;
  int bye_after;  /* a connection says GOODBYE and closes after this many replies (0: never) */
  atomic_int byes; /* the next WRITE_AT is answered proto.expired, not run */
  int silent_after; /* a connection goes silent after this many WRITE_ATs (0: never), once */
  uint64_t seen[4096]; /* seqs seen (RETRY bookkeeping), under mu */
  int nseen;
  int ping_every_ms;   /* a connection idle this long gets a PING from the peer (0: never) */
  atomic_bool mute_pings; /* the client's PINGs go unanswered */
  atomic_int pings_got, pongs_got, eofs, eof_pings; /* eof_pings: PINGs the last closed connection got */
  double max_pong_delay; /* the slowest PONG to the peer's PINGs (mu) */
} peer;

typedef struct pconn_t {
  peer *p;
  int fd;
  rwp_writer w;
  rwp_reader *r;
  uint8_t buf[65536];
  size_t have, pos;
  bool authed, ping_out;
  double last_in, ping_at; /* the last frame in; the peer's last PING out */
  uint64_t nonce;
  int pings_in;
} pconn_t;

static bool send_msg(pconn_t *c, const rwp_msg *m, const void *body, size_t len) {
  rwp_encoded e;
  rw_error *err = rwp_encode(&c->w, m, body, len, &e);
  if (err) {
    rw_error_unref(err);
    return false;
  }
  struct iovec iov[3];
  int n = rwp_encoded_iov(&e, iov);
  size_t total = 0;
  for (int i = 0; i < n; i++) total += iov[i].iov_len;
  struct msghdr mh = {.msg_iov = iov, .msg_iovlen = (size_t)n};
  ssize_t w = sendmsg(c->fd, &mh, MSG_NOSIGNAL);
  return w == (ssize_t)total; /* blocking socket: all or an error */
}

/* The peer's own heartbeat: a PING when the connection was idle for
 * ping_every_ms (its reader runs in the same thread: one writer). */
static void peer_ping_if_idle(pconn_t *c) {
  double now = rw_mono_now(), last = c->last_in > c->ping_at ? c->last_in : c->ping_at;
  if (!c->authed || !c->p->ping_every_ms || now - last < c->p->ping_every_ms / 1000.0) return;
  rwp_msg m = {.op = RWP_PING};
  m.u.ping.nonce = ++c->nonce;
  c->ping_at = now;
  c->ping_out = send_msg(c, &m, NULL, 0);
}

static void peer_got_pong(pconn_t *c, uint64_t nonce) {
  atomic_fetch_add(&c->p->pongs_got, 1);
  if (!c->ping_out || nonce != c->nonce) return;
  c->ping_out = false;
  pthread_mutex_lock(&c->p->mu);
  double d = rw_mono_now() - c->ping_at;
  if (d > c->p->max_pong_delay) c->p->max_pong_delay = d;
  pthread_mutex_unlock(&c->p->mu);
}

/* Next frame; false on EOF, error or stop. */
static bool recv_frame(pconn_t *c, rwp_frame *f) {
  for (;;) {
    while (c->pos < c->have) {
      size_t used = 0;
      bool got = false;
      rw_error *e = rwp_reader_feed(c->r, c->buf + c->pos, c->have - c->pos, &used, f, &got);
      c->pos += used;
      if (e) {
        rw_error_unref(e);
        return false;
      }
      if (got) c->last_in = rw_mono_now();
      if (got) return true;
    }
    c->have = c->pos = 0;
    struct pollfd pf = {.fd = c->fd, .events = POLLIN};
    int tick = c->p->ping_every_ms && c->p->ping_every_ms < 20 ? c->p->ping_every_ms : 20;
    while (poll(&pf, 1, tick) == 0) {
      if (atomic_load(&c->p->stop)) return false;
      peer_ping_if_idle(c);
    }
    if (atomic_load(&c->p->stop)) return false;
    ssize_t n = read(c->fd, c->buf, sizeof c->buf);
    if (n <= 0) return false;
    c->have = (size_t)n;
  }
}

static bool server_handshake(pconn_t *c) {
  rwp_frame f;
  if (!recv_frame(c, &f) || f.msg.op != RWP_HELLO) return false;
  uint8_t hello[RWP_HDR + RWP_MAX_OP], cnonce[32], th[32], want[32], k_c2s[32], k_s2c[32];
  size_t hello_len = f.hdr_len;
  memcpy(hello, f.raw, hello_len);
  memcpy(cnonce, f.msg.u.hello.client_nonce, 32);
  uint64_t client_id = f.msg.client_id;
  uint32_t mf = f.msg.u.hello.max_frame < (256u << 10) ? f.msg.u.hello.max_frame : 256u << 10;
  rwp_msg m = {.op = RWP_CHALLENGE};
  m.u.challenge = (rwp_challenge){.version = 1, .max_frame = mf, .max_inflight = 8, .ping_interval_ms = 5000};
  rw_error_unref(rwp_random(m.u.challenge.server_nonce, 32));
  rwp_encoded e;
  rw_error_unref(rwp_encode(&c->w, &m, NULL, 0, &e));
  rwp_transcript_hash(hello, hello_len, e.head, e.head_len, th);
  struct iovec iov[3];
  struct msghdr mh = {.msg_iov = iov, .msg_iovlen = (size_t)rwp_encoded_iov(&e, iov)};
  if (sendmsg(c->fd, &mh, MSG_NOSIGNAL) <= 0) return false;
  if (!recv_frame(c, &f) || f.msg.op != RWP_AUTH) return false;
  rwp_client_proof(c->p->secret, 32, th, want);
  if (!rwp_proof_equal(want, f.msg.u.auth.proof)) {
    rwp_msg er = {.op = RWP_ERROR};
    er.u.error = (rwp_error_op){.code = rwp_cstr(RW_E_PROTO_AUTH_FAILED), .message = rwp_cstr("authentication failed"),
                                .id = rwp_cstr("T1")};
    send_msg(c, &er, NULL, 0);
    return false;
  }
  rwp_derive_keys(c->p->secret, 32, cnonce, m.u.challenge.server_nonce, client_id, k_c2s, k_s2c);
  rwp_reader_set_key(c->r, k_c2s);
  rwp_writer_set_key(&c->w, k_s2c);
  rw_error_unref(rwp_reader_set_max_frame(c->r, mf));
  c->w.max_frame = mf;
  rwp_msg wm = {.op = RWP_WELCOME, .client_id = client_id};
  rwp_server_proof(c->p->secret, 32, th, wm.u.welcome.proof);
  wm.u.welcome.table_ttl_s = 600;
  return send_msg(c, &wm, NULL, 0);
}

static void note_seq(peer *p, const rwp_msg *m) {
  pthread_mutex_lock(&p->mu);
  bool known = false;
  for (int i = 0; i < p->nseen; i++) known |= p->seen[i] == m->seq;
  if (known && (m->flags & RWP_FLAG_RETRY)) atomic_fetch_add(&p->retries_known, 1);
  if (known && !(m->flags & RWP_FLAG_RETRY)) atomic_fetch_add(&p->dup_without_retry, 1);
  if (!known && p->nseen < 4096) p->seen[p->nseen++] = m->seq;
  pthread_mutex_unlock(&p->mu);
}

static char *object_json(store *s) {
  char *j = malloc(256), crc[16];
  rw_crc32c_base64(rw_crc32c(0, s->data, s->total), crc);
  snprintf(j, 256, "{\"bucket\":\"b\",\"name\":\"o\",\"size\":\"%llu\",\"crc32c\":\"%s\"}",
           (unsigned long long)s->total, crc);
  return j;
}

static bool reply(pconn_t *c, const rwp_msg *req, uint64_t persisted, bool finalized, const char *body) {
  rwp_msg m = {.op = RWP_REPLY, .seq = req->seq, .client_id = req->client_id};
  m.u.reply = (rwp_reply){.for_op = req->op, .persisted = persisted, .finalized = finalized};
  if (req->op == RWP_CREATE) m.u.reply.session = rwp_cstr("http://127.0.0.1:1/upload/s1");
  return send_msg(c, &m, body, body ? strlen(body) : 0);
}

static bool error_reply(pconn_t *c, const rwp_msg *req, const char *code) {
  rwp_msg m = {.op = RWP_ERROR, .seq = req->seq};
  m.u.error = (rwp_error_op){.code = rwp_cstr(code), .message = rwp_cstr("scripted"), .id = rwp_cstr("T2")};
  return send_msg(c, &m, NULL, 0);
}

/* One request; false: the connection goes silent or ends. */
static bool serve(pconn_t *c, rwp_frame *f, int *writes) {
  store *s = c->p->st;
  rwp_msg *m = &f->msg;
  if (m->op == RWP_PONG) {
    peer_got_pong(c, m->u.ping.nonce);
    return true;
  }
  if (m->op == RWP_PING) {
    atomic_fetch_add(&c->p->pings_got, 1);
    c->pings_in++;
    if (atomic_load(&c->p->mute_pings)) return true;
    rwp_msg pong = {.op = RWP_PONG};
    pong.u.ping.nonce = m->u.ping.nonce;
    return send_msg(c, &pong, NULL, 0);
  }
  note_seq(c->p, m);
  pthread_mutex_lock(&s->mu);
  uint64_t prefix = store_prefix(s);
  bool fin = s->finalized;
  char *json = NULL;
  bool ok = true;
  switch (m->op) {
  case RWP_WRITE_AT:
    if (atomic_load(&c->p->busy0) > 0) {
      atomic_fetch_sub(&c->p->busy0, 1);
      atomic_fetch_add(&c->p->busy0_sent, 1);
      pthread_mutex_unlock(&s->mu);
      rwp_msg er = {.op = RWP_ERROR, .seq = m->seq};
      er.u.error = (rwp_error_op){.flags2 = RWP_ERR_RETRYABLE, .code = rwp_cstr(RW_E_PROTO_BUSY),
                                  .message = rwp_cstr("too many sessions"), .id = rwp_cstr("T4")};
      return send_msg(c, &er, NULL, 0);
    }
    if (atomic_exchange(&c->p->limit_once, 0)) {
      pthread_mutex_unlock(&s->mu);
      pthread_mutex_lock(&c->p->mu);
      c->p->limited_at = rw_mono_now();
      c->p->limited_off = m->u.write_at.offset;
      pthread_mutex_unlock(&c->p->mu);
      rwp_msg er = {.op = RWP_ERROR, .seq = m->seq};
      er.u.error = (rwp_error_op){.flags2 = RWP_ERR_RETRYABLE, .retry_after_ms = 300,
                                  .code = rwp_cstr(RW_E_PROTO_RATE_LIMITED), .message = rwp_cstr("slow down"),
                                  .id = rwp_cstr("T3")};
      return send_msg(c, &er, NULL, 0);
    }
    pthread_mutex_lock(&c->p->mu);
    if (c->p->limited_at > 0 && !(c->p->retried_at > 0) && m->u.write_at.offset == c->p->limited_off)
      c->p->retried_at = rw_mono_now();
    pthread_mutex_unlock(&c->p->mu);
    if (atomic_exchange(&c->p->expire_once, 0)) {
      pthread_mutex_unlock(&s->mu);
      return error_reply(c, m, RW_E_PROTO_EXPIRED);
    }
    if (c->p->window && m->u.write_at.offset + f->body_len > prefix + c->p->window) {
      pthread_mutex_unlock(&s->mu);
      atomic_fetch_add(&c->p->out_of_window, 1);
      return error_reply(c, m, RW_E_OUT_OF_WINDOW);
    }
    if (m->u.write_at.offset + f->body_len <= s->cap) {
      memcpy(s->data + m->u.write_at.offset, f->body, f->body_len);
      memset(s->have + m->u.write_at.offset, 1, f->body_len);
    }
    prefix = store_prefix(s);
    pthread_mutex_unlock(&s->mu);
    atomic_fetch_add(&c->p->writes, 1);
    if (c->p->silent_after && ++*writes >= c->p->silent_after && !atomic_exchange(&c->p->silenced, 1))
      return false; /* silent from here on: no reply, no PONG */
    return reply(c, m, prefix - prefix % (256u << 10), false, NULL);
  case RWP_COMPLETE:
    if (!fin && prefix >= m->u.complete.total) {
      s->total = m->u.complete.total;
      s->finalized = fin = true;
    }
    if (fin) json = object_json(s);
    pthread_mutex_unlock(&s->mu);
    ok = fin ? reply(c, m, s->total, true, json) : error_reply(c, m, RW_E_GAP);
    free(json);
    return ok;
  case RWP_STATUS:
    if (fin) json = object_json(s);
    pthread_mutex_unlock(&s->mu);
    ok = reply(c, m, fin ? s->total : prefix, fin, json);
    free(json);
    return ok;
  default:
    pthread_mutex_unlock(&s->mu);
    return reply(c, m, 0, false, NULL);
  }
}

/* True when nothing arrives on c for ms milliseconds (and nothing is buffered). */
static bool idle_for(pconn_t *c, int ms) {
  struct pollfd pf = {.fd = c->fd, .events = POLLIN};
  return c->pos >= c->have && poll(&pf, 1, ms) == 0;
}

static void *conn_main(void *arg) {
  pconn_t *c = arg;
  peer *p = c->p;
  rwp_writer_init(&c->w);
  rw_error_unref(rwp_reader_new(RWP_SIDE_SERVER, NULL, NULL, &c->r));
  int now = atomic_fetch_add(&p->active, 1) + 1, peak = atomic_load(&p->peak_active);
  while (now > peak && !atomic_compare_exchange_weak(&p->peak_active, &peak, now)) {}
  int writes = 0, served = 0;
  bool live = server_handshake(c);
  c->authed = live;
  c->last_in = rw_mono_now();
  rwp_frame f;
  while (live && recv_frame(c, &f)) {
    bool request = f.msg.op != RWP_PING && f.msg.op != RWP_PONG;
    live = serve(c, &f, &writes);
    rwp_frame_clear(&f);
    served += request;
    if (live && p->bye_after && served >= p->bye_after && idle_for(c, 2)) {
      rwp_msg bye = {.op = RWP_GOODBYE};
      send_msg(c, &bye, NULL, 0);
      atomic_fetch_add(&p->byes, 1);
      shutdown(c->fd, SHUT_RDWR);
      break;
    }
  }
  if (!live) /* silent: hold the connection open, answering nothing, until stopped */
    while (!atomic_load(&p->stop) && recv_frame(c, &f)) rwp_frame_clear(&f);
  if (!atomic_load(&p->stop)) { /* the client closed it */
    atomic_store(&p->eof_pings, c->pings_in);
    atomic_fetch_add(&p->eofs, 1);
  }
  atomic_fetch_sub(&p->active, 1);
  rwp_reader_free(c->r);
  shutdown(c->fd, SHUT_RDWR);
  free(c);
  return NULL;
}

static void *accept_main(void *arg) {
  peer *p = arg;
  while (!atomic_load(&p->stop)) {
    struct pollfd pf = {.fd = p->lfd, .events = POLLIN};
    if (poll(&pf, 1, 20) <= 0) continue;
    int fd = accept(p->lfd, NULL, NULL);
    if (fd < 0) continue;
    int one = 1; /* replies are small frames: no Nagle wait behind a delayed ACK */
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    pthread_mutex_lock(&p->mu);
    if (p->nconns == MAX_PEER_CONNS) {
      pthread_mutex_unlock(&p->mu);
      close(fd);
      continue;
    }
    pconn_t *c = calloc(1, sizeof *c);
    c->p = p;
    c->fd = fd;
    p->fds[p->nconns] = fd;
    pthread_create(&p->threads[p->nconns++], NULL, conn_main, c);
    pthread_mutex_unlock(&p->mu);
  }
  return NULL;
}

static peer *peer_start(store *st, const uint8_t *sec) {
  peer *p = calloc(1, sizeof *p);
  p->st = st;
  p->secret = sec;
  pthread_mutex_init(&p->mu, NULL);
  p->lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  socklen_t al = sizeof a;
  bind(p->lfd, (struct sockaddr *)&a, sizeof a);
  listen(p->lfd, 64);
  getsockname(p->lfd, (struct sockaddr *)&a, &al);
  p->port = ntohs(a.sin_port);
  pthread_create(&p->acceptor, NULL, accept_main, p);
  return p;
}

/* Stops the peer like a kill -9: the listener and every connection close. */
static void peer_kill(peer *p) {
  if (atomic_exchange(&p->stop, true)) return;
  pthread_join(p->acceptor, NULL);
  close(p->lfd);
  pthread_mutex_lock(&p->mu);
  int n = p->nconns;
  pthread_mutex_unlock(&p->mu);
  for (int i = 0; i < n; i++) pthread_join(p->threads[i], NULL);
  for (int i = 0; i < n; i++) close(p->fds[i]);
}

static void peer_free(peer *p) {
  peer_kill(p);
  pthread_mutex_destroy(&p->mu);
  free(p);
}

static store *store_new(uint64_t cap) {
  store *s = calloc(1, sizeof *s);
  pthread_mutex_init(&s->mu, NULL);
  s->cap = cap;
  s->data = calloc(1, cap);
  s->have = calloc(1, cap);
  return s;
}

static void store_free(store *s) {
  pthread_mutex_destroy(&s->mu);
  free(s->data), free(s->have), free(s);
}

/* ---- the client side ---- */

static char addr_buf[4][32];

static rw_proxy_sink_config config_for(peer *a, peer *b) {
  rw_proxy_sink_config c = rw_proxy_sink_defaults();
  snprintf(addr_buf[0], sizeof addr_buf[0], "127.0.0.1:%d", a->port);
  c.addrs[c.naddrs++] = addr_buf[0];
  if (b) {
    snprintf(addr_buf[1], sizeof addr_buf[1], "127.0.0.1:%d", b->port);
    c.addrs[c.naddrs++] = addr_buf[1];
  }
  c.secret = secret;
  c.secret_len = sizeof secret;
  c.bucket = "b";
  c.object = "o";
  c.ping_interval = 0.25; /* 3 missed: dropped after about 1 s of silence */
  c.connect_timeout = 2;
  return c;
}

static unsigned char *random_data(size_t n) {
  unsigned char *d = malloc(n);
  for (size_t i = 0; i < n; i++) d[i] = (unsigned char)rw_rand_next(&rng);
  return d;
}

static void log_err(const char *what, rw_error *e) {
  char buf[512];
  rw_error_format(e, buf, sizeof buf);
  fprintf(stderr, "%s: %s\n", what, buf);
}

static rw_proxy_sink_counts last_stats; /* the sink's, as the last upload ended */
static long pace_ms;              /* a pause after each write (0: none) */

/* Writes n random bytes through sink; true when the store holds them. */
static bool upload(rw_sink *sink, store *st, size_t n, void (*midway)(void *), void *ud) {
  memset(&last_stats, 0, sizeof last_stats);
  rw_writer_config c = rw_writer_defaults();
  c.max_cache_size = 2u << 20;
  c.max_chunk_size = 512u << 10;
  c.retry.min_wait = 0.001;
  c.retry.max_wait = 0.05;
  c.retry.total_wait = 20;
  c.stall_timeout = 2;
  rw_error *err = NULL;
  rw_writer *w = rw_writer_new(NULL, sink, &c, &err);
  if (!w) {
    log_err("new", err);
    rw_error_unref(err);
    return false;
  }
  unsigned char *data = random_data(n);
  size_t off = 0;
  bool called = false;
  while (off < n && !err) {
    size_t piece = 1 + rw_rand_next(&rng) % (200u << 10), acc = 0;
    if (piece > n - off) piece = n - off;
    err = rw_writer_write_some(w, off, data + off, piece, NULL, NULL, &acc);
    off += acc;
    if (pace_ms) nanosleep(&(struct timespec){0, pace_ms * 1000000}, NULL);
    if (!acc && !err) rw_writer_wait(w, NULL, true, off, 5);
    if (midway && !called && off > n / 2) midway(ud), called = true;
  }
  if (!err) err = rw_writer_complete_start(w, UINT64_MAX);
  double t0 = rw_mono_now();
  while (!err && !rw_writer_finished(w) && rw_mono_now() - t0 < 30) rw_writer_wait(w, NULL, false, 0, 1);
  if (!err) err = rw_writer_error(w);
  bool ok = !err && rw_writer_object(w) != NULL;
  if (err) log_err("upload", err);
  rw_error_unref(err);
  uint64_t persisted;
  bool has_crc;
  uint32_t crc;
  char *sess = rw_writer_session(w, &persisted, &has_crc, &crc);
  CHECK(sess && strcmp(sess, "http://127.0.0.1:1/upload/s1") == 0);
  free(sess);
  rw_proxy_sink_stats(sink, &last_stats); /* the writer owns the sink until freed */
  rw_writer_free(w);
  pthread_mutex_lock(&st->mu);
  ok = ok && st->finalized && st->total == n && memcmp(st->data, data, n) == 0;
  pthread_mutex_unlock(&st->mu);
  free(data);
  return ok;
}

/* ---- one test's setup: a store, the scripted peer(s) in front of it,
 * optionally the chaos relay between the sink and the first peer, and the
 * sink's config pointing at them ---- */

typedef struct bed {
  store *st;
  peer *p, *p2;     /* p2: a second peer on the same store (failover), or NULL */
  rw_faults *prof;  /* the chaos relay's profile, or NULL */
  rw_chaos *chaos;  /* or NULL */
  rw_proxy_sink_config cfg;
} bed;

/* A store of cap bytes, a peer knowing sec, cfg = config_for(p). */
static void bed_start(bed *b, uint64_t cap, const uint8_t *sec) {
  memset(b, 0, sizeof *b);
  b->st = store_new(cap);
  b->p = peer_start(b->st, sec);
  b->cfg = config_for(b->p, NULL);
}

/* Adds a second peer on the same store, the sink's second address. */
static void bed_second_peer(bed *b) {
  b->p2 = peer_start(b->st, secret);
  b->cfg = config_for(b->p, b->p2);
}

/* Puts the chaos relay (faults fc) between the sink and the first peer. */
static bool bed_chaos(bed *b, const rw_faults_config *fc) {
  rw_error *err = NULL;
  b->prof = rw_faults_new(fc, &err);
  char up[32];
  snprintf(up, sizeof up, "127.0.0.1:%d", b->p->port);
  rw_chaos_config cc = {.upstream = up, .profile = b->prof};
  if (b->prof) b->chaos = rw_chaos_start(&cc, &err);
  if (!b->chaos) {
    log_err("chaos", err);
    rw_error_unref(err);
    return false;
  }
  b->cfg.addrs[0] = rw_chaos_addr(b->chaos);
  return true;
}

/* A sink from b->cfg, or NULL (the error printed). */
static rw_sink *bed_sink(bed *b) {
  rw_error *err = NULL;
  rw_sink *sink = rw_proxy_sink_new(&b->cfg, &err);
  if (!sink) log_err("rw_proxy_sink_new", err);
  rw_error_unref(err);
  return sink;
}

/* Uploads n random bytes through a new sink: true when the store holds them. */
static bool bed_upload(bed *b, size_t n, void (*midway)(void *), void *ud) {
  rw_sink *sink = bed_sink(b);
  return sink && upload(sink, b->st, n, midway, ud);
}

/* Stops what bed_start and the others started, in reverse order. */
static void bed_stop(bed *b) {
  if (b->chaos) rw_chaos_stop(b->chaos);
  rw_faults_unref(b->prof);
  if (b->p2) peer_free(b->p2);
  peer_free(b->p);
  store_free(b->st);
}

static void test_upload(void) {
  size_t n = (5u << 20) + 333;
  bed b;
  bed_start(&b, n + (1u << 20), secret);
  rw_sink *sink = bed_sink(&b);
  CHECK(sink != NULL && sink->max_inflight == 4);
  double t0 = rw_mono_now();
  CHECK(sink && upload(sink, b.st, n, NULL, NULL));
  fprintf(stderr, "direct to the peer: %.1f MiB/s\n", n / 1048576.0 / (rw_mono_now() - t0));
  fprintf(stderr, "peak connections at the peer: %d\n", atomic_load(&b.p->peak_active));
  CHECK(atomic_load(&b.p->peak_active) >= 2);
  CHECK_EQ_INT(atomic_load(&b.p->dup_without_retry), 0);
  bed_stop(&b);
}

/* A connection that stops answering (even PINGs) is dropped after 3 missed
 * PINGs; its request goes out again, same seq, RETRY, on another one. */
static void test_silent_connection(void) {
  size_t n = (3u << 20) + 77;
  bed b;
  bed_start(&b, n + (1u << 20), secret);
  peer *p = b.p;
  p->silent_after = 3;
  double t0 = rw_mono_now();
  CHECK(bed_upload(&b, n, NULL, NULL));
  fprintf(stderr, "silent connection: upload took %.2f s, %d requests resent with their seq\n",
          rw_mono_now() - t0, atomic_load(&p->retries_known));
  CHECK(atomic_load(&p->silenced) == 1);
  CHECK(atomic_load(&p->retries_known) >= 1);
  CHECK_EQ_INT(atomic_load(&p->dup_without_retry), 0);
  bed_stop(&b);
}

/* Two proxies; the first is killed mid-upload: the upload finishes
 * through the second. */
static void kill_peer(void *ud) { peer_kill(ud); }

static void test_failover(void) {
  size_t n = (6u << 20) + 4099;
  bed b;
  bed_start(&b, n + (1u << 20), secret);
  bed_second_peer(&b);
  CHECK(bed_upload(&b, n, kill_peer, b.p));
  fprintf(stderr, "failover: writes at a %d, at b %d\n", atomic_load(&b.p->writes), atomic_load(&b.p2->writes));
  CHECK(atomic_load(&b.p->writes) > 0);
  CHECK(atomic_load(&b.p2->writes) > 0);
  bed_stop(&b);
}

/* The chaos proxy between the sink and the peer: resets, stalls, latency. */
static void test_chaos(void) {
  size_t n = (6u << 20) + 999;
  bed b;
  bed_start(&b, n + (1u << 20), secret);
  rw_faults_config fc = {.seed = rng | 1, .reset_per_mib = 1.0, .stall_per_mib = 0.3, .stall_for = 5,
                         .latency = 0.002};
  bool relayed = bed_chaos(&b, &fc);
  CHECK(relayed);
  CHECK(relayed && bed_upload(&b, n, NULL, NULL));
  rw_faults_stats fs = {0};
  if (relayed) rw_faults_stats_read(b.prof, &fs);
  fprintf(stderr, "chaos: %llu resets, %llu stalls, %d requests resent with their seq\n",
          (unsigned long long)fs.resets, (unsigned long long)fs.stalls, atomic_load(&b.p->retries_known));
  CHECK(fs.resets + fs.stalls > 0);
  CHECK_EQ_INT(atomic_load(&b.p->dup_without_retry), 0);
  bed_stop(&b);
}

/* proto.expired (the proxy's table forgot the request): sent again as a
 * new request, the upload goes on. */
static void test_expired(void) {
  size_t n = (2u << 20) + 5;
  bed b;
  bed_start(&b, n + (1u << 20), secret);
  atomic_store(&b.p->expire_once, 1);
  CHECK(bed_upload(&b, n, NULL, NULL));
  CHECK_EQ_INT(atomic_load(&b.p->expire_once), 0);
  bed_stop(&b);
}

/* A proxy that says GOODBYE to a connection idle for 2 ms and closes it:
 * the sink sees it before it uses that connection again, so requests do not
 * go out on dead connections (a few may, racing the GOODBYE). */
static void test_goodbye(void) {
  size_t n = (3u << 20) + 17;
  bed b;
  bed_start(&b, n + (1u << 20), secret);
  b.p->bye_after = 2;
  pace_ms = 10; /* connections go idle between pieces */
  CHECK(bed_upload(&b, n, NULL, NULL));
  pace_ms = 0;
  fprintf(stderr, "goodbye: %d connections closed by the proxy, %llu requests resent\n",
          atomic_load(&b.p->byes), (unsigned long long)last_stats.resent);
  CHECK(atomic_load(&b.p->byes) >= 4);
  CHECK(last_stats.resent * 4 <= (uint64_t)atomic_load(&b.p->byes));
  bed_stop(&b);
}

/* Connections in flight pay off on a long path: the chaos relay delays
 * every byte 10 ms each way; 4 connections against 1 on the same upload. */
static double timed_upload(int connections, size_t n) {
  bed b;
  bed_start(&b, n + (1u << 20), secret);
  rw_faults_config fc = {.seed = 1, .latency = 0.01};
  bool relayed = bed_chaos(&b, &fc);
  CHECK(relayed);
  b.cfg.connections = connections;
  double t0 = rw_mono_now();
  CHECK(relayed && bed_upload(&b, n, NULL, NULL));
  double dt = rw_mono_now() - t0;
  bed_stop(&b);
  return dt;
}

static void test_connections_scale(void) {
  size_t n = 8u << 20;
  double one = timed_upload(1, n), four = timed_upload(4, n);
  fprintf(stderr, "10 ms each way, 8 MiB: 1 connection %.1f MiB/s, 4 connections %.1f MiB/s (%.2fx)\n",
          8 / one, 8 / four, one / four);
#ifndef RW_SANITIZED /* a timing claim: not under the sanitizers' slowdown */
  CHECK(one / four >= 1.3);
#endif
}

/* rw.resume through a proxy: a writer suspended halfway hands out the GCS
 * session; a new sink with that session (and so a new client_id) resumes. */
static void test_resume(void) {
  size_t n = (4u << 20) + 11, half = 2u << 20;
  bed b;
  bed_start(&b, n + (1u << 20), secret);
  store *st = b.st;
  rw_error *err = NULL;
  rw_writer_config wc = rw_writer_defaults();
  wc.max_cache_size = 1u << 20;
  wc.max_chunk_size = 256u << 10;
  rw_writer *w = rw_writer_new(NULL, bed_sink(&b), &wc, &err);
  unsigned char *data = random_data(n);
  size_t off = 0;
  while (off < half) {
    size_t acc = 0;
    rw_error_unref(rw_writer_write_some(w, off, data + off, half - off, NULL, NULL, &acc));
    off += acc;
    if (off < half) rw_writer_wait(w, NULL, true, off, 5);
  }
  rw_writer_suspend(w);
  uint64_t persisted;
  bool has_crc;
  uint32_t crc;
  char *sess = rw_writer_session(w, &persisted, &has_crc, &crc);
  rw_writer_free(w);
  CHECK(sess && persisted > 0 && persisted <= half);
  b.cfg.session = sess;
  wc.resume = true;
  wc.start_offset = persisted;
  wc.has_start_crc = has_crc;
  wc.start_crc = crc;
  w = rw_writer_new(NULL, bed_sink(&b), &wc, &err);
  CHECK(w != NULL);
  for (off = persisted; w && off < n;) {
    size_t acc = 0;
    rw_error *e = rw_writer_write_some(w, off, data + off, n - off, NULL, NULL, &acc);
    if (e) log_err("resume write", e);
    rw_error_unref(e);
    off += acc;
    if (off < n) rw_writer_wait(w, NULL, true, off, 5);
  }
  CHECK(w && !rw_writer_complete_start(w, n));
  double t0 = rw_mono_now();
  while (w && !rw_writer_finished(w) && rw_mono_now() - t0 < 20) rw_writer_wait(w, NULL, false, 0, 1);
  CHECK(w && rw_writer_object(w) != NULL);
  rw_writer_free(w);
  pthread_mutex_lock(&st->mu);
  CHECK(st->finalized && st->total == n && memcmp(st->data, data, n) == 0);
  pthread_mutex_unlock(&st->mu);
  free(sess);
  free(data);
  bed_stop(&b);
}

/* A proxy takes bytes only up to its session cache past what it holds
 * (rw.out_of_window beyond): the sink's window keeps every piece inside. */
static void test_window(void) {
  size_t n = (4u << 20) + 3;
  bed b;
  bed_start(&b, n + (1u << 20), secret);
  store *st = b.st;
  peer *p = b.p;
  p->window = 1u << 20;
  b.cfg.window = 1u << 20;
  rw_sink *sink = bed_sink(&b);
  CHECK(sink && sink->max_ahead == (1u << 20));
  CHECK(upload(sink, st, n, NULL, NULL));
  CHECK_EQ_INT(atomic_load(&p->out_of_window), 0);
  bed_stop(&b);
}

/* proto.rate_limited with retry_after_ms: the refused bytes come again no
 * sooner than that, however short the writer's own backoff. */
static void test_retry_after(void) {
  size_t n = (2u << 20) + 9;
  bed b;
  bed_start(&b, n + (1u << 20), secret);
  store *st = b.st;
  peer *p = b.p;
  atomic_store(&p->limit_once, 1);
  rw_sink *sink = bed_sink(&b);
  CHECK(upload(sink, st, n, NULL, NULL));
  pthread_mutex_lock(&p->mu);
  double gap = p->retried_at - p->limited_at;
  pthread_mutex_unlock(&p->mu);
  fprintf(stderr, "rate limited: the bytes came again after %.3f s (retry_after 0.300 s)\n", gap);
  CHECK(gap >= 0.29);
  bed_stop(&b);
}

static void test_wrong_secret(void) {
  bed b;
  bed_start(&b, 1 << 20, other_secret);
  rw_sink *sink = bed_sink(&b);
  rw_ctx *ctx = rw_ctx_with_timeout(NULL, 5);
  double t0 = rw_mono_now();
  rw_error *err = sink->ops->begin(sink, ctx);
  CHECK(err && rw_error_is(err, RW_E_PROTO_AUTH_FAILED) && !rw_error_retryable(err));
  CHECK(rw_mono_now() - t0 < 2);
  rw_error_unref(err);
  rw_ctx_unref(ctx);
  rw_sink_destroy(sink);
  bed_stop(&b);
}

/* ---- heartbeats on idle connections (PROTOCOL.md 8) ---- */

static void sleep_s(double s) {
  struct timespec ts = {(time_t)s, (long)((s - (time_t)s) * 1e9)};
  nanosleep(&ts, NULL);
}

/* A sink with one connection open and idle (after CREATE). */
static rw_sink *idle_sink(peer *p) {
  rw_proxy_sink_config c = config_for(p, NULL);
  rw_error *err = NULL;
  rw_sink *sink = rw_proxy_sink_new(&c, &err);
  rw_ctx *ctx = rw_ctx_with_timeout(NULL, 5);
  if (sink) err = sink->ops->begin(sink, ctx);
  if (err) log_err("begin", err);
  CHECK(sink && !err);
  rw_error_unref(err);
  rw_ctx_unref(ctx);
  return sink;
}

/* A put of n random bytes at 0, not final; true when it succeeded and the
 * store holds the bytes. */
static bool put_checked(rw_sink *sink, store *st, size_t n) {
  unsigned char *data = random_data(n);
  struct iovec iov = {data, n};
  rw_sink_put put = {.offset = 0, .iov = &iov, .iovcnt = 1, .len = n, .stall_timeout = 2};
  rw_sink_result res;
  rw_ctx *ctx = rw_ctx_with_timeout(NULL, 5);
  rw_error *e = sink->ops->put(sink, ctx, &put, &res);
  if (e) log_err("put", e);
  bool ok = !e;
  rw_error_unref(e);
  rw_sink_result_clear(&res);
  rw_ctx_unref(ctx);
  pthread_mutex_lock(&st->mu);
  for (size_t i = 0; ok && i < n; i++) ok = st->have[i] && st->data[i] == data[i];
  pthread_mutex_unlock(&st->mu);
  free(data);
  return ok;
}

static void quiet_log(void *ud, rw_log_level lvl, const char *line) { (void)ud, (void)lvl, (void)line; }

/* proto.busy without retry_after_ms (a proxy at max_sessions, its pool or
 * reply table full) fails the put at once, so the writer's backoff paces the
 * next try: it is not resent as new back to back (it was, 64 times per put,
 * with no wait: load on a proxy that is already overloaded). */
static void test_busy_without_retry_after(void) {
  bed b;
  bed_start(&b, 1u << 20, secret);
  peer *p = b.p;
  rw_sink *sink = idle_sink(p);
  atomic_store(&p->busy0, 1000);
  unsigned char *data = random_data(4096);
  struct iovec iov = {data, 4096};
  rw_sink_put put = {.offset = 0, .iov = &iov, .iovcnt = 1, .len = 4096, .stall_timeout = 2};
  rw_sink_result res;
  rw_ctx *ctx = rw_ctx_with_timeout(NULL, 5);
  rw_log_set_hook(quiet_log, NULL);
  rw_error *e = sink->ops->put(sink, ctx, &put, &res);
  rw_log_set_hook(NULL, NULL);
  CHECK(e && rw_error_is(e, RW_E_PROTO_BUSY) && rw_error_retryable(e));
  fprintf(stderr, "busy without retry_after: %d WRITE_AT answered before the put failed\n",
          atomic_load(&p->busy0_sent));
  CHECK_EQ_INT(atomic_load(&p->busy0_sent), 1);
  rw_error_unref(e);
  rw_sink_result_clear(&res);
  rw_ctx_unref(ctx);
  free(data);
  atomic_store(&p->busy0, 0);
  rw_sink_destroy(sink);
  bed_stop(&b);
}

/* A put that fails on one frame's error while other frames of it are still
 * unanswered on the connection: the connection is dropped, not handed to the
 * next put (at a real proxy those requests still count against the
 * connection's max_inflight: the next put could hit proto.too_many). The
 * next put then goes through a new connection and stores its bytes. */
/* One put of n random bytes at 0 whose first frame the peer answers
 * proto.busy without retry_after_ms (final for the put); the sink's counts after. */
static rw_proxy_sink_counts failed_put(rw_sink *sink, peer *p, size_t n) {
  atomic_store(&p->busy0, 1);
  unsigned char *data = random_data(n);
  struct iovec iov = {data, n};
  rw_sink_put put = {.offset = 0, .iov = &iov, .iovcnt = 1, .len = n, .stall_timeout = 2};
  rw_sink_result res;
  rw_ctx *ctx = rw_ctx_with_timeout(NULL, 5);
  rw_log_set_hook(quiet_log, NULL);
  rw_error *e = sink->ops->put(sink, ctx, &put, &res);
  rw_log_set_hook(NULL, NULL);
  CHECK(e && rw_error_is(e, RW_E_PROTO_BUSY)); /* the first frame's error */
  rw_error_unref(e);
  rw_sink_result_clear(&res);
  rw_ctx_unref(ctx);
  free(data);
  rw_proxy_sink_counts c;
  rw_proxy_sink_stats(sink, &c);
  return c;
}

static void test_failed_put_drops_busy_connection(void) {
  bed b;
  bed_start(&b, 1u << 20, secret);
  peer *p = b.p;
  rw_proxy_sink_config c = config_for(p, NULL);
  c.max_frame = RWP_MIN_FRAME, c.connections = 1; /* a 1 MiB put: 16 frames, 8 sent at once */
  rw_error *err = NULL;
  rw_sink *sink = rw_proxy_sink_new(&c, &err);
  rw_ctx *ctx = rw_ctx_with_timeout(NULL, 5);
  if (sink) err = sink->ops->begin(sink, ctx);
  CHECK(sink && !err);
  rw_error_unref(err);
  rw_ctx_unref(ctx);
  if (!sink) {
    bed_stop(&b);
    return;
  }
  /* one frame, answered: nothing left in flight, the connection is kept */
  rw_proxy_sink_counts n = failed_put(sink, p, RWP_MIN_FRAME);
  fprintf(stderr, "after a failed one-frame put: dropped %llu, connects %llu\n", (unsigned long long)n.dropped,
          (unsigned long long)n.connects);
  CHECK_EQ_INT((int)n.dropped, 0);
  /* 16 frames, the first failed while 7 more were unanswered: dropped */
  n = failed_put(sink, p, 1u << 20);
  fprintf(stderr, "after a failed 16-frame put: dropped %llu, connects %llu\n", (unsigned long long)n.dropped,
          (unsigned long long)n.connects);
  CHECK_EQ_INT((int)n.dropped, 1);
  CHECK(put_checked(sink, b.st, 1u << 20));
  rw_proxy_sink_stats(sink, &n);
  CHECK_EQ_INT((int)n.connects, 2);
  rw_sink_destroy(sink);
  bed_stop(&b);
}

/* The proxy PINGs an idle connection every 100 ms: every PING is answered
 * within the client's ping interval (0.25 s), with no put running; then a
 * put reuses the connection. */
static void test_idle_answers_pings(void) {
  bed b;
  bed_start(&b, 1u << 20, secret);
  store *st = b.st;
  peer *p = b.p;
  p->ping_every_ms = 100;
  rw_sink *sink = idle_sink(p);
  sleep_s(1.0);
  int pongs = atomic_load(&p->pongs_got);
  pthread_mutex_lock(&p->mu);
  double worst = p->max_pong_delay;
  pthread_mutex_unlock(&p->mu);
  fprintf(stderr, "idle: %d PINGs of the peer answered in 1 s, the slowest PONG after %.3f s\n", pongs, worst);
  CHECK(pongs >= 5); /* about 9: one each 100-120 ms */
  CHECK(worst < 0.25);
  CHECK(put_checked(sink, st, 300u << 10));
  rw_proxy_sink_counts n;
  rw_proxy_sink_stats(sink, &n);
  CHECK_EQ_INT((int)n.connects, 1);
  CHECK_EQ_INT((int)n.dropped, 0);
  rw_sink_destroy(sink);
  bed_stop(&b);
}

/* A quiet proxy that answers: the idle connection PINGs every 0.25 s on
 * its own and stays open; a put right after reuses it. */
static void test_idle_sends_pings(void) {
  bed b;
  bed_start(&b, 1u << 20, secret);
  store *st = b.st;
  peer *p = b.p;
  rw_sink *sink = idle_sink(p);
  sleep_s(1.2);
  rw_proxy_sink_counts n;
  rw_proxy_sink_stats(sink, &n);
  fprintf(stderr, "idle: the peer got %d PINGs of the client in 1.2 s (the sink counts %d)\n",
          atomic_load(&p->pings_got), (int)n.pings);
  CHECK(atomic_load(&p->pings_got) >= 3);
  CHECK(n.pings >= 3);
  CHECK_EQ_INT(atomic_load(&p->eofs), 0);
  CHECK(put_checked(sink, st, 200u << 10));
  rw_proxy_sink_stats(sink, &n);
  CHECK_EQ_INT((int)n.connects, 1);
  CHECK_EQ_INT((int)n.dropped, 0);
  rw_sink_destroy(sink);
  bed_stop(&b);
}

/* A proxy that stops answering PINGs: the idle connection is closed after
 * 3 of them (about 4 intervals of silence); the next put opens a fresh one
 * and succeeds. */
static void test_idle_unanswered(void) {
  bed b;
  bed_start(&b, 1u << 20, secret);
  store *st = b.st;
  peer *p = b.p;
  atomic_store(&p->mute_pings, true);
  double t0 = rw_mono_now();
  rw_sink *sink = idle_sink(p);
  while (!atomic_load(&p->eofs) && rw_mono_now() - t0 < 5) sleep_s(0.01);
  double dt = rw_mono_now() - t0;
  fprintf(stderr, "unanswered: the client closed the connection after %.2f s and %d PINGs\n", dt,
          atomic_load(&p->eof_pings));
  CHECK_EQ_INT(atomic_load(&p->eofs), 1);
  CHECK_EQ_INT(atomic_load(&p->eof_pings), 3);
  CHECK(dt >= 0.9 && dt < 2.5);
  rw_proxy_sink_counts n;
  rw_proxy_sink_stats(sink, &n);
  CHECK_EQ_INT((int)n.dropped, 1);
  CHECK(put_checked(sink, st, 100u << 10));
  rw_proxy_sink_stats(sink, &n);
  CHECK_EQ_INT((int)n.connects, 2);
  rw_sink_destroy(sink);
  bed_stop(&b);
}

/* Threads of this process named rw-heartbeat. */
static int heartbeat_threads(void) {
  DIR *d = opendir("/proc/self/task");
  int n = 0;
  for (struct dirent *e; d && (e = readdir(d));) {
    char path[300], name[32] = "";
    snprintf(path, sizeof path, "/proc/self/task/%s/comm", e->d_name);
    FILE *f = e->d_name[0] != '.' ? fopen(path, "r") : NULL;
    if (f && fgets(name, sizeof name, f) && strncmp(name, "rw-heartbeat", 12) == 0) n++;
    if (f) fclose(f);
  }
  if (d) closedir(d);
  return n;
}

/* One heartbeat thread for the process however many sinks, started by the
 * first idle connection, joined with the last sink. */
static void test_heartbeat_threads(void) {
  bed b;
  bed_start(&b, 1u << 20, secret);
  peer *p = b.p;
  CHECK_EQ_INT(heartbeat_threads(), 0);
  rw_sink *lazy = bed_sink(&b);
  CHECK_EQ_INT(heartbeat_threads(), 0); /* no connection yet: no thread */
  rw_sink *s[5];
  for (int i = 0; i < 5; i++) s[i] = idle_sink(p);
  int during = heartbeat_threads();
  sleep_s(0.6); /* PINGs flow on 5 connections */
  fprintf(stderr, "heartbeat threads: %d with 5 idle sinks, %d PINGs from them\n", during,
          atomic_load(&p->pings_got));
  CHECK_EQ_INT(during, 1);
  CHECK(atomic_load(&p->pings_got) >= 5);
  for (int i = 0; i < 5; i++) rw_sink_destroy(s[i]);
  CHECK_EQ_INT(heartbeat_threads(), 1); /* one sink is left */
  rw_sink_destroy(lazy);
  CHECK_EQ_INT(heartbeat_threads(), 0);
  s[0] = idle_sink(p); /* and again after that */
  CHECK_EQ_INT(heartbeat_threads(), 1);
  rw_sink_destroy(s[0]);
  CHECK_EQ_INT(heartbeat_threads(), 0);
  bed_stop(&b);
}

/* fork (nginx forks its workers; a script may fork too): the child has no
 * heartbeat thread, starts its own for its own sink and joins it with that
 * sink; the sink it inherited (sockets shared with the parent) is not
 * watched there, and the parent's sink goes on working. */
static void test_heartbeat_fork(void) {
#ifndef RW_SANITIZED /* the sanitizers do not support threads after a multi-threaded fork */
  bed b;
  bed_start(&b, 1u << 20, secret);
  store *st = b.st;
  peer *p = b.p;
  rw_sink *parent = idle_sink(p);
  CHECK_EQ_INT(heartbeat_threads(), 1);
  fflush(stderr);
  pid_t pid = fork();
  if (pid == 0) {
    alarm(10); /* bounded: a join of the parent's thread would hang here */
    int failed = ct_failed, before = heartbeat_threads();
    rw_sink *own = idle_sink(p);
    int during = heartbeat_threads();
    rw_sink_destroy(own);
    int after = heartbeat_threads();
    rw_sink_destroy(parent); /* closes the child's copies of its sockets only */
    fprintf(stderr, "child: heartbeat threads %d before, %d with its own sink, %d after\n", before, during,
            after);
    _exit(before == 0 && during == 1 && after == 0 && ct_failed == failed ? 0 : 1);
  }
  int status = -1;
  CHECK(pid > 0 && waitpid(pid, &status, 0) == pid);
  CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
  CHECK_EQ_INT(heartbeat_threads(), 1);
  CHECK(put_checked(parent, st, 64u << 10));
  rw_proxy_sink_counts n;
  rw_proxy_sink_stats(parent, &n);
  CHECK_EQ_INT((int)n.connects, 1);
  rw_sink_destroy(parent);
  CHECK_EQ_INT(heartbeat_threads(), 0);
  bed_stop(&b);
#endif
}

/* Heartbeats and puts on the same connections at once: the peer PINGs
 * every idle moment (2 ms) and the sink PINGs after 10 ms, while a paced
 * upload keeps taking connections back from the heartbeat. No frame out of
 * MAC order (the peer would close the connection), nothing dropped. */
static void test_heartbeat_during_upload(void) {
  size_t n = (3u << 20) + 31;
  bed b;
  bed_start(&b, n + (1u << 20), secret);
  store *st = b.st;
  peer *p = b.p;
  p->ping_every_ms = 2;
  b.cfg.ping_interval = 0.01;
  rw_sink *sink = bed_sink(&b);
  pace_ms = 10;
  CHECK(upload(sink, st, n, NULL, NULL));
  pace_ms = 0;
  fprintf(stderr, "heartbeats during an upload: %d PONGs to the peer, %d PINGs of the sink, %llu connects, "
          "%llu dropped\n", atomic_load(&p->pongs_got), atomic_load(&p->pings_got),
          (unsigned long long)last_stats.connects, (unsigned long long)last_stats.dropped);
  CHECK(atomic_load(&p->pongs_got) > 0);
  CHECK_EQ_INT((int)last_stats.dropped, 0);
  CHECK_EQ_INT(atomic_load(&p->dup_without_retry), 0);
  bed_stop(&b);
}

static void expect_invalid(rw_proxy_sink_config c, const char *word) {
  rw_error *err = NULL;
  rw_sink *s = rw_proxy_sink_new(&c, &err);
  CHECK(!s && err && rw_error_is(err, RW_E_INVALID) && strstr(rw_error_message(err), word));
  if (err && !strstr(rw_error_message(err), word)) fprintf(stderr, "  got: %s\n", rw_error_message(err));
  rw_error_unref(err);
  rw_sink_destroy(s);
}

static void test_bad_options(void) {
  rw_proxy_sink_config good = rw_proxy_sink_defaults();
  good.addrs[good.naddrs++] = "127.0.0.1:9";
  good.secret = secret, good.secret_len = 32, good.bucket = "b", good.object = "o";
  rw_proxy_sink_config c = good;
  c.naddrs = 0;
  expect_invalid(c, "addr");
  c = good;
  c.addrs[0] = "127.0.0.1";
  expect_invalid(c, "addr #1");
  c = good;
  c.addrs[0] = "127.0.0.1:99999";
  expect_invalid(c, "port");
  c = good;
  c.connections = 0;
  expect_invalid(c, "connections");
  c = good;
  c.secret_len = 16;
  expect_invalid(c, "secret");
  c = good;
  c.bucket = "";
  expect_invalid(c, "bucket");
  c = good;
  c.object = NULL;
  expect_invalid(c, "object");
}

/* Destroying an idle sink is prompt (issue 10: a Lua finalizer must not wait
 * on the network): with the heartbeat thread watching its connection, alone
 * and beside another sink, and while the peer stops answering PINGs, each
 * destroy returns within 100 ms. */
static double timed_destroy(rw_sink *sink) {
  double t0 = rw_mono_now();
  rw_sink_destroy(sink);
  return rw_mono_now() - t0;
}

static void test_destroy_prompt(void) {
  store *st = store_new(1u << 20);
  peer *p = peer_start(st, secret);
  double worst = 0;
  for (int round = 0; round < 6; round++) {
    if (round == 4) atomic_store(&p->mute_pings, true); /* PINGs go out, none come back */
    rw_sink *keep = round % 2 ? idle_sink(p) : NULL;  /* odd rounds: the thread lives on */
    rw_sink *sink = idle_sink(p);
    sleep_s(0.05 + 0.11 * round); /* the heartbeat's passes at various phases */
    double dt = timed_destroy(sink);
    if (keep) {
      double dk = timed_destroy(keep);
      dt = dt > dk ? dt : dk;
    }
    if (dt > worst) worst = dt;
  }
  fprintf(stderr, "destroy of an idle sink: the slowest took %.1f ms\n", worst * 1000);
  CHECK(worst < 0.1);
  CHECK_EQ_INT(heartbeat_threads(), 0);
  peer_free(p);
  store_free(st);
}

/* ---- through the real proxy server (added after the scripted peer's tests) ---- */
#include "proxy/server.h"
#include "testbed/fakegcs.h"

static _Atomic int busy_lines, error_lines;
static void count_log(void *ud, rw_log_level lvl, const char *line) {
  (void)ud;
  if (strstr(line, "proto.busy")) atomic_fetch_add(&busy_lines, 1);
  if (lvl == RW_LOG_ERROR) atomic_fetch_add(&error_lines, 1);
}

/* A client window (8 MiB) wider than the proxy's session cache (256 KiB), 8
 * connections: WRITE_ATs arrive before the bytes below them, past the
 * session's window. The proxy answers proto.busy (it used to answer
 * rw.out_of_window, which failed the upload); the sink sends those frames
 * again and the object is byte-identical. */
/* A fake GCS with bucket "b" and the real proxy in front of it (session
 * cache session_cache, 0: the default); NULL (both stopped) on failure. */
static rw_proxy_server *real_proxy_start(uint64_t session_cache, rw_fakegcs **gcs_out) {
  const char *buckets[] = {"b", NULL};
  rw_fakegcs_config fc = {.buckets = buckets};
  rw_error *e = NULL;
  rw_fakegcs *gcs = rw_fakegcs_start(&fc, &e);
  CHECK(gcs != NULL);
  rw_proxy_secret secs[] = {{"", secret, 32}};
  rw_proxy_config pc = rw_proxy_defaults();
  pc.listen = "127.0.0.1:0", pc.upstream = gcs ? rw_fakegcs_url(gcs) : "";
  pc.secrets = secs, pc.nsecrets = 1;
  if (session_cache) pc.session_cache = session_cache;
  rw_proxy_server *srv = gcs ? rw_proxy_server_start(&pc, &e) : NULL;
  CHECK(srv != NULL);
  if (e) log_err("proxy start", e);
  rw_error_unref(e);
  if (!srv && gcs) rw_fakegcs_stop(gcs);
  *gcs_out = srv ? gcs : NULL;
  return srv;
}

static void test_gap_busy_real_proxy(void) {
  rw_fakegcs *gcs;
  rw_proxy_server *srv = real_proxy_start(256u << 10, &gcs);
  if (!srv) return;
  rw_error *e = NULL;
  atomic_store(&busy_lines, 0), atomic_store(&error_lines, 0);
  rw_log_set_hook(count_log, NULL);
  rw_proxy_sink_config c = rw_proxy_sink_defaults();
  c.addrs[0] = rw_proxy_server_addr(srv), c.naddrs = 1;
  c.secret = secret, c.secret_len = 32, c.bucket = "b", c.object = "gap";
  c.window = 8u << 20, c.connections = 8, c.max_frame = 64u << 10;
  rw_sink *sink = rw_proxy_sink_new(&c, &e);
  rw_writer_config wc = rw_writer_defaults();
  wc.max_cache_size = 8u << 20, wc.min_chunk_size = wc.max_chunk_size = 256u << 10;
  wc.retry.min_wait = 0.001, wc.retry.max_wait = 0.05, wc.retry.total_wait = 20;
  rw_writer *w = sink ? rw_writer_new(NULL, sink, &wc, &e) : NULL;
  size_t n = (8u << 20) + 4321;
  unsigned char *data = random_data(n);
  double t_start = rw_mono_now();
  for (size_t off = 0; w && !e && off < n;) {
    size_t acc = 0;
    e = rw_writer_write_some(w, off, data + off, n - off, NULL, NULL, &acc);
    off += acc;
    if (!acc && !e) rw_writer_wait(w, NULL, true, off, 5);
  }
  if (w && !e) e = rw_writer_complete_start(w, n);
  double t0 = rw_mono_now();
  while (w && !e && !rw_writer_finished(w) && rw_mono_now() - t0 < 30) rw_writer_wait(w, NULL, false, 0, 1);
  if (w && !e) e = rw_writer_error(w);
  if (e) log_err("upload", e);
  CHECK(e == NULL && w && rw_writer_object(w) != NULL);
  rw_error_unref(e);
  rw_writer_free(w);
  rw_log_set_hook(NULL, NULL);
  fprintf(stderr, "gap in flight: %zu bytes in %.2f s, %d proto.busy answers logged, %d error lines\n", n,
          rw_mono_now() - t_start, atomic_load(&busy_lines), atomic_load(&error_lines));
  CHECK_EQ_INT(atomic_load(&error_lines), 0);
  rw_fakegcs_object o;
  CHECK(rw_fakegcs_object_get(gcs, "b", "gap", &o));
  CHECK(o.size == n && o.data && memcmp(o.data, data, n) == 0);
  rw_fakegcs_object_free(&o);
  free(data);
  rw_proxy_server_stop(srv);
  rw_fakegcs_stop(gcs);
}

/* The heartbeat against the real proxy, which closes a connection whose
 * frames after HELLO carry another client_id than HELLO's: an idle pooled
 * connection PINGed every 50 ms for 0.6 s stays open, and a put goes through
 * it. The sink's PING and PONG frames carried client_id 0, so the proxy
 * answered the first one proto.bad_frame and closed the connection (every
 * idle connection died at its first heartbeat, and every reply slower than
 * ping_interval cost the connection). */
static void test_heartbeat_real_proxy(void) {
  rw_fakegcs *gcs;
  rw_proxy_server *srv = real_proxy_start(0, &gcs);
  if (!srv) return;
  rw_error *e = NULL;
  atomic_store(&error_lines, 0);
  rw_log_set_hook(count_log, NULL);
  rw_proxy_sink_config c = rw_proxy_sink_defaults();
  c.addrs[0] = rw_proxy_server_addr(srv), c.naddrs = 1;
  c.secret = secret, c.secret_len = 32, c.bucket = "b", c.object = "hb";
  c.connections = 1, c.ping_interval = 0.05;
  rw_sink *sink = rw_proxy_sink_new(&c, &e);
  rw_ctx *ctx = rw_ctx_with_timeout(NULL, 5);
  if (sink) e = sink->ops->begin(sink, ctx);
  rw_ctx_unref(ctx);
  CHECK(sink && !e);
  rw_error_unref(e);
  sleep_s(0.6);
  rw_proxy_sink_counts n = {0};
  if (sink) rw_proxy_sink_stats(sink, &n);
  rw_proxy_stats ss = rw_proxy_server_stats(srv);
  fprintf(stderr, "idle 0.6 s at a 50 ms heartbeat: pings %llu, dropped %llu, proxy errors %llu\n",
          (unsigned long long)n.pings, (unsigned long long)n.dropped, (unsigned long long)ss.errors);
  CHECK(n.pings >= 3);
  CHECK_EQ_INT((int)n.dropped, 0);
  CHECK_EQ_INT((int)ss.errors, 0);
  unsigned char *data = random_data(100000);
  struct iovec iov = {data, 100000};
  rw_sink_put put = {.offset = 0, .iov = &iov, .iovcnt = 1, .len = 100000, .final = true, .stall_timeout = 2};
  rw_sink_result res;
  ctx = rw_ctx_with_timeout(NULL, 5);
  e = sink ? sink->ops->put(sink, ctx, &put, &res) : NULL;
  if (e) log_err("put", e);
  CHECK(sink && !e && res.finalized);
  rw_error_unref(e);
  if (sink) rw_sink_result_clear(&res);
  rw_ctx_unref(ctx);
  if (sink) rw_proxy_sink_stats(sink, &n);
  CHECK_EQ_INT((int)n.connects, 1);
  rw_log_set_hook(NULL, NULL);
  CHECK_EQ_INT(atomic_load(&error_lines), 0);
  rw_fakegcs_object o;
  CHECK(rw_fakegcs_object_get(gcs, "b", "hb", &o));
  CHECK(o.size == 100000 && o.data && memcmp(o.data, data, 100000) == 0);
  rw_fakegcs_object_free(&o);
  free(data);
  rw_sink_destroy(sink);
  rw_proxy_server_stop(srv);
  rw_fakegcs_stop(gcs);
}

int main(void) {
  rng = ct_seed();
  for (size_t i = 0; i < 32; i++) secret[i] = (uint8_t)rw_rand_next(&rng), other_secret[i] = (uint8_t)~secret[i];
  RUN(test_bad_options);
  RUN(test_upload);
  RUN(test_silent_connection);
  RUN(test_failover);
  RUN(test_chaos);
  RUN(test_expired);
  RUN(test_goodbye);
  RUN(test_connections_scale);
  RUN(test_resume);
  RUN(test_window);
  RUN(test_retry_after);
  RUN(test_busy_without_retry_after);
  RUN(test_failed_put_drops_busy_connection);
  RUN(test_wrong_secret);
  RUN(test_idle_answers_pings);
  RUN(test_idle_sends_pings);
  RUN(test_idle_unanswered);
  RUN(test_heartbeat_threads);
  RUN(test_heartbeat_fork);
  RUN(test_heartbeat_during_upload);
  RUN(test_destroy_prompt);
  RUN(test_gap_busy_real_proxy);
  RUN(test_heartbeat_real_proxy);
  return ct_finish("test_proxy_sink");
}
