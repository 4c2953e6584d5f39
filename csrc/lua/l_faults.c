/* Placeholder until the faults part lands. */
#include "lrw.h"

int rw_lua_open_faults(lua_State *L) {
  lua_newtable(L);
  return 1;
}
