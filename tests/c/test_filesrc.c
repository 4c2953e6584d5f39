/* io/filesrc: regular files only; a file that changes while it is read is
 * rw.source_changed, never a crash. Everything in a temp folder. */
#include <errno.h>
#include <fcntl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>

#include "ctest.h"
#include "io/filesrc.h"

static unsigned rng_state;
static unsigned char *random_bytes(size_t n) {
  unsigned char *p = malloc(n ? n : 1);
  for (size_t i = 0; i < n; i++) {
    rng_state = rng_state * 1103515245u + 12345u;
    p[i] = (unsigned char)(rng_state >> 16);
  }
  return p;
}

static char dir[64];
static char *in_dir(const char *name) {
  static char p[128];
  snprintf(p, sizeof p, "%s/%s", dir, name);
  return p;
}

static void put_file(const char *path, const unsigned char *d, size_t n) {
  FILE *f = fopen(path, "wb");
  if (!f || fwrite(d, 1, n, f) != n) abort();
  fclose(f);
}

static void check_open_fails(const char *path, const char *code, const char *words) {
  rw_error *e = NULL;
  rw_filesrc *s = rw_filesrc_open(path, &e);
  CHECK(s == NULL && e && rw_error_is(e, code));
  bool named = e && strstr(rw_error_message(e), path) && strstr(rw_error_message(e), words);
  if (e && !named) fprintf(stderr, "message: %s\n", rw_error_message(e));
  CHECK(named);
  rw_error_unref(e);
  rw_filesrc_close(s);
}

static void test_refuses(void) {
  check_open_fails("/proc/self/status", RW_E_INVALID, "/proc"); /* read only, never written */
  char *p = in_dir("fifo");
  CHECK(mkfifo(p, 0600) == 0);
  check_open_fails(p, RW_E_INVALID, "FIFO");
  check_open_fails(dir, RW_E_INVALID, "directory");
  p = in_dir("sock");
  int fd = socket(AF_UNIX, SOCK_STREAM, 0);
  struct sockaddr_un sa = {.sun_family = AF_UNIX};
  snprintf(sa.sun_path, sizeof sa.sun_path, "%s", p);
  CHECK(fd >= 0 && bind(fd, (struct sockaddr *)&sa, sizeof sa) == 0);
  close(fd);
  check_open_fails(p, RW_E_INVALID, "socket");
  check_open_fails(in_dir("missing"), RW_E_IO, "No such file");
}

static void test_reads_and_changes(void) {
  size_t n = 1000000 + rng_state % 1000;
  unsigned char *data = random_bytes(n), *buf = malloc(n);
  char *p = strdup(in_dir("src")); /* in_dir's buffer is reused below */
  put_file(p, data, n);
  rw_error *e = NULL;
  rw_filesrc *s = rw_filesrc_open(p, &e);
  CHECK(s && !e);
  CHECK_EQ_INT(rw_filesrc_size(s), n);
  CHECK(strcmp(rw_filesrc_path(s), p) == 0);
  CHECK(rw_filesrc_read(s, 0, buf, n) == NULL && memcmp(buf, data, n) == 0);
  CHECK(rw_filesrc_read(s, 1234, buf, 5000) == NULL && memcmp(buf, data + 1234, 5000) == 0);
  e = rw_filesrc_read(s, n - 10, buf, 11); /* past the end */
  CHECK(e && rw_error_is(e, RW_E_INVALID));
  rw_error_unref(e);

  /* truncated to half: the read past the new end is a short read */
  CHECK(truncate(p, (off_t)(n / 2)) == 0);
  e = rw_filesrc_read(s, n / 2 + 100, buf, 100);
  CHECK(e && rw_error_is(e, RW_E_SOURCE_CHANGED) && strstr(rw_error_message(e), p));
  rw_error_unref(e);
  e = rw_filesrc_read(s, 0, buf, 100); /* a read that is whole still sees the change */
  CHECK(e && rw_error_is(e, RW_E_SOURCE_CHANGED) && strstr(rw_error_message(e), "offset 0"));
  rw_error_unref(e);
  rw_filesrc_close(s);

  /* overwritten in place, same size: mtime/ctime */
  put_file(p, data, n);
  s = rw_filesrc_open(p, &e);
  usleep(20000); /* past the file system's timestamp tick */
  int fd = open(p, O_WRONLY);
  CHECK(fd >= 0 && pwrite(fd, "zz", 2, 500) == 2);
  close(fd);
  e = rw_filesrc_read(s, 0, buf, 100);
  CHECK(e && rw_error_is(e, RW_E_SOURCE_CHANGED));
  rw_error_unref(e);
  rw_filesrc_close(s);

  /* replaced by rename: the path names another file */
  put_file(p, data, n);
  s = rw_filesrc_open(p, &e);
  char *q = strdup(in_dir("src.new"));
  put_file(q, data, n);
  CHECK(rename(q, p) == 0);
  e = rw_filesrc_read(s, 0, buf, 100);
  CHECK(e && rw_error_is(e, RW_E_SOURCE_CHANGED)); /* ctime (the old one is unlinked) */
  rw_error_unref(e);
  rw_filesrc_close(s);
  free(q);

  /* an empty regular file is fine */
  put_file(p, data, 0);
  s = rw_filesrc_open(p, &e);
  CHECK(s && rw_filesrc_size(s) == 0 && rw_filesrc_read(s, 0, buf, 0) == NULL);
  rw_filesrc_close(s);
  rw_filesrc_close(NULL);
  free(data);
  free(buf);
  free(p);
}

/* Buffers are recycled while the source is open, and may outlive it. */
static void test_buffers(void) {
  char *p = strdup(in_dir("buf"));
  unsigned char *data = random_bytes(4096);
  put_file(p, data, 4096);
  rw_error *e = NULL;
  rw_filesrc *s = rw_filesrc_open(p, &e);
  CHECK(s != NULL);
  void *a = rw_filesrc_buffer(s, 1 << 20), *b = rw_filesrc_buffer(s, 1 << 20);
  CHECK(a && b && a != b);
  memset(a, 1, 1 << 20);
  memset(b, 2, 1 << 20);
  rw_filesrc_buffer_release(a);
  CHECK(rw_filesrc_buffer(s, (1 << 20) - 1000) == a); /* about the same size: reused */
  void *c = rw_filesrc_buffer(s, 100);                 /* much smaller: a new one */
  CHECK(c && c != a && c != b);
  rw_filesrc_buffer_release(c);
  CHECK(rw_filesrc_read(s, 0, a, 4096) == NULL && memcmp(a, data, 4096) == 0);
  rw_filesrc_close(s); /* a and b are still out: they stay valid */
  CHECK(((unsigned char *)b)[12345] == 2);
  rw_filesrc_buffer_release(a);
  rw_filesrc_buffer_release(b); /* the last reference frees the pool (ASan: no leak) */
  rw_filesrc_buffer_release(NULL);
  free(data);
  free(p);
}

int main(void) {
  rng_state = ct_seed();
  snprintf(dir, sizeof dir, "/tmp/rw_test_filesrc_XXXXXX");
  if (!mkdtemp(dir)) return 2;
  RUN(test_refuses);
  RUN(test_reads_and_changes);
  RUN(test_buffers);
  char cmd[128];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
  if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", dir);
  return ct_finish("test_filesrc");
}
