/* rw.proxy_sink{ addr =, connections =, secret =, key_id =, bucket =, object =,
 * metadata =, if_generation_match =, if_metageneration_match =, session =,
 * connect_timeout =, request_timeout =, ping_interval =, max_frame =, window = }:
 * a sink descriptor for uploads through reliablewriter proxies (sinks/proxy.h).
 *
 * Like rw.gcs{}, a descriptor is a config: its __rw_sink seam makes a new
 * sink for each writer. The secret is held only here and in the sinks made
 * from it; it is never in tostring or an error, and is wiped by __gc. */
#include <stdlib.h>
#include <string.h>

#include "lrw.h"
#include "proxy/auth.h"
#include "proxy/frame.h"
#include "sinks/proxy.h"

#define PROXY_MT "reliablewriter.ProxySinkDescriptor"

typedef struct pdesc {
  rw_proxy_sink_config cfg; /* its strings and secret are owned by the descriptor */
} pdesc;

static void pdesc_release(pdesc *d) {
  rw_proxy_sink_config *c = &d->cfg;
  for (size_t i = 0; i < c->naddrs; i++) free((char *)c->addrs[i]);
  if (c->secret) rwp_wipe((void *)c->secret, c->secret_len);
  free((void *)c->secret);
  free((char *)c->key_id), free((char *)c->bucket), free((char *)c->object);
  free((char *)c->metadata), free((char *)c->session);
  memset(d, 0, sizeof *d);
}

static int pdesc_gc(lua_State *L) {
  pdesc_release(luaL_checkudata(L, 1, PROXY_MT));
  return 0;
}

static pdesc *check_pdesc(lua_State *L, int idx) { return luaL_checkudata(L, idx, PROXY_MT); }

/* addr = "host:port" or a list of them (failover order). */
static void addr_option(lua_State *L, int arg, pdesc *d) {
  lua_getfield(L, arg, "addr");
  int t = lua_gettop(L);
  if (lua_type(L, t) == LUA_TSTRING) {
    d->cfg.addrs[d->cfg.naddrs++] = rw_lua_strndup(L, lua_tostring(L, t), lua_rawlen(L, t));
  } else if (lua_istable(L, t)) {
    size_t n = lua_rawlen(L, t);
    if (n < 1 || n > RW_PROXY_SINK_MAX_ADDRS)
      luaL_argerror(L, arg, lua_pushfstring(L, "option 'addr' must list 1 to %d addresses", RW_PROXY_SINK_MAX_ADDRS));
    for (size_t i = 1; i <= n; i++) {
      lua_rawgeti(L, t, (int)i);
      if (lua_type(L, -1) != LUA_TSTRING)
        luaL_argerror(L, arg, lua_pushfstring(L, "option 'addr' #%d must be a \"host:port\" string", (int)i));
      d->cfg.addrs[d->cfg.naddrs++] = rw_lua_strndup(L, lua_tostring(L, -1), lua_rawlen(L, -1));
      lua_pop(L, 1);
    }
  } else {
    luaL_argerror(L, arg, "option 'addr' must be \"host:port\" or a list of them");
  }
  lua_pop(L, 1);
}

static void precondition(lua_State *L, int arg, const char *name, bool *has, uint64_t *v) {
  *has = rw_lua_opt_given(L, arg, name);
  *v = (uint64_t)rw_lua_opt_integer(L, arg, arg, name, 0, 0, INT64_C(9007199254740992));
}

