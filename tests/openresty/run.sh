#!/usr/bin/env bash
# reliablewriter under nginx + lua-nginx-module (Debian's libnginx-mod-http-lua,
# LuaJIT): streams request bodies into the fake GCS through
# examples/openresty/{nginx.conf,upload.lua}, checks the stored bytes, checks
# that a waiting WriteAt does not block the worker (latency of a trivial
# location during a slow upload, with a blocking control), and that a client
# disconnect aborts the session.
# Usage: tests/openresty/run.sh   (exit 0 when everything passed, or when nginx
#   or its lua module is missing and CI is not "true": a skip, printed as one)
#   RW_SEED=N      the seed of the random bodies (printed)
#   RW_MAX_MS=N    latency bound for /ping during a waiting upload (100)
set -uo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"

pass=0 fail=0
ok() { pass=$((pass + 1)); echo "ok   - $*"; }
bad() { fail=$((fail + 1)); echo "FAIL - $*"; }
summary() { echo "$pass passed, $fail failed"; }
# A missing nginx or lua module skips locally (exit 0, said loudly) but fails
# under CI (CI=true), where a skip would otherwise count as a pass.
skip() {
  if [[ "${CI:-}" == true || "${CI:-}" == 1 ]]; then
    echo "FAIL: $* (CI=true: this suite must run, so a skip is a failure)"
    echo "0 passed, 1 failed (could not run)"
    exit 1
  fi
  echo "SKIP: $*"
  echo "SKIP: the OpenResty suite did not run; nothing was tested (under CI=true this fails)"
  echo "0 passed, 0 failed (skipped)"
  exit 0
}

# Installs missing Debian packages (nginx, the lua module, ...) when possible.
if [[ -f scripts/deps.sh ]] && grep -q 'openresty)' scripts/deps.sh; then
  bash scripts/deps.sh openresty || echo "note: scripts/deps.sh openresty failed; going on with what is installed" >&2
fi

nginx_bin=$(command -v nginx || true)
[[ -n "$nginx_bin" ]] || skip "nginx is not installed (apt-get install nginx libnginx-mod-http-lua)"
moddir=""
for d in /usr/lib/nginx/modules /usr/share/nginx/modules /usr/local/openresty/nginx/modules; do
  [[ -f "$d/ngx_http_lua_module.so" ]] && { moddir=$d; break; }
done
[[ -n "$moddir" ]] || skip "ngx_http_lua_module.so not found (apt-get install libnginx-mod-http-lua)"

# The LuaJIT build of the C module and the fake GCS.
if [[ ! -f build/luajit/reliablewriter/core.so || ! -f build/luajit/reliablewriter/testbed.so ]]; then make -s LUA=luajit >/dev/null || { echo "make LUA=luajit failed"; exit 1; }; fi
if [[ ! -x bin/reliablewriter-fakegcs || ! -x bin/reliablewriter-chaos ]]; then make -s bins >/dev/null || { echo "make bins failed"; exit 1; }; fi

tmp=$(mktemp -d /tmp/rw-openresty.XXXXXX)
pids=()
cleanup() {
  if [[ -f "$tmp/logs/nginx.pid" ]]; then
    local np; np=$(cat "$tmp/logs/nginx.pid" 2>/dev/null)
    if [[ -n "$np" ]]; then
      kill -QUIT "$np" 2>/dev/null
      for _ in $(seq 50); do kill -0 "$np" 2>/dev/null || break; sleep 0.1; done
      kill -KILL "$np" 2>/dev/null
    fi
  fi
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null; done
  if [[ -n "${RW_KEEP:-}" ]]; then echo "kept $tmp"; else rm -rf "$tmp"; fi
}
trap cleanup EXIT

# Starts a program that prints its URL on the first line; sets $url.
start_url() {
  local out=$1; shift
  "$@" >"$out" 2>"$out.err" &
  pids+=($!)
  url=""
  for _ in $(seq 100); do
    url=$(head -1 "$out" 2>/dev/null)
    [[ "$url" == http* ]] && return 0
    sleep 0.05
  done
  echo "could not start: $*"; cat "$out.err"; exit 1
}
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])' 2>/dev/null ||
  echo $((20000 + RANDOM % 20000)); }

