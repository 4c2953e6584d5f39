/* reliablewriter-chaos: the chaos TCP proxy as a program.
 *   reliablewriter-chaos --upstream URL|HOST:PORT [--listen HOST:PORT] [--seed N]
 *       [--refuse P] [--reset-per-mib X] [--close-per-mib X] [--stall-per-mib X]
 *       [--stall-for S|forever] [--truncate-per-mib X] [--latency S]
 *       [--bandwidth BYTES_PER_S] [--window BYTES] [--max-connections N]
 * --latency delays each byte that long per direction, --bandwidth caps each
 * connection per direction, --window bounds the bytes in flight per
 * direction (default 4 MiB): see testbed/faults.h. Prints its URL on the first line of stdout, serves until SIGINT/SIGTERM,
 * then prints what it injected on stderr. Ports are whole numbers in
 * 1..65535 (--listen also takes 0: pick a free port, the default); bad
 * arguments: a message naming the flag, exit 2. */
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bin/args.h"
#include "testbed/chaos.h"

static void usage(const char *why) {
  if (why) fprintf(stderr, "reliablewriter-chaos: %s\n", why);
  fprintf(stderr,
          "usage: reliablewriter-chaos --upstream URL|HOST:PORT [--listen HOST:PORT] [--seed N]\n"
          "         [--refuse P] [--reset-per-mib X] [--close-per-mib X] [--stall-per-mib X]\n"
          "         [--stall-for S|forever] [--truncate-per-mib X] [--latency S]\n"
          "         [--bandwidth BYTES_PER_S] [--window BYTES] [--max-connections N]\n");
  exit(2);
}

static const char *need(int argc, char **argv, int *i) {
  if (*i + 1 >= argc) usage("an option is missing its value");
  return argv[++*i];
}

static double rate(const char *opt, const char *v) {
  return arg_num(opt, v, 0, 1e6, "a number in [0, 1000000]");
}

/* The port of "host:port", "[v6]:port" or "scheme://host:port/path", if
 * any, must be a whole number in range; host:port is checked again by the
 * proxy when it resolves. */
static void check_address_port(const char *opt, const char *addr, bool zero_ok) {
  const char *s = strstr(addr, "://");
  s = s ? s + 3 : addr;
  size_t n = strcspn(s, "/?#");
  char buf[300];
  if (n == 0 || n >= sizeof buf) arg_fail(opt, addr, "HOST:PORT or a URL");
  memcpy(buf, s, n);
  buf[n] = 0;
  char *colon = buf[0] == '[' ? strchr(buf, ']') : strrchr(buf, ':');
  if (buf[0] == '[') colon = colon && colon[1] == ':' ? colon + 1 : NULL;
  if (!colon) return;
  char port_opt[64];
  snprintf(port_opt, sizeof port_opt, "the port of %s", opt);
  arg_port(port_opt, colon + 1, zero_ok);
}

static double stall_for(const char *opt, const char *v) {
  if (strcmp(v, "forever") == 0) return -1;
  return arg_num(opt, v, 0, 86400, "a number of seconds in [0, 86400] or 'forever'");
}

static double bandwidth(const char *opt, const char *v) {
  double b = arg_num(opt, v, 0, 1e12, "0 (no cap) or bytes/s in [1024, 1e12]");
  if (b > 0 && b < 1024) arg_fail(opt, v, "0 (no cap) or bytes/s in [1024, 1e12]");
  return b;
}

static void parse_args(int argc, char **argv, rw_faults_config *fc, rw_chaos_config *cc) {
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
    if (!strcmp(a, "--listen")) check_address_port(a, cc->listen = need(argc, argv, &i), true);
    else if (!strcmp(a, "--upstream")) check_address_port(a, cc->upstream = need(argc, argv, &i), false);
    else if (!strcmp(a, "--seed"))
      fc->seed = (uint64_t)arg_int(a, need(argc, argv, &i), 0, INT64_MAX, "a whole number >= 0");
    else if (!strcmp(a, "--refuse")) fc->refuse = arg_num(a, need(argc, argv, &i), 0, 1, "a number in [0, 1]");
    else if (!strcmp(a, "--reset-per-mib")) fc->reset_per_mib = rate(a, need(argc, argv, &i));
    else if (!strcmp(a, "--close-per-mib")) fc->close_per_mib = rate(a, need(argc, argv, &i));
    else if (!strcmp(a, "--stall-per-mib")) fc->stall_per_mib = rate(a, need(argc, argv, &i));
    else if (!strcmp(a, "--stall-for")) fc->stall_for = stall_for(a, need(argc, argv, &i));
    else if (!strcmp(a, "--truncate-per-mib")) fc->truncate_per_mib = rate(a, need(argc, argv, &i));
    else if (!strcmp(a, "--latency")) fc->latency = arg_num(a, need(argc, argv, &i), 0, 60, "seconds in [0, 60]");
    else if (!strcmp(a, "--bandwidth")) fc->bandwidth = bandwidth(a, need(argc, argv, &i));
    else if (!strcmp(a, "--window"))
      fc->window = (uint64_t)arg_int(a, need(argc, argv, &i), 1024, 1LL << 30, "a whole number of bytes in [1024, 1073741824]");
    else if (!strcmp(a, "--max-connections"))
      fc->max_connections = (int)arg_int(a, need(argc, argv, &i), 1, 65536, "a whole number in 1..65536");
    else if (!strcmp(a, "-h") || !strcmp(a, "--help")) usage(NULL);
    else {
      fprintf(stderr, "reliablewriter-chaos: unknown option '%s'\n", a);
      usage(NULL);
    }
  }
  if (!cc->upstream) usage("--upstream is required");
}

int main(int argc, char **argv) {
  arg_prog = "reliablewriter-chaos";
  rw_faults_config fc = {.seed = 1, .stall_for = 5};
  rw_chaos_config cc = {0};
  parse_args(argc, argv, &fc, &cc);
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
