/* Lua face of the proxy server (csrc/proxy/server.h):
 *   rw.proxy.start{ listen =, upstream =, secret =, key_id =, secrets =, token =,
 *                   credentials_file =, credentials = "default", ca_file =, ... }
 * returns a server with :addr(), :stats(), :stop(), __gc and __close.
 * Bad options raise naming the option and the rule; a failure to start
 * (port in use) returns nil, err. */
#include <string.h>

#include "lrw.h"
#include "proxy/frame.h"
#include "proxy/server.h"

#define PROXY_MT "reliablewriter.ProxyServer"
#define MAX_SECRETS 64

typedef struct {
  rw_proxy_server *s;
} lproxy;

static rw_proxy_server *check(lua_State *L) {
  lproxy *u = luaL_checkudata(L, 1, PROXY_MT);
  if (!u->s) rw_lua_closed_error(L, "proxy server");
  return u->s;
}

static const char *opt_string(lua_State *L, const char *name, const char *def, const char *rule) {
  lua_getfield(L, 1, name);
  const char *v = def;
  if (!lua_isnil(L, -1)) {
    if (lua_type(L, -1) != LUA_TSTRING) luaL_error(L, "bad argument #1 to 'start' (option '%s' %s)", name, rule);
    v = lua_tostring(L, -1);
  }
  lua_pop(L, 1); /* the string stays alive in the options table */
  return v;
}

static void check_secret(lua_State *L, const char *name, size_t len) {
  if (len < RWP_MIN_SECRET)
    luaL_error(L, "bad argument #1 to 'start' (option '%s' must be a string of %d or more bytes)", name,
               RWP_MIN_SECRET);
}

/* secret (+ key_id) and/or secrets = { [key_id] = secret, ... } into out. */
static size_t read_secrets(lua_State *L, rw_proxy_secret out[MAX_SECRETS]) {
  size_t n = 0, len = 0;
  lua_getfield(L, 1, "secret");
  if (!lua_isnil(L, -1)) {
    if (lua_type(L, -1) != LUA_TSTRING) check_secret(L, "secret", 0);
    const char *s = lua_tolstring(L, -1, &len);
    check_secret(L, "secret", len);
    out[n++] = (rw_proxy_secret){opt_string(L, "key_id", "", "must be a string (<= 64 bytes)"), s, len};
  }
  lua_pop(L, 1);
  lua_getfield(L, 1, "secrets");
  if (!lua_isnil(L, -1)) {
    if (!lua_istable(L, -1)) luaL_error(L, "bad argument #1 to 'start' (option 'secrets' must be a table key_id -> secret)");
    for (lua_pushnil(L); lua_next(L, -2); lua_pop(L, 1)) {
      if (lua_type(L, -2) != LUA_TSTRING || lua_type(L, -1) != LUA_TSTRING || n == MAX_SECRETS)
        luaL_error(L, "bad argument #1 to 'start' (option 'secrets' must map key_id strings to secret strings, at most %d)",
                   MAX_SECRETS);
      const char *s = lua_tolstring(L, -1, &len);
      check_secret(L, "secrets[...]", len);
      out[n++] = (rw_proxy_secret){lua_tostring(L, -2), s, len};
    }
  }
  lua_pop(L, 1);
  if (n == 0) luaL_error(L, "bad argument #1 to 'start' (option 'secret' or 'secrets' is required)");
  return n;
}

static void read_numbers(lua_State *L, rw_proxy_config *c) {
  c->max_connections = (int)rw_lua_opt_integer(L, 1, 1, "max_connections", c->max_connections, 1, 100000);
  c->max_sessions = (int)rw_lua_opt_integer(L, 1, 1, "max_sessions", c->max_sessions, 1, 100000);
  c->cache = (uint64_t)rw_lua_opt_integer(L, 1, 1, "cache", (int64_t)c->cache, RWP_MIN_FRAME, (int64_t)1 << 40);
  c->session_cache = (uint64_t)rw_lua_opt_integer(L, 1, 1, "session_cache", (int64_t)c->session_cache,
                                                  256 * 1024, (int64_t)1 << 36);
  c->max_ahead = (uint64_t)rw_lua_opt_integer(L, 1, 1, "max_ahead", 0, 0, (int64_t)1 << 50);
  c->max_frame = (uint32_t)rw_lua_opt_integer(L, 1, 1, "max_frame", c->max_frame, RWP_MIN_FRAME, RWP_MAX_FRAME);
  c->max_inflight = (uint16_t)rw_lua_opt_integer(L, 1, 1, "max_inflight", c->max_inflight, 1, 65535);
  c->ping_interval_ms = (uint32_t)rw_lua_opt_integer(L, 1, 1, "ping_interval_ms", c->ping_interval_ms, 10, 3600000);
  c->table_ttl_s = (uint32_t)rw_lua_opt_integer(L, 1, 1, "table_ttl_s", c->table_ttl_s, 1, 86400 * 7);
  c->auth_timeout = rw_lua_opt_number(L, 1, 1, "auth_timeout", c->auth_timeout, 0.01, 60);
  c->rate_requests = rw_lua_opt_number(L, 1, 1, "rate_requests", 0, 0, 1e9);
  c->rate_bytes = rw_lua_opt_number(L, 1, 1, "rate_bytes", 0, 0, 1e15);
}

