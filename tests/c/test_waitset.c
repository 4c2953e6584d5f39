/* Unit tests for the wait set (core/waitset.h): fds, contexts watched without
 * an fd, cancellations racing with unwatch and free on other threads. */
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <sys/eventfd.h>

#include "core/clock.h"
#include "core/context.h"
#include "core/waitset.h"
#include "ctest.h"

static unsigned seed;

static int wait_once(rw_waitset *s, double t, int *fds, int *nfds, int *ids, int max_ids, int *nids) {
  rw_error *e = rw_waitset_wait(s, t, fds, 64, nfds, ids, max_ids, nids);
  CHECK(e == NULL);
  rw_error_unref(e);
  return *nfds + *nids;
}

static void test_fds(void) {
  rw_waitset *s;
  CHECK(rw_waitset_new(&s) == NULL);
  int efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  int fds[64], ids[8], nfds, nids;
  CHECK(rw_waitset_add_fd(s, efd) == NULL);
  CHECK(rw_waitset_add_fd(s, efd) == NULL); /* twice is fine */
  CHECK_EQ_INT(rw_waitset_fd_count(s), 1);
  CHECK_EQ_INT(wait_once(s, 0, fds, &nfds, ids, 8, &nids), 0);
  uint64_t one = 1;
  CHECK(write(efd, &one, sizeof one) == sizeof one);
  CHECK_EQ_INT(wait_once(s, 1, fds, &nfds, ids, 8, &nids), 1);
  CHECK_EQ_INT(fds[0], efd);
  CHECK_EQ_INT(wait_once(s, 0, fds, &nfds, ids, 8, &nids), 1); /* level-triggered */
  rw_waitset_remove_fd(s, efd);
  CHECK_EQ_INT(rw_waitset_fd_count(s), 0);
  CHECK_EQ_INT(wait_once(s, 0, fds, &nfds, ids, 8, &nids), 0);
  rw_waitset_remove_fd(s, efd); /* unknown: ignored */
  rw_error *e = rw_waitset_add_fd(s, 1000000);
  CHECK(e && strcmp(rw_error_code(e), RW_E_INVALID) == 0 && strstr(rw_error_message(e), "fd 1000000"));
  rw_error_unref(e);
  e = rw_waitset_add_fd(s, rw_waitset_pollfd(s));
  CHECK(e && strcmp(rw_error_code(e), RW_E_INVALID) == 0);
  rw_error_unref(e);
  double t0 = rw_mono_now();
  CHECK_EQ_INT(wait_once(s, 0.05, fds, &nfds, ids, 8, &nids), 0);
  CHECK(rw_mono_now() - t0 >= 0.045);
  close(efd);
  rw_waitset_free(s);
}

static void test_contexts(void) {
  rw_waitset *s;
  CHECK(rw_waitset_new(&s) == NULL);
  rw_ctx *parent = rw_ctx_background();
  enum { N = 300 };
  rw_ctx *kids[N];
  int idof[N], fds[64], ids[N], nfds, nids;
  for (int i = 0; i < N; i++) {
    kids[i] = rw_ctx_with_cancel(parent);
    CHECK(rw_waitset_watch(s, kids[i], &idof[i]) == NULL && idof[i] > 0);
  }
  CHECK_EQ_INT(rw_waitset_watch_count(s), N);
  CHECK_EQ_INT(wait_once(s, 0, fds, &nfds, ids, N, &nids), 0);
  rw_ctx_cancel(kids[7], NULL);
  CHECK_EQ_INT(wait_once(s, 1, fds, &nfds, ids, N, &nids), 1);
  CHECK_EQ_INT(ids[0], idof[7]);
  CHECK_EQ_INT(wait_once(s, 0, fds, &nfds, ids, N, &nids), 0); /* reported once */
  rw_ctx_cancel(parent, NULL); /* reaches every child */
  int seen = 0;
  for (int round = 0; round < 10 && seen < N - 1; round++) {
    wait_once(s, 1, fds, &nfds, ids, 100, &nids); /* at most 100 a call: the rest next time */
    CHECK(nids <= 100);
    seen += nids;
  }
  CHECK_EQ_INT(seen, N - 1);
  rw_ctx *done = rw_ctx_with_cancel(parent); /* already cancelled */
  int id;
  CHECK(rw_waitset_watch(s, done, &id) == NULL);
  CHECK_EQ_INT(wait_once(s, 0, fds, &nfds, ids, N, &nids), 1);
  CHECK_EQ_INT(ids[0], id);
  for (int i = 0; i < N; i += 2) rw_waitset_unwatch(s, idof[i]);
  rw_waitset_unwatch(s, 999999); /* unknown: ignored */
  CHECK_EQ_INT(rw_waitset_watch_count(s), N - N / 2 + 1);
  rw_waitset_free(s); /* unwatches the rest */
  for (int i = 0; i < N; i++) rw_ctx_unref(kids[i]);
  rw_ctx_unref(done);
  rw_ctx_unref(parent);
}

