/* The proxy server: config, start/stop, the epoll loop, accept, timers. */
#include "proxy/server.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "core/workgroup.h"
#include "net/auth.h"
#include "proxy/server_int.h"

double rw_proxy_now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

rw_proxy_config rw_proxy_defaults(void) {
  return (rw_proxy_config){.max_connections = 256,
                           .max_sessions = 256,
                           .cache = 256u << 20,
                           .session_cache = 64u << 20,
                           .max_frame = 1u << 20,
                           .max_inflight = 64,
                           .ping_interval_ms = 5000,
                           .table_ttl_s = 600,
                           .auth_timeout = 1};
}

static rw_error *check_secrets(const rw_proxy_config *c) {
  if (!c->secrets || c->nsecrets == 0)
    return rw_err(RW_E_INVALID, "secrets: at least one secret is required");
  for (size_t i = 0; i < c->nsecrets; i++) {
    const rw_proxy_secret *p = &c->secrets[i];
    const char *id = p->key_id ? p->key_id : "";
    if (strlen(id) > RWP_MAX_KEY_ID)
      return rw_err(RW_E_INVALID, "secrets[%zu].key_id: at most %d bytes", i + 1, RWP_MAX_KEY_ID);
    if (!p->secret || p->len < RWP_MIN_SECRET)
      return rw_err(RW_E_INVALID, "secrets[%zu] (key_id \"%s\"): a secret is %d or more bytes",
                    i + 1, id, RWP_MIN_SECRET);
    for (size_t j = 0; j < i; j++)
      if (!strcmp(c->secrets[j].key_id ? c->secrets[j].key_id : "", id))
        return rw_err(RW_E_INVALID, "secrets: key_id \"%s\" appears twice", id);
  }
  return NULL;
}

static rw_error *parse_listen(const char *spec, struct sockaddr_in *sa, char host[32]);

rw_error *rw_proxy_config_check(const rw_proxy_config *c) {
  struct sockaddr_in sa;
  char host[32];
  if (!c->listen || !*c->listen) return rw_err(RW_E_INVALID, "listen: required (\"127.0.0.1:PORT\")");
  rw_error *le = parse_listen(c->listen, &sa, host);
  if (le) return le;
  if (!c->upstream || (strncmp(c->upstream, "http://", 7) && strncmp(c->upstream, "https://", 8)))
    return rw_err(RW_E_INVALID, "upstream: an http:// or https:// URL is required");
  if ((c->token != NULL) + (c->credentials_file != NULL) + c->credentials_default > 1)
    return rw_err(RW_E_INVALID, "token, credentials_file and credentials_default: at most one of them");
  if (c->credentials_file && !*c->credentials_file)
    return rw_err(RW_E_INVALID, "credentials_file: an empty path");
  if (c->max_connections < 1 || c->max_connections > 100000)
    return rw_err(RW_E_INVALID, "max_connections: 1 .. 100000");
  if (c->max_sessions < 1 || c->max_sessions > 100000)
    return rw_err(RW_E_INVALID, "max_sessions: 1 .. 100000");
  if (c->max_frame < RWP_MIN_FRAME || c->max_frame > RWP_MAX_FRAME)
    return rw_err(RW_E_INVALID, "max_frame: %u .. %u bytes", RWP_MIN_FRAME, RWP_MAX_FRAME);
  if (c->session_cache < RW_CHUNK_QUANTUM || c->session_cache % RW_CHUNK_QUANTUM)
    return rw_err(RW_E_INVALID, "session_cache: a multiple of 256 KiB, at least 256 KiB");
  if (c->max_ahead && (c->max_ahead < c->session_cache || c->max_ahead > ((uint64_t)1 << 50)))
    return rw_err(RW_E_INVALID, "max_ahead: 0 (16 x session_cache) or session_cache (%llu) .. 2^50 bytes",
                  (unsigned long long)c->session_cache);
  if (c->cache < c->max_frame)
    return rw_err(RW_E_INVALID, "cache: at least max_frame (%u) bytes", c->max_frame);
  if (c->max_inflight < 1) return rw_err(RW_E_INVALID, "max_inflight: at least 1");
  if (c->ping_interval_ms < 10) return rw_err(RW_E_INVALID, "ping_interval_ms: at least 10");
  if (c->table_ttl_s < 1) return rw_err(RW_E_INVALID, "table_ttl_s: at least 1");
  if (!(c->auth_timeout > 0 && c->auth_timeout <= 60))
    return rw_err(RW_E_INVALID, "auth_timeout: more than 0, at most 60 seconds");
  if (!(c->rate_requests >= 0) || !(c->rate_bytes >= 0))
    return rw_err(RW_E_INVALID, "rate_requests, rate_bytes: 0 (none) or more");
  return check_secrets(c);
}

