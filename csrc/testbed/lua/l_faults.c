/* Lua binding of connection-level faults (issue 5):
 *   local p = faults.profile{ seed = 7, refuse = 0.1, reset_per_mib = 0.05,
 *       close_per_mib = 0, stall_per_mib = 0.01, stall_for = 5 | "forever",
 *       truncate_per_mib = 0, latency = 0.02, bandwidth = 50 * MiB,
 *       window = 4 * MiB, max_connections = 256 }
 *     (latency: a delay line per direction; bandwidth: a token bucket per
 *     connection and direction; window: bytes in flight per direction, a
 *     whole number in [1024, 2^30]; see testbed/faults.h)
 *   p:stats()  -> { connections, refused, resets, closes, stalls, truncates,
 *                   active, bytes_up, bytes_down, in_flight_max }
 *   p:events() -> { {conn = 0, kind = "reset", pos = 123, t = seconds}, ...,
 *                   stalls also: held = seconds, ended = "timer"|"closed"|"holding" }
 *   p:plan(i)  -> { refused = bool, reset_at =, close_at =, stall_at =, truncate_at = }
 *                 (the schedule of connection i; math.huge = never)
 *   rw.gcs{ ..., faults = p }   (the core's dialer seam: __rw_dialer below, lua/lrw.h)
 *
 *   local px = faults.proxy{ listen = "127.0.0.1:0", upstream = url_or_addr, profile = p }
 *   px:url(), px:addr(), px:port(), px:profile(), px:stop()  (also __gc, __close)
 */
#include <math.h>
#include <string.h>

#include "testbed/lua/ltb.h"
#include "testbed/chaos.h"
#include "testbed/faults.h"

#define PROFILE_MT "reliablewriter.FaultProfile"
#define PROXY_MT "reliablewriter.ChaosProxy"

typedef struct profile_ud {
  rw_faults *f;
} profile_ud;

typedef struct proxy_ud {
  rw_chaos *p; /* NULL once stopped */
} proxy_ud;

/* ---- profile ---- */

static rw_faults *check_profile(lua_State *L, int idx) {
  return ((profile_ud *)luaL_checkudata(L, idx, PROFILE_MT))->f;
}

/* The __rw_dialer seam: the dialer takes its own reference on the profile,
 * which the core's HTTP client releases when done (net/http.h). */
static void profile_fill_dialer(lua_State *L, int idx, rw_http_dialer *d) {
  *d = rw_faults_dialer(check_profile(L, idx));
}

static double stall_for_option(lua_State *L) {
  lua_getfield(L, 1, "stall_for");
  double v = 5;
  if (lua_type(L, -1) == LUA_TSTRING) {
    if (strcmp(lua_tostring(L, -1), "forever") != 0)
      luaL_argerror(L, 1, "option 'stall_for' must be seconds or \"forever\"");
    v = -1;
  } else if (!lua_isnil(L, -1)) {
    if (lua_type(L, -1) != LUA_TNUMBER)
      luaL_argerror(L, 1, lua_pushfstring(L, "option 'stall_for' must be seconds or \"forever\" (got %s)",
                                          luaL_typename(L, -1)));
    v = lua_tonumber(L, -1);
    if (!(v <= 86400)) luaL_argerror(L, 1, "option 'stall_for' must be <= 86400 (or < 0 / \"forever\")");
  }
  lua_pop(L, 1);
  return v;
}

static int faults_profile(lua_State *L) {
  static const char *const known[] = {"seed", "refuse", "reset_per_mib", "close_per_mib",
                                      "stall_per_mib", "stall_for", "truncate_per_mib", "latency",
                                      "bandwidth", "window", "max_connections", NULL};
  if (lua_isnoneornil(L, 1)) {
    lua_settop(L, 0);
    lua_newtable(L);
  }
  rw_lua_check_options(L, 1, 1, known);
  rw_faults_config c = {0};
  c.seed = (uint64_t)rw_lua_opt_integer(L, 1, 1, "seed", 1, 0, INT64_C(9007199254740992));
  c.refuse = rw_lua_opt_number(L, 1, 1, "refuse", 0, 0, 1);
  c.reset_per_mib = rw_lua_opt_number(L, 1, 1, "reset_per_mib", 0, 0, 1e6);
  c.close_per_mib = rw_lua_opt_number(L, 1, 1, "close_per_mib", 0, 0, 1e6);
  c.stall_per_mib = rw_lua_opt_number(L, 1, 1, "stall_per_mib", 0, 0, 1e6);
  c.truncate_per_mib = rw_lua_opt_number(L, 1, 1, "truncate_per_mib", 0, 0, 1e6);
  c.latency = rw_lua_opt_number(L, 1, 1, "latency", 0, 0, 60);
  c.bandwidth = rw_lua_opt_number(L, 1, 1, "bandwidth", 0, 0, 1e12);
  c.window = (uint64_t)rw_lua_opt_integer(L, 1, 1, "window", 4 * 1048576, 1024, INT64_C(1) << 30);
  c.max_connections = (int)rw_lua_opt_integer(L, 1, 1, "max_connections", 256, 1, 65536);
  c.stall_for = stall_for_option(L);
  profile_ud *u = lua_newuserdata(L, sizeof *u);
  u->f = NULL;
  luaL_setmetatable(L, PROFILE_MT);
  rw_error *e = NULL;
  u->f = rw_faults_new(&c, &e);
  if (!u->f) {
    lua_pushstring(L, rw_error_message(e));
    rw_error_unref(e);
    return luaL_argerror(L, 1, lua_tostring(L, -1));
  }
  return 1;
}

