#!/usr/bin/env bash
# The README's test command: installs what is missing, builds both flavours,
# and runs every suite. Always prints "suites: N passed, N failed" at the end:
# a failed install is a failed step, and a peer (rclone, Node) that cannot be
# installed fails its own suite (tests/fake/peers.sh installs it), not the run.
# A suite whose output holds a "reliablewriter error:" line fails (log_clean).
set -uo pipefail
cd "$(dirname "$0")/.."
export GCE_METADATA_HOST=127.0.0.1:1 GCE_METADATA_IP=127.0.0.1:1 NO_GCE_CHECK=True
unset STORAGE_EMULATOR_HOST CLOUD_STORAGE_EMULATOR_ENDPOINT

passed=0; failed=0; failures=(); failure_logs=()
out_dir=$(mktemp -d /tmp/rw-test.XXXXXX)
trap 'rm -rf "$out_dir"' EXIT

# A passing suite prints no library error lines: tests that expect a failure
# capture the log (rw.log.capture, H.capture_log, rw_log_set_hook) and assert
# on it, and captured lines stay in memory. So any "reliablewriter error:" in a
# suite's output (stdout and stderr, its children's too), wherever it is on a
# line, fails the suite, even when the suite itself passed: an unexpected
# failure, or an expected one nobody asserts on. There is no exception to
# match: a line quoted in an assertion message is only printed when that
# assertion fails. Warnings are counted, not failed.
log_clean() {
  local name=$1 out=$2 n w
  n=$(grep -c 'reliablewriter error:' "$out")
  w=$(grep -c 'reliablewriter warn:' "$out")
  [[ $w -gt 0 ]] && echo "=== $name: note: $w library warning line(s) in its output"
  [[ $n -eq 0 ]] && return 0
  echo "=== $name: $n library error line(s) in its output; the test that expects the failure must"
  echo "    capture the log and assert on it (spec/helpers.lua H.capture_log), or this is a real failure"
  echo "    (busted -o gtest FILE shows which test printed it; the id and object name help too):"
  grep -n 'reliablewriter error:' "$out" | head -20 | cut -c1-400 | sed 's/^/    /'
  return 1
}

step() {
  local name=$1; shift
  echo "=== $name"
  local t0=$SECONDS out rc
  out="$out_dir/step$((passed + failed)).log"
  "$@" 2>&1 | tee "$out"
  rc=${PIPESTATUS[0]}
  log_clean "$name" "$out" || { [[ $rc -eq 0 ]] && rc=1 && echo "=== $name: its tests passed, but it printed library errors"; }
  if [[ $rc -eq 0 ]]; then passed=$((passed + 1)); echo "=== $name: ok ($((SECONDS - t0)) s)"
  else failed=$((failed + 1)); failures+=("$name"); failure_logs+=("$out"); echo "=== $name: FAILED ($((SECONDS - t0)) s)"; fi
}

t_start=$SECONDS
step "deps (scripts/deps.sh test)" bash scripts/deps.sh test
jobs=$(nproc 2>/dev/null || echo 2)
step "build lua5.4" make -j"$jobs"
step "build luajit" make -j"$jobs" LUA=luajit
step "build programs" make -j"$jobs" bins
step "modules (exports, links, what require loads)" bash scripts/module-check.sh
step "rockspecs (luarocks make, both rocks, both flavours)" bash scripts/rock-check.sh
step "busted lua5.4" busted
step "busted luajit" busted --run=luajit
step "C tests ASan+UBSan" make -j"$jobs" check-asan
step "C tests TSan" make -j"$jobs" check-tsan
step "valgrind: Lua specs" bash scripts/valgrind-specs.sh
for t in tests/*/run.sh; do
  [[ -f "$t" ]] && step "$t" bash "$t"
done

# A digest of each failed suite last, where a reader of only the tail of the
# output (a CI summary) sees it: the lines that name failures and errors.
digest() {
  grep -a -A2 --no-group-separator -E '^FAIL |^bad |Failure ->|Error ->|[0-9]+ failures? / |not ok|FAILED|FAIL:|ERROR SUMMARY: [1-9]|definitely lost|Invalid (read|write)|uninitialised|reliablewriter error:|Assertion|AddressSanitizer|ThreadSanitizer|runtime error|Segmentation|Aborted|Killed|timed out' "$1" \
    | grep -a -v -E ' 0 failures / 0 errors' | head -16 | cut -c1-300 | sed 's/^/    /'
}
echo
for f in "${failures[@]+"${failures[@]}"}"; do echo "failed: $f"; done
for i in "${!failure_logs[@]}"; do
  echo "digest of ${failures[$i]}:"; digest "${failure_logs[$i]}"
done
echo "make test took $(( (SECONDS - t_start) / 60 )) min $(( (SECONDS - t_start) % 60 )) s"
echo "suites: $passed passed, $failed failed"
[[ $failed -eq 0 ]]
