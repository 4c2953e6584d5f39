#!/usr/bin/env bash
# Benchmark (not a test): a 1 GiB resumable upload in 8 MiB chunks from a plain
# libcurl client to the fake GCS in discard mode, against nginx discarding the
# same request bodies, in one run. Prints one table with the ratio.
#   bench/fakegcs/run.sh [total_mib=1024] [chunk_mib=8] [rounds=3]
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
total=${1:-1024} chunk=${2:-8} rounds=${3:-3}
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT
make -s bins >/dev/null
cc -O2 -o "$work/upload" bench/fakegcs/upload.c $(pkg-config --cflags --libs libcurl)

start_fake() { # args -> url
  bin/reliablewriter-fakegcs --bucket b "$@" >"$work/fake.url" 2>/dev/null &
  pids+=($!)
  for _ in $(seq 50); do [[ -s "$work/fake.url" ]] && break; sleep 0.05; done
  head -1 "$work/fake.url"; : >"$work/fake.url"
}

port=$((20000 + RANDOM % 20000))
mkdir -p "$work/nginx/logs"
cat >"$work/nginx/nginx.conf" <<CONF
load_module /usr/lib/nginx/modules/ndk_http_module.so;
load_module /usr/lib/nginx/modules/ngx_http_lua_module.so;
daemon off;
master_process off;
worker_processes 1;
pid $work/nginx/nginx.pid;
error_log $work/nginx/logs/error.log crit;
events { worker_connections 64; }
http {
  access_log off;
  client_body_temp_path $work/nginx/body;
  proxy_temp_path $work/nginx/proxy;
  fastcgi_temp_path $work/nginx/fastcgi;
  uwsgi_temp_path $work/nginx/uwsgi;
  scgi_temp_path $work/nginx/scgi;
  server {
    listen 127.0.0.1:$port;
    client_max_body_size 0;
    client_body_buffer_size 16m;
    keepalive_requests 100000;
    # read the whole body (into memory), then answer: a plain 'return' would
    # answer early and the client would stop sending
    location / { content_by_lua_block { ngx.req.read_body() ngx.exit(308) } }
  }
}
CONF
nginx -p "$work/nginx" -c "$work/nginx/nginx.conf" 2>/dev/null &
pids+=($!)
sleep 0.3

fake_md5=$(start_fake --store discard --md5)
fake_nomd5=$(start_fake --store discard --no-md5)
best() { # url -> best MiB/s over rounds
  local b=0 r
  for _ in $(seq "$rounds"); do
    r=$("$work/upload" "$1" "$total" "$chunk" | awk '{print $3}')
    b=$(awk -v a="$b" -v r="$r" 'BEGIN{print (r>a)?r:a}')
  done
  echo "$b"
}
n=$(best "http://127.0.0.1:$port/upload")
f1=$(best "$fake_md5/upload/storage/v1/b/b/o?uploadType=resumable&name=bench")
f2=$(best "$fake_nomd5/upload/storage/v1/b/b/o?uploadType=resumable&name=bench")
printf "%-38s %10s %8s\n" "1 GiB upload, ${chunk} MiB chunks (best of $rounds)" "MiB/s" "ratio"
printf "%-38s %10.1f %8s\n" "nginx+lua (reads, drops the body)" "$n" "1.00"
printf "%-38s %10.1f %8.2f\n" "fakegcs discard (crc32c + md5)" "$f1" "$(awk -v a="$f1" -v b="$n" 'BEGIN{print a/b}')"
printf "%-38s %10.1f %8.2f\n" "fakegcs discard (crc32c; the default)" "$f2" "$(awk -v a="$f2" -v b="$n" 'BEGIN{print a/b}')"
