/* Sink descriptors: sinks.gcs{...}, sinks.file{...}, sinks.faulty(desc, {...}).
 *
 * A descriptor is a config, not a live sink: rw_lua_sink_make builds a new
 * sink from it for each writer. Lua values the descriptor keeps (the inner
 * descriptor of a faulty one, the gcs `faults` table for issue 5) live in its
 * uservalue table: { inner = desc, faults = profile or its options table,
 * faults_profile = profile }. */
#include <jansson.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "lrw.h"
#include "sinks/faulty.h"
#include "sinks/file.h"
#include "sinks/gcs.h"
#include "net/faults.h"

/* From l_faults.c: the fault profile at idx or NULL; the profile constructor. */
rw_faults *rw_lua_faults_test(lua_State *L, int idx);
int rw_lua_faults_profile(lua_State *L);

#define DESC_MT "reliablewriter.SinkDescriptor"
#define MAX_CODES 32

enum { DESC_GCS, DESC_FILE, DESC_FAULTY };
static const char *const kind_names[] = {"gcs", "file", "faulty"};

typedef struct desc {
  int kind;
  /* gcs */
  char *bucket, *object, *endpoint, *metadata_json, *token, *session_uri;
  bool has_igm, has_imgm;
  int64_t igm, imgm;
  rw_gcs_header *headers; /* names and values malloc'd */
  size_t nheaders;
  double connect_timeout;
  /* file */
  char *path;
  /* faulty */
  rw_faulty_config fc;    /* codes point into `codes` */
  char *codes[MAX_CODES];
  rw_faulty_counters *counters;
} desc;

#if LUA_VERSION_NUM < 502
#define set_uservalue(L, idx) lua_setfenv(L, idx)
#define get_uservalue(L, idx) lua_getfenv(L, idx)
#else
#define set_uservalue(L, idx) lua_setuservalue(L, idx)
#define get_uservalue(L, idx) lua_getuservalue(L, idx)
#endif

/* ---- descriptor userdata ---- */

static void desc_release(desc *d) {
  free(d->bucket);
  free(d->object);
  free(d->endpoint);
  free(d->metadata_json);
  free(d->token);
  free(d->session_uri);
  for (size_t i = 0; i < d->nheaders; i++) {
    free((char *)d->headers[i].name);
    free((char *)d->headers[i].value);
  }
  free(d->headers);
  free(d->path);
  for (int i = 0; i < MAX_CODES; i++) free(d->codes[i]);
  rw_faulty_counters_unref(d->counters);
  memset(d, 0, sizeof *d);
}

static int desc_gc(lua_State *L) {
  desc_release(luaL_checkudata(L, 1, DESC_MT));
  return 0;
}

/* A zeroed descriptor with an empty uservalue table, on top of the stack. */
static desc *push_desc(lua_State *L, int kind) {
  desc *d = lua_newuserdata(L, sizeof *d);
  memset(d, 0, sizeof *d);
  d->kind = kind;
  luaL_setmetatable(L, DESC_MT);
  lua_newtable(L);
  set_uservalue(L, -2);
  return d;
}

static desc *check_desc(lua_State *L, int idx) { return luaL_checkudata(L, idx, DESC_MT); }

/* Sets field `name` of the uservalue of the descriptor at idx to the value on top. */
static void uv_set(lua_State *L, int idx, const char *name) {
  get_uservalue(L, idx);
  lua_insert(L, -2);
  lua_setfield(L, -2, name);
  lua_pop(L, 1);
}

static void uv_get(lua_State *L, int idx, const char *name) {
  get_uservalue(L, idx);
  lua_getfield(L, -1, name);
  lua_remove(L, -2);
}

static char *dup_or_raise(lua_State *L, const char *s) {
  char *c = strdup(s);
  if (!c) luaL_error(L, "out of memory");
  return c;
}

/* Optional string option (non-empty when given). */
static char *opt_string(lua_State *L, int idx, int arg, const char *name, bool required) {
  lua_getfield(L, idx, name);
  if (lua_isnil(L, -1)) {
    lua_pop(L, 1);
    if (required) luaL_argerror(L, arg, lua_pushfstring(L, "option '%s' is required", name));
    return NULL;
  }
  if (lua_type(L, -1) != LUA_TSTRING || lua_rawlen(L, -1) == 0)
    luaL_argerror(L, arg, lua_pushfstring(L, "option '%s' must be a non-empty string (got %s)", name,
                                          luaL_typename(L, -1)));
  char *s = dup_or_raise(L, lua_tostring(L, -1));
  lua_pop(L, 1);
  return s;
}

