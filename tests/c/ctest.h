/* A tiny test harness: CHECK() records failures, seeds are printed. */
#ifndef RW_CTEST_H
#define RW_CTEST_H
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static int ct_failed, ct_passed;
#define CHECK(cond)                                                              \
  do {                                                                           \
    if (cond) ct_passed++;                                                       \
    else {                                                                       \
      ct_failed++;                                                               \
      fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond);   \
    }                                                                            \
  } while (0)
#define CHECK_EQ_INT(a, b)                                                                       \
  do {                                                                                           \
    long long ct_a = (long long)(a), ct_b = (long long)(b);                                      \
    if (ct_a == ct_b) ct_passed++;                                                               \
    else {                                                                                       \
      ct_failed++;                                                                               \
      fprintf(stderr, "%s:%d: CHECK failed: %s == %s (%lld vs %lld)\n", __FILE__, __LINE__, #a, \
              #b, ct_a, ct_b);                                                                   \
    }                                                                                            \
  } while (0)

static unsigned ct_seed(void) {
  const char *s = getenv("RW_TEST_SEED");
  unsigned seed = s ? (unsigned)strtoul(s, NULL, 0) : (unsigned)(time(NULL) ^ getpid());
  fprintf(stderr, "seed=%u (set RW_TEST_SEED to repeat)\n", seed);
  return seed;
}

#define RUN(fn)                          \
  do {                                   \
    fprintf(stderr, "-- %s\n", #fn);     \
    fn();                                \
  } while (0)

static int ct_finish(const char *name) {
  printf("%s: %d passed, %d failed\n", name, ct_passed, ct_failed);
  return ct_failed ? 1 : 0;
}
#endif
