/* Lua face of rw_writer: every method of the writer is defined here. Those
 * that may wait (WriteAt, write_file, Complete, Abort, wait) are steps that
 * hand an op to the waiting policy (l_wait.h: block, yield to a workgroup,
 * ngx.sleep); the rest never block. on_progress runs on the Lua thread, from
 * inside a call the program made (pump).
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
#include "l_wait.h"
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
  bool token_fn; /* its sink has a token_fn: the pump serves it, waits wake every 50 ms */
} lwriter;

typedef struct strref {
  lwriter *lw;
  int ref;
  size_t len;
} strref;

/* The open writer at idx (self, or an op's "w"); raises once it is closed. */
static lwriter *writer_at(lua_State *L, int idx) {
  lwriter *lw = luaL_checkudata(L, idx, WRITER_MT);
  if (!lw->w) rw_lua_closed_error(L, "writer");
  lw->L = L; /* the thread running this call: releases happen on it */
  return lw;
}

static lwriter *check_lw(lua_State *L) { return writer_at(L, 1); }

static void release_string(void *ud) {
  strref *r = ud;
  luaL_unref(r->lw->L, LUA_REGISTRYINDEX, r->ref);
  r->lw->released += r->len;
  free(r);
}

/* The userdata's user value is a table {on_progress, sink}: references the
 * collector sees through the writer (so a function that closes over its
 * writer is no cycle through the registry). sink is kept only when it has a
 * token_fn, which the pump serves. LuaJIT keeps the table in the userdata's
 * environment. */
static void set_user_values(lua_State *L, int ud, int fn, int sink) {
  if (fn < 0) fn = lua_gettop(L) + fn + 1;
  if (sink < 0) sink = lua_gettop(L) + sink + 1;
  lua_createtable(L, 2, 0);
  lua_pushvalue(L, fn);
  lua_rawseti(L, -2, 1);
  if (sink) {
    lua_pushvalue(L, sink);
    lua_rawseti(L, -2, 2);
  }
#if LUA_VERSION_NUM >= 504
  lua_setiuservalue(L, ud, 1);
#else
  lua_setfenv(L, ud);
#endif
}

/* Pushes user value i (1: on_progress, 2: the token sink) and returns true,
 * or pushes nothing and returns false. */
static bool push_user_value(lua_State *L, int ud, int i) {
#if LUA_VERSION_NUM >= 504
  lua_getiuservalue(L, ud, 1);
#else
  lua_getfenv(L, ud);
#endif
  if (!lua_istable(L, -1)) {
    lua_pop(L, 1);
    return false;
  }
  lua_rawgeti(L, -1, i);
  lua_remove(L, -2);
  if (!lua_isnil(L, -1)) return true;
  lua_pop(L, 1);
  return false;
}

static bool push_progress(lua_State *L, int ud) {
  if (!push_user_value(L, ud, 1)) return false;
  if (lua_isfunction(L, -1)) return true;
  lua_pop(L, 1);
  return false;
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
  lua_getfield(L, 2, "on_progress");
  if (!lua_isnil(L, -1) && !lua_isfunction(L, -1))
    return luaL_argerror(L, 2, "option 'on_progress' must be a function");
  lua_pop(L, 1);
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
  int ud = lua_gettop(L);
  lua_getfield(L, 2, "sink");
  int sink_idx = lua_gettop(L);
  lw->token_fn = rw_lua_sink_has_token_fn(L, sink_idx);
  lua_getfield(L, 2, "on_progress");
  set_user_values(L, ud, -1, lw->token_fn ? sink_idx : 0);
  lua_settop(L, ud);
  return 1;
}

/* ---- what the steps share ---- */

static void push_stats(lua_State *L, lwriter *lw);

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

/* Runs the deferred releases (the references to confirmed strings drop here,
 * on the Lua thread) and on_progress when something moved. on_progress may
 * close the writer: returns it open, or raises. wi: the writer's index. */
static lwriter *pump(lua_State *L, int wi) {
  lwriter *lw = writer_at(L, wi);
  if (lw->token_fn && push_user_value(L, wi, 2)) {
    rw_lua_sink_serve_token(L, lua_gettop(L));
    lua_pop(L, 1);
    lw = writer_at(L, wi);
  }
  bool progressed = rw_writer_drain(lw->w);
  gc_keep_up(L, lw);
  if (progressed && push_progress(L, wi)) {
    push_stats(L, lw);
    lua_call(L, 1, 0);
  }
  return writer_at(L, wi);
}

