/* Time helpers. Monotonic seconds for every deadline; wall-clock only at the edges. */
#ifndef RW_CLOCK_H
#define RW_CLOCK_H

#include <pthread.h>
#include <time.h>

static inline double rw_mono_now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static inline double rw_real_now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static inline struct timespec rw_timespec_of(double t) {
  struct timespec ts;
  if (t > 1e15) t = 1e15;
  if (t < 0) t = 0;
  ts.tv_sec = (time_t)t;
  ts.tv_nsec = (long)((t - (double)ts.tv_sec) * 1e9);
  if (ts.tv_nsec >= 1000000000L) ts.tv_nsec = 999999999L;
  return ts;
}

/* A condition variable that waits on CLOCK_MONOTONIC. */
static inline int rw_cond_init(pthread_cond_t *c) {
  pthread_condattr_t a;
  pthread_condattr_init(&a);
  pthread_condattr_setclock(&a, CLOCK_MONOTONIC);
  int rc = pthread_cond_init(c, &a);
  pthread_condattr_destroy(&a);
  return rc;
}

/* Waits until the monotonic time `until` (INFINITY = no limit). */
static inline int rw_cond_wait_until(pthread_cond_t *c, pthread_mutex_t *m, double until) {
  if (until > 1e15) return pthread_cond_wait(c, m);
  struct timespec ts = rw_timespec_of(until);
  return pthread_cond_timedwait(c, m, &ts);
}

#endif
