#!/usr/bin/env bash
# Every ```lua block of README.md runs: each in its own process, on Lua 5.4 and
# on LuaJIT (a block with <close>/<const> runs on Lua 5.4 only), against an
# in-process fake GCS, with the prelude of tests/readme/runner.lua (url, id,
# first_mib, second_mib, part_file, ctx, MiB, rw). A block that uploads
# backup.tar must have stored exactly the bytes it wrote. A failing block fails
# the suite and is named by its line in README.md, with its output.
# Usage: tests/readme/run.sh   (RW_SEED=N repeats a run's random data)
set -uo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
readme=${RW_README:-README.md}

for flavour in lua5.4 luajit; do
  if [[ ! -f build/$flavour/reliablewriter/core.so || ! -f build/$flavour/reliablewriter/testbed.so ]]; then
    if [[ $flavour == lua5.4 ]]; then make -s >/dev/null; else make -s LUA=luajit >/dev/null; fi ||
      { echo "FAIL - could not build the $flavour module"; echo "0 passed, 1 failed"; exit 1; }
  fi
done

seed=${RW_SEED:-$(( (RANDOM << 15) | RANDOM ))}
echo "readme: $readme, seed $seed (RW_SEED to repeat)"
out=$(mktemp /tmp/rw-readme-out.XXXXXX)
trap 'rm -f "$out"' EXIT

pass=0 fail=0 skip=0
list=$(lua5.4 tests/readme/runner.lua "$readme" list) || { echo "FAIL - could not read the blocks of $readme"; echo "0 passed, 1 failed"; exit 1; }
[[ -n "$list" ]] || { echo "FAIL - no \`\`\`lua block in $readme"; echo "0 passed, 1 failed"; exit 1; }
while read -r line flags; do
  for flavour in lua5.4 luajit; do
    if [[ $flavour == luajit && $flags == 54 ]]; then
      skip=$((skip + 1)); echo "skip - $readme:$line on luajit (Lua 5.4 syntax: <close>/<const>)"; continue
    fi
    if LUA_PATH="lua/?.lua;lua/?/init.lua;;" LUA_CPATH="build/$flavour/?.so;;" \
        timeout 120 "$flavour" tests/readme/runner.lua "$readme" "$line" "$seed" >"$out" 2>&1 &&
        ! grep -q 'reliablewriter error:' "$out"; then
      pass=$((pass + 1)); echo "ok   - $flavour $(tail -1 "$out")"
    else
      fail=$((fail + 1)); echo "FAIL - $flavour: the \`\`\`lua block at $readme:$line (seed $seed); its output:"
      sed 's/^/    /' "$out"
    fi
  done
done <<<"$list"
# docs/ERRORS.md lists the registry as it is (scripts/errors-doc.lua makes it).
if LUA_PATH="lua/?.lua;lua/?/init.lua;;" LUA_CPATH="build/lua5.4/?.so;;" lua5.4 scripts/errors-doc.lua >"$out" 2>&1 &&
    diff -u docs/ERRORS.md "$out" >"$out.diff"; then
  pass=$((pass + 1)); echo "ok   - docs/ERRORS.md lists every code of the registry"
else
  fail=$((fail + 1))
  echo "FAIL - docs/ERRORS.md is not what scripts/errors-doc.lua makes from the registry; regenerate it:"
  echo "    LUA_PATH=\"lua/?.lua;lua/?/init.lua;;\" LUA_CPATH=\"build/lua5.4/?.so;;\" lua5.4 scripts/errors-doc.lua > docs/ERRORS.md"
  head -30 "$out.diff" | sed 's/^/    /'
fi
rm -f "$out.diff"
echo "$pass passed, $fail failed, $skip skipped"
((fail == 0))