/* An offset-like argument of method fname: a whole number >= 0. */
static uint64_t method_offset(lua_State *L, int idx, int pos, const char *fname, const char *what) {
  lua_Number n = lua_type(L, idx) == LUA_TNUMBER ? lua_tonumber(L, idx) : -1;
  if (!(n >= 0) || n != floor(n) || n > 9007199254740992.0)
    rw_lua_method_argerror(L, pos, fname, "%s must be a whole number >= 0 (got %s)", what,
                           luaL_tolstring(L, idx, NULL));
  return (uint64_t)n;
}

/* The context argument at idx (pos-th of fname), or the writer's own when it
 * is nil: returns the index of a context on the stack. */
static int ctx_or_default(lua_State *L, lwriter *lw, int idx, int pos, const char *fname) {
  if (rw_lua_method_ctx(L, idx, pos, fname, true)) return idx;
  rw_lua_push_ctx(L, rw_ctx_ref(lw->ctx));
  return lua_gettop(L);
}

/* An op's field pushed on the stack; returns its index. */
static int op_field(lua_State *L, const char *k) {
  lua_getfield(L, 1, k);
  return lua_gettop(L);
}

static uint64_t op_u64(lua_State *L, const char *k) {
  lua_getfield(L, 1, k);
  uint64_t v = (uint64_t)lua_tonumber(L, -1);
  lua_pop(L, 1);
  return v;
}

static void set_u64(lua_State *L, int op, const char *k, uint64_t v) {
  lua_pushnumber(L, (lua_Number)v);
  lua_setfield(L, op, k);
}

static void set_value(lua_State *L, int op, const char *k, int idx) {
  lua_pushvalue(L, idx);
  lua_setfield(L, op, k);
}

static bool resumed_by_ctx(lua_State *L) { return strcmp(luaL_checkstring(L, 2), "done") == 0; }

/* nil, the error of the context in op.ctx. */
static int fail_ctx(lua_State *L) {
  return rw_lua_fail(L, rw_ctx_err(rw_lua_checkctx(L, op_field(L, "ctx"))));
}

/* An op on the writer at wi, its pollfd watched; ctx_idx 0: none. */
static int token_timeout(lua_State *L) {
  lua_pushnumber(L, 0.05);
  return 1;
}

static int new_writer_op(lua_State *L, int wi, int ctx_idx, lua_CFunction ready, lua_CFunction block,
                         lua_CFunction resume) {
  lwriter *lw = writer_at(L, wi);
  int op = rw_lua_new_op(L, ready, block, resume);
  if (lw->token_fn) { /* wakes to serve the token_fn (room_timeout too) */
    lua_pushcfunction(L, token_timeout);
    lua_setfield(L, op, "timeout");
  }
  set_value(L, op, "w", wi);
  if (ctx_idx) set_value(L, op, "ctx", ctx_idx);
  lua_getfield(L, op, "fds");
  lua_pushinteger(L, rw_writer_pollfd(lw->w));
  lua_rawseti(L, -2, 1);
  lua_pop(L, 1);
  return op;
}

/* ---- waiting for room (WriteAt, write_file) ---- */

static int room_ready(lua_State *L) {
  lwriter *lw = pump(L, op_field(L, "w"));
  rw_error *e = rw_writer_error(lw->w);
  lua_pushboolean(L, e || rw_writer_room(lw->w, op_u64(L, "pos")) > 0);
  rw_error_unref(e);
  return 1;
}

/* Room freed by other writers under the process budget is not signalled;
 * a token_fn is served from the pump, so such writers wake every 50 ms. */
static int room_timeout(lua_State *L) {
  if (writer_at(L, op_field(L, "w"))->token_fn) {
    lua_pushnumber(L, 0.05);
    return 1;
  }
  uint64_t limit, used;
  rw_writer_process_budget(&limit, &used);
  if (!limit) return 0;
  lua_pushnumber(L, 0.02);
  return 1;
}

