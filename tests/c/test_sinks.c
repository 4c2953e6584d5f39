/* Sinks: file and faulty sinks fully; the GCS sink against a small scripted
 * resumable-upload server (libmicrohttpd) in this file. */
#include <errno.h>
#include <jansson.h>
#include <arpa/inet.h>
#include <microhttpd.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <dirent.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/un.h>

#include "core/checksum.h"
#include "core/clock.h"
#include "ctest.h"
#include "testbed/fakegcs.h"
#include "testbed/faulty.h"
#include "sinks/file.h"
#include "sinks/gcs.h"

static unsigned rng_state;
static unsigned rnd(void) {
  rng_state = rng_state * 1103515245u + 12345u;
  return (rng_state >> 8) ^ (rng_state << 13);
}
static unsigned char *random_bytes(size_t n) {
  unsigned char *p = malloc(n ? n : 1);
  for (size_t i = 0; i < n; i++) p[i] = (unsigned char)(rnd() >> 3);
  return p;
}

/* Splits [data+off, +len) into up to 8 random iovecs. */
static int split_iov(const unsigned char *data, uint64_t off, uint64_t len, struct iovec *iov) {
  int n = 0;
  uint64_t at = off, end = off + len;
  while (at < end) {
    uint64_t take = n == 7 ? end - at : 1 + rnd() % (end - at);
    iov[n].iov_base = (void *)(data + at);
    iov[n].iov_len = (size_t)take;
    n++;
    at += take;
  }
  return n;
}

static char *tmp_path(const char *tag) {
  static int k;
  char *p = malloc(256);
  snprintf(p, 256, "/tmp/rw_test_sinks_%d_%s_%d", (int)getpid(), tag, k++);
  return p;
}

static bool file_equals(const char *path, const unsigned char *data, size_t n) {
  FILE *f = fopen(path, "rb");
  if (!f) return false;
  unsigned char *buf = malloc(n + 1);
  size_t r = fread(buf, 1, n + 1, f);
  fclose(f);
  bool same = r == n && memcmp(buf, data, n) == 0;
  free(buf);
  return same;
}

/* Puts [0, n) in random chunks through s (no faults expected). */
static rw_error *upload_plain(rw_sink *s, rw_ctx *ctx, const unsigned char *data, size_t n,
                              const rw_sink_sums *sums, uint64_t align, rw_sink_result *last) {
  uint64_t at = 0;
  struct iovec iov[8];
  for (;;) {
    uint64_t len = n - at;
    bool final = true;
    uint64_t chunk = align * (1 + rnd() % 3);
    if (len > chunk) len = chunk, final = false;
    rw_sink_put p = {.offset = at, .iov = iov, .len = len, .final = final, .sums = sums};
    p.iovcnt = split_iov(data, at, len, iov);
    rw_sink_result_clear(last);
    rw_error *e = s->ops->put(s, ctx, &p, last);
    if (e) return e;
    if (last->persisted != at + len) return rw_err(RW_E_INTERNAL, "persisted %llu", (unsigned long long)last->persisted);
    at += len;
    if (final) return NULL;
  }
}

/* ---------------- file sink ---------------- */

static void sent_counter(void *ud, uint64_t n) { *(uint64_t *)ud += n; }

/* A fresh temp folder for file-sink cases (never a system path). */
static char *tmp_dir(void) {
  char *d = malloc(64);
  snprintf(d, 64, "/tmp/rw_test_sinks_XXXXXX");
  if (!mkdtemp(d)) abort();
  return d;
}

static char *in_dir(const char *dir, const char *name) {
  char *p = malloc(strlen(dir) + strlen(name) + 2);
  sprintf(p, "%s/%s", dir, name);
  return p;
}

static void write_file(const char *path, const unsigned char *data, size_t n) {
  FILE *f = fopen(path, "wb");
  if (!f || fwrite(data, 1, n, f) != n) abort();
  fclose(f);
}

/* Entries of dir whose names end in ".rwtmp" (the sink's temporary files). */
static int count_tmp(const char *dir) {
  DIR *d = opendir(dir);
  int n = 0;
  for (struct dirent *e; d && (e = readdir(d));) {
    size_t l = strlen(e->d_name);
    if (l > 6 && strcmp(e->d_name + l - 6, ".rwtmp") == 0) n++;
  }
  if (d) closedir(d);
  return n;
}

/* Removes dir and what is in it (one level: the tests make no subfolders
 * but the "directory target" one, which is empty). */
static void remove_dir(const char *dir) {
  DIR *d = opendir(dir);
  for (struct dirent *e; d && (e = readdir(d));) {
    if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0) continue;
    char *p = in_dir(dir, e->d_name);
    if (unlink(p) != 0) rmdir(p);
    free(p);
  }
  if (d) closedir(d);
  rmdir(dir);
}

static rw_sink_sums sums_of(const unsigned char *data, size_t n) {
  rw_sink_sums sums = {.has_crc32c = true, .crc32c = rw_crc32c(0, data, n), .has_md5 = true};
  rw_md5 m;
  rw_md5_init(&m);
  rw_md5_update(&m, data, n);
  rw_md5_final(&m, sums.md5);
  rw_md5_free(&m);
  return sums;
}

