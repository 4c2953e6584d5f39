/* A tiny hostile HTTP/1.1 server for the tests, on 127.0.0.1 (header only).
 *
 * hs_start binds an ephemeral port and starts an accept thread; each
 * connection gets its own thread (at most HS_MAX_CONNS, all joined by
 * hs_stop). Per request the server reads the head and the body
 * (Content-Length), records what it got (method, target, the whole head, the
 * Authorization value, body length), then acts on the next step of its
 * script: send raw bytes (status line, headers, body exactly as written, then
 * optionally `fill` bytes of 'x', SIZE_MAX = until the peer goes), trickle them
 * one byte every trickle_ms, never answer, close, or reset. Requests past the
 * end of the script get a 500. Every wait polls in 20 ms slices and ends at
 * hs_stop. */
#ifndef RW_TEST_HOSTILE_H
#define RW_TEST_HOSTILE_H

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

#define HS_MAX_STEPS 32
#define HS_MAX_REQS 64
#define HS_MAX_CONNS 32
#define HS_HEAD_MAX 16384

typedef enum {
  HS_ANSWER,  /* raw, then fill bytes of 'x' */
  HS_TRICKLE, /* raw[0, trickle_from) at once, then one byte every trickle_ms */
  HS_SILENT,  /* never answer; hold the connection until the peer closes it */
  HS_CLOSE,   /* close without a word */
  HS_RST,     /* close with a reset */
} hs_mode;

typedef struct hs_step {
  hs_mode mode;
  char *raw; /* owned */
  size_t raw_len, fill, trickle_from;
  int trickle_ms;
} hs_step;

typedef struct hs_request {
  char method[16], target[512], auth[256];
  char head[HS_HEAD_MAX];
  size_t content_length, body_got;
} hs_request;

typedef struct hs_server {
  int lfd, port;
  char origin[64]; /* "http://127.0.0.1:PORT" */
  atomic_int stop;
  pthread_t acceptor;
  pthread_mutex_t mu;
  pthread_t conns[HS_MAX_CONNS];
  int nconns;       /* threads started (connections accepted) */
  hs_step steps[HS_MAX_STEPS];
  int nsteps, next_step;
  hs_request reqs[HS_MAX_REQS];
  int nreqs;
} hs_server;

typedef struct hs_conn {
  hs_server *s;
  int fd;
  char buf[HS_HEAD_MAX];
  size_t have;
} hs_conn;

/* ---- script ---- */

static void hs_push(hs_server *s, hs_mode mode, const char *raw, size_t raw_len, size_t fill,
                    int trickle_ms, size_t trickle_from) {
  pthread_mutex_lock(&s->mu);
  if (s->nsteps < HS_MAX_STEPS) {
    char *copy = malloc(raw_len + 1);
    if (copy) {
      memcpy(copy, raw, raw_len);
      copy[raw_len] = 0;
    }
    s->steps[s->nsteps++] = (hs_step){mode, copy, raw_len, fill, trickle_from, trickle_ms};
  }
  pthread_mutex_unlock(&s->mu);
}