static int proxy_sink_new(lua_State *L) {
  static const char *const known[] = {"addr", "connections", "secret", "key_id", "bucket", "object",
                                      "metadata", "if_generation_match", "if_metageneration_match",
                                      "session", "connect_timeout", "request_timeout",
                                      "ping_interval", "max_frame", "window", NULL};
  luaL_checktype(L, 1, LUA_TTABLE);
  rw_lua_check_options(L, 1, 1, known);
  pdesc *d = lua_newuserdata(L, sizeof *d);
  memset(d, 0, sizeof *d);
  luaL_setmetatable(L, PROXY_MT);
  rw_proxy_sink_config *c = &d->cfg;
  *c = rw_proxy_sink_defaults();
  addr_option(L, 1, d);
  c->secret = rw_lua_opt_string(L, 1, 1, "secret", true, &c->secret_len);
  c->key_id = rw_lua_opt_string(L, 1, 1, "key_id", false, NULL);
  c->session = rw_lua_opt_string(L, 1, 1, "session", false, NULL);
  c->bucket = rw_lua_opt_string(L, 1, 1, "bucket", !c->session, NULL);
  c->object = rw_lua_opt_string(L, 1, 1, "object", !c->session, NULL);
  c->metadata = rw_lua_opt_json_object(L, 1, 1, "metadata");
  precondition(L, 1, "if_generation_match", &c->has_if_generation_match, &c->if_generation_match);
  precondition(L, 1, "if_metageneration_match", &c->has_if_metageneration_match, &c->if_metageneration_match);
  c->connections = (int)rw_lua_opt_integer(L, 1, 1, "connections", 4, 1, RW_PROXY_SINK_MAX_CONNECTIONS);
  c->connect_timeout = rw_lua_opt_number(L, 1, 1, "connect_timeout", c->connect_timeout, 0.001, 3600);
  c->request_timeout = rw_lua_opt_number(L, 1, 1, "request_timeout", c->request_timeout, 0.001, 86400);
  c->ping_interval = rw_lua_opt_number(L, 1, 1, "ping_interval", 0, 0, 3600);
  c->max_frame = (uint32_t)rw_lua_opt_integer(L, 1, 1, "max_frame", c->max_frame, RWP_MIN_FRAME,
                                              RWP_MAX_FRAME);
  c->window = (uint64_t)rw_lua_opt_integer(L, 1, 1, "window", (int64_t)c->window, 1 << 20, INT64_C(1) << 40);
  rw_error *e = rw_proxy_sink_config_check(c);
  if (e) {
    lua_pushstring(L, rw_error_message(e));
    rw_error_unref(e);
    return luaL_argerror(L, 1, lua_tostring(L, -1));
  }
  return 1;
}

static rw_sink *pdesc_make(lua_State *L, int idx, rw_error **err) {
  *err = NULL;
  return rw_proxy_sink_new(&check_pdesc(L, idx)->cfg, err);
}

static int pdesc_kind(lua_State *L) {
  check_pdesc(L, 1);
  lua_pushliteral(L, "proxy");
  return 1;
}

/* d:with_session(uri): a copy of d that resumes the GCS session uri (what
 * rw.resume uses; w:session() gives the uri). */
static int pdesc_with_session(lua_State *L) {
  pdesc *src = check_pdesc(L, 1);
  size_t ulen;
  const char *uri = luaL_checklstring(L, 2, &ulen);
  if (ulen == 0 || ulen > RWP_MAX_SESSION)
    luaL_argerror(L, 2, lua_pushfstring(L, "the session must be 1 to %d bytes", RWP_MAX_SESSION));
  pdesc *d = lua_newuserdata(L, sizeof *d);
  memset(d, 0, sizeof *d);
  luaL_setmetatable(L, PROXY_MT);
  rw_proxy_sink_config *c = &d->cfg, *o = &src->cfg;
  *c = *o; /* the scalars; every string is copied below */
  c->naddrs = 0;
  c->secret = NULL, c->key_id = c->bucket = c->object = c->metadata = c->session = NULL;
  for (size_t i = 0; i < o->naddrs; i++) c->addrs[c->naddrs++] = rw_lua_strdup(L, o->addrs[i]);
  char *sec = malloc(o->secret_len);
  if (!sec) return luaL_error(L, "out of memory");
  memcpy(sec, o->secret, o->secret_len);
  c->secret = sec;
  c->key_id = rw_lua_strdup(L, o->key_id);
  c->bucket = rw_lua_strdup(L, o->bucket);
  c->object = rw_lua_strdup(L, o->object);
  c->metadata = rw_lua_strdup(L, o->metadata);
  c->session = rw_lua_strndup(L, uri, ulen);
  return 1;
}

static int pdesc_tostring(lua_State *L) {
  pdesc *d = check_pdesc(L, 1);
  if (d->cfg.bucket)
    lua_pushfstring(L, "sink proxy %s gs://%s/%s", d->cfg.addrs[0], d->cfg.bucket, d->cfg.object);
  else
    lua_pushfstring(L, "sink proxy %s (resumed session)", d->cfg.addrs[0] ? d->cfg.addrs[0] : "?");
  return 1;
}

/* Pushes the constructor: core.proxy_sink (rw.proxy_sink). */
int rw_lua_open_proxysink(lua_State *L) {
  static const luaL_Reg methods[] = {{"kind", pdesc_kind}, {"with_session", pdesc_with_session}, {NULL, NULL}};
  static const luaL_Reg mt[] = {{"__gc", pdesc_gc}, {"__tostring", pdesc_tostring}, {NULL, NULL}};
  static const rw_lua_sink_seam seam = {pdesc_make};
  rw_lua_new_class(L, PROXY_MT, mt, methods, "__rw_sink", &seam);
  lua_pushcfunction(L, proxy_sink_new);
  return 1;
}
