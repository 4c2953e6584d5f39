#!/usr/bin/env bash
# Peer integration tests: independent GCS clients (rclone, Node's
# @google-cloud/storage) upload 0 B, 1 B, 256 KiB, 256 KiB+1 and 40 MiB of
# random data to bin/reliablewriter-fakegcs and read back identical bytes.
# Each peer passes or fails on its own: one that cannot be installed (its
# registry unreachable: scripts/peers.sh prints the tail of the install log)
# fails, and the other still runs.
# Usage: tests/fake/peers.sh   (RW_TEST_SEED to repeat a run)
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
make -s bins >/dev/null

seed=${RW_TEST_SEED:-$(( $(date +%s) % 1000000000 ))}
echo "peers: seed=$seed (set RW_TEST_SEED to repeat)"
work=$(mktemp -d)
out="$work/url"
bin/reliablewriter-fakegcs --bucket b >"$out" 2>"$work/server.log" &
pid=$!
cleanup() { kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
for _ in $(seq 50); do [[ -s "$out" ]] && break; sleep 0.1; done
url=$(head -1 "$out")
[[ -n "$url" ]] || { echo "peers: the fake did not start" >&2; cat "$work/server.log" >&2; exit 1; }

# Seeded random files (AES-CTR keystream of the seed, never i % 256).
mkdir -p "$work/src"
for size in 0 1 262144 262145 41943040; do
  head -c "$size" /dev/zero | openssl enc -aes-256-ctr -nosalt -pass "pass:$seed-$size" \
    -pbkdf2 >"$work/src/f$size" 2>/dev/null
  [[ $(stat -c %s "$work/src/f$size") -eq $size ]] || { echo "bad test file" >&2; exit 1; }
done

pass=0 fail=0
peer() { # NAME: installs the peer, then runs peer_NAME in a subshell under set -e
  echo "== $1"
  if ! bash scripts/peers.sh "$1"; then
    fail=$((fail + 1)); echo "FAIL - $1: could not be installed (see the log above)"; return
  fi
  # Not inside an `if`: there bash would ignore set -e in the subshell too.
  local st
  set +e; (set -e; "peer_$1"); st=$?; set -e
  if ((st == 0)); then pass=$((pass + 1)); echo "ok   - $1"; else fail=$((fail + 1)); echo "FAIL - $1 (exit $st)"; fi
}

peer_rclone() {
  export RCLONE_CONFIG=/dev/null
  local rc=(--gcs-endpoint "$url/storage/v1/" --gcs-anonymous --gcs-bucket-policy-only -q)
  rclone copy "$work/src" :gcs:b/rclone "${rc[@]}"
  rclone copy :gcs:b/rclone "$work/back" "${rc[@]}"
  for f in "$work"/src/*; do
    cmp "$f" "$work/back/$(basename "$f")"
    echo "ok rclone $(basename "$f") $(stat -c %s "$f") bytes"
  done
  rclone check "$work/src" :gcs:b/rclone "${rc[@]}"
}

peer_node() {
  node tests/fake/node/peer.js "$url" b "$seed"
}

peer rclone
peer node
echo "peers: $pass passed, $fail failed"
(( fail == 0 ))
