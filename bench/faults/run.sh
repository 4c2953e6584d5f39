#!/usr/bin/env bash
# Benchmark (issue 5): a 256 MiB upload (8 MiB chunks) with one reset per
# 16 MiB on average against the same upload without faults, for our writer
# (dialer and chaos proxy) and, through bin/reliablewriter-chaos with the same
# schedule, rclone and the Node client (@google-cloud/storage). Prints one
# table; goodput ratio target for our writer >= 0.70. Not part of the tests.
#   bench/faults/run.sh [MIB] [SEED]      (MIB default 256)
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
mib=${1:-256}
seed=${2:-${RW_TEST_SEED:-7}}
rate=0.0625
make -s module bins >/dev/null

work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

rows="$work/rows"
echo "faults bench: $mib MiB, 8 MiB chunks, reset_per_mib=$rate, seed=$seed" >&2
lua5.4 bench/faults/goodput.lua "$mib" "$rate" "$seed" 3 2>"$work/goodput.log" | grep '^row|' >"$rows"

# Peers: the fake GCS as a program, a chaos proxy in front of it.
bin/reliablewriter-fakegcs --bucket b >"$work/fake.url" 2>"$work/fake.log" &
pids+=($!)
for _ in $(seq 50); do [[ -s "$work/fake.url" ]] && break; sleep 0.1; done
url=$(head -1 "$work/fake.url")
head -c $((mib * 1048576)) /dev/zero | openssl enc -aes-256-ctr -nosalt -pass "pass:$seed" -pbkdf2 \
  >"$work/src" 2>/dev/null

chaos() { # chaos NAME RATE: starts a proxy, sets $purl
  bin/reliablewriter-chaos --upstream "$url" --seed "$seed" --reset-per-mib "$2" \
    >"$work/$1.url" 2>"$work/$1.log" &
  pids+=($!)
  for _ in $(seq 50); do [[ -s "$work/$1.url" ]] && break; sleep 0.1; done
  purl=$(head -1 "$work/$1.url")
}

verify() { # verify OBJECT: bytes right? (read straight from the fake)
  if curl -sf "$url/storage/v1/b/b/o/$(printf %s "$1" | sed 's|/|%2F|g')?alt=media" | cmp -s - "$work/src"; then
    echo true; else echo false; fi
}

resets_of() { sed -n 's/.*resets \([0-9]*\).*/\1/p' "$work/$1.log" | tail -1; }

peer() { # peer NAME RATE LABEL CMD...: runs CMD with $purl set, appends a row
  local name=$1 r=$2 label=$3
  shift 3
  chaos "$name" "$r"
  local pid=${pids[-1]}
  local t0 t1 ok=true
  t0=$(date +%s.%N)
  if ! PURL=$purl timeout 600 "$@" >"$work/$name.out" 2>&1; then ok=false; fi
  t1=$(date +%s.%N)
  grep -q '^fail' "$work/$name.out" && ok=false
  kill -TERM "$pid"; wait "$pid" 2>/dev/null || true
  local good=false
  [[ $ok == true ]] && good=$(verify "$name")
  printf 'row|%s|%s|%.2f|%s|%s\n' "$label" "$ok" "$(echo "$t1 - $t0" | bc)" "$good" "$(resets_of "$name")" >>"$rows"
  [[ $ok == true ]] || { echo "--- $label output:" >&2; tail -5 "$work/$name.out" >&2; }
}

export RCLONE_CONFIG=/dev/null
rclone_up() {
  rclone copyto "$work/src" ":gcs:b/$1" --gcs-endpoint "$PURL/storage/v1/" --gcs-anonymous \
    --gcs-bucket-policy-only -q --retries 3 --low-level-retries 10
}
node_up() {
  NODE_PATH="$root/tests/fake/node/node_modules" node bench/faults/node_upload.js "$PURL" b "$1" "$work/src"
}
export -f rclone_up node_up
export work root

peer rclone-clean 0 "rclone, no faults" bash -c 'rclone_up rclone-clean'
peer rclone-faults "$rate" "rclone, chaos proxy" bash -c 'rclone_up rclone-faults'
if [[ -d tests/fake/node/node_modules/@google-cloud/storage ]]; then
  peer node-clean 0 "node, no faults" bash -c 'node_up node-clean'
  peer node-faults "$rate" "node, chaos proxy" bash -c 'node_up node-faults'
fi

awk -F'|' -v mib="$mib" '
  { name[NR] = $2; fin[NR] = $3; secs[NR] = $4; good[NR] = $5; rs[NR] = $6
    split($2, w, ","); client[NR] = w[1]; if ($2 ~ /no faults/) clean[w[1]] = $4 }
  END {
    printf "%-37s %-9s %9s %9s %-11s %7s %8s\n", "client, path", "finished", "seconds", "MiB/s", "bytes right", "resets", "goodput"
    for (i = 1; i <= NR; i++) {
      ratio = (fin[i] == "true" && clean[client[i]] > 0) ? sprintf("%.2f", clean[client[i]] / secs[i]) : "-"
      mbs = (fin[i] == "true" && secs[i] > 0) ? sprintf("%.1f", mib / secs[i]) : "-"
      printf "%-37s %-9s %9s %9s %-11s %7s %8s\n", name[i], fin[i], secs[i], mbs, good[i], rs[i], ratio
    }
  }' "$rows"
echo "(goodput = time without faults / time with them, per client; target >= 0.70 for reliablewriter;"
echo " reliablewriter rows: best of 3 alternating runs, peers: one run each; \"relay only\" is the"
echo " dialer with no faults: what the relay itself costs, so dialer/relay-only is the recovery cost alone)"
