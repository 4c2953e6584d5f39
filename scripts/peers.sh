#!/usr/bin/env bash
# Installs what the fake GCS peer tests need: rclone (Debian) and the Node
# client @google-cloud/storage (npm ci into tests/fake/node). A no-op when
# everything is already there.
# Usage: scripts/peers.sh [rclone|node|all]   (default: all)
# apt's and npm's output goes to build/logs/peers-*.log; on a failure the tail
# of that log is printed and the exit status is 1, so the caller can fail the
# one peer that could not be installed (a registry unreachable) and go on.
set -uo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
what=${1:-all}
case "$what" in rclone | node | all) ;; *) echo "peers.sh: unknown peer '$what' (rclone|node|all)" >&2; exit 2 ;; esac
logs="$root/build/logs"
mkdir -p "$logs"

# run LOG CMD...: runs CMD with its output in LOG; on failure prints LOG's tail.
run() {
  local log=$1; shift
  echo "+ $*" >>"$log"
  if "$@" >>"$log" 2>&1 </dev/null; then return 0; fi
  echo "peers.sh: '$*' failed; the last lines of $log:" >&2
  tail -n 25 "$log" | sed 's/^/    /' >&2
  return 1
}

# apt_install PEER PKG...: installs the Debian packages, without Recommends.
apt_install() {
  local peer=$1; shift
  local log="$logs/peers-$peer-apt.log" sudo=""
  : >"$log"
  if [[ $(id -u) -ne 0 ]]; then
    command -v sudo >/dev/null || { echo "peers.sh: $peer needs $* installed (as root: apt-get install $*)" >&2; return 1; }
    sudo=sudo
  fi
  echo "peers.sh: installing $* for $peer (log: $log)" >&2
  export DEBIAN_FRONTEND=noninteractive
  run "$log" $sudo apt-get update -q && run "$log" $sudo apt-get install -y -q --no-install-recommends "$@"
}

rclone_ready() {
  rclone version >/dev/null 2>&1 || apt_install rclone rclone || return 1
  echo "peers.sh: rclone $(rclone version 2>/dev/null | head -1 | awk '{print $2}') ready"
}

node_ready() {
  local need=()
  node --version >/dev/null 2>&1 || need+=(nodejs)
  npm --version >/dev/null 2>&1 || need+=(npm)
  if ((${#need[@]})); then apt_install node "${need[@]}" || return 1; fi
  local node_dir="$root/tests/fake/node"
  local lock="$node_dir/package-lock.json" stamp="$node_dir/node_modules/.package-lock.json"
  if [[ ! -d "$node_dir/node_modules/@google-cloud/storage" || "$lock" -nt "$stamp" ]]; then
    local log="$logs/peers-node-npm.log"
    : >"$log"
    echo "peers.sh: npm ci in tests/fake/node (log: $log)" >&2
    (cd "$node_dir" && run "$log" npm ci --no-audit --no-fund --no-progress) || return 1
  fi
  echo "peers.sh: node $(node --version), @google-cloud/storage ready"
}

rc=0
if [[ $what == rclone || $what == all ]]; then rclone_ready || rc=1; fi
if [[ $what == node || $what == all ]]; then node_ready || rc=1; fi
exit $rc