/* ---- Lua table -> JSON ---- */

static json_t *to_json(lua_State *L, int idx, int arg, int depth);

/* Raises on anything to_json cannot take, before any JSON is allocated (a
 * raise in the middle of the conversion would leak it). */
static void check_json(lua_State *L, int idx, int arg, int depth) {
  if (depth > 16) luaL_argerror(L, arg, "option 'metadata' is nested too deeply");
  switch (lua_type(L, idx)) {
  case LUA_TSTRING:
  case LUA_TBOOLEAN: return;
  case LUA_TNUMBER:
    if (!isfinite(lua_tonumber(L, idx))) luaL_argerror(L, arg, "option 'metadata' holds a non-finite number");
    return;
  case LUA_TTABLE:
    lua_pushnil(L);
    while (lua_next(L, idx)) {
      if (lua_type(L, -2) != LUA_TSTRING && lua_type(L, -2) != LUA_TNUMBER)
        luaL_argerror(L, arg, "option 'metadata' must have string keys");
      check_json(L, lua_gettop(L), arg, depth + 1);
      lua_pop(L, 1);
    }
    return;
  default:
    luaL_argerror(L, arg, lua_pushfstring(L, "option 'metadata' cannot hold a %s", luaL_typename(L, idx)));
  }
}

static bool is_array(lua_State *L, int idx) {
  size_t n = lua_rawlen(L, idx), count = 0;
  if (n == 0) return false;
  lua_pushnil(L);
  while (lua_next(L, idx)) {
    lua_pop(L, 1);
    count++;
  }
  return count == n;
}

static json_t *table_to_json(lua_State *L, int idx, int arg, int depth) {
  if (is_array(L, idx)) {
    json_t *a = json_array();
    for (size_t i = 1; i <= lua_rawlen(L, idx); i++) {
      lua_rawgeti(L, idx, (int)i);
      json_array_append_new(a, to_json(L, lua_gettop(L), arg, depth + 1));
      lua_pop(L, 1);
    }
    return a;
  }
  json_t *o = json_object();
  lua_pushnil(L);
  while (lua_next(L, idx)) {
    if (lua_type(L, -2) != LUA_TSTRING) {
      json_decref(o);
      luaL_argerror(L, arg, "option 'metadata' must have string keys");
    }
    json_object_set_new(o, lua_tostring(L, -2), to_json(L, lua_gettop(L), arg, depth + 1));
    lua_pop(L, 1);
  }
  return o;
}

static json_t *to_json(lua_State *L, int idx, int arg, int depth) {
  if (depth > 16) luaL_argerror(L, arg, "option 'metadata' is nested too deeply");
  switch (lua_type(L, idx)) {
  case LUA_TSTRING: return json_stringn(lua_tostring(L, idx), lua_rawlen(L, idx));
  case LUA_TBOOLEAN: return json_boolean(lua_toboolean(L, idx));
  case LUA_TNUMBER: {
    double v = lua_tonumber(L, idx);
    if (!isfinite(v)) luaL_argerror(L, arg, "option 'metadata' holds a non-finite number");
    if (v == floor(v) && fabs(v) < 9007199254740992.0) return json_integer((json_int_t)v);
    return json_real(v);
  }
  case LUA_TTABLE: return table_to_json(L, idx, arg, depth);
  default:
    luaL_argerror(L, arg, lua_pushfstring(L, "option 'metadata' cannot hold a %s", luaL_typename(L, idx)));
    return NULL;
  }
}

static char *metadata_option(lua_State *L, int idx, int arg) {
  lua_getfield(L, idx, "metadata");
  if (lua_isnil(L, -1)) {
    lua_pop(L, 1);
    return NULL;
  }
  if (!lua_istable(L, -1)) luaL_argerror(L, arg, "option 'metadata' must be a table");
  check_json(L, lua_gettop(L), arg, 0);
  json_t *j = to_json(L, lua_gettop(L), arg, 0);
  if (!json_is_object(j)) {
    json_decref(j);
    luaL_argerror(L, arg, "option 'metadata' must be a table with names (a JSON object)");
  }
  char *text = json_dumps(j, JSON_COMPACT);
  json_decref(j);
  lua_pop(L, 1);
  if (!text) luaL_error(L, "out of memory");
  return text;
}

