#include "wakeup.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#define IDX_BITS 20
#define IDX_MASK ((UINT64_C(1) << IDX_BITS) - 1)
#define HUP_TAG (UINT64_C(1) << 62) /* epoll data: the slot's connection, not its fd */
#define MAX_PENDING 32

typedef struct slot {
  uint64_t id; /* 0: free */
  int conn;    /* our end of the loop's connection, -1 until bound */
  int wfd;     /* the watched fd (a dup), -1 when none */
} slot;

struct rw_wakeup {
  pthread_mutex_t mu; /* guards slots and the fds in them */
  int lfd, epfd, stopfd;
  pthread_t th;
  bool started;
  slot *slots;
  size_t cap, used;
  uint32_t gen;
  int pending[MAX_PENDING]; /* accepted, token not read yet; owner thread */
  int npending;
  char dir[sizeof(((struct sockaddr_un *)0)->sun_path)];
  char path[sizeof(((struct sockaddr_un *)0)->sun_path)];
};

static rw_error *errno_error(int e, const char *what) {
  if (e == EMFILE || e == ENFILE || e == ENOMEM || e == ENOSPC)
    return rw_err(RW_E_RESOURCE, "%s: %s (raise the fd limit, ulimit -n)", what, strerror(e));
  return rw_err(RW_E_INTERNAL, "%s: %s", what, strerror(e));
}

static slot *find(rw_wakeup *wk, uint64_t id) {
  uint64_t idx = (id & IDX_MASK);
  if (id == 0 || idx == 0 || idx > wk->cap) return NULL;
  slot *s = &wk->slots[idx - 1];
  return s->id == id ? s : NULL;
}

/* mu held */
static void drop(rw_wakeup *wk, slot *s) {
  if (s->wfd >= 0) {
    epoll_ctl(wk->epfd, EPOLL_CTL_DEL, s->wfd, NULL);
    close(s->wfd);
  }
  if (s->conn >= 0) {
    epoll_ctl(wk->epfd, EPOLL_CTL_DEL, s->conn, NULL);
    close(s->conn);
  }
  s->id = 0;
  s->wfd = s->conn = -1;
  wk->used--;
}

/* ---- the bridge thread ---- */

static void fire(rw_wakeup *wk, uint64_t data, uint32_t events) {
  slot *s = find(wk, data & ~HUP_TAG);
  if (!s) return; /* released meanwhile */
  if (data & HUP_TAG) {
    if (events & (EPOLLRDHUP | EPOLLHUP | EPOLLERR)) drop(wk, s);
    return;
  }
  if (s->conn >= 0) {
    /* MSG_NOSIGNAL: a peer that hung up (a request that ended) is EPIPE
     * here, never a SIGPIPE that kills a process which does not ignore it
     * (nginx does; a test or a plain Lua program may not). EAGAIN: a byte is
     * waiting already. */
    ssize_t n = send(s->conn, "!", 1, MSG_NOSIGNAL);
    (void)n;
  }
}

static void *bridge(void *arg) {
  rw_wakeup *wk = arg;
  struct epoll_event evs[32];
  for (bool stop = false; !stop;) {
    int n = epoll_wait(wk->epfd, evs, 32, -1);
    if (n < 0 && errno != EINTR) break;
    pthread_mutex_lock(&wk->mu);
    for (int i = 0; i < n; i++) {
      if (evs[i].data.u64 == 0) stop = true;
      else fire(wk, evs[i].data.u64, evs[i].events);
    }
    pthread_mutex_unlock(&wk->mu);
  }
  return NULL;
}

/* ---- life ---- */

static rw_error *listen_at(rw_wakeup *wk, const char *dir) {
  struct sockaddr_un a = {.sun_family = AF_UNIX};
  int n = snprintf(wk->dir, sizeof wk->dir, "%s/rw-wake.XXXXXX", dir);
  if (n < 0 || (size_t)n + 3 > sizeof a.sun_path)
    return rw_err(RW_E_INVALID, "wake-up dir '%s' is too long for a unix socket path (at most %zu bytes)",
                  dir, sizeof a.sun_path - 20);
  if (!mkdtemp(wk->dir)) {
    int e = errno;
    wk->dir[0] = 0;
    return rw_err(RW_E_INVALID, "wake-up dir '%s': cannot make a folder in it: %s", dir, strerror(e));
  }
  size_t dl = strlen(wk->dir); /* fits: checked above */
  memcpy(wk->path, wk->dir, dl);
  memcpy(wk->path + dl, "/s", 3);
  memcpy(a.sun_path, wk->path, dl + 3);
  wk->lfd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (wk->lfd < 0) return errno_error(errno, "cannot make the wake-up socket");
  if (bind(wk->lfd, (struct sockaddr *)&a, sizeof a) != 0 || listen(wk->lfd, 128) != 0)
    return errno_error(errno, "cannot listen on the wake-up socket");
  return NULL;
}

