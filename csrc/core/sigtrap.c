#include "sigtrap.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

struct rw_sigtrap {
  rw_ctx *ctx;
  pthread_t thread;
  int sigs[RW_SIGTRAP_MAX];
  struct sigaction old[RW_SIGTRAP_MAX];
  int n;
  _Atomic int caught;
};

/* The process's one trap: the handler sees only these. */
static int g_pipe[2] = {-1, -1};
static atomic_bool g_active;
static atomic_bool g_stopping;

static const struct {
  const char *name;
  int sig;
} g_names[] = {{"INT", SIGINT},   {"TERM", SIGTERM}, {"HUP", SIGHUP},
               {"QUIT", SIGQUIT}, {"USR1", SIGUSR1}, {"USR2", SIGUSR2}};

int rw_sigtrap_signum(const char *name) {
  if (!name) return 0;
  if (strncasecmp(name, "SIG", 3) == 0) name += 3;
  for (size_t i = 0; i < sizeof g_names / sizeof g_names[0]; i++)
    if (strcasecmp(name, g_names[i].name) == 0) return g_names[i].sig;
  return 0;
}

const char *rw_sigtrap_name(int sig) {
  static const char *const full[] = {"SIGINT", "SIGTERM", "SIGHUP", "SIGQUIT", "SIGUSR1", "SIGUSR2"};
  for (size_t i = 0; i < sizeof g_names / sizeof g_names[0]; i++)
    if (g_names[i].sig == sig) return full[i];
  return "SIG?";
}

static void on_signal(int sig) {
  int saved = errno;
  unsigned char b = (unsigned char)sig;
  ssize_t r = write(g_pipe[1], &b, 1); /* a full pipe: a signal is pending anyway */
  (void)r;
  errno = saved;
}

static int slot_of(rw_sigtrap *t, int sig) {
  for (int i = 0; i < t->n; i++)
    if (t->sigs[i] == sig) return i;
  return -1;
}

static void *watch(void *arg) {
  rw_sigtrap *t = arg;
  for (;;) {
    unsigned char b;
    ssize_t r = read(g_pipe[0], &b, 1);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0 || atomic_load(&g_stopping)) break;
    int sig = b, i = slot_of(t, sig);
    if (i < 0) continue;
    int none = 0;
    atomic_compare_exchange_strong(&t->caught, &none, sig);
    /* The next one of this signal acts as it did before the trap. */
    sigaction(sig, &t->old[i], NULL);
    rw_ctx_cancel(t->ctx, rw_err("rw.canceled", "interrupted by %s", rw_sigtrap_name(sig)));
  }
  return NULL;
}

static rw_error *check_sigs(const int *sigs, int n) {
  if (n < 1 || n > RW_SIGTRAP_MAX)
    return rw_err("rw.invalid_argument", "signals: between 1 and %d signals, got %d", RW_SIGTRAP_MAX, n);
  for (int i = 0; i < n; i++) {
    if (sigs[i] == SIGKILL || sigs[i] == SIGSTOP || sigs[i] <= 0 || sigs[i] >= 65 ||
        strcmp(rw_sigtrap_name(sigs[i]), "SIG?") == 0)
      return rw_err("rw.invalid_argument",
                    "signals: %d is not one of INT, TERM, HUP, QUIT, USR1, USR2", sigs[i]);
  }
  return NULL;
}

rw_sigtrap *rw_sigtrap_new(rw_ctx *parent, const int *sigs, int n, rw_error **err) {
  *err = check_sigs(sigs, n);
  if (*err) return NULL;
  bool was = false;
  if (!atomic_compare_exchange_strong(&g_active, &was, true)) {
    *err = rw_err("rw.invalid_argument",
                  "a signal trap is already active in this process: close it first");
    return NULL;
  }
  rw_sigtrap *t = calloc(1, sizeof *t);
  if (!t) goto oom;
  if (pipe2(g_pipe, O_CLOEXEC) != 0) {
    *err = rw_err("rw.resource_exhausted", "signal trap: pipe: %s", strerror(errno));
    goto fail;
  }
  atomic_store(&g_stopping, false);
  t->ctx = rw_ctx_with_cancel(parent);
  if (!t->ctx) goto oom;
  t->n = 0;
  for (int i = 0; i < n; i++) {
    if (slot_of(t, sigs[i]) >= 0) continue;
    t->sigs[t->n] = sigs[i];
    t->n++;
  }
  /* The thread first, so that no signal arrives before someone reads. */
  if (pthread_create(&t->thread, NULL, watch, t) != 0) {
    *err = rw_err("rw.resource_exhausted", "signal trap: cannot start its thread");
    goto fail;
  }
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_signal;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = SA_RESTART;
  for (int i = 0; i < t->n; i++) {
    sigaction(t->sigs[i], &sa, &t->old[i]);
    /* A signal the process ignores (nohup, a background job) stays ignored. */
    if (t->old[i].sa_handler == SIG_IGN) sigaction(t->sigs[i], &t->old[i], NULL);
  }
  return t;
oom:
  *err = rw_error_out_of_memory();
fail:
  if (t) rw_ctx_unref(t->ctx);
  free(t);
  for (int i = 0; i < 2; i++)
    if (g_pipe[i] >= 0) close(g_pipe[i]), g_pipe[i] = -1;
  atomic_store(&g_active, false);
  return NULL;
}

rw_ctx *rw_sigtrap_ctx(rw_sigtrap *t) { return t->ctx; }

int rw_sigtrap_caught(rw_sigtrap *t) { return atomic_load(&t->caught); }

void rw_sigtrap_free(rw_sigtrap *t) {
  if (!t) return;
  /* Restore first: no handler writes to the pipe once it is closed. A signal
   * caught after the restore but before the thread ends was already written. */
  for (int i = 0; i < t->n; i++) sigaction(t->sigs[i], &t->old[i], NULL);
  atomic_store(&g_stopping, true);
  unsigned char b = 0;
  ssize_t r;
  do r = write(g_pipe[1], &b, 1);
  while (r < 0 && errno == EINTR);
  pthread_join(t->thread, NULL);
  close(g_pipe[0]);
  close(g_pipe[1]);
  g_pipe[0] = g_pipe[1] = -1;
  rw_ctx_unref(t->ctx);
  free(t);
  atomic_store(&g_active, false);
}
