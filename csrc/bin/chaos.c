/* reliablewriter-chaos: the chaos TCP proxy as a program.
 *   reliablewriter-chaos --upstream URL|HOST:PORT [--listen HOST:PORT] [--seed N]
 *       [--refuse P] [--reset-per-mib X] [--close-per-mib X] [--stall-per-mib X]
 *       [--stall-for S|forever] [--truncate-per-mib X] [--latency S]
 *       [--bandwidth BYTES_PER_S] [--max-connections N]
 * Prints its URL on the first line of stdout, serves until SIGINT/SIGTERM,
 * then prints what it injected on stderr. */
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "net/chaos.h"

static void usage(const char *why) {
  if (why) fprintf(stderr, "reliablewriter-chaos: %s\n", why);
  fprintf(stderr,
          "usage: reliablewriter-chaos --upstream URL|HOST:PORT [--listen HOST:PORT] [--seed N]\n"
          "         [--refuse P] [--reset-per-mib X] [--close-per-mib X] [--stall-per-mib X]\n"
          "         [--stall-for S|forever] [--truncate-per-mib X] [--latency S]\n"
          "         [--bandwidth BYTES_PER_S] [--max-connections N]\n");
  exit(2);
}

static const char *need(int argc, char **argv, int *i) {
  if (*i + 1 >= argc) usage("an option is missing its value");
  return argv[++*i];
}

static double num(const char *opt, const char *v) {
  char *end;
  double d = strtod(v, &end);
  if (end == v || *end || !isfinite(d)) {
    fprintf(stderr, "reliablewriter-chaos: %s needs a number (got '%s')\n", opt, v);
    exit(2);
  }
  return d;
}

int main(int argc, char **argv) {
  rw_faults_config fc = {.seed = 1, .stall_for = 5};
  rw_chaos_config cc = {0};
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
    if (!strcmp(a, "--listen")) cc.listen = need(argc, argv, &i);
    else if (!strcmp(a, "--upstream")) cc.upstream = need(argc, argv, &i);
    else if (!strcmp(a, "--seed")) fc.seed = strtoull(need(argc, argv, &i), NULL, 0);
    else if (!strcmp(a, "--refuse")) fc.refuse = num(a, need(argc, argv, &i));
    else if (!strcmp(a, "--reset-per-mib")) fc.reset_per_mib = num(a, need(argc, argv, &i));
    else if (!strcmp(a, "--close-per-mib")) fc.close_per_mib = num(a, need(argc, argv, &i));
    else if (!strcmp(a, "--stall-per-mib")) fc.stall_per_mib = num(a, need(argc, argv, &i));
    else if (!strcmp(a, "--stall-for")) {
      const char *v = need(argc, argv, &i);
      fc.stall_for = strcmp(v, "forever") == 0 ? -1 : num(a, v);
    } else if (!strcmp(a, "--truncate-per-mib")) fc.truncate_per_mib = num(a, need(argc, argv, &i));
    else if (!strcmp(a, "--latency")) fc.latency = num(a, need(argc, argv, &i));
    else if (!strcmp(a, "--bandwidth")) fc.bandwidth = num(a, need(argc, argv, &i));
    else if (!strcmp(a, "--max-connections")) fc.max_connections = atoi(need(argc, argv, &i));
    else if (!strcmp(a, "-h") || !strcmp(a, "--help")) usage(NULL);
    else {
      fprintf(stderr, "reliablewriter-chaos: unknown option '%s'\n", a);
      usage(NULL);
    }
  }
  if (!cc.upstream) usage("--upstream is required");
  signal(SIGPIPE, SIG_IGN);
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &set, NULL); /* before any thread starts */
  rw_error *e = NULL;
  rw_faults *f = rw_faults_new(&fc, &e);
  rw_chaos *p = f ? (cc.profile = f, rw_chaos_start(&cc, &e)) : NULL;
  if (!p) {
    char buf[512];
    rw_error_format(e, buf, sizeof buf);
    fprintf(stderr, "reliablewriter-chaos: %s\n", buf);
    rw_error_unref(e);
    rw_faults_unref(f);
    return 1;
  }
  printf("%s\n", rw_chaos_url(p));
  fflush(stdout);
  int sig = 0;
  sigwait(&set, &sig);
  rw_chaos_stop(p);
  rw_faults_stats st;
  rw_faults_stats_read(f, &st);
  fprintf(stderr,
          "reliablewriter-chaos: connections %llu refused %llu resets %llu closes %llu stalls %llu "
          "truncates %llu bytes up %llu down %llu\n",
          (unsigned long long)st.connections, (unsigned long long)st.refused, (unsigned long long)st.resets,
          (unsigned long long)st.closes, (unsigned long long)st.stalls, (unsigned long long)st.truncates,
          (unsigned long long)st.bytes_up, (unsigned long long)st.bytes_down);
  rw_faults_unref(f);
  return 0;
}
