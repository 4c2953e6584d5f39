/* rw.util.trap_signals([ctx,] {"INT", "TERM"}): a signal trap (core/sigtrap.h)
 * as a Lua object: trap:context(), trap:caught() ("SIGINT" or nil),
 * trap:close() (also __gc, __close). */
#include "core/sigtrap.h"
#include "lrw.h"

#define TRAP_MT "reliablewriter.sigtrap"

typedef struct {
  rw_sigtrap *t;
} ltrap;

static rw_sigtrap *check(lua_State *L) {
  ltrap *u = luaL_checkudata(L, 1, TRAP_MT);
  if (!u->t) rw_lua_closed_error(L, "signal trap");
  return u->t;
}

int rw_lua_trap_signals(lua_State *L) {
  rw_ctx *parent = NULL;
  int list = 1;
  if (!lua_istable(L, 1)) {
    parent = rw_lua_optctx(L, 1);
    list = 2;
  }
  luaL_checktype(L, list, LUA_TTABLE);
  int sigs[RW_SIGTRAP_MAX], n = 0;
  size_t len = lua_rawlen(L, list);
  if (len < 1 || len > RW_SIGTRAP_MAX)
    return luaL_argerror(L, list, "signals: a list of 1 to 8 names such as \"INT\", \"TERM\"");
  for (size_t i = 1; i <= len; i++) {
    lua_rawgeti(L, list, (lua_Integer)i);
    const char *name = lua_tostring(L, -1);
    int sig = rw_sigtrap_signum(name);
    if (!sig)
      return luaL_argerror(
          L, list,
          lua_pushfstring(L, "signals[%d]: '%s' is not one of INT, TERM, HUP, QUIT, USR1, USR2",
                          (int)i, name ? name : luaL_typename(L, -1)));
    sigs[n++] = sig;
    lua_pop(L, 1);
  }
  ltrap *u = lua_newuserdata(L, sizeof *u);
  u->t = NULL;
  luaL_setmetatable(L, TRAP_MT);
  rw_error *err = NULL;
  u->t = rw_sigtrap_new(parent, sigs, n, &err);
  if (!u->t) return rw_lua_fail(L, err);
  return 1;
}

static int trap_context(lua_State *L) {
  rw_lua_push_ctx(L, rw_ctx_ref(rw_sigtrap_ctx(check(L))));
  return 1;
}

static int trap_caught(lua_State *L) {
  int sig = rw_sigtrap_caught(check(L));
  if (sig) lua_pushstring(L, rw_sigtrap_name(sig));
  else lua_pushnil(L);
  return 1;
}

static int trap_gc(lua_State *L) {
  ltrap *u = luaL_checkudata(L, 1, TRAP_MT);
  rw_sigtrap *t = u->t;
  u->t = NULL;
  rw_sigtrap_free(t);
  return 0;
}

void rw_lua_open_sigtrap(lua_State *L) {
  static const luaL_Reg methods[] = {{"context", trap_context}, {"caught", trap_caught},
                                     {"close", trap_gc},        {NULL, NULL}};
  luaL_newmetatable(L, TRAP_MT);
  lua_pushcfunction(L, trap_gc);
  lua_setfield(L, -2, "__gc");
  lua_pushcfunction(L, trap_gc);
  lua_setfield(L, -2, "__close");
  luaL_newlib(L, methods);
  lua_setfield(L, -2, "__index");
  lua_pop(L, 1);
}
