/* Sink descriptors: sinks.gcs{...}, sinks.file{...}.
 *
 * A descriptor is a config, not a live sink: its metatable's __rw_sink seam
 * (lrw.h) builds a new sink from it for each writer; the test bed's
 * testbed.faulty(desc, {...}) has the same seam. Lua values a gcs descriptor
 * keeps (the `faults` option, issue 5) live in its uservalue table:
 * { faults = profile or its options table, faults_profile = profile }. The
 * profile is the test bed's; the core reaches it only through its metatable's
 * __rw_dialer seam. */
#include <stdlib.h>
#include <string.h>

#include "lrw.h"
#include "net/http.h"
#include "sinks/file.h"
#include "sinks/gcs.h"
#include "io/reader.h"

#define DESC_MT "reliablewriter.SinkDescriptor"

enum { DESC_GCS, DESC_FILE };
static const char *const kind_names[] = {"gcs", "file"};

typedef struct desc {
  int kind;
  /* gcs */
  char *bucket, *object, *endpoint, *metadata_json, *token, *session_uri;
  bool has_igm, has_imgm;
  int64_t igm, imgm;
  rw_gcs_header *headers; /* names and values malloc'd */
  size_t nheaders;
  double connect_timeout;
  int64_t generation; /* for readers (rw.reader); 0: the live one */
  rw_cred *cred;     /* token_fn, credentials_file or credentials = "default" */
  bool anonymous;    /* credentials = "anonymous" */
  char *ca_file;
  /* file */
  char *path;
} desc;

#define set_uservalue rw_lua_setuservalue
#define get_uservalue rw_lua_getuservalue

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
  rw_cred_unref(d->cred);
  free(d->ca_file);
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
    hs[d->nheaders].name = rw_lua_strdup(L, lua_tostring(L, -2));
    d->nheaders++;
    hs[d->nheaders - 1].value = rw_lua_strdup(L, lua_tostring(L, -1));
    lua_pop(L, 1);
  }
  lua_pop(L, 1);
}

/* ---- credentials (issue 11; net/auth.h) ---- */

/* At most one of token, token_fn, credentials_file, credentials. */
static void check_one_source(lua_State *L) {
  static const char *const names[] = {"token", "token_fn", "credentials_file", "credentials"};
  int n = 0;
  for (size_t i = 0; i < 4; i++) {
    lua_getfield(L, 1, names[i]);
    n += !lua_isnil(L, -1);
    lua_pop(L, 1);
  }
  if (n > 1)
    luaL_argerror(L, 1, "options 'token', 'token_fn', 'credentials_file' and 'credentials' exclude "
                        "each other: give one");
}

static void new_cred(lua_State *L, desc *d, const rw_cred_options *o) {
  rw_error *e = NULL;
  d->cred = rw_cred_new(o, &e);
  if (d->cred) return;
  lua_pushstring(L, rw_error_message(e));
  rw_error_unref(e);
  luaL_argerror(L, 1, lua_tostring(L, -1));
}

/* token_fn (kept in the uservalue), credentials_file, credentials. */
static void creds_option(lua_State *L, int self, desc *d) {
  check_one_source(L);
  rw_cred_options o = {.ca_file = d->ca_file};
  lua_getfield(L, 1, "token_fn");
  if (!lua_isnil(L, -1) && !lua_isfunction(L, -1))
    luaL_argerror(L, 1, "option 'token_fn' must be a function returning token, expires_in");
  if (lua_isfunction(L, -1)) {
    lua_pushvalue(L, -1);
    uv_set(L, self, "token_fn");
    o.kind = RW_CRED_PUSHED;
    new_cred(L, d, &o);
  }
  lua_pop(L, 1);
  char *path = rw_lua_opt_string(L, 1, 1, "credentials_file", false, NULL);
  if (path) {
    o.kind = RW_CRED_FILE;
    o.path = path;
    rw_error *e = NULL;
    d->cred = rw_cred_new(&o, &e);
    free(path);
    if (!d->cred) {
      lua_pushstring(L, rw_error_message(e));
      rw_error_unref(e);
      luaL_argerror(L, 1, lua_tostring(L, -1));
    }
  }
  static const char *const modes[] = {"default", "anonymous", NULL};
  if (!rw_lua_opt_given(L, 1, "credentials")) return;
  int mode = rw_lua_opt_choice(L, 1, 1, "credentials", 0, modes);
  o.kind = RW_CRED_DEFAULT;
  if (mode == 0) new_cred(L, d, &o);
  else d->anonymous = true;
}

