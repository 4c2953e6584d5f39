# shellcheck shell=bash disable=SC2034,SC2154  # sets m_* and server_* for run.sh, reads its $work
# bench/lib/bench.sh: helpers for bench/run.sh (sourced, not run).
# Servers are started as their own processes on 127.0.0.1 and stopped on exit;
# every client run is bounded by `timeout` and measured by GNU time.

bench_pids=()

# start_server NAME CMD...: starts CMD (it prints its URL on its first line of
# stdout), waits up to 10 s for that line and sets $server_url and $server_pid.
start_server() {
  local name=$1
  shift
  "$@" >"$work/$name.url" 2>"$work/$name.log" &
  server_pid=$!
  bench_pids+=("$server_pid")
  local _
  for _ in $(seq 100); do
    [[ -s "$work/$name.url" ]] && break
    kill -0 "$server_pid" 2>/dev/null || break
    sleep 0.1
  done
  server_url=$(head -1 "$work/$name.url")
  if [[ $server_url != http://127.0.0.1:* ]]; then
    echo "bench: $name did not start on 127.0.0.1 (got '$server_url'); its log:" >&2
    cat "$work/$name.log" >&2
    return 1
  fi
}

# stop_server PID: SIGTERM, then waits (bounded: SIGKILL after 10 s).
stop_server() {
  local pid=$1 _
  kill -TERM "$pid" 2>/dev/null || return 0
  for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
}

stop_all_servers() {
  local p
  for p in "${bench_pids[@]+"${bench_pids[@]}"}"; do stop_server "$p"; done
}

# measure SECONDS LOG CMD...: runs CMD under `timeout SECONDS` and GNU time;
# sets $m_status (CMD's exit status, 124 on timeout), $m_wall (s, of time+timeout+CMD), $m_cpu
# (user + system s, children included) and $m_rss (peak RSS, KiB).
measure() {
  local limit=$1 log=$2 tf="$work/time.out"
  shift 2
  m_status=0
  local t0 t1 u s r
  t0=$(date +%s%N) # GNU time's %e has 10 ms steps: the wall clock is taken here
  /usr/bin/time -o "$tf" -f '%e %U %S %M' timeout "$limit" "$@" >"$log" 2>&1 </dev/null || m_status=$?
  t1=$(date +%s%N)
  read -r _ u s r < <(tail -1 "$tf")
  m_wall=$(awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.3f", (b - a) / 1e9}') m_rss=$r
  m_cpu=$(awk -v u="$u" -v s="$s" 'BEGIN{printf "%.2f", u + s}')
}

# check_object URL OBJECT SIZE CRC32C: the fake's record of OBJECT (size and the
# CRC32C it computed over the bytes it received) against what was written.
# Prints "ok", "missing" or what differs.
check_object() {
  local url=$1 obj=$2 size=$3 crc=$4 meta got_size got_crc
  meta=$(curl -s --max-time 10 "$url/storage/v1/b/b/o/$obj" || true)
  got_size=$(sed -n 's/.*"size":"\([0-9]*\)".*/\1/p' <<<"$meta")
  got_crc=$(sed -n 's/.*"crc32c":"\([^"]*\)".*/\1/p' <<<"$meta")
  if [[ -z $got_size ]]; then echo missing
  elif [[ $got_size != "$size" ]]; then echo "size $got_size"
  elif [[ $got_crc != "$crc" ]]; then echo "crc32c $got_crc"
  else echo ok
  fi
}

# median: of the numbers on stdin, one a line.
median() {
  sort -g | awk '{a[NR] = $1} END {if (NR == 0) print "-"; else print (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2}'
}
