/* Lua face of rw_ratelimit. rl:wait(ctx, n) sleeps through the waiting
 * policy (l_wait.h). */
#include <string.h>

#include "core/ratelimit.h"
#include "l_wait.h"
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

/* The sleep of rl:wait ended: when its ctx did, the tokens go back. */
static int wait_resume(lua_State *L) {
  if (strcmp(luaL_checkstring(L, 2), "done") != 0) {
    lua_pushboolean(L, 1);
    return 1;
  }
  lua_getfield(L, 1, "rl");
  lrl *u = luaL_checkudata(L, -1, RL_MT);
  lua_getfield(L, 1, "n");
  if (u->rl) rw_ratelimit_cancel(u->rl, lua_tonumber(L, -1));
  lua_getfield(L, 1, "ctx");
  return rw_lua_fail(L, rw_ctx_err(rw_lua_checkctx(L, -1)));
}

/* rl:wait(ctx [, n]): takes n tokens (1), sleeping as needed; gives them back
 * when ctx ends; fails at once when the wait would pass ctx's deadline. */
static int rl_wait(lua_State *L) {
  rw_ratelimit *rl = check(L);
  rw_ctx *ctx = rw_lua_method_ctx(L, 2, 1, "wait", false);
  double n = 1;
  if (!lua_isnoneornil(L, 3)) {
    n = lua_type(L, 3) == LUA_TNUMBER ? lua_tonumber(L, 3) : -1;
    if (!(n >= 0 && n <= 1e15)) rw_lua_method_argerror(L, 2, "wait", "n (tokens) must be a number in [0, 1e15]");
  }
  rw_error *e = rw_ctx_err(ctx);
  if (e) return rw_lua_fail(L, e);
  double d;
  if ((e = rw_ratelimit_reserve(rl, n, &d))) return rw_lua_raise(L, e);
  if (d <= 0) {
    lua_pushboolean(L, 1);
    return 1;
  }
  double left = rw_ctx_timeout(ctx);
  if (left >= 0 && left < d) {
    rw_ratelimit_cancel(rl, n);
    return rw_lua_fail(L, rw_err(RW_E_DEADLINE, "rate limit wait of %.3f s would pass the deadline (%.3f s left)",
                                 d, left));
  }
  int op = rw_lua_new_sleep_op(L, 2, d, wait_resume);
  lua_pushvalue(L, 1);
  lua_setfield(L, op, "rl");
  lua_pushnumber(L, n);
  lua_setfield(L, op, "n");
  return rw_lua_wait(L);
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
  static const luaL_Reg waiting[] = {{"wait", rl_wait}, {NULL, NULL}};
  luaL_newlib(L, methods);
  rw_lua_set_waiting_methods(L, waiting);
  lua_pushvalue(L, -1);
  lua_setfield(L, -3, "__index");
  static const luaL_Reg fns[] = {{"new", rl_new}, {NULL, NULL}};
  luaL_newlib(L, fns);
  lua_insert(L, -2);
  lua_setfield(L, -2, "methods");
  lua_remove(L, -2);
  return 1;
}
