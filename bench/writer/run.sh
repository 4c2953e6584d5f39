#!/usr/bin/env bash
# Benchmark (not a test) for issue 4, "Speed and memory": reliablewriter against
# a plain libcurl client, rclone and the Node client, all uploading the same
# random file to one fresh fake GCS (discard store, separate process). Prints
# one table.
#   bench/writer/run.sh [rounds=3] [size_mib=256] [mem_mib=1024]
# Env: RW_BENCH_REF=HEAD benchmarks that commit (built in the temp dir) instead of
#      the working tree; RW_BENCH_SKIP_PEERS=1 skips rclone and Node; RW_BENCH_SKIP_MEM=1 skips the 1 GiB part.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
rounds=${1:-3} size=${2:-256} mem=${3:-1024}
chunk=8 cache=32
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT
trap 'echo "run.sh: failed at line $LINENO: $BASH_COMMAND" >&2' ERR

# The library under test: the working tree, or with RW_BENCH_REF=<git ref> that
# commit exported and built in the temp dir (the working tree is shared and may
# be mid-edit by others).
lib=$root
if [[ -n "${RW_BENCH_REF:-}" ]]; then
  lib=$work/src
  mkdir -p "$lib"
  git archive "$RW_BENCH_REF" | tar -x -C "$lib"
  echo "building $(git rev-parse --short "$RW_BENCH_REF") in $lib ..." >&2
  make -C "$lib" -s >/dev/null && make -C "$lib" -s bins >/dev/null
else # if a concurrent change breaks the build, fall back to what is built
  make -s >/dev/null 2>&1 || { [[ -f build/lua5.4/reliablewriter/core.so ]] || exit 1
    echo "warning: make failed; benchmarking the existing build/lua5.4/reliablewriter/core.so" >&2; }
  make -s bins >/dev/null 2>&1 || { [[ -x bin/reliablewriter-fakegcs ]] || exit 1
    echo "warning: make bins failed; using the existing bin/reliablewriter-fakegcs" >&2; }
fi
cc -O2 -Wall -o "$work/curl_ref" bench/writer/curl_ref.c $(pkg-config --cflags --libs libcurl) -lisal
export LUA_PATH="$lib/lua/?.lua;$lib/lua/?/init.lua;;" LUA_CPATH="$lib/build/lua5.4/?.so;;"
export RCLONE_CONFIG=/dev/null NODE_PATH="$root/tests/fake/node/node_modules"

"$lib/bin/reliablewriter-fakegcs" --port 0 --store discard --bucket b >"$work/fake.url" 2>"$work/fake.log" &
pids+=($!)
for _ in $(seq 100); do [[ -s "$work/fake.url" ]] && break; sleep 0.05; done
url=$(head -1 "$work/fake.url")
[[ -n "$url" ]] || { echo "the fake did not start" >&2; cat "$work/fake.log" >&2; exit 1; }

head -c $((size << 20)) /dev/urandom >"$work/data"
want_crc=$("$work/curl_ref" "$url" b warmup "$work/data" "$chunk" | awk '{print $4}') # warms the page cache

peers=1
[[ -n "${RW_BENCH_SKIP_PEERS:-}" ]] && peers=0
have_node=0; [[ $peers = 1 && -d "$NODE_PATH/@google-cloud/storage" ]] && command -v node >/dev/null && have_node=1
have_rclone=0; [[ $peers = 1 ]] && command -v rclone >/dev/null && have_rclone=1

# one run of a client -> MiB/s on stdout (checks the crc32c where the client reports it)
run_one() {
  local what=$1 obj="bench-$1-$RANDOM" out t0 t1
  case $what in
    curl) out=$("$work/curl_ref" "$url" b "$obj" "$work/data" "$chunk")
          [[ $(awk '{print $4}' <<<"$out") = "$want_crc" ]] || { echo "curl_ref: bad crc32c" >&2; exit 1; }
          awk '{print $3}' <<<"$out" ;;
    file|writeat|writeat_gc|writeat_pre)
          out=$(lua5.4 bench/writer/lua_up.lua "$what" "$url" "$obj" "$work/data" "$cache" "$chunk")
          [[ $(awk '{print $7}' <<<"$out") = "$want_crc" ]] || { echo "$what: bad crc32c: $out" >&2; exit 1; }
          awk '{print $3}' <<<"$out" ;;
    rwup) # the CLI as a user runs it (a process per run); MiB/s over its transfer (the "done" line)
          out=$(STORAGE_EMULATOR_HOST=$url XDG_STATE_HOME=$work/state lua5.4 "$lib/bin/rwup" cp --chunk "${chunk}M" \
                  --cache "${cache}M" --progress json "$work/data" "gs://b/$obj" | tail -1)
          [[ $(sed -n 's/.*"crc32c":"\([^"]*\)".*/\1/p' <<<"$out" | sed 's|\\/|/|g') = "$want_crc" ]] ||
            { echo "rwup: bad crc32c: $out" >&2; exit 1; }
          sed -n 's/.*"bytes":\([0-9]*\).*"seconds":\([0-9.]*\).*/\1 \2/p;s/.*"seconds":\([0-9.]*\).*"bytes":\([0-9]*\).*/\2 \1/p' <<<"$out" |
            head -1 | awk '{printf "%.1f\n", $1 / 1048576 / $2}' ;;
    node) node bench/writer/node_up.js "$url" b "$obj" "$work/data" | awk '{print $3}' ;;
    rclone) # wall time of the process (includes its ~start-up); 16 MiB chunks, md5 (rclone 1.60 has no chunk-size flag)
          t0=$(date +%s.%N)
          rclone copyto "$work/data" ":gcs:b/$obj" --gcs-endpoint "$url/storage/v1/" --gcs-anonymous \
            --gcs-bucket-policy-only -q
          t1=$(date +%s.%N)
          awk -v a="$t0" -v b="$t1" -v s="$size" 'BEGIN{printf "%.1f\n", s/(b-a)}' ;;
  esac
}

