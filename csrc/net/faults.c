/* Fault-injecting relays, the profile that schedules them, and the libcurl
 * dialer (see faults.h). One thread per relay, polling both sockets and an
 * eventfd that wakes it to stop. */
#include "net/faults.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include "core/backoff.h"
#include "core/clock.h"

#define MIB 1048576.0
#define RELAY_BUF (256 * 1024)
#define MAX_EVENTS 65536
#define CONNECT_TIMEOUT_MS 10000

struct rw_faults {
  atomic_int refs;
  rw_faults_config cfg;
  double born;
  atomic_uint_fast64_t next_index;
  atomic_uint_fast64_t connections, refused, resets, closes, stalls, truncates, bytes_up, bytes_down;
  atomic_int active;
  pthread_mutex_t mu; /* events and the dialer's list */
  rw_fault_event *events;
  size_t nevents, cap_events, total_events;
  rw_faults_conn *dialed; /* relays handed to libcurl, by curl fd */
};

/* One direction: a byte FIFO buf[head, tail) cut into segments, one per read,
 * each released at its own time (read time + latency), so several chunks are
 * in flight at once; ready_at paces sends under a bandwidth cap. */
#define MAX_SEGS 64
typedef struct relay_seg {
  size_t end;
  double due;
} relay_seg;

typedef struct relay_dir {
  unsigned char *buf;
  size_t head, tail;
  relay_seg seg[MAX_SEGS];
  int nseg;
  double ready_at;
  bool eof, shut;
} relay_dir;

static bool dir_empty(const relay_dir *r) { return r->head == r->tail; }
static bool dir_can_read(const relay_dir *r) { return r->tail < RELAY_BUF && r->nseg < MAX_SEGS; }

/* End of the bytes due by now. */
static size_t dir_due_end(const relay_dir *r, double now) {
  size_t end = r->head;
  for (int i = 0; i < r->nseg && r->seg[i].due <= now; i++) end = r->seg[i].end;
  return end;
}

/* When the next bytes come due (INFINITY when none are waiting). */
static double dir_next_due(const relay_dir *r, double now) {
  for (int i = 0; i < r->nseg; i++)
    if (r->seg[i].due > now) return r->seg[i].due;
  return INFINITY;
}

enum { END_NONE = 0, END_CLOSE, END_TRUNCATE };

struct rw_faults_conn {
  rw_faults *f;
  uint64_t index;
  int fd[2]; /* 0: client side, 1: server side */
  int lfd;   /* dialer: the listener the client side is accepted from, else -1 */
  int wake;
  atomic_bool stop, done;
  pthread_t th;
  uint64_t rng;
  uint64_t pos, down_pos;
  uint64_t next_reset, next_close, next_stall, next_trunc;
  int curl_fd;
  rw_faults_conn *next;
};

/* ---- profile ---- */

rw_error *rw_faults_config_check(const rw_faults_config *c) {
  if (!c) return rw_err(RW_E_INVALID, "fault profile: no config");
  const struct { const char *name; double v, max; } rates[] = {
      {"reset_per_mib", c->reset_per_mib, 1e6},   {"close_per_mib", c->close_per_mib, 1e6},
      {"stall_per_mib", c->stall_per_mib, 1e6},   {"truncate_per_mib", c->truncate_per_mib, 1e6},
      {"refuse", c->refuse, 1},                   {"latency", c->latency, 60},
      {"bandwidth", c->bandwidth, 1e12}};
  for (size_t i = 0; i < sizeof rates / sizeof rates[0]; i++)
    if (!isfinite(rates[i].v) || rates[i].v < 0 || rates[i].v > rates[i].max)
      return rw_err(RW_E_INVALID, "fault profile: %s must be a number in [0, %g] (got %g)",
                    rates[i].name, rates[i].max, rates[i].v);
  if (isnan(c->stall_for) || c->stall_for > 86400)
    return rw_err(RW_E_INVALID, "fault profile: stall_for must be <= 86400 s, or < 0 for forever (got %g)",
                  c->stall_for);
  if (c->bandwidth > 0 && c->bandwidth < 1024)
    return rw_err(RW_E_INVALID, "fault profile: bandwidth must be 0 (none) or >= 1024 bytes/s (got %g)",
                  c->bandwidth);
  if (c->max_connections > 65536)
    return rw_err(RW_E_INVALID, "fault profile: max_connections must be <= 65536 (got %d)", c->max_connections);
  return NULL;
}