/* "HOST:PORT" with an IPv4 literal and a port 0..65535 into sa. */
static rw_error *parse_listen(const char *spec, struct sockaddr_in *sa, char host[32]) {
  const char *colon = strrchr(spec, ':');
  char *end = NULL;
  long port = colon ? strtol(colon + 1, &end, 10) : -1;
  size_t hl = colon ? (size_t)(colon - spec) : 0;
  *sa = (struct sockaddr_in){.sin_family = AF_INET};
  if (!colon || hl == 0 || hl >= 32 || !end || *end || end == colon + 1 || port < 0 || port > 65535)
    return rw_err(RW_E_INVALID, "listen \"%s\": HOST:PORT with an IPv4 address and a port 0..65535", spec);
  memcpy(host, spec, hl), host[hl] = 0;
  if (inet_pton(AF_INET, host, &sa->sin_addr) != 1)
    return rw_err(RW_E_INVALID, "listen \"%s\": the host must be an IPv4 address", spec);
  sa->sin_port = htons((uint16_t)port);
  return NULL;
}

/* "HOST:PORT" into a bound, listening, non-blocking socket. */
static rw_error *listen_on(const char *spec, int *fd_out, char *addr, size_t addr_len) {
  char host[32];
  struct sockaddr_in sa;
  rw_error *e = parse_listen(spec, &sa, host);
  if (e) return e;
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0), one = 1;
  if (fd < 0) return rw_err(RW_E_IO, "listen: socket: %s", strerror(errno));
  setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  socklen_t sl = sizeof sa;
  if (bind(fd, (struct sockaddr *)&sa, sizeof sa) || listen(fd, 128) ||
      getsockname(fd, (struct sockaddr *)&sa, &sl)) {
    e = rw_err(RW_E_IO, "listen \"%s\": %s", spec, strerror(errno));
    close(fd);
    return e;
  }
  snprintf(addr, addr_len, "%s:%u", host, ntohs(sa.sin_port));
  *fd_out = fd;
  return NULL;
}

static void stats_publish(rw_proxy_server *s) {
  s->live.connections = (uint64_t)s->nconns;
  s->live.sessions = (uint64_t)s->nsessions;
  s->live.held = s->held;
  s->live.table_entries = rw_amo_entries(s->amo);
  pthread_mutex_lock(&s->stats_mu);
  s->stats = s->live;
  pthread_mutex_unlock(&s->stats_mu);
}

/* Out of descriptors or memory: the listener stays readable (level-
 * triggered) while accept fails, so it is unwatched for ACCEPT_PAUSE s
 * instead of spinning; connections wait in the backlog meanwhile. */
#define ACCEPT_PAUSE 0.1
static void accept_pause(rw_proxy_server *s, int err) {
  double now = rw_proxy_now();
  if (epoll_ctl(s->epfd, EPOLL_CTL_DEL, s->lfd, NULL)) return;
  s->accept_paused_at = now;
  if (s->accept_logged_at && now - s->accept_logged_at < 10) return;
  s->accept_logged_at = now;
  rw_log(RW_LOG_WARN, "proxy: accept: %s; new connections wait (ulimit -n, max_connections)", strerror(err));
}

static void accept_resume(rw_proxy_server *s, double now) {
  if (!s->accept_paused_at || s->stopping || now - s->accept_paused_at < ACCEPT_PAUSE) return;
  struct epoll_event ev = {.events = EPOLLIN, .data.ptr = &s->lw};
  if (!epoll_ctl(s->epfd, EPOLL_CTL_ADD, s->lfd, &ev)) s->accept_paused_at = 0;
}

