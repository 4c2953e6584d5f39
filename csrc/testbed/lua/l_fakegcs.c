/* Lua binding of the fake GCS:
 *   local srv = fakegcs.start{ port = 0, host = "127.0.0.1",
 *                              store = "memory" | "discard" | {dir = path},
 *                              buckets = {"b"}, md5 = true|false,
 *                              request_log = N }
 *   (md5 defaults to true, except with store = "discard"; the request log
 *   keeps the last request_log requests, 10,000 by default)
 *   srv:url(), srv:port(), srv:object(bucket, name) -> data|false, meta | nil
 *   srv:requests() -> { {method, path, content_range, goog_hash, status}, ... }
 *   srv:clear_requests(), srv:bucket(name) (creates it; idempotent)
 *   srv:faults{ seed =, p_503 =, p_408 =, p_reset =, p_partial =, p_broken =,
 *               p_stall =, stall_ms = }   (no argument: off)
 *   srv:stop()  (also __gc and __close)
 * Credentials (issue 11): start{ auth = { public_key = pem, token_lifetime = s,
 *   refresh_token = "...", token_delay = s }, tls = { cert = pem, key = pem } };
 *   srv:auth_stats() -> {token_requests=, metadata_requests=, unauthorized=},
 *   srv:revoke_tokens(), srv:reject_tokens(bool), srv:mint_token() -> a live token */
#include <jansson.h>
#include <string.h>

#include "testbed/fakegcs.h"
#include "testbed/lua/ltb.h"

#define FAKEGCS_MT "reliablewriter.fakegcs"

typedef struct fakegcs_ud {
  rw_fakegcs *srv; /* NULL once stopped */
} fakegcs_ud;

static rw_fakegcs *check_srv(lua_State *L) {
  fakegcs_ud *u = luaL_checkudata(L, 1, FAKEGCS_MT);
  if (!u->srv) luaL_error(L, "attempt to use a closed fakegcs");
  return u->srv;
}

/* ---- start ---- */

static const char *const start_options[] = {"port",    "host", "store", "buckets",
                                            "md5",     "request_log", "auth", "tls", NULL};

/* A string field of the table at idx (kept alive by that table), or NULL. */
static const char *sub_string(lua_State *L, int idx, const char *opt, const char *name) {
  lua_getfield(L, idx, name);
  if (!lua_isnil(L, -1) && lua_type(L, -1) != LUA_TSTRING)
    luaL_argerror(L, 1, lua_pushfstring(L, "option '%s.%s' must be a string", opt, name));
  const char *s = lua_tostring(L, -1);
  lua_pop(L, 1);
  return s;
}

/* auth = {public_key=, token_lifetime=, refresh_token=}, tls = {cert=, key=} */
static void read_auth_tls(lua_State *L, rw_fakegcs_config *cfg) {
  static const char *const auth_known[] = {"public_key", "token_lifetime", "refresh_token", "token_delay", NULL};
  static const char *const tls_known[] = {"cert", "key", NULL};
  lua_getfield(L, 1, "auth");
  int a = lua_gettop(L);
  if (!lua_isnil(L, a)) {
    if (!lua_istable(L, a)) luaL_argerror(L, 1, "option 'auth' must be a table");
    rw_lua_check_options(L, a, 1, auth_known);
    cfg->auth_public_key = sub_string(L, a, "auth", "public_key");
    cfg->auth_refresh_token = sub_string(L, a, "auth", "refresh_token");
    cfg->auth_token_lifetime = rw_lua_opt_number(L, a, 1, "token_lifetime", 3600, 0.001, 86400 * 365);
    cfg->auth_token_delay = rw_lua_opt_number(L, a, 1, "token_delay", 0, 0, 60);
  }
  lua_getfield(L, 1, "tls");
  int t = lua_gettop(L);
  if (!lua_isnil(L, t)) {
    if (!lua_istable(L, t)) luaL_argerror(L, 1, "option 'tls' must be a table {cert = pem, key = pem}");
    rw_lua_check_options(L, t, 1, tls_known);
    cfg->tls_cert = sub_string(L, t, "tls", "cert");
    cfg->tls_key = sub_string(L, t, "tls", "key");
  }
  /* both tables stay on the stack: their strings are in cfg */
}

