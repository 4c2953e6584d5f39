#!/usr/bin/env bash
# Both rockspecs (reliablewriter, and reliablewriter-testbed which depends on
# it) build offline with `luarocks make` in both flavours, what they install
# loads, and the rockspecs name no absolute path.
set -euo pipefail
cd "$(dirname "$0")/.."
t=$(mktemp -d)
trap 'rm -rf "$t"' EXIT
if grep -n '/work/\|file:///\|"/[a-z]' ./*.rockspec; then
  echo "rockspec: an absolute path above"; exit 1
fi
make_rock() { # tree lua-version rockspec [VAR=value...]
  local tree=$1 ver=$2 spec=$3; shift 3
  luarocks --lua-version "$ver" --tree "$t/$tree" make "$spec" "$@" >"$t/$tree-$spec.log" 2>&1 ||
    { cat "$t/$tree-$spec.log"; exit 1; }
  if grep -i 'warning' "$t/$tree-$spec.log"; then echo "rockspec: luarocks warned building $spec ($ver)"; exit 1; fi
}
check='local rw = require "reliablewriter"; assert(rw.new and rw.context.background())
  for k in pairs(package.loaded) do assert(not k:find("testbed", 1, true), k) end
  local tb = require "reliablewriter.testbed"
  local srv = tb.fakegcs.start { store = "memory", buckets = { "b" } }
  local sink = tb.faulty(rw.gcs { bucket = "b", object = "o", endpoint = srv:url(),
    faults = tb.faults.profile { seed = 1 } }, { p_error = 0 })
  local w = assert(rw.new(rw.context.background(), { sink = sink }))
  assert(w:WriteAt(0, "hello")); assert(w:Complete())
  assert(srv:object("b", "o") == "hello"); w:close(); srv:stop()'
for spec in reliablewriter-scm-1.rockspec reliablewriter-testbed-scm-1.rockspec; do
  make_rock 54 5.4 "$spec"
  make_rock 51 5.1 "$spec" LUA_INCDIR=/usr/include/luajit-2.1
done
# luarocks pack the installed rocks, luarocks install the .rock files into a
# fresh tree, and load from there.
repack() { # tree lua-version
  local tree=$1 ver=$2 rock
  for rock in reliablewriter reliablewriter-testbed; do
    rm -f "$t"/*.rock
    (cd "$t" && luarocks --lua-version "$ver" --tree "$t/$tree" pack "$rock") >>"$t/pack.log" 2>&1 &&
      luarocks --lua-version "$ver" --tree "$t/$tree-packed" install "$t/$rock"-scm-1.*.rock >>"$t/pack.log" 2>&1 ||
      { cat "$t/pack.log"; exit 1; }
  done
}
repack 54 5.4
repack 51 5.1
for tree in 54 54-packed; do
  LUA_PATH="$t/$tree/share/lua/5.4/?.lua;$t/$tree/share/lua/5.4/?/init.lua" LUA_CPATH="$t/$tree/lib/lua/5.4/?.so" \
    lua5.4 -e "$check"
done
for tree in 51 51-packed; do
  LUA_PATH="$t/$tree/share/lua/5.1/?.lua;$t/$tree/share/lua/5.1/?/init.lua" LUA_CPATH="$t/$tree/lib/lua/5.1/?.so" \
    luajit -e "$check"
done
echo "rockspecs: reliablewriter and reliablewriter-testbed built (luarocks make), packed and installed"
echo "  (luarocks pack/install), and loaded, Lua 5.4 and LuaJIT trees"
