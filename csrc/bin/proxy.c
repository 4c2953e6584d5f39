/* reliablewriter-proxy: the RWP/1 proxy (docs/PROXY.md) as a program.
 *
 *   reliablewriter-proxy --listen 127.0.0.1:PORT --upstream URL --secret-file F
 *       [--key-id ID] [--max-connections N] [--cache BYTES] [--rate-requests R]
 *       [--rate-bytes B] [--token-file F | --credentials-file F | --credentials default]
 *       [--ca-file F]
 *
 * Prints "listening HOST:PORT" on stdout once it accepts connections; stops
 * cleanly on SIGINT/SIGTERM. Bad arguments: a message naming the flag, exit 2.
 * Production code: links only the core library, never the test bed. */
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bin/args.h"
#include "proxy/auth.h"
#include "proxy/server.h"

static void usage(void) {
  fprintf(stderr,
          "usage: reliablewriter-proxy --listen 127.0.0.1:PORT --upstream URL --secret-file F\n"
          "         [--key-id ID] [--max-connections N] [--cache BYTES] [--rate-requests R]\n"
          "         [--rate-bytes B] [--token-file F | --credentials-file F | --credentials default]\n"
          "         [--ca-file F]\n");
  exit(2);
}

/* The whole file (at most max bytes), trailing whitespace removed. */
static char *read_file(const char *opt, const char *path, size_t max, size_t *len) {
  FILE *f = fopen(path, "rb");
  if (!f) {
    fprintf(stderr, "reliablewriter-proxy: %s '%s': %s\n", opt, path, strerror(errno));
    exit(2);
  }
  char *buf = malloc(max + 1);
  size_t n = buf ? fread(buf, 1, max + 1, f) : 0;
  fclose(f);
  if (!buf || n > max) {
    fprintf(stderr, "reliablewriter-proxy: %s '%s': must be at most %zu bytes\n", opt, path, max);
    exit(2);
  }
  while (n && (buf[n - 1] == '\n' || buf[n - 1] == '\r' || buf[n - 1] == ' ')) n--;
  buf[n] = 0;
  *len = n;
  return buf;
}

typedef struct opts {
  rw_proxy_config cfg;
  rw_proxy_secret secret;
  const char *secret_file, *token_file;
} opts;

static const char *need(int argc, char **argv, int *i) {
  if (*i + 1 >= argc) {
    fprintf(stderr, "reliablewriter-proxy: %s needs a value\n", argv[*i]);
    exit(2);
  }
  return argv[++*i];
}

static void parse(int argc, char **argv, opts *o) {
  o->cfg = rw_proxy_defaults();
  o->secret.key_id = "";
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
    if (!strcmp(a, "--help") || !strcmp(a, "-h")) usage();
    const char *v = need(argc, argv, &i);
    if (!strcmp(a, "--listen")) {
      const char *colon = strrchr(v, ':');
      if (!colon || colon == v) arg_fail(a, v, "HOST:PORT with an IPv4 address (127.0.0.1:8080)");
      arg_port(a, colon + 1, true);
      o->cfg.listen = v;
    }
    else if (!strcmp(a, "--upstream")) o->cfg.upstream = v;
    else if (!strcmp(a, "--secret-file")) o->secret_file = v;
    else if (!strcmp(a, "--token-file")) o->token_file = v;
    else if (!strcmp(a, "--credentials-file")) o->cfg.credentials_file = v;
    else if (!strcmp(a, "--ca-file")) o->cfg.ca_file = v;
    else if (!strcmp(a, "--credentials")) {
      if (strcmp(v, "default")) arg_fail(a, v, "default (the ADC chain: GOOGLE_APPLICATION_CREDENTIALS, gcloud, metadata)");
      o->cfg.credentials_default = true;
    }
    else if (!strcmp(a, "--key-id")) {
      if (strlen(v) > 64) arg_fail(a, v, "at most 64 bytes");
      o->secret.key_id = v;
    } else if (!strcmp(a, "--max-connections"))
      o->cfg.max_connections = (int)arg_int(a, v, 1, 100000, "a whole number in 1..100000");
    else if (!strcmp(a, "--cache"))
      o->cfg.cache = (uint64_t)arg_int(a, v, 1 << 20, (long long)1 << 40, "a number of bytes in 1 MiB..1 TiB");
    else if (!strcmp(a, "--rate-requests"))
      o->cfg.rate_requests = arg_num(a, v, 0, 1e9, "a number of requests a second, 0 (none) or more");
    else if (!strcmp(a, "--rate-bytes"))
      o->cfg.rate_bytes = arg_num(a, v, 0, 1e15, "a number of bytes a second, 0 (none) or more");
    else {
      fprintf(stderr, "reliablewriter-proxy: unknown flag %s\n", a);
      usage();
    }
  }
  if (!o->cfg.listen) arg_fail("--listen", "", "given (127.0.0.1:PORT)");
  if (!o->cfg.upstream) arg_fail("--upstream", "", "given (the GCS endpoint URL)");
  if (!o->secret_file) arg_fail("--secret-file", "", "given (a file of 32 or more secret bytes)");
  if ((o->token_file != NULL) + (o->cfg.credentials_file != NULL) + o->cfg.credentials_default > 1)
    arg_fail("--token-file", o->token_file ? o->token_file : "", "not with --credentials-file or --credentials: one way to GCS");
  if (o->cfg.cache < o->cfg.max_frame) o->cfg.max_frame = (uint32_t)o->cfg.cache;
}

int main(int argc, char **argv) {
  arg_prog = "reliablewriter-proxy";
  opts o;
  memset(&o, 0, sizeof o);
  parse(argc, argv, &o);
  size_t slen = 0, tlen = 0;
  char *sec = read_file("--secret-file", o.secret_file, 4096, &slen);
  if (slen < RWP_MIN_SECRET) {
    fprintf(stderr, "reliablewriter-proxy: --secret-file '%s' must hold %d or more bytes (it has %zu)\n",
            o.secret_file, RWP_MIN_SECRET, slen);
    return 2;
  }
  char *token = o.token_file ? read_file("--token-file", o.token_file, 8192, &tlen) : NULL;
  o.secret.secret = sec, o.secret.len = slen;
  o.cfg.secrets = &o.secret, o.cfg.nsecrets = 1, o.cfg.token = token;
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &set, NULL); /* the server's threads inherit the mask */
  signal(SIGPIPE, SIG_IGN);
  rw_error *err = NULL;
  rw_proxy_server *s = rw_proxy_server_start(&o.cfg, &err);
  rwp_wipe(sec, slen), free(sec); /* the server keeps its own copy */
  if (token) rwp_wipe(token, tlen), free(token);
  if (!s) {
    char buf[512];
    rw_error_format(err, buf, sizeof buf);
    fprintf(stderr, "reliablewriter-proxy: %s\n", buf);
    int rc = rw_error_is(err, RW_E_INVALID) ? 2 : 1;
    rw_error_unref(err);
    return rc;
  }
  printf("listening %s\n", rw_proxy_server_addr(s));
  fflush(stdout);
  int sig = 0;
  sigwait(&set, &sig);
  rw_proxy_server_stop(s);
  return 0;
}