/* ---- gcs ---- */

static void headers_option(lua_State *L, int idx, int arg, desc *d) {
  lua_getfield(L, idx, "headers");
  if (lua_isnil(L, -1)) {
    lua_pop(L, 1);
    return;
  }
  if (!lua_istable(L, -1)) luaL_argerror(L, arg, "option 'headers' must be a table of name = value");
  int t = lua_gettop(L);
  lua_pushnil(L);
  while (lua_next(L, t)) {
    if (lua_type(L, -2) != LUA_TSTRING || lua_type(L, -1) != LUA_TSTRING)
      luaL_argerror(L, arg, "option 'headers' must map header names to strings");
    if (d->nheaders >= 32) luaL_argerror(L, arg, "option 'headers' holds more than 32 headers");
    rw_gcs_header *hs = realloc(d->headers, (d->nheaders + 1) * sizeof *hs);
    if (!hs) luaL_error(L, "out of memory");
    d->headers = hs;
    hs[d->nheaders].name = NULL;
    hs[d->nheaders].value = NULL;
    hs[d->nheaders].name = dup_or_raise(L, lua_tostring(L, -2));
    d->nheaders++;
    hs[d->nheaders - 1].value = dup_or_raise(L, lua_tostring(L, -1));
    lua_pop(L, 1);
  }
  lua_pop(L, 1);
}

/* Makes one throwaway sink to let the C side validate the whole config. */
static rw_gcs_config gcs_config(const desc *d) {
  rw_gcs_config c = {.bucket = d->bucket, .object = d->object, .endpoint = d->endpoint,
                     .metadata_json = d->metadata_json, .has_if_generation_match = d->has_igm,
                     .if_generation_match = d->igm, .has_if_metageneration_match = d->has_imgm,
                     .if_metageneration_match = d->imgm, .headers = d->headers,
                     .nheaders = d->nheaders, .connect_timeout = d->connect_timeout,
                     .session_uri = d->session_uri, .token = d->token};
  return c;
}

/* faults = rw.faults.profile{...} or the options of one: both stored in the
 * uservalue, the profile also as faults_profile for make_from. */
static void faults_option(lua_State *L, int self) {
  lua_getfield(L, 1, "faults");
  if (lua_istable(L, -1)) {
    lua_pushcfunction(L, rw_lua_faults_profile);
    lua_pushvalue(L, -2);
    lua_call(L, 1, 1);
  } else if (rw_lua_faults_test(L, -1)) {
    lua_pushvalue(L, -1);
  } else if (!lua_isnil(L, -1)) {
    luaL_argerror(L, 1, "option 'faults' must be a fault profile (rw.faults.profile{...}) or its options table");
  } else {
    lua_pushnil(L);
  }
  uv_set(L, self, "faults_profile");
  uv_set(L, self, "faults");
}

/* A gcs sink that holds a reference to its fault profile: the dialer's
 * callbacks use the profile until the inner sink (and its libcurl handles)
 * are gone. */
typedef struct faults_sink {
  rw_sink base;
  rw_sink *inner;
  rw_faults *faults;
  rw_http_dialer dialer;
} faults_sink;

static rw_sink *fs_inner(rw_sink *s) { return ((faults_sink *)s)->inner; }
static rw_error *fs_begin(rw_sink *s, rw_ctx *ctx) { return fs_inner(s)->ops->begin(fs_inner(s), ctx); }
static rw_error *fs_put(rw_sink *s, rw_ctx *ctx, const rw_sink_put *p, rw_sink_result *res) {
  return fs_inner(s)->ops->put(fs_inner(s), ctx, p, res);
}
static rw_error *fs_query(rw_sink *s, rw_ctx *ctx, rw_sink_result *res) {
  return fs_inner(s)->ops->query(fs_inner(s), ctx, res);
}
static rw_error *fs_abort(rw_sink *s, rw_ctx *ctx) { return fs_inner(s)->ops->abort(fs_inner(s), ctx); }
static const char *fs_session(rw_sink *s) { return fs_inner(s)->ops->session(fs_inner(s)); }
static void fs_destroy(rw_sink *s) {
  faults_sink *fs = (faults_sink *)s;
  rw_sink_destroy(fs->inner);
  rw_faults_unref(fs->faults);
  free(fs);
}
static const rw_sink_ops faults_sink_ops = {"gcs", fs_begin, fs_put, fs_query, fs_abort, fs_session, fs_destroy};

