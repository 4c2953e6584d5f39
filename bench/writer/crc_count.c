/* Diagnostic for bench/writer (not built by run.sh): an LD_PRELOAD shim that
 * counts crc32_iscsi calls, bytes and time per thread. Shows how many CRC32C
 * passes the writer makes over the data and on which thread.
 *   cc -O2 -shared -fPIC -o /tmp/crc_count.so bench/writer/crc_count.c -ldl
 *   LD_PRELOAD=/tmp/crc_count.so lua5.4 bench/writer/lua_up.lua file URL obj FILE */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdio.h>
#include <stdint.h>
#include <unistd.h>
#include <pthread.h>
#include <time.h>
static pthread_mutex_t m = PTHREAD_MUTEX_INITIALIZER;
static struct { pid_t tid; unsigned long long calls, bytes, ns, maxns, cpu; } t[16];
uint32_t crc32_iscsi(unsigned char *b, int len, uint32_t init) {
  static uint32_t (*real)(unsigned char*,int,uint32_t);
  if (!real) real = dlsym(dlopen("libisal.so.2", RTLD_NOW), "crc32_iscsi");
  struct timespec a, c, ca, cc; clock_gettime(CLOCK_MONOTONIC, &a); clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ca);
  uint32_t r = real(b, len, init);
  clock_gettime(CLOCK_MONOTONIC, &c); clock_gettime(CLOCK_THREAD_CPUTIME_ID, &cc);
  unsigned long long d = (c.tv_sec-a.tv_sec)*1000000000ull + (c.tv_nsec-a.tv_nsec);
  pid_t me = gettid(); pthread_mutex_lock(&m);
  int i = 0; while (i < 15 && t[i].tid && t[i].tid != me) i++;
  t[i].tid = me; t[i].calls++; t[i].bytes += (unsigned)len; t[i].ns += d; if (d > t[i].maxns) t[i].maxns = d;
  t[i].cpu += (cc.tv_sec-ca.tv_sec)*1000000000ull + (cc.tv_nsec-ca.tv_nsec);
  pthread_mutex_unlock(&m);
  return r;
}
__attribute__((destructor)) static void fin(void) {
  for (int i = 0; i < 16 && t[i].tid; i++)
    fprintf(stderr, "crc32_iscsi tid %s%d: %llu calls, %llu MiB, %.1f ms wall (%.1f ms on-CPU), max %.2f ms/call\n", t[i].tid == getpid() ? "main " : "", t[i].tid, t[i].calls, t[i].bytes >> 20, t[i].ns/1e6, t[i].cpu/1e6, t[i].maxns/1e6);
}
