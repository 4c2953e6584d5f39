/* Fault-injecting relays, the profile that schedules them, and the libcurl
 * dialer (see faults.h). One thread per relay, polling both sockets and an
 * eventfd that wakes it to stop; each direction of a relay is a delay line
 * (relay_dir). */
#include "testbed/faults.h"

#include <errno.h>
#include <netinet/tcp.h>
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
#include <sys/uio.h>
#include <unistd.h>

#include "core/backoff.h"
#include "core/clock.h"

#define MIB 1048576.0
#define READ_MAX (256 * 1024) /* per recv */
#define TOKEN_QUANTUM 16384.0
#define DEFAULT_WINDOW (4 * 1024 * 1024)
#define MAX_WINDOW (UINT64_C(1) << 30)
#define MAX_EVENTS 65536
#define CONNECT_TIMEOUT_MS 10000

struct rw_faults {
  atomic_int refs;
  rw_faults_config cfg;
  double born;
  atomic_uint_fast64_t next_index;
  atomic_uint_fast64_t connections, refused, resets, closes, stalls, truncates, bytes_up, bytes_down;
  atomic_uint_fast64_t in_flight_max;
  atomic_int active;
  pthread_mutex_t mu; /* events and the dialer's list */
  rw_fault_event *events;
  size_t nevents, cap_events, total_events;
  rw_faults_conn *dialed; /* relays handed to libcurl, by curl fd */
};

/* The delay line of one direction (see relay_dir below) keeps two queues of
 * marks (end, at): the stream bytes before `end` are released at time `at`.
 * Times are rounded up to the next millisecond and marks with the same time
 * merge, so a queue holds about one mark per millisecond of latency. */
typedef struct mark {
  uint64_t end;
  double at;
} mark;

typedef struct marks {
  mark *v;
  size_t cap, head, n;
} marks;

/* A relay is a stretch of network, not an endpoint: it forwards what it has
 * at once (no Nagle), so small frames (replies, acks) are not held back for
 * the peer's delayed ACK. a may be -1 until accepted (the dialer). */
static void no_delay(int fd) {
  int one = 1;
  if (fd >= 0) setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
}

static bool marks_push(marks *q, uint64_t end, double at) {
  if (q->n && q->v[(q->head + q->n - 1) % q->cap].at >= at) {
    q->v[(q->head + q->n - 1) % q->cap].end = end; /* leaves with the earlier bytes, never sooner */
    return true;
  }
  if (q->n == q->cap) {
    size_t cap = q->cap ? q->cap * 2 : 64;
    mark *v = malloc(cap * sizeof *v);
    if (!v) return false;
    for (size_t i = 0; i < q->n; i++) v[i] = q->v[(q->head + i) % q->cap];
    free(q->v);
    q->v = v;
    q->cap = cap;
    q->head = 0;
  }
  q->v[(q->head + q->n++) % q->cap] = (mark){end, at};
  return true;
}

/* Pops the marks due by now; returns the end of the last one (or `end`). */
static uint64_t marks_pop_due(marks *q, double now, uint64_t end) {
  for (; q->n && q->v[q->head].at <= now; q->n--) {
    end = q->v[q->head].end;
    q->head = (q->head + 1) % q->cap;
  }
  return end;
}

static double marks_next(const marks *q) { return q->n ? q->v[q->head].at : INFINITY; }

/* A byte ring indexed by stream offset: holds [head, tail), grows up to the
 * window on demand (a quiet connection costs no window). */
typedef struct ring {
  unsigned char *buf;
  size_t cap;
  uint64_t head, tail;
} ring;

/* The up-to-two pieces of the ring from stream offset off, len bytes. */
static int ring_iov(const ring *r, uint64_t off, size_t len, struct iovec iov[2]) {
  size_t at = (size_t)(off % r->cap), first = r->cap - at < len ? r->cap - at : len;
  iov[0] = (struct iovec){r->buf + at, first};
  iov[1] = (struct iovec){r->buf, len - first};
  return len > first ? 2 : 1;
}

