/* Local file sink: see file.h. */
#include "file.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/checksum.h"

#define MAX_IOV 1024
#define READ_BACK (1u << 20)

typedef struct file_sink {
  rw_sink base;
  char *path;
  int fd;           /* -1 until opened */
  uint64_t persisted;
  bool finalized;
} file_sink;

static const rw_sink_ops file_ops;

static rw_error *errno_error(int err, const char *what, const char *path) {
  const char *code = (err == EINTR || err == EAGAIN || err == ENOSPC) ? "io.transient" : RW_E_IO;
  return rw_err(code, "%s %s: %s", what, path, strerror(err));
}

rw_sink *rw_file_sink_new(const char *path, rw_error **err) {
  if (!path || !*path) {
    *err = rw_err(RW_E_INVALID, "file sink: path is required");
    return NULL;
  }
  file_sink *f = calloc(1, sizeof *f);
  char *p = strdup(path);
  if (!f || !p) {
    free(f);
    free(p);
    *err = rw_err(RW_E_NOMEM, "file sink: out of memory");
    return NULL;
  }
  /* Fail at construction, not at the first chunk, when the file can never be
   * made: its folder is missing or not writable. The file itself is created
   * (and truncated) by begin, when the upload starts. */
  char *dir = strdup(path), *slash = dir ? strrchr(dir, '/') : NULL;
  const char *d = !slash ? "." : slash == dir ? "/" : (*slash = 0, dir);
  if (dir && access(d, W_OK | X_OK) != 0) {
    int e = errno;
    *err = rw_err(e == ENOENT || e == ENOTDIR ? RW_E_INVALID : RW_E_IO,
                  "file sink: cannot create '%s': folder '%s': %s; create the folder or pick another path",
                  path, d, strerror(e));
    free(dir);
    free(f);
    free(p);
    return NULL;
  }
  free(dir);
  f->base.ops = &file_ops;
  f->path = p;
  f->fd = -1;
  return &f->base;
}

static void file_destroy(rw_sink *s) {
  file_sink *f = (file_sink *)s;
  if (f->fd >= 0) close(f->fd);
  free(f->path);
  free(f);
}

static rw_error *open_file(file_sink *f, bool truncate) {
  if (f->fd >= 0 && !truncate) return NULL;
  if (f->fd >= 0) close(f->fd);
  f->fd = open(f->path, O_RDWR | O_CREAT | O_CLOEXEC | (truncate ? O_TRUNC : 0), 0644);
  if (f->fd < 0) return errno_error(errno, "open", f->path);
  struct stat st;
  if (fstat(f->fd, &st) != 0) return errno_error(errno, "stat", f->path);
  f->persisted = (uint64_t)st.st_size;
  f->finalized = false;
  return NULL;
}

static rw_error *file_begin(rw_sink *s, rw_ctx *ctx) {
  rw_error *e = rw_ctx_err(ctx);
  return e ? e : open_file((file_sink *)s, true);
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
    if (w < 0) return errno_error(errno, "write", f->path);
    if (w == 0 && win[0].iov_len) return errno_error(EIO, "write", f->path);
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
    if (r < 0) e = errno_error(errno, "read back", f->path);
    else if (r == 0) e = rw_err(RW_E_IO, "read back %s: the file ends at %llu, not %llu", f->path,
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

static rw_error *finalize(file_sink *f, rw_ctx *ctx, const rw_sink_put *p, rw_sink_result *res) {
  uint64_t total = p->offset + p->len;
  if (ftruncate(f->fd, (off_t)total) != 0) return errno_error(errno, "truncate", f->path);
  if (fsync(f->fd) != 0) return errno_error(errno, "fsync", f->path);
  f->persisted = total;
  bool want_md5 = p->sums && p->sums->has_md5;
  rw_md5 md5 = {0};
  if (want_md5 && !rw_md5_init(&md5)) return rw_err(RW_E_NOMEM, "md5 init failed");
  uint32_t crc = 0;
  rw_error *e = read_back(f, ctx, total, &crc, want_md5 ? &md5 : NULL);
  if (e) {
    rw_md5_free(&md5);
    return e;
  }
  rw_sink_object *o = &res->obj;
  o->size = total;
  char b64[25];
  rw_crc32c_base64(crc, b64);
  o->crc32c = strdup(b64);
  if (want_md5) {
    unsigned char d[16];
    rw_md5_final(&md5, d);
    rw_md5_base64(d, b64);
    o->md5 = strdup(b64);
  }
  o->name = strdup(f->path);
  o->bucket = strdup("");
  o->generation = strdup("1");
  res->finalized = true;
  f->finalized = true;
  return NULL;
}

static rw_error *file_put(rw_sink *s, rw_ctx *ctx, const rw_sink_put *p, rw_sink_result *res) {
  file_sink *f = (file_sink *)s;
  memset(res, 0, sizeof *res);
  rw_error *e = rw_ctx_err(ctx);
  if (!e) e = open_file(f, false);
  if (!e && p->offset > f->persisted)
    e = rw_err(RW_E_GAP, "file %s: put at %llu but only %llu bytes are written", f->path,
               (unsigned long long)p->offset, (unsigned long long)f->persisted);
  if (!e) e = write_all(f, ctx, p);
  if (!e && p->final) e = finalize(f, ctx, p, res);
  if (e) {
    rw_sink_result_clear(res);
    return e;
  }
  res->persisted = f->persisted;
  return NULL;
}

static rw_error *file_query(rw_sink *s, rw_ctx *ctx, rw_sink_result *res) {
  file_sink *f = (file_sink *)s;
  memset(res, 0, sizeof *res);
  rw_error *e = rw_ctx_err(ctx);
  if (!e) e = open_file(f, false);
  if (e) return e;
  res->persisted = f->persisted;
  return NULL;
}

static rw_error *file_abort(rw_sink *s, rw_ctx *ctx) {
  file_sink *f = (file_sink *)s;
  if (f->fd < 0 || f->finalized) return NULL;
  close(f->fd);
  f->fd = -1;
  if (unlink(f->path) != 0 && errno != ENOENT) return errno_error(errno, "remove", f->path);
  return NULL;
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