static void test_file_sink(void) {
  rw_ctx *ctx = rw_ctx_background();
  char *dir = tmp_dir();
  char *path = in_dir(dir, "file.bin");
  size_t n = 300000 + rnd() % 100000;
  unsigned char *data = random_bytes(n);
  rw_error *e = NULL;
  rw_sink *s = rw_file_sink_new(path, &e);
  CHECK(s && !e);
  CHECK(strcmp(s->ops->kind, "file") == 0);
  CHECK(strcmp(s->ops->session(s), path) == 0);
  CHECK(s->ops->begin(s, ctx) == NULL);
  CHECK_EQ_INT(count_tmp(dir), 1);
  rw_sink_sums sums = sums_of(data, n);
  rw_sink_result r = {0};
  e = upload_plain(s, ctx, data, n, &sums, 4096 * (1 + rnd() % 8), &r);
  CHECK(e == NULL);
  rw_error_unref(e);
  CHECK(r.finalized);
  CHECK_EQ_INT(r.obj.size, n);
  char crc[9], md5[25];
  rw_crc32c_base64(sums.crc32c, crc);
  rw_md5_base64(sums.md5, md5);
  CHECK(r.obj.crc32c && strcmp(r.obj.crc32c, crc) == 0);
  CHECK(r.obj.md5 && strcmp(r.obj.md5, md5) == 0);
  rw_sink_result_clear(&r);
  CHECK(file_equals(path, data, n));
  CHECK_EQ_INT(count_tmp(dir), 0);
  /* after the rename a query (or the final put again) gives the object */
  CHECK(s->ops->query(s, ctx, &r) == NULL);
  CHECK(r.finalized && r.obj.size == n && strcmp(r.obj.crc32c, crc) == 0);
  CHECK_EQ_INT(r.persisted, n);
  rw_sink_result_clear(&r);
  CHECK(s->ops->abort(s, ctx) == NULL); /* finished: abort keeps the file */
  CHECK(file_equals(path, data, n));
  rw_sink_destroy(s);
  CHECK(file_equals(path, data, n));

  /* No resume: a new sink on the same path, no begin, says so. */
  s = rw_file_sink_new(path, &e);
  e = s->ops->query(s, ctx, &r);
  CHECK(e && rw_error_is(e, "rw.unsupported"));
  rw_error_unref(e);
  struct iovec v = {data, 10};
  rw_sink_put ten = {.offset = 0, .iov = &v, .iovcnt = 1, .len = 10};
  e = s->ops->put(s, ctx, &ten, &r);
  CHECK(e && rw_error_is(e, "rw.unsupported"));
  rw_error_unref(e);
  /* A put past the persisted size is a gap. */
  CHECK(s->ops->begin(s, ctx) == NULL);
  rw_sink_put gap = {.offset = n + 5, .iov = &v, .iovcnt = 1, .len = 10};
  e = s->ops->put(s, ctx, &gap, &r);
  CHECK(e && rw_error_is(e, RW_E_GAP));
  rw_error_unref(e);
  rw_sink_destroy(s); /* destroy without abort removes the temp file too */
  CHECK_EQ_INT(count_tmp(dir), 0);
  CHECK(file_equals(path, data, n));

  /* Begin does not truncate; a partial upload then abort leaves the target. */
  s = rw_file_sink_new(path, &e);
  CHECK(s->ops->begin(s, ctx) == NULL);
  uint64_t sent = 0;
  rw_sink_put half = {.offset = 0, .iov = &v, .iovcnt = 1, .len = 10, .on_sent = sent_counter, .ud = &sent};
  CHECK(s->ops->put(s, ctx, &half, &r) == NULL);
  CHECK_EQ_INT(r.persisted, 10);
  CHECK_EQ_INT(sent, 10);
  CHECK(file_equals(path, data, n));
  CHECK(s->ops->abort(s, ctx) == NULL);
  CHECK(file_equals(path, data, n));
  CHECK_EQ_INT(count_tmp(dir), 0);
  rw_sink_destroy(s);

  /* Empty object. */
  s = rw_file_sink_new(path, &e);
  CHECK(s->ops->begin(s, ctx) == NULL);
  rw_sink_put empty = {.offset = 0, .final = true};
  CHECK(s->ops->put(s, ctx, &empty, &r) == NULL);
  CHECK(r.finalized && r.obj.size == 0 && r.obj.crc32c && strcmp(r.obj.crc32c, "AAAAAA==") == 0);
  rw_sink_result_clear(&r);
  CHECK(file_equals(path, data, 0));
  rw_sink_destroy(s);

  /* Errors: a folder, an empty path, a missing folder. */
  e = NULL;
  CHECK(rw_file_sink_new(dir, &e) == NULL && e && rw_error_is(e, RW_E_INVALID));
  CHECK(e && strstr(rw_error_message(e), dir) && strstr(rw_error_message(e), "a directory"));
  rw_error_unref(e);
  CHECK(rw_file_sink_new("", &e) == NULL && e);
  rw_error_unref(e);
  char *missing = in_dir(dir, "no/such/file");
  CHECK(rw_file_sink_new(missing, &e) == NULL && e && rw_error_is(e, RW_E_INVALID));
  rw_error_unref(e);
  free(missing);

  /* A cancelled context stops a put before it writes. */
  rw_ctx *c2 = rw_ctx_with_cancel(ctx);
  rw_ctx_cancel(c2, NULL);
  s = rw_file_sink_new(path, &e);
  CHECK(s->ops->begin(s, ctx) == NULL);
  e = s->ops->put(s, c2, &half, &r);
  CHECK(e && rw_error_is(e, RW_E_CANCELED));
  rw_error_unref(e);
  rw_sink_destroy(s);
  rw_ctx_unref(c2);
  CHECK_EQ_INT(count_tmp(dir), 0);
  remove_dir(dir);
  free(dir);
  free(path);
  free(data);
  rw_ctx_unref(ctx);
}

/* rw_file_sink_new(path) must fail with rw.invalid_argument naming path, and
 * leave the node as it was. */
static void check_refused(const char *path, const char *kind, mode_t type) {
  rw_error *e = NULL;
  rw_sink *s = rw_file_sink_new(path, &e);
  CHECK(s == NULL && e && rw_error_is(e, RW_E_INVALID));
  bool named = e && strstr(rw_error_message(e), path) && strstr(rw_error_message(e), kind);
  if (e && !named) fprintf(stderr, "message: %s\n", rw_error_message(e));
  CHECK(named);
  rw_error_unref(e);
  rw_sink_destroy(s);
  struct stat st;
  CHECK(lstat(path, &st) == 0 && (st.st_mode & S_IFMT) == type);
}

