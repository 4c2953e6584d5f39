#include "workgroup.h"

#include <dlfcn.h>
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>

#include "clock.h"

/* ---------------- pool ---------------- */

typedef struct job {
  void (*fn)(void *);
  void *arg;
  struct job *next;
} job;

typedef struct worker {
  pthread_t tid;
  bool exited;
  struct worker *next;
} worker;

struct rw_pool {
  pthread_mutex_t mu;
  pthread_cond_t work, idle_cv;
  job *head, *tail;
  worker *workers;
  int max, alive, idle, peak, running_jobs;
  double idle_timeout;
  bool stopping;
  bool retiring; /* no owner left (released from a task): idle threads exit at once */
};

rw_pool *rw_pool_new(int max_threads, double idle_timeout, rw_error **err) {
  if (max_threads < 1 || max_threads > 4096) {
    *err = rw_err(RW_E_INVALID, "max_threads must be in [1, 4096] (got %d)", max_threads);
    return NULL;
  }
  rw_pool *p = calloc(1, sizeof *p);
  if (!p) {
    *err = rw_err(RW_E_NOMEM, "out of memory making a pool");
    return NULL;
  }
  pthread_mutex_init(&p->mu, NULL);
  rw_cond_init(&p->work);
  rw_cond_init(&p->idle_cv);
  p->max = max_threads;
  p->idle_timeout = idle_timeout > 0 ? idle_timeout : 2.0;
  return p;
}

/* Joins workers that have exited. Called with p->mu held; drops it to join. */
static void reap_exited(rw_pool *p) {
  for (;;) {
    worker **pp = &p->workers, *w = NULL;
    for (; *pp; pp = &(*pp)->next)
      if ((*pp)->exited) {
        w = *pp;
        *pp = w->next;
        break;
      }
    if (!w) return;
    pthread_mutex_unlock(&p->mu);
    pthread_join(w->tid, NULL);
    free(w);
    pthread_mutex_lock(&p->mu);
  }
}

typedef struct {
  rw_pool *p;
  worker *self;
} worker_arg;

static void *worker_main(void *argp) {
  worker_arg a = *(worker_arg *)argp;
  free(argp);
  rw_pool *p = a.p;
  pthread_mutex_lock(&p->mu);
  for (;;) {
    while (!p->head && !p->stopping) {
      if (p->retiring) goto out;
      p->idle++;
      int rc = rw_cond_wait_until(&p->work, &p->mu, rw_mono_now() + p->idle_timeout);
      p->idle--;
      if (rc == ETIMEDOUT && !p->head) goto out;
    }
    if (!p->head) break; /* stopping and nothing left */
    job *j = p->head;
    p->head = j->next;
    if (!p->head) p->tail = NULL;
    p->running_jobs++;
    pthread_mutex_unlock(&p->mu);
    j->fn(j->arg);
    free(j);
    pthread_mutex_lock(&p->mu);
    p->running_jobs--;
    pthread_cond_broadcast(&p->idle_cv);
  }
out:
  p->alive--;
  a.self->exited = true;
  pthread_cond_broadcast(&p->idle_cv);
  pthread_mutex_unlock(&p->mu);
  return NULL;
}

static bool spawn_worker(rw_pool *p) {
  worker *w = calloc(1, sizeof *w);
  worker_arg *a = malloc(sizeof *a);
  if (!w || !a) goto fail;
  a->p = p;
  a->self = w;
  pthread_attr_t attr;
  pthread_attr_init(&attr);
  pthread_attr_setstacksize(&attr, 256 * 1024);
  int rc = pthread_create(&w->tid, &attr, worker_main, a);
  pthread_attr_destroy(&attr);
  if (rc != 0) goto fail;
  w->next = p->workers;
  p->workers = w;
  p->alive++;
  if (p->alive > p->peak) p->peak = p->alive;
  return true;
fail:
  free(w);
  free(a);
  return false;
}

