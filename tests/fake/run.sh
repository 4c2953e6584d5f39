#!/usr/bin/env bash
# The fake GCS's integration suites, for scripts/test.sh: the curl-level
# protocol test, the programs' command lines, the peer clients (rclone, Node @google-cloud/storage), and
# spec/fakegcs_spec.lua on an ASan/UBSan build of core.so (~45 s).
set -uo pipefail
cd "$(dirname "$0")"
rc=0
bash protocol.sh || rc=1
bash programs.sh || rc=1
bash peers.sh || rc=1
echo "== spec/fakegcs_spec.lua under ASan/UBSan (tests/fake/asan_spec.sh)"
if bash asan_spec.sh; then echo "ok   - fakegcs spec under ASan/UBSan"; else echo "FAIL - fakegcs spec under ASan/UBSan"; rc=1; fi
exit $rc
