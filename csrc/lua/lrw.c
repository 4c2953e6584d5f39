/* Shared binding helpers and the error object type. */
#include "lrw.h"

#include <jansson.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#define ERROR_MT "reliablewriter.Error"

typedef struct {
  rw_error *e;
} lerror;

void rw_lua_push_error(lua_State *L, rw_error *e) {
  if (!e) e = rw_err(RW_E_INTERNAL, "out of memory while making an error");
  lerror *u = lua_newuserdata(L, sizeof *u);
  u->e = e;
  luaL_setmetatable(L, ERROR_MT);
}

int rw_lua_fail(lua_State *L, rw_error *e) {
  lua_pushnil(L);
  rw_lua_push_error(L, e);
  return 2;
}

int rw_lua_raise(lua_State *L, rw_error *e) {
  rw_lua_push_error(L, e);
  return lua_error(L);
}

static rw_error *check_lerror(lua_State *L, int idx) {
  return ((lerror *)luaL_checkudata(L, idx, ERROR_MT))->e;
}

/* Converts a Lua value to a new rw_error reference: an error object is
 * shared, anything else becomes an rw.canceled/`code` error with its text. */
rw_error *rw_lua_to_error(lua_State *L, int idx, const char *code) {
  lerror *u = luaL_testudata(L, idx, ERROR_MT);
  if (u) return rw_error_ref(u->e);
  const char *s = luaL_tolstring(L, idx, NULL);
  rw_error *e = rw_err(code, "%s", s);
  lua_pop(L, 1);
  return e;
}

static int lerror_gc(lua_State *L) {
  lerror *u = luaL_checkudata(L, 1, ERROR_MT);
  rw_error_unref(u->e);
  u->e = NULL;
  return 0;
}

static int lerror_tostring(lua_State *L) {
  char buf[2048];
  rw_error_format(check_lerror(L, 1), buf, sizeof buf);
  lua_pushstring(L, buf);
  return 1;
}

static int lerror_is(lua_State *L) {
  rw_error *e = check_lerror(L, 1);
  lua_pushboolean(L, rw_error_is(e, luaL_checkstring(L, 2)));
  return 1;
}

static int lerror_eq(lua_State *L) {
  lerror *a = luaL_testudata(L, 1, ERROR_MT), *b = luaL_testudata(L, 2, ERROR_MT);
  lua_pushboolean(L, a && b && a->e == b->e);
  return 1;
}

static int lerror_index(lua_State *L) {
  rw_error *e = check_lerror(L, 1);
  const char *k = luaL_checkstring(L, 2);
  if (strcmp(k, "code") == 0) lua_pushstring(L, rw_error_code(e));
  else if (strcmp(k, "message") == 0) lua_pushstring(L, rw_error_message(e));
  else if (strcmp(k, "retryable") == 0) lua_pushboolean(L, rw_error_retryable(e));
  else if (strcmp(k, "where") == 0) lua_pushstring(L, rw_error_where(e));
  else if (strcmp(k, "id") == 0) lua_pushstring(L, rw_error_id(e));
  else if (strcmp(k, "status") == 0) {
    if (rw_error_status(e)) lua_pushinteger(L, rw_error_status(e));
    else lua_pushnil(L);
  } else if (strcmp(k, "cause") == 0) {
    const rw_error *c = rw_error_cause(e);
    if (c) rw_lua_push_error(L, rw_error_ref((rw_error *)c));
    else lua_pushnil(L);
  } else if (strcmp(k, "is") == 0) lua_pushcfunction(L, lerror_is);
  else if (strcmp(k, "hint") == 0) {
    const rw_code_info *ci = rw_code_lookup(rw_error_code(e));
    if (ci) lua_pushstring(L, ci->hint);
    else lua_pushnil(L);
  } else lua_pushnil(L);
  return 1;
}

