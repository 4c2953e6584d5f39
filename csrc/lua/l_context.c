/* Lua face of rw_ctx: userdata holding one reference. */
#include <math.h>

#include "core/clock.h"
#include "l_wait.h"
#include "lrw.h"

#define CTX_MT "reliablewriter.Context"

typedef struct {
  rw_ctx *c; /* NULL once closed by __gc */
} lctx;

void rw_lua_push_ctx(lua_State *L, rw_ctx *c) {
  lctx *u = lua_newuserdata(L, sizeof *u);
  u->c = c;
  luaL_setmetatable(L, CTX_MT);
}

rw_ctx *rw_lua_checkctx(lua_State *L, int idx) {
  lctx *u = luaL_checkudata(L, idx, CTX_MT);
  if (!u->c) rw_lua_closed_error(L, "context");
  return u->c;
}

rw_ctx *rw_lua_optctx(lua_State *L, int idx) {
  if (lua_isnoneornil(L, idx)) return NULL;
  return rw_lua_checkctx(L, idx);
}

rw_ctx *rw_lua_method_ctx(lua_State *L, int idx, int pos, const char *fname, bool optional) {
  if (optional && lua_isnoneornil(L, idx)) return NULL;
  lctx *u = luaL_testudata(L, idx, CTX_MT);
  if (!u) rw_lua_method_argerror(L, pos, fname, "context expected, got %s", luaL_typename(L, idx));
  if (!u->c) rw_lua_closed_error(L, "context");
  return u->c;
}

static int push_new(lua_State *L, rw_ctx *c) {
  if (!c) return luaL_error(L, "out of memory making a context");
  rw_lua_push_ctx(L, c);
  return 1;
}

static int ctx_background(lua_State *L) { return push_new(L, rw_ctx_background()); }

static int ctx_with_cancel(lua_State *L) {
  return push_new(L, rw_ctx_with_cancel(rw_lua_checkctx(L, 1)));
}

static int ctx_with_timeout(lua_State *L) {
  rw_ctx *p = rw_lua_checkctx(L, 1);
  double s = rw_lua_check_number_range(L, 2, "timeout (seconds)", 0, 1e9);
  return push_new(L, rw_ctx_with_timeout(p, s));
}

static int ctx_with_deadline(lua_State *L) {
  rw_ctx *p = rw_lua_checkctx(L, 1);
  double unix_t = rw_lua_check_number_range(L, 2, "deadline (unix seconds)", 0, 1e12);
  return push_new(L, rw_ctx_with_deadline(p, rw_mono_now() + (unix_t - rw_real_now())));
}

static int ctx_cancel(lua_State *L) {
  rw_ctx *c = rw_lua_checkctx(L, 1);
  rw_error *cause = lua_isnoneornil(L, 2) ? NULL : rw_lua_to_error(L, 2, RW_E_CANCELED);
  lua_pushboolean(L, rw_ctx_cancel(c, cause));
  return 1;
}

static int ctx_err(lua_State *L) {
  rw_error *e = rw_ctx_err(rw_lua_checkctx(L, 1));
  if (!e) return 0;
  rw_lua_push_error(L, e);
  return 1;
}

static int ctx_done(lua_State *L) {
  lua_pushboolean(L, rw_ctx_done(rw_lua_checkctx(L, 1)));
  return 1;
}

static int ctx_deadline(lua_State *L) {
  double d = rw_ctx_deadline(rw_lua_checkctx(L, 1));
  if (!(d < INFINITY)) return 0;
  lua_pushnumber(L, rw_real_now() + (d - rw_mono_now()));
  return 1;
}

/* wait_blocking([timeout]): a condition-variable wait in C, whatever the
 * waiting policy (ctx:wait is the one that honours it). */
static int ctx_wait_blocking(lua_State *L) {
  rw_ctx *c = rw_lua_checkctx(L, 1);
  double t = lua_isnoneornil(L, 2) ? -1 : rw_lua_check_number_range(L, 2, "timeout", 0, 1e9);
  lua_pushboolean(L, rw_ctx_wait(c, t));
  return 1;
}

/* ---- ctx:wait([timeout]): true when the context is done, false after timeout ---- */

static rw_ctx *op_self(lua_State *L) {
  lua_getfield(L, 1, "ctx");
  rw_ctx *c = rw_lua_checkctx(L, -1);
  lua_pop(L, 1);
  return c;
}

static int wait_ready(lua_State *L) {
  lua_pushboolean(L, rw_ctx_done(op_self(L)));
  return 1;
}

static int wait_timeout(lua_State *L) {
  double t = rw_ctx_timeout(op_self(L));
  if (t < 0) return 0;
  lua_pushnumber(L, t);
  return 1;
}

static int wait_block(lua_State *L) {
  rw_ctx *c = op_self(L);
  rw_ctx_wait(c, lua_isnoneornil(L, 2) ? -1 : lua_tonumber(L, 2));
  return 0;
}

