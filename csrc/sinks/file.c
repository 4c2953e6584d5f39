/* Local file sink: see file.h. */
#include "file.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/checksum.h"

#define MAX_IOV 1024
#define READ_BACK (1u << 20)
#define TMP_NAME_MAX 200 /* bytes of the target's name kept in the temp name */

typedef struct file_sink {
  rw_sink base;
  char *path;   /* as given: the object's name and the session handle */
  char *target; /* what is replaced: path, or where its symlink points */
  char *dir;    /* the target's folder */
  char *tmp;    /* the temporary file, NULL until begin */
  int fd;       /* of tmp, -1 when none */
  uint64_t persisted;
  bool finalized;
  rw_sink_object done; /* after finalization */
} file_sink;

static const rw_sink_ops file_ops;

static rw_error *errno_error(int err, const char *what, const char *path) {
  const char *code = (err == EINTR || err == EAGAIN || err == ENOSPC) ? "io.transient" : RW_E_IO;
  if (err == EMFILE || err == ENFILE) code = RW_E_RESOURCE;
  return rw_err(code, "%s %s: %s", what, path, strerror(err));
}

static const char *kind_of(mode_t m) {
  if (S_ISDIR(m)) return "a directory";
  if (S_ISFIFO(m)) return "a FIFO (named pipe)";
  if (S_ISSOCK(m)) return "a socket";
  if (S_ISCHR(m)) return "a character device";
  if (S_ISBLK(m)) return "a block device";
  if (S_ISLNK(m)) return "a symbolic link";
  return "not a regular file";
}

/* The target as it is now: missing or a regular file; anything else is
 * refused (renaming over it would destroy it). */
static rw_error *check_target(const char *path, const char *target) {
  struct stat st;
  if (lstat(target, &st) != 0) {
    if (errno == ENOENT) return NULL;
    return errno_error(errno, "file sink: stat", target);
  }
  if (S_ISREG(st.st_mode)) return NULL;
  if (strcmp(path, target) == 0)
    return rw_err(RW_E_INVALID, "file sink: '%s' is %s; the file sink only replaces regular files",
                  path, kind_of(st.st_mode));
  return rw_err(RW_E_INVALID,
                "file sink: '%s' points to '%s', which is %s; the file sink only replaces regular files",
                path, target, kind_of(st.st_mode));
}

/* The target for path: path itself, or the file its symlink names. */
static rw_error *resolve(const char *path, char **target) {
  *target = NULL;
  struct stat st;
  if (lstat(path, &st) != 0 || !S_ISLNK(st.st_mode)) {
    *target = strdup(path);
    return *target ? NULL : rw_err(RW_E_NOMEM, "file sink: out of memory");
  }
  char *real = realpath(path, NULL);
  if (!real)
    return rw_err(RW_E_INVALID,
                  "file sink: '%s' is a symbolic link that cannot be followed (%s); pass the path of "
                  "an existing file or of one to create",
                  path, strerror(errno));
  *target = real;
  return NULL;
}

/* The folder of target (malloc'd). */
static char *folder_of(const char *target) {
  char *dir = strdup(target);
  if (!dir) return NULL;
  char *slash = strrchr(dir, '/');
  if (!slash) {
    free(dir);
    return strdup(".");
  }
  if (slash == dir) slash[1] = 0;
  else *slash = 0;
  return dir;
}

/* Fails at construction, not at the first chunk, when the file can never be
 * made: its folder is missing or not writable, or the target is not a file. */
static rw_error *check_new(file_sink *f) {
  const char *base = strrchr(f->target, '/');
  base = base ? base + 1 : f->target;
  if (!*base || strcmp(base, ".") == 0 || strcmp(base, "..") == 0)
    return rw_err(RW_E_INVALID, "file sink: '%s' names a folder, not a file", f->path);
  if (access(f->dir, W_OK | X_OK) != 0) {
    int e = errno;
    return rw_err(e == ENOENT || e == ENOTDIR ? RW_E_INVALID : RW_E_IO,
                  "file sink: cannot create '%s': folder '%s': %s; create the folder or pick another path",
                  f->path, f->dir, strerror(e));
  }
  return check_target(f->path, f->target);
}

static void file_destroy(rw_sink *s);

