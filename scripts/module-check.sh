#!/usr/bin/env bash
# The two modules (issue 9), for build/lua5.4 and build/luajit:
#   - core.so and testbed.so export only luaopen_* (nm -D --defined-only);
#   - core.so does not need libmicrohttpd (readelf -d, ldd); testbed.so does;
#   - testbed.so leaves no rw_* symbol to be resolved elsewhere (its own copy);
#   - require "reliablewriter" loads no test bed (package.loaded, and neither
#     testbed.so nor libmicrohttpd is mapped); require "reliablewriter.testbed"
#     then loads and works with the core (a fault profile in rw.gcs{}).
set -uo pipefail
cd "$(dirname "$0")/.."
fails=0
build=${RW_BUILD:-build} # RW_BUILD: another tree to check (how this check was checked)
fail() { echo "module-check: $*"; fails=$((fails + 1)); }

probe='
local maps = function()
  local f = assert(io.open("/proc/self/maps")); local s = f:read("*a"); f:close(); return s
end
local rw = require "reliablewriter"
assert(rw.new and rw.gcs and rw.file, "require \"reliablewriter\" has no rw.new/rw.gcs/rw.file")
for name in pairs(package.loaded) do
  assert(not name:find("testbed", 1, true), "require \"reliablewriter\" loaded " .. name)
end
assert(rw.fakegcs == nil and rw.faults == nil and rw.faulty == nil, "the core still carries the test bed")
assert(rw.util.thread_count == nil, "rw.util still has the probes (testbed.probes)")
assert(not maps():find("testbed.so", 1, true), "testbed.so is mapped after require \"reliablewriter\"")
assert(not maps():find("libmicrohttpd", 1, true), "libmicrohttpd is mapped after require \"reliablewriter\"")
local testbed = require "reliablewriter.testbed"
assert(testbed.fakegcs.start and testbed.faults.profile and testbed.faults.proxy and testbed.faulty
  and testbed.probes.thread_count and testbed.probes.fd_count and testbed.probes.rss_kib)
assert(maps():find("libmicrohttpd", 1, true), "testbed.so without libmicrohttpd?")
local d = rw.gcs { bucket = "b", object = "o", endpoint = "http://127.0.0.1:1", faults = testbed.faults.profile {} }
assert(testbed.faulty(d, { p_error = 0 }):kind() == "faulty")
print("ok")
'

for flavour in ${RW_FLAVOURS:-lua5.4 luajit}; do
  dir=$build/$flavour/reliablewriter
  if [[ $build == build && ( ! -f $dir/core.so || ! -f $dir/testbed.so ) ]]; then
    make -s LUA=$flavour >/dev/null || { fail "make LUA=$flavour failed"; continue; }
  fi
  for so in core testbed; do
    extra=$(nm -D --defined-only "$dir/$so.so" | awk '$3 !~ /^luaopen_/ {print $3}')
    [[ -z $extra ]] || fail "$dir/$so.so exports more than luaopen_*: $(echo $extra | head -c 300)"
  done
  readelf -d "$dir/core.so" | grep NEEDED | grep -q microhttpd && fail "$dir/core.so needs libmicrohttpd (readelf -d)"
  ldd "$dir/core.so" | grep -q microhttpd && fail "$dir/core.so pulls in libmicrohttpd (ldd)"
  readelf -d "$dir/testbed.so" | grep NEEDED | grep -q microhttpd || fail "$dir/testbed.so does not need libmicrohttpd?"
  undef=$(nm -D --undefined-only "$dir/testbed.so" | awk '$2 ~ /^rw_/ {print $2}')
  [[ -z $undef ]] || fail "$dir/testbed.so leaves core symbols unresolved: $undef"
  lua=lua5.4; [[ $flavour == luajit ]] && lua=luajit
  out=$(LUA_PATH="lua/?.lua;lua/?/init.lua" LUA_CPATH="$build/$flavour/?.so" $lua -e "$probe" 2>&1)
  [[ $out == ok ]] || fail "$flavour: $out"
  [[ $fails -eq 0 ]] && echo "module-check: $flavour: core.so and testbed.so export only luaopen_*," \
    "core.so needs no libmicrohttpd, require \"reliablewriter\" loads no test bed"
done
[[ $fails -eq 0 ]]