rw_faults *rw_faults_new(const rw_faults_config *c, rw_error **err) {
  *err = rw_faults_config_check(c);
  if (*err) return NULL;
  rw_faults *f = calloc(1, sizeof *f);
  if (!f) {
    *err = rw_err(RW_E_NOMEM, "fault profile: out of memory");
    return NULL;
  }
  f->cfg = *c;
  f->born = rw_mono_now();
  if (f->cfg.max_connections <= 0) f->cfg.max_connections = 256;
  atomic_init(&f->refs, 1);
  pthread_mutex_init(&f->mu, NULL);
  return f;
}

rw_faults *rw_faults_ref(rw_faults *f) {
  atomic_fetch_add(&f->refs, 1);
  return f;
}

void rw_faults_unref(rw_faults *f) {
  if (!f || atomic_fetch_sub(&f->refs, 1) != 1) return;
  pthread_mutex_destroy(&f->mu);
  free(f->events);
  free(f);
}

const rw_faults_config *rw_faults_config_of(const rw_faults *f) { return &f->cfg; }

void rw_faults_stats_read(rw_faults *f, rw_faults_stats *st) {
  st->connections = atomic_load(&f->connections);
  st->refused = atomic_load(&f->refused);
  st->resets = atomic_load(&f->resets);
  st->closes = atomic_load(&f->closes);
  st->stalls = atomic_load(&f->stalls);
  st->truncates = atomic_load(&f->truncates);
  st->active = (uint64_t)atomic_load(&f->active);
  st->bytes_up = atomic_load(&f->bytes_up);
  st->bytes_down = atomic_load(&f->bytes_down);
}

const char *rw_fault_kind_name(rw_fault_kind k) {
  static const char *const names[] = {"refuse", "reset", "close", "stall", "truncate"};
  return (unsigned)k < sizeof names / sizeof names[0] ? names[k] : "?";
}

/* Logs a fault; returns its slot in the log (SIZE_MAX when the log is full). */
static size_t record(rw_faults *f, uint64_t conn, rw_fault_kind kind, uint64_t pos) {
  size_t slot = SIZE_MAX;
  atomic_uint_fast64_t *counter[] = {&f->refused, &f->resets, &f->closes, &f->stalls, &f->truncates};
  atomic_fetch_add(counter[kind], 1);
  pthread_mutex_lock(&f->mu);
  f->total_events++;
  if (f->nevents == f->cap_events && f->cap_events < MAX_EVENTS) {
    size_t cap = f->cap_events ? f->cap_events * 2 : 64;
    rw_fault_event *ev = realloc(f->events, cap * sizeof *ev);
    if (ev) {
      f->events = ev;
      f->cap_events = cap;
    }
  }
  if (f->nevents < f->cap_events) {
    slot = f->nevents++;
    f->events[slot] = (rw_fault_event){conn, kind, pos, rw_mono_now() - f->born, kind == RW_FAULT_STALL ? -1 : 0, false};
  }
  pthread_mutex_unlock(&f->mu);
  rw_log(RW_LOG_DEBUG, "faults: connection %llu: %s at byte %llu", (unsigned long long)conn,
         rw_fault_kind_name(kind), (unsigned long long)pos);
  return slot;
}

static void stall_ended(rw_faults *f, size_t slot, double held, bool by_timer) {
  if (slot == SIZE_MAX) return;
  pthread_mutex_lock(&f->mu);
  f->events[slot].held = held;
  f->events[slot].by_timer = by_timer;
  pthread_mutex_unlock(&f->mu);
}

