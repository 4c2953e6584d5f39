/* Lua face of rw_writer. The C side never blocks the Lua thread except in
 * _wait_blocking; WriteAt / Complete loops live in lua/reliablewriter/writer.lua
 * and choose how to wait (block, yield to a workgroup, ngx.sleep).
 *
 * Zero copy: a written Lua string is kept alive by a registry reference until
 * the server confirmed its bytes; the reference is dropped on the Lua thread,
 * inside a later call (rw_writer_drain). */
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/checksum.h"
#include "io/filesrc.h"
#include "io/writer.h"
#include "lrw.h"
#include "sinks/sink.h"

#define WRITER_MT "reliablewriter.Writer"
#define FILE_PIECE (8u << 20)

typedef struct lwriter {
  rw_writer *w;
  size_t released; /* bytes of strings let go since the last collection */
  size_t cache;    /* max_cache_size */
  size_t gc_live;  /* the Lua heap after the last collection we made */
  lua_State *L; /* the thread running the current call (for releases) */
  rw_ctx *ctx;  /* the writer's default context */
} lwriter;

typedef struct strref {
  lwriter *lw;
  int ref;
  size_t len;
} strref;

static lwriter *check_lw(lua_State *L) {
  lwriter *lw = luaL_checkudata(L, 1, WRITER_MT);
  if (!lw->w) rw_lua_closed_error(L, "writer");
  lw->L = L;
  return lw;
}

static void release_string(void *ud) {
  strref *r = ud;
  luaL_unref(r->lw->L, LUA_REGISTRYINDEX, r->ref);
  r->lw->released += r->len;
  free(r);
}

static uint64_t check_offset(lua_State *L, int arg) {
  lua_Number n = luaL_checknumber(L, arg);
  if (!(n >= 0) || n != floor(n) || n > 9007199254740992.0)
    luaL_argerror(L, arg, "offset must be a whole number >= 0");
  return (uint64_t)n;
}

/* ---- construction ---- */

static uint64_t opt_size(lua_State *L, const char *name, uint64_t def) {
  return (uint64_t)rw_lua_opt_integer(L, 2, 2, name, (int64_t)def, 0, INT64_C(1) << 50);
}

static void read_retry(lua_State *L, rw_backoff_config *r, bool *conditional) {
  lua_getfield(L, 2, "retry");
  if (lua_isnil(L, -1)) {
    lua_pop(L, 1);
    return;
  }
  int t = lua_gettop(L);
  if (!lua_istable(L, t)) luaL_argerror(L, 2, "option 'retry' must be a table");
  static const char *const known[] = {"min_wait", "max_wait", "total_wait", "multiplier",
                                      "jitter", "seed", "policy", NULL};
  static const char *const jitters[] = {"full", "equal", "decorrelated", "none", NULL};
  rw_lua_check_options(L, t, 2, known);
  r->min_wait = rw_lua_opt_number(L, t, 2, "min_wait", r->min_wait, 1e-6, 86400);
  r->max_wait = rw_lua_opt_number(L, t, 2, "max_wait", fmax(r->max_wait, r->min_wait), 1e-6, 86400);
  r->total_wait = rw_lua_opt_number(L, t, 2, "total_wait", r->total_wait, 0, 86400 * 30);
  r->multiplier = rw_lua_opt_number(L, t, 2, "multiplier", r->multiplier, 1, 100);
  r->jitter = (rw_jitter)rw_lua_opt_choice(L, t, 2, "jitter", r->jitter, jitters);
  r->seed = (uint64_t)rw_lua_opt_integer(L, t, 2, "seed", 0, 0, INT64_MAX);
  static const char *const policies[] = {"always", "conditional", NULL};
  *conditional = rw_lua_opt_choice(L, t, 2, "policy", 0, policies) == 1;
  lua_pop(L, 1);
}

