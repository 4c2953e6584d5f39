/* testbed.faulty(desc, { seed =, p_error =, codes = {...}, p_partial =,
 *   p_after =, partial_align = }): a sink descriptor wrapping any other
 * (rw.gcs{}, rw.file{}, another faulty one) whose sinks inject errors
 * (testbed/faulty.h). It carries the core's __rw_sink seam (lua/lrw.h), so
 * rw.new{ sink = testbed.faulty(...) } makes its sinks through it; the inner
 * descriptor (kept in the uservalue) makes the inner sink through its own.
 *   d:kind() -> "faulty", d:inner() -> the inner descriptor,
 *   d:stats() -> { puts, queries, injected, partial, after } over every sink made. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "testbed/lua/ltb.h"
#include "testbed/faulty.h"

#define FAULTY_MT "reliablewriter.FaultySink"
#define MAX_CODES 32
#define MAX_DEPTH 8

typedef struct faulty_desc {
  rw_faulty_config fc; /* codes point into `codes` */
  char *codes[MAX_CODES];
  rw_faulty_counters *counters;
  int depth; /* faulty descriptors below this one */
} faulty_desc;

#define set_uservalue rw_lua_setuservalue
#define get_uservalue rw_lua_getuservalue

static faulty_desc *check_faulty(lua_State *L, int idx) { return luaL_checkudata(L, idx, FAULTY_MT); }

static int faulty_gc(lua_State *L) {
  faulty_desc *d = check_faulty(L, 1);
  for (int i = 0; i < MAX_CODES; i++) free(d->codes[i]);
  rw_faulty_counters_unref(d->counters);
  memset(d, 0, sizeof *d);
  return 0;
}

static bool code_known(const char *code) {
  if (rw_code_lookup(code)) return true;
  int status = 0, used = 0;
  return sscanf(code, "http.%3d%n", &status, &used) == 1 && !code[used] && status >= 100 && status <= 599;
}

static void codes_option(lua_State *L, int idx, int arg, faulty_desc *d) {
  lua_getfield(L, idx, "codes");
  if (lua_isnil(L, -1)) {
    lua_pop(L, 1);
    return;
  }
  if (!lua_istable(L, -1)) luaL_argerror(L, arg, "option 'codes' must be a list of error codes");
  size_t n = lua_rawlen(L, -1);
  if (n == 0 || n > MAX_CODES) luaL_argerror(L, arg, "option 'codes' must hold 1 to 32 codes");
  for (size_t i = 1; i <= n; i++) {
    lua_rawgeti(L, -1, (int)i);
    const char *c = lua_tostring(L, -1);
    if (lua_type(L, -1) != LUA_TSTRING || !code_known(c))
      luaL_argerror(L, arg, lua_pushfstring(L, "option 'codes': '%s' is not a known error code",
                                            c ? c : luaL_typename(L, -1)));
    d->codes[i - 1] = rw_lua_strdup(L, c);
    lua_pop(L, 1);
  }
  d->fc.codes = (const char *const *)d->codes;
  d->fc.ncodes = n;
  lua_pop(L, 1);
}

static int depth_of(lua_State *L, int idx) {
  faulty_desc *inner = luaL_testudata(L, idx, FAULTY_MT);
  return inner ? inner->depth + 1 : 0;
}

