/* Helpers shared by the binding files: errors as Lua objects, option tables
 * checked strictly, userdata that hold a pointer to a refcounted C object. */
#ifndef RW_LRW_H
#define RW_LRW_H
#include <stdbool.h>
#include <stdint.h>

#include "compat.h"
#include "core/context.h"
#include "core/error.h"

/* Pushes e as a Lua error object (table with code, message, retryable, cause,
 * status, where, id; methods is(), __tostring). Consumes the reference. */
void rw_lua_push_error(lua_State *L, rw_error *e);
/* Pushes nil, err and returns 2. Consumes e. */
int rw_lua_fail(lua_State *L, rw_error *e);
/* Raises a programmer error carrying an error object for e (consumed). */
int rw_lua_raise(lua_State *L, rw_error *e);

/* Converts the Lua value at idx to a new error reference: an error object is
 * shared; anything else becomes a `code` error with its text. */
rw_error *rw_lua_to_error(lua_State *L, int idx, const char *code);

/* Option tables. idx must be a table (or nil when allow_nil). Raises
 * "bad argument #arg to 'fn' (unknown option 'x'; known: a, b, c)". */
void rw_lua_check_options(lua_State *L, int idx, int arg, const char *const known[]);
/* Reads t[name] as a finite number in [min, max]; def when absent.
 * Raises naming the option and the rule when wrong. */
double rw_lua_opt_number(lua_State *L, int idx, int arg, const char *name, double def,
                         double min, double max);
/* Same for integers (sizes, counts); must be whole numbers. */
int64_t rw_lua_opt_integer(lua_State *L, int idx, int arg, const char *name, int64_t def,
                           int64_t min, int64_t max);
/* String option that must be one of choices (NULL-terminated). Returns the index. */
int rw_lua_opt_choice(lua_State *L, int idx, int arg, const char *name, int def,
                      const char *const choices[]);
/* String option: a copy of t[name] (malloc'd, the caller frees), NULL when
 * absent. Raises "option 'x' is required" when required and absent, and
 * "option 'x' must be a non-empty string (got T)" when not one. *len (when
 * len is not NULL) gets its length: the copy may hold zero bytes. */
char *rw_lua_opt_string(lua_State *L, int idx, int arg, const char *name, bool required,
                        size_t *len);
/* True when t[name] is given (not nil): for options whose absence means
 * "not set" rather than a default. */
bool rw_lua_opt_given(lua_State *L, int idx, const char *name);
/* JSON object option: t[name], a table with string keys whose values are
 * strings, booleans, finite numbers, lists (keys exactly 1..n) or such
 * tables again (16 deep at most), as compact JSON text (malloc'd, the caller
 * frees); NULL when absent. Raises naming the option and the rule. */
char *rw_lua_opt_json_object(lua_State *L, int idx, int arg, const char *name);
/* A malloc'd copy of s (len bytes, then a 0), or NULL when s is NULL;
 * raises "out of memory". */
char *rw_lua_strndup(lua_State *L, const char *s, size_t len);
/* The same for a 0-terminated s. */
char *rw_lua_strdup(lua_State *L, const char *s);
/* Checks a plain number argument: finite and within [min,max]. */
double rw_lua_check_number_range(lua_State *L, int arg, const char *what, double min, double max);

/* Contexts. */
rw_ctx *rw_lua_checkctx(lua_State *L, int idx);
/* Returns a context at idx, or NULL when absent/nil. */
rw_ctx *rw_lua_optctx(lua_State *L, int idx);
/* Pushes a new Lua context object that takes c's reference. */
void rw_lua_push_ctx(lua_State *L, rw_ctx *c);

/* A userdata's uservalue (Lua 5.4) or environment table (LuaJIT). */
#if LUA_VERSION_NUM < 502
#define rw_lua_setuservalue(L, idx) lua_setfenv(L, idx)
#define rw_lua_getuservalue(L, idx) lua_getfenv(L, idx)
#else
#define rw_lua_setuservalue(L, idx) lua_setuservalue(L, idx)
#define rw_lua_getuservalue(L, idx) lua_getuservalue(L, idx)
#endif

