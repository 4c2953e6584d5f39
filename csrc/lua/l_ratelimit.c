#include "lrw.h"

int rw_lua_open_ratelimit(lua_State *L) {
  lua_newtable(L);
  return 1;
}