static void test_file_sink_refuses_non_files(void) {
  char *dir = tmp_dir();
  char *fifo = in_dir(dir, "fifo"), *sock = in_dir(dir, "sock"), *sub = in_dir(dir, "sub");
  char *dev = in_dir(dir, "dev"), *file = in_dir(dir, "file"), *link = in_dir(dir, "link");
  CHECK(mkfifo(fifo, 0600) == 0);
  check_refused(fifo, "FIFO", S_IFIFO);
  int fd = socket(AF_UNIX, SOCK_STREAM, 0);
  struct sockaddr_un sa = {.sun_family = AF_UNIX};
  snprintf(sa.sun_path, sizeof sa.sun_path, "%s", sock);
  CHECK(fd >= 0 && bind(fd, (struct sockaddr *)&sa, sizeof sa) == 0);
  close(fd);
  check_refused(sock, "socket", S_IFSOCK);
  CHECK(mkdir(sub, 0700) == 0);
  check_refused(sub, "directory", S_IFDIR);
  /* a character device node in the temp folder (needs root; a FIFO stands in
   * for it otherwise, already covered above) */
  if (mknod(dev, S_IFCHR | 0600, makedev(1, 3)) == 0) check_refused(dev, "character device", S_IFCHR);
  else fprintf(stderr, "(mknod: %s; the device case is covered by the FIFO)\n", strerror(errno));
  /* symlinks: to a FIFO refused; dangling refused */
  CHECK(symlink(fifo, link) == 0);
  check_refused(link, "FIFO", S_IFLNK);
  unlink(link);
  CHECK(symlink(file, link) == 0); /* file does not exist */
  check_refused(link, "symbolic link", S_IFLNK);

  /* A FIFO made at the target after rw_file_sink_new: begin refuses, and the
   * final put refuses to rename over one made after begin. */
  rw_ctx *ctx = rw_ctx_background();
  rw_error *e = NULL;
  rw_sink *s = rw_file_sink_new(file, &e);
  CHECK(s != NULL);
  CHECK(mkfifo(file, 0600) == 0);
  e = s->ops->begin(s, ctx);
  CHECK(e && rw_error_is(e, RW_E_INVALID));
  rw_error_unref(e);
  unlink(file);
  CHECK(s->ops->begin(s, ctx) == NULL);
  CHECK(mkfifo(file, 0600) == 0);
  unsigned char bytes[100] = {1, 2, 3};
  struct iovec v = {bytes, sizeof bytes};
  rw_sink_put fin = {.offset = 0, .iov = &v, .iovcnt = 1, .len = sizeof bytes, .final = true};
  rw_sink_result r = {0};
  e = s->ops->put(s, ctx, &fin, &r);
  CHECK(e && rw_error_is(e, RW_E_INVALID));
  rw_error_unref(e);
  struct stat st;
  CHECK(lstat(file, &st) == 0 && S_ISFIFO(st.st_mode));
  CHECK_EQ_INT(count_tmp(dir), 1);
  CHECK(s->ops->abort(s, ctx) == NULL);
  CHECK_EQ_INT(count_tmp(dir), 0);
  CHECK(lstat(file, &st) == 0 && S_ISFIFO(st.st_mode));
  rw_sink_destroy(s);
  rw_ctx_unref(ctx);
  remove_dir(dir);
  free(dir), free(fifo), free(sock), free(sub), free(dev), free(file), free(link);
}

/* A symlink target: the file it points to is replaced, the link stays. */
static void test_file_sink_symlink(void) {
  char *dir = tmp_dir();
  char *real = in_dir(dir, "real.bin"), *link = in_dir(dir, "link.bin");
  unsigned char *old = random_bytes(1000), *data = random_bytes(5000);
  write_file(real, old, 1000);
  CHECK(symlink("real.bin", link) == 0); /* relative, as users make them */
  rw_ctx *ctx = rw_ctx_background();
  rw_error *e = NULL;
  rw_sink *s = rw_file_sink_new(link, &e);
  CHECK(s && !e);
  CHECK(s->ops->begin(s, ctx) == NULL);
  rw_sink_sums sums = sums_of(data, 5000);
  rw_sink_result r = {0};
  CHECK(upload_plain(s, ctx, data, 5000, &sums, 1024, &r) == NULL);
  CHECK(r.finalized && r.obj.name && strcmp(r.obj.name, link) == 0);
  rw_sink_result_clear(&r);
  rw_sink_destroy(s);
  struct stat st;
  CHECK(lstat(link, &st) == 0 && S_ISLNK(st.st_mode));
  CHECK(file_equals(real, data, 5000));
  CHECK(file_equals(link, data, 5000));
  CHECK_EQ_INT(count_tmp(dir), 0);
  rw_ctx_unref(ctx);
  remove_dir(dir);
  free(dir), free(real), free(link), free(old), free(data);
}

typedef struct poller {
  const char *path;
  const unsigned char *a, *b; /* old and new contents */
  size_t na, nb;
  atomic_bool stop;
  atomic_int reads, partial;
} poller;

/* Reads the target again and again: every read must be old or new whole. */
static void *poll_target(void *arg) {
  poller *p = arg;
  size_t cap = (p->na > p->nb ? p->na : p->nb) + 1;
  unsigned char *buf = malloc(cap);
  while (!atomic_load(&p->stop)) {
    FILE *f = fopen(p->path, "rb");
    if (!f) {
      p->partial++; /* the target must never be missing */
      continue;
    }
    size_t n = fread(buf, 1, cap, f);
    fclose(f);
    bool old = n == p->na && memcmp(buf, p->a, n) == 0, now = n == p->nb && memcmp(buf, p->b, n) == 0;
    if (!old && !now) p->partial++;
    p->reads++;
  }
  free(buf);
  return NULL;
}

/* An existing target: not truncated at the first chunk, intact after a
 * failed, aborted or dropped upload, replaced whole by a completed one. */
static void test_file_sink_atomic(void) {
  char *dir = tmp_dir();
  char *path = in_dir(dir, "target.bin");
  size_t na = 200000 + rnd() % 1000, nb = 3000000 + rnd() % 100000;
  unsigned char *old = random_bytes(na), *data = random_bytes(nb);
  write_file(path, old, na);
  CHECK(chmod(path, 0640) == 0);
  rw_ctx *ctx = rw_ctx_background();
  rw_error *e = NULL;
  struct iovec v[8];
  rw_sink_result r = {0};

  /* aborted after two chunks; then dropped (destroy, as __gc does) */
  for (int how = 0; how < 2; how++) {
    rw_sink *s = rw_file_sink_new(path, &e);
    CHECK(s->ops->begin(s, ctx) == NULL);
    for (uint64_t at = 0; at < 2 * 65536; at += 65536) {
      rw_sink_put p = {.offset = at, .iov = v, .len = 65536};
      p.iovcnt = split_iov(data, at, 65536, v);
      CHECK(s->ops->put(s, ctx, &p, &r) == NULL);
      CHECK(file_equals(path, old, na)); /* not truncated at the first chunk */
    }
    if (how == 0) CHECK(s->ops->abort(s, ctx) == NULL);
    rw_sink_destroy(s);
    CHECK(file_equals(path, old, na));
    CHECK_EQ_INT(count_tmp(dir), 0);
  }

  /* a final put whose bytes do not match the sums: the target stays */
  rw_sink *s = rw_file_sink_new(path, &e);
  CHECK(s->ops->begin(s, ctx) == NULL);
  rw_sink_sums bad = sums_of(data, nb);
  bad.crc32c ^= 1;
  e = upload_plain(s, ctx, data, nb, &bad, 262144, &r);
  CHECK(e && rw_error_is(e, RW_E_CHECKSUM));
  rw_error_unref(e);
  CHECK(file_equals(path, old, na));
  rw_sink_destroy(s);
  CHECK_EQ_INT(count_tmp(dir), 0);

  /* completed, while a thread reads the target all along */
  poller pl = {.path = path, .a = old, .b = data, .na = na, .nb = nb};
  atomic_init(&pl.stop, false);
  atomic_init(&pl.reads, 0);
  atomic_init(&pl.partial, 0);
  pthread_t th;
  CHECK(pthread_create(&th, NULL, poll_target, &pl) == 0);
  s = rw_file_sink_new(path, &e);
  CHECK(s->ops->begin(s, ctx) == NULL);
  rw_sink_sums sums = sums_of(data, nb);
  e = upload_plain(s, ctx, data, nb, &sums, 65536, &r);
  CHECK(e == NULL);
  rw_error_unref(e);
  CHECK(r.finalized && r.obj.size == nb);
  rw_sink_result_clear(&r);
  rw_sink_destroy(s);
  for (int i = 0; i < 1000 && atomic_load(&pl.reads) < 20; i++) usleep(1000);
  atomic_store(&pl.stop, true);
  pthread_join(th, NULL);
  fprintf(stderr, "reader: %d reads, %d partial\n", atomic_load(&pl.reads), atomic_load(&pl.partial));
  CHECK(atomic_load(&pl.reads) > 0);
  CHECK_EQ_INT(atomic_load(&pl.partial), 0);
  CHECK(file_equals(path, data, nb));
  struct stat st;
  CHECK(stat(path, &st) == 0 && (st.st_mode & 07777) == 0640); /* the target's mode is kept */
  CHECK_EQ_INT(count_tmp(dir), 0);
  rw_ctx_unref(ctx);
  remove_dir(dir);
  free(dir), free(path), free(old), free(data);
}