static int room_block(lua_State *L) {
  lwriter *lw = writer_at(L, op_field(L, "w"));
  rw_ctx *ctx = rw_lua_checkctx(L, op_field(L, "ctx"));
  double t = lua_isnoneornil(L, 2) ? -1 : lua_tonumber(L, 2);
  rw_writer_wait(lw->w, ctx, true, op_u64(L, "pos"), t);
  return 0;
}

/* An op that waits for room at pos, then resume(op, why). */
static int wait_room(lua_State *L, int wi, uint64_t pos, int ci, lua_CFunction resume) {
  int op = new_writer_op(L, wi, ci, room_ready, room_block, resume);
  lua_pushcfunction(L, room_timeout);
  lua_setfield(L, op, "timeout");
  set_u64(L, op, "pos", pos);
  return op;
}

/* ---- WriteAt(offset, data [, ctx]): true, or nil, err ---- */

/* Hands data[from..] (1-based) at off + from - 1 to the writer, which keeps a
 * reference to the string until the server confirmed its bytes. */
static rw_error *take_string(lua_State *L, lwriter *lw, uint64_t off, int di, size_t from, size_t *taken) {
  size_t len;
  const char *data = lua_tolstring(L, di, &len);
  size_t skip = from - 1;
  strref *r = malloc(sizeof *r);
  if (!r) return rw_err(RW_E_NOMEM, "WriteAt: out of memory");
  lua_pushvalue(L, di);
  r->lw = lw;
  r->len = len - skip;
  r->ref = luaL_ref(L, LUA_REGISTRYINDEX);
  rw_error *e = rw_writer_write_some(lw->w, off + skip, data + skip, len - skip, release_string, r, taken);
  if (e) {
    luaL_unref(L, LUA_REGISTRYINDEX, r->ref);
    free(r);
  }
  return e;
}

static int strings_resume(lua_State *L);

/* Writes data[from..]; waits for room while some is left. */
static int write_string(lua_State *L, int wi, uint64_t off, int di, size_t from, int ci) {
  lwriter *lw = writer_at(L, wi);
  size_t len = lua_rawlen(L, di), taken = 0;
  rw_error *e = take_string(L, lw, off, di, from, &taken);
  if (e) return rw_lua_fail(L, e);
  from += taken;
  if (from > len) {
    lua_pushboolean(L, 1);
    return 1;
  }
  int op = wait_room(L, wi, off + from - 1, ci, strings_resume);
  set_u64(L, op, "off", off);
  set_u64(L, op, "from", from);
  set_value(L, op, "data", di);
  return rw_lua_wait(L);
}

static int strings_resume(lua_State *L) {
  if (resumed_by_ctx(L)) return fail_ctx(L);
  int wi = op_field(L, "w");
  rw_error *e = rw_writer_error(pump(L, wi)->w);
  if (e) return rw_lua_fail(L, e);
  return write_string(L, wi, op_u64(L, "off"), op_field(L, "data"), (size_t)op_u64(L, "from"),
                      op_field(L, "ctx"));
}

static int writer_write_at(lua_State *L) {
  lwriter *lw = writer_at(L, 1);
  uint64_t off = method_offset(L, 2, 1, "WriteAt", "offset");
  if (lua_type(L, 3) != LUA_TSTRING)
    rw_lua_method_argerror(L, 2, "WriteAt", "string expected, got %s", luaL_typename(L, 3));
  int ci = ctx_or_default(L, lw, 4, 3, "WriteAt");
  pump(L, 1);
  return write_string(L, 1, off, 3, 1, ci);
}

/* ---- write_file(offset, path [, file_offset [, length [, ctx]]]) ---- */

#define FILESRC_MT "reliablewriter.FileSource"

static int filesrc_close(lua_State *L) {
  rw_filesrc **p = luaL_checkudata(L, 1, FILESRC_MT);
  rw_filesrc *s = *p;
  *p = NULL; /* mark closed first */
  rw_filesrc_close(s);
  return 0;
}

static void close_src(lua_State *L, int si) {
  rw_filesrc **p = luaL_checkudata(L, si, FILESRC_MT);
  rw_filesrc *s = *p;
  *p = NULL;
  rw_filesrc_close(s);
}

