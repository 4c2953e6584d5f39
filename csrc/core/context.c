#include "context.h"

#include <errno.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "clock.h"

enum { WAKER_REGISTERED = 1, WAKER_FIRING, WAKER_DONE };

struct rw_ctx {
  atomic_int refs;
  atomic_bool canceled;
  pthread_mutex_t mu;
  pthread_cond_t cond;
  rw_ctx *parent;                 /* strong reference */
  double deadline;                /* monotonic; INFINITY when none */
  rw_error *err;                  /* set once, under mu */
  _Atomic(rw_error *) deadline_err; /* made on first need */
  rw_ctx *first_child;            /* weak: children unlink themselves */
  rw_ctx *next_sib, *prev_sib;    /* guarded by parent->mu */
  rw_ctx_waker *wakers;
  int efd;
};

static atomic_long live_count;
long rw_ctx_live_count(void) { return atomic_load(&live_count); }

static rw_ctx *ctx_new(rw_ctx *parent, double deadline) {
  rw_ctx *c = calloc(1, sizeof *c);
  if (!c) return NULL;
  atomic_init(&c->refs, 1);
  atomic_init(&c->canceled, false);
  atomic_init(&c->deadline_err, NULL);
  pthread_mutex_init(&c->mu, NULL);
  rw_cond_init(&c->cond);
  c->efd = -1;
  c->deadline = deadline;
  atomic_fetch_add(&live_count, 1);
  if (!parent) return c;
  c->parent = rw_ctx_ref(parent);
  if (parent->deadline < c->deadline) c->deadline = parent->deadline;
  pthread_mutex_lock(&parent->mu);
  bool parent_canceled = parent->err != NULL;
  rw_error *perr = rw_error_ref(parent->err);
  if (!parent_canceled) {
    c->next_sib = parent->first_child;
    if (parent->first_child) parent->first_child->prev_sib = c;
    parent->first_child = c;
  }
  pthread_mutex_unlock(&parent->mu);
  if (parent_canceled) rw_ctx_cancel(c, perr);
  return c;
}

rw_ctx *rw_ctx_background(void) { return ctx_new(NULL, INFINITY); }
rw_ctx *rw_ctx_with_cancel(rw_ctx *parent) { return ctx_new(parent, INFINITY); }
rw_ctx *rw_ctx_with_deadline(rw_ctx *parent, double d) { return ctx_new(parent, d); }
rw_ctx *rw_ctx_with_timeout(rw_ctx *parent, double s) { return ctx_new(parent, rw_mono_now() + s); }

rw_ctx *rw_ctx_ref(rw_ctx *c) {
  if (c) atomic_fetch_add(&c->refs, 1);
  return c;
}

/* A reference only if c is not already on its way to being freed. */
static bool ctx_try_ref(rw_ctx *c) {
  int n = atomic_load(&c->refs);
  while (n > 0)
    if (atomic_compare_exchange_weak(&c->refs, &n, n + 1)) return true;
  return false;
}

void rw_ctx_unref(rw_ctx *c) {
  if (!c || atomic_fetch_sub(&c->refs, 1) != 1) return;
  rw_ctx *p = c->parent;
  if (p) {
    pthread_mutex_lock(&p->mu);
    if (c->prev_sib) c->prev_sib->next_sib = c->next_sib;
    else if (p->first_child == c) p->first_child = c->next_sib;
    if (c->next_sib) c->next_sib->prev_sib = c->prev_sib;
    pthread_mutex_unlock(&p->mu);
  }
  rw_error_unref(c->err);
  rw_error_unref(atomic_load(&c->deadline_err));
  if (c->efd >= 0) close(c->efd);
  pthread_cond_destroy(&c->cond);
  pthread_mutex_destroy(&c->mu);
  free(c);
  atomic_fetch_sub(&live_count, 1);
  rw_ctx_unref(p);
}

/* Without memory for a snapshot: take one live child at a time. */
static void cancel_children_one_by_one(rw_ctx *c, rw_error *cause) {
  for (;;) {
    rw_ctx *k = NULL;
    pthread_mutex_lock(&c->mu);
    for (rw_ctx *x = c->first_child; x && !k; x = x->next_sib)
      if (!atomic_load(&x->canceled) && ctx_try_ref(x)) k = x;
    pthread_mutex_unlock(&c->mu);
    if (!k) return;
    rw_ctx_cancel(k, rw_error_ref(cause));
    rw_ctx_unref(k);
  }
}

bool rw_ctx_cancel(rw_ctx *c, rw_error *cause) {
  if (!cause) cause = rw_err(RW_E_CANCELED, "context cancelled");
  pthread_mutex_lock(&c->mu);
  if (c->err) {
    pthread_mutex_unlock(&c->mu);
    rw_error_unref(cause);
    return false;
  }
  c->err = cause;
  atomic_store(&c->canceled, true);
  size_t n = 0;
  for (rw_ctx *k = c->first_child; k; k = k->next_sib) n++;
  rw_ctx **kids = n ? malloc(n * sizeof *kids) : NULL;
  size_t nk = 0;
  for (rw_ctx *k = c->first_child; k && kids; k = k->next_sib)
    if (ctx_try_ref(k)) kids[nk++] = k;
  rw_ctx_waker *w = c->wakers;
  c->wakers = NULL;
  for (rw_ctx_waker *x = w; x; x = x->next) x->state = WAKER_FIRING;
  if (c->efd >= 0) {
    uint64_t one = 1;
    ssize_t wr = write(c->efd, &one, sizeof one);
    (void)wr;
  }
  pthread_cond_broadcast(&c->cond);
  pthread_mutex_unlock(&c->mu);

  while (w) {
    rw_ctx_waker *next = w->next;
    w->fn(w->arg);
    pthread_mutex_lock(&c->mu);
    w->state = WAKER_DONE;
    pthread_cond_broadcast(&c->cond);
    pthread_mutex_unlock(&c->mu);
    w = next;
  }
  for (size_t i = 0; i < nk; i++) {
    rw_ctx_cancel(kids[i], rw_error_ref(cause));
    rw_ctx_unref(kids[i]);
  }
  free(kids);
  if (n && !kids) cancel_children_one_by_one(c, cause); /* out of memory above */
  return true;
}

