/* reliablewriter-fakegcs: the fake GCS as a program.
 *   reliablewriter-fakegcs [--host H] [--port N] [--store memory|discard|DIR]
 *                          [--bucket B]... [--md5|--no-md5]
 *                          [--faults seed=7,p_503=0.02,p_408=0,p_reset=0.01,p_partial=0,
 *                                    p_broken=0,p_stall=0,stall_ms=1000]
 * MD5 is on by default except with --store discard.
 * Prints its URL on the first line of stdout, then serves until SIGINT/SIGTERM. */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fake/fakegcs.h"

static void usage(void) {
  fprintf(stderr,
          "usage: reliablewriter-fakegcs [--host H] [--port N] "
          "[--store memory|discard|DIR] [--bucket B]... [--md5|--no-md5]\n"
          "       [--faults seed=N,p_503=P,p_408=P,p_reset=P,p_partial=P,p_broken=P,"
          "p_stall=P,stall_ms=MS]\n");
  exit(2);
}

static const char *need(int argc, char **argv, int *i) {
  if (*i + 1 >= argc) usage();
  return argv[++*i];
}

static void parse_store(const char *v, rw_fakegcs_config *cfg) {
  if (strcmp(v, "memory") == 0) cfg->store = RW_FAKEGCS_MEMORY;
  else if (strcmp(v, "discard") == 0) cfg->store = RW_FAKEGCS_DISCARD;
  else cfg->store = RW_FAKEGCS_DIR, cfg->dir = v;
}

/* "seed=7,p_503=0.02,..." into f; exits on an unknown key. */
static void parse_faults(char *spec, rw_fakegcs_faults *f) {
  for (char *kv = strtok(spec, ","); kv; kv = strtok(NULL, ",")) {
    char *eq = strchr(kv, '=');
    if (!eq) usage();
    *eq = 0;
    double v = atof(eq + 1);
    if (!strcmp(kv, "seed")) f->seed = (uint64_t)strtoull(eq + 1, NULL, 10);
    else if (!strcmp(kv, "p_503")) f->p_503 = v;
    else if (!strcmp(kv, "p_408")) f->p_408 = v;
    else if (!strcmp(kv, "p_reset")) f->p_reset = v;
    else if (!strcmp(kv, "p_partial")) f->p_partial = v;
    else if (!strcmp(kv, "p_broken")) f->p_broken = v;
    else if (!strcmp(kv, "p_stall")) f->p_stall = v;
    else if (!strcmp(kv, "stall_ms")) f->stall_ms = atoi(eq + 1);
    else usage();
  }
}

int main(int argc, char **argv) {
  rw_fakegcs_config cfg = {0};
  rw_fakegcs_faults faults = {.seed = 1, .stall_ms = 1000};
  bool with_faults = false;
  const char *buckets[65] = {0};
  int nb = 0;
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
    if (!strcmp(a, "--host")) cfg.host = need(argc, argv, &i);
    else if (!strcmp(a, "--port")) cfg.port = atoi(need(argc, argv, &i));
    else if (!strcmp(a, "--store")) parse_store(need(argc, argv, &i), &cfg);
    else if (!strcmp(a, "--bucket") && nb < 64) buckets[nb++] = need(argc, argv, &i);
    else if (!strcmp(a, "--no-md5")) cfg.md5 = RW_FAKEGCS_MD5_OFF;
    else if (!strcmp(a, "--md5")) cfg.md5 = RW_FAKEGCS_MD5_ON;
    else if (!strcmp(a, "--faults") && i + 1 < argc) {
      parse_faults(argv[++i], &faults);
      with_faults = true;
    }
    else usage();
  }
  cfg.buckets = buckets;
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &set, NULL); /* server threads inherit the mask */
  signal(SIGPIPE, SIG_IGN);
  rw_error *err = NULL;
  rw_fakegcs *s = rw_fakegcs_start(&cfg, &err);
  if (!s) {
    char buf[512];
    rw_error_format(err, buf, sizeof buf);
    fprintf(stderr, "reliablewriter-fakegcs: %s\n", buf);
    rw_error_unref(err);
    return 1;
  }
  if (with_faults) rw_fakegcs_set_faults(s, &faults);
  printf("%s\n", rw_fakegcs_url(s));
  fflush(stdout);
  int sig = 0;
  sigwait(&set, &sig);
  rw_fakegcs_stop(s);
  return 0;
}