static int wait_resume(lua_State *L) { return wait_ready(L); }

static int ctx_wait(lua_State *L) {
  rw_ctx *c = rw_lua_checkctx(L, 1);
  double t = -1;
  if (!lua_isnoneornil(L, 2)) {
    t = lua_type(L, 2) == LUA_TNUMBER ? lua_tonumber(L, 2) : NAN;
    if (!(t >= 0)) rw_lua_method_argerror(L, 1, "wait", "timeout must be a number >= 0");
  }
  if (rw_ctx_done(c) || t == 0) {
    lua_pushboolean(L, rw_ctx_done(c));
    return 1;
  }
  int op = rw_lua_new_op(L, wait_ready, wait_block, wait_resume);
  lua_pushcfunction(L, wait_timeout);
  lua_setfield(L, op, "timeout");
  lua_pushvalue(L, 1);
  lua_setfield(L, op, "ctx"); /* a workgroup watches it: no eventfd needed */
  if (t > 0) {
    lua_pushnumber(L, t);
    lua_setfield(L, op, "seconds");
  }
  return rw_lua_wait(L);
}

/* poll(): true once done; false while live. */
static int ctx_poll(lua_State *L) { return ctx_done(L); }

static int ctx_pollfd(lua_State *L) {
  int fd = rw_ctx_pollfd(rw_lua_checkctx(L, 1));
  if (fd < 0) return luaL_error(L, "cannot make an eventfd for the context");
  lua_pushinteger(L, fd);
  return 1;
}

static int ctx_events(lua_State *L) {
  rw_lua_checkctx(L, 1);
  lua_pushliteral(L, "r");
  return 1;
}

static int ctx_timeout(lua_State *L) {
  double t = rw_ctx_timeout(rw_lua_checkctx(L, 1));
  if (t < 0) return 0;
  lua_pushnumber(L, t);
  return 1;
}

static int ctx_close(lua_State *L) {
  lctx *u = luaL_checkudata(L, 1, CTX_MT);
  if (u->c) rw_ctx_cancel(u->c, NULL);
  return 0;
}

static int ctx_gc(lua_State *L) {
  lctx *u = luaL_checkudata(L, 1, CTX_MT);
  rw_ctx *c = u->c;
  u->c = NULL;
  rw_ctx_unref(c);
  return 0;
}

static int ctx_tostring(lua_State *L) {
  lctx *u = luaL_checkudata(L, 1, CTX_MT);
  if (!u->c) lua_pushliteral(L, "context (collected)");
  else lua_pushfstring(L, "context (%s): %p", rw_ctx_done(u->c) ? "done" : "live", (void *)u->c);
  return 1;
}

static int ctx_eq(lua_State *L) {
  lctx *a = luaL_testudata(L, 1, CTX_MT), *b = luaL_testudata(L, 2, CTX_MT);
  lua_pushboolean(L, a && b && a->c == b->c);
  return 1;
}

static int ctx_live_count(lua_State *L) {
  lua_pushinteger(L, rw_ctx_live_count());
  return 1;
}

static int ctx_is_context(lua_State *L) {
  lua_pushboolean(L, luaL_testudata(L, 1, CTX_MT) != NULL);
  return 1;
}

int rw_lua_open_context(lua_State *L) {
  static const luaL_Reg methods[] = {
      {"with_cancel", ctx_with_cancel}, {"with_timeout", ctx_with_timeout},
      {"with_deadline", ctx_with_deadline}, {"cancel", ctx_cancel},
      {"err", ctx_err},                 {"done", ctx_done},
      {"deadline", ctx_deadline},       {"wait_blocking", ctx_wait_blocking},
      {"poll", ctx_poll},
      {"pollfd", ctx_pollfd},           {"events", ctx_events},
      {"timeout", ctx_timeout},         {NULL, NULL}};
  static const luaL_Reg meta[] = {{"__gc", ctx_gc},
                                  {"__close", ctx_close},
                                  {"__tostring", ctx_tostring},
                                  {"__eq", ctx_eq},
                                  {NULL, NULL}};
  luaL_newmetatable(L, CTX_MT);
  luaL_setfuncs(L, meta, 0);
  static const luaL_Reg waiting[] = {{"wait", ctx_wait}, {NULL, NULL}};
  luaL_newlib(L, methods);
  rw_lua_set_waiting_methods(L, waiting);
  lua_pushvalue(L, -1);
  lua_setfield(L, -3, "__index");
  /* module table: background(), live_count(), is_context(), methods */
  static const luaL_Reg fns[] = {{"background", ctx_background},
                                 {"live_count", ctx_live_count},
                                 {"is_context", ctx_is_context},
                                 {NULL, NULL}};
  luaL_newlib(L, fns);
  lua_insert(L, -2);
  lua_setfield(L, -2, "methods");
  lua_remove(L, -2); /* metatable */
  return 1;
}