static void accept_one(rw_proxy_server *s) {
  struct sockaddr_in peer = {0};
  socklen_t plen = sizeof peer;
  int fd = accept4(s->lfd, (struct sockaddr *)&peer, &plen, SOCK_NONBLOCK | SOCK_CLOEXEC);
  if (fd < 0) {
    if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) accept_pause(s, errno);
    return;
  }
  int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  conn *c = calloc(1, sizeof *c);
  rw_error *e = c ? conn_reader_new(c) : NULL;
  if (!c || e) {
    rw_error_unref(e), free(c), close(fd);
    return;
  }
  c->w = (watch){W_CONN, c};
  c->srv = s, c->fd = fd, c->id = ++s->next_conn_id;
  c->accepted_at = c->last_rx = rw_proxy_now();
  rwp_writer_init(&c->wr);
  c->next = s->conns, s->conns = c;
  s->nconns++, s->live.accepted++;
  c->events = EPOLLIN | EPOLLRDHUP;
  struct epoll_event ev = {.events = c->events, .data.ptr = &c->w};
  epoll_ctl(s->epfd, EPOLL_CTL_ADD, fd, &ev);
  uint32_t wait_ms = req_rate_addr(s, ntohl(peer.sin_addr.s_addr));
  if (s->nconns > s->cfg.max_connections)
    conn_fatal(c, rw_err(RW_E_PROTO_BUSY, "the proxy has %d connections (its max_connections)",
                         s->cfg.max_connections));
  else if (wait_ms) {
    s->live.rate_limited++;
    conn_send_error(c, 0, rw_err(RW_E_PROTO_RATE_LIMITED, "too many connections from this address"),
                    false, 0, wait_ms);
    c->closing = true;
    conn_flush(c);
  }
}

static void accept_all(rw_proxy_server *s) {
  for (int i = 0; i < 64 && !s->stopping; i++) {
    int before = (int)s->live.accepted;
    accept_one(s);
    if ((int)s->live.accepted == before) break;
  }
}

/* Frees closed connections and dropped sessions once no event of the batch
 * can name them. */
static void reap(rw_proxy_server *s) {
  sessions_reap(s);
  for (conn **pp = &s->conns; *pp;) {
    conn *c = *pp;
    if (!c->dead) {
      pp = &c->next;
      continue;
    }
    *pp = c->next;
    free(c->out), free(c);
  }
}

static void ticks(rw_proxy_server *s) {
  double now = rw_proxy_now();
  accept_resume(s, now);
  for (conn *c = s->conns; c; c = c->next)
    if (!c->dead) conn_tick(c, now);
  if (now - s->last_expire >= 1) {
    rw_amo_expire(s->amo, now);
    req_expire(s, now);
    s->last_expire = now;
  }
}

static void on_event(rw_proxy_server *s, struct epoll_event *ev) {
  watch *w = ev->data.ptr;
  if (w->kind == W_LISTEN) accept_all(s);
  else if (w->kind == W_WAKE) {
    uint64_t v;
    if (read(s->wakefd, &v, sizeof v) < 0) { /* nothing to drain */ }
    req_jobs_done(s);
  } else if (w->kind == W_SESSION) session_on_event(w->obj);
  else {
    conn *c = w->obj;
    if (c->dead) return;
    if (ev->events & EPOLLOUT) conn_flush(c);
    if (c->dead) return;
    if (c->lingering) conn_drain(c); /* after our FIN: drops what comes, until the peer's EOF */
    else if (c->closing) { /* reads nothing more; a peer gone (HUP, ERR: never masked) gets nothing more */
      if (ev->events & (EPOLLHUP | EPOLLERR)) conn_close(c);
    } else if (ev->events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR)) conn_on_readable(c);
  }
}

