/* core.reader: the ReliableReader's userdata and its read ops. Only
 * translation: the work is csrc/io/reader.c; the loops that wait live in
 * lua/reliablewriter/reader.lua (block, workgroup yield, ngx.sleep). */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "core/checksum.h"
#include "io/reader.h"
#include "lrw.h"

#define READER_MT "reliablewriter.Reader"
#define OP_MT "reliablewriter.ReadOp"

typedef struct lreader {
  rw_reader *r;
} lreader;

typedef struct lop {
  rw_read_op *op;
  unsigned char *buf; /* ours; written by the op until it is done */
  rw_read_file *file; /* read_to_file */
  uint64_t off, len;
} lop;

static lreader *check_reader(lua_State *L) {
  lreader *lr = luaL_checkudata(L, 1, READER_MT);
  if (!lr->r) rw_lua_closed_error(L, "reader");
  return lr;
}

static lop *check_op(lua_State *L) { return luaL_checkudata(L, 1, OP_MT); }

/* ---- construction ---- */

static void retry_option(lua_State *L, int t, rw_backoff_config *b) {
  lua_getfield(L, t, "retry");
  if (lua_isnil(L, -1)) {
    lua_pop(L, 1);
    return;
  }
  int rt = lua_gettop(L);
  static const char *const known[] = {"min_wait", "max_wait", "total_wait", "multiplier", NULL};
  rw_lua_check_options(L, rt, 2, known);
  b->min_wait = rw_lua_opt_number(L, rt, 2, "min_wait", b->min_wait, 1e-6, 86400);
  b->max_wait = rw_lua_opt_number(L, rt, 2, "max_wait", fmax(b->max_wait, b->min_wait), b->min_wait, 86400);
  b->total_wait = rw_lua_opt_number(L, rt, 2, "total_wait", b->total_wait, 0, 86400 * 30);
  b->multiplier = rw_lua_opt_number(L, rt, 2, "multiplier", b->multiplier, 1, 100);
  lua_pop(L, 1);
}

static int reader_new(lua_State *L) {
  rw_ctx *ctx = rw_lua_checkctx(L, 1);
  luaL_checktype(L, 2, LUA_TTABLE);
  static const char *const known[] = {"source", "hedge_after", "max_hedges", "hedge_budget",
                                      "hedge_floor", "hedge_window", "stall_timeout", "retry", NULL};
  rw_lua_check_options(L, 2, 2, known);
  rw_reader_config c = rw_reader_defaults();
  c.hedge_after = rw_lua_opt_number(L, 2, 2, "hedge_after", 0, 0, 3600);
  c.max_hedges = (int)rw_lua_opt_integer(L, 2, 2, "max_hedges", 2, 0, 64);
  c.hedge_budget = rw_lua_opt_number(L, 2, 2, "hedge_budget", 0.1, 0, 1);
  c.hedge_floor = rw_lua_opt_number(L, 2, 2, "hedge_floor", 0.05, 0.001, 3600);
  c.hedge_window = rw_lua_opt_number(L, 2, 2, "hedge_window", 10, 0.1, 86400);
  c.stall_timeout = rw_lua_opt_number(L, 2, 2, "stall_timeout", 30, 0.001, 86400);
  retry_option(L, 2, &c.retry);
  lua_getfield(L, 2, "source");
  int src = lua_gettop(L);
  rw_http_dialer dialer;
  if (!rw_lua_gcs_reader_config(L, src, &c, &dialer))
    return luaL_argerror(L, 2, "option 'source' must be an rw.gcs{ bucket =, object = } descriptor");
  lreader *lr = lua_newuserdata(L, sizeof *lr);
  lr->r = NULL;
  luaL_setmetatable(L, READER_MT);
  rw_error *e = NULL;
  lr->r = rw_reader_new(ctx, &c, &e);
  if (!lr->r) return rw_lua_fail(L, e);
  return 1;
}

/* ---- ops ---- */

static lop *push_op(lua_State *L, uint64_t off, uint64_t len) {
  lop *o = lua_newuserdata(L, sizeof *o);
  memset(o, 0, sizeof *o);
  o->off = off;
  o->len = len;
  luaL_setmetatable(L, OP_MT);
  return o;
}

static uint64_t check_u64(lua_State *L, int arg, const char *what) {
  return (uint64_t)rw_lua_check_number_range(L, arg, what, 0, 9007199254740992.0);
}

