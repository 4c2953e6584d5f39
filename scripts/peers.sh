#!/usr/bin/env bash
# Installs what the fake GCS peer tests need: rclone (Debian) and the Node
# client @google-cloud/storage (npm ci into tests/fake/node). A no-op when
# everything is already there.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)

need_apt=()
command -v rclone >/dev/null || need_apt+=(rclone)
command -v node >/dev/null || need_apt+=(nodejs)
command -v npm >/dev/null || need_apt+=(npm)
command -v curl >/dev/null || need_apt+=(curl)
if ((${#need_apt[@]})); then
  sudo=""; [[ $(id -u) -eq 0 ]] || sudo=sudo
  $sudo apt-get update -qq
  $sudo apt-get install -y -qq "${need_apt[@]}"
fi

node_dir="$root/tests/fake/node"
lock="$node_dir/package-lock.json"
stamp="$node_dir/node_modules/.package-lock.json"
if [[ ! -d "$node_dir/node_modules/@google-cloud/storage" || "$lock" -nt "$stamp" ]]; then
  (cd "$node_dir" && npm ci --no-audit --no-fund --loglevel=error)
fi
echo "peers.sh: rclone $(rclone version | head -1 | awk '{print $2}'), node $(node --version), @google-cloud/storage ready"