/* Stop: GOODBYE and proto.shutdown for every open request, then close all. */
static void shutdown_all(rw_proxy_server *s) {
  s->stopping = true;
  epoll_ctl(s->epfd, EPOLL_CTL_DEL, s->lfd, NULL);
  shutdown_ops(s);
  for (conn *c = s->conns; c; c = c->next) {
    if (c->dead) continue;
    if (c->state == C_AUTHED) conn_send(c, &(rwp_msg){.op = RWP_GOODBYE, .client_id = c->client_id}, NULL, 0);
    else conn_send_error(c, 0, rw_err(RW_E_PROTO_SHUTDOWN, "the proxy is stopping"), false, 0, 0);
    conn_flush(c);
    conn_close(c);
  }
}

static void *loop(void *arg) {
  rw_proxy_server *s = arg;
  struct epoll_event evs[64];
  while (!s->stopping) {
    int n = epoll_wait(s->epfd, evs, 64, 50);
    for (int i = 0; i < n; i++) on_event(s, &evs[i]);
    if (atomic_load(&s->stop_asked)) shutdown_all(s);
    ticks(s);
    reap(s);
    stats_publish(s);
  }
  /* writers suspended first (their sessions stay; cancelling their parent
   * context would fail them), then the jobs still running end promptly */
  sessions_free_all(s);
  rw_ctx_cancel(s->ctx, rw_err(RW_E_PROTO_SHUTDOWN, "the proxy is stopping"));
  pthread_mutex_lock(&s->jobs_mu);
  while (s->jobs_running) pthread_cond_wait(&s->jobs_cv, &s->jobs_mu);
  pthread_mutex_unlock(&s->jobs_mu);
  req_jobs_done(s);
  reap(s);
  stats_publish(s);
  return NULL;
}

static void free_server(rw_proxy_server *s) {
  for (size_t i = 0; i < s->nsecrets; i++) {
    if (s->secrets[i].bytes) rwp_wipe(s->secrets[i].bytes, s->secrets[i].len);
    free(s->secrets[i].bytes), free(s->secrets[i].key_id);
  }
  for (client_rl *r = s->rls, *n; r; r = n) {
    n = r->next;
    rw_ratelimit_free(r->req), rw_ratelimit_free(r->bytes), free(r);
  }
  free(s->secrets), free(s->upstream), free(s->token), free(s->listen), free(s->ca_file);
  rw_cred_unref(s->cred);
  rw_amo_free(s->amo);
  if (s->lfd >= 0) close(s->lfd);
  if (s->wakefd >= 0) close(s->wakefd);
  if (s->epfd >= 0) close(s->epfd);
  rw_ctx_unref(s->ctx);
  pthread_mutex_destroy(&s->jobs_mu), pthread_cond_destroy(&s->jobs_cv);
  pthread_mutex_destroy(&s->stats_mu);
  free(s);
}

static char *dup_or_null(const char *p) { return p ? strdup(p) : NULL; }

static rw_error *copy_config(rw_proxy_server *s, const rw_proxy_config *cfg) {
  s->cfg = *cfg;
  s->upstream = strdup(cfg->upstream), s->listen = strdup(cfg->listen);
  s->token = dup_or_null(cfg->token);
  size_t ul = s->upstream ? strlen(s->upstream) : 0;
  while (ul && s->upstream[ul - 1] == '/') s->upstream[--ul] = 0;
  s->secrets = calloc(cfg->nsecrets, sizeof *s->secrets);
  if (!s->upstream || !s->listen || (cfg->token && !s->token) || !s->secrets)
    return rw_err(RW_E_NOMEM, "proxy: out of memory");
  s->nsecrets = cfg->nsecrets;
  for (size_t i = 0; i < cfg->nsecrets; i++) {
    psecret *p = &s->secrets[i];
    p->key_id = strdup(cfg->secrets[i].key_id ? cfg->secrets[i].key_id : "");
    p->bytes = malloc(cfg->secrets[i].len), p->len = cfg->secrets[i].len;
    if (!p->key_id || !p->bytes) return rw_err(RW_E_NOMEM, "proxy: out of memory");
    memcpy(p->bytes, cfg->secrets[i].secret, p->len);
  }
  s->cfg.listen = s->cfg.upstream = s->cfg.token = NULL, s->cfg.secrets = NULL;
  if (cfg->ca_file && !(s->ca_file = strdup(cfg->ca_file))) return rw_err(RW_E_NOMEM, "proxy: out of memory");
  s->cfg.ca_file = s->cfg.credentials_file = NULL;
  /* One credential for all sessions: its token cache is shared (issue 11). */
  if (cfg->credentials_file || cfg->credentials_default) {
    rw_cred_options o = {.kind = cfg->credentials_file ? RW_CRED_FILE : RW_CRED_DEFAULT,
                         .path = cfg->credentials_file, .ca_file = cfg->ca_file};
    rw_error *e = NULL;
    if (!(s->cred = rw_cred_new(&o, &e))) return e;
  }
  return NULL;
}