/* Makes room for want more bytes, up to max in all; false when out of memory. */
static bool ring_reserve(ring *r, size_t want, size_t max) {
  size_t used = (size_t)(r->tail - r->head);
  if (r->cap - used >= want || r->cap >= max) return true;
  size_t cap = r->cap ? r->cap : 64 * 1024;
  while (cap < used + want) cap *= 2;
  if (cap > max) cap = max;
  unsigned char *buf = malloc(cap);
  if (!buf) return false;
  if (used) {
    struct iovec iov[2];
    int n = ring_iov(r, r->head, used, iov);
    size_t at = (size_t)(r->head % cap);
    for (int i = 0; i < n; i++) { /* into the new ring at the same stream offsets */
      size_t a = cap - at < iov[i].iov_len ? cap - at : iov[i].iov_len;
      memcpy(buf + at, iov[i].iov_base, a);
      memcpy(buf, (unsigned char *)iov[i].iov_base + a, iov[i].iov_len - a);
      at = (at + iov[i].iov_len) % cap;
    }
  }
  free(r->buf);
  r->buf = buf;
  r->cap = cap;
  return true;
}

/* One direction, a delay line: each byte read from the source at t may be
 * written out from t + latency (`due`); the window it took is given back a
 * latency after it was written (`ack`: the receiver's acknowledgement on its
 * way back), so at most `window` bytes are in flight per round trip, as with
 * TCP. Reading stops while the window is full, and a token bucket meters the
 * reads under a bandwidth cap, so a slow link's backlog waits in the
 * sender's socket. */
typedef struct relay_dir {
  ring r;
  marks due, ack;
  uint64_t sendable; /* stream offset: bytes before it are due */
  uint64_t acked;    /* stream offset: the window is [acked, acked + window) */
  double tokens, refilled;
  double eof_at; /* when the source's EOF may be passed on */
  bool eof, shut;
} relay_dir;

static bool dir_empty(const relay_dir *r) { return r->r.head == r->r.tail; }
static uint64_t dir_in_flight(const relay_dir *r) { return r->r.tail - r->acked; }

static void dir_free(relay_dir *r) {
  free(r->r.buf);
  free(r->due.v);
  free(r->ack.v);
}