/* _start(off, len): an op reading into a buffer of its own. */
static int reader_start(lua_State *L) {
  lreader *lr = check_reader(L);
  uint64_t off = check_u64(L, 2, "offset"), len = check_u64(L, 3, "length");
  if (len > ((uint64_t)1 << 40)) return luaL_argerror(L, 3, "length is above 1 TiB: use read_to_file");
  lop *o = push_op(L, off, len);
  if (!(o->buf = malloc(len ? len : 1))) return rw_lua_fail(L, rw_err(RW_E_NOMEM, "ReadAt: no memory for %llu bytes", (unsigned long long)len));
  rw_error *e = NULL;
  if (!(o->op = rw_reader_start(lr->r, off, len, o->buf, -1, 0, &e))) return rw_lua_fail(L, e);
  return 1;
}

/* _start_file(path, off, len): an op reading into a temporary file beside path. */
static int reader_start_file(lua_State *L) {
  lreader *lr = check_reader(L);
  const char *path = luaL_checkstring(L, 2);
  uint64_t off = check_u64(L, 3, "offset"), len = check_u64(L, 4, "length");
  lop *o = push_op(L, off, len);
  rw_error *e = NULL;
  if (!(o->file = rw_read_file_open(path, &e))) return rw_lua_fail(L, e);
  if (!(o->op = rw_reader_start(lr->r, off, len, NULL, rw_read_file_fd(o->file), 0, &e))) return rw_lua_fail(L, e);
  return 1;
}

static int op_done(lua_State *L) {
  lop *o = check_op(L);
  lua_pushboolean(L, !o->op || rw_read_op_done(o->op));
  return 1;
}

static int op_pollfd(lua_State *L) {
  lop *o = check_op(L);
  lua_pushinteger(L, o->op ? rw_read_op_pollfd(o->op) : -1);
  return 1;
}

/* _wait_blocking(timeout|nil, ctx|nil) */
static int op_wait_blocking(lua_State *L) {
  lop *o = check_op(L);
  double t = lua_isnoneornil(L, 2) ? -1 : rw_lua_check_number_range(L, 2, "timeout", 0, 86400);
  rw_ctx *ctx = rw_lua_optctx(L, 3);
  if (o->op) rw_read_op_wait(o->op, ctx, t);
  return 0;
}

static int op_cancel(lua_State *L) {
  lop *o = check_op(L);
  rw_error *cause = lua_isnoneornil(L, 2) ? NULL : rw_lua_to_error(L, 2, RW_E_CANCELED);
  if (o->op) rw_read_op_cancel(o->op, cause);
  else rw_error_unref(cause);
  return 0;
}

/* _result([check_full_reader]): the bytes (or true for a file), or nil, err. */
static int op_result(lua_State *L) {
  lop *o = check_op(L);
  if (!o->op || !rw_read_op_done(o->op)) return luaL_error(L, "the read is not done");
  rw_error *e = rw_read_op_error(o->op);
  lreader *lr = luaL_testudata(L, 2, READER_MT);
  if (!e && lr && lr->r) e = rw_reader_check_full(lr->r, o->off, o->len, rw_read_op_crc32c(o->op));
  if (o->file) {
    rw_read_file *f = o->file;
    o->file = NULL;
    if (e) rw_read_file_abort(f);
    else e = rw_read_file_commit(f);
    if (e) return rw_lua_fail(L, e);
    lua_pushboolean(L, 1);
    return 1;
  }
  if (e) return rw_lua_fail(L, e);
  lua_pushlstring(L, (const char *)o->buf, (size_t)o->len);
  return 1;
}

static int op_gc(lua_State *L) {
  lop *o = check_op(L);
  if (o->op) {
    rw_read_op_cancel(o->op, NULL); /* done: no more writes to buf or the file */
    rw_read_op_unref(o->op);
  }
  rw_read_file_abort(o->file);
  free(o->buf);
  memset(o, 0, sizeof *o);
  return 0;
}

/* ---- reader methods ---- */

