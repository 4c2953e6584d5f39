rockspec_format = "3.0"
package = "reliablewriter-testbed"
version = "scm-1"
-- Built from a checkout: `luarocks make` in the clone (source.url is the
-- clone itself, relative, for `luarocks pack <rockspec>` run there).
source = { url = "git+file://." }
description = {
  summary = "The test bed of reliablewriter: a fake GCS, fault injection, probes",
  detailed = [[
require "reliablewriter.testbed": an in-process fake GCS server (libmicrohttpd),
connection-level fault profiles and a chaos proxy, a fault-injecting sink
wrapper, and thread/fd/RSS probes, for tests of code that uploads with
reliablewriter. Production code needs only the rock reliablewriter.]],
  license = "MIT",
}
dependencies = { "lua >= 5.1", "reliablewriter" }
external_dependencies = {
  -- libraries, not headers: Debian keeps some headers in multiarch folders
  MICROHTTPD = { library = "microhttpd" },
  JANSSON = { library = "jansson" },
  ISAL = { library = "isal" },
  CRYPTO = { library = "crypto" },
}
build = {
  type = "make",
  build_target = "testbed",
  build_variables = {
    LUA_INCDIR = "$(LUA_INCDIR)",
    CFLAGS = "$(CFLAGS)",
  },
  install_target = "install-testbed",
  install_variables = {
    INST_LIBDIR = "$(LIBDIR)",
    INST_LUADIR = "$(LUADIR)",
    LUA_INCDIR = "$(LUA_INCDIR)",
  },
}
