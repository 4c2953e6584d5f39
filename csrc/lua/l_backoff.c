/* Lua face of rw_backoff. b:wait(ctx) sleeps through the waiting policy
 * (l_wait.h). */
#include <math.h>
#include <string.h>

#include "core/backoff.h"
#include "l_wait.h"
#include "lrw.h"

#define BACKOFF_MT "reliablewriter.Backoff"

static rw_backoff *check(lua_State *L) { return luaL_checkudata(L, 1, BACKOFF_MT); }

static int backoff_new(lua_State *L) {
  static const char *const known[] = {"min_wait", "max_wait", "total_wait", "multiplier",
                                      "jitter", "seed", NULL};
  static const char *const jitters[] = {"full", "equal", "decorrelated", "none", NULL};
  rw_backoff_config c = rw_backoff_defaults();
  if (!lua_isnoneornil(L, 1)) {
    rw_lua_check_options(L, 1, 1, known);
    c.min_wait = rw_lua_opt_number(L, 1, 1, "min_wait", c.min_wait, 1e-6, 86400);
    c.max_wait = rw_lua_opt_number(L, 1, 1, "max_wait", fmax(c.max_wait, c.min_wait), 1e-6, 86400);
    c.total_wait = rw_lua_opt_number(L, 1, 1, "total_wait", c.total_wait, 0, 86400 * 30);
    c.multiplier = rw_lua_opt_number(L, 1, 1, "multiplier", c.multiplier, 1, 100);
    c.jitter = (rw_jitter)rw_lua_opt_choice(L, 1, 1, "jitter", RW_JITTER_FULL, jitters);
    c.seed = (uint64_t)rw_lua_opt_integer(L, 1, 1, "seed", 0, 0, INT64_MAX);
  }
  if (c.max_wait < c.min_wait) {
    lua_pushfstring(L, "option 'max_wait' must be >= min_wait (got %f < %f)", c.max_wait,
                    c.min_wait);
    return luaL_argerror(L, 1, lua_tostring(L, -1));
  }
  rw_error *e = rw_backoff_config_check(&c);
  if (e) {
    lua_pushstring(L, rw_error_message(e));
    rw_error_unref(e);
    return luaL_argerror(L, 1, lua_tostring(L, -1));
  }
  rw_backoff *b = lua_newuserdata(L, sizeof *b);
  rw_backoff_init(b, &c);
  luaL_setmetatable(L, BACKOFF_MT);
  return 1;
}

static int backoff_next(lua_State *L) {
  double d;
  rw_error *e = rw_backoff_next(check(L), &d);
  if (e) return rw_lua_fail(L, e);
  lua_pushnumber(L, d);
  return 1;
}

static int backoff_reset(lua_State *L) {
  rw_backoff_reset(check(L));
  return 0;
}

static int backoff_remaining(lua_State *L) {
  lua_pushnumber(L, rw_backoff_remaining(check(L)));
  return 1;
}

static int backoff_attempts(lua_State *L) {
  lua_pushinteger(L, check(L)->attempt);
  return 1;
}

/* ctx ended: nil, its error; else true. */
static int sleep_resume(lua_State *L) {
  if (strcmp(luaL_checkstring(L, 2), "done") == 0) {
    lua_getfield(L, 1, "ctx");
    return rw_lua_fail(L, rw_ctx_err(rw_lua_checkctx(L, -1)));
  }
  lua_pushboolean(L, 1);
  return 1;
}

/* b:wait(ctx): sleeps the next delay; true, or nil, err (budget or ctx). */
static int backoff_wait(lua_State *L) {
  rw_backoff *b = check(L);
  rw_lua_method_ctx(L, 2, 1, "wait", false); /* the sleep's op watches it */
  double d;
  rw_error *e = rw_backoff_next(b, &d);
  if (e) return rw_lua_fail(L, e);
  rw_lua_new_sleep_op(L, 2, d, sleep_resume);
  return rw_lua_wait(L);
}

int rw_lua_open_backoff(lua_State *L) {
  static const luaL_Reg methods[] = {{"next", backoff_next},
                                     {"reset", backoff_reset},
                                     {"remaining", backoff_remaining},
                                     {"attempts", backoff_attempts},
                                     {NULL, NULL}};
  static const luaL_Reg waiting[] = {{"wait", backoff_wait}, {NULL, NULL}};
  luaL_newmetatable(L, BACKOFF_MT);
  luaL_newlib(L, methods);
  rw_lua_set_waiting_methods(L, waiting);
  lua_pushvalue(L, -1);
  lua_setfield(L, -3, "__index");
  static const luaL_Reg fns[] = {{"new", backoff_new}, {NULL, NULL}};
  luaL_newlib(L, fns);
  lua_insert(L, -2);
  lua_setfield(L, -2, "methods");
  lua_remove(L, -2);
  return 1;
}