/* Calls the descriptor's token_fn (on this, the Lua thread) when its
 * credential wants a token, and hands the token over; a failure is handed
 * over too (requests then fail with it). NULL when all is well. */
static rw_error *serve_token(lua_State *L, int idx, desc *d) {
  if (!d->cred || !rw_cred_wants_token(d->cred)) return NULL;
  uv_get(L, idx, "token_fn");
  if (!lua_isfunction(L, -1)) {
    lua_pop(L, 1);
    return NULL;
  }
  rw_error *e = NULL;
  if (lua_pcall(L, 0, 2, 0) != LUA_OK) {
    e = rw_err(RW_E_UNAUTHENTICATED, "token_fn failed: %s", lua_isstring(L, -1) ? lua_tostring(L, -1) : "(an error object)");
    lua_pop(L, 1);
  } else {
    bool ok = lua_type(L, -2) == LUA_TSTRING && (lua_isnil(L, -1) || lua_type(L, -1) == LUA_TNUMBER);
    if (!ok)
      e = rw_err(RW_E_UNAUTHENTICATED, "token_fn must return a token string and expires_in seconds (or nil); "
                 "it returned %s, %s", luaL_typename(L, -2), luaL_typename(L, -1));
    else
      e = rw_cred_push_token(d->cred, lua_tostring(L, -2), lua_isnil(L, -1) ? 0 : lua_tonumber(L, -1));
    lua_pop(L, 2);
  }
  if (e) rw_cred_push_error(d->cred, e);
  return e;
}

/* desc:_serve_token(): true, or nil, err (the writer's pump calls it). */
static int desc_serve_token(lua_State *L) {
  rw_error *e = serve_token(L, 1, check_desc(L, 1));
  if (e) return rw_lua_fail(L, e);
  lua_pushboolean(L, 1);
  return 1;
}

/* For the writer's binding: when the descriptor at idx has a token_fn, true;
 * rw_lua_sink_serve_token calls it (on this, the Lua thread) when its
 * credential wants a token. */
bool rw_lua_sink_has_token_fn(lua_State *L, int idx) {
  desc *d = luaL_testudata(L, idx, DESC_MT);
  if (!d || !d->cred) return false;
  uv_get(L, idx, "token_fn");
  bool yes = lua_isfunction(L, -1);
  lua_pop(L, 1);
  return yes;
}

void rw_lua_sink_serve_token(lua_State *L, int idx) {
  desc *d = luaL_testudata(L, idx, DESC_MT);
  if (d) rw_error_unref(serve_token(L, idx, d)); /* a failure was handed to the credential */
}

/* desc:_has_token_fn() */
static int desc_has_token_fn(lua_State *L) {
  check_desc(L, 1);
  uv_get(L, 1, "token_fn");
  lua_pushboolean(L, lua_isfunction(L, -1));
  return 1;
}

/* Makes one throwaway sink to let the C side validate the whole config. */
static rw_gcs_config gcs_config(const desc *d) {
  rw_gcs_config c = {.bucket = d->bucket, .object = d->object, .endpoint = d->endpoint,
                     .metadata_json = d->metadata_json, .has_if_generation_match = d->has_igm,
                     .if_generation_match = d->igm, .has_if_metageneration_match = d->has_imgm,
                     .if_metageneration_match = d->imgm, .headers = d->headers,
                     .nheaders = d->nheaders, .connect_timeout = d->connect_timeout,
                     .session_uri = d->session_uri, .token = d->token, .cred = d->cred,
                     .anonymous = d->anonymous, .ca_file = d->ca_file};
  return c;
}

/* faults = testbed.faults.profile{...} (anything with the __rw_dialer seam)
 * or the options of one, made into a profile by the test bed: both stored in
 * the uservalue, the profile also as faults_profile for make_gcs. */
static void faults_option(lua_State *L, int self) {
  lua_getfield(L, 1, "faults");
  if (lua_istable(L, -1)) {
    lua_getglobal(L, "require");
    lua_pushliteral(L, "reliablewriter.testbed");
    lua_call(L, 1, 1);
    lua_getfield(L, -1, "faults");
    lua_getfield(L, -1, "profile");
    lua_pushvalue(L, -4);
    lua_call(L, 1, 1);
    lua_replace(L, -3);
    lua_pop(L, 1);
  } else if (rw_lua_seam(L, -1, "__rw_dialer")) {
    lua_pushvalue(L, -1);
  } else if (!lua_isnil(L, -1)) {
    luaL_argerror(L, 1, "option 'faults' must be a fault profile (testbed.faults.profile{...}) or its options table");
  } else {
    lua_pushnil(L);
  }
  uv_set(L, self, "faults_profile");
  uv_set(L, self, "faults");
}

