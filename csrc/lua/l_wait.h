/* Methods that may wait (DESIGN.md "Waiting: one C protocol, several Lua
 * policies"), defined once, in their type's binding file.
 *
 * A waiting method is a C step: step(self, args...) returns the method's
 * results when it need not wait, or `return rw_lua_wait(L)` with an op table
 * on top of the stack. The method table holds a small Lua function (made by
 * rw_lua_set_waiting_methods) that calls the step through the waiting policy
 * that lua/reliablewriter/waiting.lua registered once (core.wait_protocol.run):
 * the policy waits on the op as the running code must (block in C, yield to a
 * workgroup's scheduler, ngx.sleep) and then calls op.resume(op, why), itself
 * a step. The wait is in Lua, so a coroutine can yield through it (LuaJIT
 * cannot yield across a C call).
 *
 * An op is a table; its functions take the op as their first argument:
 *   ready(op) -> bool         never blocks (may drain, report progress)
 *   timeout(op) -> s | nil    optional: look again after s seconds
 *   block(op, t|nil)          a blocking wait of at most t (may return early)
 *   resume(op, why)           why = "ready" | "done" (op.ctx ended) | "timeout"
 *   fds = {fd...}             pollable descriptors (a workgroup watches them)
 *   ctx, seconds              the context that ends the wait, a time limit
 * plus whatever state its step keeps in it. */
#ifndef RW_L_WAIT_H
#define RW_L_WAIT_H
#include <stdarg.h>

#include "lrw.h"

/* Sets methods[name] = a waiting method calling step, for each entry of l
 * (the methods table on top of the stack). */
void rw_lua_set_waiting_methods(lua_State *L, const luaL_Reg *l);

/* Pushes a new op table with ready, block, resume and an empty fds list;
 * returns its (absolute) index. */
int rw_lua_new_op(lua_State *L, lua_CFunction ready, lua_CFunction block, lua_CFunction resume);
/* Pushes an op that waits `seconds` (woken early when the context at ctx_idx
 * ends; ctx_idx 0: none) and resumes with resume(op, why); the caller may add
 * its own fields. Returns its index. */
int rw_lua_new_sleep_op(lua_State *L, int ctx_idx, double seconds, lua_CFunction resume);
/* The step's answer "wait on the op on top of the stack": return rw_lua_wait(L). */
int rw_lua_wait(lua_State *L);

/* "bad argument #pos to 'fname' (...)": pos counts the method's arguments
 * after self, as Lua's messages for methods do. */
int rw_lua_method_argerror(lua_State *L, int pos, const char *fname, const char *fmt, ...);
/* The context at idx (argument pos of method fname), or NULL when it is nil
 * and optional. Raises otherwise. */
rw_ctx *rw_lua_method_ctx(lua_State *L, int idx, int pos, const char *fname, bool optional);

/* core.wait_protocol: { WAIT = <the step's wait marker>, run = <set by waiting.lua> }. */
int rw_lua_open_wait(lua_State *L);

#endif