start_url "$tmp/fakegcs.out" nice -n 10 bin/reliablewriter-fakegcs --host 127.0.0.1 --port 0 --store memory --bucket b
gcs=$url
# A slow path to the same fake GCS: the chaos proxy limits the bandwidth, so the
# writer's 4 MiB cache fills and WriteAt must wait. (--bandwidth alone does not
# pace: relay_read() resets ready_at to now + latency, dropping the delay that
# relay_write() added; --latency 0.02 with reads capped at bandwidth/50 bytes
# gives about the asked rate.)
bw=${RW_BANDWIDTH:-4000000}
start_url "$tmp/chaos.out" bin/reliablewriter-chaos --upstream "$gcs" --listen 127.0.0.1:0 --bandwidth "$bw" --latency 0.02
slow=$url
echo "fake GCS $gcs, slow path $slow ($bw B/s)"

# The configuration: the example's, with the paths, port and endpoint filled
# in, plus the test's locations (tests/openresty/handler.lua runs the example).
mkdir -p "$tmp/logs"
ln -s "$moddir" "$tmp/modules"
port=$(free_port)
test_locations() { # $1 = prefix, $2 = endpoint, $3 = mode
  cat <<CONF
    location $1 {
      client_max_body_size 0;
      lua_socket_buffer_size 1m;
      set \$rw_endpoint $2;
      set \$rw_mode "$3";
      set \$rw_max_uploads ${4:-16};
      set \$rw_max_cache_mib 4;
      content_by_lua_block { require("handler").content() }
      log_by_lua_block { require("handler").log() }
    }
CONF
}
{ test_locations /t/ "$gcs" ""; test_locations /slow/ "$slow" ""; test_locations /blocking/ "$slow" block
  test_locations /lim/ "$gcs" "" 1
  test_locations /nobridge/ "$slow" nobridge
  echo '    location = /rwlag { content_by_lua_block { require("handler").lag() } }'
  echo '    location = /rwcalls { content_by_lua_block { require("handler").calls_report() } }'
  echo '    location = /rwgc { content_by_lua_block { local t = require("reliablewriter").util.monotime; local t0 = t(); collectgarbage(); local t1 = t(); collectgarbage(); ngx.say(string.format("%.0f KiB, full collection %.2f ms", collectgarbage("count"), (t1 - t0) * 1000)) } }'
} >"$tmp/extra.conf"
# The worker must read the checkout (lua/, build/, this folder) wherever it is:
# under a master started as root, nginx would run it as "nobody", who cannot
# enter /root, so it runs as the invoking user (a non-root master keeps its own
# user and ignores the directive, so it is only added for root).
user_line=""
(( $(id -u) == 0 )) && user_line="user $(id -un) $(id -gn);"
sed -e "s#/path/to/reliablewriter#$root#g" \
    -e "s#^worker_processes .*#&\n$user_line#" \
    -e "s#listen 127.0.0.1:8080;#listen 127.0.0.1:$port;#" \
    -e "s#set \$rw_endpoint http://127.0.0.1:4443;#set \$rw_endpoint $gcs;#" \
    -e "s#lua_package_path \"#lua_package_path \"$root/tests/openresty/?.lua;#" \
    -e "s#^\( *\)location = /ping .*#&\n\1include $tmp/extra.conf;#" \
    examples/openresty/nginx.conf >"$tmp/nginx.conf"
grep -q "include $tmp/extra.conf" "$tmp/nginx.conf" || { echo "could not adapt examples/openresty/nginx.conf"; exit 1; }
[[ -z "$user_line" ]] || grep -qx "$user_line" "$tmp/nginx.conf" || { echo "could not add '$user_line' to the configuration"; exit 1; }

if ! "$nginx_bin" -p "$tmp" -c "$tmp/nginx.conf" -e "$tmp/logs/error.log" -t >"$tmp/t.out" 2>&1; then
  if grep -qi 'ngx_http_lua_module\|ndk_http_module\|load_module\|unknown directive "lua\|content_by_lua' "$tmp/t.out"; then
    cat "$tmp/t.out"; skip "nginx cannot load its lua module"
  fi
  cat "$tmp/t.out"; echo "nginx -t failed"; exit 1