static int sinks_gcs(lua_State *L) {
  static const char *const known[] = {"bucket", "object", "endpoint", "metadata",
                                      "if_generation_match", "if_metageneration_match",
                                      "headers", "connect_timeout",
                                      "faults", "token", "session_uri", "generation", "token_fn",
                                      "credentials_file", "credentials", "ca_file", NULL};
  rw_lua_check_options(L, 1, 1, known);
  desc *d = push_desc(L, DESC_GCS);
  int self = lua_gettop(L);
  bool resume = rw_lua_opt_given(L, 1, "session_uri");
  d->session_uri = rw_lua_opt_string(L, 1, 1, "session_uri", false, NULL);
  d->bucket = rw_lua_opt_string(L, 1, 1, "bucket", !resume, NULL);
  d->object = rw_lua_opt_string(L, 1, 1, "object", !resume, NULL);
  d->endpoint = rw_lua_opt_string(L, 1, 1, "endpoint", false, NULL);
  d->token = rw_lua_opt_string(L, 1, 1, "token", false, NULL);
  d->metadata_json = rw_lua_opt_json_object(L, 1, 1, "metadata");
  d->has_igm = rw_lua_opt_given(L, 1, "if_generation_match");
  d->igm = rw_lua_opt_integer(L, 1, 1, "if_generation_match", 0, 0, INT64_C(9007199254740992));
  d->has_imgm = rw_lua_opt_given(L, 1, "if_metageneration_match");
  d->imgm = rw_lua_opt_integer(L, 1, 1, "if_metageneration_match", 0, 0, INT64_C(9007199254740992));
  d->connect_timeout = rw_lua_opt_number(L, 1, 1, "connect_timeout", 10, 0.001, 3600);
  d->generation = rw_lua_opt_integer(L, 1, 1, "generation", 0, 1, INT64_C(9007199254740992));
  headers_option(L, 1, 1, d);
  faults_option(L, self);
  d->ca_file = rw_lua_opt_string(L, 1, 1, "ca_file", false, NULL);
  creds_option(L, self, d);
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
  d->path = rw_lua_opt_string(L, 1, 1, "path", true, NULL);
  return 1;
}

/* ---- making live sinks ---- */

/* A gcs sink; with a fault profile, the sink's HTTP client holds the
 * profile's reference that its dialer seam took, and releases it when done. */
static rw_sink *make_gcs(lua_State *L, int idx, const desc *d, rw_error **err) {
  rw_gcs_config c = gcs_config(d);
  rw_http_dialer dialer;
  uv_get(L, idx, "faults_profile");
  const rw_lua_dialer_seam *seam = rw_lua_seam(L, -1, "__rw_dialer");
  if (seam) {
    seam->fill(L, lua_gettop(L), &dialer);
    c.dialer = &dialer;
  }
  lua_pop(L, 1);
  if ((*err = serve_token(L, idx, (desc *)d))) {
    if (seam) rw_http_dialer_release(&dialer);
    return NULL;
  }
  return rw_gcs_sink_new(&c, err);
}

static rw_sink *desc_make(lua_State *L, int idx, rw_error **err) {
  desc *d = check_desc(L, idx);
  *err = NULL;
  return d->kind == DESC_GCS ? make_gcs(L, idx, d, err) : rw_file_sink_new(d->path, err);
}

/* The source of a reader (rw.reader): fills c's source, generation and
 * connect_timeout from the gcs descriptor at idx (strings borrowed from it:
 * keep it alive until rw_reader_new copied them), and with a fault profile
 * c->dialer = dialer (filled, one reference). False for anything else. */
bool rw_lua_gcs_reader_config(lua_State *L, int idx, struct rw_reader_config *c,
                              struct rw_http_dialer *dialer) {
  desc *d = luaL_testudata(L, idx, DESC_MT);
  if (!d || d->kind != DESC_GCS || !d->bucket) return false;
  c->source = (rw_gcs_source_config){.bucket = d->bucket, .object = d->object, .endpoint = d->endpoint,
                                     .headers = d->headers, .nheaders = d->nheaders, .token = d->token,
                                     .cred = d->cred, .anonymous = d->anonymous, .ca_file = d->ca_file};
  c->generation = d->generation;
  c->connect_timeout = d->connect_timeout;
  uv_get(L, idx, "faults_profile");
  const rw_lua_dialer_seam *seam = rw_lua_seam(L, -1, "__rw_dialer");
  if (seam) {
    seam->fill(L, lua_gettop(L), dialer);
    c->dialer = dialer;
  }
  lua_pop(L, 1);
  return true;
}

