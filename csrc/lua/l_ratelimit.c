/* Lua face of rw_ratelimit. rl:wait(ctx, n) is in init.lua (waiting policy). */
#include "core/ratelimit.h"
#include "lrw.h"

#define RL_MT "reliablewriter.RateLimit"

typedef struct {
  rw_ratelimit *rl;
} lrl;

static rw_ratelimit *check(lua_State *L) {
  lrl *u = luaL_checkudata(L, 1, RL_MT);
  if (!u->rl) rw_lua_closed_error(L, "rate limiter");
  return u->rl;
}

static double check_n(lua_State *L, int arg) {
  return lua_isnoneornil(L, arg) ? 1 : rw_lua_check_number_range(L, arg, "n (tokens)", 0, 1e15);
}

static int rl_new(lua_State *L) {
  static const char *const known[] = {"rate", "burst", NULL};
  rw_lua_check_options(L, 1, 1, known);
  lua_getfield(L, 1, "rate");
  if (lua_isnil(L, -1)) return luaL_argerror(L, 1, "option 'rate' is required (tokens a second, > 0)");
  lua_pop(L, 1);
  double rate = rw_lua_opt_number(L, 1, 1, "rate", 1, 1e-9, 1e15);
  double burst = rw_lua_opt_number(L, 1, 1, "burst", rate < 1 ? 1 : rate, 1, 1e15);
  rw_error *e = NULL;
  lrl *u = lua_newuserdata(L, sizeof *u);
  u->rl = NULL;
  luaL_setmetatable(L, RL_MT);
  u->rl = rw_ratelimit_new(rate, burst, &e);
  if (!u->rl) return rw_lua_raise(L, e);
  return 1;
}

static int rl_try(lua_State *L) {
  rw_ratelimit *rl = check(L);
  lua_pushboolean(L, rw_ratelimit_try(rl, check_n(L, 2)));
  return 1;
}

static int rl_reserve(lua_State *L) {
  rw_ratelimit *rl = check(L);
  double d;
  rw_error *e = rw_ratelimit_reserve(rl, check_n(L, 2), &d);
  if (e) return rw_lua_raise(L, e);
  lua_pushnumber(L, d);
  return 1;
}

static int rl_cancel(lua_State *L) {
  rw_ratelimit *rl = check(L);
  rw_ratelimit_cancel(rl, check_n(L, 2));
  return 0;
}

static int rl_tokens(lua_State *L) {
  lua_pushnumber(L, rw_ratelimit_tokens(check(L)));
  return 1;
}

static int rl_gc(lua_State *L) {
  lrl *u = luaL_checkudata(L, 1, RL_MT);
  rw_ratelimit *rl = u->rl;
  u->rl = NULL;
  rw_ratelimit_free(rl);
  return 0;
}

int rw_lua_open_ratelimit(lua_State *L) {
  static const luaL_Reg methods[] = {{"try", rl_try},       {"reserve", rl_reserve},
                                     {"cancel", rl_cancel}, {"tokens", rl_tokens},
                                     {"close", rl_gc},      {NULL, NULL}};
  luaL_newmetatable(L, RL_MT);
  lua_pushcfunction(L, rl_gc);
  lua_setfield(L, -2, "__gc");
  lua_pushcfunction(L, rl_gc);
  lua_setfield(L, -2, "__close");
  luaL_newlib(L, methods);
  lua_pushvalue(L, -1);
  lua_setfield(L, -3, "__index");
  static const luaL_Reg fns[] = {{"new", rl_new}, {NULL, NULL}};
  luaL_newlib(L, fns);
  lua_insert(L, -2);
  lua_setfield(L, -2, "methods");
  lua_remove(L, -2);
  return 1;
}