/* The next request is answered with these bytes (printf-formatted). */
static void hs_answer(hs_server *s, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void hs_answer(hs_server *s, const char *fmt, ...) {
  char *raw = NULL;
  va_list ap;
  va_start(ap, fmt);
  int n = vasprintf(&raw, fmt, ap);
  va_end(ap);
  if (n >= 0) hs_push(s, HS_ANSWER, raw, (size_t)n, 0, 0, 0);
  free(raw);
}

static void hs_do(hs_server *s, hs_mode mode) { hs_push(s, mode, "", 0, 0, 0, 0); }

/* ---- I/O with the stop flag in mind ---- */

static bool hs_wait(hs_conn *c, short events) {
  while (!atomic_load(&c->s->stop)) {
    struct pollfd p = {.fd = c->fd, .events = events};
    int r = poll(&p, 1, 20);
    if (r > 0) return true;
    if (r < 0 && errno != EINTR) return false;
  }
  return false;
}

/* Reads more bytes into the buffer; false on EOF, error or stop. */
static bool hs_fill(hs_conn *c) {
  if (c->have == sizeof c->buf || !hs_wait(c, POLLIN)) return false;
  ssize_t n = recv(c->fd, c->buf + c->have, sizeof c->buf - c->have, 0);
  if (n <= 0) return false;
  c->have += (size_t)n;
  return true;
}

static bool hs_send(hs_conn *c, const char *p, size_t n) {
  while (n > 0) {
    if (!hs_wait(c, POLLOUT)) return false;
    ssize_t k = send(c->fd, p, n, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (k < 0 && (errno == EAGAIN || errno == EINTR)) continue;
    if (k <= 0) return false;
    p += k;
    n -= (size_t)k;
  }
  return true;
}

static void hs_header_value(const char *head, const char *name, char *out, size_t n) {
  out[0] = 0;
  size_t len = strlen(name);
  for (const char *l = strstr(head, "\r\n"); l; l = strstr(l + 2, "\r\n")) {
    const char *p = l + 2;
    if (strncasecmp(p, name, len) != 0 || p[len] != ':') continue;
    p += len + 1;
    while (*p == ' ') p++;
    const char *end = strstr(p, "\r\n");
    size_t k = end ? (size_t)(end - p) : strlen(p);
    if (k >= n) k = n - 1;
    memcpy(out, p, k);
    out[k] = 0;
  }
}

/* Reads one request (head and body); records it and returns its index, -1 when the peer went. */
static int hs_read_request(hs_conn *c) {
  char *end;
  while (!(end = memmem(c->buf, c->have, "\r\n\r\n", 4)))
    if (!hs_fill(c)) return -1;
  size_t head_len = (size_t)(end - c->buf) + 4;
  hs_request q = {0};
  memcpy(q.head, c->buf, head_len < sizeof q.head ? head_len : sizeof q.head - 1);
  sscanf(q.head, "%15s %511s", q.method, q.target);
  char cl[32];
  hs_header_value(q.head, "Content-Length", cl, sizeof cl);
  q.content_length = strtoull(cl, NULL, 10);
  hs_header_value(q.head, "Authorization", q.auth, sizeof q.auth);
  memmove(c->buf, c->buf + head_len, c->have - head_len);
  c->have -= head_len;
  while (q.body_got < q.content_length) {
    if (c->have == 0 && !hs_fill(c)) break;
    size_t take = q.content_length - q.body_got < c->have ? q.content_length - q.body_got : c->have;
    q.body_got += take;
    memmove(c->buf, c->buf + take, c->have - take);
    c->have -= take;
  }
  pthread_mutex_lock(&c->s->mu);
  int i = c->s->nreqs < HS_MAX_REQS ? c->s->nreqs++ : HS_MAX_REQS - 1;
  c->s->reqs[i] = q;
  pthread_mutex_unlock(&c->s->mu);
  return q.body_got == q.content_length ? i : -1;
}

static hs_step hs_next_step(hs_server *s) {
  static const char fallback[] = "HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\n\r\n";
  hs_step st = {HS_ANSWER, (char *)fallback, sizeof fallback - 1, 0, 0, 0};
  pthread_mutex_lock(&s->mu);
  if (s->next_step < s->nsteps) st = s->steps[s->next_step++];
  pthread_mutex_unlock(&s->mu);
  return st;
}

/* Acts on one step; false when the connection must end. */
static bool hs_act(hs_conn *c, const hs_step *st) {
  char xs[16384];
  switch (st->mode) {
  case HS_ANSWER:
    if (!hs_send(c, st->raw, st->raw_len)) return false;
    memset(xs, 'x', sizeof xs);
    for (size_t left = st->fill; left > 0;) {
      size_t k = left < sizeof xs ? left : sizeof xs;
      if (!hs_send(c, xs, k)) return false;
      if (st->fill != SIZE_MAX) left -= k;
    }
    return true;
  case HS_TRICKLE:
    if (!hs_send(c, st->raw, st->trickle_from)) return false;
    for (size_t i = st->trickle_from; i < st->raw_len; i++) {
      for (int ms = 0; ms < st->trickle_ms && !atomic_load(&c->s->stop); ms += 5) usleep(5000);
      if (!hs_send(c, st->raw + i, 1)) return false;
    }
    return true;
  case HS_SILENT:
    while (hs_fill(c)) c->have = 0; /* until the peer closes */
    return false;
  case HS_RST: {
    struct linger lg = {1, 0};
    setsockopt(c->fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
    return false;
  }
  case HS_CLOSE:
  default:
    return false;
  }
}

static void *hs_serve(void *arg) {
  hs_conn *c = arg;
  for (;;) {
    if (hs_read_request(c) < 0) break;
    hs_step st = hs_next_step(c->s);
    if (!hs_act(c, &st)) break;
  }
  close(c->fd);
  free(c);
  return NULL;
}

static void *hs_accept_loop(void *arg) {
  hs_server *s = arg;
  while (!atomic_load(&s->stop)) {
    struct pollfd p = {.fd = s->lfd, .events = POLLIN};
    if (poll(&p, 1, 20) <= 0) continue;
    int fd = accept4(s->lfd, NULL, NULL, SOCK_CLOEXEC);
    if (fd < 0) continue;
    hs_conn *c = calloc(1, sizeof *c);
    pthread_mutex_lock(&s->mu);
    bool room = c && s->nconns < HS_MAX_CONNS;
    if (room) {
      c->s = s;
      c->fd = fd;
      if (pthread_create(&s->conns[s->nconns], NULL, hs_serve, c) == 0) s->nconns++;
      else room = false;
    }
    pthread_mutex_unlock(&s->mu);
    if (!room) {
      close(fd);
      free(c);
    }
  }
  return NULL;
}

static bool hs_start(hs_server *s) {
  memset(s, 0, sizeof *s);
  pthread_mutex_init(&s->mu, NULL);
  s->lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  socklen_t al = sizeof a;
  if (s->lfd < 0 || bind(s->lfd, (struct sockaddr *)&a, sizeof a) || listen(s->lfd, 16) ||
      getsockname(s->lfd, (struct sockaddr *)&a, &al)) {
    if (s->lfd >= 0) close(s->lfd);
    pthread_mutex_destroy(&s->mu);
    return false;
  }
  s->port = ntohs(a.sin_port);
  snprintf(s->origin, sizeof s->origin, "http://127.0.0.1:%d", s->port);
  if (pthread_create(&s->acceptor, NULL, hs_accept_loop, s) != 0) {
    close(s->lfd);
    pthread_mutex_destroy(&s->mu);
    return false;
  }
  return true;
}

static void hs_stop(hs_server *s) {
  atomic_store(&s->stop, 1);
  pthread_join(s->acceptor, NULL);
  for (int i = 0; i < s->nconns; i++) pthread_join(s->conns[i], NULL);
  close(s->lfd);
  for (int i = 0; i < s->nsteps; i++) free(s->steps[i].raw);
  pthread_mutex_destroy(&s->mu);
}

/* Snapshots, under the lock. */
static int hs_nreqs(hs_server *s) {
  pthread_mutex_lock(&s->mu);
  int n = s->nreqs;
  pthread_mutex_unlock(&s->mu);
  return n;
}

static int hs_nconns(hs_server *s) {
  pthread_mutex_lock(&s->mu);
  int n = s->nconns;
  pthread_mutex_unlock(&s->mu);
  return n;
}

static hs_request hs_req(hs_server *s, int i) {
  hs_request q = {0};
  pthread_mutex_lock(&s->mu);
  if (i >= 0 && i < s->nreqs) q = s->reqs[i];
  pthread_mutex_unlock(&s->mu);
  return q;
}

#endif
