#!/usr/bin/env bash
# The README's test command: installs what is missing, builds both flavours,
# and runs every suite. Always prints "suites: N passed, N failed" at the end:
# a failed install is a failed step, and a peer (rclone, Node) that cannot be
# installed fails its own suite (tests/fake/peers.sh installs it), not the run.
set -uo pipefail
cd "$(dirname "$0")/.."
export GCE_METADATA_HOST=127.0.0.1:1 GCE_METADATA_IP=127.0.0.1:1 NO_GCE_CHECK=True
unset STORAGE_EMULATOR_HOST CLOUD_STORAGE_EMULATOR_ENDPOINT

passed=0; failed=0; failures=()
step() {
  local name=$1; shift
  echo "=== $name"
  local t0=$SECONDS
  if "$@"; then passed=$((passed + 1)); echo "=== $name: ok ($((SECONDS - t0)) s)"
  else failed=$((failed + 1)); failures+=("$name"); echo "=== $name: FAILED ($((SECONDS - t0)) s)"; fi
}

t_start=$SECONDS
step "deps (scripts/deps.sh test)" bash scripts/deps.sh test
jobs=$(nproc 2>/dev/null || echo 2)
step "build lua5.4" make -j"$jobs"
step "build luajit" make -j"$jobs" LUA=luajit
step "build programs" make -j"$jobs" bins
step "rockspec (luarocks make, both flavours)" bash scripts/rock-check.sh
step "busted lua5.4" busted
step "busted luajit" busted --run=luajit
step "C tests ASan+UBSan" make -j"$jobs" check-asan
step "C tests TSan" make -j"$jobs" check-tsan
step "valgrind: Lua specs" bash scripts/valgrind-specs.sh
for t in tests/*/run.sh; do
  [[ -f "$t" ]] && step "$t" bash "$t"
done

echo
for f in "${failures[@]+"${failures[@]}"}"; do echo "failed: $f"; done
echo "make test took $(( (SECONDS - t_start) / 60 )) min $(( (SECONDS - t_start) % 60 )) s"
echo "suites: $passed passed, $failed failed"
[[ $failed -eq 0 ]]