rw_sink *rw_file_sink_new(const char *path, rw_error **err) {
  *err = NULL;
  if (!path || !*path) {
    *err = rw_err(RW_E_INVALID, "file sink: path is required");
    return NULL;
  }
  file_sink *f = calloc(1, sizeof *f);
  if (!f) {
    *err = rw_err(RW_E_NOMEM, "file sink: out of memory");
    return NULL;
  }
  f->base.ops = &file_ops;
  f->fd = -1;
  if (!(f->path = strdup(path))) *err = rw_err(RW_E_NOMEM, "file sink: out of memory");
  if (!*err) *err = resolve(path, &f->target);
  if (!*err && !(f->dir = folder_of(f->target))) *err = rw_err(RW_E_NOMEM, "file sink: out of memory");
  if (!*err) *err = check_new(f);
  if (*err) {
    file_destroy(&f->base);
    return NULL;
  }
  return &f->base;
}

/* Closes and removes the temporary file (never the target). */
static rw_error *remove_tmp(file_sink *f) {
  if (f->fd >= 0) close(f->fd);
  f->fd = -1;
  rw_error *e = NULL;
  if (f->tmp && unlink(f->tmp) != 0 && errno != ENOENT) e = errno_error(errno, "remove", f->tmp);
  free(f->tmp);
  f->tmp = NULL;
  return e;
}

static void file_destroy(rw_sink *s) {
  file_sink *f = (file_sink *)s;
  rw_error_unref(remove_tmp(f));
  rw_sink_result r = {.obj = f->done};
  rw_sink_result_clear(&r);
  free(f->path);
  free(f->target);
  free(f->dir);
  free(f);
}

/* "<dir>/.<name>.<16 hex>.rwtmp" */
static char *tmp_name(const file_sink *f) {
  uint64_t r = 0;
  if (getrandom(&r, sizeof r, 0) != (ssize_t)sizeof r) r ^= (uint64_t)(uintptr_t)f ^ (uint64_t)rand();
  const char *base = strrchr(f->target, '/');
  base = base ? base + 1 : f->target;
  size_t n = strlen(f->dir) + TMP_NAME_MAX + 40;
  char *p = malloc(n);
  if (p)
    snprintf(p, n, "%s%s.%.*s.%016" PRIx64 ".rwtmp", f->dir,
             strcmp(f->dir, "/") == 0 ? "" : "/", TMP_NAME_MAX, base, r);
  return p;
}

/* The mode the new file gets: the target's when it exists (rename keeps the
 * temp file's), else 0666 & ~umask from open. */
static void copy_mode(file_sink *f) {
  struct stat st;
  if (stat(f->target, &st) == 0 && S_ISREG(st.st_mode)) (void)fchmod(f->fd, st.st_mode & 07777);
}

static rw_error *create_tmp(file_sink *f) {
  for (int tries = 0; tries < 16; tries++) {
    if (!(f->tmp = tmp_name(f))) return rw_err(RW_E_NOMEM, "file sink: out of memory");
    f->fd = open(f->tmp, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0666);
    if (f->fd >= 0) {
      copy_mode(f);
      f->persisted = 0;
      return NULL;
    }
    int e = errno;
    free(f->tmp);
    f->tmp = NULL;
    if (e != EEXIST) return errno_error(e, "file sink: create a temporary file in", f->dir);
  }
  return rw_err(RW_E_IO, "file sink: no free temporary file name in '%s'", f->dir);
}

static rw_error *file_begin(rw_sink *s, rw_ctx *ctx) {
  file_sink *f = (file_sink *)s;
  rw_error *e = rw_ctx_err(ctx);
  if (!e && f->finalized) e = rw_err(RW_E_INVALID, "file sink: '%s' is already written", f->path);
  if (!e) e = check_target(f->path, f->target);
  if (!e) e = remove_tmp(f); /* a begin after a failed one starts afresh */
  return e ? e : create_tmp(f);
}

static rw_error *no_session(const file_sink *f) {
  return rw_err("rw.unsupported",
                "file sink: no upload to '%s' is open here; an upload to a file cannot be resumed "
                "(start a new one)",
                f->path);
}

