#!/usr/bin/env bash
# Runs the Lua specs of the core objects under valgrind: no leaks, no errors.
# (Specs that talk to servers run in the plain pass; they are slow under valgrind.)
set -euo pipefail
cd "$(dirname "$0")/.."
specs=(spec/errors_spec.lua spec/context_spec.lua spec/backoff_spec.lua spec/ratelimit_spec.lua
  spec/workgroup_spec.lua)
for s in spec/valgrind/*_spec.lua; do [[ -f "$s" ]] && specs+=("$s"); done
busted_main=$(command -v busted)
exec valgrind -q --error-exitcode=9 --leak-check=full --errors-for-leak-kinds=definite \
  --show-leak-kinds=definite lua5.4 "$busted_main" --run=inproc "${specs[@]}"
