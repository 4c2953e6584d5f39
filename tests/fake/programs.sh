#!/usr/bin/env bash
# The programs' command lines: every numeric flag is a whole/decimal number in
# its range, ports are 1..65535 (0: pick one where documented), --faults is
# checked like the Lua srv:faults{...}. Bad input: exit 2 and a message that
# names the flag. Usage: tests/fake/programs.sh
set -uo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
make -s bins >/dev/null || exit 1
fails=0 passes=0
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# bad WANT_IN_MESSAGE PROGRAM ARGS...: exits 2 at once, stderr names the flag
bad() {
  local want=$1; shift
  timeout 5 "$@" >"$work/out" 2>"$work/err"
  local rc=$?
  if [[ $rc -eq 2 ]] && grep -qF -- "$want" "$work/err"; then passes=$((passes + 1))
  else fails=$((fails + 1)); echo "FAIL: '$*' -> exit $rc, stderr: $(head -c 300 "$work/err")" >&2; fi
}
# good PROGRAM ARGS...: starts and prints a URL on 127.0.0.1
good() {
  "$@" >"$work/url" 2>"$work/err" &
  local pid=$!
  for _ in $(seq 50); do grep -q '^http' "$work/url" 2>/dev/null && break; sleep 0.1; done
  if grep -q '^http://127\.0\.0\.1:[0-9]*$' "$work/url"; then passes=$((passes + 1))
  else fails=$((fails + 1)); echo "FAIL: '$*' did not start: $(head -c 300 "$work/err")" >&2; fi
  kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null
}

F=bin/reliablewriter-fakegcs C=bin/reliablewriter-chaos
for p in 99999 65536 abc -1 "" 80x " 80" +80 1e3 0x50 99999999999999999999; do
  bad "--port" $F --port "$p"
done
bad "--port" $F --port
bad "unknown option" $F --prot 1
for r in 0 -5 abc 10000001 1.5; do bad "--request-log" $F --request-log "$r"; done
bad "--faults has an unknown key 'p_404'" $F --faults p_404=1
bad "--faults" $F --faults p_503 # no value
bad "--faults p_503" $F --faults p_503=1.5
bad "--faults p_503" $F --faults p_503=-0.1
bad "--faults p_503" $F --faults p_503=nan
bad "--faults p_503" $F --faults p_503=abc
bad "--faults p_503" $F --faults p_503=
bad "--faults seed" $F --faults seed=abc
bad "--faults seed" $F --faults seed=-1
bad "--faults seed" $F --faults seed=99999999999999999999
bad "--faults stall_ms" $F --faults stall_ms=600001
bad "--faults stall_ms" $F --faults stall_ms=1.5
bad "add up to at most 1" $F --faults p_503=0.6,p_reset=0.6
bad "--bucket" $F --bucket ""
good $F --port 0 --request-log 3 --faults seed=7,p_503=0.5,stall_ms=0 --bucket b
good $F

for p in 99999 abc -1 0 ""; do bad "--upstream" $C --upstream "127.0.0.1:$p"; done
bad "--upstream" $C --upstream "http://127.0.0.1:70000/x"
bad "--upstream" $C --upstream "[::1]:abc"
for p in 99999 abc -1; do bad "--listen" $C --upstream 127.0.0.1:9 --listen "127.0.0.1:$p"; done
bad "--seed" $C --upstream 127.0.0.1:9 --seed abc
bad "--seed" $C --upstream 127.0.0.1:9 --seed -3
bad "--max-connections" $C --upstream 127.0.0.1:9 --max-connections abc
bad "--max-connections" $C --upstream 127.0.0.1:9 --max-connections 0
bad "--max-connections" $C --upstream 127.0.0.1:9 --max-connections 70000
bad "--refuse" $C --upstream 127.0.0.1:9 --refuse 2
bad "--latency" $C --upstream 127.0.0.1:9 --latency 61
bad "--bandwidth" $C --upstream 127.0.0.1:9 --bandwidth 100
bad "--reset-per-mib" $C --upstream 127.0.0.1:9 --reset-per-mib -1
bad "--stall-for" $C --upstream 127.0.0.1:9 --stall-for soon
bad "--upstream is required" $C --seed 1
good $C --upstream 127.0.0.1:9 --listen 127.0.0.1:0 --seed 5 --max-connections 10 --bandwidth 0
good $C --upstream http://127.0.0.1:9/ --stall-for forever

echo "programs: $passes passed, $fails failed"
[[ $fails -eq 0 ]]