/* Cancellations on other threads while the owner waits, unwatches and
 * re-watches: every cancelled watch is reported once, nothing races (TSan). */
typedef struct {
  rw_ctx **ctxs;
  int from, to;
  unsigned seed;
} canceller;

static void *cancel_some(void *arg) {
  canceller *c = arg;
  for (int i = c->from; i < c->to; i++) {
    if (rand_r(&c->seed) % 8 == 0) usleep(50);
    rw_ctx_cancel(c->ctxs[i], NULL);
  }
  return NULL;
}

static void test_threads(void) {
  enum { N = 2000, T = 4 };
  rw_waitset *s;
  CHECK(rw_waitset_new(&s) == NULL);
  rw_ctx *root = rw_ctx_background();
  rw_ctx **ctxs = calloc(N, sizeof *ctxs);
  int *idof = calloc(N, sizeof *idof), *hits = calloc(N + 1, sizeof *hits);
  for (int i = 0; i < N; i++) {
    ctxs[i] = rw_ctx_with_cancel(root);
    CHECK(rw_waitset_watch(s, ctxs[i], &idof[i]) == NULL);
  }
  pthread_t th[T];
  canceller cs[T];
  for (int t = 0; t < T; t++) {
    cs[t] = (canceller){ctxs, t * N / T, (t + 1) * N / T, seed + (unsigned)t};
    pthread_create(&th[t], NULL, cancel_some, &cs[t]);
  }
  /* meanwhile unwatch every 10th (racing with its cancellation) */
  for (int i = 0; i < N; i += 10) rw_waitset_unwatch(s, idof[i]);
  int fds[64], ids[512], nfds, nids, seen = 0;
  double until = rw_mono_now() + 10;
  while (seen < N - N / 10 && rw_mono_now() < until) {
    wait_once(s, 0.5, fds, &nfds, ids, 512, &nids);
    for (int k = 0; k < nids; k++) {
      CHECK(ids[k] > 0 && ids[k] <= N);
      hits[ids[k]]++;
    }
    seen += nids;
  }
  for (int t = 0; t < T; t++) pthread_join(th[t], NULL);
  CHECK_EQ_INT(seen, N - N / 10);
  int twice = 0;
  for (int i = 1; i <= N; i++) twice += hits[i] > 1;
  CHECK_EQ_INT(twice, 0);
  rw_waitset_free(s);
  for (int i = 0; i < N; i++) rw_ctx_unref(ctxs[i]);
  rw_ctx_unref(root);
  free(ctxs);
  free(idof);
  free(hits);
}

/* Freeing the set while other threads cancel what it watches. */
static void test_free_while_cancelling(void) {
  enum { N = 500 };
  for (int round = 0; round < 5; round++) {
    rw_waitset *s;
    CHECK(rw_waitset_new(&s) == NULL);
    rw_ctx *ctxs[N];
    for (int i = 0; i < N; i++) {
      ctxs[i] = rw_ctx_background();
      int id;
      CHECK(rw_waitset_watch(s, ctxs[i], &id) == NULL);
    }
    canceller c = {ctxs, 0, N, seed + 100u + (unsigned)round};
    pthread_t th;
    pthread_create(&th, NULL, cancel_some, &c);
    usleep((useconds_t)(rand_r(&c.seed) % 2000));
    rw_waitset_free(s);
    pthread_join(th, NULL);
    for (int i = 0; i < N; i++) rw_ctx_unref(ctxs[i]);
  }
}

int main(void) {
  seed = ct_seed();
  RUN(test_fds);
  RUN(test_contexts);
  RUN(test_threads);
  RUN(test_free_while_cancelling);
  CHECK_EQ_INT(rw_ctx_live_count(), 0);
  return ct_finish("test_waitset");
}