static int reader_meta(lua_State *L) {
  lreader *lr = check_reader(L);
  rw_gcs_meta m;
  rw_error *e = rw_reader_stat(lr->r, NULL, &m); /* pinned already: no request */
  if (e) return rw_lua_fail(L, e);
  lua_createtable(L, 0, 8);
  lua_pushinteger(L, (lua_Integer)m.size);
  lua_setfield(L, -2, "size");
  char gen[24];
  snprintf(gen, sizeof gen, "%lld", (long long)m.generation);
  lua_pushstring(L, gen);
  lua_setfield(L, -2, "generation");
  lua_pushinteger(L, (lua_Integer)m.metageneration);
  lua_setfield(L, -2, "metageneration");
  if (m.has_crc32c) {
    lua_pushstring(L, m.crc32c_b64);
    lua_setfield(L, -2, "crc32c");
  }
  if (m.has_md5) {
    lua_pushstring(L, m.md5_b64);
    lua_setfield(L, -2, "md5Hash");
  }
  lua_pushstring(L, m.content_type);
  lua_setfield(L, -2, "contentType");
  if (m.json) {
    lua_pushstring(L, m.json);
    lua_setfield(L, -2, "json");
  }
  rw_gcs_meta_clear(&m);
  return 1;
}

static int reader_stats(lua_State *L) {
  lreader *lr = check_reader(L);
  rw_reader_stats st;
  rw_reader_get_stats(lr->r, &st);
  lua_createtable(L, 0, 6);
  lua_pushinteger(L, (lua_Integer)st.requests);
  lua_setfield(L, -2, "requests");
  lua_pushinteger(L, (lua_Integer)st.retries);
  lua_setfield(L, -2, "retries");
  lua_pushinteger(L, (lua_Integer)st.hedges_issued);
  lua_setfield(L, -2, "hedges_issued");
  lua_pushinteger(L, (lua_Integer)st.hedges_won);
  lua_setfield(L, -2, "hedges_won");
  lua_pushinteger(L, (lua_Integer)st.bytes);
  lua_setfield(L, -2, "bytes");
  lua_pushnumber(L, st.hedge_after);
  lua_setfield(L, -2, "hedge_after");
  return 1;
}

static int reader_is_closed(lua_State *L) {
  lreader *lr = luaL_checkudata(L, 1, READER_MT);
  lua_pushboolean(L, lr->r == NULL);
  return 1;
}

/* __gc, __close and close: cancels what runs and returns (never waits). */
static int reader_gc(lua_State *L) {
  lreader *lr = luaL_checkudata(L, 1, READER_MT);
  rw_reader *r = lr->r;
  lr->r = NULL;
  rw_reader_free(r);
  return 0;
}

/* _crc32c(s [, crc]) */
static int reader_crc32c(lua_State *L) {
  size_t n;
  const char *s = luaL_checklstring(L, 1, &n);
  uint32_t crc = (uint32_t)luaL_optinteger(L, 2, 0);
  lua_pushinteger(L, (lua_Integer)rw_crc32c(crc, s, n));
  return 1;
}

static int crc_b64(lua_State *L) {
  char out[9];
  rw_crc32c_base64((uint32_t)luaL_checkinteger(L, 1), out);
  lua_pushstring(L, out);
  return 1;
}

int rw_lua_open_reader(lua_State *L) {
  static const luaL_Reg op_methods[] = {{"_done", op_done},         {"pollfd", op_pollfd},
                                        {"_wait_blocking", op_wait_blocking},
                                        {"cancel", op_cancel},      {"_result", op_result},
                                        {NULL, NULL}};
  if (luaL_newmetatable(L, OP_MT)) {
    lua_pushcfunction(L, op_gc);
    lua_setfield(L, -2, "__gc");
    luaL_newlib(L, op_methods);
    lua_setfield(L, -2, "__index");
  }
  lua_pop(L, 1);
  static const luaL_Reg methods[] = {{"_start", reader_start},   {"_start_file", reader_start_file},
                                     {"_meta", reader_meta},
                                     {"stats", reader_stats},    {"close", reader_gc},
                                     {"_is_closed", reader_is_closed}, {NULL, NULL}};
  luaL_newmetatable(L, READER_MT);
  lua_pushcfunction(L, reader_gc);
  lua_setfield(L, -2, "__gc");
  lua_pushcfunction(L, reader_gc);
  lua_setfield(L, -2, "__close");
  lua_pushliteral(L, "reliablewriter.Reader");
  lua_setfield(L, -2, "__name");
  luaL_newlib(L, methods);
  lua_pushvalue(L, -1);
  lua_setfield(L, -3, "__index");
  lua_createtable(L, 0, 4);
  lua_pushcfunction(L, reader_new);
  lua_setfield(L, -2, "new");
  lua_pushcfunction(L, reader_crc32c);
  lua_setfield(L, -2, "crc32c");
  lua_pushcfunction(L, crc_b64);
  lua_setfield(L, -2, "crc32c_base64");
  lua_insert(L, -2);
  lua_setfield(L, -2, "methods");
  lua_remove(L, -2); /* the metatable */
  return 1;
}
