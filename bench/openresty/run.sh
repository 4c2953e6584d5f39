#!/usr/bin/env bash
# bench/openresty: reliablewriter inside nginx (Debian's nginx +
# libnginx-mod-http-lua, LuaJIT) against the same uploads from plain Lua, on
# one fake GCS (bin/reliablewriter-fakegcs, --store discard). One table.
#   bench/openresty/run.sh [size_mib=256] [conc_mib=64]
# Env: RW_BENCH_RUNS=N rounds of the single-upload rows (default 3; each
# round runs plain Lua and nginx back to back, so per-round ratios are paired).
# A benchmark, not a test: it fails only when something does not run.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
size_mib=${1:-256}
conc_mib=${2:-64}
MiB=1048576
command -v nginx >/dev/null || { echo "nginx is not installed"; exit 1; }
moddir=/usr/lib/nginx/modules
[[ -f $moddir/ngx_http_lua_module.so ]] || moddir=/usr/share/nginx/modules
nice make -s LUA=luajit >/dev/null
nice make -s >/dev/null
nice make -s bins >/dev/null

tmp=$(mktemp -d /tmp/rw-bench-ngx.XXXXXX)
pids=()
cleanup() {
  [[ -f $tmp/logs/nginx.pid ]] && kill -QUIT "$(cat "$tmp/logs/nginx.pid")" 2>/dev/null
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null; wait "$p" 2>/dev/null; done
  sleep 0.3
  rm -rf "$tmp"
}
trap cleanup EXIT
bin/reliablewriter-fakegcs --host 127.0.0.1 --port 0 --store discard --bucket b >"$tmp/fake.out" 2>"$tmp/fake.err" &
pids+=($!)
for _ in $(seq 100); do gcs=$(head -1 "$tmp/fake.out"); [[ $gcs == http* ]] && break; sleep 0.05; done
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
mkdir -p "$tmp/logs"; ln -s "$moddir" "$tmp/modules"
cat >"$tmp/extra.conf" <<CONF
    location /t/ { client_max_body_size 0; set \$rw_endpoint $gcs; set \$rw_mode ""; set \$rw_max_cache_mib 1;
      content_by_lua_block { require("handler").content() } log_by_lua_block { require("handler").log() } }
    location /tsleep/ { client_max_body_size 0; set \$rw_endpoint $gcs; set \$rw_mode sleep; set \$rw_max_cache_mib 1;
      content_by_lua_block { require("handler").content() } log_by_lua_block { require("handler").log() } }
    location /u64/ { client_max_body_size 0; lua_socket_buffer_size 1m; set \$rw_endpoint $gcs; content_by_lua_block { require("rw_upload").handle { piece = 65536 } } }
    location /u1m/ { client_max_body_size 0; lua_socket_buffer_size 1m; set \$rw_endpoint $gcs; content_by_lua_block { require("rw_upload").handle { piece = 1048576 } } }
    location = /bench/discard { client_max_body_size 0; lua_socket_buffer_size 1m; content_by_lua_block { require("bench").discard() } }
    location = /bench/complete { set \$rw_endpoint $gcs; content_by_lua_block { require("bench").complete() } }
CONF
user_line=""
(( $(id -u) == 0 )) && user_line="user $(id -un) $(id -gn);"
sed -e "s#/path/to/reliablewriter#$root#g" \
    -e "s#^worker_processes .*#&\n$user_line#" \
    -e "s#listen 127.0.0.1:8080;#listen 127.0.0.1:$port;#" \
    -e "s#set \$rw_endpoint http://127.0.0.1:4443;#set \$rw_endpoint $gcs;#" \
    -e "s#lua_package_path \"#lua_package_path \"$root/tests/openresty/?.lua;$root/bench/openresty/?.lua;#" \
    -e "s#^\( *\)location = /ping .*#&\n\1include $tmp/extra.conf;#" \
    examples/openresty/nginx.conf >"$tmp/nginx.conf"
nginx -p "$tmp" -c "$tmp/nginx.conf" -e "$tmp/logs/error.log"
base=http://127.0.0.1:$port
for _ in $(seq 100); do curl -fs "$base/ping" >/dev/null && break; sleep 0.05; done
py() { timeout 600 python3 tests/openresty/client.py "$@"; }
# The worker's minor page faults (fresh pages it touched) around an upload:
# LuaJIT maps each string of 128 KiB or more on its own, so big pieces fault.
worker=$(pgrep -P "$(cat "$tmp/logs/nginx.pid")" | head -1)
minflt() { awk '{ print $10 }' "/proc/$worker/stat"; }
nginx_up() { # $1 = location, $2 = object; prints "SECONDS FAULTS" (the worker's, during the upload)
  local f0 t; f0=$(minflt)
  t=$(curl -sS -o "$tmp/resp" -w "%{time_total}" -T "$tmp/big" "$base/$1/b/$2")
  grep -q '"size":'$((size_mib * MiB)) "$tmp/resp" || { echo "nginx upload to /$1/ failed: $(cat "$tmp/resp")" >&2; exit 1; }
  echo "$t $(( $(minflt) - f0 ))"
}

