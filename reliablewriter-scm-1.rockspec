rockspec_format = "3.0"
package = "reliablewriter"
version = "scm-1"
-- Built from a checkout: `luarocks make` in the clone (source.url is the
-- clone itself, relative, for `luarocks pack <rockspec>` run there).
source = { url = "git+file://." }
description = {
  summary = "Reliable uploads of large streams to Google Cloud Storage, from Lua",
  detailed = [[
A C core (contexts, backoff, workgroup, rate limiter, scatter-gather cache,
ReliableWriter over GCS resumable uploads) exposed to Lua 5.4 and LuaJIT.
The test bed (fake GCS, fault injection) is the rock reliablewriter-testbed.]],
  license = "MIT",
}
dependencies = { "lua >= 5.1" }
external_dependencies = {
  -- libraries, not headers: Debian keeps some headers in multiarch folders
  CURL = { library = "curl" },
  JANSSON = { library = "jansson" },
  ISAL = { library = "isal" },
  CRYPTO = { library = "crypto" },
}
build = {
  type = "make",
  build_target = "module",
  build_variables = {
    LUA_INCDIR = "$(LUA_INCDIR)",
    CFLAGS = "$(CFLAGS)",
  },
  install_target = "install",
  -- rwup (a Lua 5.4 program; luarocks wraps it with the tree's paths). It
  -- needs lua-cjson at run time (Debian: lua-cjson), not listed as a
  -- dependency so that the rock still builds offline.
  install = { bin = { rwup = "bin/rwup" } },
  install_variables = {
    INST_LIBDIR = "$(LIBDIR)",
    INST_LUADIR = "$(LUADIR)",
    LUA_INCDIR = "$(LUA_INCDIR)",
  },
}
