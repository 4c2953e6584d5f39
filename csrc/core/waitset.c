#include "waitset.h"

#include <errno.h>
#include <math.h>
#include <limits.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <unistd.h>

typedef struct watch {
  rw_ctx_waker waker;
  rw_ctx *ctx;           /* strong reference */
  rw_waitset *set;
  int id;
  bool registered;       /* waker added; owner thread only */
  bool queued;           /* in set->fired; guarded by set->mu */
  struct watch *qprev, *qnext;
} watch;

struct rw_waitset {
  int epfd, efd;
  pthread_mutex_t mu;
  watch *fired;          /* cancelled, not yet reported; guarded by mu */
  watch **slots;         /* id - 1 -> watch; owner thread only */
  int *next_free;        /* free slots chain; -1 ends it */
  int cap, free_head, nwatch;
  size_t nfds;
};

static rw_error *errno_error(int e, const char *what) {
  bool no_room = e == EMFILE || e == ENFILE || e == ENOMEM || e == ENOSPC;
  if (no_room)
    return rw_err(RW_E_RESOURCE, "%s: %s (raise the fd limit, ulimit -n, or wait on fewer things)",
                  what, strerror(e));
  return rw_err(RW_E_INTERNAL, "%s: %s", what, strerror(e));
}

rw_error *rw_waitset_new(rw_waitset **out) {
  *out = NULL;
  rw_waitset *s = calloc(1, sizeof *s);
  if (!s) return rw_err(RW_E_NOMEM, "cannot allocate a wait set");
  s->free_head = -1;
  s->efd = -1;
  s->epfd = epoll_create1(EPOLL_CLOEXEC);
  if (s->epfd < 0) goto fail;
  s->efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (s->efd < 0) goto fail;
  struct epoll_event ev = {.events = EPOLLIN, .data.fd = s->efd};
  if (epoll_ctl(s->epfd, EPOLL_CTL_ADD, s->efd, &ev) != 0) goto fail;
  pthread_mutex_init(&s->mu, NULL);
  *out = s;
  return NULL;
fail:;
  int e = errno;
  if (s->efd >= 0) close(s->efd);
  if (s->epfd >= 0) close(s->epfd);
  free(s);
  return errno_error(e, "cannot make a wait set");
}

/* ---- contexts ---- */

/* The waker: runs once, on the cancelling thread. */
static void watch_fire(void *arg) {
  watch *w = arg;
  rw_waitset *s = w->set;
  pthread_mutex_lock(&s->mu);
  if (!w->queued) {
    w->queued = true;
    w->qprev = NULL;
    w->qnext = s->fired;
    if (s->fired) s->fired->qprev = w;
    s->fired = w;
  }
  uint64_t one = 1;
  ssize_t n = write(s->efd, &one, sizeof one);
  (void)n; /* a full counter is still readable */
  pthread_mutex_unlock(&s->mu);
}

static void unqueue_locked(rw_waitset *s, watch *w) {
  if (!w->queued) return;
  if (w->qprev) w->qprev->qnext = w->qnext;
  else s->fired = w->qnext;
  if (w->qnext) w->qnext->qprev = w->qprev;
  w->queued = false;
}

static bool grow_slots(rw_waitset *s) {
  int cap = s->cap ? s->cap * 2 : 64;
  if (cap <= s->cap || (size_t)cap > SIZE_MAX / sizeof(watch *)) return false;
  watch **slots = realloc(s->slots, (size_t)cap * sizeof *slots);
  if (!slots) return false;
  s->slots = slots;
  int *next = realloc(s->next_free, (size_t)cap * sizeof *next);
  if (!next) return false;
  s->next_free = next;
  for (int i = cap - 1; i >= s->cap; i--) {
    slots[i] = NULL;
    next[i] = s->free_head;
    s->free_head = i;
  }
  s->cap = cap;
  return true;
}

rw_error *rw_waitset_watch(rw_waitset *s, rw_ctx *c, int *id) {
  *id = 0;
  if (s->free_head < 0 && !grow_slots(s)) return rw_err(RW_E_NOMEM, "cannot grow the wait set");
  watch *w = calloc(1, sizeof *w);
  if (!w) return rw_err(RW_E_NOMEM, "cannot allocate a context watch");
  int slot = s->free_head;
  s->free_head = s->next_free[slot];
  s->slots[slot] = w;
  s->nwatch++;
  w->ctx = rw_ctx_ref(c);
  w->set = s;
  w->id = slot + 1;
  w->waker.fn = watch_fire;
  w->waker.arg = w;
  w->registered = rw_ctx_add_waker(c, &w->waker);
  if (!w->registered) watch_fire(w); /* already cancelled */
  *id = w->id;
  return NULL;
}