static int profile_gc(lua_State *L) {
  profile_ud *u = luaL_checkudata(L, 1, PROFILE_MT);
  rw_faults_unref(u->f);
  u->f = NULL;
  return 0;
}

static void set_count(lua_State *L, const char *k, uint64_t v) {
  lua_pushinteger(L, (lua_Integer)v);
  lua_setfield(L, -2, k);
}

static void set_pos(lua_State *L, const char *k, uint64_t v) {
  lua_pushnumber(L, v == UINT64_MAX ? HUGE_VAL : (lua_Number)v);
  lua_setfield(L, -2, k);
}

static int push_stats(lua_State *L, rw_faults *f) {
  rw_faults_stats st;
  rw_faults_stats_read(f, &st);
  lua_createtable(L, 0, 10);
  set_count(L, "connections", st.connections);
  set_count(L, "refused", st.refused);
  set_count(L, "resets", st.resets);
  set_count(L, "closes", st.closes);
  set_count(L, "stalls", st.stalls);
  set_count(L, "truncates", st.truncates);
  set_count(L, "active", st.active);
  set_count(L, "bytes_up", st.bytes_up);
  set_count(L, "bytes_down", st.bytes_down);
  set_count(L, "in_flight_max", st.in_flight_max);
  return 1;
}

static int profile_stats(lua_State *L) { return push_stats(L, check_profile(L, 1)); }

static int profile_events(lua_State *L) {
  rw_faults *f = check_profile(L, 1);
  size_t have = rw_faults_events(f, NULL, 0);
  rw_fault_event *ev = lua_newuserdata(L, (have ? have : 1) * sizeof *ev);
  size_t n = rw_faults_events(f, ev, have); /* more may have come since: keep what fits */
  if (n > have) n = have;
  lua_createtable(L, (int)n, 0);
  for (size_t i = 0; i < n; i++) {
    lua_createtable(L, 0, 3);
    set_count(L, "conn", ev[i].conn);
    lua_pushstring(L, rw_fault_kind_name(ev[i].kind));
    lua_setfield(L, -2, "kind");
    set_count(L, "pos", ev[i].pos);
    lua_pushnumber(L, ev[i].t);
    lua_setfield(L, -2, "t");
    if (ev[i].kind == RW_FAULT_STALL) {
      lua_pushnumber(L, ev[i].held);
      lua_setfield(L, -2, "held");
      lua_pushstring(L, ev[i].held < 0 ? "holding" : ev[i].by_timer ? "timer" : "closed");
      lua_setfield(L, -2, "ended");
    }
    lua_rawseti(L, -2, (int)i + 1);
  }
  return 1;
}

static int profile_plan(lua_State *L) {
  rw_faults *f = check_profile(L, 1);
  lua_Integer i = luaL_checkinteger(L, 2);
  luaL_argcheck(L, i >= 0, 2, "connection index must be >= 0");
  rw_faults_plan p;
  rw_faults_plan_of(rw_faults_config_of(f), (uint64_t)i, &p);
  lua_createtable(L, 0, 5);
  lua_pushboolean(L, p.refused);
  lua_setfield(L, -2, "refused");
  set_pos(L, "reset_at", p.reset_at);
  set_pos(L, "close_at", p.close_at);
  set_pos(L, "stall_at", p.stall_at);
  set_pos(L, "truncate_at", p.truncate_at);
  return 1;
}

