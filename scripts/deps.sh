#!/usr/bin/env bash
# Installs the Debian packages reliablewriter needs, only when some are missing,
# without Recommends. apt's output goes to build/logs/deps-apt.log (its tail is
# printed on a failure). Then checks that the programs of the set run.
# Usage: scripts/deps.sh [build|test|openresty|peers|bench|all]   (default: test)
#   build      compilers, Lua 5.4, LuaJIT, the libraries (lua-cjson: rwup's state and NDJSON)
#   test       + what the suites call: busted, clang (fuzz, sanitizers), valgrind,
#              luarocks, curl, openssl (random test data), python3 (a unix socket in
#              the specs, a free port), ps (procps); mkfifo, cmp, timeout... are in
#              Debian's essential set
#   openresty  + nginx and its lua module (tests/openresty)
#   peers      + nginx, rclone, node and npm (the peer tests; scripts/peers.sh
#              installs each on its own)
#   bench      + the peers, gnuplot-nox (the chart) and time (GNU time: CPU and peak RSS
#              of each client): make bench
set -euo pipefail
what=${1:-test}
root=$(cd "$(dirname "$0")/.." && pwd)

build_pkgs=(build-essential pkg-config lua5.4 liblua5.4-dev luajit2 libluajit2-5.1-dev
  libcurl4-openssl-dev libmicrohttpd-dev libjansson-dev libssl-dev libisal-dev lua-cjson)
test_pkgs=(lua-busted clang libclang-rt-14-dev valgrind curl luarocks procps openssl python3-minimal)
openresty_pkgs=(nginx libnginx-mod-http-lua)
peer_pkgs=(rclone nodejs npm)
build_progs=(cc make pkg-config lua5.4 luajit)
test_progs=(busted clang valgrind curl luarocks ps openssl python3 mkfifo cmp timeout stat truncate)
openresty_progs=(nginx)
peer_progs=(rclone node npm)
bench_pkgs=(gnuplot-nox time)
bench_progs=(gnuplot /usr/bin/time)

pkgs=("${build_pkgs[@]}") progs=("${build_progs[@]}")
case "$what" in
  build) ;;
  test) pkgs+=("${test_pkgs[@]}") progs+=("${test_progs[@]}") ;;
  openresty) pkgs+=("${test_pkgs[@]}" "${openresty_pkgs[@]}") progs+=("${test_progs[@]}" "${openresty_progs[@]}") ;;
  peers | all)
    pkgs+=("${test_pkgs[@]}" "${openresty_pkgs[@]}" "${peer_pkgs[@]}")
    progs+=("${test_progs[@]}" "${openresty_progs[@]}" "${peer_progs[@]}") ;;
  bench)
    pkgs+=("${test_pkgs[@]}" "${peer_pkgs[@]}" "${bench_pkgs[@]}") progs+=("${test_progs[@]}" "${peer_progs[@]}" "${bench_progs[@]}") ;;
  *) echo "deps.sh: unknown set '$what' (build|test|openresty|peers|bench|all)" >&2; exit 2 ;;
esac

missing=()
for p in "${pkgs[@]}"; do
  st=$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)
  [[ "$st" == "install ok installed" ]] || missing+=("$p")
done
# nodejs may come from elsewhere (e.g. a preinstalled node): accept a working node+npm.
if node --version >/dev/null 2>&1 && npm --version >/dev/null 2>&1; then
  tmp=(); for p in "${missing[@]+"${missing[@]}"}"; do [[ "$p" == nodejs || "$p" == npm ]] || tmp+=("$p"); done
  missing=("${tmp[@]+"${tmp[@]}"}")
fi

if [[ ${#missing[@]} -gt 0 ]]; then
  mkdir -p "$root/build/logs"
  log="$root/build/logs/deps-apt.log"
  echo "deps.sh: installing ${missing[*]} (apt's output: $log)" >&2
  sudo=""
  if [[ $(id -u) -ne 0 ]]; then
    command -v sudo >/dev/null || { echo "deps.sh: not root and no sudo: as root, apt-get install ${missing[*]}" >&2; exit 1; }
    sudo=sudo
  fi
  export DEBIAN_FRONTEND=noninteractive
  if ! { $sudo apt-get update -q && $sudo apt-get install -y -q --no-install-recommends "${missing[@]}"; } >"$log" 2>&1 </dev/null; then
    echo "deps.sh: apt-get failed installing ${missing[*]}; the last lines of $log:" >&2
    tail -n 25 "$log" | sed 's/^/    /' >&2
    exit 1
  fi
fi

absent=()
for p in "${progs[@]}"; do command -v "$p" >/dev/null || absent+=("$p"); done
if [[ ${#absent[@]} -gt 0 ]]; then
  echo "deps.sh: still missing after the install: ${absent[*]}" >&2
  exit 1
fi