/* new(ctx, opts [, resume]) ; resume = {persisted=, crc32c=} from w:session() */
static int writer_new(lua_State *L) {
  rw_ctx *ctx = rw_lua_checkctx(L, 1);
  static const char *const known[] = {
      "sink",          "max_cache_size", "min_chunk_size", "max_chunk_size", "retry",
      "stall_timeout", "connect_timeout", "checksum",      "on_progress",    "abort_timeout",
      NULL};
  static const char *const sums[] = {"crc32c", "md5", "both", "none", NULL};
  rw_lua_check_options(L, 2, 2, known);
  rw_writer_config c = rw_writer_defaults();
  c.max_cache_size = opt_size(L, "max_cache_size", c.max_cache_size);
  c.min_chunk_size = opt_size(L, "min_chunk_size", c.min_chunk_size);
  c.max_chunk_size = opt_size(L, "max_chunk_size", c.max_chunk_size);
  read_retry(L, &c.retry, &c.retry_conditional);
  c.stall_timeout = rw_lua_opt_number(L, 2, 2, "stall_timeout", c.stall_timeout, 0.01, 86400);
  c.abort_timeout = rw_lua_opt_number(L, 2, 2, "abort_timeout", c.abort_timeout, 0.001, 600);
  rw_lua_opt_number(L, 2, 2, "connect_timeout", 10, 0.001, 3600); /* applied by the sink */
  int cs = rw_lua_opt_choice(L, 2, 2, "checksum", 0, sums);
  c.crc32c = cs == 0 || cs == 2;
  c.md5 = cs == 1 || cs == 2;
  if (!lua_isnoneornil(L, 3)) {
    luaL_checktype(L, 3, LUA_TTABLE);
    c.resume = true;
    lua_getfield(L, 3, "persisted");
    c.start_offset = (uint64_t)luaL_optinteger(L, -1, 0);
    lua_getfield(L, 3, "crc32c");
    if (lua_isstring(L, -1)) c.has_start_crc = rw_crc32c_from_base64(lua_tostring(L, -1), &c.start_crc);
    lua_pop(L, 2);
  }
  rw_error *e = rw_writer_config_check(&c);
  if (e) {
    lua_pushstring(L, rw_error_message(e));
    rw_error_unref(e);
    return luaL_argerror(L, 2, lua_tostring(L, -1));
  }
  lua_getfield(L, 2, "sink");
  if (lua_isnil(L, -1)) return luaL_argerror(L, 2, "option 'sink' is required (rw.gcs{...}, rw.file{...})");
  if (!rw_lua_is_sink(L, -1))
    return luaL_argerror(L, 2, lua_pushfstring(L, "option 'sink' must be a sink descriptor (rw.gcs{...}, "
                                                  "rw.file{...}), got %s", luaL_typename(L, -1)));
  lwriter *lw = lua_newuserdata(L, sizeof *lw);
  memset(lw, 0, sizeof *lw);
  luaL_setmetatable(L, WRITER_MT);
  rw_sink *sink = rw_lua_sink_make(L, -2, &e);
  if (!sink) return rw_lua_fail(L, e);
  lw->w = rw_writer_new(ctx, sink, &c, &e);
  if (!lw->w) return rw_lua_fail(L, e);
  lw->ctx = rw_ctx_ref(ctx);
  lw->L = L;
  lw->cache = (size_t)c.max_cache_size;
  return 1;
}

/* ---- steps ---- */

/* _write_some(off, data, from): writes data[from..] at off + from - 1; returns
 * how many bytes of data are done (from - 1 + taken). */
