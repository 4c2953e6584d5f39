#!/usr/bin/env bash
# Benchmark (not a test) for issue 10: uploads through the reliablewriter proxy
# against a direct upload, and 1/4/8 connections over a shaped path. One fresh
# fake GCS (discard store) and one bin/reliablewriter-proxy, each its own
# process; prints one table with ratios and the proxy's peak RSS.
#   bench/proxy/run.sh [size_mib=256] [shaped_mib=512] [lat=0.02] [bw=52428800] [win=4194304]
# Env: RW_BENCH_PROXY_RUNS=N (default 3): loopback direct and via proxy run
#      alternately N times; the table has the medians and the median ratio.
#      RW_BENCH_SHAPED_RUNS=N (default 1): the same for the shaped rows.
#      RW_BENCH_PROXY_CACHE=BYTES passes --cache to the proxy.
#      RW_BENCH_PROXY_BIN=PATH runs another proxy binary (before/after a change).
#      RW_BENCH_SKIP_SHAPED=1 runs the loopback rows only.
# Each loopback run also records CPU seconds (user + system) of the client,
# the proxy and the fake (/proc/PID/stat, os.clock in the client) and how busy
# the machine's cores were (/proc/stat): the CPU accounting of README.md.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
size=${1:-256} shaped=${2:-512} lat=${3:-0.02} bw=${4:-52428800} win=${5:-4194304}
runs=${RW_BENCH_PROXY_RUNS:-3} sruns=${RW_BENCH_SHAPED_RUNS:-1}
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT

make -s >/dev/null && make -s bins >/dev/null
export LUA_PATH="$root/lua/?.lua;$root/lua/?/init.lua;;" LUA_CPATH="$root/build/lua5.4/?.so;;"

bin/reliablewriter-fakegcs --port 0 --store discard --bucket b >"$work/fake.url" 2>"$work/fake.log" &
fpid=$!
pids+=($fpid)
for _ in $(seq 100); do [[ -s "$work/fake.url" ]] && break; sleep 0.05; done
url=$(head -1 "$work/fake.url")

head -c 32 /dev/urandom >"$work/secret"
cache=()
[[ -n "${RW_BENCH_PROXY_CACHE:-}" ]] && cache=(--cache "$RW_BENCH_PROXY_CACHE")
${RW_BENCH_PROXY_BIN:-bin/reliablewriter-proxy} --listen 127.0.0.1:0 --upstream "$url" --secret-file "$work/secret" "${cache[@]}" \
  >"$work/proxy.out" 2>"$work/proxy.log" &
ppid=$!
pids+=($ppid)
for _ in $(seq 100); do grep -q listening "$work/proxy.out" 2>/dev/null && break; sleep 0.05; done
addr=$(awk '/listening/ {print $2}' "$work/proxy.out")
[[ -n "$addr" ]] || { echo "the proxy did not start" >&2; cat "$work/proxy.log" >&2; exit 1; }

big=$(( size > shaped ? size : shaped ))
head -c $((big << 20)) /dev/urandom >"$work/data"
cat "$work/data" >/dev/null # page cache

hz=$(getconf CLK_TCK)
cpu_of() { awk -v hz="$hz" '{ print ($14 + $15) / hz }' "/proc/$1/stat"; }
# busy and total jiffies of the whole machine
machine() { awk '/^cpu / { print $2 + $3 + $4 + $7 + $8, $2 + $3 + $4 + $5 + $6 + $7 + $8 }' /proc/stat; }
ncpu=$(nproc)