seed=${RW_SEED:-$RANDOM}
mkbody() { { openssl enc -aes-128-ctr -nosalt -pass "pass:$seed-$3" -pbkdf2 -in /dev/zero 2>/dev/null || true; } | head -c "$1" >"$2"; }
mkbody $((size_mib * MiB)) "$tmp/big" big
rate() { awk -v b="$1" -v s="$2" 'BEGIN { printf "%.0f", b / 1048576 / s }'; }
rows=()
row() { rows+=("$(printf '| %-66s | %-28s |' "$1" "$2")"); }

# 1. One big upload: nginx vs plain Lua 5.4 (the example's writer options).
export LUA_PATH="lua/?.lua;lua/?/init.lua;;" LUA_CPATH="build/lua5.4/?.so;;"
best_p=999999 best_n=999999 best_s=999999
runs=${RW_BENCH_RUNS:-3}
pair_ratios=() sf_ratios=() faults_q=() faults_m=() faults_n=()
for r in $(seq "$runs"); do
  p=$(RW_POOL_THREADS=4 lua5.4 bench/openresty/plain.lua "$gcs" "plain-$r" "$tmp/big")
  s=$(cat "$tmp/big" | RW_POOL_THREADS=4 lua5.4 bench/openresty/plain.lua "$gcs" "plain-pipe-$r" -)
  best_s=$(awk -v a="$best_s" -v b="$s" 'BEGIN { print (b < a) ? b : a }')
  read -r q fq < <(nginx_up u64 "ngx64-$r")
  best_q=$(awk -v a="${best_q:-999999}" -v b="$q" 'BEGIN { print (b < a) ? b : a }')
  read -r m fm < <(nginx_up u1m "ngx1m-$r")
  best_m=$(awk -v a="${best_m:-999999}" -v b="$m" 'BEGIN { print (b < a) ? b : a }')
  read -r n fn < <(nginx_up upload "ngx-$r")
  read -r sf scode < <(py sendfile "$port" "/upload/b/ngxsf-$r" "$tmp/big")
  [[ -n $q && -n $m && -n $n && ${scode:-} == 200 ]] || { echo "an nginx upload failed (sendfile client: ${scode:-none})" >&2; exit 1; }
  best_f=$(awk -v a="${best_f:-999999}" -v b="$sf" 'BEGIN { print (b < a) ? b : a }')
  sf_ratios+=("$(awk -v p="$p" -v n="$sf" 'BEGIN { printf "%.2f", p / n }')")
  faults_q+=("$fq") faults_m+=("$fm") faults_n+=("$fn")
  best_p=$(awk -v a="$best_p" -v b="$p" 'BEGIN { print (b < a) ? b : a }')
  best_n=$(awk -v a="$best_n" -v b="$n" 'BEGIN { print (b < a) ? b : a }')
  pair_ratios+=("$(awk -v p="$p" -v n="$n" 'BEGIN { printf "%.2f", p / n }')")