/* Registers the metatable `name` once: the metamethods mt, methods as its
 * __index, and (when seam_field is not NULL) the seam (see below) in field
 * seam_field. Leaves the stack as it was. */
void rw_lua_new_class(lua_State *L, const char *name, const luaL_Reg *mt, const luaL_Reg *methods,
                      const char *seam_field, const void *seam);

/* "attempt to use a closed <what>". */
int rw_lua_closed_error(lua_State *L, const char *what);

/* Module openers: each pushes one table. */
int rw_lua_open_errors(lua_State *L);
int rw_lua_open_context(lua_State *L);
int rw_lua_open_backoff(lua_State *L);
int rw_lua_open_workgroup(lua_State *L);
int rw_lua_open_ratelimit(lua_State *L);
int rw_lua_open_util(lua_State *L);
/* rw.util.trap_signals (l_sigtrap.c); open_sigtrap registers its metatable. */
int rw_lua_trap_signals(lua_State *L);
void rw_lua_open_sigtrap(lua_State *L);
int rw_lua_open_log(lua_State *L);
int rw_lua_open_writer(lua_State *L);
int rw_lua_open_sinks(lua_State *L);
int rw_lua_open_wakeup(lua_State *L);

/* ---- seams for the test bed ----
 * The test bed (require "reliablewriter.testbed", csrc/testbed/) is a
 * separate .so; the core includes none of its headers. It plugs in through
 * two metatable fields, each a lightuserdata to a static seam struct:
 *   __rw_sink    on every sink descriptor (rw.gcs{}, rw.file{}, testbed.faulty()):
 *                maker() makes a new live sink from the descriptor at idx;
 *   __rw_dialer  on a fault profile (testbed.faults.profile{}): fill() sets *d
 *                to a libcurl dialer and takes a reference on the profile that
 *                d->release(d->owner) drops (net/http.h: the HTTP client calls
 *                it when done). */
struct rw_sink;
struct rw_http_dialer;
typedef struct rw_lua_sink_seam {
  struct rw_sink *(*maker)(lua_State *L, int idx, rw_error **err);
} rw_lua_sink_seam;
typedef struct rw_lua_dialer_seam {
  void (*fill)(lua_State *L, int idx, struct rw_http_dialer *d);
} rw_lua_dialer_seam;

/* reliablewriter.core's `_log_line` (a lightuserdata to this): the test
 * bed's copy of rw_log forwards its lines to the core's log. */
typedef struct rw_lua_log_seam {
  void (*line)(int lvl, const char *line);
} rw_lua_log_seam;

/* The seam struct in the metatable field `field` of the value at idx, or NULL. */
const void *rw_lua_seam(lua_State *L, int idx, const char *field);
/* Sets field `field` of the table on top of the stack to the seam s. */
void rw_lua_set_seam(lua_State *L, const char *field, const void *s);
/* True when the value at idx is a sink descriptor (has __rw_sink). */
bool rw_lua_is_sink(lua_State *L, int idx);
/* Makes a new sink from the descriptor at idx (through its __rw_sink), or
 * returns NULL with *err. */
/* A sink descriptor's token_fn (issue 11), for the writer's pump: whether it
 * has one, and serving it (called on the Lua thread when its credential
 * wants a token; a failure goes to the credential, whose requests fail). */
bool rw_lua_sink_has_token_fn(lua_State *L, int idx);
void rw_lua_sink_serve_token(lua_State *L, int idx);
struct rw_sink *rw_lua_sink_make(lua_State *L, int idx, rw_error **err);

/* l_sinks.c: a reader's source from an rw.gcs{} descriptor (l_reader.c). */
struct rw_reader_config;
bool rw_lua_gcs_reader_config(lua_State *L, int idx, struct rw_reader_config *c,
                              struct rw_http_dialer *dialer);
int rw_lua_open_reader(lua_State *L);

/* The one symbol each .so exports (built with -fvisibility=hidden). */
#define RW_LUA_EXPORT __attribute__((visibility("default")))

#endif