void rw_waitset_unwatch(rw_waitset *s, int id) {
  if (id < 1 || id > s->cap || !s->slots[id - 1]) return;
  watch *w = s->slots[id - 1];
  /* waits for a waker running elsewhere; s->mu must not be held here */
  if (w->registered) rw_ctx_remove_waker(w->ctx, &w->waker);
  pthread_mutex_lock(&s->mu);
  unqueue_locked(s, w);
  pthread_mutex_unlock(&s->mu);
  rw_ctx_unref(w->ctx);
  free(w);
  s->slots[id - 1] = NULL;
  s->next_free[id - 1] = s->free_head;
  s->free_head = id - 1;
  s->nwatch--;
}

/* ---- fds ---- */

rw_error *rw_waitset_add_fd(rw_waitset *s, int fd) {
  struct epoll_event ev = {.events = EPOLLIN, .data.fd = fd};
  if (fd == s->epfd || fd == s->efd)
    return rw_err(RW_E_INVALID, "cannot wait on fd %d: it is the wait set's own", fd);
  if (epoll_ctl(s->epfd, EPOLL_CTL_ADD, fd, &ev) == 0) {
    s->nfds++;
    return NULL;
  }
  int e = errno;
  if (e == EEXIST) return NULL;
  if (e == EBADF || e == EPERM || e == EINVAL)
    return rw_err(RW_E_INVALID, "cannot wait on fd %d: %s (a waitable's fds must be open and pollable)",
                  fd, strerror(e));
  return errno_error(e, "cannot add an fd to the wait set");
}

void rw_waitset_remove_fd(rw_waitset *s, int fd) {
  if (fd == s->epfd || fd == s->efd) return;
  if (epoll_ctl(s->epfd, EPOLL_CTL_DEL, fd, NULL) == 0 && s->nfds > 0) s->nfds--;
}

/* ---- waiting ---- */

static int timeout_ms(double t) {
  if (t < 0 || isnan(t)) return -1;
  double ms = ceil(t * 1000);
  return ms > INT_MAX ? INT_MAX : (int)ms;
}

static int take_fired(rw_waitset *s, int *ids, int max_ids) {
  int n = 0;
  pthread_mutex_lock(&s->mu);
  while (s->fired && n < max_ids) {
    watch *w = s->fired;
    unqueue_locked(s, w);
    ids[n++] = w->id;
  }
  if (!s->fired) { /* all reported: quiet the eventfd until the next waker */
    uint64_t v;
    ssize_t r = read(s->efd, &v, sizeof v);
    (void)r;
  }
  pthread_mutex_unlock(&s->mu);
  return n;
}

rw_error *rw_waitset_wait(rw_waitset *s, double timeout, int *fds, int max_fds, int *nfds,
                          int *ids, int max_ids, int *nids) {
  enum { MAX_EVENTS = 256 };
  struct epoll_event evs[MAX_EVENTS + 1];
  int max = max_fds < MAX_EVENTS ? max_fds : MAX_EVENTS;
  if (max < 0) max = 0;
  *nfds = *nids = 0;
  int rc = epoll_wait(s->epfd, evs, max + 1, timeout_ms(timeout));
  if (rc < 0 && errno != EINTR) return errno_error(errno, "waiting on the wait set failed");
  for (int i = 0; i < rc; i++)
    if (evs[i].data.fd != s->efd && *nfds < max) fds[(*nfds)++] = evs[i].data.fd;
  *nids = take_fired(s, ids, max_ids);
  return NULL;
}

void rw_waitset_free(rw_waitset *s) {
  if (!s) return;
  for (int i = 0; i < s->cap; i++)
    if (s->slots[i]) rw_waitset_unwatch(s, i + 1);
  free(s->slots);
  free(s->next_free);
  close(s->efd);
  close(s->epfd);
  pthread_mutex_destroy(&s->mu);
  free(s);
}

int rw_waitset_pollfd(const rw_waitset *s) { return s->epfd; }
size_t rw_waitset_fd_count(const rw_waitset *s) { return s->nfds; }
size_t rw_waitset_watch_count(const rw_waitset *s) { return (size_t)s->nwatch; }
