/* luaopen_reliablewriter_core: the C module under require "reliablewriter".
 * Nothing here starts a thread or touches the network: process-wide state is
 * made lazily on first use (nginx forks workers after loading modules). */
#include "l_wait.h"
#include "lrw.h"

typedef int (*opener)(lua_State *L);
int rw_lua_open_proxysink(lua_State *L); /* l_proxysink.c: pushes rw.proxy_sink */
int rw_lua_open_proxy(lua_State *L); /* l_proxy.c */

static void log_line(int lvl, const char *line) { rw_log_line((rw_log_level)lvl, line); }

RW_LUA_EXPORT int luaopen_reliablewriter_core(lua_State *L) {
  static const rw_lua_log_seam log_seam = {log_line};
  static const struct {
    const char *name;
    opener open;
  } parts[] = {
      {"errors", rw_lua_open_errors},       {"context", rw_lua_open_context},
      {"backoff", rw_lua_open_backoff},     {"workgroup", rw_lua_open_workgroup},
      {"ratelimit", rw_lua_open_ratelimit}, {"util", rw_lua_open_util},
      {"writer", rw_lua_open_writer},       {"sinks", rw_lua_open_sinks},
      {"log", rw_lua_open_log},             {"reader", rw_lua_open_reader},
      {"proxy", rw_lua_open_proxy},         {"wakeup", rw_lua_open_wakeup},
      {"proxy_sink", rw_lua_open_proxysink}, {"wait_protocol", rw_lua_open_wait},
  };
  lua_newtable(L);
  for (size_t i = 0; i < sizeof parts / sizeof parts[0]; i++) {
    parts[i].open(L);
    lua_setfield(L, -2, parts[i].name);
  }
  lua_pushlightuserdata(L, (void *)&log_seam);
  lua_setfield(L, -2, "_log_line");
  lua_pushliteral(L, "0.1.0");
  lua_setfield(L, -2, "version");
  return 1;
}