static rw_error *open_fds(rw_proxy_server *s) {
  rw_error *e = listen_on(s->listen, &s->lfd, s->addr, sizeof s->addr);
  if (e) return e;
  s->epfd = epoll_create1(EPOLL_CLOEXEC);
  s->wakefd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  if (s->epfd < 0 || s->wakefd < 0) return rw_err(RW_E_IO, "proxy: epoll/eventfd: %s", strerror(errno));
  s->lw = (watch){W_LISTEN, s}, s->ww = (watch){W_WAKE, s};
  struct epoll_event a = {.events = EPOLLIN, .data.ptr = &s->lw}, b = {.events = EPOLLIN, .data.ptr = &s->ww};
  if (epoll_ctl(s->epfd, EPOLL_CTL_ADD, s->lfd, &a) || epoll_ctl(s->epfd, EPOLL_CTL_ADD, s->wakefd, &b))
    return rw_err(RW_E_IO, "proxy: epoll_ctl: %s", strerror(errno));
  return NULL;
}

rw_proxy_server *rw_proxy_server_start(const rw_proxy_config *cfg, rw_error **err) {
  if ((*err = rw_proxy_config_check(cfg))) return NULL;
  rw_proxy_server *s = calloc(1, sizeof *s);
  if (!s) {
    *err = rw_err(RW_E_NOMEM, "proxy: out of memory");
    return NULL;
  }
  s->lfd = s->epfd = s->wakefd = -1;
  pthread_mutex_init(&s->jobs_mu, NULL), pthread_cond_init(&s->jobs_cv, NULL);
  pthread_mutex_init(&s->stats_mu, NULL);
  rw_amo_config ac = {.ttl = cfg->table_ttl_s, .max_entries = 4u * cfg->max_inflight + 16,
                      .max_clients = 65536};
  if ((*err = copy_config(s, cfg)) || !(s->amo = rw_amo_new(&ac, err)) || (*err = open_fds(s)))
    goto fail;
  if (!(s->ctx = rw_ctx_with_cancel(NULL))) {
    *err = rw_err(RW_E_NOMEM, "proxy: out of memory");
    goto fail;
  }
  s->last_expire = rw_proxy_now();
  rw_pool_shared_acquire();
  if (pthread_create(&s->thread, NULL, loop, s)) {
    rw_pool_shared_release();
    *err = rw_err(RW_E_RESOURCE, "proxy: cannot start its thread");
    goto fail;
  }
  rw_log(RW_LOG_INFO, "proxy listening on %s, upstream %s", s->addr, s->upstream);
  return s;
fail:
  free_server(s);
  return NULL;
}

const char *rw_proxy_server_addr(const rw_proxy_server *s) { return s->addr; }

rw_proxy_stats rw_proxy_server_stats(rw_proxy_server *s) {
  pthread_mutex_lock(&s->stats_mu);
  rw_proxy_stats st = s->stats;
  pthread_mutex_unlock(&s->stats_mu);
  return st;
}

void rw_proxy_server_stop(rw_proxy_server *s) {
  if (!s) return;
  atomic_store(&s->stop_asked, true);
  uint64_t one = 1;
  if (write(s->wakefd, &one, sizeof one) < 0) { /* the loop wakes within 50 ms anyway */ }
  pthread_join(s->thread, NULL);
  rw_pool_shared_release();
  rw_log(RW_LOG_INFO, "proxy on %s stopped", s->addr);
  free_server(s);
}