/* errors.new{code=, message=, cause=, status=} or errors.new(code, message) */
static int errors_new(lua_State *L) {
  const char *code, *msg;
  rw_error *cause = NULL;
  int status = 0;
  if (lua_istable(L, 1)) {
    static const char *const known[] = {"code", "message", "cause", "status", NULL};
    rw_lua_check_options(L, 1, 1, known);
    lua_getfield(L, 1, "code");
    code = luaL_optstring(L, -1, "rw.internal");
    lua_getfield(L, 1, "message");
    msg = luaL_optstring(L, -1, code);
    lua_getfield(L, 1, "cause");
    if (!lua_isnil(L, -1)) cause = rw_lua_to_error(L, lua_gettop(L), RW_E_INTERNAL);
    status = (int)rw_lua_opt_integer(L, 1, 1, "status", 0, 0, 599);
  } else {
    code = luaL_checkstring(L, 1);
    msg = luaL_optstring(L, 2, code);
  }
  if (strlen(code) >= 40) return luaL_argerror(L, 1, "code must be shorter than 40 bytes");
  lua_Debug ar;
  char where[128] = "lua";
  if (lua_getstack(L, 1, &ar) && lua_getinfo(L, "Sl", &ar))
    snprintf(where, sizeof where, "%s:%d", ar.short_src, ar.currentline);
  rw_lua_push_error(L, rw_error_make(code, status, cause, where, 0, "lua", "%s", msg));
  return 1;
}

static int errors_retryable(lua_State *L) {
  lua_pushboolean(L, rw_code_retryable(luaL_checkstring(L, 1)));
  return 1;
}

static int errors_is_error(lua_State *L) {
  lua_pushboolean(L, luaL_testudata(L, 1, ERROR_MT) != NULL);
  return 1;
}

int rw_lua_open_errors(lua_State *L) {
  if (luaL_newmetatable(L, ERROR_MT)) {
    static const luaL_Reg mt[] = {{"__gc", lerror_gc},   {"__tostring", lerror_tostring},
                                  {"__index", lerror_index}, {"__eq", lerror_eq},
                                  {NULL, NULL}};
    luaL_setfuncs(L, mt, 0);
  }
  lua_pop(L, 1);
  static const luaL_Reg fns[] = {{"new", errors_new},
                                 {"retryable", errors_retryable},
                                 {"is_error", errors_is_error},
                                 {NULL, NULL}};
  luaL_newlib(L, fns);
  /* errors.codes = { ["net.reset"] = {retryable=true, hint=...}, ... } */
  lua_newtable(L);
  const rw_code_info *ci;
  for (size_t i = 0; (ci = rw_code_at(i)); i++) {
    lua_createtable(L, 0, 2);
    lua_pushboolean(L, ci->retryable);
    lua_setfield(L, -2, "retryable");
    lua_pushstring(L, ci->hint);
    lua_setfield(L, -2, "hint");
    lua_setfield(L, -2, ci->code);
  }
  lua_setfield(L, -2, "codes");
  return 1;
}

/* ---- options ---- */

void rw_lua_check_options(lua_State *L, int idx, int arg, const char *const known[]) {
  luaL_checktype(L, idx, LUA_TTABLE);
  lua_pushnil(L);
  while (lua_next(L, idx)) {
    lua_pop(L, 1);
    bool ok = false;
    if (lua_type(L, -1) == LUA_TSTRING) {
      const char *k = lua_tostring(L, -1);
      for (int i = 0; known[i]; i++)
        if (strcmp(known[i], k) == 0) ok = true;
    }
    if (!ok) {
      int top = lua_gettop(L);
      lua_pushfstring(L, "unknown option '%s'; known: ", luaL_tolstring(L, -1, NULL));
      for (int i = 0; known[i]; i++) lua_pushfstring(L, i ? ", %s" : "%s", known[i]);
      lua_concat(L, lua_gettop(L) - top - 1);
      luaL_argerror(L, arg, lua_tostring(L, -1));
    }
  }
}

static void opt_error(lua_State *L, int arg, const char *name, const char *rule) {
  const char *got = luaL_tolstring(L, -1, NULL);
  lua_pushfstring(L, "option '%s' %s (got %s)", name, rule, got);
  luaL_argerror(L, arg, lua_tostring(L, -1));
}

double rw_lua_opt_number(lua_State *L, int idx, int arg, const char *name, double def,
                         double min, double max) {
  lua_getfield(L, idx, name);
  if (lua_isnil(L, -1)) {
    lua_pop(L, 1);
    return def;
  }
  char rule[128];
  snprintf(rule, sizeof rule, "must be a number in [%g, %g]", min, max);
  if (lua_type(L, -1) != LUA_TNUMBER) opt_error(L, arg, name, rule);
  double v = lua_tonumber(L, -1);
  if (isnan(v) || v < min || v > max) opt_error(L, arg, name, rule);
  lua_pop(L, 1);
  return v;
}

