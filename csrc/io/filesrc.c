/* A file to upload, read with pread: see filesrc.h. */
#include "filesrc.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/magic.h>
#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/vfs.h>
#include <unistd.h>

#ifndef TRACEFS_MAGIC
#define TRACEFS_MAGIC 0x74726163
#endif
#ifndef BPF_FS_MAGIC
#define BPF_FS_MAGIC 0xcafe4a11
#endif
#ifndef CONFIGFS_MAGIC
#define CONFIGFS_MAGIC 0x62656570
#endif
#ifndef FUSECTL_MAGIC
#define FUSECTL_MAGIC 0x65735543
#endif

#define POOL_IDLE 2

/* Recycled buffers: shared by the source and its buffers (refs), freed with
 * the last of them. */
typedef struct pool {
  pthread_mutex_t mu;
  int refs;
  bool closed;
  int nidle;
  struct piece *idle[POOL_IDLE];
} pool;

typedef struct piece {
  pool *owner;
  size_t cap;
  max_align_t bytes[]; /* cap bytes */
} piece;

struct rw_filesrc {
  int fd;
  char *path;
  struct stat seen; /* at open */
  pool *pool;
};

/* File systems whose regular files are made up on each read: their size says
 * nothing (0 or 4096) and two reads may differ. */
static const struct {
  unsigned long magic;
  const char *name;
} pseudo_fs[] = {
    {PROC_SUPER_MAGIC, "/proc"},     {SYSFS_MAGIC, "sysfs"},
    {DEBUGFS_MAGIC, "debugfs"},      {TRACEFS_MAGIC, "tracefs"},
    {SECURITYFS_MAGIC, "securityfs"}, {CGROUP_SUPER_MAGIC, "cgroup"},
    {CGROUP2_SUPER_MAGIC, "cgroup2"}, {CONFIGFS_MAGIC, "configfs"},
    {BPF_FS_MAGIC, "bpf"},           {PSTOREFS_MAGIC, "pstore"},
    {SELINUX_MAGIC, "selinuxfs"},    {SMACK_MAGIC, "smackfs"},
    {FUSECTL_MAGIC, "fusectl"},
};

static const char *kind_of(mode_t m) {
  if (S_ISDIR(m)) return "a directory";
  if (S_ISFIFO(m)) return "a FIFO (named pipe)";
  if (S_ISSOCK(m)) return "a socket";
  if (S_ISCHR(m)) return "a character device";
  if (S_ISBLK(m)) return "a block device";
  return "not a regular file";
}

static rw_error *open_errno(int e, const char *what, const char *path) {
  if (e == EMFILE || e == ENFILE)
    return rw_err(RW_E_RESOURCE, "write_file: cannot %s '%s': %s", what, path, strerror(e));
  return rw_err(RW_E_IO, "write_file: cannot %s '%s': %s", what, path, strerror(e));
}

static rw_error *not_regular(const char *path, mode_t m) {
  return rw_err(RW_E_INVALID, "write_file: '%s' is %s; only regular files can be uploaded", path,
                kind_of(m));
}

/* The pseudo file system fd lives on, or NULL. */
static const char *pseudo_fs_name(int fd) {
  struct statfs fs;
  if (fstatfs(fd, &fs) != 0) return NULL;
  for (size_t i = 0; i < sizeof pseudo_fs / sizeof pseudo_fs[0]; i++)
    if ((unsigned long)fs.f_type == pseudo_fs[i].magic) return pseudo_fs[i].name;
  return NULL;
}

/* Checks the opened fd: the regular file stat(path) named, on a real fs. */
static rw_error *check_opened(rw_filesrc *s, const struct stat *before) {
  if (fstat(s->fd, &s->seen) != 0) return open_errno(errno, "stat", s->path);
  if (!S_ISREG(s->seen.st_mode)) return not_regular(s->path, s->seen.st_mode);
  if (s->seen.st_ino != before->st_ino || s->seen.st_dev != before->st_dev)
    return rw_err(RW_E_SOURCE_CHANGED, "write_file: '%s' was replaced while it was opened", s->path);
  const char *fs = pseudo_fs_name(s->fd);
  if (fs)
    return rw_err(RW_E_INVALID,
                  "write_file: '%s' is a %s file (its size and bytes are made up on each read); "
                  "only regular files on a real file system can be uploaded",
                  s->path, fs);
  return NULL;
}

rw_filesrc *rw_filesrc_open(const char *path, rw_error **err) {
  *err = NULL;
  struct stat before;
  /* stat first: a FIFO or a device is refused without opening it (opening
   * may block or have side effects) */
  if (stat(path, &before) != 0) {
    *err = open_errno(errno, "open", path);
    return NULL;
  }
  if (!S_ISREG(before.st_mode)) {
    *err = not_regular(path, before.st_mode);
    return NULL;
  }
  rw_filesrc *s = calloc(1, sizeof *s);
  pool *p = calloc(1, sizeof *p);
  if (!s || !p || !(s->path = strdup(path))) {
    free(s);
    free(p);
    *err = rw_err(RW_E_NOMEM, "write_file: out of memory");
    return NULL;
  }
  pthread_mutex_init(&p->mu, NULL);
  p->refs = 1;
  s->pool = p;
  s->fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOCTTY);
  if (s->fd < 0) *err = open_errno(errno, "open", path);
  else *err = check_opened(s, &before);
  if (*err) {
    rw_filesrc_close(s);
    return NULL;
  }
  return s;
}