static int p_start(lua_State *L) {
  static const char *const known[] = {"listen", "upstream", "secret", "key_id", "secrets", "token",
                                      "max_connections", "max_sessions", "cache", "session_cache", "max_ahead",
                                      "max_frame", "max_inflight", "ping_interval_ms", "table_ttl_s",
                                      "auth_timeout", "rate_requests", "rate_bytes",
                                      "credentials_file", "credentials", "ca_file", NULL};
  luaL_checktype(L, 1, LUA_TTABLE);
  rw_lua_check_options(L, 1, 1, known);
  rw_proxy_config c = rw_proxy_defaults();
  rw_proxy_secret secs[MAX_SECRETS];
  c.listen = opt_string(L, "listen", "127.0.0.1:0", "must be a string \"HOST:PORT\"");
  c.upstream = opt_string(L, "upstream", NULL, "must be a string (the GCS endpoint URL)");
  if (!c.upstream) luaL_error(L, "bad argument #1 to 'start' (option 'upstream' is required: the GCS endpoint URL)");
  c.token = opt_string(L, "token", NULL, "must be a string (a bearer token)");
  c.credentials_file = opt_string(L, "credentials_file", NULL, "must be a string (a key file's path)");
  c.ca_file = opt_string(L, "ca_file", NULL, "must be a string (a CA bundle's path)");
  const char *creds = opt_string(L, "credentials", NULL, "must be the string \"default\"");
  if (creds && strcmp(creds, "default"))
    luaL_error(L, "bad argument #1 to 'start' (option 'credentials' must be \"default\" (the ADC chain), got '%s')", creds);
  c.credentials_default = creds != NULL;
  c.nsecrets = read_secrets(L, secs), c.secrets = secs;
  read_numbers(L, &c);
  rw_error *e = rw_proxy_config_check(&c);
  if (e) return rw_lua_raise(L, e);
  lproxy *u = lua_newuserdata(L, sizeof *u);
  u->s = NULL;
  luaL_setmetatable(L, PROXY_MT);
  if (!(u->s = rw_proxy_server_start(&c, &e))) return rw_lua_fail(L, e);
  return 1;
}

static int p_addr(lua_State *L) {
  lua_pushstring(L, rw_proxy_server_addr(check(L)));
  return 1;
}

#define STAT(f) (lua_pushnumber(L, (lua_Number)st.f), lua_setfield(L, -2, #f))
static int p_stats(lua_State *L) {
  rw_proxy_stats st = rw_proxy_server_stats(check(L));
  lua_newtable(L);
  STAT(connections), STAT(accepted), STAT(authed), STAT(auth_failed), STAT(requests);
  STAT(duplicates), STAT(errors), STAT(rate_limited), STAT(bytes_in), STAT(sessions);
  STAT(held), STAT(table_entries);
  return 1;
}

/* :stop(), __gc and __close: safe twice (closed first, then released). */
static int p_stop(lua_State *L) {
  lproxy *u = luaL_checkudata(L, 1, PROXY_MT);
  rw_proxy_server *s = u->s;
  u->s = NULL;
  rw_proxy_server_stop(s);
  return 0;
}

static int p_tostring(lua_State *L) {
  lproxy *u = luaL_checkudata(L, 1, PROXY_MT);
  if (u->s) lua_pushfstring(L, "reliablewriter.ProxyServer (%s)", rw_proxy_server_addr(u->s));
  else lua_pushliteral(L, "reliablewriter.ProxyServer (stopped)");
  return 1;
}

int rw_lua_open_proxy(lua_State *L) {
  static const luaL_Reg methods[] = {{"addr", p_addr}, {"stats", p_stats}, {"stop", p_stop}, {NULL, NULL}};
  luaL_newmetatable(L, PROXY_MT);
  lua_pushcfunction(L, p_stop);
  lua_setfield(L, -2, "__gc");
  lua_pushcfunction(L, p_stop);
  lua_setfield(L, -2, "__close");
  lua_pushcfunction(L, p_tostring);
  lua_setfield(L, -2, "__tostring");
  luaL_newlib(L, methods);
  lua_setfield(L, -2, "__index");
  lua_pop(L, 1);
  static const luaL_Reg fns[] = {{"start", p_start}, {NULL, NULL}};
  luaL_newlib(L, fns);
  return 1;
}