int64_t rw_lua_opt_integer(lua_State *L, int idx, int arg, const char *name, int64_t def,
                           int64_t min, int64_t max) {
  lua_getfield(L, idx, name);
  if (lua_isnil(L, -1)) {
    lua_pop(L, 1);
    return def;
  }
  char rule[128];
  snprintf(rule, sizeof rule, "must be a whole number in [%lld, %lld]", (long long)min,
           (long long)max);
  if (lua_type(L, -1) != LUA_TNUMBER) opt_error(L, arg, name, rule);
  double v = lua_tonumber(L, -1);
  if (isnan(v) || v != floor(v) || v < (double)min || v > (double)max)
    opt_error(L, arg, name, rule);
  lua_pop(L, 1);
  return (int64_t)v;
}

int rw_lua_opt_choice(lua_State *L, int idx, int arg, const char *name, int def,
                      const char *const choices[]) {
  lua_getfield(L, idx, name);
  if (lua_isnil(L, -1)) {
    lua_pop(L, 1);
    return def;
  }
  if (lua_type(L, -1) == LUA_TSTRING) {
    const char *s = lua_tostring(L, -1);
    for (int i = 0; choices[i]; i++)
      if (strcmp(s, choices[i]) == 0) {
        lua_pop(L, 1);
        return i;
      }
  }
  int top = lua_gettop(L);
  lua_pushstring(L, "must be one of ");
  for (int i = 0; choices[i]; i++) lua_pushfstring(L, i ? ", \"%s\"" : "\"%s\"", choices[i]);
  lua_concat(L, lua_gettop(L) - top);
  const char *rule = lua_tostring(L, -1);
  lua_pushvalue(L, -2);
  opt_error(L, arg, name, rule);
  return def;
}

char *rw_lua_strndup(lua_State *L, const char *s, size_t len) {
  if (!s) return NULL;
  char *c = malloc(len + 1);
  if (!c) luaL_error(L, "out of memory");
  memcpy(c, s, len);
  c[len] = 0;
  return c;
}

char *rw_lua_strdup(lua_State *L, const char *s) { return s ? rw_lua_strndup(L, s, strlen(s)) : NULL; }

bool rw_lua_opt_given(lua_State *L, int idx, const char *name) {
  lua_getfield(L, idx, name);
  bool given = !lua_isnil(L, -1);
  lua_pop(L, 1);
  return given;
}

char *rw_lua_opt_string(lua_State *L, int idx, int arg, const char *name, bool required,
                        size_t *len) {
  lua_getfield(L, idx, name);
  if (lua_isnil(L, -1)) {
    lua_pop(L, 1);
    if (required) luaL_argerror(L, arg, lua_pushfstring(L, "option '%s' is required", name));
    return NULL;
  }
  if (lua_type(L, -1) != LUA_TSTRING || lua_rawlen(L, -1) == 0)
    luaL_argerror(L, arg, lua_pushfstring(L, "option '%s' must be a non-empty string (got %s)", name,
                                          luaL_typename(L, -1)));
  size_t n;
  const char *s = lua_tolstring(L, -1, &n);
  char *c = rw_lua_strndup(L, s, n);
  lua_pop(L, 1);
  if (len) *len = n;
  return c;
}

/* ---- JSON options ---- */

#define JSON_MAX_DEPTH 16

/* A list: keys exactly 1..n, n > 0. */
static bool json_is_list(lua_State *L, int idx) {
  size_t n = lua_rawlen(L, idx), count = 0;
  if (n == 0) return false;
  lua_pushnil(L);
  while (lua_next(L, idx)) {
    lua_pop(L, 1);
    count++;
  }
  return count == n;
}

/* Raises on anything json_value cannot take, before any JSON is made (a
 * raise in the middle of the conversion would leak it). */
static void json_check(lua_State *L, int idx, int arg, const char *name, int depth) {
  if (depth > JSON_MAX_DEPTH) luaL_argerror(L, arg, lua_pushfstring(L, "option '%s' is nested too deeply", name));
  switch (lua_type(L, idx)) {
  case LUA_TSTRING:
  case LUA_TBOOLEAN: return;
  case LUA_TNUMBER:
    if (!isfinite(lua_tonumber(L, idx)))
      luaL_argerror(L, arg, lua_pushfstring(L, "option '%s' holds a non-finite number", name));
    return;
  case LUA_TTABLE: break;
  default:
    luaL_argerror(L, arg, lua_pushfstring(L, "option '%s' cannot hold a %s", name, luaL_typename(L, idx)));
  }
  bool list = json_is_list(L, idx);
  lua_pushnil(L);
  while (lua_next(L, idx)) {
    if (!list && lua_type(L, -2) != LUA_TSTRING)
      luaL_argerror(L, arg, lua_pushfstring(L, "option '%s' must have string keys (or be a list)", name));
    json_check(L, lua_gettop(L), arg, name, depth + 1);
    lua_pop(L, 1);
  }
}