/* ---- methods ---- */

static int desc_kind(lua_State *L) {
  lua_pushstring(L, kind_names[check_desc(L, 1)->kind]);
  return 1;
}

/* The stored `faults` table of a gcs descriptor (issue 5), or nil. */
static int desc_faults(lua_State *L) {
  check_desc(L, 1);
  uv_get(L, 1, "faults");
  return 1;
}

static int desc_tostring(lua_State *L) {
  desc *d = check_desc(L, 1);
  if (d->kind == DESC_GCS && d->bucket)
    lua_pushfstring(L, "sink gcs gs://%s/%s", d->bucket, d->object);
  else if (d->kind == DESC_GCS)
    lua_pushfstring(L, "sink gcs session %s", d->session_uri);
  else
    lua_pushfstring(L, "sink file %s", d->path);
  return 1;
}

static int sinks_is_sink(lua_State *L) {
  lua_pushboolean(L, rw_lua_is_sink(L, 1));
  return 1;
}

/* derive(desc, {session_uri=, connect_timeout=}): a copy of a gcs descriptor
 * with those set (rw.resume and the writer's connect_timeout use it). Other
 * kinds (file, the test bed's faulty) come back unchanged. */
static int sinks_derive(lua_State *L) {
  if (!rw_lua_is_sink(L, 1)) check_desc(L, 1); /* raises */
  desc *src = luaL_testudata(L, 1, DESC_MT);   /* NULL: the test bed's (faulty) */
  luaL_checktype(L, 2, LUA_TTABLE);
  static const char *const known[] = {"session_uri", "connect_timeout", NULL};
  rw_lua_check_options(L, 2, 2, known);
  if (!src || src->kind != DESC_GCS) {
    lua_pushvalue(L, 1);
    return 1;
  }
  /* the number first: a bad one raises before the string is copied (it leaked) */
  double ct = rw_lua_opt_number(L, 2, 2, "connect_timeout", src->connect_timeout, 0, 3600);
  char *uri = rw_lua_opt_string(L, 2, 2, "session_uri", false, NULL);
  desc *d = push_desc(L, DESC_GCS);
  d->bucket = rw_lua_strdup(L, src->bucket);
  d->object = rw_lua_strdup(L, src->object);
  d->endpoint = rw_lua_strdup(L, src->endpoint);
  d->metadata_json = rw_lua_strdup(L, src->metadata_json);
  d->token = rw_lua_strdup(L, src->token);
  d->session_uri = uri ? uri : rw_lua_strdup(L, src->session_uri);
  d->has_igm = src->has_igm;
  d->igm = src->igm;
  d->has_imgm = src->has_imgm;
  d->imgm = src->imgm;
  d->connect_timeout = ct;
  d->generation = src->generation;
  d->cred = src->cred ? rw_cred_ref(src->cred) : NULL;
  d->anonymous = src->anonymous;
  d->ca_file = rw_lua_strdup(L, src->ca_file);
  if (src->nheaders) {
    d->headers = calloc(src->nheaders, sizeof *d->headers);
    if (!d->headers) return luaL_error(L, "out of memory");
    for (size_t i = 0; i < src->nheaders; i++) {
      d->headers[i].name = rw_lua_strdup(L, src->headers[i].name);
      d->headers[i].value = rw_lua_strdup(L, src->headers[i].value);
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
  static const luaL_Reg methods[] = {{"kind", desc_kind},
                                     {"faults", desc_faults},
                                     {"_serve_token", desc_serve_token},
                                     {"_has_token_fn", desc_has_token_fn},
                                     {NULL, NULL}};
  static const luaL_Reg mt[] = {{"__gc", desc_gc}, {"__tostring", desc_tostring}, {NULL, NULL}};
  static const rw_lua_sink_seam seam = {desc_make};
  rw_lua_new_class(L, DESC_MT, mt, methods, "__rw_sink", &seam);
  static const luaL_Reg fns[] = {{"gcs", sinks_gcs},
                                 {"file", sinks_file},
                                 {"is_sink", sinks_is_sink},
                                 {"with_session", sinks_with_session},
                                 {"derive", sinks_derive},
                                 {NULL, NULL}};
  luaL_newlib(L, fns);
  return 1;
}
