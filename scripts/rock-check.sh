#!/usr/bin/env bash
# The rockspec builds both flavours offline with luarocks, and what it installs loads.
set -euo pipefail
cd "$(dirname "$0")/.."
t=$(mktemp -d)
trap 'rm -rf "$t"' EXIT
luarocks --lua-version 5.4 --tree "$t/54" make reliablewriter-scm-1.rockspec >"$t/54.log" 2>&1 ||
  { cat "$t/54.log"; exit 1; }
luarocks --lua-version 5.1 --tree "$t/51" make reliablewriter-scm-1.rockspec \
  LUA_INCDIR=/usr/include/luajit-2.1 >"$t/51.log" 2>&1 || { cat "$t/51.log"; exit 1; }
LUA_PATH="$t/54/share/lua/5.4/?.lua;$t/54/share/lua/5.4/?/init.lua" LUA_CPATH="$t/54/lib/lua/5.4/?.so" \
  lua5.4 -e 'local rw = require "reliablewriter"; assert(rw.new and rw.context.background())'
LUA_PATH="$t/51/share/lua/5.1/?.lua;$t/51/share/lua/5.1/?/init.lua" LUA_CPATH="$t/51/lib/lua/5.1/?.so" \
  luajit -e 'local rw = require "reliablewriter"; assert(rw.new and rw.context.background())'
echo "rockspec: Lua 5.4 and LuaJIT trees built and loaded"
