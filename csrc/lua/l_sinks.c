/* Placeholder until the sinks part lands. */
#include "lrw.h"

int rw_lua_open_sinks(lua_State *L) {
  lua_newtable(L);
  return 1;
}

struct rw_sink *rw_lua_sink_make(lua_State *L, int idx, rw_error **err) {
  luaL_argerror(L, idx, "sinks are not built yet");
  return NULL;
}