/* When bytes handled at t are released (rounded up to a millisecond). */
static double release_at(double t, double latency) {
  return latency > 0 ? ceil((t + latency) * 1000.0) / 1000.0 : 0;
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
  if (c->window && (c->window < 1024 || c->window > MAX_WINDOW))
    return rw_err(RW_E_INVALID, "fault profile: window must be 0 (the default, 4 MiB) or bytes in [1024, %llu] (got %llu)",
                  (unsigned long long)MAX_WINDOW, (unsigned long long)c->window);
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
  if (f->cfg.window == 0) f->cfg.window = DEFAULT_WINDOW;
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
  st->in_flight_max = atomic_load(&f->in_flight_max);
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

void rw_faults_reset_close(int fd) {
  struct linger l = {1, 0};
  setsockopt(fd, SOL_SOCKET, SO_LINGER, &l, sizeof l);
  close(fd);
}

static void close_reset(int *fd) {
  if (*fd < 0) return;
  rw_faults_reset_close(*fd);
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

typedef struct relay_state {
  relay_dir dir[2];
  bool stalled;
  double stall_until; /* < 0: forever */
  double stall_t0;
  size_t stall_slot;
  int end_after_flush[2];
} relay_state;

/* Under a bandwidth cap the bucket holds 20 ms of it, and a read waits for at
 * least a quantum of tokens (or the whole bucket when that is smaller). */
static double bucket_size(double bw) { return fmax(bw / 50, 1); }
static double read_quantum(double bw) { return fmin(bucket_size(bw), TOKEN_QUANTUM); }

/* Releases what is due by now and refills the bucket. */
static void dir_refresh(relay_dir *r, double bw, double now) {
  r->sendable = marks_pop_due(&r->due, now, r->sendable);
  r->acked = marks_pop_due(&r->ack, now, r->acked);
  if (bw <= 0) return;
  r->tokens = fmin(bucket_size(bw), r->tokens + (now - r->refilled) * bw);
  r->refilled = now;
}

static bool dir_can_read(const rw_faults_conn *c, const relay_state *s, int d) {
  const relay_dir *r = &s->dir[d];
  double bw = c->f->cfg.bandwidth;
  return !r->eof && !s->end_after_flush[d] && dir_in_flight(r) < c->f->cfg.window &&
         (bw <= 0 || r->tokens >= read_quantum(bw));
}

static bool dir_can_write(const relay_dir *r) { return r->sendable > r->r.head; }

/* When direction d can do something no socket will announce: bytes come due,
 * the window opens, the bucket refills, an EOF may be passed on. */
static double dir_wake_at(const rw_faults_conn *c, const relay_state *s, int d) {
  const relay_dir *r = &s->dir[d];
  double bw = c->f->cfg.bandwidth, at = INFINITY;
  if (!dir_empty(r) && !dir_can_write(r)) at = marks_next(&r->due);
  if (r->eof && !r->shut && dir_empty(r)) at = fmin(at, r->eof_at);
  if (r->eof || s->end_after_flush[d]) return at;
  if (dir_in_flight(r) >= c->f->cfg.window) return fmin(at, marks_next(&r->ack));
  if (bw > 0 && r->tokens < read_quantum(bw)) at = fmin(at, r->refilled + (read_quantum(bw) - r->tokens) / bw);
  return at;
}

/* How much to read from direction d now: what the window and the bucket
 * allow, and no further than the next fault position. */
static size_t read_cap(const rw_faults_conn *c, const relay_dir *r, int d) {
  uint64_t cap = READ_MAX, room = c->f->cfg.window - dir_in_flight(r);
  if (room < cap) cap = room;
  double bw = c->f->cfg.bandwidth;
  if (bw > 0 && r->tokens < (double)cap) cap = (uint64_t)r->tokens;
  uint64_t next = min3(c->next_reset, c->next_close, c->next_stall);
  if (next > c->pos && next - c->pos < cap) cap = next - c->pos;
  if (d == 1 && c->next_trunc > c->down_pos && c->next_trunc - c->down_pos < cap)
    cap = c->next_trunc - c->down_pos;
  return cap ? (size_t)cap : 1;
}

static void note_in_flight(rw_faults *f, const relay_dir *r) {
  uint64_t v = dir_in_flight(r), m = atomic_load(&f->in_flight_max);
  while (v > m && !atomic_compare_exchange_weak(&f->in_flight_max, &m, v)) {
  }
}

/* The delay line cannot keep time without memory: the connection is reset. */
static bool out_of_memory(rw_faults_conn *c) {
  rw_log(RW_LOG_WARN, "faults: connection %llu: out of memory for the delay line, reset",
         (unsigned long long)c->index);
  close_reset(&c->fd[0]);
  close_reset(&c->fd[1]);
  return false;
}

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
  struct iovec iov[2];
  struct msghdr m = {.msg_iov = iov};
  m.msg_iovlen = (size_t)ring_iov(&r->r, r->r.head, (size_t)(r->sendable - r->r.head), iov);
  ssize_t n = sendmsg(c->fd[1 - d], &m, MSG_NOSIGNAL | MSG_DONTWAIT);
  if (n < 0) {
    if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) return true;
    close_reset(&c->fd[d]); /* the peer is gone: pass the failure on */
    return false;
  }
  r->r.head += (uint64_t)n;
  atomic_fetch_add(d == 0 ? &c->f->bytes_up : &c->f->bytes_down, (uint64_t)n);
  if (!marks_push(&r->ack, r->r.head, release_at(now, c->f->cfg.latency))) return out_of_memory(c);
  if (dir_empty(r) && s->end_after_flush[d]) {
    shutdown(c->fd[0], SHUT_RDWR);
    shutdown(c->fd[1], SHUT_RDWR);
    return false;
  }
  return true;
}