/* ---------------- faulty sink ---------------- */

/* A small retry loop like the writer's: put from persisted, query on error. */
static rw_error *upload_with_retries(rw_sink *s, rw_ctx *ctx, const unsigned char *data, size_t n,
                                     uint64_t align, int *failures, rw_sink_result *last) {
  uint64_t at = 0;
  struct iovec iov[8];
  for (int attempt = 0; attempt < 10000; attempt++) {
    uint64_t len = n - at, chunk = align * 4;
    bool final = len <= chunk;
    if (!final) len = chunk;
    rw_sink_put p = {.offset = at, .iov = iov, .len = len, .final = final};
    p.iovcnt = split_iov(data, at, len, iov);
    rw_sink_result_clear(last);
    rw_error *e = s->ops->put(s, ctx, &p, last);
    if (!e && final) return NULL;
    if (!e) {
      at = last->persisted;
      continue;
    }
    if (!rw_error_retryable(e)) return e;
    rw_error_unref(e);
    (*failures)++;
    rw_sink_result q = {0};
    while ((e = s->ops->query(s, ctx, &q))) {
      rw_error_unref(e);
      (*failures)++;
    }
    if (q.persisted < at) return rw_err(RW_E_INTERNAL, "persisted went back");
    at = q.persisted;
    rw_sink_result_clear(&q);
  }
  return rw_err(RW_E_INTERNAL, "too many attempts");
}

static void run_faulty(uint64_t seed, const char *path, const unsigned char *data, size_t n,
                       rw_faulty_counters *counters, rw_faulty_stats *out) {
  static const char *const codes[] = {"net.reset", "http.503", "net.stall"};
  rw_ctx *ctx = rw_ctx_background();
  rw_error *e = NULL;
  rw_sink *inner = rw_file_sink_new(path, &e);
  rw_faulty_config fc = {.seed = seed, .p_error = 0.4, .codes = codes, .ncodes = 3,
                         .p_partial = 0.3, .p_after = 0.3, .partial_align = 1024,
                         .counters = counters};
  rw_sink *s = rw_faulty_sink_new(inner, &fc, &e);
  CHECK(s && !e);
  CHECK(strcmp(s->ops->kind, "faulty") == 0);
  CHECK(strcmp(s->ops->session(s), path) == 0);
  CHECK(s->ops->begin(s, ctx) == NULL);
  rw_sink_result r = {0};
  int failures = 0;
  unsigned saved = rng_state; /* the split points must not change the faults */
  e = upload_with_retries(s, ctx, data, n, 1024, &failures, &r);
  rng_state = saved;
  if (e) fprintf(stderr, "faulty upload: %s (%s)\n", rw_error_message(e), rw_error_code(e));
  CHECK(e == NULL);
  rw_error_unref(e);
  CHECK(r.finalized && r.obj.size == n);
  CHECK(file_equals(path, data, n));
  rw_sink_result_clear(&r);
  rw_faulty_sink_stats(s, out);
  CHECK_EQ_INT(out->injected, failures);
  rw_sink_destroy(s);
  rw_ctx_unref(ctx);
}

static void test_faulty_sink(void) {
  char *path = tmp_path("faulty");
  size_t n = 200000 + rnd() % 50000;
  unsigned char *data = random_bytes(n);
  uint64_t seed = rnd();
  fprintf(stderr, "faulty seed=%llu\n", (unsigned long long)seed);
  rw_faulty_counters *counters = rw_faulty_counters_new();
  rw_faulty_stats a, b, total;
  run_faulty(seed, path, data, n, counters, &a);
  run_faulty(seed, path, data, n, counters, &b);
  CHECK(a.injected > 0 && a.partial > 0 && a.after > 0);
  CHECK(memcmp(&a, &b, sizeof a) == 0); /* deterministic from the seed */
  rw_faulty_counters_read(counters, &total);
  CHECK_EQ_INT(total.injected, a.injected * 2);
  CHECK_EQ_INT(total.puts, a.puts * 2);
  rw_faulty_counters_unref(counters);

  /* HTTP codes come out as HTTP errors with their status. */
  static const char *const only503[] = {"http.503"};
  rw_error *e = NULL;
  rw_faulty_config fc = {.seed = 1, .p_error = 1, .codes = only503, .ncodes = 1};
  rw_sink *s = rw_faulty_sink_new(rw_file_sink_new(path, &e), &fc, &e);
  rw_ctx *ctx = rw_ctx_background();
  rw_sink_result r;
  e = s->ops->query(s, ctx, &r);
  CHECK(e && rw_error_status(e) == 503 && rw_error_is(e, "http.503") && rw_error_retryable(e));
  rw_error_unref(e);
  rw_sink_destroy(s);
  /* Bad config: rejected, inner released (ASan would see a leak otherwise). */
  fc.p_error = 2;
  CHECK(rw_faulty_sink_new(rw_file_sink_new(path, &e), &fc, &e) == NULL && e);
  rw_error_unref(e);
  rw_ctx_unref(ctx);
  unlink(path);
  free(path);
  free(data);
}

/* ---------------- a scripted resumable-upload server ---------------- */

typedef struct mini {
  struct MHD_Daemon *d;
  char url[64];
  pthread_mutex_t mu;
  unsigned char *data;
  uint64_t cap, persisted;
  bool finalized;
  int fail_status;        /* next request answers this (0: none) */
  char fail_body[256];
  int stall_ms;           /* pause on each body piece */
  atomic_int stopping;
  int connections;
  char last_range[128], last_hash[128], last_test_id[64], last_auth[128];
  char last_method[8], last_url[512];
  char name[256]; /* the object named by the initiating POST */
} mini;

