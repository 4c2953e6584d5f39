/* Strict numbers on the programs' command lines: the whole argument, base 10,
 * inside a range, or the program exits 2 with a message naming the flag and
 * the rule. (atoi/strtol alone take "abc" as 0 and "99999" as a port.) */
#ifndef RW_BIN_ARGS_H
#define RW_BIN_ARGS_H

#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *arg_prog = "reliablewriter";

static void arg_fail(const char *opt, const char *val, const char *rule) {
  fprintf(stderr, "%s: %s must be %s (got '%s')\n", arg_prog, opt, rule, val);
  exit(2);
}

/* A whole number in [min, max]; rule is the message when it is not. */
static long long arg_int(const char *opt, const char *val, long long min, long long max,
                         const char *rule) {
  const char *p = val[0] == '-' ? val + 1 : val;
  if (!isdigit((unsigned char)p[0])) arg_fail(opt, val, rule);
  char *end;
  errno = 0;
  long long v = strtoll(val, &end, 10);
  if (errno || *end || v < min || v > max) arg_fail(opt, val, rule);
  return v;
}

/* A finite decimal number in [min, max]. */
static double arg_num(const char *opt, const char *val, double min, double max, const char *rule) {
  char *end;
  errno = 0;
  double v = strtod(val, &end);
  bool starts = isdigit((unsigned char)val[0]) || val[0] == '.' || val[0] == '-';
  if (!starts || end == val || *end || errno || !isfinite(v) || v < min || v > max)
    arg_fail(opt, val, rule);
  return v;
}

/* A TCP port: 1..65535, or 0 ("pick a free one") where zero_ok. */
static int arg_port(const char *opt, const char *val, bool zero_ok) {
  return (int)arg_int(opt, val, zero_ok ? 0 : 1, 65535,
                      zero_ok ? "a whole number in 0..65535 (0: pick a free port)"
                              : "a whole number in 1..65535");
}

#endif