/* A value json_check accepted (so this never raises). */
static json_t *json_value(lua_State *L, int idx) {
  switch (lua_type(L, idx)) {
  case LUA_TSTRING: return json_stringn(lua_tostring(L, idx), lua_rawlen(L, idx));
  case LUA_TBOOLEAN: return json_boolean(lua_toboolean(L, idx));
  case LUA_TNUMBER: {
    double v = lua_tonumber(L, idx);
    if (v == floor(v) && fabs(v) < 9007199254740992.0) return json_integer((json_int_t)v);
    return json_real(v);
  }
  default: break;
  }
  if (json_is_list(L, idx)) {
    json_t *a = json_array();
    for (size_t i = 1; i <= lua_rawlen(L, idx); i++) {
      lua_rawgeti(L, idx, (int)i);
      json_array_append_new(a, json_value(L, lua_gettop(L)));
      lua_pop(L, 1);
    }
    return a;
  }
  json_t *o = json_object();
  lua_pushnil(L);
  while (lua_next(L, idx)) {
    json_object_set_new(o, lua_tostring(L, -2), json_value(L, lua_gettop(L)));
    lua_pop(L, 1);
  }
  return o;
}

char *rw_lua_opt_json_object(lua_State *L, int idx, int arg, const char *name) {
  lua_getfield(L, idx, name);
  if (lua_isnil(L, -1)) {
    lua_pop(L, 1);
    return NULL;
  }
  int t = lua_gettop(L);
  if (!lua_istable(L, t) || json_is_list(L, t))
    luaL_argerror(L, arg, lua_pushfstring(L, "option '%s' must be a table with names (a JSON object)", name));
  json_check(L, t, arg, name, 0);
  json_t *j = json_value(L, t);
  char *text = j ? json_dumps(j, JSON_COMPACT) : NULL;
  json_decref(j);
  lua_pop(L, 1);
  if (!text) luaL_error(L, "out of memory");
  return text;
}

double rw_lua_check_number_range(lua_State *L, int arg, const char *what, double min,
                                 double max) {
  double v = luaL_checknumber(L, arg);
  if (isnan(v) || v < min || v > max) {
    lua_pushfstring(L, "%s must be a number in [%f, %f] (got %s)", what, min, max,
                    luaL_tolstring(L, arg, NULL));
    luaL_argerror(L, arg, lua_tostring(L, -1));
  }
  return v;
}

int rw_lua_closed_error(lua_State *L, const char *what) {
  return luaL_error(L, "attempt to use a closed %s", what);
}

void rw_lua_new_class(lua_State *L, const char *name, const luaL_Reg *mt, const luaL_Reg *methods,
                      const char *seam_field, const void *seam) {
  if (luaL_newmetatable(L, name)) {
    luaL_setfuncs(L, mt, 0);
    if (seam_field) rw_lua_set_seam(L, seam_field, seam);
    lua_newtable(L);
    luaL_setfuncs(L, methods, 0);
    lua_setfield(L, -2, "__index");
  }
  lua_pop(L, 1);
}

/* ---- seams (lrw.h) ---- */

const void *rw_lua_seam(lua_State *L, int idx, const char *field) {
  if (!lua_getmetatable(L, idx)) return NULL;
  lua_getfield(L, -1, field);
  const void *s = lua_type(L, -1) == LUA_TLIGHTUSERDATA ? lua_touserdata(L, -1) : NULL;
  lua_pop(L, 2);
  return s;
}

void rw_lua_set_seam(lua_State *L, const char *field, const void *s) {
  lua_pushlightuserdata(L, (void *)s);
  lua_setfield(L, -2, field);
}

bool rw_lua_is_sink(lua_State *L, int idx) { return rw_lua_seam(L, idx, "__rw_sink") != NULL; }

struct rw_sink *rw_lua_sink_make(lua_State *L, int idx, rw_error **err) {
  if (idx < 0 && idx > LUA_REGISTRYINDEX) idx = lua_gettop(L) + idx + 1;
  const rw_lua_sink_seam *s = rw_lua_seam(L, idx, "__rw_sink");
  *err = NULL;
  if (!s) {
    *err = rw_err(RW_E_INVALID, "option 'sink' must be a sink descriptor (rw.gcs{...}, rw.file{...}), got %s",
                  luaL_typename(L, idx));
    return NULL;
  }
  return s->maker(L, idx, err);
}