static int writer_write_some(lua_State *L) {
  lwriter *lw = check_lw(L);
  uint64_t off = check_offset(L, 2);
  size_t len;
  const char *data = luaL_checklstring(L, 3, &len);
  lua_Integer from = luaL_optinteger(L, 4, 1);
  if (from < 1 || (size_t)from > len + 1) return luaL_argerror(L, 4, "from out of range");
  size_t skip = (size_t)from - 1;
  strref *r = malloc(sizeof *r);
  if (!r) return luaL_error(L, "out of memory");
  lua_pushvalue(L, 3);
  r->lw = lw;
  r->len = len - skip;
  r->ref = luaL_ref(L, LUA_REGISTRYINDEX);
  size_t accepted = 0;
  rw_error *e = rw_writer_write_some(lw->w, off + skip, data + skip, len - skip, release_string, r,
                                     &accepted);
  if (e) {
    luaL_unref(L, LUA_REGISTRYINDEX, r->ref);
    free(r);
    return rw_lua_fail(L, e);
  }
  lua_pushinteger(L, (lua_Integer)(skip + accepted)); /* bytes of data done */
  return 1;
}

/* ---- write_file: the file is read (pread) into buffers the writer owns ---- */

#define FILESRC_MT "reliablewriter.FileSource"

static rw_filesrc **check_src(lua_State *L, int idx) {
  rw_filesrc **p = luaL_checkudata(L, idx, FILESRC_MT);
  if (!*p) rw_lua_closed_error(L, "file source");
  return p;
}

static int filesrc_close(lua_State *L) {
  rw_filesrc **p = luaL_checkudata(L, 1, FILESRC_MT);
  rw_filesrc *s = *p;
  *p = NULL; /* mark closed first */
  rw_filesrc_close(s);
  return 0;
}

static void filesrc_metatable(lua_State *L) {
  if (luaL_newmetatable(L, FILESRC_MT)) {
    lua_pushcfunction(L, filesrc_close);
    lua_setfield(L, -2, "__gc");
    lua_pushcfunction(L, filesrc_close);
    lua_setfield(L, -2, "__close");
    lua_createtable(L, 0, 1);
    lua_pushcfunction(L, filesrc_close);
    lua_setfield(L, -2, "close");
    lua_setfield(L, -2, "__index");
  }
  lua_pop(L, 1);
}

/* _file_size(path) -> bytes, source (close it when done), or nil, err.
 * Regular files on a real file system only (see io/filesrc.h). */
static int writer_file_size(lua_State *L) {
  const char *path = luaL_checkstring(L, 2);
  rw_filesrc **p = lua_newuserdata(L, sizeof *p);
  *p = NULL;
  filesrc_metatable(L);
  luaL_setmetatable(L, FILESRC_MT);
  rw_error *e = NULL;
  if (!(*p = rw_filesrc_open(path, &e))) return rw_lua_fail(L, e);
  lua_pushinteger(L, (lua_Integer)rw_filesrc_size(*p));
  lua_insert(L, -2);
  return 2;
}

static void release_buffer(void *ud) { rw_filesrc_buffer_release(ud); }

/* _write_file_some(off, source, file_off, len): reads up to 8 MiB of the file
 * that fits in the cache now into a buffer and hands it to the writer; the
 * checksum is then computed over exactly the bytes that are sent.
 * -> accepted, or nil, err (rw.source_changed when the file changed). */
static int writer_write_file_some(lua_State *L) {
  lwriter *lw = check_lw(L);
  uint64_t off = check_offset(L, 2);
  rw_filesrc *src = *check_src(L, 3);
  uint64_t foff = check_offset(L, 4), len = check_offset(L, 5);
  uint64_t room = rw_writer_room(lw->w, off);
  uint64_t n = len < room ? len : room;
  if (n > FILE_PIECE) n = FILE_PIECE;
  if (n == 0) {
    lua_pushinteger(L, 0);
    return 1;
  }
  char *buf = rw_filesrc_buffer(src, (size_t)n);
  if (!buf) return rw_lua_fail(L, rw_err(RW_E_NOMEM, "write_file: out of memory for %llu bytes",
                                         (unsigned long long)n));
  rw_error *e = rw_filesrc_read(src, foff, buf, (size_t)n);
  size_t accepted = 0;
  if (!e) e = rw_writer_write_some(lw->w, off, buf, (size_t)n, release_buffer, buf, &accepted);
  if (e) {
    rw_filesrc_buffer_release(buf);
    /* No object may be made from a file read partly before a change: the
     * writer fails with the same error (Complete then reports it). */
    if (rw_error_is(e, RW_E_SOURCE_CHANGED)) rw_writer_fail(lw->w, rw_error_ref(e));
    return rw_lua_fail(L, e);
  }
  lua_pushinteger(L, (lua_Integer)accepted);
  return 1;
}