size_t rw_faults_events(rw_faults *f, rw_fault_event *out, size_t max) {
  pthread_mutex_lock(&f->mu);
  size_t n = f->nevents < max ? f->nevents : max;
  if (n) memcpy(out, f->events, n * sizeof *out);
  size_t total = f->nevents;
  pthread_mutex_unlock(&f->mu);
  return total;
}

/* ---- schedules ---- */

/* Bytes from `from` to the next fault at `rate` per MiB (exponential). */
static uint64_t draw_next(uint64_t *rng, double rate, uint64_t from) {
  double u = rw_rand_unit(rng); /* drawn even when unused: keeps the stream aligned */
  if (rate <= 0) return UINT64_MAX;
  double d = ceil(-log1p(-u) / rate * MIB);
  if (d < 1) d = 1;
  if (d >= (double)(UINT64_MAX - from)) return UINT64_MAX;
  return from + (uint64_t)d;
}

static uint64_t plan_rng(uint64_t seed, uint64_t index) {
  uint64_t s = seed ^ ((index + 1) * UINT64_C(0x9E3779B97F4A7C15));
  rw_rand_next(&s);
  return s;
}

static void plan_draw(const rw_faults_config *c, uint64_t *rng, rw_faults_plan *p) {
  p->refused = rw_rand_unit(rng) < c->refuse;
  p->reset_at = draw_next(rng, c->reset_per_mib, 0);
  p->close_at = draw_next(rng, c->close_per_mib, 0);
  p->stall_at = draw_next(rng, c->stall_per_mib, 0);
  p->truncate_at = draw_next(rng, c->truncate_per_mib, 0);
}

void rw_faults_plan_of(const rw_faults_config *c, uint64_t index, rw_faults_plan *out) {
  uint64_t rng = plan_rng(c->seed, index);
  plan_draw(c, &rng, out);
}

bool rw_faults_admit(rw_faults *f, uint64_t *index) {
  *index = atomic_fetch_add(&f->next_index, 1);
  atomic_fetch_add(&f->connections, 1);
  rw_faults_plan p;
  rw_faults_plan_of(&f->cfg, *index, &p);
  if (p.refused || atomic_load(&f->active) >= f->cfg.max_connections) {
    record(f, *index, RW_FAULT_REFUSE, 0);
    return false;
  }
  return true;
}

/* ---- relay ---- */

static void set_nonblock(int fd) {
  int fl = fcntl(fd, F_GETFL);
  if (fl >= 0) fcntl(fd, F_SETFL, fl | O_NONBLOCK);
}

/* Closes fd so that the peer sees a reset (TCP: RST). */
static void close_reset(int *fd) {
  if (*fd < 0) return;
  struct linger l = {1, 0};
  setsockopt(*fd, SOL_SOCKET, SO_LINGER, &l, sizeof l);
  close(*fd);
  *fd = -1;
}

static void close_fd(int *fd) {
  if (*fd >= 0) close(*fd);
  *fd = -1;
}

static int ms_until(double t, double now) {
  double ms = (t - now) * 1000.0 + 1;
  if (ms < 1) return 1;
  if (ms > 3600000) return 3600000;
  return (int)ms;
}

static int min_timeout(int a, int b) { return a < 0 ? b : (b < 0 ? a : (a < b ? a : b)); }

static uint64_t min3(uint64_t a, uint64_t b, uint64_t c) {
  uint64_t m = a < b ? a : b;
  return m < c ? m : c;
}

/* How much to read from direction d now: up to the next fault position, and
 * in slices of ~20 ms under a bandwidth cap. */
static size_t read_cap(const rw_faults_conn *c, int d) {
  uint64_t cap = RELAY_BUF;
  uint64_t next = min3(c->next_reset, c->next_close, c->next_stall);
  if (next > c->pos && next - c->pos < cap) cap = next - c->pos;
  if (d == 1 && c->next_trunc > c->down_pos && c->next_trunc - c->down_pos < cap)
    cap = c->next_trunc - c->down_pos;
  double bw = c->f->cfg.bandwidth;
  if (bw > 0 && bw / 50 < (double)cap) cap = (uint64_t)(bw / 50) + 1;
  return cap ? (size_t)cap : 1;
}

