/* core/sigtrap: a signal cancels the trap's context (cause names it), the
 * next one of the same signal acts as before the trap, one trap at a time,
 * bad signal lists refused, free restores every action and joins its thread. */
#include <signal.h>
#include <string.h>

#include "core/sigtrap.h"
#include "ctest.h"

static volatile sig_atomic_t g_prev_handler_hits;
static void prev_handler(int sig) { (void)sig; g_prev_handler_hits++; }

static void test_cancels_and_restores(void) {
  struct sigaction sa, before;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = prev_handler;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGUSR1, &sa, &before);
  int sigs[] = {SIGUSR1, SIGUSR2};
  rw_error *err = NULL;
  rw_ctx *parent = rw_ctx_background();
  rw_sigtrap *t = rw_sigtrap_new(parent, sigs, 2, &err);
  CHECK(t && !err);
  CHECK(!rw_ctx_done(rw_sigtrap_ctx(t)));
  CHECK_EQ_INT(rw_sigtrap_caught(t), 0);
  /* a second trap is refused while this one lives */
  rw_error *e2 = NULL;
  CHECK(rw_sigtrap_new(NULL, sigs, 1, &e2) == NULL);
  CHECK(e2 && strcmp(rw_error_code(e2), "rw.invalid_argument") == 0);
  CHECK(e2 && strstr(rw_error_message(e2), "already active"));
  rw_error_unref(e2);

  kill(getpid(), SIGUSR1);
  CHECK(rw_ctx_wait(rw_sigtrap_ctx(t), 5));
  CHECK_EQ_INT(rw_sigtrap_caught(t), SIGUSR1);
  rw_error *cause = rw_ctx_err(rw_sigtrap_ctx(t));
  CHECK(cause && strcmp(rw_error_code(cause), "rw.canceled") == 0);
  CHECK(cause && strstr(rw_error_message(cause), "SIGUSR1"));
  rw_error_unref(cause);
  CHECK(!rw_ctx_done(parent)); /* a child never cancels its parent */
  CHECK_EQ_INT(g_prev_handler_hits, 0);
  /* the next SIGUSR1 reaches the previous handler (as a second Ctrl-C would
   * stop the process); give the watcher time to have restored it */
  for (int i = 0; i < 200 && g_prev_handler_hits == 0; i++) {
    kill(getpid(), SIGUSR1);
    usleep(5000);
  }
  CHECK(g_prev_handler_hits >= 1);
  rw_sigtrap_free(t);
  /* restored after free, and a new trap can be made */
  struct sigaction now;
  sigaction(SIGUSR2, NULL, &now);
  CHECK(now.sa_handler == SIG_DFL);
  sigaction(SIGUSR1, NULL, &now);
  CHECK(now.sa_handler == prev_handler);
  t = rw_sigtrap_new(NULL, sigs + 1, 1, &err);
  CHECK(t != NULL);
  rw_sigtrap_free(t);
  rw_sigtrap_free(NULL);
  sigaction(SIGUSR1, &before, NULL);
  rw_ctx_unref(parent);
}

static void test_ignored_stays_ignored(void) {
  struct sigaction ign, before;
  memset(&ign, 0, sizeof ign);
  ign.sa_handler = SIG_IGN;
  sigaction(SIGUSR2, &ign, &before);
  int sig = SIGUSR2;
  rw_error *err = NULL;
  rw_sigtrap *t = rw_sigtrap_new(NULL, &sig, 1, &err);
  CHECK(t != NULL);
  kill(getpid(), SIGUSR2);
  CHECK(!rw_ctx_wait(rw_sigtrap_ctx(t), 0.1)); /* nohup'd: not a cancellation */
  rw_sigtrap_free(t);
  sigaction(SIGUSR2, &before, NULL);
}

static void test_bad_lists(void) {
  rw_error *err = NULL;
  int kill9 = SIGKILL, none = 0, many[RW_SIGTRAP_MAX + 1];
  for (int i = 0; i <= RW_SIGTRAP_MAX; i++) many[i] = SIGUSR1;
  CHECK(rw_sigtrap_new(NULL, &kill9, 1, &err) == NULL);
  CHECK(err && strstr(rw_error_message(err), "is not one of"));
  rw_error_unref(err);
  CHECK(rw_sigtrap_new(NULL, &none, 0, &err) == NULL);
  CHECK(err && strstr(rw_error_message(err), "between 1 and"));
  rw_error_unref(err);
  CHECK(rw_sigtrap_new(NULL, many, RW_SIGTRAP_MAX + 1, &err) == NULL);
  rw_error_unref(err);
  CHECK_EQ_INT(rw_sigtrap_signum("INT"), SIGINT);
  CHECK_EQ_INT(rw_sigtrap_signum("sigterm"), SIGTERM);
  CHECK_EQ_INT(rw_sigtrap_signum("KILL"), 0);
  CHECK_EQ_INT(rw_sigtrap_signum(NULL), 0);
  CHECK(strcmp(rw_sigtrap_name(SIGINT), "SIGINT") == 0);
}

int main(void) {
  ct_seed();
  RUN(test_cancels_and_restores);
  RUN(test_ignored_stays_ignored);
  RUN(test_bad_lists);
  return ct_finish("test_sigtrap");
}
