/* Small process helpers the Lua layer needs: a monotonic clock, poll(2) over
 * several fds (the workgroup scheduler), sleeping, and the size of the core's
 * pool. (Thread, fd and RSS counts for tests: testbed.probes.) */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/clock.h"
#include "core/workgroup.h"
#include "lrw.h"

static int u_monotime(lua_State *L) {
  lua_pushnumber(L, rw_mono_now());
  return 1;
}

static int u_realtime(lua_State *L) {
  lua_pushnumber(L, rw_real_now());
  return 1;
}

static int u_sleep(lua_State *L) {
  double s = rw_lua_check_number_range(L, 1, "seconds", 0, 86400);
  struct timespec ts = rw_timespec_of(s);
  while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
  }
  return 0;
}

/* poll({fd, ...}, timeout_seconds|nil): readable fds count (0 on timeout).
 * Any number of fds (the array lives in a userdata the GC frees, so a bad
 * entry that raises leaks nothing); for many waits use workgroup.waitset().
 * Readable eventfds are not drained: they stay readable. */
static int u_poll(lua_State *L) {
  luaL_checktype(L, 1, LUA_TTABLE);
  double t = lua_isnoneornil(L, 2) ? -1 : rw_lua_check_number_range(L, 2, "timeout", 0, 86400);
  size_t len = lua_rawlen(L, 1);
  if (len > (size_t)INT_MAX / sizeof(struct pollfd)) return luaL_argerror(L, 1, "too many fds");
  int n = (int)len;
  struct pollfd *fds = lua_newuserdata(L, (size_t)n * sizeof *fds + 1);
  for (int i = 0; i < n; i++) {
    lua_rawgeti(L, 1, i + 1);
    fds[i].fd = (int)luaL_checkinteger(L, -1);
    fds[i].events = POLLIN;
    fds[i].revents = 0;
    lua_pop(L, 1);
  }
  int ms = t < 0 ? -1 : (int)(t * 1000 + 0.999);
  int rc;
  do rc = poll(fds, (nfds_t)n, ms);
  while (rc < 0 && errno == EINTR);
  lua_pushinteger(L, rc < 0 ? 0 : rc);
  return 1;
}

static int u_pool_threads(lua_State *L) {
  rw_pool *p = rw_pool_shared_peek();
  lua_pushinteger(L, p ? rw_pool_threads(p) : 0);
  return 1;
}

/* stat(path): { size, mtime (seconds, with nanoseconds), ino, dev, type =
 * "file"|"directory"|"fifo"|"socket"|"char"|"block"|"other" } of the file the
 * path names (symlinks followed), or nil, err (rw.invalid_argument
 * naming the path and the system's reason). For programs that remember what they read (rwup's resume
 * state); write_file does its own checks. */
static int u_stat(lua_State *L) {
  const char *path = luaL_checkstring(L, 1);
  struct stat st;
  if (stat(path, &st) != 0) {
    int e = errno;
    return rw_lua_fail(L, rw_err("rw.invalid_argument", "stat '%s': %s", path, strerror(e)));
  }
  const char *type = S_ISREG(st.st_mode)    ? "file"
                     : S_ISDIR(st.st_mode)  ? "directory"
                     : S_ISFIFO(st.st_mode) ? "fifo"
                     : S_ISSOCK(st.st_mode) ? "socket"
                     : S_ISCHR(st.st_mode)  ? "char"
                     : S_ISBLK(st.st_mode)  ? "block"
                                            : "other";
  lua_createtable(L, 0, 5);
  lua_pushinteger(L, (lua_Integer)st.st_size);
  lua_setfield(L, -2, "size");
  lua_pushnumber(L, (double)st.st_mtim.tv_sec + st.st_mtim.tv_nsec / 1e9);
  lua_setfield(L, -2, "mtime");
  lua_pushinteger(L, (lua_Integer)st.st_ino);
  lua_setfield(L, -2, "ino");
  lua_pushinteger(L, (lua_Integer)st.st_dev);
  lua_setfield(L, -2, "dev");
  lua_pushstring(L, type);
  lua_setfield(L, -2, "type");
  return 1;
}

/* realpath(path): the absolute path with no symlink, ".", "..", or nil, err. */
static int u_realpath(lua_State *L) {
  const char *path = luaL_checkstring(L, 1);
  char *r = realpath(path, NULL);
  if (!r) {
    int e = errno;
    return rw_lua_fail(L, rw_err("rw.invalid_argument", "realpath '%s': %s", path, strerror(e)));
  }
  lua_pushstring(L, r);
  free(r);
  return 1;
}

/* write_private(path, text [, sync]): replaces path with text atomically (a
 * temp file beside it, path.tmp, mode 0600, rename), for small files that hold
 * a secret such as a session URI (rwup's state). sync (default true) fsyncs
 * the temp file first: durable across a power cut, at the price of a journal
 * commit; without it the file still survives the process being killed.
 * true, or nil, err. */
static int u_write_private(lua_State *L) {
  const char *path = luaL_checkstring(L, 1);
  size_t len;
  const char *text = luaL_checklstring(L, 2, &len);
  bool sync = lua_isnoneornil(L, 3) || lua_toboolean(L, 3);
  size_t plen = strlen(path);
  if (plen == 0 || plen > 4000) return luaL_argerror(L, 1, "path must have 1 to 4000 bytes");
  char tmp[4096];
  /* One fixed temp name: a process killed while writing leaves at most this
   * file, which the next write replaces. */
  snprintf(tmp, sizeof tmp, "%s.tmp", path);
  int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0600);
  if (fd < 0) goto fail;
  size_t off = 0;
  while (off < len) {
    ssize_t n = write(fd, text + off, len - off);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) goto fail_fd;
    off += (size_t)n;
  }
  if ((sync && fsync(fd) != 0) || close(fd) != 0) {
    fd = -1;
    goto fail_unlink;
  }
  if (rename(tmp, path) != 0) goto fail_unlink;
  lua_pushboolean(L, 1);
  return 1;
fail_fd:
  close(fd);
fail_unlink: {
  int e = errno;
  unlink(tmp);
  errno = e;
}
fail: {
  int e = errno;
  return rw_lua_fail(L, rw_err("rw.invalid_argument", "write '%s': %s", path, strerror(e)));
}
}

/* isatty(fd): whether fd (0, 1 or 2) is a terminal (rwup's progress line). */
static int u_isatty(lua_State *L) {
  lua_Integer fd = luaL_checkinteger(L, 1);
  luaL_argcheck(L, fd >= 0 && fd <= 2, 1, "fd must be 0, 1 or 2");
  lua_pushboolean(L, isatty((int)fd));
  return 1;
}

int rw_lua_open_util(lua_State *L) {
  static const luaL_Reg fns[] = {{"monotime", u_monotime}, {"realtime", u_realtime},
                                 {"sleep", u_sleep},       {"poll", u_poll},
                                 {"pool_threads", u_pool_threads}, {"stat", u_stat},
                                 {"isatty", u_isatty}, {"realpath", u_realpath},
                                 {"write_private", u_write_private}, {"trap_signals", rw_lua_trap_signals},
                                 {NULL, NULL}};
  rw_lua_open_sigtrap(L);
  luaL_newlib(L, fns);
  return 1;
}
