/* reliablewriter-fakegcs: the fake GCS as a program.
 *   reliablewriter-fakegcs [--host H] [--port N] [--store memory|discard|DIR]
 *                          [--bucket B]... [--md5|--no-md5] [--request-log N]
 *                          [--faults seed=7,p_503=0.02,p_408=0,p_reset=0.01,p_partial=0,
 *                                    p_broken=0,p_stall=0,stall_ms=1000]
 *                          [--auth-public-key FILE] [--token-lifetime SECONDS]
 *                          [--tls-cert FILE --tls-key FILE]
 * --auth-public-key: PEM public key that verifies JWT grants at /token; every
 * storage request then needs a token minted here (issue 11, docs/AUTH.md).
 * --port 0 (the default) picks a free port. MD5 is on by default except with
 * --store discard. The request log keeps the last N requests (10,000).
 * The soft descriptor limit is raised to the hard one (a descriptor per
 * connection). Prints its URL on the first line of stdout, then serves until
 * SIGINT/SIGTERM. Bad arguments: a message naming the flag, exit 2. */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

#include "bin/args.h"
#include "testbed/fakegcs.h"

#define MAX_BUCKETS 64

static void usage(const char *why) {
  if (why) fprintf(stderr, "reliablewriter-fakegcs: %s\n", why);
  fprintf(stderr,
          "usage: reliablewriter-fakegcs [--host H] [--port N (0: pick one)] "
          "[--store memory|discard|DIR] [--bucket B]... [--md5|--no-md5] [--request-log N]\n"
          "       [--faults seed=N,p_503=P,p_408=P,p_reset=P,p_partial=P,p_broken=P,"
          "p_stall=P,stall_ms=MS]\n"
          "       [--auth-public-key FILE] [--token-lifetime SECONDS] [--tls-cert FILE --tls-key FILE]\n");
  exit(2);
}

static const char *need(int argc, char **argv, int *i) {
  if (*i + 1 >= argc) {
    fprintf(stderr, "reliablewriter-fakegcs: %s needs a value\n", argv[*i]);
    usage(NULL);
  }
  return argv[++*i];
}

static void parse_store(const char *v, rw_fakegcs_config *cfg) {
  if (!*v) arg_fail("--store", v, "memory, discard or a directory");
  if (strcmp(v, "memory") == 0) cfg->store = RW_FAKEGCS_MEMORY;
  else if (strcmp(v, "discard") == 0) cfg->store = RW_FAKEGCS_DISCARD;
  else cfg->store = RW_FAKEGCS_DIR, cfg->dir = v;
}

/* One "key=value" of --faults, with the rules of the Lua srv:faults{...}. */
static void fault_item(const char *key, const char *v, rw_fakegcs_faults *f) {
  static const char *const prob = "a number in [0, 1]";
  char opt[64];
  snprintf(opt, sizeof opt, "--faults %s", key);
  if (!strcmp(key, "seed")) f->seed = (uint64_t)arg_int(opt, v, 0, INT64_MAX, "a whole number >= 0");
  else if (!strcmp(key, "p_503")) f->p_503 = arg_num(opt, v, 0, 1, prob);
  else if (!strcmp(key, "p_408")) f->p_408 = arg_num(opt, v, 0, 1, prob);
  else if (!strcmp(key, "p_reset")) f->p_reset = arg_num(opt, v, 0, 1, prob);
  else if (!strcmp(key, "p_partial")) f->p_partial = arg_num(opt, v, 0, 1, prob);
  else if (!strcmp(key, "p_broken")) f->p_broken = arg_num(opt, v, 0, 1, prob);
  else if (!strcmp(key, "p_stall")) f->p_stall = arg_num(opt, v, 0, 1, prob);
  else if (!strcmp(key, "stall_ms"))
    f->stall_ms = (int)arg_int(opt, v, 0, 600000, "a whole number of ms in 0..600000");
  else {
    fprintf(stderr, "%s: --faults has an unknown key '%s': the keys are seed, p_503, p_408, "
            "p_reset, p_partial, p_broken, p_stall, stall_ms\n", arg_prog, key);
    exit(2);
  }
}