static int tb_faulty(lua_State *L) {
  static const char *const known[] = {"seed", "p_error", "codes", "p_partial", "p_after",
                                      "partial_align", NULL};
  if (!rw_lua_is_sink(L, 1))
    return luaL_argerror(L, 1, lua_pushfstring(L, "sink descriptor expected (rw.gcs{...}, rw.file{...}), got %s",
                                               luaL_typename(L, 1)));
  if (depth_of(L, 1) >= MAX_DEPTH) return luaL_argerror(L, 1, "faulty sinks nested too deeply");
  if (lua_isnoneornil(L, 2)) {
    lua_settop(L, 1);
    lua_newtable(L);
  }
  rw_lua_check_options(L, 2, 2, known);
  faulty_desc *d = lua_newuserdata(L, sizeof *d);
  memset(d, 0, sizeof *d);
  luaL_setmetatable(L, FAULTY_MT);
  d->depth = depth_of(L, 1);
  lua_createtable(L, 0, 1);
  lua_pushvalue(L, 1);
  lua_setfield(L, -2, "inner");
  set_uservalue(L, -2);
  d->fc.seed = (uint64_t)rw_lua_opt_integer(L, 2, 2, "seed", 1, 0, INT64_C(9007199254740992));
  d->fc.p_error = rw_lua_opt_number(L, 2, 2, "p_error", 0.1, 0, 1);
  d->fc.p_partial = rw_lua_opt_number(L, 2, 2, "p_partial", 0, 0, 1);
  d->fc.p_after = rw_lua_opt_number(L, 2, 2, "p_after", 0, 0, 1);
  if (d->fc.p_partial + d->fc.p_after > 1) luaL_argerror(L, 2, "p_partial + p_after must be <= 1");
  d->fc.partial_align = (uint64_t)rw_lua_opt_integer(L, 2, 2, "partial_align", 256 * 1024, 1, INT64_C(1) << 40);
  codes_option(L, 2, 2, d);
  if (!(d->counters = rw_faulty_counters_new())) return luaL_error(L, "out of memory");
  return 1;
}

/* The __rw_sink seam: the inner descriptor makes the inner sink through its
 * own seam (a core sink whose vtable lives in core.so: sinks cross the
 * boundary as plain structs of the same source). */
static rw_sink *faulty_make(lua_State *L, int idx, rw_error **err) {
  faulty_desc *d = check_faulty(L, idx);
  get_uservalue(L, idx);
  lua_getfield(L, -1, "inner");
  rw_sink *inner = rw_lua_sink_make(L, lua_gettop(L), err);
  lua_pop(L, 2);
  if (!inner) return NULL;
  rw_faulty_config fc = d->fc;
  fc.counters = d->counters;
  return rw_faulty_sink_new(inner, &fc, err);
}

static int faulty_kind(lua_State *L) {
  check_faulty(L, 1);
  lua_pushliteral(L, "faulty");
  return 1;
}

static int faulty_inner(lua_State *L) {
  check_faulty(L, 1);
  get_uservalue(L, 1);
  lua_getfield(L, -1, "inner");
  return 1;
}

/* No fault profile of its own (gcs descriptors have one): nil. */
static int faulty_faults(lua_State *L) {
  check_faulty(L, 1);
  lua_pushnil(L);
  return 1;
}

static int faulty_stats(lua_State *L) {
  faulty_desc *d = check_faulty(L, 1);
  rw_faulty_stats st;
  rw_faulty_counters_read(d->counters, &st);
  lua_createtable(L, 0, 5);
  const struct {
    const char *k;
    uint64_t v;
  } f[] = {{"puts", st.puts},         {"queries", st.queries}, {"injected", st.injected},
           {"partial", st.partial}, {"after", st.after}};
  for (size_t i = 0; i < sizeof f / sizeof f[0]; i++) {
    lua_pushnumber(L, (lua_Number)f[i].v);
    lua_setfield(L, -2, f[i].k);
  }
  return 1;
}

static int faulty_tostring(lua_State *L) {
  lua_pushfstring(L, "sink faulty (p_error %f)", check_faulty(L, 1)->fc.p_error);
  return 1;
}

/* Pushes the faulty() constructor. */
int rw_tb_open_faulty(lua_State *L) {
  static const luaL_Reg methods[] = {{"kind", faulty_kind},     {"inner", faulty_inner},
                                     {"faults", faulty_faults}, {"stats", faulty_stats},
                                     {NULL, NULL}};
  static const luaL_Reg mt[] = {{"__gc", faulty_gc}, {"__tostring", faulty_tostring}, {NULL, NULL}};
  static const rw_lua_sink_seam seam = {faulty_make};
  rw_lua_new_class(L, FAULTY_MT, mt, methods, "__rw_sink", &seam);
  lua_pushcfunction(L, tb_faulty);
  return 1;
}