static int writer_room(lua_State *L) {
  lwriter *lw = check_lw(L);
  uint64_t r = rw_writer_room(lw->w, check_offset(L, 2));
  lua_pushnumber(L, r == UINT64_MAX ? HUGE_VAL : (lua_Number)r);
  return 1;
}

static int writer_complete_start(lua_State *L) {
  lwriter *lw = check_lw(L);
  uint64_t total = lua_isnoneornil(L, 2) ? UINT64_MAX : check_offset(L, 2);
  rw_error *e = rw_writer_complete_start(lw->w, total);
  if (e) return rw_lua_fail(L, e);
  lua_pushboolean(L, 1);
  return 1;
}

static int writer_finished(lua_State *L) {
  lua_pushboolean(L, rw_writer_finished(check_lw(L)->w));
  return 1;
}

static int writer_failed(lua_State *L) {
  rw_error *e = rw_writer_error(check_lw(L)->w);
  if (!e) return 0;
  rw_lua_push_error(L, e);
  return 1;
}

static void set_str(lua_State *L, const char *k, const char *v) {
  if (!v) return;
  lua_pushstring(L, v);
  lua_setfield(L, -2, k);
}

/* _result() -> object table, or nil, err */
static int writer_result(lua_State *L) {
  lwriter *lw = check_lw(L);
  rw_error *e = rw_writer_error(lw->w);
  if (e) return rw_lua_fail(L, e);
  const rw_sink_object *o = rw_writer_object(lw->w);
  if (!o) {
    rw_writer_stats st = rw_writer_get_stats(lw->w);
    return rw_lua_fail(L, rw_err(RW_E_CLOSED, "the writer is %s; no object",
                                 rw_writer_state_name(st.state)));
  }
  lua_createtable(L, 0, 8);
  set_str(L, "bucket", o->bucket);
  set_str(L, "name", o->name);
  set_str(L, "generation", o->generation);
  set_str(L, "crc32c", o->crc32c);
  set_str(L, "md5Hash", o->md5);
  set_str(L, "json", o->json);
  lua_pushinteger(L, (lua_Integer)o->size);
  lua_setfield(L, -2, "size");
  return 1;
}

/* _wait_blocking(want_room, off, timeout|nil, ctx|nil) */
static int writer_wait_blocking(lua_State *L) {
  lwriter *lw = check_lw(L);
  bool want_room = lua_toboolean(L, 2);
  uint64_t off = lua_isnoneornil(L, 3) ? 0 : check_offset(L, 3);
  double t = lua_isnoneornil(L, 4) ? -1 : rw_lua_check_number_range(L, 4, "timeout", 0, 1e9);
  rw_ctx *ctx = rw_lua_optctx(L, 5);
  rw_writer_wait(lw->w, ctx ? ctx : lw->ctx, want_room, off, t);
  return 0;
}

/* The strings a writer lets go are garbage, but Lua's collector paces itself
 * by allocation and rests until the heap is twice what was live (the whole
 * cache): released strings pile up (a WriteAt upload ran at 0.78x of libcurl).
 * A GC step sized by the released bytes does not help in 5.4: the step that
 * ends a cycle resets the pause. So we collect after max(cache / 4, 4 MiB,
 * half of the program's own heap) released bytes (its own: what was live
 * after our last collection, less the cache): with a small program the heap
 * stays near cache + a quarter of it, and the collection work stays
 * proportional to the bytes written however large the program's heap is (a
 * full collection every 4 MiB of a 1 GiB heap would cost more than the upload). */