static int profile_tostring(lua_State *L) {
  const rw_faults_config *c = rw_faults_config_of(check_profile(L, 1));
  lua_pushfstring(L, "fault profile (seed %d, reset/MiB %f, stall/MiB %f, refuse %f)", (int)c->seed,
                  c->reset_per_mib, c->stall_per_mib, c->refuse);
  return 1;
}

/* ---- proxy ---- */

static rw_chaos *check_proxy(lua_State *L) {
  proxy_ud *u = luaL_checkudata(L, 1, PROXY_MT);
  if (!u->p) luaL_error(L, "attempt to use a closed chaos proxy");
  return u->p;
}

static int f_proxy(lua_State *L) {
  static const char *const known[] = {"listen", "upstream", "profile", NULL};
  rw_lua_check_options(L, 1, 1, known);
  rw_chaos_config c = {0};
  lua_getfield(L, 1, "listen");
  if (!lua_isnil(L, -1) && lua_type(L, -1) != LUA_TSTRING)
    luaL_argerror(L, 1, "option 'listen' must be a \"host:port\" string");
  c.listen = lua_tostring(L, -1);
  lua_getfield(L, 1, "upstream");
  if (lua_type(L, -1) != LUA_TSTRING)
    luaL_argerror(L, 1, "option 'upstream' is required (\"host:port\" or an http URL)");
  c.upstream = lua_tostring(L, -1);
  lua_getfield(L, 1, "profile");
  if (!lua_isnil(L, -1)) {
    profile_ud *pu = luaL_testudata(L, -1, PROFILE_MT);
    if (!pu) luaL_argerror(L, 1, "option 'profile' must be a fault profile (testbed.faults.profile{...})");
    c.profile = pu->f;
  }
  proxy_ud *u = lua_newuserdata(L, sizeof *u);
  u->p = NULL;
  luaL_setmetatable(L, PROXY_MT);
  rw_error *e = NULL;
  u->p = rw_chaos_start(&c, &e);
  if (!u->p) return rw_lua_fail(L, e);
  return 1;
}

static int proxy_stop(lua_State *L) {
  proxy_ud *u = luaL_checkudata(L, 1, PROXY_MT);
  rw_chaos *p = u->p;
  u->p = NULL;
  rw_chaos_stop(p);
  return 0;
}

static int proxy_url(lua_State *L) {
  lua_pushstring(L, rw_chaos_url(check_proxy(L)));
  return 1;
}

static int proxy_addr(lua_State *L) {
  lua_pushstring(L, rw_chaos_addr(check_proxy(L)));
  return 1;
}

static int proxy_port(lua_State *L) {
  lua_pushinteger(L, rw_chaos_port(check_proxy(L)));
  return 1;
}

static int proxy_stats(lua_State *L) { return push_stats(L, rw_chaos_profile(check_proxy(L))); }

static int proxy_tostring(lua_State *L) {
  proxy_ud *u = luaL_checkudata(L, 1, PROXY_MT);
  if (u->p) lua_pushfstring(L, "chaos proxy %s", rw_chaos_url(u->p));
  else lua_pushliteral(L, "chaos proxy (stopped)");
  return 1;
}

int rw_tb_open_faults(lua_State *L) {
  if (luaL_newmetatable(L, PROFILE_MT)) {
    static const luaL_Reg methods[] = {{"stats", profile_stats}, {"events", profile_events},
                                       {"plan", profile_plan}, {NULL, NULL}};
    static const luaL_Reg mt[] = {{"__gc", profile_gc}, {"__tostring", profile_tostring}, {NULL, NULL}};
    static const rw_lua_dialer_seam seam = {profile_fill_dialer};
    luaL_setfuncs(L, mt, 0);
    rw_lua_set_seam(L, "__rw_dialer", &seam);
    luaL_newlib(L, methods);
    lua_setfield(L, -2, "__index");
  }
  lua_pop(L, 1);
  if (luaL_newmetatable(L, PROXY_MT)) {
    static const luaL_Reg methods[] = {{"url", proxy_url},     {"addr", proxy_addr}, {"port", proxy_port},
                                       {"stats", proxy_stats}, {"stop", proxy_stop}, {NULL, NULL}};
    static const luaL_Reg mt[] = {{"__gc", proxy_stop}, {"__close", proxy_stop},
                                  {"__tostring", proxy_tostring}, {NULL, NULL}};
    luaL_setfuncs(L, mt, 0);
    luaL_newlib(L, methods);
    lua_setfield(L, -2, "__index");
  }
  lua_pop(L, 1);
  static const luaL_Reg fns[] = {{"profile", faults_profile}, {"proxy", f_proxy}, {NULL, NULL}};
  luaL_newlib(L, fns);
  return 1;
}