static rw_error *deadline_error(rw_ctx *c) {
  rw_error *e = atomic_load(&c->deadline_err);
  if (!e) {
    rw_error *made = rw_err(RW_E_DEADLINE, "context deadline exceeded");
    if (atomic_compare_exchange_strong(&c->deadline_err, &e, made)) e = made;
    else rw_error_unref(made);
  }
  return rw_error_ref(e);
}

rw_error *rw_ctx_err(rw_ctx *c) {
  if (atomic_load(&c->canceled)) {
    pthread_mutex_lock(&c->mu);
    rw_error *e = rw_error_ref(c->err);
    pthread_mutex_unlock(&c->mu);
    return e;
  }
  if (c->deadline < INFINITY && rw_mono_now() >= c->deadline) return deadline_error(c);
  return NULL;
}

bool rw_ctx_done(rw_ctx *c) {
  return atomic_load(&c->canceled) || (c->deadline < INFINITY && rw_mono_now() >= c->deadline);
}

double rw_ctx_deadline(const rw_ctx *c) { return c->deadline; }

double rw_ctx_timeout(const rw_ctx *c) {
  if (!(c->deadline < INFINITY)) return -1;
  double left = c->deadline - rw_mono_now();
  return left > 0 ? left : 0;
}

bool rw_ctx_wait(rw_ctx *c, double timeout) {
  double until = c->deadline;
  if (timeout >= 0 && rw_mono_now() + timeout < until) until = rw_mono_now() + timeout;
  pthread_mutex_lock(&c->mu);
  while (!c->err && rw_mono_now() < until)
    if (rw_cond_wait_until(&c->cond, &c->mu, until) == ETIMEDOUT) break;
  pthread_mutex_unlock(&c->mu);
  return rw_ctx_done(c);
}

int rw_ctx_pollfd(rw_ctx *c) {
  pthread_mutex_lock(&c->mu);
  if (c->efd < 0) {
    c->efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (c->efd >= 0 && c->err) {
      uint64_t one = 1;
      ssize_t wr = write(c->efd, &one, sizeof one);
      (void)wr;
    }
  }
  int fd = c->efd;
  pthread_mutex_unlock(&c->mu);
  return fd;
}

bool rw_ctx_add_waker(rw_ctx *c, rw_ctx_waker *w) {
  pthread_mutex_lock(&c->mu);
  if (c->err) {
    pthread_mutex_unlock(&c->mu);
    return false;
  }
  w->state = WAKER_REGISTERED;
  w->prev = NULL;
  w->next = c->wakers;
  if (c->wakers) c->wakers->prev = w;
  c->wakers = w;
  pthread_mutex_unlock(&c->mu);
  return true;
}

void rw_ctx_remove_waker(rw_ctx *c, rw_ctx_waker *w) {
  pthread_mutex_lock(&c->mu);
  if (w->state == WAKER_REGISTERED) {
    if (w->prev) w->prev->next = w->next;
    else c->wakers = w->next;
    if (w->next) w->next->prev = w->prev;
    w->state = WAKER_DONE;
  }
  while (w->state == WAKER_FIRING) pthread_cond_wait(&c->cond, &c->mu);
  pthread_mutex_unlock(&c->mu);
}

struct cond_wake {
  pthread_mutex_t *m;
  pthread_cond_t *cond;
};

static void cond_wake_fn(void *arg) {
  struct cond_wake *cw = arg;
  pthread_mutex_lock(cw->m);
  pthread_cond_broadcast(cw->cond);
  pthread_mutex_unlock(cw->m);
}

rw_error *rw_ctx_cond_wait(rw_ctx *c, pthread_mutex_t *m, pthread_cond_t *cond,
                           bool (*pred)(void *), void *arg, double until) {
  if (pred(arg)) return NULL;
  struct cond_wake cw = {m, cond};
  rw_ctx_waker w = {.fn = cond_wake_fn, .arg = &cw};
  bool registered = rw_ctx_add_waker(c, &w);
  if (c->deadline < until) until = c->deadline;
  rw_error *err = NULL;
  for (;;) {
    if (pred(arg)) break;
    if ((err = rw_ctx_err(c))) break;
    if (rw_mono_now() >= until) {
      err = rw_err(RW_E_DEADLINE, "wait timed out");
      break;
    }
    rw_cond_wait_until(cond, m, until);
  }
  if (registered) {
    /* The waker takes m: release it while unregistering. */
    pthread_mutex_unlock(m);
    rw_ctx_remove_waker(c, &w);
    pthread_mutex_lock(m);
  }
  return err;
}