/* Writes iov (starting skip bytes in) at off; short writes are continued. */
static rw_error *write_all(file_sink *f, rw_ctx *ctx, const rw_sink_put *p) {
  int i = 0;
  size_t in = 0; /* offset inside iov[i] */
  uint64_t off = p->offset;
  struct iovec win[MAX_IOV];
  while (i < p->iovcnt) {
    rw_error *e = rw_ctx_err(ctx);
    if (e) return e;
    int n = 0;
    for (int k = i; k < p->iovcnt && n < MAX_IOV; k++, n++) {
      size_t skip = k == i ? in : 0;
      win[n].iov_base = (char *)p->iov[k].iov_base + skip;
      win[n].iov_len = p->iov[k].iov_len - skip;
    }
    ssize_t w = pwritev(f->fd, win, n, (off_t)off);
    if (w < 0) return errno_error(errno, "write", f->tmp);
    if (w == 0 && win[0].iov_len) return errno_error(EIO, "write", f->tmp);
    off += (uint64_t)w;
    if (off > f->persisted) f->persisted = off;
    if (w && p->on_sent) p->on_sent(p->ud, (uint64_t)w);
    size_t left = (size_t)w;
    while (i < p->iovcnt && left >= p->iov[i].iov_len - in) {
      left -= p->iov[i].iov_len - in;
      i++;
      in = 0;
    }
    in += left;
  }
  return NULL;
}

/* Reads the file back: crc32c always, md5 when asked. */
static rw_error *read_back(file_sink *f, rw_ctx *ctx, uint64_t total, uint32_t *crc, rw_md5 *md5) {
  unsigned char *buf = malloc(READ_BACK);
  if (!buf) return rw_err(RW_E_NOMEM, "file sink: out of memory");
  rw_error *e = NULL;
  uint64_t at = 0;
  *crc = 0;
  while (!e && at < total) {
    if ((e = rw_ctx_err(ctx))) break;
    size_t want = total - at < READ_BACK ? (size_t)(total - at) : READ_BACK;
    ssize_t r = pread(f->fd, buf, want, (off_t)at);
    if (r < 0) e = errno_error(errno, "read back", f->tmp);
    else if (r == 0) e = rw_err(RW_E_IO, "read back %s: the file ends at %llu, not %llu", f->tmp,
                                (unsigned long long)at, (unsigned long long)total);
    else {
      *crc = rw_crc32c(*crc, buf, (size_t)r);
      if (md5) rw_md5_update(md5, buf, (size_t)r);
      at += (uint64_t)r;
    }
  }
  free(buf);
  return e;
}

/* The object described by what is on disk; checked against the sums sent. */
static rw_error *describe(file_sink *f, rw_ctx *ctx, const rw_sink_put *p, uint64_t total) {
  bool want_md5 = p->sums && p->sums->has_md5;
  rw_md5 md5 = {0};
  if (want_md5 && !rw_md5_init(&md5)) return rw_err(RW_E_NOMEM, "md5 init failed");
  uint32_t crc = 0;
  unsigned char d[16] = {0};
  rw_error *e = read_back(f, ctx, total, &crc, want_md5 ? &md5 : NULL);
  if (want_md5) rw_md5_final(&md5, d);
  rw_md5_free(&md5);
  if (e) return e;
  if (p->sums && p->sums->has_crc32c && p->sums->crc32c != crc)
    return rw_err(RW_E_CHECKSUM, "file sink: %s holds bytes whose crc32c differs from what was sent; "
                  "'%s' was left as it was", f->tmp, f->path);
  if (want_md5 && memcmp(d, p->sums->md5, 16) != 0)
    return rw_err(RW_E_CHECKSUM, "file sink: %s holds bytes whose md5 differs from what was sent; "
                  "'%s' was left as it was", f->tmp, f->path);
  rw_sink_object *o = &f->done;
  char b64[25];
  rw_crc32c_base64(crc, b64);
  o->crc32c = strdup(b64);
  if (want_md5) {
    rw_md5_base64(d, b64);
    o->md5 = strdup(b64);
  }
  o->name = strdup(f->path);
  o->bucket = strdup("");
  o->generation = strdup("1");
  o->size = total;
  if (!o->crc32c || !o->name || !o->bucket || !o->generation || (want_md5 && !o->md5))
    return rw_err(RW_E_NOMEM, "file sink: out of memory");
  return NULL;
}

static rw_error *sync_folder(file_sink *f) {
  int dfd = open(f->dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd < 0) return errno_error(errno, "open folder", f->dir);
  rw_error *e = fsync(dfd) != 0 && errno != EINVAL ? errno_error(errno, "fsync folder", f->dir) : NULL;
  close(dfd);
  return e;
}

