/* luaopen_reliablewriter_testbed: require "reliablewriter.testbed", what tests
 * use and production never loads: the fake GCS (libmicrohttpd), fault
 * profiles and the chaos proxy, the faulty sink, and probes.
 *
 * testbed.so is built apart from core.so and links its own hidden copy of the
 * core C objects it needs (error, context, sink, ... from libreliablewriter.a).
 * What crosses between the two .so is plain structs of the same source: sinks
 * through their vtable, the dialer through function pointers with its owner
 * and release (net/http.h), rw_error and rw_ctx through their refcounts; each
 * side only calls functions the struct's maker put there or shares the same
 * layout. It plugs into the core only through the metatable seams of lrw.h
 * (__rw_sink, __rw_dialer). The test bed's own log lines (relay debug lines)
 * go through its copy of rw_log, which forwards to the core's log (see
 * forward_log) so the core's level and hook apply. */
#include "core/error.h"
#include "testbed/lua/ltb.h"

/* The core module's log entry, from reliablewriter.core's `_log_line`. */
static void (*core_log_line)(int lvl, const char *line);

static void forward_log(void *ud, rw_log_level lvl, const char *line) {
  (void)ud;
  if (core_log_line) core_log_line((int)lvl, line);
}

static void link_core_log(lua_State *L) {
  lua_getglobal(L, "require");
  lua_pushliteral(L, "reliablewriter.core");
  lua_call(L, 1, 1);
  lua_getfield(L, -1, "_log_line");
  const rw_lua_log_seam *seam = lua_touserdata(L, -1);
  lua_pop(L, 2);
  if (!seam) luaL_error(L, "reliablewriter.testbed: reliablewriter.core has no log seam (versions differ?)");
  core_log_line = seam->line;
  rw_log_set_hook(forward_log, NULL);
}

RW_LUA_EXPORT int luaopen_reliablewriter_testbed(lua_State *L) {
  static const struct {
    const char *name;
    int (*open)(lua_State *L);
  } parts[] = {{"fakegcs", rw_tb_open_fakegcs},
               {"faults", rw_tb_open_faults},
               {"faulty", rw_tb_open_faulty},
               {"probes", rw_tb_open_probes}};
  link_core_log(L);
  lua_newtable(L);
  for (size_t i = 0; i < sizeof parts / sizeof parts[0]; i++) {
    parts[i].open(L);
    lua_setfield(L, -2, parts[i].name);
  }
  return 1;
}