static void read_store(lua_State *L, rw_fakegcs_config *cfg) {
  lua_getfield(L, 1, "store");
  if (lua_isnil(L, -1)) {
    cfg->store = RW_FAKEGCS_MEMORY;
  } else if (lua_type(L, -1) == LUA_TSTRING) {
    const char *v = lua_tostring(L, -1);
    if (strcmp(v, "memory") == 0) cfg->store = RW_FAKEGCS_MEMORY;
    else if (strcmp(v, "discard") == 0) cfg->store = RW_FAKEGCS_DISCARD;
    else luaL_argerror(L, 1, "option 'store' must be \"memory\", \"discard\" or {dir = path}");
  } else if (lua_istable(L, -1)) {
    lua_getfield(L, -1, "dir");
    if (lua_type(L, -1) != LUA_TSTRING) luaL_argerror(L, 1, "option 'store.dir' must be a string");
    cfg->store = RW_FAKEGCS_DIR;
    cfg->dir = lua_tostring(L, -1); /* stays referenced by the options table */
    lua_pop(L, 1);
  } else {
    luaL_argerror(L, 1, "option 'store' must be \"memory\", \"discard\" or {dir = path}");
  }
  lua_pop(L, 1);
}

/* Reads buckets into a NULL-terminated array kept alive as a userdata on the stack. */
static const char **read_buckets(lua_State *L) {
  lua_getfield(L, 1, "buckets");
  if (lua_isnil(L, -1)) {
    lua_pop(L, 1);
    return NULL;
  }
  if (!lua_istable(L, -1)) luaL_argerror(L, 1, "option 'buckets' must be an array of names");
  size_t n = lua_rawlen(L, -1);
  const char **names = lua_newuserdata(L, (n + 1) * sizeof *names);
  for (size_t i = 0; i < n; i++) {
    lua_rawgeti(L, -2, (lua_Integer)i + 1);
    if (lua_type(L, -1) != LUA_TSTRING || lua_rawlen(L, -1) == 0)
      luaL_argerror(L, 1, "option 'buckets' must hold non-empty strings");
    names[i] = lua_tostring(L, -1);
    lua_pop(L, 1); /* still referenced by the buckets table */
  }
  names[n] = NULL;
  return names; /* buckets table and the array stay on the stack */
}

static int l_start(lua_State *L) {
  if (lua_isnoneornil(L, 1)) lua_settop(L, 0), lua_newtable(L);
  rw_lua_check_options(L, 1, 1, start_options);
  rw_fakegcs_config cfg = {0};
  cfg.port = (int)rw_lua_opt_integer(L, 1, 1, "port", 0, 0, 65535);
  cfg.request_log = (size_t)rw_lua_opt_integer(L, 1, 1, "request_log",
                                               RW_FAKEGCS_REQUEST_LOG_DEFAULT, 1,
                                               RW_FAKEGCS_REQUEST_LOG_MAX);
  lua_getfield(L, 1, "host");
  if (!lua_isnil(L, -1) && lua_type(L, -1) != LUA_TSTRING)
    luaL_argerror(L, 1, "option 'host' must be a string");
  cfg.host = lua_tostring(L, -1);
  read_store(L, &cfg);
  lua_getfield(L, 1, "md5");
  if (!lua_isnil(L, -1)) cfg.md5 = lua_toboolean(L, -1) ? RW_FAKEGCS_MD5_ON : RW_FAKEGCS_MD5_OFF;
  lua_pop(L, 1);
  cfg.buckets = read_buckets(L);
  read_auth_tls(L, &cfg);
  fakegcs_ud *u = lua_newuserdata(L, sizeof *u);
  u->srv = NULL;
  luaL_setmetatable(L, FAKEGCS_MT);
  rw_error *err = NULL;
  u->srv = rw_fakegcs_start(&cfg, &err);
  if (!u->srv) return rw_lua_fail(L, err);
  return 1;
}

/* ---- methods ---- */

