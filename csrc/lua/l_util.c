/* Small process helpers the Lua layer needs: a monotonic clock, poll(2) over
 * several fds (the workgroup scheduler), sleeping, and the size of the core's
 * pool. (Thread, fd and RSS counts for tests: testbed.probes.) */
#include <errno.h>
#include <limits.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
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

int rw_lua_open_util(lua_State *L) {
  static const luaL_Reg fns[] = {{"monotime", u_monotime}, {"realtime", u_realtime},
                                 {"sleep", u_sleep},       {"poll", u_poll},
                                 {"pool_threads", u_pool_threads}, {NULL, NULL}};
  luaL_newlib(L, fns);
  return 1;
}
