#!/usr/bin/env bash
# Installs the Debian packages reliablewriter needs, only when some are missing.
# Usage: scripts/deps.sh [build|test|peers|all]   (default: test)
set -euo pipefail
what=${1:-test}

build_pkgs=(build-essential pkg-config lua5.4 liblua5.4-dev luajit2 libluajit2-5.1-dev
  libcurl4-openssl-dev libmicrohttpd-dev libjansson-dev libssl-dev libisal-dev)
test_pkgs=(lua-busted clang libclang-rt-14-dev valgrind curl luarocks procps)
peer_pkgs=(nginx libnginx-mod-http-lua rclone nodejs npm)

pkgs=("${build_pkgs[@]}")
case "$what" in
  build) ;;
  test) pkgs+=("${test_pkgs[@]}") ;;
  peers) pkgs+=("${test_pkgs[@]}" "${peer_pkgs[@]}") ;;
  all) pkgs+=("${test_pkgs[@]}" "${peer_pkgs[@]}") ;;
  *) echo "deps.sh: unknown set '$what' (build|test|peers|all)" >&2; exit 2 ;;
esac

missing=()
for p in "${pkgs[@]}"; do
  st=$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)
  [[ "$st" == "install ok installed" ]] || missing+=("$p")
done
# nodejs may come from elsewhere (e.g. a preinstalled node): accept a working node+npm.
if command -v node >/dev/null && command -v npm >/dev/null; then
  tmp=(); for p in "${missing[@]}"; do [[ "$p" == nodejs || "$p" == npm ]] || tmp+=("$p"); done
  missing=("${tmp[@]+"${tmp[@]}"}")
fi
[[ ${#missing[@]} -eq 0 ]] && exit 0

echo "deps.sh: installing ${missing[*]}" >&2
sudo=""; [[ $(id -u) -eq 0 ]] || sudo="sudo"
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