static int l_url(lua_State *L) {
  lua_pushstring(L, rw_fakegcs_url(check_srv(L)));
  return 1;
}

static int l_port(lua_State *L) {
  lua_pushinteger(L, rw_fakegcs_port(check_srv(L)));
  return 1;
}

static void push_json(lua_State *L, json_t *j) {
  switch (json_typeof(j)) {
    case JSON_OBJECT: {
      const char *k;
      json_t *v;
      lua_createtable(L, 0, (int)json_object_size(j));
      json_object_foreach(j, k, v) {
        push_json(L, v);
        lua_setfield(L, -2, k);
      }
      break;
    }
    case JSON_ARRAY: {
      size_t i;
      json_t *v;
      lua_createtable(L, (int)json_array_size(j), 0);
      json_array_foreach(j, i, v) {
        push_json(L, v);
        lua_rawseti(L, -2, (lua_Integer)i + 1);
      }
      break;
    }
    case JSON_STRING: lua_pushlstring(L, json_string_value(j), json_string_length(j)); break;
    case JSON_INTEGER: lua_pushinteger(L, (lua_Integer)json_integer_value(j)); break;
    case JSON_REAL: lua_pushnumber(L, json_real_value(j)); break;
    case JSON_TRUE: lua_pushboolean(L, 1); break;
    case JSON_FALSE: lua_pushboolean(L, 0); break;
    default: lua_pushnil(L); break;
  }
}

/* data (false in discard mode), metadata table; nil when absent. */
static int l_object(lua_State *L) {
  rw_fakegcs *s = check_srv(L);
  const char *bucket = luaL_checkstring(L, 2), *name = luaL_checkstring(L, 3);
  rw_fakegcs_object o;
  if (!rw_fakegcs_object_get(s, bucket, name, &o)) {
    lua_pushnil(L);
    return 1;
  }
  if (o.data) lua_pushlstring(L, (const char *)o.data, (size_t)o.size);
  else lua_pushboolean(L, 0);
  json_error_t jerr;
  json_t *j = o.json ? json_loads(o.json, 0, &jerr) : NULL;
  push_json(L, j);
  json_decref(j);
  rw_fakegcs_object_free(&o);
  return 2;
}

static int l_requests(lua_State *L) {
  size_t n = 0;
  rw_fakegcs_request *r = rw_fakegcs_requests(check_srv(L), &n);
  lua_createtable(L, (int)n, 0);
  for (size_t i = 0; i < n; i++) {
    lua_createtable(L, 0, 4);
    lua_pushstring(L, r[i].method);
    lua_setfield(L, -2, "method");
    lua_pushstring(L, r[i].path ? r[i].path : "");
    lua_setfield(L, -2, "path");
    if (r[i].content_range) {
      lua_pushstring(L, r[i].content_range);
      lua_setfield(L, -2, "content_range");
    }
    if (r[i].goog_hash) {
      lua_pushstring(L, r[i].goog_hash);
      lua_setfield(L, -2, "goog_hash");
    }
    lua_pushinteger(L, r[i].status);
    lua_setfield(L, -2, "status");
    lua_rawseti(L, -2, (lua_Integer)i + 1);
  }
  rw_fakegcs_requests_free(r, n);
  return 1;
}

static int l_clear_requests(lua_State *L) {
  rw_fakegcs_requests_clear(check_srv(L));
  return 0;
}

static int l_bucket(lua_State *L) {
  rw_fakegcs *s = check_srv(L);
  size_t len;
  const char *name = luaL_checklstring(L, 2, &len);
  luaL_argcheck(L, len > 0, 2, "bucket name must not be empty");
  rw_fakegcs_bucket_create(s, name);
  return 0;
}

static const char *const fault_options[] = {"seed",   "p_503",    "p_408", "p_reset",
                                            "p_partial", "p_broken", "p_stall", "stall_ms",
                                            NULL};

