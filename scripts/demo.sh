#!/usr/bin/env bash
# The README's demo command: installs what is missing, builds, runs the demo.
set -euo pipefail
cd "$(dirname "$0")/.."
export GCE_METADATA_HOST=127.0.0.1:1
bash scripts/deps.sh build
make -s -j"$(nproc)" >/dev/null
LUA_PATH="lua/?.lua;lua/?/init.lua;;" LUA_CPATH="build/lua5.4/?.so;;" exec lua5.4 examples/demo.lua "$@"