typedef struct relay_state {
  relay_dir dir[2];
  bool stalled;
  double stall_until; /* < 0: forever */
  double stall_t0;
  size_t stall_slot;
  int end_after_flush[2];
} relay_state;

/* Applies the faults due at the current position after a read on d.
 * Returns false when the connection has been reset. */
static bool faults_due(rw_faults_conn *c, relay_state *s, int d, double now) {
  const rw_faults_config *cfg = &c->f->cfg;
  if (c->pos >= c->next_reset) {
    record(c->f, c->index, RW_FAULT_RESET, c->pos);
    close_reset(&c->fd[0]);
    close_reset(&c->fd[1]);
    return false;
  }
  if (c->pos >= c->next_close && !s->end_after_flush[d]) {
    record(c->f, c->index, RW_FAULT_CLOSE, c->pos);
    s->end_after_flush[d] = END_CLOSE;
    c->next_close = UINT64_MAX;
  }
  if (d == 1 && c->down_pos >= c->next_trunc && !s->end_after_flush[d]) {
    record(c->f, c->index, RW_FAULT_TRUNCATE, c->down_pos);
    s->end_after_flush[d] = END_TRUNCATE;
    c->next_trunc = UINT64_MAX;
  }
  if (c->pos >= c->next_stall) {
    s->stall_slot = record(c->f, c->index, RW_FAULT_STALL, c->pos);
    s->stall_t0 = now;
    s->stalled = true;
    s->stall_until = cfg->stall_for < 0 ? -1 : now + cfg->stall_for;
    c->next_stall = draw_next(&c->rng, cfg->stall_per_mib, c->pos);
  }
  return true;
}

/* Sends what direction d has due. Returns false when the relay must end. */
static bool relay_write(rw_faults_conn *c, relay_state *s, int d, double now) {
  relay_dir *r = &s->dir[d];
  size_t end = dir_due_end(r, now);
  if (end <= r->head) return true;
  ssize_t n = send(c->fd[1 - d], r->buf + r->head, end - r->head, MSG_NOSIGNAL);
  if (n < 0) {
    if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) return true;
    close_reset(&c->fd[d]); /* the peer is gone: pass the failure on */
    return false;
  }
  r->head += (size_t)n;
  atomic_fetch_add(d == 0 ? &c->f->bytes_up : &c->f->bytes_down, (uint64_t)n);
  double bw = c->f->cfg.bandwidth;
  if (bw > 0) r->ready_at = (r->ready_at > now ? r->ready_at : now) + (double)n / bw;
  int done = 0;
  while (done < r->nseg && r->seg[done].end <= r->head) done++;
  if (done) {
    memmove(r->seg, r->seg + done, (size_t)(r->nseg - done) * sizeof r->seg[0]);
    r->nseg -= done;
  }
  if (!dir_empty(r)) return true;
  r->head = r->tail = 0;
  r->nseg = 0;
  if (s->end_after_flush[d]) {
    shutdown(c->fd[0], SHUT_RDWR);
    shutdown(c->fd[1], SHUT_RDWR);
    return false;
  }
  return true;
}

/* Reads into direction d's free space. Returns false when the relay must end. */
static bool relay_read(rw_faults_conn *c, relay_state *s, int d, double now) {
  relay_dir *r = &s->dir[d];
  size_t cap = read_cap(c, d);
  if (cap > RELAY_BUF - r->tail) cap = RELAY_BUF - r->tail;
  ssize_t n = recv(c->fd[d], r->buf + r->tail, cap, 0);
  if (n < 0) {
    if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) return true;
    close_reset(&c->fd[1 - d]);
    return false;
  }
  if (n == 0) {
    r->eof = true;
    return true;
  }
  r->tail += (size_t)n;
  r->seg[r->nseg++] = (relay_seg){r->tail, now + c->f->cfg.latency};
  c->pos += (uint64_t)n;
  if (d == 1) c->down_pos += (uint64_t)n;
  return faults_due(c, s, d, now);
}