uint64_t rw_filesrc_size(const rw_filesrc *s) { return (uint64_t)s->seen.st_size; }
const char *rw_filesrc_path(const rw_filesrc *s) { return s->path; }

static bool same_time(struct timespec a, struct timespec b) {
  return a.tv_sec == b.tv_sec && a.tv_nsec == b.tv_nsec;
}

/* What differs between the stat at open and now, or NULL. */
static const char *difference(const struct stat *was, const struct stat *now) {
  if (now->st_ino != was->st_ino || now->st_dev != was->st_dev) return "the path names another file now";
  if (now->st_size < was->st_size) return "it was truncated";
  if (now->st_size != was->st_size) return "its size changed";
  if (!same_time(now->st_mtim, was->st_mtim)) return "it was modified (mtime)";
  if (!same_time(now->st_ctim, was->st_ctim)) return "it was changed (ctime)";
  return NULL;
}

static rw_error *changed(const rw_filesrc *s, uint64_t off, const char *why, const struct stat *now) {
  return rw_err(RW_E_SOURCE_CHANGED,
                "write_file: '%s' changed while its bytes were read at offset %llu: %s "
                "(size %llu when the call began, %llu now)",
                s->path, (unsigned long long)off, why, (unsigned long long)s->seen.st_size,
                (unsigned long long)now->st_size);
}

/* The file and the path still look as they did at open. */
static rw_error *check_unchanged(const rw_filesrc *s, uint64_t off) {
  struct stat now;
  if (fstat(s->fd, &now) != 0) return open_errno(errno, "stat", s->path);
  const char *why = difference(&s->seen, &now);
  if (!why) {
    if (stat(s->path, &now) != 0) return changed(s, off, "the path is gone", &s->seen);
    why = difference(&s->seen, &now);
  }
  return why ? changed(s, off, why, &now) : NULL;
}

rw_error *rw_filesrc_read(rw_filesrc *s, uint64_t off, void *buf, size_t len) {
  if (off > (uint64_t)s->seen.st_size || len > (uint64_t)s->seen.st_size - off)
    return rw_err(RW_E_INVALID, "write_file: [%llu, +%zu) is past the end of '%s' (%llu bytes)",
                  (unsigned long long)off, len, s->path, (unsigned long long)s->seen.st_size);
  size_t got = 0;
  while (got < len) {
    ssize_t r = pread(s->fd, (char *)buf + got, len - got, (off_t)(off + got));
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) return rw_err(RW_E_IO, "write_file: cannot read '%s' at %llu: %s", s->path,
                             (unsigned long long)(off + got), strerror(errno));
    if (r == 0) {
      struct stat now;
      if (fstat(s->fd, &now) != 0) now = s->seen;
      return changed(s, off + got, "it ends early (truncated)", &now);
    }
    got += (size_t)r;
  }
  return check_unchanged(s, off);
}

/* Drops one reference to p (mu not held). */
static void pool_unref(pool *p) {
  pthread_mutex_lock(&p->mu);
  bool last = --p->refs == 0;
  pthread_mutex_unlock(&p->mu);
  if (!last) return;
  pthread_mutex_destroy(&p->mu);
  free(p);
}

void rw_filesrc_close(rw_filesrc *s) {
  if (!s) return;
  if (s->fd >= 0) close(s->fd);
  pool *p = s->pool;
  pthread_mutex_lock(&p->mu);
  p->closed = true;
  piece *idle[POOL_IDLE];
  int n = p->nidle;
  memcpy(idle, p->idle, sizeof idle);
  p->nidle = 0;
  pthread_mutex_unlock(&p->mu);
  for (int i = 0; i < n; i++) free(idle[i]);
  pool_unref(p);
  free(s->path);
  free(s);
}

/* An idle piece that holds len bytes without wasting more than a quarter. */
static piece *take_idle(pool *p, size_t len) {
  for (int i = 0; i < p->nidle; i++) {
    piece *pc = p->idle[i];
    if (pc->cap >= len && pc->cap - len <= pc->cap / 4) {
      p->idle[i] = p->idle[--p->nidle];
      return pc;
    }
  }
  return NULL;
}

void *rw_filesrc_buffer(rw_filesrc *s, size_t len) {
  pool *p = s->pool;
  pthread_mutex_lock(&p->mu);
  piece *pc = take_idle(p, len);
  if (pc) p->refs++;
  pthread_mutex_unlock(&p->mu);
  if (!pc) {
    if (len > SIZE_MAX - sizeof *pc || !(pc = malloc(sizeof *pc + (len ? len : 1)))) return NULL;
    pc->owner = p;
    pc->cap = len;
    pthread_mutex_lock(&p->mu);
    p->refs++;
    pthread_mutex_unlock(&p->mu);
  }
  return pc->bytes;
}

void rw_filesrc_buffer_release(void *buf) {
  if (!buf) return;
  piece *pc = (piece *)((char *)buf - offsetof(piece, bytes));
  pool *p = pc->owner;
  pthread_mutex_lock(&p->mu);
  piece *drop = pc;
  if (!p->closed && p->nidle < POOL_IDLE) {
    p->idle[p->nidle++] = pc;
    drop = NULL;
  }
  pthread_mutex_unlock(&p->mu);
  free(drop);
  pool_unref(p);
}
