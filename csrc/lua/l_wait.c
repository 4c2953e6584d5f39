/* Waiting methods: the Lua functions in the method tables that run a C step
 * through the registered waiting policy (see l_wait.h). */
#include "l_wait.h"

#include <math.h>
#include <stdio.h>
#include <time.h>

#include "core/clock.h"

#define PROTOCOL_KEY "reliablewriter.wait_protocol"
#define FACTORY_KEY "reliablewriter.wait_method_factory"

static const char wait_marker = 0; /* its address marks "wait on this op" */

/* The factory: method(step) -> function(...) return run(step, ...) end, where
 * run is the policy waiting.lua registers (loaded on first use when only the
 * C module was required). */
static const char factory_src[] =
    "local protocol = ...\n"
    "return function(step)\n"
    "  return function(...)\n"
    "    local run = protocol.run\n"
    "    if not run then\n"
    "      require 'reliablewriter.waiting'\n"
    "      run = protocol.run\n"
    "    end\n"
    "    return run(step, ...)\n"
    "  end\n"
    "end\n";

/* Pushes the protocol table, made on first use. */
static void push_protocol(lua_State *L) {
  lua_getfield(L, LUA_REGISTRYINDEX, PROTOCOL_KEY);
  if (!lua_isnil(L, -1)) return;
  lua_pop(L, 1);
  lua_createtable(L, 0, 2);
  lua_pushlightuserdata(L, (void *)&wait_marker);
  lua_setfield(L, -2, "WAIT");
  lua_pushvalue(L, -1);
  lua_setfield(L, LUA_REGISTRYINDEX, PROTOCOL_KEY);
}

static void push_factory(lua_State *L) {
  lua_getfield(L, LUA_REGISTRYINDEX, FACTORY_KEY);
  if (!lua_isnil(L, -1)) return;
  lua_pop(L, 1);
  if (luaL_loadbuffer(L, factory_src, sizeof factory_src - 1, "=reliablewriter.wait_method") != 0)
    lua_error(L);
  push_protocol(L);
  lua_call(L, 1, 1);
  lua_pushvalue(L, -1);
  lua_setfield(L, LUA_REGISTRYINDEX, FACTORY_KEY);
}

void rw_lua_set_waiting_methods(lua_State *L, const luaL_Reg *l) {
  for (; l->name; l++) {
    push_factory(L);
    lua_pushcfunction(L, l->func);
    lua_call(L, 1, 1);
    lua_setfield(L, -2, l->name);
  }
}

int rw_lua_open_wait(lua_State *L) {
  push_protocol(L);
  return 1;
}

int rw_lua_wait(lua_State *L) {
  lua_pushlightuserdata(L, (void *)&wait_marker);
  lua_insert(L, -2);
  return 2;
}

int rw_lua_new_op(lua_State *L, lua_CFunction ready, lua_CFunction block, lua_CFunction resume) {
  lua_createtable(L, 0, 8);
  lua_pushcfunction(L, ready);
  lua_setfield(L, -2, "ready");
  lua_pushcfunction(L, block);
  lua_setfield(L, -2, "block");
  lua_pushcfunction(L, resume);
  lua_setfield(L, -2, "resume");
  lua_newtable(L);
  lua_setfield(L, -2, "fds");
  return lua_gettop(L);
}

/* ---- sleeping ---- */

static double op_number(lua_State *L, const char *field) {
  lua_getfield(L, 1, field);
  double v = lua_tonumber(L, -1);
  lua_pop(L, 1);
  return v;
}

static rw_ctx *op_ctx(lua_State *L) {
  lua_getfield(L, 1, "ctx");
  rw_ctx *c = lua_isnil(L, -1) ? NULL : rw_lua_checkctx(L, -1);
  lua_pop(L, 1);
  return c;
}

static int sleep_ready(lua_State *L) {
  lua_pushboolean(L, rw_mono_now() >= op_number(L, "until"));
  return 1;
}

static int sleep_timeout(lua_State *L) {
  lua_pushnumber(L, fmax(0, op_number(L, "until") - rw_mono_now()));
  return 1;
}

static int sleep_block(lua_State *L) {
  double left = fmax(0, op_number(L, "until") - rw_mono_now());
  double t = lua_isnoneornil(L, 2) ? left : fmin(left, fmax(0, lua_tonumber(L, 2)));
  rw_ctx *c = op_ctx(L);
  if (c) {
    rw_ctx_wait(c, t);
  } else {
    struct timespec ts = {(time_t)t, (long)((t - floor(t)) * 1e9)};
    nanosleep(&ts, NULL);
  }
  return 0;
}

int rw_lua_new_sleep_op(lua_State *L, int ctx_idx, double seconds, lua_CFunction resume) {
  if (ctx_idx < 0) ctx_idx = lua_gettop(L) + ctx_idx + 1;
  int op = rw_lua_new_op(L, sleep_ready, sleep_block, resume);
  lua_pushcfunction(L, sleep_timeout);
  lua_setfield(L, op, "timeout");
  lua_pushnumber(L, rw_mono_now() + seconds);
  lua_setfield(L, op, "until");
  if (ctx_idx) {
    lua_pushvalue(L, ctx_idx);
    lua_setfield(L, op, "ctx");
  }
  return op;
}

/* ---- argument errors ---- */

int rw_lua_method_argerror(lua_State *L, int pos, const char *fname, const char *fmt, ...) {
  char msg[256];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  return luaL_error(L, "bad argument #%d to '%s' (%s)", pos, fname, msg);
}
