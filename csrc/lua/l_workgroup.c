/* The Lua workgroup is coroutines (lua/reliablewriter/workgroup.lua); its
 * scheduler sleeps on a wait set (core/waitset.h), bound here. The C pool
 * under the writers is reported here too. */
#include <limits.h>

#include "core/waitset.h"
#include "core/workgroup.h"
#include "lrw.h"

#define WS_MT "reliablewriter.WaitSet"

typedef struct {
  rw_waitset *s;
} lws;

static rw_waitset *check_ws(lua_State *L) {
  lws *u = luaL_checkudata(L, 1, WS_MT);
  if (!u->s) rw_lua_closed_error(L, "wait set");
  return u->s;
}

static int check_fd(lua_State *L, int arg) {
  lua_Integer fd = luaL_checkinteger(L, arg);
  if (fd < 0 || fd > INT_MAX) return luaL_argerror(L, arg, "fd must be an integer >= 0");
  return (int)fd;
}

/* waitset(): a new wait set, or nil, err. */
static int ws_new(lua_State *L) {
  lws *u = lua_newuserdata(L, sizeof *u);
  u->s = NULL;
  luaL_setmetatable(L, WS_MT);
  rw_error *e = rw_waitset_new(&u->s);
  if (e) return rw_lua_fail(L, e);
  return 1;
}

static int ws_add(lua_State *L) {
  rw_error *e = rw_waitset_add_fd(check_ws(L), check_fd(L, 2));
  if (e) return rw_lua_fail(L, e);
  lua_pushboolean(L, 1);
  return 1;
}

static int ws_remove(lua_State *L) {
  rw_waitset_remove_fd(check_ws(L), check_fd(L, 2));
  return 0;
}

/* watch(ctx): an id > 0 reported by wait() once ctx is cancelled. */
static int ws_watch(lua_State *L) {
  rw_waitset *s = check_ws(L);
  int id;
  rw_error *e = rw_waitset_watch(s, rw_lua_checkctx(L, 2), &id);
  if (e) return rw_lua_fail(L, e);
  lua_pushinteger(L, id);
  return 1;
}

static int ws_unwatch(lua_State *L) {
  rw_waitset *s = check_ws(L);
  lua_Integer id = luaL_checkinteger(L, 2);
  if (id > 0 && id <= INT_MAX) rw_waitset_unwatch(s, (int)id);
  return 0;
}

static void fill(lua_State *L, int t, const int *v, int n) {
  for (int i = 0; i < n; i++) {
    lua_pushinteger(L, v[i]);
    lua_rawseti(L, t, i + 1);
  }
}

/* wait(timeout|nil [, fds [, ids]]): nfds, nids; fills fds[1..nfds] with the
 * readable fds and ids[1..nids] with the watches whose context was cancelled
 * (tables made when not given; entries past n are left as they are). */
static int ws_wait(lua_State *L) {
  enum { MAX_FDS = 256, MAX_IDS = 1024 };
  rw_waitset *s = check_ws(L);
  double t = lua_isnoneornil(L, 2) ? -1 : rw_lua_check_number_range(L, 2, "timeout", 0, 1e9);
  for (int arg = 3; arg <= 4; arg++) {
    if (lua_isnoneornil(L, arg)) {
      lua_settop(L, arg - 1);
      lua_newtable(L);
    }
    luaL_checktype(L, arg, LUA_TTABLE);
  }
  int fds[MAX_FDS], ids[MAX_IDS], nfds, nids;
  rw_error *e = rw_waitset_wait(s, t, fds, MAX_FDS, &nfds, ids, MAX_IDS, &nids);
  if (e) return rw_lua_fail(L, e);
  fill(L, 3, fds, nfds);
  fill(L, 4, ids, nids);
  lua_pushinteger(L, nfds);
  lua_pushinteger(L, nids);
  lua_pushvalue(L, 3);
  lua_pushvalue(L, 4);
  return 4;
}

static int ws_pollfd(lua_State *L) {
  lua_pushinteger(L, rw_waitset_pollfd(check_ws(L)));
  return 1;
}

/* counts(): fds and contexts watched. */
static int ws_counts(lua_State *L) {
  rw_waitset *s = check_ws(L);
  lua_pushinteger(L, (lua_Integer)rw_waitset_fd_count(s));
  lua_pushinteger(L, (lua_Integer)rw_waitset_watch_count(s));
  return 2;
}

static int ws_gc(lua_State *L) {
  lws *u = luaL_checkudata(L, 1, WS_MT);
  rw_waitset *s = u->s;
  u->s = NULL;
  rw_waitset_free(s);
  return 0;
}

static int ws_is_closed(lua_State *L) {
  lws *u = luaL_checkudata(L, 1, WS_MT);
  lua_pushboolean(L, u->s == NULL);
  return 1;
}

static void open_waitset(lua_State *L) {
  static const luaL_Reg methods[] = {
      {"add", ws_add},       {"remove", ws_remove}, {"watch", ws_watch},
      {"unwatch", ws_unwatch}, {"wait", ws_wait},   {"pollfd", ws_pollfd},
      {"counts", ws_counts}, {"close", ws_gc},      {"is_closed", ws_is_closed},
      {NULL, NULL}};
  luaL_newmetatable(L, WS_MT);
  lua_pushcfunction(L, ws_gc);
  lua_setfield(L, -2, "__gc");
  lua_pushcfunction(L, ws_gc);
  lua_setfield(L, -2, "__close");
  luaL_newlib(L, methods);
  lua_setfield(L, -2, "__index");
  lua_pop(L, 1);
}

static int wg_pool_stats(lua_State *L) {
  rw_pool *p = rw_pool_shared_peek();
  lua_createtable(L, 0, 3);
  lua_pushinteger(L, p ? rw_pool_threads(p) : 0);
  lua_setfield(L, -2, "threads");
  lua_pushinteger(L, p ? rw_pool_max_threads(p) : 0);
  lua_setfield(L, -2, "max_threads");
  lua_pushinteger(L, p ? rw_pool_peak_threads(p) : 0);
  lua_setfield(L, -2, "peak_threads");
  return 1;
}

int rw_lua_open_workgroup(lua_State *L) {
  static const luaL_Reg fns[] = {{"pool_stats", wg_pool_stats}, {"waitset", ws_new}, {NULL, NULL}};
  open_waitset(L);
  luaL_newlib(L, fns);
  return 1;
}