static void gc_keep_up(lua_State *L, lwriter *lw) {
  size_t own = lw->gc_live > lw->cache ? lw->gc_live - lw->cache : 0;
  size_t every = lw->cache / 4 > (4u << 20) ? lw->cache / 4 : (4u << 20);
  if (own / 2 > every) every = own / 2;
  if (lw->released < every) return;
  lw->released = 0;
  lua_gc(L, LUA_GCCOLLECT, 0);
  lw->gc_live = (size_t)lua_gc(L, LUA_GCCOUNT, 0) << 10;
}

/* Runs the deferred releases (see gc_keep_up). */
static int writer_drain(lua_State *L) {
  lwriter *lw = check_lw(L);
  bool progressed = rw_writer_drain(lw->w);
  gc_keep_up(L, lw);
  lua_pushboolean(L, progressed);
  return 1;
}

static int writer_pollfd(lua_State *L) {
  lua_pushinteger(L, rw_writer_pollfd(check_lw(L)->w));
  return 1;
}

static int writer_events(lua_State *L) {
  check_lw(L);
  lua_pushliteral(L, "r");
  return 1;
}

static int writer_ctx(lua_State *L) {
  lwriter *lw = check_lw(L);
  rw_lua_push_ctx(L, rw_ctx_ref(lw->ctx));
  return 1;
}

static void push_error_count(void *ud, const char *code, uint64_t n) {
  lua_State *L = ud;
  lua_pushinteger(L, (lua_Integer)n);
  lua_setfield(L, -2, code);
}

static int writer_stats(lua_State *L) {
  lwriter *lw = check_lw(L);
  rw_writer_stats s = rw_writer_get_stats(lw->w);
  lua_createtable(L, 0, 9);
  const struct {
    const char *k;
    uint64_t v;
  } f[] = {{"written", s.written},       {"persisted", s.persisted}, {"in_cache", s.in_cache},
           {"contiguous", s.contiguous}, {"retries", s.retries},     {"chunks", s.chunks},
           {"backoff_ms", s.backoff_ms}};
  for (size_t i = 0; i < sizeof f / sizeof f[0]; i++) {
    lua_pushinteger(L, (lua_Integer)f[i].v);
    lua_setfield(L, -2, f[i].k);
  }
  lua_pushstring(L, rw_writer_state_name(s.state));
  lua_setfield(L, -2, "state");
  lua_newtable(L);
  rw_writer_each_error(lw->w, push_error_count, L);
  lua_setfield(L, -2, "errors");
  return 1;
}

/* Pushes {uri=, persisted=, crc32c=} or nothing (returns 0) while no session
 * exists. */
static int push_session(lua_State *L, lwriter *lw) {
  uint64_t persisted;
  bool has_crc;
  uint32_t crc;
  char *handle = rw_writer_session(lw->w, &persisted, &has_crc, &crc);
  if (!handle) return 0;
  lua_createtable(L, 0, 3);
  lua_pushstring(L, handle);
  free(handle);
  lua_setfield(L, -2, "uri");
  lua_pushinteger(L, (lua_Integer)persisted);
  lua_setfield(L, -2, "persisted");
  if (has_crc) {
    char b64[16];
    rw_crc32c_base64(crc, b64);
    set_str(L, "crc32c", b64);
  }
  return 1;
}

/* session() -> {uri=, persisted=, crc32c=}, or nil before a session exists */
static int writer_session(lua_State *L) {
  if (push_session(L, check_lw(L))) return 1;
  lua_pushnil(L);
  return 1;
}

static int writer_abort(lua_State *L) {
  lwriter *lw = luaL_checkudata(L, 1, WRITER_MT);
  if (!lw->w) return 0; /* idempotent after close */
  lw->L = L;
  rw_writer_abort(lw->w);
  rw_writer_drain(lw->w);
  return 0;
}

/* Suspend(): stops the work, keeps the server's session, returns w:session();
 * nil, rw.no_session when nothing was sent yet (there is nothing to resume). */