/* "seed=7,p_503=0.02,..." into f; exits 2 on anything else. */
static void parse_faults(const char *arg, rw_fakegcs_faults *f) {
  char *spec = strdup(arg), *save = NULL;
  if (!spec) exit(1);
  for (char *kv = strtok_r(spec, ",", &save); kv; kv = strtok_r(NULL, ",", &save)) {
    char *eq = strchr(kv, '=');
    if (!eq) arg_fail("--faults", kv, "key=value items separated by commas");
    *eq = 0;
    fault_item(kv, eq + 1, f);
  }
  free(spec);
  double sum = f->p_503 + f->p_408 + f->p_reset + f->p_partial + f->p_broken + f->p_stall;
  if (sum > 1) arg_fail("--faults", arg, "probabilities that add up to at most 1");
}

/* Each connection holds a descriptor: allow as many as the hard limit. */
static void raise_nofile(void) {
  struct rlimit rl;
  if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
    rl.rlim_cur = rl.rlim_max;
    setrlimit(RLIMIT_NOFILE, &rl);
  }
}

/* A whole PEM file (at most 1 MiB), or exit 2 naming the flag. */
static char *read_pem(const char *flag, const char *path) {
  FILE *f = fopen(path, "rb");
  char *buf = f ? calloc(1, (1 << 20) + 1) : NULL;
  size_t n = buf ? fread(buf, 1, 1 << 20, f) : 0;
  if (f) fclose(f);
  if (!buf || n == 0 || n == 1 << 20) arg_fail(flag, path, "a readable PEM file below 1 MiB");
  return buf;
}

static bool parse_args(int argc, char **argv, rw_fakegcs_config *cfg, const char **buckets,
                       rw_fakegcs_faults *faults) {
  bool with_faults = false;
  int nb = 0;
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
    if (!strcmp(a, "--host")) cfg->host = need(argc, argv, &i);
    else if (!strcmp(a, "--port")) cfg->port = arg_port(a, need(argc, argv, &i), true);
    else if (!strcmp(a, "--store")) parse_store(need(argc, argv, &i), cfg);
    else if (!strcmp(a, "--bucket")) {
      const char *b = need(argc, argv, &i);
      if (!*b || nb == MAX_BUCKETS) arg_fail(a, b, "a non-empty name, at most 64 times");
      buckets[nb++] = b;
    } else if (!strcmp(a, "--no-md5")) cfg->md5 = RW_FAKEGCS_MD5_OFF;
    else if (!strcmp(a, "--md5")) cfg->md5 = RW_FAKEGCS_MD5_ON;
    else if (!strcmp(a, "--request-log"))
      cfg->request_log = (size_t)arg_int(a, need(argc, argv, &i), 1, RW_FAKEGCS_REQUEST_LOG_MAX,
                                         "a whole number in 1..10000000");
    else if (!strcmp(a, "--faults")) {
      parse_faults(need(argc, argv, &i), faults);
      with_faults = true;
    } else if (!strcmp(a, "--auth-public-key")) cfg->auth_public_key = read_pem(a, need(argc, argv, &i));
    else if (!strcmp(a, "--token-lifetime"))
      cfg->auth_token_lifetime = arg_num(a, need(argc, argv, &i), 0.001, 86400 * 365, "seconds in 0.001..31536000");
    else if (!strcmp(a, "--tls-cert")) cfg->tls_cert = read_pem(a, need(argc, argv, &i));
    else if (!strcmp(a, "--tls-key")) cfg->tls_key = read_pem(a, need(argc, argv, &i));
    else if (!strcmp(a, "-h") || !strcmp(a, "--help")) usage(NULL);
    else {
      fprintf(stderr, "reliablewriter-fakegcs: unknown option '%s'\n", a);
      usage(NULL);
    }
  }
  return with_faults;
}

static void free_pems(rw_fakegcs_config *cfg) {
  free((char *)cfg->auth_public_key);
  free((char *)cfg->tls_cert);
  free((char *)cfg->tls_key);
}

int main(int argc, char **argv) {
  arg_prog = "reliablewriter-fakegcs";
  rw_fakegcs_config cfg = {0};
  rw_fakegcs_faults faults = {.seed = 1, .stall_ms = 1000};
  const char *buckets[MAX_BUCKETS + 1] = {0};
  bool with_faults = parse_args(argc, argv, &cfg, buckets, &faults);
  cfg.buckets = buckets;
  raise_nofile();
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &set, NULL); /* server threads inherit the mask */
  signal(SIGPIPE, SIG_IGN);
  rw_error *err = NULL;
  rw_fakegcs *s = rw_fakegcs_start(&cfg, &err);
  free_pems(&cfg); /* the server keeps its own copies */
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