done
median() { printf '%s\n' "$@" | sort -n | awk '{ v[NR] = $1 } END { printf "%.2f", (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
median_ratio=$(median "${pair_ratios[@]}")
row "$size_mib MiB, plain Lua 5.4 (best of $runs)" "$(rate $((size_mib * MiB)) "$best_p") MiB/s"
row "$size_mib MiB, plain Lua 5.4 reading a pipe (best of $runs)" "$(rate $((size_mib * MiB)) "$best_s") MiB/s"
row "$size_mib MiB through nginx, Content-Length (best of $runs)" "$(rate $((size_mib * MiB)) "$best_n") MiB/s"
row "  the worker's page faults per upload (120 KiB pieces, the example)" "${faults_n[*]}"
row "$size_mib MiB through nginx, 1 MiB pieces (best of $runs)" "$(rate $((size_mib * MiB)) "$best_m") MiB/s"
row "  the worker's page faults per upload (1 MiB pieces)" "${faults_m[*]}"
row "$size_mib MiB through nginx, 64 KiB pieces (best of $runs)" "$(rate $((size_mib * MiB)) "$best_q") MiB/s"
row "  the worker's page faults per upload (64 KiB pieces)" "${faults_q[*]}"
d=$(curl -sS -o /dev/null -w "%{time_total}" -T "$tmp/big" "$base/bench/discard")
row "$size_mib MiB read by nginx and dropped (no writer)" "$(rate $((size_mib * MiB)) "$d") MiB/s"
row "  ratio nginx / plain Lua (file; pipe)" "$(awk -v p="$best_p" -v s="$best_s" -v n="$best_n" 'BEGIN { printf "%.2fx; %.2fx", p / n, s / n }')"
row "  ratio nginx / plain Lua (file), per round; median" "${pair_ratios[*]}; ${median_ratio}x"
row "$size_mib MiB through nginx, the client sending by sendfile(2) (best of $runs)" "$(rate $((size_mib * MiB)) "$best_f") MiB/s"
row "  ratio nginx (sendfile client) / plain Lua (file): best of; per round; median" "$(awk -v p="$best_p" -v n="$best_f" 'BEGIN { printf "%.2fx", p / n }'); ${sf_ratios[*]}; $(median "${sf_ratios[@]}")x"
n=$(curl -sS -o "$tmp/resp" -w '%{time_total}' -T - "$base/upload/b/ngx-ch" <"$tmp/big")
row "$size_mib MiB through nginx, chunked (curl -T -)" "$(rate $((size_mib * MiB)) "$n") MiB/s"

# 2. 8 concurrent uploads (4 Content-Length, 4 chunked), /ping every 10 ms.
for k in 1 2 3 4 5 6 7 8; do head -c $((conc_mib * MiB)) "$tmp/big" >"$tmp/c$k"; done
rm -f "$tmp/stop"
# as in tests/openresty: the load generators at nice 10, the pinger at -5 (when allowed)
nice -n -5 timeout 600 python3 tests/openresty/client.py ping "$port" /ping "$tmp/stop" 10 >"$tmp/ping.out" 2>/dev/null &
pp=$!
sleep 0.3
t0=$(date +%s.%N)
cp=()
for k in 1 2 3 4 5 6 7 8; do
  if (( k % 2 )); then nice -n 10 curl -sS -o /dev/null -T "$tmp/c$k" "$base/upload/b/conc-$k" &
  else nice -n 10 curl -sS -o /dev/null -T - "$base/upload/b/conc-$k" <"$tmp/c$k" & fi
  cp+=($!)
done
for p in "${cp[@]}"; do wait "$p"; done
t1=$(date +%s.%N)
touch "$tmp/stop"; wait "$pp"
read -r pn p50 p99 pmax <"$tmp/ping.out"
row "8 x $conc_mib MiB concurrently, total" "$(rate $((8 * conc_mib * MiB)) "$(awk -v a="$t0" -v b="$t1" 'BEGIN { print b - a }')") MiB/s"
row "  /ping every 10 ms meanwhile (n=$pn)" "p50 $p50 ms, p99 $p99 ms, max $pmax ms"
: >"$tmp/idle.lat"
rm -f "$tmp/stop"; (sleep 3; touch "$tmp/stop") & py ping "$port" /ping "$tmp/stop" 10 >"$tmp/ping.idle"
read -r pn p50 p99 pmax <"$tmp/ping.idle"
row "  /ping every 10 ms, idle nginx (n=$pn)" "p50 $p50 ms, p99 $p99 ms, max $pmax ms"

# 3. What waiting costs: Complete of a 1-byte upload, and a 64 MiB upload
# through a 1 MiB cache (the writer drains it at once and waits for Lua).
for m in block sleep wake; do
  read -r med p90 < <(curl -sS "$base/bench/complete?mode=$m&n=60")
  row "Complete of 1 byte, policy $m (60 runs)" "median $med ms, p90 $p90 ms"
done
head -c $((64 * MiB)) "$tmp/big" >"$tmp/m64"
for loc in tsleep t; do
  s=$(curl -sS -o /dev/null -w '%{time_total}' --data-binary @"$tmp/m64" "$base/$loc/b/small-$loc")
  line=$(grep "rwtest: uri=/$loc/b/small-$loc " "$tmp/logs/error.log" | tail -1)
  waits=$(sed -n 's/.* sleeps=\([0-9]*\) .* wakes=\([0-9]*\).*/\1 sleeps, \2 wakes/p' <<<"$line")
  row "64 MiB via a 1 MiB cache, $( [[ $loc == t ]] && echo "wake-up bridge" || echo "ngx.sleep polling")" "$(rate $((64 * MiB)) "$s") MiB/s ($waits)"
done

echo "bench/openresty: nginx $(nginx -v 2>&1 | sed 's#.*/##'), 1 worker, seed $seed, load $(cut -d' ' -f1-3 /proc/loadavg), $(nproc) cores"
printf '| %-66s | %-28s |\n' "what" "result"
printf '|%s|%s|\n' "$(printf -- '-%.0s' $(seq 68))" "$(printf -- '-%.0s' $(seq 30))"
printf '%s\n' "${rows[@]}"