static int writer_suspend(lua_State *L) {
  lwriter *lw = check_lw(L);
  rw_writer_suspend(lw->w);
  rw_writer_drain(lw->w);
  if (push_session(L, lw)) return 1;
  return rw_lua_fail(L, rw_err(RW_E_NO_SESSION,
                               "Suspend: no session exists yet (nothing was sent), so there is nothing to "
                               "resume; the writer is stopped: start a new upload"));
}

static int writer_abort_start(lua_State *L) {
  lwriter *lw = check_lw(L);
  rw_writer_abort_start(lw->w);
  return 0;
}

static int writer_stopped(lua_State *L) {
  lwriter *lw = luaL_checkudata(L, 1, WRITER_MT);
  lua_pushboolean(L, !lw->w || rw_writer_stopped(lw->w));
  return 1;
}

static int writer_gc(lua_State *L) {
  lwriter *lw = luaL_checkudata(L, 1, WRITER_MT);
  rw_writer *w = lw->w;
  if (!w) return 0;
  lw->w = NULL; /* mark closed first */
  lw->L = L;
  rw_writer_close(w); /* never waits on the network: the pool deletes the session */
  rw_ctx_unref(lw->ctx);
  lw->ctx = NULL;
  return 0;
}

static int writer_is_closed(lua_State *L) {
  lwriter *lw = luaL_checkudata(L, 1, WRITER_MT);
  lua_pushboolean(L, lw->w == NULL);
  return 1;
}

/* set_memory_budget(bytes|0) ; memory_budget() -> {limit=, used=} */
static int writer_set_budget(lua_State *L) {
  lua_Number n = luaL_checknumber(L, 1);
  if (!(n >= 0) || n != floor(n)) return luaL_argerror(L, 1, "bytes must be a whole number >= 0 (0 = no budget)");
  rw_writer_set_process_budget((uint64_t)n);
  return 0;
}

static int writer_budget(lua_State *L) {
  uint64_t limit, used;
  rw_writer_process_budget(&limit, &used);
  lua_createtable(L, 0, 2);
  lua_pushinteger(L, (lua_Integer)limit);
  lua_setfield(L, -2, "limit");
  lua_pushinteger(L, (lua_Integer)used);
  lua_setfield(L, -2, "used");
  return 1;
}

int rw_lua_open_writer(lua_State *L) {
  static const luaL_Reg methods[] = {
      {"_write_some", writer_write_some},
      {"_write_file_some", writer_write_file_some},
      {"_file_size", writer_file_size},
      {"_room", writer_room},
      {"_complete_start", writer_complete_start},
      {"_finished", writer_finished},
      {"_failed", writer_failed},
      {"_result", writer_result},
      {"_wait_blocking", writer_wait_blocking},
      {"_drain", writer_drain},
      {"_ctx", writer_ctx},
      {"_is_closed", writer_is_closed},
      {"pollfd", writer_pollfd},
      {"events", writer_events},
      {"stats", writer_stats},
      {"session", writer_session},
      {"_abort", writer_abort},
      {"_abort_start", writer_abort_start},
      {"_stopped", writer_stopped},
      {"Suspend", writer_suspend},
      {"close", writer_gc},
      {NULL, NULL}};
  luaL_newmetatable(L, WRITER_MT);
  lua_pushcfunction(L, writer_gc);
  lua_setfield(L, -2, "__gc");
  luaL_newlib(L, methods);
  lua_pushvalue(L, -1);
  lua_setfield(L, -3, "__index");
  static const luaL_Reg fns[] = {{"new", writer_new},
                                 {"set_memory_budget", writer_set_budget},
                                 {"memory_budget", writer_budget},
                                 {NULL, NULL}};
  luaL_newlib(L, fns);
  lua_insert(L, -2);
  lua_setfield(L, -2, "methods");
  lua_insert(L, -2);
  lua_setfield(L, -2, "metatable");
  return 1;
}
