/* Placeholder until the writer part lands. */
#include "lrw.h"

int rw_lua_open_writer(lua_State *L) {
  lua_newtable(L);
  return 1;
}