/* Reads into direction d's delay line. Returns false when the relay must end. */
static bool relay_read(rw_faults_conn *c, relay_state *s, int d, double now) {
  relay_dir *r = &s->dir[d];
  size_t cap = read_cap(c, r, d);
  if (!ring_reserve(&r->r, cap, (size_t)c->f->cfg.window)) return out_of_memory(c);
  size_t room = r->r.cap - (size_t)(r->r.tail - r->r.head); /* >= cap: the window bounds both */
  if (cap > room) cap = room;
  struct iovec iov[2];
  struct msghdr m = {.msg_iov = iov};
  m.msg_iovlen = (size_t)ring_iov(&r->r, r->r.tail, cap, iov);
  ssize_t n = recvmsg(c->fd[d], &m, MSG_DONTWAIT);
  if (n < 0) {
    if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) return true;
    close_reset(&c->fd[1 - d]);
    return false;
  }
  if (n == 0) {
    r->eof = true;
    r->eof_at = release_at(now, c->f->cfg.latency);
    return true;
  }
  r->r.tail += (uint64_t)n;
  if (!marks_push(&r->due, r->r.tail, release_at(now, c->f->cfg.latency))) return out_of_memory(c);
  r->tokens -= (double)n;
  note_in_flight(c->f, r);
  c->pos += (uint64_t)n;
  if (d == 1) c->down_pos += (uint64_t)n;
  return faults_due(c, s, d, now);
}

/* Sets what to wait for on each socket and the timeout; false once both
 * directions have been passed on to their end. */
static bool relay_arm(rw_faults_conn *c, relay_state *s, struct pollfd p[3], int *timeout, double now) {
  for (int d = 0; d < 2; d++) {
    relay_dir *r = &s->dir[d];
    dir_refresh(r, c->f->cfg.bandwidth, now);
    if (r->eof && !r->shut && dir_empty(r) && now >= r->eof_at) {
      shutdown(c->fd[1 - d], SHUT_WR);
      r->shut = true;
    }
    if (dir_can_read(c, s, d)) p[1 + d].events |= POLLIN;
    if (dir_can_write(r)) p[2 - d].events |= POLLOUT;
    double at = dir_wake_at(c, s, d);
    if (at < INFINITY) *timeout = min_timeout(*timeout, ms_until(at, now));
  }
  /* A socket with nothing to do is left out: a peer's hangup would
   * otherwise wake the loop again and again while the window is shut. */
  p[1].fd = p[1].events ? c->fd[0] : -1;
  p[2].fd = p[2].events ? c->fd[1] : -1;
  return !(s->dir[0].shut && s->dir[1].shut);
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
    } else if (!relay_arm(c, s, p, &timeout, now)) {
      return;
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
      if (dir_can_write(r) && (p[2 - d].revents & (POLLOUT | POLLERR | POLLHUP)))
        if (!relay_write(c, s, d, now)) return;
      if (dir_can_read(c, s, d) && (p[1 + d].revents & (POLLIN | POLLERR | POLLHUP)))
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
  no_delay(c->fd[0]);
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
  double now = rw_mono_now();
  for (int d = 0; d < 2; d++) {
    s.dir[d].tokens = bucket_size(c->f->cfg.bandwidth);
    s.dir[d].refilled = now;
  }
  relay_loop(c, &s);
  if (s.stalled) stall_ended(c->f, s.stall_slot, rw_mono_now() - s.stall_t0, false);
  dir_free(&s.dir[0]);
  dir_free(&s.dir[1]);
  /* The fds stay open until stop (a closed fd number could be reused). */
  atomic_store(&c->done, true);
  return NULL;
}

static rw_faults_conn *conn_start(rw_faults *f, uint64_t index, int a, int b, int lfd, rw_error **err) {
  *err = NULL;
  no_delay(a);
  no_delay(b);
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

static void dial_release(void *owner) { rw_faults_unref(owner); }

rw_http_dialer rw_faults_dialer(rw_faults *f) {
  rw_http_dialer d = {.opensocket = dial_open, .sockopt = NULL, .closesocket = dial_close, .ud = f,
                      .owner = rw_faults_ref(f), .release = dial_release};
  return d;
}