/* Makes the temporary file the target: truncate, fsync, verify, rename,
 * fsync the folder. */
static rw_error *finalize(file_sink *f, rw_ctx *ctx, const rw_sink_put *p) {
  uint64_t total = p->offset + p->len;
  if (ftruncate(f->fd, (off_t)total) != 0) return errno_error(errno, "truncate", f->tmp);
  if (fsync(f->fd) != 0) return errno_error(errno, "fsync", f->tmp);
  f->persisted = total;
  rw_sink_result r = {.obj = f->done};
  rw_sink_result_clear(&r);
  memset(&f->done, 0, sizeof f->done);
  rw_error *e = describe(f, ctx, p, total);
  if (!e) e = rw_ctx_err(ctx);
  if (!e) e = check_target(f->path, f->target);
  if (e) return e;
  if (rename(f->tmp, f->target) != 0) return errno_error(errno, "rename over the target", f->target);
  free(f->tmp);
  f->tmp = NULL;
  close(f->fd);
  f->fd = -1;
  f->finalized = true;
  return sync_folder(f);
}

/* A copy of the finished object into res. */
static rw_error *report_done(file_sink *f, rw_sink_result *res) {
  const rw_sink_object *d = &f->done;
  rw_sink_object *o = &res->obj;
  o->size = d->size;
  o->crc32c = strdup(d->crc32c);
  o->md5 = d->md5 ? strdup(d->md5) : NULL;
  o->name = strdup(d->name);
  o->bucket = strdup(d->bucket);
  o->generation = strdup(d->generation);
  res->persisted = d->size;
  res->finalized = true;
  if (!o->crc32c || !o->name || !o->bucket || !o->generation || (d->md5 && !o->md5))
    return rw_err(RW_E_NOMEM, "file sink: out of memory");
  return NULL;
}

/* A put after the rename: the same final put again (its reply was lost) gets
 * the object; anything else is a conflict. */
static rw_error *put_after_done(file_sink *f, const rw_sink_put *p, rw_sink_result *res) {
  if (p->final && p->offset + p->len == f->done.size) return report_done(f, res);
  return rw_err(RW_E_SESSION_CONFLICT, "file sink: '%s' is already written (%" PRIu64 " bytes)",
                f->path, f->done.size);
}

static rw_error *file_put(rw_sink *s, rw_ctx *ctx, const rw_sink_put *p, rw_sink_result *res) {
  file_sink *f = (file_sink *)s;
  memset(res, 0, sizeof *res);
  rw_error *e = rw_ctx_err(ctx);
  if (!e && f->finalized) e = put_after_done(f, p, res);
  else if (!e && f->fd < 0) e = no_session(f);
  else if (!e && p->offset > f->persisted)
    e = rw_err(RW_E_GAP, "file %s: put at %llu but only %llu bytes are written", f->path,
               (unsigned long long)p->offset, (unsigned long long)f->persisted);
  else if (!e) {
    e = write_all(f, ctx, p);
    if (!e && p->final) e = finalize(f, ctx, p);
    if (!e && p->final) e = report_done(f, res);
  }
  if (e) {
    rw_sink_result_clear(res);
    return e;
  }
  if (!res->finalized) res->persisted = f->persisted;
  return NULL;
}

static rw_error *file_query(rw_sink *s, rw_ctx *ctx, rw_sink_result *res) {
  file_sink *f = (file_sink *)s;
  memset(res, 0, sizeof *res);
  rw_error *e = rw_ctx_err(ctx);
  if (!e && f->finalized) e = report_done(f, res);
  else if (!e && f->fd < 0) e = no_session(f);
  if (e) {
    rw_sink_result_clear(res);
    return e;
  }
  if (!res->finalized) res->persisted = f->persisted;
  return NULL;
}

static rw_error *file_abort(rw_sink *s, rw_ctx *ctx) {
  (void)ctx;
  return remove_tmp((file_sink *)s);
}

static const char *file_session(rw_sink *s) { return ((file_sink *)s)->path; }

static const rw_sink_ops file_ops = {
    .kind = "file",
    .begin = file_begin,
    .put = file_put,
    .query = file_query,
    .abort = file_abort,
    .session = file_session,
    .destroy = file_destroy,
};