static void relay_loop(rw_faults_conn *c, relay_state *s) {
  for (;;) {
    if (atomic_load(&c->stop)) return;
    double now = rw_mono_now();
    if (s->stalled && s->stall_until >= 0 && now >= s->stall_until) {
      s->stalled = false;
      stall_ended(c->f, s->stall_slot, now - s->stall_t0, true);
    }
    struct pollfd p[3] = {{c->wake, POLLIN, 0}, {-1, 0, 0}, {-1, 0, 0}};
    int timeout = -1;
    if (s->stalled) {
      /* Nothing moves, but a peer that resets (or whose FIN gets through)
       * ends the relay. */
      if (s->stall_until >= 0) timeout = ms_until(s->stall_until, now);
      p[1] = (struct pollfd){c->fd[0], POLLRDHUP, 0};
      p[2] = (struct pollfd){c->fd[1], POLLRDHUP, 0};
    } else {
      for (int d = 0; d < 2; d++) {
        relay_dir *r = &s->dir[d];
        if (dir_empty(r) && r->eof && !r->shut) {
          shutdown(c->fd[1 - d], SHUT_WR);
          r->shut = true;
        }
        if (!r->eof && dir_can_read(r)) p[1 + d].events |= POLLIN;
        if (dir_empty(r)) continue;
        double at = dir_due_end(r, now) > r->head ? r->ready_at : fmax(r->ready_at, dir_next_due(r, now));
        if (at <= now) p[2 - d].events |= POLLOUT;
        else timeout = min_timeout(timeout, ms_until(at, now));
      }
      if (s->dir[0].shut && s->dir[1].shut) return;
      p[1].fd = c->fd[0];
      p[2].fd = c->fd[1];
    }
    int rc = poll(p, 3, timeout);
    if (rc < 0 && errno != EINTR) return;
    if (p[0].revents) {
      uint64_t v;
      if (read(c->wake, &v, sizeof v) < 0) { /* nothing to do */ }
      continue;
    }
    if (s->stalled && ((p[1].revents | p[2].revents) & (POLLRDHUP | POLLHUP | POLLERR))) return;
    if (s->stalled || rc <= 0) continue;
    now = rw_mono_now();
    for (int d = 0; d < 2; d++) {
      relay_dir *r = &s->dir[d];
      if (!dir_empty(r) && (p[2 - d].revents & (POLLOUT | POLLERR | POLLHUP)) && now >= r->ready_at)
        if (!relay_write(c, s, d, now)) return;
      if (!r->eof && dir_can_read(r) && (p[1 + d].revents & (POLLIN | POLLERR | POLLHUP)))
        if (!relay_read(c, s, d, now)) return;
      if (s->stalled) break;
    }
  }
}

/* Dialer relays first take the client's connection from their listener. */
static bool accept_client(rw_faults_conn *c) {
  struct pollfd p[2] = {{c->wake, POLLIN, 0}, {c->lfd, POLLIN, 0}};
  int rc;
  do rc = poll(p, 2, CONNECT_TIMEOUT_MS);
  while (rc < 0 && errno == EINTR);
  if (rc <= 0 || p[0].revents) return false;
  c->fd[0] = accept4(c->lfd, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);
  close_fd(&c->lfd);
  return c->fd[0] >= 0;
}

static void *relay_main(void *arg) {
  rw_faults_conn *c = arg;
  if (c->lfd >= 0 && !accept_client(c)) {
    atomic_store(&c->done, true);
    return NULL;
  }
  relay_state s;
  memset(&s, 0, sizeof s);
  s.dir[0].buf = malloc(RELAY_BUF);
  s.dir[1].buf = malloc(RELAY_BUF);
  if (s.dir[0].buf && s.dir[1].buf) relay_loop(c, &s);
  if (s.stalled) stall_ended(c->f, s.stall_slot, rw_mono_now() - s.stall_t0, false);
  free(s.dir[0].buf);
  free(s.dir[1].buf);
  /* The fds stay open until stop (a closed fd number could be reused). */
  atomic_store(&c->done, true);
  return NULL;
}