rw_error *rw_wakeup_new(const char *dir, rw_wakeup **out) {
  *out = NULL;
  rw_wakeup *wk = calloc(1, sizeof *wk);
  if (!wk) return rw_err(RW_E_NOMEM, "cannot allocate a wake-up bridge");
  wk->lfd = wk->epfd = wk->stopfd = -1;
  pthread_mutex_init(&wk->mu, NULL);
  if (!dir || !*dir) dir = getenv("TMPDIR");
  if (!dir || !*dir) dir = "/tmp";
  rw_error *e = listen_at(wk, dir);
  if (e) goto fail;
  wk->epfd = epoll_create1(EPOLL_CLOEXEC);
  wk->stopfd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  struct epoll_event ev = {.events = EPOLLIN, .data.u64 = 0};
  if (wk->epfd < 0 || wk->stopfd < 0 || epoll_ctl(wk->epfd, EPOLL_CTL_ADD, wk->stopfd, &ev) != 0) {
    e = errno_error(errno, "cannot make the wake-up bridge's epoll");
    goto fail;
  }
  *out = wk;
  return NULL;
fail:
  rw_wakeup_free(wk);
  return e;
}

void rw_wakeup_free(rw_wakeup *wk) {
  if (!wk) return;
  if (wk->started) {
    uint64_t one = 1;
    ssize_t n = write(wk->stopfd, &one, sizeof one);
    (void)n;
    pthread_join(wk->th, NULL);
  }
  for (size_t i = 0; i < wk->cap; i++)
    if (wk->slots[i].id) drop(wk, &wk->slots[i]);
  for (int i = 0; i < wk->npending; i++) close(wk->pending[i]);
  free(wk->slots);
  if (wk->stopfd >= 0) close(wk->stopfd);
  if (wk->epfd >= 0) close(wk->epfd);
  if (wk->lfd >= 0) close(wk->lfd);
  if (wk->path[0]) unlink(wk->path);
  if (wk->dir[0]) rmdir(wk->dir);
  pthread_mutex_destroy(&wk->mu);
  free(wk);
}

const char *rw_wakeup_path(const rw_wakeup *wk) { return wk->path; }

/* ---- slots ---- */

static void token_of(uint64_t id, char token[RW_WAKEUP_TOKEN_LEN + 1]) {
  snprintf(token, RW_WAKEUP_TOKEN_LEN + 1, "%016" PRIx64, id);
}

/* mu held: a free slot's index, growing the array; SIZE_MAX when out of memory. */
static size_t free_index(rw_wakeup *wk) {
  for (size_t i = 0; i < wk->cap; i++)
    if (!wk->slots[i].id) return i;
  size_t ncap = wk->cap ? wk->cap * 2 : 16;
  if (ncap > IDX_MASK) return SIZE_MAX;
  slot *ns = realloc(wk->slots, ncap * sizeof *ns);
  if (!ns) return SIZE_MAX;
  for (size_t i = wk->cap; i < ncap; i++) ns[i] = (slot){.id = 0, .conn = -1, .wfd = -1};
  wk->slots = ns;
  size_t i = wk->cap;
  wk->cap = ncap;
  return i;
}

rw_error *rw_wakeup_register(rw_wakeup *wk, uint64_t *id, char token[RW_WAKEUP_TOKEN_LEN + 1]) {
  pthread_mutex_lock(&wk->mu);
  size_t i = free_index(wk);
  if (i == SIZE_MAX) {
    pthread_mutex_unlock(&wk->mu);
    return rw_err(RW_E_RESOURCE, "wake-up bridge: no slot left (%zu in use)", wk->used);
  }
  wk->gen = (wk->gen + 1) & 0x7fffffffu;
  if (!wk->gen) wk->gen = 1;
  slot *s = &wk->slots[i];
  s->id = ((uint64_t)wk->gen << IDX_BITS) | (i + 1);
  wk->used++;
  *id = s->id;
  pthread_mutex_unlock(&wk->mu);
  token_of(*id, token);
  return NULL;
}