static rw_sink *gcs_with_faults(rw_gcs_config *c, rw_faults *f, rw_error **err) {
  faults_sink *fs = calloc(1, sizeof *fs);
  if (!fs) {
    *err = rw_err(RW_E_NOMEM, "gcs sink: out of memory");
    return NULL;
  }
  fs->base.ops = &faults_sink_ops;
  fs->dialer = rw_faults_dialer(f);
  c->dialer = &fs->dialer;
  if (!(fs->inner = rw_gcs_sink_new(c, err))) {
    free(fs);
    return NULL;
  }
  fs->faults = rw_faults_ref(f);
  return &fs->base;
}

static int sinks_gcs(lua_State *L) {
  static const char *const known[] = {"bucket", "object", "endpoint", "metadata",
                                      "if_generation_match", "if_metageneration_match",
                                      "headers", "connect_timeout",
                                      "faults", "token", "session_uri", NULL};
  rw_lua_check_options(L, 1, 1, known);
  desc *d = push_desc(L, DESC_GCS);
  int self = lua_gettop(L);
  lua_getfield(L, 1, "session_uri");
  bool resume = !lua_isnil(L, -1);
  lua_pop(L, 1);
  d->session_uri = opt_string(L, 1, 1, "session_uri", false);
  d->bucket = opt_string(L, 1, 1, "bucket", !resume);
  d->object = opt_string(L, 1, 1, "object", !resume);
  d->endpoint = opt_string(L, 1, 1, "endpoint", false);
  d->token = opt_string(L, 1, 1, "token", false);
  d->metadata_json = metadata_option(L, 1, 1);
  lua_getfield(L, 1, "if_generation_match");
  d->has_igm = !lua_isnil(L, -1);
  lua_pop(L, 1);
  d->igm = rw_lua_opt_integer(L, 1, 1, "if_generation_match", 0, 0, INT64_C(9007199254740992));
  lua_getfield(L, 1, "if_metageneration_match");
  d->has_imgm = !lua_isnil(L, -1);
  lua_pop(L, 1);
  d->imgm = rw_lua_opt_integer(L, 1, 1, "if_metageneration_match", 0, 0, INT64_C(9007199254740992));
  d->connect_timeout = rw_lua_opt_number(L, 1, 1, "connect_timeout", 10, 0.001, 3600);
  headers_option(L, 1, 1, d);
  faults_option(L, self);
  rw_gcs_config c = gcs_config(d);
  rw_error *e = NULL;
  rw_sink *probe = rw_gcs_sink_new(&c, &e);
  if (!probe) {
    lua_pushstring(L, e ? rw_error_message(e) : "bad gcs options");
    rw_error_unref(e);
    return luaL_argerror(L, 1, lua_tostring(L, -1));
  }
  rw_sink_destroy(probe);
  return 1;
}

/* ---- file ---- */

static int sinks_file(lua_State *L) {
  static const char *const known[] = {"path", NULL};
  rw_lua_check_options(L, 1, 1, known);
  desc *d = push_desc(L, DESC_FILE);
  d->path = opt_string(L, 1, 1, "path", true);
  return 1;
}

/* ---- faulty ---- */

static bool code_known(const char *code) {
  if (rw_code_lookup(code)) return true;
  int status = 0, used = 0;
  return sscanf(code, "http.%3d%n", &status, &used) == 1 && !code[used] && status >= 100 && status <= 599;
}

static void codes_option(lua_State *L, int idx, int arg, desc *d) {
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
    d->codes[i - 1] = dup_or_raise(L, c);
    lua_pop(L, 1);
  }
  d->fc.codes = (const char *const *)d->codes;
  d->fc.ncodes = n;
  lua_pop(L, 1);
}