typedef struct mini_req {
  bool put_data;
  uint64_t start;  /* first byte of the body */
  uint64_t got;
  bool bad;
} mini_req;

static void copy_header(struct MHD_Connection *c, const char *name, char *dst, size_t n) {
  const char *v = MHD_lookup_connection_value(c, MHD_HEADER_KIND, name);
  snprintf(dst, n, "%s", v ? v : "");
}

static enum MHD_Result reply(struct MHD_Connection *c, int status, const char *body,
                             const char *hname, const char *hvalue) {
  struct MHD_Response *r =
      MHD_create_response_from_buffer(strlen(body), (void *)body, MHD_RESPMEM_MUST_COPY);
  if (hname) MHD_add_response_header(r, hname, hvalue);
  enum MHD_Result ret = MHD_queue_response(c, (unsigned)status, r);
  MHD_destroy_response(r);
  return ret;
}

static enum MHD_Result reply_object(mini *m, struct MHD_Connection *c) {
  char crc[9], body[768];
  rw_crc32c_base64(rw_crc32c(0, m->data, m->persisted), crc);
  snprintf(body, sizeof body,
           "{\"kind\":\"storage#object\",\"bucket\":\"bkt\",\"name\":\"%s\",\"size\":\"%llu\","
           "\"generation\":\"1700000000000001\",\"crc32c\":\"%s\"}",
           m->name, (unsigned long long)m->persisted, crc);
  return reply(c, 200, body, "Content-Type", "application/json");
}

static enum MHD_Result reply_status(mini *m, struct MHD_Connection *c) {
  if (m->finalized) return reply_object(m, c);
  char range[64];
  snprintf(range, sizeof range, "bytes=0-%llu", (unsigned long long)m->persisted - 1);
  return reply(c, 308, "", m->persisted ? "Range" : NULL, range);
}

static void store(mini *m, mini_req *q, const char *p, size_t n) {
  uint64_t at = q->start + q->got;
  if (at + n > m->cap) {
    m->cap = (at + n) * 2;
    m->data = realloc(m->data, m->cap);
  }
  if (at <= m->persisted) {
    memcpy(m->data + at, p, n);
    if (at + n > m->persisted) m->persisted = at + n;
  }
  q->got += n;
}

static void pause_ms(mini *m, int ms) {
  for (int i = 0; i < ms && !atomic_load(&m->stopping); i += 5) usleep(5000);
}

static enum MHD_Result on_put_end(mini *m, struct MHD_Connection *c, mini_req *q) {
  unsigned long long a, b, total;
  const char *cr = m->last_range;
  if (sscanf(cr, "bytes */%llu", &total) == 1 || sscanf(cr, "bytes %llu-%llu/%llu", &a, &b, &total) == 3) {
    if (m->persisted == total) m->finalized = true;
  }
  return reply_status(m, c);
}

static enum MHD_Result handler(void *cls, struct MHD_Connection *c, const char *url,
                               const char *method, const char *version, const char *upload_data,
                               size_t *upload_size, void **con_cls) {
  mini *m = cls;
  mini_req *q = *con_cls;
  if (!q) {
    q = calloc(1, sizeof *q);
    *con_cls = q;
    pthread_mutex_lock(&m->mu);
    snprintf(m->last_method, sizeof m->last_method, "%s", method);
    snprintf(m->last_url, sizeof m->last_url, "%s", url);
    copy_header(c, "Content-Range", m->last_range, sizeof m->last_range);
    copy_header(c, "X-Goog-Hash", m->last_hash, sizeof m->last_hash);
    copy_header(c, "x-retry-test-id", m->last_test_id, sizeof m->last_test_id);
    copy_header(c, "Authorization", m->last_auth, sizeof m->last_auth);
    unsigned long long a;
    if (strcmp(method, "PUT") == 0 && sscanf(m->last_range, "bytes %llu-", &a) == 1) {
      q->put_data = true;
      q->start = a;
    }
    pthread_mutex_unlock(&m->mu);
    return MHD_YES;
  }
  if (*upload_size) {
    pause_ms(m, m->stall_ms);
    pthread_mutex_lock(&m->mu);
    if (q->put_data && !m->fail_status) store(m, q, upload_data, *upload_size);
    pthread_mutex_unlock(&m->mu);
    *upload_size = 0;
    return MHD_YES;
  }
  pthread_mutex_lock(&m->mu);
  enum MHD_Result ret;
  if (m->fail_status) {
    ret = reply(c, m->fail_status, m->fail_body, NULL, NULL);
    m->fail_status = 0;
  } else if (strcmp(method, "POST") == 0) {
    const char *name = MHD_lookup_connection_value(c, MHD_GET_ARGUMENT_KIND, "name");
    snprintf(m->name, sizeof m->name, "%s", name ? name : "");
    char loc[128];
    snprintf(loc, sizeof loc, "%s/upload/session/abc", m->url);
    ret = reply(c, 200, "", "Location", loc);
  } else if (strcmp(method, "DELETE") == 0) {
    ret = reply(c, 499, "", NULL, NULL);
  } else {
    ret = on_put_end(m, c, q);
  }
  pthread_mutex_unlock(&m->mu);
  return ret;
}

static void completed(void *cls, struct MHD_Connection *c, void **con_cls,
                      enum MHD_RequestTerminationCode toe) {
  free(*con_cls);
  *con_cls = NULL;
}

static void on_conn(void *cls, struct MHD_Connection *c, void **socket_ctx,
                    enum MHD_ConnectionNotificationCode code) {
  mini *m = cls;
  if (code != MHD_CONNECTION_NOTIFY_STARTED) return;
  pthread_mutex_lock(&m->mu);
  m->connections++;
  pthread_mutex_unlock(&m->mu);
}

static mini *mini_start(void) {
  mini *m = calloc(1, sizeof *m);
  pthread_mutex_init(&m->mu, NULL);
  struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  m->d = MHD_start_daemon(MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_THREAD_PER_CONNECTION, 0, NULL,
                          NULL, handler, m, MHD_OPTION_SOCK_ADDR, &sa, MHD_OPTION_NOTIFY_COMPLETED,
                          completed, m, MHD_OPTION_NOTIFY_CONNECTION, on_conn, m, MHD_OPTION_END);
  if (!m->d) {
    free(m);
    return NULL;
  }
  const union MHD_DaemonInfo *info = MHD_get_daemon_info(m->d, MHD_DAEMON_INFO_BIND_PORT);
  snprintf(m->url, sizeof m->url, "http://127.0.0.1:%u", (unsigned)info->port);
  return m;
}