fi
"$nginx_bin" -p "$tmp" -c "$tmp/nginx.conf" -e "$tmp/logs/error.log" -g 'daemon on; master_process on;' ||
  { cat "$tmp/logs/error.log"; echo "nginx did not start"; exit 1; }
base=http://127.0.0.1:$port
for _ in $(seq 100); do curl -fs "$base/ping" >/dev/null && break; sleep 0.05; done
curl -fs "$base/ping" >/dev/null || { cat "$tmp/logs/error.log"; echo "nginx does not answer on $base"; exit 1; }
echo "nginx $("$nginx_bin" -v 2>&1 | sed 's#.*/##') on $base (prefix $tmp${user_line:+, worker runs as $(id -un):$(id -gn)})"

# No thread before the first upload: nginx forks workers after loading the
# module, so the library must start nothing at load time.
wpid0=$(ps --ppid "$(cat "$tmp/logs/nginx.pid")" -o pid= | tr -d ' ' | head -1)
thr0=$(awk '/^Threads/ { print $2 }' "/proc/$wpid0/status" 2>/dev/null)
[[ "$thr0" == 1 ]] && ok "the worker has one thread before its first upload" || bad "the worker has ${thr0:-?} threads before its first upload"

seed=${RW_SEED:-$(( (RANDOM << 15) | RANDOM ))}
echo "seed $seed"
# Deterministic random bytes from the seed.
mkbody() { # $1 = size, $2 = file, $3 = salt
  if (( $1 == 0 )); then : >"$2"; return; fi
  openssl enc -aes-128-ctr -nosalt -pass "pass:$seed-$3" -pbkdf2 -in /dev/zero 2>/dev/null | head -c "$1" >"$2"
}
field() { sed -n "s/.*\"$1\" *: *\"\{0,1\}\([^\",}]*\).*/\1/p" "$2"; }

# RW_SECTIONS="basic slow disconnect chunked limit concurrent churn reload fallback" (default: all)
want() { [[ -z "${RW_SECTIONS:-}" || " $RW_SECTIONS " == *" $1 "* ]]; }

# 1. Bodies of several sizes through the example's location, compared with the store.
MiB=1048576
i=0
want basic &&
for size in 0 1 1000 262144 $((3 * MiB + 1)) $((20 * MiB)); do
  i=$((i + 1)); name="obj-$seed-$i"
  mkbody "$size" "$tmp/body" "$i"
  code=$(curl -sS -o "$tmp/resp" -w '%{http_code}' --data-binary @"$tmp/body" "$base/upload/b/$name")
  got=$(field size "$tmp/resp")
  if [[ "$code" != 200 || "$got" != "$size" ]]; then
    bad "upload $size B: HTTP $code, $(head -c 300 "$tmp/resp")"; continue
  fi
  curl -sS -o "$tmp/stored" "$gcs/storage/v1/b/b/o/$name?alt=media"
  if cmp -s "$tmp/body" "$tmp/stored"; then
    ok "upload $size B: stored bytes equal the body (crc32c $(field crc32c "$tmp/resp"))"
  else
    bad "upload $size B: stored bytes differ ($(stat -c %s "$tmp/stored") B stored)"
  fi
done

# 2. Latency of /ping while an upload waits on a slow GCS in WriteAt.
# Prints "max median n" of /ping's time_total (ms) while $1 (a pid) runs.
probe() {
  local pid=$1 out=$2
  : >"$out"
  while kill -0 "$pid" 2>/dev/null; do
    curl -s -o /dev/null -w '%{time_total}\n' --max-time 10 "$base/ping" >>"$out"
    sleep 0.02
  done
  stats "$out"
}
# "max median n p95" (ms) of a file of curl time_total lines.
stats() {
  sort -g "$1" | awk '{ a[NR] = $1 * 1000 } END { if (NR == 0) { print "0 0 0 0"; exit }
    p = int(NR * 0.95); if (p < 1) p = 1
    printf "%.1f %.1f %d %.1f\n", a[NR], a[int((NR + 1) / 2)], NR, a[p] }'
}
slow_upload() { # $1 = location, $2 = size, $3 = tag; sets lat_max lat_med lat_n up_code up_secs
  local name="$3-$seed"
  mkbody "$2" "$tmp/$3.body" "$3"
  sleep 0.2
  curl -sS -o "$tmp/$3.resp" -w '%{http_code} %{time_total}\n' --data-binary @"$tmp/$3.body" "$base${1}b/$name" >"$tmp/$3.code" &
  local cpid=$!
  sleep 0.3 # let the cache fill
  read -r lat_max lat_med lat_n lat_p95 < <(probe "$cpid" "$tmp/$3.lat")
  wait "$cpid"
  read -r up_code up_secs <"$tmp/$3.code"
  curl -sS -o "$tmp/$3.stored" "$gcs/storage/v1/b/b/o/$name?alt=media"
  cmp -s "$tmp/$3.body" "$tmp/$3.stored" && stored_ok=1 || stored_ok=0
}
sleeps_of() { grep "rwtest: uri=$1" "$tmp/logs/error.log" | tail -1 | sed -n 's/.* sleeps=\([0-9]*\) slept_ms=\([0-9.]*\) wakes=\([0-9]*\).*/\1 \2 \3/p'; }

