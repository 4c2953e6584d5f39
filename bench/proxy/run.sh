#!/usr/bin/env bash
# Benchmark (not a test) for issue 10: uploads through the reliablewriter proxy
# against a direct upload, and 1/4/8 connections over a shaped path. One fresh
# fake GCS (discard store) and one bin/reliablewriter-proxy, each its own
# process; prints one table with ratios and the proxy's peak RSS.
#   bench/proxy/run.sh [size_mib=256] [shaped_mib=512] [lat=0.02] [bw=52428800] [win=4194304]
# Env: RW_BENCH_PROXY_CACHE=BYTES passes --cache to the proxy.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
size=${1:-256} shaped=${2:-512} lat=${3:-0.02} bw=${4:-52428800} win=${5:-4194304}
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT

make -s >/dev/null && make -s bins >/dev/null
export LUA_PATH="$root/lua/?.lua;$root/lua/?/init.lua;;" LUA_CPATH="$root/build/lua5.4/?.so;;"

bin/reliablewriter-fakegcs --port 0 --store discard --bucket b >"$work/fake.url" 2>"$work/fake.log" &
pids+=($!)
for _ in $(seq 100); do [[ -s "$work/fake.url" ]] && break; sleep 0.05; done
url=$(head -1 "$work/fake.url")

head -c 32 /dev/urandom >"$work/secret"
cache=()
[[ -n "${RW_BENCH_PROXY_CACHE:-}" ]] && cache=(--cache "$RW_BENCH_PROXY_CACHE")
bin/reliablewriter-proxy --listen 127.0.0.1:0 --upstream "$url" --secret-file "$work/secret" "${cache[@]}" \
  >"$work/proxy.out" 2>"$work/proxy.log" &
ppid=$!
pids+=($ppid)
for _ in $(seq 100); do grep -q listening "$work/proxy.out" 2>/dev/null && break; sleep 0.05; done
addr=$(awk '/listening/ {print $2}' "$work/proxy.out")
[[ -n "$addr" ]] || { echo "the proxy did not start" >&2; cat "$work/proxy.log" >&2; exit 1; }

big=$(( size > shaped ? size : shaped ))
head -c $((big << 20)) /dev/urandom >"$work/data"
cat "$work/data" >/dev/null # page cache

up() { lua5.4 bench/proxy/up.lua "$@" | awk '{print $3}'; }
direct=$(up direct "$url" d "$work/data" "$size")
via=$(up proxy "$addr" p "$work/data" "$size" 4 "$work/secret")
shape="$lat,$bw,$win"
s1=$(up proxy "$addr" s1 "$work/data" "$shaped" 1 "$work/secret" "$shape")
s4=$(up proxy "$addr" s4 "$work/data" "$shaped" 4 "$work/secret" "$shape")
s8=$(up proxy "$addr" s8 "$work/data" "$shaped" 8 "$work/secret" "$shape")
hwm=$(awk '/VmHWM/ {print $2}' "/proc/$ppid/status")

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2fx", a / b }'; }
printf '%-44s %10s %8s %8s\n' case MiB/s ratio target
printf '%-44s %10s %8s %8s\n' "loopback direct, $size MiB" "$direct" 1.00x ""
printf '%-44s %10s %8s %8s\n' "loopback via proxy, 4 conns, $size MiB" "$via" "$(ratio "$via" "$direct")" ">=0.85x"
printf '%-44s %10s %8s %8s\n' "shaped ($shape) 1 conn, $shaped MiB" "$s1" 1.00x ""
printf '%-44s %10s %8s %8s\n' "shaped 4 conns" "$s4" "$(ratio "$s4" "$s1")" ">=3.2x"
printf '%-44s %10s %8s %8s\n' "shaped 8 conns" "$s8" "$(ratio "$s8" "$s1")" ">=5x"
printf 'proxy peak RSS (VmHWM): %d MiB\n' $((hwm / 1024))