static void mini_stop(mini *m) {
  atomic_store(&m->stopping, 1);
  MHD_stop_daemon(m->d);
  pthread_mutex_destroy(&m->mu);
  free(m->data);
  free(m);
}

static rw_sink *gcs_for(mini *m, rw_error **e) {
  static const rw_gcs_header hs[] = {{"x-retry-test-id", "t-42"}};
  rw_gcs_config cfg = {.bucket = "bkt", .object = "dir/o bj+1", .endpoint = m->url,
                       .metadata_json = "{\"contentType\":\"application/octet-stream\"}",
                       .has_if_generation_match = true, .if_generation_match = 0,
                       .headers = hs, .nheaders = 1, .token = "tok123"};
  return rw_gcs_sink_new(&cfg, e);
}

static void test_gcs_upload(void) {
  mini *m = mini_start();
  CHECK(m != NULL);
  if (!m) return;
  rw_ctx *ctx = rw_ctx_background();
  rw_error *e = NULL;
  rw_sink *s = gcs_for(m, &e);
  CHECK(s && !e);
  CHECK(strcmp(s->ops->session(s), "") == 0);
  CHECK(s->ops->begin(s, ctx) == NULL);
  CHECK(strstr(m->last_url, "/upload/storage/v1/b/bkt/o") != NULL);
  char want_session[128];
  snprintf(want_session, sizeof want_session, "%s/upload/session/abc", m->url);
  CHECK(strcmp(s->ops->session(s), want_session) == 0);
  CHECK(strcmp(m->last_test_id, "t-42") == 0);
  CHECK(strcmp(m->last_auth, "Bearer tok123") == 0);

  size_t n = 3 * 262144 + rnd() % 262144;
  unsigned char *data = random_bytes(n);
  rw_sink_sums sums = {.has_crc32c = true, .crc32c = rw_crc32c(0, data, n)};
  rw_sink_result r = {0};
  e = upload_plain(s, ctx, data, n, &sums, 262144, &r);
  CHECK(e == NULL);
  rw_error_unref(e);
  CHECK(r.finalized);
  CHECK_EQ_INT(r.obj.size, n);
  char crc[9];
  rw_crc32c_base64(sums.crc32c, crc);
  CHECK(r.obj.crc32c && strcmp(r.obj.crc32c, crc) == 0);
  CHECK(r.obj.generation && strcmp(r.obj.generation, "1700000000000001") == 0);
  CHECK(r.obj.bucket && strcmp(r.obj.bucket, "bkt") == 0);
  CHECK(r.obj.json && strstr(r.obj.json, "storage#object"));
  char want_hash[64];
  snprintf(want_hash, sizeof want_hash, "crc32c=%s", crc);
  CHECK(strcmp(m->last_hash, want_hash) == 0);
  char want_range[64];
  snprintf(want_range, sizeof want_range, "/%llu", (unsigned long long)n);
  CHECK(strstr(m->last_range, want_range) != NULL);
  CHECK_EQ_INT(m->persisted, n);
  CHECK(memcmp(m->data, data, n) == 0);
  rw_sink_result_clear(&r);
  CHECK(s->ops->query(s, ctx, &r) == NULL);
  CHECK(r.finalized && r.obj.size == n);
  CHECK(strcmp(m->last_range, "bytes */*") == 0);
  rw_sink_result_clear(&r);
  CHECK_EQ_INT(m->connections, 1); /* one connection reused for every request */
  rw_sink_destroy(s);
  free(data);
  rw_ctx_unref(ctx);
  mini_stop(m);
}

static void test_gcs_statuses(void) {
  mini *m = mini_start();
  if (!m) return;
  rw_ctx *ctx = rw_ctx_background();
  rw_error *e = NULL;
  /* 412 on the initiating POST. */
  m->fail_status = 412;
  snprintf(m->fail_body, sizeof m->fail_body, "{\"error\":{\"code\":412,\"message\":\"At least one of the pre-conditions you specified did not hold.\"}}");
  rw_sink *s = gcs_for(m, &e);
  e = s->ops->begin(s, ctx);
  CHECK(e && rw_error_is(e, RW_E_PRECONDITION) && rw_error_status(e) == 412);
  CHECK(e && strstr(rw_error_message(e), "pre-conditions") && strstr(rw_error_message(e), "POST "));
  rw_error_unref(e);
  CHECK(s->ops->begin(s, ctx) == NULL);
  /* Query with nothing persisted: 308 without Range -> 0. */
  rw_sink_result r = {0};
  CHECK(s->ops->query(s, ctx, &r) == NULL);
  CHECK(!r.finalized && r.persisted == 0);
  /* A chunk; then a 503 with a JSON message. */
  unsigned char *data = random_bytes(524288);
  struct iovec v = {data, 262144};
  rw_sink_put p = {.offset = 0, .iov = &v, .iovcnt = 1, .len = 262144};
  CHECK(s->ops->put(s, ctx, &p, &r) == NULL);
  CHECK_EQ_INT(r.persisted, 262144);
  m->fail_status = 503;
  snprintf(m->fail_body, sizeof m->fail_body, "{\"error\":{\"code\":503,\"message\":\"Backend Error\"}}");
  struct iovec v2 = {data + 262144, 262144};
  rw_sink_put p2 = {.offset = 262144, .iov = &v2, .iovcnt = 1, .len = 262144};
  e = s->ops->put(s, ctx, &p2, &r);
  CHECK(e && rw_error_is(e, "http.503") && rw_error_retryable(e));
  CHECK(e && strstr(rw_error_message(e), "Backend Error") &&
        strstr(rw_error_message(e), "bytes 262144-524287/*"));
  rw_error_unref(e);
  CHECK(s->ops->query(s, ctx, &r) == NULL);
  CHECK_EQ_INT(r.persisted, 262144);
  /* Abort: DELETE answered 499 is success. */
  CHECK(s->ops->abort(s, ctx) == NULL);
  CHECK(strcmp(m->last_method, "DELETE") == 0);
  /* Resume by session URI (on the endpoint's origin): begin is a no-op, query works. */
  rw_gcs_config rc = {.session_uri = s->ops->session(s), .endpoint = m->url};
  rw_sink *s2 = rw_gcs_sink_new(&rc, &e);
  CHECK(s2 && s2->ops->begin(s2, ctx) == NULL);
  CHECK(s2->ops->query(s2, ctx, &r) == NULL);
  CHECK_EQ_INT(r.persisted, 262144);
  rw_sink_destroy(s2);
  rw_sink_destroy(s);
  /* Missing bucket: invalid config. */
  rw_gcs_config bad = {.object = "o", .endpoint = m->url};
  CHECK(rw_gcs_sink_new(&bad, &e) == NULL && e && rw_error_is(e, RW_E_INVALID));
  rw_error_unref(e);
  free(data);
  rw_ctx_unref(ctx);
  mini_stop(m);
}

