/* Lua face of rw_wakeup (core/wakeup.h): what the ngx waiting policy in
 * waiting.lua waits on with a cosocket. */
#include "core/wakeup.h"
#include "lrw.h"

#define WK_MT "reliablewriter.Wakeup"

typedef struct {
  rw_wakeup *wk;
} lwk;

static rw_wakeup *check(lua_State *L) {
  lwk *u = luaL_checkudata(L, 1, WK_MT);
  if (!u->wk) rw_lua_closed_error(L, "wake-up bridge");
  return u->wk;
}

static uint64_t check_id(lua_State *L, int arg) {
  return (uint64_t)rw_lua_check_number_range(L, arg, "id (from register())", 1, 9007199254740992.0);
}

/* new([dir]): a bridge listening in a fresh folder under dir ($TMPDIR, /tmp). */
static int wk_new(lua_State *L) {
  const char *dir = luaL_optstring(L, 1, NULL);
  lwk *u = lua_newuserdata(L, sizeof *u);
  u->wk = NULL;
  luaL_setmetatable(L, WK_MT);
  rw_error *e = rw_wakeup_new(dir, &u->wk);
  if (e) return rw_lua_fail(L, e);
  return 1;
}

static int wk_path(lua_State *L) {
  lua_pushstring(L, rw_wakeup_path(check(L)));
  return 1;
}

/* register(): id, token (send the token on a connection to path()). */
static int wk_register(lua_State *L) {
  uint64_t id;
  char tok[RW_WAKEUP_TOKEN_LEN + 1];
  rw_error *e = rw_wakeup_register(check(L), &id, tok);
  if (e) return rw_lua_fail(L, e);
  lua_pushnumber(L, (lua_Number)id);
  lua_pushlstring(L, tok, RW_WAKEUP_TOKEN_LEN);
  return 2;
}

/* bind(id): true when the slot has its connection; nil, err on failure. */
static int wk_bind(lua_State *L) {
  int bound = 0;
  rw_error *e = rw_wakeup_bind(check(L), check_id(L, 2), &bound);
  if (e) return rw_lua_fail(L, e);
  lua_pushboolean(L, bound);
  return 1;
}

/* arm(id, fd): true, or nil, err. */
static int wk_arm(lua_State *L) {
  rw_wakeup *wk = check(L);
  uint64_t id = check_id(L, 2);
  int fd = (int)rw_lua_check_number_range(L, 3, "fd", 0, 1 << 30);
  rw_error *e = rw_wakeup_arm(wk, id, fd);
  if (e) return rw_lua_fail(L, e);
  lua_pushboolean(L, 1);
  return 1;
}

static int wk_release(lua_State *L) {
  rw_wakeup_release(check(L), check_id(L, 2));
  return 0;
}

/* stats(): { slots = n, thread = bool } */
static int wk_stats(lua_State *L) {
  rw_wakeup *wk = check(L);
  lua_createtable(L, 0, 2);
  lua_pushnumber(L, (lua_Number)rw_wakeup_slots(wk));
  lua_setfield(L, -2, "slots");
  lua_pushboolean(L, rw_wakeup_thread_started(wk));
  lua_setfield(L, -2, "thread");
  return 1;
}

/* Joins the bridge thread, which only ever waits in its own epoll: returns
 * at once, never waits on the network. */
static int wk_gc(lua_State *L) {
  lwk *u = luaL_checkudata(L, 1, WK_MT);
  rw_wakeup *wk = u->wk;
  u->wk = NULL;
  rw_wakeup_free(wk);
  return 0;
}

int rw_lua_open_wakeup(lua_State *L) {
  static const luaL_Reg methods[] = {{"path", wk_path},       {"register", wk_register},
                                     {"bind", wk_bind},       {"arm", wk_arm},
                                     {"release", wk_release}, {"stats", wk_stats},
                                     {"close", wk_gc},        {NULL, NULL}};
  luaL_newmetatable(L, WK_MT);
  lua_pushcfunction(L, wk_gc);
  lua_setfield(L, -2, "__gc");
  lua_pushcfunction(L, wk_gc);
  lua_setfield(L, -2, "__close");
  luaL_newlib(L, methods);
  lua_pushvalue(L, -1);
  lua_setfield(L, -3, "__index");
  static const luaL_Reg fns[] = {{"new", wk_new}, {NULL, NULL}};
  luaL_newlib(L, fns);
  lua_insert(L, -2);
  lua_setfield(L, -2, "methods");
  lua_remove(L, -2);
  return 1;
}