/* Opens path as a source (closed by __gc if not before): pushes it and
 * returns it, or returns NULL with *err (nothing pushed). Regular files on a
 * real file system only (see io/filesrc.h). */
static rw_filesrc *open_src(lua_State *L, const char *path, rw_error **err) {
  rw_filesrc **p = lua_newuserdata(L, sizeof *p);
  *p = NULL;
  if (luaL_newmetatable(L, FILESRC_MT)) {
    lua_pushcfunction(L, filesrc_close);
    lua_setfield(L, -2, "__gc");
  }
  lua_setmetatable(L, -2);
  if (!(*p = rw_filesrc_open(path, err))) lua_pop(L, 1);
  return *p;
}

static void release_buffer(void *ud) { rw_filesrc_buffer_release(ud); }

/* Reads up to 8 MiB of the file that fits in the cache now into a buffer and
 * hands it to the writer; the checksum is then computed over exactly the
 * bytes that are sent. A file that changed fails the writer too (no object
 * is ever made from a file read partly before a change). */
static rw_error *take_file(lwriter *lw, uint64_t off, rw_filesrc *src, uint64_t foff, uint64_t len,
                           size_t *taken) {
  uint64_t room = rw_writer_room(lw->w, off);
  uint64_t n = len < room ? len : room;
  if (n > FILE_PIECE) n = FILE_PIECE;
  *taken = 0;
  if (n == 0) return NULL;
  char *buf = rw_filesrc_buffer(src, (size_t)n);
  if (!buf) return rw_err(RW_E_NOMEM, "write_file: out of memory for %llu bytes", (unsigned long long)n);
  rw_error *e = rw_filesrc_read(src, foff, buf, (size_t)n);
  if (!e) e = rw_writer_write_some(lw->w, off, buf, (size_t)n, release_buffer, buf, taken);
  if (e) {
    rw_filesrc_buffer_release(buf);
    if (rw_error_is(e, RW_E_SOURCE_CHANGED)) rw_writer_fail(lw->w, rw_error_ref(e));
  }
  return e;
}

static int file_resume(lua_State *L);

/* Feeds [foff + done, foff + length) of the source at si to off + done...;
 * waits for room while some is left; closes the source when it ends. */
static int write_file_from(lua_State *L, int wi, uint64_t off, int si, uint64_t foff, uint64_t length,
                           uint64_t done, int ci) {
  lwriter *lw = writer_at(L, wi);
  rw_filesrc *src = *(rw_filesrc **)luaL_checkudata(L, si, FILESRC_MT);
  if (done < length) {
    size_t n;
    rw_error *e = take_file(lw, off + done, src, foff + done, length - done, &n);
    if (e) {
      close_src(L, si);
      return rw_lua_fail(L, e);
    }
    done += n;
  }
  if (done >= length) {
    close_src(L, si);
    lua_pushboolean(L, 1);
    return 1;
  }
  int op = wait_room(L, wi, off + done, ci, file_resume);
  set_value(L, op, "src", si);
  set_u64(L, op, "off", off);
  set_u64(L, op, "foff", foff);
  set_u64(L, op, "length", length);
  set_u64(L, op, "done", done);
  return rw_lua_wait(L);
}

static int file_resume(lua_State *L) {
  bool by_ctx = resumed_by_ctx(L);
  int wi = op_field(L, "w"), si = op_field(L, "src");
  if (by_ctx) {
    close_src(L, si);
    return fail_ctx(L);
  }
  rw_error *e = rw_writer_error(pump(L, wi)->w);
  if (e) {
    close_src(L, si);
    return rw_lua_fail(L, e);
  }
  return write_file_from(L, wi, op_u64(L, "off"), si, op_u64(L, "foff"), op_u64(L, "length"),
                         op_u64(L, "done"), op_field(L, "ctx"));
}

/* A FIFO, device, socket, directory or /proc-like file is nil,
 * rw.invalid_argument (the writer is untouched); a file that changes while it
 * is read is nil, rw.source_changed, and the writer fails with that error. */