clients=(curl file rwup writeat writeat_gc writeat_pre)
[[ $have_rclone = 1 ]] && clients+=(rclone)
[[ $have_node = 1 ]] && clients+=(node)
declare -A res
for _ in $(seq "$rounds"); do # interleaved rounds, so drift hits every client alike
  for c in "${clients[@]}"; do res[$c]+="$(run_one "$c") "; done
done
best() { tr ' ' '\n' <<<"${res[$1]}" | grep . | sort -g | tail -1; }
median() { tr ' ' '\n' <<<"${res[$1]}" | grep . | sort -g | awk '{a[NR]=$1} END{print (NR%2)?a[(NR+1)/2]:(a[NR/2]+a[NR/2+1])/2}'; }
rb=$(best curl) rm=$(median curl)

label() {
  case $1 in
    curl) echo "libcurl C reference (ISA-L crc32c)" ;;
    file) echo "reliablewriter w:write_file" ;;
    rwup) echo "rwup cp (the CLI)" ;;
    writeat) echo "reliablewriter WriteAt 1 MiB strings" ;;
    writeat_gc) echo "  same + collectgarbage() every 8 MiB" ;;
    writeat_pre) echo "  WriteAt of strings read before timing" ;;
    rclone) echo "rclone copyto (16 MiB chunks, md5)" ;;
    node) echo "node @google-cloud/storage" ;;
  esac
}
target() { case $1 in curl) echo "1.00" ;; file) echo "0.90" ;; rwup) echo "1.00" ;; writeat) echo "0.70" ;; *) echo "" ;; esac; }

echo
printf "%-40s %9s %9s %7s %7s %7s  %s\n" "${size} MiB, ${chunk} MiB chunks, crc32c, ${rounds} runs" "best" "median" "ratio" "ratio" "target" ""
printf "%-40s %9s %9s %7s %7s %7s  %s\n" "" "MiB/s" "MiB/s" "best" "median" "" "met"
for c in "${clients[@]}"; do
  b=$(best "$c") m=$(median "$c") t=$(target "$c")
  r1=$(awk -v a="$b" -v r="$rb" 'BEGIN{printf "%.2f", a/r}')
  r2=$(awk -v a="$m" -v r="$rm" 'BEGIN{printf "%.2f", a/r}')
  met=""
  if [[ $c = writeat_gc || $c = writeat_pre ]]; then
    met="(diag)"
  elif [[ -n $t && $c != curl ]]; then
    met=$(awk -v a="$r2" -v t="$t" 'BEGIN{print (a>=t)?"yes":"NO"}')
  fi
  printf "%-40s %9.1f %9.1f %7s %7s %7s  %s\n" "$(label "$c")" "$b" "$m" "$r1" "$r2" "$t" "$met"
done

if [[ -z "${RW_BENCH_SKIP_MEM:-}" ]]; then
  head -c $((mem << 20)) /dev/urandom >"$work/data"
  bound=$(( (cache + 16) * 1024 ))
  echo
  printf "%-40s %9s %9s %9s %9s %7s  %s\n" "${mem} MiB, ${cache} MiB cache: peak RSS (KiB)" "baseline" "VmHWM" "over" "bound" "MiB/s" "met"
  for m in file writeat writeat_gc; do
    out=$(lua5.4 bench/writer/lua_up.lua "$m" "$url" "mem-$m" "$work/data" "$cache" "$chunk")
    read -r _ _ rate base hwm _ _ <<<"$out"
    over=$((hwm - base))
    met=$([[ $over -lt $bound ]] && echo yes || echo NO)
    [[ $m = writeat_gc ]] && met="($met)"
    printf "%-40s %9d %9d %9d %9d %7.1f  %s\n" "$(label "$m")" "$base" "$hwm" "$over" "$bound" "$rate" "$met"
  done
  echo "(over = VmHWM - VmRSS before rw.new, HWM reset at that point; bound = cache + 16 MiB; fake GCS in its own process)"
fi