max_ms=${RW_MAX_MS:-100}
# The same probe on an idle nginx, for comparison (the machine's own noise).
: >"$tmp/idle.lat"
for _ in $(seq 50); do curl -s -o /dev/null -w '%{time_total}\n' "$base/ping" >>"$tmp/idle.lat"; sleep 0.02; done
read -r i_max i_med i_n i_p95 < <(stats "$tmp/idle.lat")
echo "     /ping on an idle nginx: max ${i_max} ms, p95 ${i_p95} ms, median ${i_med} ms over $i_n requests (load: $(cut -d' ' -f1-3 /proc/loadavg))"
want slow &&
for attempt in 1 2; do
  slow_upload /slow/ $((20 * MiB)) nb$attempt
  read -r nsleeps slept nwakes < <(sleeps_of "/slow/b/nb$attempt-$seed"; echo)
  echo "     20 MiB at $bw B/s through /slow/: HTTP $up_code in ${up_secs}s; waits on the wake-up bridge: ${nwakes:-?}, ngx.sleep polls: ${nsleeps:-?} (${slept:-?} ms)"
  echo "     /ping during it: max ${lat_max} ms, p95 ${lat_p95} ms, median ${lat_med} ms over $lat_n requests"
  # One more try when a busy machine (not the worker) delayed a probe.
  awk -v m="$lat_max" -v b="$max_ms" 'BEGIN { exit !(m < b) }' && break
  [[ $attempt == 1 ]] && echo "     (over ${max_ms} ms once: measuring again, load $(cut -d' ' -f1-3 /proc/loadavg))"
done
if want slow; then
if [[ "$up_code" == 200 && $stored_ok == 1 ]]; then ok "slow upload stored intact"; else bad "slow upload: HTTP $up_code, stored ok=$stored_ok"; fi
if (( ${nwakes:-0} > 0 && ${nsleeps:-0} * 10 <= ${nwakes:-0} )); then ok "WriteAt waited on the wake-up bridge (${nwakes} waits, ${nsleeps} ngx.sleep polls)"
else bad "WriteAt did not wait on the wake-up bridge (${nwakes:-0} waits, ${nsleeps:-0} ngx.sleep polls)"; fi
if (( lat_n >= 10 )) && awk -v m="$lat_max" -v b="$max_ms" 'BEGIN { exit !(m < b) }'; then
  ok "worker not blocked: /ping max ${lat_max} ms < ${max_ms} ms ($lat_n probes)"
else
  bad "worker blocked: /ping max ${lat_max} ms (bound ${max_ms} ms, $lat_n probes)"
fi

# Control: the same with the blocking policy forced; the probe must see it.
slow_upload /blocking/ $((8 * MiB)) blk
echo "     control (blocking policy), 8 MiB: HTTP $up_code in ${up_secs}s; /ping max ${lat_max} ms, median ${lat_med} ms over $lat_n requests"
if awk -v m="$lat_max" -v b="$max_ms" 'BEGIN { exit !(m >= b) }'; then
  ok "control: a blocking wait is detected (/ping max ${lat_max} ms)"
else
  bad "control: a blocking wait was not detected (/ping max ${lat_max} ms): the probe proves nothing"
fi
fi