static int writer_write_file(lua_State *L) {
  lwriter *lw = writer_at(L, 1);
  uint64_t off = method_offset(L, 2, 1, "write_file", "offset");
  if (lua_type(L, 3) != LUA_TSTRING) rw_lua_method_argerror(L, 2, "write_file", "path must be a string");
  uint64_t foff = lua_isnoneornil(L, 4) ? 0 : method_offset(L, 4, 3, "write_file", "file_offset");
  bool has_length = !lua_isnoneornil(L, 5);
  uint64_t length = has_length ? method_offset(L, 5, 4, "write_file", "length") : 0;
  int ci = ctx_or_default(L, lw, 6, 5, "write_file");
  const char *path = lua_tostring(L, 3);
  rw_error *e = NULL;
  rw_filesrc *src = open_src(L, path, &e);
  if (!src) return rw_lua_fail(L, e);
  int si = lua_gettop(L);
  uint64_t size = rw_filesrc_size(src);
  if (foff > size) {
    close_src(L, si);
    return rw_lua_method_argerror(L, 3, "write_file", "file_offset %llu is past the end of '%s' (%llu bytes)",
                                  (unsigned long long)foff, path, (unsigned long long)size);
  }
  if (!has_length) length = size - foff;
  if (length > size - foff) {
    close_src(L, si);
    return rw_lua_method_argerror(L, 4, "write_file", "length %llu from %llu is past the end of '%s' (%llu bytes)",
                                  (unsigned long long)length, (unsigned long long)foff, path,
                                  (unsigned long long)size);
  }
  pump(L, 1);
  return write_file_from(L, 1, off, si, foff, length, 0, ci);
}

/* ---- Complete([ctx [, total]]) and wait([timeout]) ---- */

static void set_str(lua_State *L, const char *k, const char *v) {
  if (!v) return;
  lua_pushstring(L, v);
  lua_setfield(L, -2, k);
}