typedef struct canceller {
  rw_ctx *ctx;
  double delay, at;
} canceller;
static void *cancel_later(void *arg) {
  canceller *c = arg;
  usleep((useconds_t)(c->delay * 1e6));
  c->at = rw_mono_now();
  rw_ctx_cancel(c->ctx, NULL);
  return NULL;
}

static void test_gcs_cancel_and_stall(void) {
  mini *m = mini_start();
  if (!m) return;
  rw_ctx *root = rw_ctx_background();
  rw_error *e = NULL;
  rw_sink *s = gcs_for(m, &e);
  CHECK(s->ops->begin(s, root) == NULL);
  size_t n = 8 << 20;
  unsigned char *data = random_bytes(n);
  struct iovec v[2] = {{data, n / 2}, {data + n / 2, n / 2}};
  rw_sink_put p = {.offset = 0, .iov = v, .iovcnt = 2, .len = n};
  rw_sink_result r = {0};
  /* Cancel mid-transfer while the server stalls: back within 100 ms. */
  m->stall_ms = 10000;
  rw_ctx *ctx = rw_ctx_with_cancel(root);
  canceller c = {.ctx = ctx, .delay = 0.2};
  pthread_t t;
  pthread_create(&t, NULL, cancel_later, &c);
  e = s->ops->put(s, ctx, &p, &r);
  double back = rw_mono_now();
  pthread_join(t, NULL);
  CHECK(e && rw_error_is(e, RW_E_CANCELED));
  fprintf(stderr, "cancel returned after %.1f ms\n", (back - c.at) * 1e3);
  CHECK(back - c.at < 0.1);
  rw_error_unref(e);
  rw_ctx_unref(ctx);
  /* A deadline ends it the same way. */
  ctx = rw_ctx_with_timeout(root, 0.15);
  double t0 = rw_mono_now();
  e = s->ops->put(s, ctx, &p, &r);
  CHECK(e && rw_error_is(e, RW_E_DEADLINE));
  CHECK(rw_mono_now() - t0 < 0.3);
  rw_error_unref(e);
  rw_ctx_unref(ctx);
  /* Stall detection: nothing moves for 0.3 s. */
  p.stall_timeout = 0.3;
  t0 = rw_mono_now();
  e = s->ops->put(s, root, &p, &r);
  double took = rw_mono_now() - t0;
  CHECK(e && rw_error_is(e, RW_E_STALL) && rw_error_retryable(e));
  CHECK(took >= 0.29 && took < 1.5);
  rw_error_unref(e);
  rw_sink_destroy(s);
  free(data);
  rw_ctx_unref(root);
  mini_stop(m);
}

static void test_gcs_refused(void) {
  /* Bind a port, close it: nothing listens there. */
  mini *m = mini_start();
  if (!m) return;
  char url[64];
  snprintf(url, sizeof url, "%s", m->url);
  mini_stop(m);
  rw_gcs_config cfg = {.bucket = "b", .object = "o", .endpoint = url, .connect_timeout = 2};
  rw_error *e = NULL;
  rw_sink *s = rw_gcs_sink_new(&cfg, &e);
  rw_ctx *ctx = rw_ctx_background();
  e = s->ops->begin(s, ctx);
  CHECK(e && rw_error_is(e, RW_E_NET_REFUSED) && rw_error_retryable(e));
  rw_error_unref(e);
  rw_sink_destroy(s);
  rw_ctx_unref(ctx);
}


/* ---------------- against the fake GCS (csrc/testbed) ---------------- */

/* POST /retry_test {"instructions": {"storage.objects.insert": [what]}} -> id. */
static char *retry_test(const char *url, const char *what) {
  rw_error *e = NULL;
  rw_http *h = rw_http_new(NULL, &e);
  char u[256], body[256];
  snprintf(u, sizeof u, "%s/retry_test", url);
  snprintf(body, sizeof body, "{\"instructions\":{\"storage.objects.insert\":[\"%s\"]}}", what);
  struct iovec v = {body, strlen(body)};
  const char *hs[] = {"Content-Type: application/json", NULL};
  rw_http_request req = {.method = "POST", .url = u, .headers = hs, .iov = &v, .iovcnt = 1, .len = v.iov_len};
  rw_http_response res;
  rw_ctx *ctx = rw_ctx_background();
  e = rw_http_do(h, ctx, &req, &res);
  CHECK(e == NULL && res.status == 200);
  rw_error_unref(e);
  char *id = NULL;
  json_error_t je;
  json_t *j = res.body ? json_loads(res.body, 0, &je) : NULL;
  const char *s = json_string_value(json_object_get(j, "id"));
  if (s) id = strdup(s);
  json_decref(j);
  rw_http_response_clear(&res);
  rw_http_free(h);
  rw_ctx_unref(ctx);
  return id;
}

static rw_sink *fake_sink(rw_fakegcs *f, const char *object, const char *test_id) {
  rw_gcs_header hs[] = {{"x-retry-test-id", test_id}};
  rw_gcs_config cfg = {.bucket = "bkt", .object = object, .endpoint = rw_fakegcs_url(f),
                       .metadata_json = "{\"contentType\":\"application/octet-stream\"}",
                       .has_if_generation_match = true, .if_generation_match = 0,
                       .headers = hs, .nheaders = test_id ? 1 : 0};
  rw_error *e = NULL;
  rw_sink *s = rw_gcs_sink_new(&cfg, &e);
  CHECK(s && !e);
  rw_error_unref(e);
  return s;
}

