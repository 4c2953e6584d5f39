/* reliablewriter-fakegcs: the fake GCS as a program.
 *   reliablewriter-fakegcs [--host H] [--port N] [--store memory|discard|DIR]
 *                          [--bucket B]... [--md5|--no-md5]
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
          "[--store memory|discard|DIR] [--bucket B]... [--md5|--no-md5]\n");
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

int main(int argc, char **argv) {
  rw_fakegcs_config cfg = {0};
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
  printf("%s\n", rw_fakegcs_url(s));
  fflush(stdout);
  int sig = 0;
  sigwait(&set, &sig);
  rw_fakegcs_stop(s);
  return 0;
}
