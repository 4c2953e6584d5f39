rockspec_format = "3.0"
package = "reliablewriter"
version = "scm-1"
source = { url = "git+file:///work/main" }
description = {
  summary = "Reliable uploads of large streams to Google Cloud Storage, from Lua",
  detailed = [[
A C core (contexts, backoff, workgroup, rate limiter, scatter-gather cache,
ReliableWriter over GCS resumable uploads) exposed to Lua 5.4 and LuaJIT.]],
  license = "MIT",
}
dependencies = { "lua >= 5.1" }
external_dependencies = {
  -- libraries, not headers: Debian keeps some headers in multiarch folders
  CURL = { library = "curl" },
  MICROHTTPD = { library = "microhttpd" },
  JANSSON = { library = "jansson" },
  ISAL = { library = "isal" },
  CRYPTO = { library = "crypto" },
}
build = {
  type = "make",
  build_target = "module",
  build_variables = {
    LUA_INCDIR = "$(LUA_INCDIR)",
  },
  install_target = "install",
  install_variables = {
    INST_LIBDIR = "$(LIBDIR)",
    INST_LUADIR = "$(LUADIR)",
    LUA_INCDIR = "$(LUA_INCDIR)",
  },
}