/* Pairs conn with the slot its token names (mu held); closes it otherwise. */
static void pair(rw_wakeup *wk, int conn, const char *tok) {
  uint64_t id = strtoull(tok, NULL, 16);
  char want[RW_WAKEUP_TOKEN_LEN + 1];
  token_of(id, want);
  slot *s = find(wk, id);
  struct epoll_event ev = {.events = EPOLLRDHUP, .data.u64 = id | HUP_TAG};
  if (s && s->conn < 0 && memcmp(want, tok, RW_WAKEUP_TOKEN_LEN) == 0 &&
      epoll_ctl(wk->epfd, EPOLL_CTL_ADD, conn, &ev) == 0) {
    s->conn = conn;
    return;
  }
  close(conn);
}

/* Reads the pending connections' tokens; keeps those still silent. */
static void read_tokens(rw_wakeup *wk) {
  int keep = 0;
  for (int i = 0; i < wk->npending; i++) {
    int c = wk->pending[i];
    char tok[RW_WAKEUP_TOKEN_LEN + 1] = {0};
    ssize_t n = recv(c, tok, RW_WAKEUP_TOKEN_LEN, MSG_PEEK | MSG_DONTWAIT);
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
      wk->pending[keep++] = c;
      continue;
    }
    if (n == RW_WAKEUP_TOKEN_LEN && recv(c, tok, RW_WAKEUP_TOKEN_LEN, MSG_DONTWAIT) == n) {
      pthread_mutex_lock(&wk->mu);
      pair(wk, c, tok);
      pthread_mutex_unlock(&wk->mu);
    } else if (n > 0) {
      wk->pending[keep++] = c; /* part of the token so far */
    } else {
      close(c);
    }
  }
  wk->npending = keep;
}

rw_error *rw_wakeup_bind(rw_wakeup *wk, uint64_t id, int *bound) {
  for (;;) {
    int c = accept4(wk->lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (c < 0) {
      if (errno == EAGAIN || errno == EWOULDBLOCK || errno == ECONNABORTED) break;
      if (errno == EINTR) continue;
      return errno_error(errno, "wake-up bridge: accept");
    }
    if (wk->npending == MAX_PENDING) { /* silent peers: the oldest goes */
      close(wk->pending[0]);
      memmove(wk->pending, wk->pending + 1, (MAX_PENDING - 1) * sizeof(int));
      wk->npending--;
    }
    wk->pending[wk->npending++] = c;
  }
  read_tokens(wk);
  pthread_mutex_lock(&wk->mu);
  slot *s = find(wk, id);
  *bound = s && s->conn >= 0;
  pthread_mutex_unlock(&wk->mu);
  return NULL;
}

static rw_error *start(rw_wakeup *wk) {
  if (wk->started) return NULL;
  int e = pthread_create(&wk->th, NULL, bridge, wk);
  if (e) return rw_err(RW_E_RESOURCE, "wake-up bridge: cannot start its thread: %s", strerror(e));
  wk->started = true;
  return NULL;
}

rw_error *rw_wakeup_arm(rw_wakeup *wk, uint64_t id, int fd) {
  rw_error *err = start(wk);
  if (err) return err;
  pthread_mutex_lock(&wk->mu);
  slot *s = find(wk, id);
  if (!s || s->conn < 0) {
    pthread_mutex_unlock(&wk->mu);
    return rw_err(RW_E_INVALID, "wake-up slot %" PRIu64 " is %s", id, s ? "not bound to a connection" : "unknown");
  }
  /* a fresh dup each time: the fd may be another op's than last time */
  if (s->wfd >= 0) {
    epoll_ctl(wk->epfd, EPOLL_CTL_DEL, s->wfd, NULL);
    close(s->wfd);
  }
  struct epoll_event ev = {.events = EPOLLIN | EPOLLONESHOT, .data.u64 = id};
  s->wfd = fcntl(fd, F_DUPFD_CLOEXEC, 0);
  int rc = s->wfd < 0 ? -1 : epoll_ctl(wk->epfd, EPOLL_CTL_ADD, s->wfd, &ev);
  int e = errno;
  if (rc != 0 && s->wfd >= 0) {
    close(s->wfd);
    s->wfd = -1;
  }
  pthread_mutex_unlock(&wk->mu);
  if (rc != 0) return rw_err(RW_E_INVALID, "wake-up: cannot watch fd %d: %s", fd, strerror(e));
  return NULL;
}

void rw_wakeup_release(rw_wakeup *wk, uint64_t id) {
  pthread_mutex_lock(&wk->mu);
  slot *s = find(wk, id);
  if (s) drop(wk, s);
  pthread_mutex_unlock(&wk->mu);
}

size_t rw_wakeup_slots(rw_wakeup *wk) {
  pthread_mutex_lock(&wk->mu);
  size_t n = wk->used;
  pthread_mutex_unlock(&wk->mu);
  return n;
}

int rw_wakeup_thread_started(rw_wakeup *wk) { return wk->started; }