static int l_faults(lua_State *L) {
  rw_fakegcs *s = check_srv(L);
  rw_fakegcs_faults f = {0};
  if (!lua_isnoneornil(L, 2)) {
    rw_lua_check_options(L, 2, 2, fault_options);
    f.seed = (uint64_t)rw_lua_opt_integer(L, 2, 2, "seed", 1, 0, INT64_MAX);
    f.p_503 = rw_lua_opt_number(L, 2, 2, "p_503", 0, 0, 1);
    f.p_408 = rw_lua_opt_number(L, 2, 2, "p_408", 0, 0, 1);
    f.p_reset = rw_lua_opt_number(L, 2, 2, "p_reset", 0, 0, 1);
    f.p_partial = rw_lua_opt_number(L, 2, 2, "p_partial", 0, 0, 1);
    f.p_broken = rw_lua_opt_number(L, 2, 2, "p_broken", 0, 0, 1);
    f.p_stall = rw_lua_opt_number(L, 2, 2, "p_stall", 0, 0, 1);
    f.stall_ms = (int)rw_lua_opt_integer(L, 2, 2, "stall_ms", 1000, 0, 600000);
    double sum = f.p_503 + f.p_408 + f.p_reset + f.p_partial + f.p_broken + f.p_stall;
    if (sum > 1) luaL_argerror(L, 2, "fault probabilities add up to more than 1");
  }
  rw_fakegcs_set_faults(s, &f);
  return 0;
}

/* __gc, __close and stop: safe twice. */
static int l_stop(lua_State *L) {
  fakegcs_ud *u = luaL_checkudata(L, 1, FAKEGCS_MT);
  rw_fakegcs *s = u->srv;
  u->srv = NULL;
  rw_fakegcs_stop(s);
  return 0;
}

static int l_tostring(lua_State *L) {
  fakegcs_ud *u = luaL_checkudata(L, 1, FAKEGCS_MT);
  if (u->srv) lua_pushfstring(L, "fakegcs (%s)", rw_fakegcs_url(u->srv));
  else lua_pushliteral(L, "fakegcs (closed)");
  return 1;
}

static int l_auth_stats(lua_State *L) {
  rw_fakegcs_auth_counts c;
  rw_fakegcs_auth_stats(check_srv(L), &c);
  lua_createtable(L, 0, 3);
  lua_pushinteger(L, (lua_Integer)c.token_requests);
  lua_setfield(L, -2, "token_requests");
  lua_pushinteger(L, (lua_Integer)c.metadata_requests);
  lua_setfield(L, -2, "metadata_requests");
  lua_pushinteger(L, (lua_Integer)c.unauthorized);
  lua_setfield(L, -2, "unauthorized");
  return 1;
}

static int l_revoke_tokens(lua_State *L) {
  rw_fakegcs_auth_revoke(check_srv(L));
  return 0;
}

static int l_mint_token(lua_State *L) {
  char tok[64];
  rw_fakegcs_auth_mint(check_srv(L), tok, sizeof tok);
  lua_pushstring(L, tok);
  return 1;
}

static int l_reject_tokens(lua_State *L) {
  rw_fakegcs_auth_reject_all(check_srv(L), lua_toboolean(L, 2));
  return 0;
}

static const luaL_Reg methods[] = {
    {"auth_stats", l_auth_stats}, {"revoke_tokens", l_revoke_tokens}, {"reject_tokens", l_reject_tokens},
    {"mint_token", l_mint_token},
    {"url", l_url},           {"port", l_port},         {"object", l_object},
    {"requests", l_requests}, {"clear_requests", l_clear_requests},
    {"bucket", l_bucket},     {"faults", l_faults},     {"stop", l_stop},
    {NULL, NULL}};

static const luaL_Reg metamethods[] = {
    {"__gc", l_stop}, {"__close", l_stop}, {"__tostring", l_tostring}, {NULL, NULL}};

int rw_tb_open_fakegcs(lua_State *L) {
  if (luaL_newmetatable(L, FAKEGCS_MT)) {
    luaL_setfuncs(L, metamethods, 0);
    luaL_newlib(L, methods);
    lua_setfield(L, -2, "__index");
  }
  lua_pop(L, 1);
  lua_newtable(L);
  lua_pushcfunction(L, l_start);
  lua_setfield(L, -2, "start");
  return 1;
}