static int sinks_faulty(lua_State *L) {
  check_desc(L, 1);
  static const char *const known[] = {"seed", "p_error", "codes", "p_partial", "p_after",
                                      "partial_align", NULL};
  if (lua_isnoneornil(L, 2)) {
    lua_settop(L, 1);
    lua_newtable(L);
  }
  rw_lua_check_options(L, 2, 2, known);
  desc *d = push_desc(L, DESC_FAULTY);
  int self = lua_gettop(L);
  lua_pushvalue(L, 1);
  uv_set(L, self, "inner");
  d->fc.seed = (uint64_t)rw_lua_opt_integer(L, 2, 2, "seed", 1, 0, INT64_C(9007199254740992));
  d->fc.p_error = rw_lua_opt_number(L, 2, 2, "p_error", 0.1, 0, 1);
  d->fc.p_partial = rw_lua_opt_number(L, 2, 2, "p_partial", 0, 0, 1);
  d->fc.p_after = rw_lua_opt_number(L, 2, 2, "p_after", 0, 0, 1);
  if (d->fc.p_partial + d->fc.p_after > 1) luaL_argerror(L, 2, "p_partial + p_after must be <= 1");
  d->fc.partial_align = (uint64_t)rw_lua_opt_integer(L, 2, 2, "partial_align", 256 * 1024, 1, INT64_C(1) << 40);
  codes_option(L, 2, 2, d);
  d->counters = rw_faulty_counters_new();
  if (!d->counters) return luaL_error(L, "out of memory");
  return 1;
}

/* ---- making live sinks ---- */

static rw_sink *make_from(lua_State *L, int idx, rw_error **err, int depth) {
  desc *d = check_desc(L, idx);
  *err = NULL;
  switch (d->kind) {
  case DESC_GCS: {
    rw_gcs_config c = gcs_config(d);
    uv_get(L, idx, "faults_profile");
    rw_faults *f = rw_lua_faults_test(L, -1);
    lua_pop(L, 1); /* the descriptor keeps it; the sink takes its own reference */
    return f ? gcs_with_faults(&c, f, err) : rw_gcs_sink_new(&c, err);
  }
  case DESC_FILE:
    return rw_file_sink_new(d->path, err);
  default: {
    if (depth > 8) {
      *err = rw_err(RW_E_INVALID, "faulty sinks nested too deeply");
      return NULL;
    }
    uv_get(L, idx, "inner");
    rw_sink *inner = make_from(L, lua_gettop(L), err, depth + 1);
    lua_pop(L, 1);
    if (!inner) return NULL;
    rw_faulty_config fc = d->fc;
    fc.counters = d->counters;
    return rw_faulty_sink_new(inner, &fc, err);
  }
  }
}

struct rw_sink *rw_lua_sink_make(lua_State *L, int idx, rw_error **err) {
  if (idx < 0 && idx > LUA_REGISTRYINDEX) idx = lua_gettop(L) + idx + 1;
  return make_from(L, idx, err, 0);
}

/* ---- methods ---- */

static int desc_kind(lua_State *L) {
  lua_pushstring(L, kind_names[check_desc(L, 1)->kind]);
  return 1;
}

/* faulty descriptors: counts over every sink made from it. */
static int desc_stats(lua_State *L) {
  desc *d = check_desc(L, 1);
  if (d->kind != DESC_FAULTY) return luaL_argerror(L, 1, "stats() is for faulty sink descriptors");
  rw_faulty_stats st;
  rw_faulty_counters_read(d->counters, &st);
  lua_createtable(L, 0, 5);
  const struct { const char *k; uint64_t v; } f[] = {{"puts", st.puts}, {"queries", st.queries},
      {"injected", st.injected}, {"partial", st.partial}, {"after", st.after}};
  for (size_t i = 0; i < sizeof f / sizeof f[0]; i++) {
    lua_pushnumber(L, (lua_Number)f[i].v);
    lua_setfield(L, -2, f[i].k);
  }
  return 1;
}

/* The stored `faults` table of a gcs descriptor (issue 5), or nil. */
static int desc_faults(lua_State *L) {
  check_desc(L, 1);
  uv_get(L, 1, "faults");
  return 1;
}

/* A faulty descriptor's inner descriptor, or nil. */
static int desc_inner(lua_State *L) {
  check_desc(L, 1);
  uv_get(L, 1, "inner");
  return 1;
}