bool rw_pool_submit(rw_pool *p, void (*fn)(void *), void *arg) {
  job *j = malloc(sizeof *j);
  if (!j) return false;
  j->fn = fn;
  j->arg = arg;
  j->next = NULL;
  pthread_mutex_lock(&p->mu);
  if (p->stopping) {
    pthread_mutex_unlock(&p->mu);
    free(j);
    return false;
  }
  reap_exited(p);
  if (p->tail) p->tail->next = j;
  else p->head = j;
  p->tail = j;
  int queued = 0;
  for (job *q = p->head; q; q = q->next) queued++;
  bool ok = true;
  if (p->idle < queued && p->alive < p->max) ok = spawn_worker(p) || p->alive > 0;
  if (!ok) { /* no thread at all: take the job back off the tail */
    job **pp = &p->head;
    while (*pp != j) pp = &(*pp)->next;
    *pp = NULL;
    p->tail = NULL;
    for (job *q = p->head; q; q = q->next) p->tail = q;
    free(j);
  } else {
    pthread_cond_signal(&p->work);
  }
  pthread_mutex_unlock(&p->mu);
  return ok;
}

void rw_pool_free(rw_pool *p) {
  if (!p) return;
  pthread_mutex_lock(&p->mu);
  p->stopping = true;
  pthread_cond_broadcast(&p->work);
  while (p->alive > 0) pthread_cond_wait(&p->idle_cv, &p->mu);
  reap_exited(p);
  pthread_mutex_unlock(&p->mu);
  pthread_cond_destroy(&p->work);
  pthread_cond_destroy(&p->idle_cv);
  pthread_mutex_destroy(&p->mu);
  free(p);
}

int rw_pool_threads(rw_pool *p) {
  pthread_mutex_lock(&p->mu);
  int n = p->alive;
  pthread_mutex_unlock(&p->mu);
  return n;
}
int rw_pool_max_threads(rw_pool *p) { return p->max; }
int rw_pool_peak_threads(rw_pool *p) {
  pthread_mutex_lock(&p->mu);
  int n = p->peak;
  pthread_mutex_unlock(&p->mu);
  return n;
}

/* ---------------- the shared pool ---------------- */

static pthread_mutex_t shared_mu = PTHREAD_MUTEX_INITIALIZER;
static rw_pool *shared_pool;
static int shared_refs;

/* Keeps this shared object mapped for the life of the process: a pool thread
 * must never find its code unloaded (Lua dlcloses C modules at lua_close). */
static void pin_self(void) {
  Dl_info info;
  if (dladdr((void *)pin_self, &info) && info.dli_fname)
    (void)dlopen(info.dli_fname, RTLD_NOW | RTLD_NODELETE | RTLD_NOLOAD);
}

rw_pool *rw_pool_shared_acquire(void) {
  pthread_mutex_lock(&shared_mu);
  if (!shared_pool) {
    const char *s = getenv("RW_POOL_THREADS");
    int n = s ? atoi(s) : 16;
    if (n < 1 || n > 4096) n = 16;
    rw_error *err = NULL;
    shared_pool = rw_pool_new(n, 2.0, &err);
    rw_error_unref(err);
    if (shared_pool) pin_self();
  }
  if (shared_pool && shared_refs == 0) { /* retired by a task: in use again */
    pthread_mutex_lock(&shared_pool->mu);
    shared_pool->retiring = false;
    pthread_mutex_unlock(&shared_pool->mu);
  }
  if (shared_pool) shared_refs++;
  rw_pool *p = shared_pool;
  pthread_mutex_unlock(&shared_mu);
  return p;
}

void rw_pool_shared_release(void) {
  pthread_mutex_lock(&shared_mu);
  rw_pool *p = NULL;
  if (shared_refs > 0 && --shared_refs == 0) {
    p = shared_pool;
    shared_pool = NULL;
  }
  pthread_mutex_unlock(&shared_mu);
  rw_pool_free(p);
}

void rw_pool_shared_release_from_task(void) {
  pthread_mutex_lock(&shared_mu);
  if (shared_refs > 0 && --shared_refs == 0 && shared_pool) {
    /* A task cannot join its own pool: the threads leave as soon as they are
     * idle, and the pool stays for the next acquire (which reaps them). */
    pthread_mutex_lock(&shared_pool->mu);
    shared_pool->retiring = true;
    pthread_cond_broadcast(&shared_pool->work);
    pthread_mutex_unlock(&shared_pool->mu);
  }
  pthread_mutex_unlock(&shared_mu);
}

rw_pool *rw_pool_shared_peek(void) {
  pthread_mutex_lock(&shared_mu);
  rw_pool *p = shared_pool;
  pthread_mutex_unlock(&shared_mu);
  return p;
}
