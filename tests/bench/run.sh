#!/usr/bin/env bash
# The benchmark's smoke mode (bench/run.sh --smoke: 16 MiB, 1 run, no peers)
# runs to the end and writes its report: the three tables with a row per
# client, the machine, the chart's data and a PNG. It judges no speed; it
# checks that every upload of ours (and the reference's, without faults) left
# the right bytes, and that ours survived the fault schedule.
set -euo pipefail
cd "$(dirname "$0")/../.."
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
fail() { echo "bench smoke: FAILED: $*" >&2; exit 1; }

# gnuplot and GNU time are the bench set's (a no-op when they are there)
if ! command -v gnuplot >/dev/null || [[ ! -x /usr/bin/time ]]; then bash scripts/deps.sh bench; fi

seed=${RW_TEST_SEED:-$RANDOM}
echo "bench smoke: seed=$seed (set RW_TEST_SEED to repeat)"
if ! timeout 300 bash bench/run.sh --smoke --seed "$seed" --out "$out" >"$out/stdout" 2>"$out/stderr"; then
  tail -20 "$out/stderr" >&2
  fail "bench/run.sh --smoke exited non-zero"
fi
md=$out/latest.md
for f in latest.md latest.dat latest.png; do [[ -s $out/$f ]] || fail "no $f in $out"; done
cmp -s "$md" "$out/stdout" || fail "the report printed is not latest.md"
[[ $(head -c 8 "$out/latest.png" | od -An -tx1 | tr -d ' \n') = 89504e470d0a1a0a ]] || fail "latest.png is not a PNG"

grep -q '^# Benchmark: make bench' "$md" || fail "no title in latest.md"
for h in '## Uploads without faults (16 MiB, median of 1 run' '## Under faults' '## WAN: 20 ms one way, 50 MiB/s (16 MiB'; do
  grep -qF "$h" "$md" || fail "no section '$h' in latest.md"
done
grep -q "^- machine: $(nproc) CPUs, .*kernel $(uname -r)" "$md" || fail "the machine line is missing or wrong"
grep -q '^- date: ' "$md" || fail "no date in latest.md"
grep -qi 'machine is shared' "$md" || fail "latest.md does not say the machine is shared"
grep -q "(seed $seed)" "$md" || fail "latest.md does not name the data seed"

# table SECTION_HEADING: the table rows under that heading
table() { awk -v h="$1" 'index($0, h) == 1 {on = 1; next} on && /^## / {exit} on && /^\| / && !/^\| client \|/' "$md"; }
num='[0-9]+(\.[0-9]+)?'
for sec in '## Uploads without faults' '## WAN'; do
  rows=$(table "$sec")
  [[ $(wc -l <<<"$rows") -eq 7 ]] || fail "$sec: want 7 client rows, got: $rows"
  for c in 'libcurl' 'reliablewriter w:write_file' 'reliablewriter WriteAt' 'rwup cp' 'curl CLI'; do
    grep -Eq "^\| ${c}[^|]* \| $num \| $num \| $num \| $num \| 1/1 right \|$" <<<"$rows" ||
      fail "$sec: no complete row for '$c' (MiB/s, CPU s, RSS, ratio, bytes right) in: $rows"
  done
  grep -q '^| libcurl .* | 1.00 | 1/1 right |$' <<<"$rows" || fail "$sec: libcurl's ratio to itself is not 1.00"
  for c in 'rclone copyto' 'Node @google-cloud/storage'; do
    grep -q "^| $c | - | - | - | - | skipped (--no-peers) |$" <<<"$rows" || fail "$sec: no 'skipped' row for $c"
  done
done
rows=$(table '## Under faults')
[[ $(wc -l <<<"$rows") -eq 7 ]] || fail "faults: want 7 client rows, got: $rows"
for c in 'reliablewriter w:write_file' 'reliablewriter WriteAt' 'rwup cp'; do
  grep -Eq "^\| ${c}[^|]* \| $num \| $num \| $num \| yes: 1/1, bytes right \| [0-9]+ \|$" <<<"$rows" ||
    fail "faults: '$c' did not survive with the right bytes: $rows"
done
grep -Eq "^\| libcurl[^|]* \| $num \| " <<<"$rows" || fail "faults: no time without faults for libcurl"

[[ $(grep -vc '^#' "$out/latest.dat") -eq 7 ]] || fail "latest.dat: want 7 rows"
awk -F'\t' '!/^#/ && !($2 ~ /^[0-9.]+$/ && $3 ~ /^[0-9.]+$/ && $4 ~ /^[0-9.]+$/) {bad = 1} END {exit bad}' \
  "$out/latest.dat" || fail "latest.dat: a row without three numbers"
! grep -q 'reliablewriter error:' "$out/stdout" "$out/stderr" || fail "library error lines in the output"
echo "bench smoke: ok ($(grep -c '^|' "$md") table lines, $(stat -c %s "$out/latest.png") byte chart)"