static int desc_tostring(lua_State *L) {
  desc *d = check_desc(L, 1);
  if (d->kind == DESC_GCS && d->bucket)
    lua_pushfstring(L, "sink gcs gs://%s/%s", d->bucket, d->object);
  else if (d->kind == DESC_GCS)
    lua_pushfstring(L, "sink gcs session %s", d->session_uri);
  else if (d->kind == DESC_FILE)
    lua_pushfstring(L, "sink file %s", d->path);
  else
    lua_pushfstring(L, "sink faulty (p_error %f)", d->fc.p_error);
  return 1;
}

static int sinks_is_sink(lua_State *L) {
  lua_pushboolean(L, luaL_testudata(L, 1, DESC_MT) != NULL);
  return 1;
}

/* derive(desc, {session_uri=, connect_timeout=}): a copy of a gcs descriptor
 * with those set (rw.resume and the writer's connect_timeout use it). Other
 * kinds come back unchanged. */
static char *dup_opt(lua_State *L, const char *s) { return s ? dup_or_raise(L, s) : NULL; }

static int sinks_derive(lua_State *L) {
  desc *src = check_desc(L, 1);
  luaL_checktype(L, 2, LUA_TTABLE);
  static const char *const known[] = {"session_uri", "connect_timeout", NULL};
  rw_lua_check_options(L, 2, 2, known);
  if (src->kind != DESC_GCS) {
    lua_pushvalue(L, 1);
    return 1;
  }
  char *uri = opt_string(L, 2, 2, "session_uri", false);
  double ct = rw_lua_opt_number(L, 2, 2, "connect_timeout", src->connect_timeout, 0, 3600);
  desc *d = push_desc(L, DESC_GCS);
  d->bucket = dup_opt(L, src->bucket);
  d->object = dup_opt(L, src->object);
  d->endpoint = dup_opt(L, src->endpoint);
  d->metadata_json = dup_opt(L, src->metadata_json);
  d->token = dup_opt(L, src->token);
  d->session_uri = uri ? uri : dup_opt(L, src->session_uri);
  d->has_igm = src->has_igm;
  d->igm = src->igm;
  d->has_imgm = src->has_imgm;
  d->imgm = src->imgm;
  d->connect_timeout = ct;
  if (src->nheaders) {
    d->headers = calloc(src->nheaders, sizeof *d->headers);
    if (!d->headers) return luaL_error(L, "out of memory");
    for (size_t i = 0; i < src->nheaders; i++) {
      d->headers[i].name = dup_or_raise(L, src->headers[i].name);
      d->headers[i].value = dup_or_raise(L, src->headers[i].value);
      d->nheaders = i + 1;
    }
  }
  get_uservalue(L, 1);
  set_uservalue(L, -2); /* share faults etc. */
  return 1;
}

/* with_session(desc, uri) = derive(desc, {session_uri = uri}) */
static int sinks_with_session(lua_State *L) {
  check_desc(L, 1);
  const char *uri = luaL_checkstring(L, 2);
  lua_settop(L, 1);
  lua_createtable(L, 0, 1);
  lua_pushstring(L, uri);
  lua_setfield(L, 2, "session_uri");
  return sinks_derive(L);
}

int rw_lua_open_sinks(lua_State *L) {
  if (luaL_newmetatable(L, DESC_MT)) {
    static const luaL_Reg methods[] = {{"kind", desc_kind},     {"stats", desc_stats},
                                       {"faults", desc_faults}, {"inner", desc_inner},
                                       {NULL, NULL}};
    static const luaL_Reg mt[] = {{"__gc", desc_gc}, {"__tostring", desc_tostring}, {NULL, NULL}};
    luaL_setfuncs(L, mt, 0);
    luaL_newlib(L, methods);
    lua_setfield(L, -2, "__index");
  }
  lua_pop(L, 1);
  static const luaL_Reg fns[] = {{"gcs", sinks_gcs},
                                 {"file", sinks_file},
                                 {"faulty", sinks_faulty},
                                 {"is_sink", sinks_is_sink},
                                 {"with_session", sinks_with_session},
                                 {"derive", sinks_derive},
                                 {NULL, NULL}};
  luaL_newlib(L, fns);
  return 1;
}