# one upload, with the CPU of every process: MiB/s client proxy fake busy_cores wall
n=0
up() {
  n=$((n + 1))
  local p0 f0 m0 out p1 f1 m1
  p0=$(cpu_of "$ppid") f0=$(cpu_of "$fpid") m0=$(machine)
  out=$(lua5.4 bench/proxy/up.lua "$1" "$2" "$3$n" "${@:4}")
  p1=$(cpu_of "$ppid") f1=$(cpu_of "$fpid") m1=$(machine)
  awk -v o="$out" -v p0="$p0" -v p1="$p1" -v f0="$f0" -v f1="$f1" -v m0="$m0" -v m1="$m1" -v nc="$ncpu" \
    'BEGIN { split(o, a, " "); split(m0, x, " "); split(m1, y, " ");
             printf "%s %.2f %.2f %.2f %.2f %.3f\n", a[3], a[4], p1 - p0, f1 - f0,
                    nc * (y[1] - x[1]) / (y[2] - x[2]), a[1] }'
}
median() { sort -g | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
col() { awk -v c="$1" '{ print $c }' "$2" | median; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2fx\n", a / b }'; }

: >"$work/direct" >"$work/via" >"$work/ratios"
for i in $(seq "$runs"); do
  d=$(up direct "$url" d "$work/data" "$size")
  v=$(up proxy "$addr" p "$work/data" "$size" 4 "$work/secret")
  echo "$d" >>"$work/direct"
  echo "$v" >>"$work/via"
  ratio "${v%% *}" "${d%% *}" | tr -d x >>"$work/ratios"

  printf 'run %d: direct %s MiB/s, via proxy %s MiB/s\n' "$i" "${d%% *}" "${v%% *}" >&2
done

shaped_rows=()
if [[ -z "${RW_BENCH_SKIP_SHAPED:-}" ]]; then
  shape="$lat,$bw,$win"
  : >"$work/s1" >"$work/s4" >"$work/s8" >"$work/r4" >"$work/r8"
  for i in $(seq "$sruns"); do
    for k in 1 4 8; do up proxy "$addr" "s$k-" "$work/data" "$shaped" "$k" "$work/secret" "$shape" >>"$work/s$k"; done
    ratio "$(tail -1 "$work/s4" | cut -d' ' -f1)" "$(tail -1 "$work/s1" | cut -d' ' -f1)" | tr -d x >>"$work/r4"
    ratio "$(tail -1 "$work/s8" | cut -d' ' -f1)" "$(tail -1 "$work/s1" | cut -d' ' -f1)" | tr -d x >>"$work/r8"
  done
fi
hwm=$(awk '/VmHWM/ {print $2}' "/proc/$ppid/status")

printf '%-44s %10s %8s %8s\n' case MiB/s ratio target
printf '%-44s %10s %8s %8s\n' "loopback direct, $size MiB" "$(col 1 "$work/direct")" 1.00x ""
printf '%-44s %10s %8s %8s\n' "loopback via proxy, 4 conns, $size MiB" "$(col 1 "$work/via")" \
  "$(median <"$work/ratios")x" ">=0.85x"
if [[ -z "${RW_BENCH_SKIP_SHAPED:-}" ]]; then
  printf '%-44s %10s %8s %8s\n' "shaped ($shape) 1 conn, $shaped MiB" "$(col 1 "$work/s1")" 1.00x ""
  printf '%-44s %10s %8s %8s\n' "shaped 4 conns" "$(col 1 "$work/s4")" "$(median <"$work/r4")x" ">=3.2x"
  printf '%-44s %10s %8s %8s\n' "shaped 8 conns" "$(col 1 "$work/s8")" "$(median <"$work/r8")x" ">=5x"
fi
printf '(medians of %d loopback runs, alternating direct and via proxy; ratio: median of the per-pair ratios)\n' "$runs"
printf '\nCPU seconds per upload of %d MiB (medians; busy: cores of the %d busy, all processes of the machine)\n' "$size" "$ncpu"
printf '%-22s %8s %8s %8s %8s %8s %10s\n' case client proxy fake total wall busy
for c in direct via; do
  printf '%-22s %8s %8s %8s %8s %8s %10s\n' "loopback $c" "$(col 2 "$work/$c")" "$(col 3 "$work/$c")" \
    "$(col 4 "$work/$c")" "$(awk '{ print $2 + $3 + $4 }' "$work/$c" | median)" "$(col 6 "$work/$c")" "$(col 5 "$work/$c")"
done
printf 'proxy peak RSS (VmHWM): %d MiB\n' $((hwm / 1024))