static void test_fakegcs(void) {
  static const char *const buckets[] = {"bkt", NULL};
  rw_fakegcs_config fc = {.store = RW_FAKEGCS_MEMORY, .buckets = buckets};
  rw_error *e = NULL;
  rw_fakegcs *f = rw_fakegcs_start(&fc, &e);
  CHECK(f && !e);
  if (!f) {
    rw_error_unref(e);
    return;
  }
  rw_ctx *ctx = rw_ctx_background();
  size_t n = 5 * 262144 + rnd() % 262144;
  unsigned char *data = random_bytes(n);
  rw_sink_sums sums = {.has_crc32c = true, .crc32c = rw_crc32c(0, data, n), .has_md5 = true};
  rw_md5 m;
  rw_md5_init(&m);
  rw_md5_update(&m, data, n);
  rw_md5_final(&m, sums.md5);

  /* A whole upload in random 256 KiB-multiple chunks. */
  rw_sink *s = fake_sink(f, "a/b c.bin", NULL);
  CHECK(s->ops->begin(s, ctx) == NULL);
  CHECK(strstr(s->ops->session(s), "upload_id=") != NULL);
  rw_sink_result r = {0};
  CHECK(s->ops->query(s, ctx, &r) == NULL);
  CHECK(!r.finalized && r.persisted == 0);
  e = upload_plain(s, ctx, data, n, &sums, 262144, &r);
  CHECK(e == NULL);
  if (e) fprintf(stderr, "upload: %s\n", rw_error_message(e));
  rw_error_unref(e);
  CHECK(r.finalized && r.obj.size == n);
  char crc[9];
  rw_crc32c_base64(sums.crc32c, crc);
  CHECK(r.obj.crc32c && strcmp(r.obj.crc32c, crc) == 0);
  CHECK(r.obj.name && strcmp(r.obj.name, "a/b c.bin") == 0);
  rw_sink_result_clear(&r);
  rw_fakegcs_object o;
  CHECK(rw_fakegcs_object_get(f, "bkt", "a/b c.bin", &o));
  CHECK(o.size == n && o.data && memcmp(o.data, data, n) == 0 && o.crc32c == sums.crc32c);
  rw_fakegcs_object_free(&o);
  CHECK(s->ops->query(s, ctx, &r) == NULL);
  CHECK(r.finalized);
  rw_sink_result_clear(&r);
  rw_sink_destroy(s);

  /* ifGenerationMatch=0 on an existing object: 412 at once or at the end. */
  s = fake_sink(f, "a/b c.bin", NULL);
  e = s->ops->begin(s, ctx);
  if (!e) {
    e = upload_plain(s, ctx, data, 1000, NULL, 262144, &r);
    rw_sink_result_clear(&r);
  }
  CHECK(e && rw_error_is(e, RW_E_PRECONDITION));
  rw_error_unref(e);
  rw_sink_destroy(s);

  /* return-503-after-256K: the first 256 KiB persist, then 503; query says so. */
  char *id = retry_test(rw_fakegcs_url(f), "return-503-after-256K");
  CHECK(id != NULL);
  s = fake_sink(f, "partial", id);
  e = s->ops->begin(s, ctx);
  CHECK(e == NULL);
  rw_error_unref(e);
  struct iovec iov[8];
  rw_sink_put p = {.offset = 0, .iov = iov, .len = 4 * 262144};
  p.iovcnt = split_iov(data, 0, p.len, iov);
  e = s->ops->put(s, ctx, &p, &r);
  CHECK(e && rw_error_is(e, "http.503") && rw_error_retryable(e));
  rw_error_unref(e);
  CHECK(s->ops->query(s, ctx, &r) == NULL);
  CHECK_EQ_INT(r.persisted, 262144);
  /* Abort: DELETE -> 499; the session is gone afterwards. */
  CHECK(s->ops->abort(s, ctx) == NULL);
  e = s->ops->query(s, ctx, &r);
  CHECK(e != NULL);
  rw_error_unref(e);
  rw_sink_destroy(s);
  free(id);

  /* return-reset-connection: a retryable transport error (net.reset). */
  id = retry_test(rw_fakegcs_url(f), "return-reset-connection");
  s = fake_sink(f, "reset", id);
  e = s->ops->begin(s, ctx);
  if (!e) e = s->ops->put(s, ctx, &p, &r);
  CHECK(e && (rw_error_is(e, RW_E_NET_RESET) || rw_error_is(e, RW_E_NET_EOF)) && rw_error_retryable(e));
  if (e) fprintf(stderr, "reset gave %s: %s\n", rw_error_code(e), rw_error_message(e));
  rw_error_unref(e);
  rw_sink_destroy(s);
  free(id);

  /* Cancel mid-transfer during a stall: back within 100 ms. */
  id = retry_test(rw_fakegcs_url(f), "stall-for-10s-after-256K");
  s = fake_sink(f, "stalled", id);
  CHECK(s->ops->begin(s, ctx) == NULL);
  rw_ctx *c = rw_ctx_with_cancel(ctx);
  canceller cn = {.ctx = c, .delay = 0.3};
  pthread_t t;
  pthread_create(&t, NULL, cancel_later, &cn);
  e = s->ops->put(s, c, &p, &r);
  double back = rw_mono_now();
  pthread_join(t, NULL);
  CHECK(e && rw_error_is(e, RW_E_CANCELED));
  CHECK(back - cn.at < 0.1);
  fprintf(stderr, "fake: cancel returned after %.1f ms\n", (back - cn.at) * 1e3);
  rw_error_unref(e);
  rw_ctx_unref(c);
  rw_sink_destroy(s);
  free(id);
  free(data);
  rw_ctx_unref(ctx);
  rw_fakegcs_stop(f);
}

static void test_endpoint_resolve(void) {
  char *a = rw_gcs_endpoint_resolve("http://127.0.0.1:1/");
  CHECK(strcmp(a, "http://127.0.0.1:1") == 0);
  free(a);
  setenv("STORAGE_EMULATOR_HOST", "127.0.0.1:9023", 1);
  a = rw_gcs_endpoint_resolve(NULL);
  CHECK(strcmp(a, "http://127.0.0.1:9023") == 0);
  free(a);
  unsetenv("STORAGE_EMULATOR_HOST");
  setenv("CLOUD_STORAGE_EMULATOR_ENDPOINT", "http://127.0.0.1:9024/", 1);
  a = rw_gcs_endpoint_resolve(NULL);
  CHECK(strcmp(a, "http://127.0.0.1:9024") == 0);
  free(a);
  setenv("STORAGE_EMULATOR_HOST", "127.0.0.1:9023", 1); /* the first one wins */
  a = rw_gcs_endpoint_resolve(NULL);
  CHECK(strcmp(a, "http://127.0.0.1:9023") == 0);
  free(a);
  unsetenv("STORAGE_EMULATOR_HOST");
  unsetenv("CLOUD_STORAGE_EMULATOR_ENDPOINT");
  a = rw_gcs_endpoint_resolve(NULL);
  CHECK(strcmp(a, "https://storage.googleapis.com") == 0);
  free(a);
  char *x = rw_http_escape("a b/c+d~é");
  CHECK(strcmp(x, "a%20b%2Fc%2Bd~%C3%A9") == 0);
  free(x);
}

int main(void) {
  rng_state = ct_seed();
  RUN(test_file_sink);
  RUN(test_file_sink_refuses_non_files);
  RUN(test_file_sink_symlink);
  RUN(test_file_sink_atomic);
  RUN(test_faulty_sink);
  RUN(test_endpoint_resolve);
  RUN(test_gcs_upload);
  RUN(test_gcs_statuses);
  RUN(test_gcs_cancel_and_stall);
  RUN(test_gcs_refused);
  RUN(test_fakegcs);
  return ct_finish("test_sinks");
}