/* The object table, or nil, err. */
static int push_result(lua_State *L, lwriter *lw) {
  rw_error *e = rw_writer_error(lw->w);
  if (e) return rw_lua_fail(L, e);
  const rw_sink_object *o = rw_writer_object(lw->w);
  if (!o) {
    rw_writer_stats st = rw_writer_get_stats(lw->w);
    return rw_lua_fail(L, rw_err(RW_E_CLOSED, "the writer is %s; no object", rw_writer_state_name(st.state)));
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

/* Done when the upload finished or failed. */
static int finish_ready(lua_State *L) {
  lwriter *lw = pump(L, op_field(L, "w"));
  rw_error *e = rw_writer_error(lw->w);
  lua_pushboolean(L, e || rw_writer_finished(lw->w));
  rw_error_unref(e);
  return 1;
}

static int finish_block(lua_State *L) {
  lwriter *lw = writer_at(L, op_field(L, "w"));
  int ci = op_field(L, "ctx");
  rw_ctx *ctx = lua_isnil(L, ci) ? NULL : rw_lua_checkctx(L, ci);
  rw_writer_wait(lw->w, ctx, false, 0, lua_isnoneornil(L, 2) ? -1 : lua_tonumber(L, 2));
  return 0;
}

/* The caller's context ended, not the upload: it goes on, and Complete may be
 * called again (or Abort). */
static int complete_resume(lua_State *L) {
  lwriter *lw = pump(L, op_field(L, "w"));
  if (resumed_by_ctx(L) && !rw_writer_finished(lw->w)) return fail_ctx(L);
  return push_result(L, lw);
}

static int writer_complete(lua_State *L) {
  lwriter *lw = writer_at(L, 1);
  int ci = ctx_or_default(L, lw, 2, 1, "Complete");
  uint64_t total = lua_isnoneornil(L, 3) ? UINT64_MAX : method_offset(L, 3, 2, "Complete", "total");
  lw = pump(L, 1);
  rw_error *e = rw_writer_complete_start(lw->w, total);
  if (e) return rw_lua_fail(L, e);
  new_writer_op(L, 1, ci, finish_ready, finish_block, complete_resume);
  return rw_lua_wait(L);
}

static int wait_resume(lua_State *L) {
  pump(L, op_field(L, "w"));
  lua_pushboolean(L, strcmp(luaL_checkstring(L, 2), "ready") == 0);
  return 1;
}

/* wait([timeout]): blocks (or yields) until the pending Complete finishes;
 * true then, false after timeout. */
static int writer_wait(lua_State *L) {
  writer_at(L, 1);
  double t = -1;
  if (!lua_isnoneornil(L, 2)) {
    t = lua_type(L, 2) == LUA_TNUMBER ? lua_tonumber(L, 2) : NAN;
    if (!(t >= 0)) rw_lua_method_argerror(L, 1, "wait", "timeout must be a number >= 0");
  }
  int op = new_writer_op(L, 1, 0, finish_ready, finish_block, wait_resume);
  if (t >= 0) {
    lua_pushnumber(L, t);
    lua_setfield(L, op, "seconds");
  }
  return rw_lua_wait(L);
}

/* poll(): never blocks. true when nothing is pending (or done), false while
 * completing, nil, err once failed. */
static int writer_poll(lua_State *L) {
  writer_at(L, 1);
  lwriter *lw = pump(L, 1);
  rw_error *e = rw_writer_error(lw->w);
  if (e) return rw_lua_fail(L, e);
  rw_writer_stats st = rw_writer_get_stats(lw->w);
  lua_pushboolean(L, strcmp(rw_writer_state_name(st.state), "completing") != 0 || rw_writer_finished(lw->w));
  return 1;
}

static int writer_timeout(lua_State *L) {
  lua_pushnil(L);
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

static void push_error_count(void *ud, const char *code, uint64_t n) {
  lua_State *L = ud;
  lua_pushinteger(L, (lua_Integer)n);
  lua_setfield(L, -2, code);
}

static int writer_stats(lua_State *L) {
  push_stats(L, check_lw(L));
  return 1;
}

static void push_stats(lua_State *L, lwriter *lw) {
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

/* ---- Abort([ctx]): cancels, deletes the session (best effort, abort_timeout),
 * joins the work; idempotent. The deletion runs on the pool while this thread
 * waits as the policy says (a blocking wait finishes the abort here). ---- */

static bool stopped(lwriter *lw) { return !lw->w || rw_writer_stopped(lw->w); }

static int abort_ready(lua_State *L) {
  lua_pushboolean(L, stopped(luaL_checkudata(L, op_field(L, "w"), WRITER_MT)));
  return 1;
}

static int abort_block(lua_State *L) {
  lwriter *lw = luaL_checkudata(L, op_field(L, "w"), WRITER_MT);
  if (!lw->w) return 0;
  lw->L = L;
  rw_writer_abort(lw->w);
  return 0;
}

static int abort_resume(lua_State *L) {
  int wi = op_field(L, "w");
  lwriter *lw = luaL_checkudata(L, wi, WRITER_MT);
  if (lw->w) pump(L, wi);
  lua_pushboolean(L, 1);
  return 1;
}

static int writer_abort(lua_State *L) {
  lwriter *lw = luaL_checkudata(L, 1, WRITER_MT);
  rw_lua_method_ctx(L, 2, 1, "Abort", true);
  if (!lw->w) {
    lua_pushboolean(L, 1);
    return 1;
  }
  lw->L = L;
  rw_writer_abort_start(lw->w);
  new_writer_op(L, 1, 0, abort_ready, abort_block, abort_resume);
  return rw_lua_wait(L);
}

static int writer_stopped(lua_State *L) {
  lua_pushboolean(L, stopped(luaL_checkudata(L, 1, WRITER_MT)));
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
      {"poll", writer_poll},        {"timeout", writer_timeout}, {"pollfd", writer_pollfd},
      {"events", writer_events},    {"stats", writer_stats},     {"session", writer_session},
      {"Suspend", writer_suspend},  {"close", writer_gc},        {"_is_closed", writer_is_closed},
      {"_stopped", writer_stopped}, {NULL, NULL}};
  static const luaL_Reg waiting[] = {{"WriteAt", writer_write_at}, {"write_file", writer_write_file},
                                     {"Complete", writer_complete}, {"Abort", writer_abort},
                                     {"wait", writer_wait},         {NULL, NULL}};
  luaL_newmetatable(L, WRITER_MT);
  lua_pushcfunction(L, writer_gc);
  lua_setfield(L, -2, "__gc");
  lua_pushcfunction(L, writer_gc); /* `local w <close>`: the same as close() */
  lua_setfield(L, -2, "__close");
  luaL_newlib(L, methods);
  rw_lua_set_waiting_methods(L, waiting);
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
