/* The Lua workgroup is coroutines (lua/reliablewriter/workgroup.lua); the C
 * pool under the writers is reported here. */
#include "core/workgroup.h"
#include "lrw.h"

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
  static const luaL_Reg fns[] = {{"pool_stats", wg_pool_stats}, {NULL, NULL}};
  luaL_newlib(L, fns);
  return 1;
}