static rw_faults_conn *conn_start(rw_faults *f, uint64_t index, int a, int b, int lfd, rw_error **err) {
  *err = NULL;
  rw_faults_conn *c = calloc(1, sizeof *c);
  int active = atomic_fetch_add(&f->active, 1) + 1;
  if (!c || active > f->cfg.max_connections) {
    /* Two dials can pass rw_faults_admit at once: the one over the bound is
     * refused here, and counted like the others. */
    if (c) record(f, index, RW_FAULT_REFUSE, 0);
    *err = c ? rw_err(RW_E_NET_REFUSED, "fault relay: %d connections open already (max_connections)",
                      f->cfg.max_connections)
             : rw_err(RW_E_NOMEM, "fault relay: out of memory");
    goto fail;
  }
  c->wake = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (c->wake < 0) {
    *err = rw_err(RW_E_NET_OTHER, "fault relay: eventfd: %s", strerror(errno));
    goto fail;
  }
  c->f = rw_faults_ref(f);
  c->index = index;
  c->fd[0] = a;
  c->fd[1] = b;
  c->lfd = lfd;
  c->curl_fd = -1;
  if (a >= 0) set_nonblock(a);
  set_nonblock(b);
  c->rng = plan_rng(f->cfg.seed, index);
  rw_faults_plan p;
  plan_draw(&f->cfg, &c->rng, &p);
  c->next_reset = p.reset_at;
  c->next_close = p.close_at;
  c->next_stall = p.stall_at;
  c->next_trunc = p.truncate_at;
  atomic_init(&c->stop, false);
  atomic_init(&c->done, false);
  int rc = pthread_create(&c->th, NULL, relay_main, c);
  if (rc) {
    *err = rw_err(RW_E_NET_OTHER, "fault relay: cannot start a thread: %s", strerror(rc));
    close(c->wake);
    rw_faults_unref(c->f);
    goto fail;
  }
  return c;
fail:
  atomic_fetch_sub(&f->active, 1);
  free(c);
  if (a >= 0) close(a);
  if (lfd >= 0) close(lfd);
  close(b);
  return NULL;
}

rw_faults_conn *rw_faults_conn_start(rw_faults *f, uint64_t index, int a, int b, rw_error **err) {
  return conn_start(f, index, a, b, -1, err);
}

bool rw_faults_conn_done(rw_faults_conn *c) { return atomic_load(&c->done); }

void rw_faults_conn_stop(rw_faults_conn *c) {
  if (!c) return;
  atomic_store(&c->stop, true);
  uint64_t one = 1;
  if (write(c->wake, &one, sizeof one) < 0) { /* the eventfd cannot be full */ }
  pthread_join(c->th, NULL);
  close_fd(&c->fd[0]);
  close_fd(&c->fd[1]);
  close_fd(&c->lfd);
  close(c->wake);
  atomic_fetch_sub(&c->f->active, 1);
  rw_faults_unref(c->f);
  free(c);
}

/* ---- the libcurl dialer ---- */

static int connect_timeout(int fd, const struct sockaddr *addr, socklen_t len) {
  set_nonblock(fd);
  if (connect(fd, addr, len) == 0) return 0;
  if (errno != EINPROGRESS) return errno;
  struct pollfd p = {fd, POLLOUT, 0};
  int rc;
  do rc = poll(&p, 1, CONNECT_TIMEOUT_MS);
  while (rc < 0 && errno == EINTR);
  if (rc == 0) return ETIMEDOUT;
  int soerr = 0;
  socklen_t sl = sizeof soerr;
  if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &sl) < 0) return errno;
  return soerr;
}

/* libcurl 7.88 ignores CURL_SOCKOPT_ALREADY_CONNECTED and calls connect()
 * on whatever socket it is given, so a socket pair cannot be handed over.
 * Instead libcurl gets a fresh TCP socket and its address is rewritten to a
 * one-shot loopback listener that the relay accepts from (libcurl allows the
 * open-socket callback to change the address). The client side is then real
 * TCP: a reset is a real RST. */