# 3. Client disconnect mid-upload: the handler aborts, the session is cancelled.
disconnect() { # $1 = location, $2 = tag, $3 = body MiB, $4.. = curl options
  local loc=$1 tag=$2 mib=$3; shift 3
  local name="$tag-$seed" cpid line session abort_ms code
  mkbody $((mib * MiB)) "$tmp/$tag.body" "$tag"
  curl -sS -o /dev/null "$@" --data-binary @"$tmp/$tag.body" "${base}${loc}b/$name" 2>/dev/null &
  cpid=$!
  sleep 1.5
  kill "$cpid" 2>/dev/null; wait "$cpid" 2>/dev/null
  # Probe /ping while the handler notices the disconnect and aborts.
  : >"$tmp/$tag.lat"
  line=""
  for _ in $(seq 200); do
    line=$(grep "rwtest: uri=${loc}b/$name " "$tmp/logs/error.log" | tail -1)
    [[ -n "$line" ]] && break
    curl -s -o /dev/null -w '%{time_total}\n' --max-time 10 "$base/ping" >>"$tmp/$tag.lat"
    sleep 0.02
  done
  local lmax; lmax=$(sort -g "$tmp/$tag.lat" | tail -1 | awk '{ printf "%.1f", $1 * 1000 }')
  session=$(sed -n 's/.* session=\([^ ,]*\).*/\1/p' <<<"$line")
  abort_ms=$(sed -n 's/.* abort_ms=\([^ ]*\).*/\1/p' <<<"$line")
  line=${line#*rwtest: }
  echo "     disconnect ($tag): ${line%% while logging*}; /ping max ${lmax:-0} ms meanwhile"
  if [[ -n "$line" && "$abort_ms" != "-" && -n "$abort_ms" ]]; then
    ok "$tag: the handler called Abort on client disconnect (Abort held the worker ${abort_ms} ms)"
  else
    bad "$tag: no Abort seen after the client disconnected"
  fi
  if [[ "$session" == http* ]]; then
    code=$(curl -s -o /dev/null -w '%{http_code}' -X PUT -H 'Content-Range: bytes */*' -H 'Content-Length: 0' "$session")
    if [[ "$code" == 404 || "$code" == 499 || "$code" == 410 ]]; then
      ok "$tag: the session is cancelled at the server (status query: HTTP $code)"
    else
      bad "$tag: the session is still alive (status query: HTTP $code)"
    fi
  else
    bad "$tag: no session URI recorded ($session)"
  fi
  code=$(curl -s -o /dev/null -w '%{http_code}' "$gcs/storage/v1/b/b/o/$name")
  [[ "$code" == 404 ]] && ok "$tag: no object was created" || bad "$tag: an object exists (HTTP $code)"
}
# A slow client on a fast GCS: the handler is in sock:receive when it goes.
want disconnect && disconnect /t/ gone 20 --limit-rate 2M
# A fast client on a slow GCS: the handler waits in WriteAt with a chunk in flight.
# The body must not fit, by the time curl is killed (1.5 s), into what holds it
# before the handler's last receive: the bytes sent at 4 MB/s (~6 MiB), the
# writer's cache (8 MiB), lua_socket_buffer_size (1 MiB) and both sockets'
# kernel buffers (tcp_wmem's 4 MiB; tcp_rmem's max is 32 MiB here). Else curl's
# close comes after the whole body, a clean end, and no disconnect is seen: with
# 20 MiB that happened in one CI run. 128 MiB is more than all of them together.
want disconnect && disconnect /slow/ gone-slow 128

# 4.-8. Chunked bodies, the per-worker limit, 8 concurrent uploads with /ping,
# 100 uploads in a row (a third cut off), nginx -s reload during uploads.
. tests/openresty/more.sh

# nginx is still healthy, and logged no Lua errors.
curl -fs "$base/ping" >/dev/null && ok "nginx still answers" || bad "nginx no longer answers"
if grep -E '\[(alert|crit|emerg)\]|lua entry thread aborted|runtime error|worker process [0-9]+ exited' "$tmp/logs/error.log" >"$tmp/errs"; then
  bad "nginx error log has errors:"; head -20 "$tmp/errs"
else
  ok "no Lua errors or worker crashes in nginx's error log"
fi

summary
(( fail == 0 ))
