#!/usr/bin/env bash
# The fake GCS's integration suites, for scripts/test.sh: the curl-level
# protocol test and the peer clients (rclone, Node @google-cloud/storage).
set -uo pipefail
cd "$(dirname "$0")"
rc=0
bash protocol.sh || rc=1
bash peers.sh || rc=1
exit $rc