static int one_shot_listener(struct sockaddr_in *sin, int rcvbuf) {
  int l = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (l < 0) return -1;
  if (rcvbuf > 0) setsockopt(l, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof rcvbuf); /* before listen */
  memset(sin, 0, sizeof *sin);
  sin->sin_family = AF_INET;
  sin->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof *sin;
  if (bind(l, (struct sockaddr *)sin, sizeof *sin) < 0 || listen(l, 1) < 0 ||
      getsockname(l, (struct sockaddr *)sin, &len) < 0) {
    int e = errno;
    close(l);
    errno = e;
    return -1;
  }
  return l;
}

static curl_socket_t dial_open(void *ud, curlsocktype purpose, struct curl_sockaddr *addr) {
  rw_faults *f = ud;
  if (purpose != CURLSOCKTYPE_IPCXN || (addr->family != AF_INET && addr->family != AF_INET6))
    return socket(addr->family, addr->socktype | SOCK_CLOEXEC, addr->protocol);
  uint64_t index;
  if (!rw_faults_admit(f, &index)) {
    errno = ECONNREFUSED;
    return CURL_SOCKET_BAD;
  }
  int b = socket(addr->family, SOCK_STREAM | SOCK_CLOEXEC, addr->protocol);
  if (b < 0) return CURL_SOCKET_BAD;
  /* Under a bandwidth cap the relay is the slow link: small receive buffers
   * on its two sides keep the backlog in the sender's queue, unacknowledged,
   * as on a real bottleneck, instead of MiBs acknowledged at once on
   * loopback and then held by the relay. */
  int rcvbuf = f->cfg.bandwidth > 0 ? 64 * 1024 : 0;
  if (rcvbuf) setsockopt(b, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof rcvbuf);
  int e = connect_timeout(b, &addr->addr, addr->addrlen);
  if (e) {
    close(b);
    errno = e;
    return CURL_SOCKET_BAD;
  }
  struct sockaddr_in sin;
  int l = one_shot_listener(&sin, rcvbuf);
  int cs = l < 0 ? -1 : socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, IPPROTO_TCP);
  if (cs < 0) {
    e = errno;
    if (l >= 0) close(l);
    close(b);
    errno = e;
    return CURL_SOCKET_BAD;
  }
  rw_error *err = NULL;
  rw_faults_conn *c = conn_start(f, index, -1, b, l, &err);
  if (!c) {
    rw_error_log(RW_LOG_WARN, err, "faults: no relay");
    rw_error_unref(err);
    close(cs);
    errno = ECONNREFUSED;
    return CURL_SOCKET_BAD;
  }
  addr->family = AF_INET;
  addr->protocol = IPPROTO_TCP;
  addr->addrlen = sizeof sin;
  memcpy(&addr->addr, &sin, sizeof sin);
  c->curl_fd = cs;
  pthread_mutex_lock(&f->mu);
  c->next = f->dialed;
  f->dialed = c;
  pthread_mutex_unlock(&f->mu);
  return cs;
}

static rw_faults_conn *find_dialed(rw_faults *f, curl_socket_t fd, bool unlink) {
  pthread_mutex_lock(&f->mu);
  rw_faults_conn **pp = &f->dialed, *c = NULL;
  for (; *pp; pp = &(*pp)->next)
    if ((*pp)->curl_fd == fd) {
      c = *pp;
      if (unlink) *pp = c->next;
      break;
    }
  pthread_mutex_unlock(&f->mu);
  return c;
}

static int dial_close(void *ud, curl_socket_t fd) {
  rw_faults_conn *c = find_dialed(ud, fd, true);
  rw_faults_conn_stop(c);
  return close(fd);
}

rw_http_dialer rw_faults_dialer(rw_faults *f) {
  rw_http_dialer d = {.opensocket = dial_open, .sockopt = NULL, .closesocket = dial_close, .ud = f};
  return d;
}
