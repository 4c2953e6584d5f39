#!/usr/bin/env bash
# make bench: one benchmark table (issue 14). The same random file, the same
# sink (bin/reliablewriter-fakegcs --store discard, its own process), the same
# chunk size (8 MiB) for every client, in one run:
#   1. no faults: MiB/s (median of the runs), CPU seconds, peak RSS, ratio to libcurl;
#   2. the fault schedule of bench/faults (bin/reliablewriter-chaos, one reset per
#      16 MiB on average, seed 7): goodput and which clients survived;
#   3. WAN: the chaos proxy as a delay line (20 ms one way, 50 MiB/s, 4 MiB window).
# Every client is its own process, measured by GNU time (%e %U %S %M) and bounded
# by timeout; every upload is checked (size and CRC32C the fake computed over the
# bytes it received). Writes OUT/latest.md, OUT/latest.dat and OUT/latest.png.
# Not a test: it judges no speed. 127.0.0.1 only.
#   bench/run.sh [--smoke] [--out DIR] [--size MIB] [--runs N] [--no-peers] [--seed N]
#   --smoke: 16 MiB, 1 run, no peers, into build/bench-smoke (CI: tests/bench/run.sh)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

usage() {
  [[ -n ${1:-} ]] && echo "bench/run.sh: $1" >&2
  echo "usage: bench/run.sh [--smoke] [--out DIR] [--size MIB] [--runs N] [--no-peers] [--seed N]" >&2
  exit 2
}
need_num() { [[ ${2:-} =~ ^[1-9][0-9]*$ ]] || usage "$1 needs a whole number >= 1, got '${2:-}'"; }

smoke=0 out="" size=256 runs=5 fault_runs=2 wan_runs=3 peers=1 seed=""
while (($#)); do
  case $1 in
    --smoke) smoke=1 size=16 runs=1 fault_runs=1 wan_runs=1 peers=0 ;;
    --out) [[ -n ${2:-} ]] || usage "--out needs a directory"; out=$2; shift ;;
    --size) need_num "$1" "${2:-}"; size=$2; shift ;;
    --runs) need_num "$1" "${2:-}"; runs=$2; shift ;;
    --seed) [[ ${2:-} =~ ^[0-9]+$ ]] || usage "--seed needs a whole number, got '${2:-}'"; seed=$2; shift ;;
    --no-peers) peers=0 ;;
    -h | --help) usage ;;
    *) usage "unknown argument '$1'" ;;
  esac
  shift
done
[[ -n $out ]] || { ((smoke)) && out=build/bench-smoke || out=bench/results; }
seed=${seed:-${RW_TEST_SEED:-$(( $(date +%s) % 1000000000 ))}}
chunk=8 cache=32 fault_seed=7 fault_rate=0.0625
limit=300
((smoke)) && limit=60

for p in /usr/bin/time gnuplot curl openssl lua5.4 cc; do
  command -v "$p" >/dev/null || { echo "bench: $p is missing: scripts/deps.sh bench installs it" >&2; exit 1; }
done

work=$(mktemp -d)
# shellcheck source=bench/lib/bench.sh
. bench/lib/bench.sh
cleanup() {
  local rc=$?
  stop_all_servers
  rm -rf "$work"
  ((rc == 0)) || echo "bench/run.sh: stopped with exit status $rc (the line above says why, if a command did)" >&2
}
trap cleanup EXIT
trap 'echo "bench/run.sh: failed at line $LINENO: $BASH_COMMAND" >&2' ERR

echo "bench: $size MiB, ${chunk} MiB chunks, $runs run(s), data seed $seed (--seed or RW_TEST_SEED repeats it)" >&2
load_start=$(cut -d' ' -f1-3 /proc/loadavg)
nice make -s -j1 all bins >"$work/make.log" 2>&1 || { cat "$work/make.log" >&2; exit 1; }
# shellcheck disable=SC2046 # pkg-config prints several flags
cc -O2 -Wall -o "$work/curl_ref" bench/writer/curl_ref.c $(pkg-config --cflags --libs libcurl) -lisal
export LUA_PATH="$root/lua/?.lua;$root/lua/?/init.lua;;" LUA_CPATH="$root/build/lua5.4/?.so;;"
export RCLONE_CONFIG=/dev/null NODE_PATH="$root/tests/fake/node/node_modules"

# The data: an AES-CTR keystream of the seed (random, repeatable).
data="$work/data"
head -c $((size << 20)) /dev/zero | openssl enc -aes-256-ctr -nosalt -pass "pass:bench-$seed" -pbkdf2 >"$data" 2>/dev/null
bytes=$(stat -c %s "$data")
((bytes == size << 20)) || { echo "bench: could not make $size MiB of data" >&2; exit 1; }

start_server fake bin/reliablewriter-fakegcs --port 0 --store discard --bucket b
fake=$server_url
# The reference's first upload: the data's CRC32C, and the file in the page cache.
want_crc=$("$work/curl_ref" "$fake" b warmup "$data" "$chunk" | awk '{print $4}')
[[ -n $want_crc ]] || { echo "bench: the warm-up upload failed" >&2; exit 1; }

# ---- the clients ----
clients=(libcurl write_file writeat rwup rclone node curl)
declare -A missing
if ((!peers)); then
  missing[rclone]="skipped (--no-peers)" missing[node]="skipped (--no-peers)"
else
  command -v rclone >/dev/null || missing[rclone]="not installed (scripts/deps.sh bench)"
  if ! command -v node >/dev/null; then missing[node]="not installed (scripts/deps.sh bench)"
  elif [[ ! -d $NODE_PATH/@google-cloud/storage ]]; then missing[node]="not installed (scripts/peers.sh node)"
  fi
fi

label() {
  case $1 in
    libcurl) echo "libcurl (bench/writer/curl_ref.c)" ;;
    write_file) echo "reliablewriter w:write_file" ;;
    writeat) echo "reliablewriter WriteAt (1 MiB strings)" ;;
    rwup) echo "rwup cp" ;;
    rclone) echo "rclone copyto" ;;
    node) echo "Node @google-cloud/storage" ;;
    curl) echo "curl CLI (POST, one PUT)" ;;
  esac
}

short() { # the chart's label
  case $1 in
    libcurl) echo "libcurl" ;; write_file) echo "write_file" ;; writeat) echo "WriteAt" ;; rwup) echo "rwup cp" ;;
    rclone) echo "rclone" ;; node) echo "Node" ;; curl) echo "curl CLI" ;;
  esac
}

# client_cmd CLIENT SECTION URL OBJECT: sets the array $cmd.
client_cmd() {
  local c=$1 section=$2 url=$3 obj=$4
  case $c in
    libcurl) cmd=("$work/curl_ref" "$url" b "$obj" "$data" "$chunk") ;;
    write_file) cmd=(lua5.4 bench/writer/lua_up.lua file "$url" "$obj" "$data" "$cache" "$chunk") ;;
    writeat) cmd=(lua5.4 bench/writer/lua_up.lua writeat "$url" "$obj" "$data" "$cache" "$chunk") ;;
    rwup) cmd=(env STORAGE_EMULATOR_HOST="$url" XDG_STATE_HOME="$work/state" lua5.4 bin/rwup cp --chunk "${chunk}M"
            --cache "${cache}M" --no-resume --quiet "$data" "gs://b/$obj") ;;
    rclone) cmd=(rclone copyto "$data" ":gcs:b/$obj" --gcs-endpoint "$url/storage/v1/" --gcs-anonymous
              --gcs-bucket-policy-only -q --retries 3 --low-level-retries 10) ;;
    node) if [[ $section = faults ]]; then # with ifGenerationMatch=0: without a precondition it never retries
            cmd=(node bench/faults/node_upload.js "$url" b "$obj" "$data")
          else
            cmd=(node bench/writer/node_up.js "$url" b "$obj" "$data")
          fi ;;
    curl) cmd=(bash bench/lib/curl_cli.sh "$url" b "$obj" "$data") ;;
  esac
}

results="$work/results.tsv"
: >"$results"
# one SECTION CLIENT RUN URL: one measured upload; sets $check and the m_* values.
one() {
  local section=$1 c=$2 run=$3 url=$4 obj="$1-$2-$3-$RANDOM" log
  log="$work/log-$section-$c-$run"
  client_cmd "$c" "$section" "$url" "$obj"
  measure "$limit" "$log" "${cmd[@]}"
  check=$(check_object "$fake" "$obj" "$bytes" "$want_crc")
  if [[ $m_status != 0 || $check != ok ]] && [[ $section != faults ]]; then
    echo "bench: $section $c run $run: exit $m_status, object: $check; its output ends:" >&2
    tail -3 "$log" | sed 's/^/    /' >&2
  fi
}
# record SECTION CLIENT RUN RESETS: the last upload as a line of $results:
#   section client run exit check wall cpu rss_kib resets last_output_line
record() {
  local last
  last=$( (grep -v '^[[:space:]]*$' "$work/log-$1-$2-$3" || true) | tail -1 | tr -d '|\t' |
    sed -E 's|https?://[^ "]*|URL|g; s|^[0-9]{4}/[0-9]{2}/[0-9]{2} [0-9:]{8} ||' | cut -c1-100)
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$m_status" "${check// /_}" \
    "$m_wall" "$m_cpu" "$m_rss" "$4" "$last" >>"$results"
}

present() { local c; for c in "${clients[@]}"; do [[ -z ${missing[$c]:-} ]] && echo "$c"; done; }
mapfile -t run_clients < <(present)

# 1. No faults: interleaved rounds, so drift on a shared machine hits every client alike.
echo "bench: 1/3 no faults ($runs run(s) per client)" >&2
for r in $(seq "$runs"); do
  for c in "${run_clients[@]}"; do one direct "$c" "$r" "$fake" && record direct "$c" "$r" -; done
done

# 2. Faults: each run through a fresh chaos proxy (the same schedule for every
#    client); without faults through the same proxy with no faults (relay only).
# chaos_run SECTION CLIENT RUN CHAOS_ARGS...: one upload through a fresh proxy.
chaos_run() {
  local section=$1 c=$2 run=$3
  shift 3
  start_server "chaos-$section-$c-$run" bin/reliablewriter-chaos --upstream "$fake" "$@"
  local pid=$server_pid url=$server_url
  one "$section" "$c" "$run" "$url"
  stop_server "$pid" # it prints what it injected as it stops
  resets=$(sed -n 's/.* resets \([0-9]*\).*/\1/p' "$work/chaos-$section-$c-$run.log" | tail -1)
  record "$section" "$c" "$run" "${resets:--}"
}
echo "bench: 2/3 faults (reset_per_mib=$fault_rate, seed $fault_seed; $fault_runs run(s) each)" >&2
for r in $(seq "$fault_runs"); do
  for c in "${run_clients[@]}"; do
    chaos_run clean "$c" "$r" --seed "$fault_seed"
    chaos_run faults "$c" "$r" --seed "$fault_seed" --reset-per-mib "$fault_rate"
  done
done

# 3. WAN: 20 ms one way, 50 MiB/s per connection, 4 MiB window.
echo "bench: 3/3 WAN (20 ms, 50 MiB/s; $wan_runs run(s) each)" >&2
for r in $(seq "$wan_runs"); do
  for c in "${run_clients[@]}"; do
    chaos_run wan "$c" "$r" --latency 0.02 --bandwidth 52428800 --window 4194304
  done
done
load_end=$(cut -d' ' -f1-3 /proc/loadavg)

# ---- the report ----
# stat_of SECTION CLIENT FIELD [ok-only]: the median of FIELD (wall=6 cpu=7 rss=8) over the runs
vals() { awk -F'\t' -v s="$1" -v c="$2" -v f="$3" '$1 == s && $2 == c && $4 == 0 && $5 == "ok" {print $f}' "$results"; }
nok() { awk -F'\t' -v s="$1" -v c="$2" '$1 == s && $2 == c && $4 == 0 && $5 == "ok" {n++} END {print n + 0}' "$results"; }
nruns() { awk -F'\t' -v s="$1" -v c="$2" '$1 == s && $2 == c {n++} END {print n + 0}' "$results"; }
mibs() { awk -v b="$bytes" -v t="$1" 'BEGIN{if (t == "-" || t <= 0) print "-"; else printf "%.1f", b / 1048576 / t}'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN{if (a == "-" || b == "-" || b <= 0) print "-"; else printf "%.2f", a / b}'; }
fmt() { awk -v v="$1" -v f="$2" 'BEGIN{if (v == "-" || v == "") print "-"; else printf f, v}'; }

# speed_table SECTION: one row per client
speed_table() {
  local s=$1 c ref wall cpu rss rate
  ref=$(mibs "$(vals "$s" libcurl 6 | median)")
  echo "| client | MiB/s | CPU s | peak RSS MiB | ratio to libcurl | bytes checked |"
  echo "|---|---:|---:|---:|---:|---|"
  for c in "${clients[@]}"; do
    if [[ -n ${missing[$c]:-} ]]; then
      echo "| $(label "$c") | - | - | - | - | ${missing[$c]} |"
      continue
    fi
    wall=$(vals "$s" "$c" 6 | median) cpu=$(vals "$s" "$c" 7 | median) rss=$(vals "$s" "$c" 8 | sort -g | tail -1)
    rate=$(mibs "$wall")
    echo "| $(label "$c") | $rate | $(fmt "$cpu" %.2f) | $(fmt "${rss:--}" %.0f | awk '{print ($1 == "-") ? "-" : sprintf("%.1f", $1 / 1024)}') | $(ratio "$rate" "$ref") | $(nok "$s" "$c")/$(nruns "$s" "$c") right |"
  done
}

fault_table() {
  local c clean faulted n
  echo "| client | seconds, no faults | seconds, faults | goodput | survived | resets injected |"
  echo "|---|---:|---:|---:|---|---:|"
  for c in "${clients[@]}"; do
    if [[ -n ${missing[$c]:-} ]]; then
      echo "| $(label "$c") | - | - | - | ${missing[$c]} | - |"
      continue
    fi
    clean=$(vals clean "$c" 6 | median) faulted=$(vals faults "$c" 6 | median) n=$(nok faults "$c")
    local rs
    rs=$(awk -F'\t' -v c="$c" '$1 == "faults" && $2 == c {printf "%s%s", sep, $9; sep = ","}' "$results")
    local why
    why=$(awk -F'\t' -v c="$c" '$1 == "faults" && $2 == c && !($4 == 0 && $5 == "ok") {
      printf "exit %s, object %s: %s", $4, $5, ($10 == "" ? "(no output)" : $10); exit}' "$results")
    local surv
    surv="no: $n/$(nruns faults "$c") finished with the right bytes ($why)"
    ((n == $(nruns faults "$c"))) && surv="yes: $n/$n, bytes right"
    ((n > 0 && n < $(nruns faults "$c"))) && surv="partly: $n/$(nruns faults "$c") finished with the right bytes ($why)"
    echo "| $(label "$c") | $(fmt "$clean" %.2f) | $(fmt "$faulted" %.2f) | $(ratio "$clean" "$faulted") | $surv | $rs |"
  done
}

machine() {
  echo "- date: $(date -u '+%Y-%m-%d %H:%M UTC')"
  echo "- commit: $(git rev-parse --short HEAD)$(git diff --quiet HEAD -- csrc lua bin 2>/dev/null || echo ' (with local changes)')"
  echo "- machine: $(nproc) CPUs, $(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo), kernel $(uname -r),"
  echo "  $(awk '/MemTotal/ {printf "%.0f GiB", $2 / 1048576}' /proc/meminfo) RAM; load average $load_start at the start, $load_end at the end"
  echo "- **the machine is shared** with other engineers' builds and tests while this runs: absolute"
  echo "  numbers are noisy (single runs vary up to 2x); compare the ratios within one run."
  echo "- data: $size MiB from an AES-CTR keystream (seed $seed), ${chunk} MiB chunks; ours with a ${cache} MiB cache"
}

report="$out/latest.md"
mkdir -p "$out"
{
  echo "# Benchmark: make bench"
  echo
  echo "Written by \`bench/run.sh$( ((smoke)) && echo " --smoke")\`; do not edit by hand."
  echo
  machine
  echo
  echo "## Uploads without faults ($size MiB, median of $runs run(s))"
  echo
  echo "Sink: \`bin/reliablewriter-fakegcs --store discard\` (its own process). MiB/s = bytes / wall time of"
  echo "the client's process (start-up included, the same for every client); CPU s = user + system of"
  echo "the process (median), peak RSS = GNU time's %M (the largest of the runs). \"bytes checked\": the"
  echo "object's size and the CRC32C the fake computed over the bytes it received, against the file's."
  echo
  speed_table direct
  echo
  echo "## Under faults (the schedule of bench/faults)"
  echo
  echo "Each run through a fresh \`bin/reliablewriter-chaos --seed $fault_seed --reset-per-mib $fault_rate\`"
  echo "(one connection reset per 16 MiB on average; the same schedule for every client), against the"
  echo "same through the proxy without faults. Goodput = seconds without faults / seconds with them"
  echo "(medians of $fault_runs run(s)); survived = finished with the right size and CRC32C (else the"
  echo "first failed run's exit status, what the fake holds, and the client's last line of output)."
  echo "Every client runs with its defaults (ours: backoff from 100 ms), so a reset costs each a new"
  echo "connection, a status query and a backoff: on 127.0.0.1, where the upload itself takes a fraction"
  echo "of a second, that fixed cost weighs more than on a real link. bench/faults/run.sh measures our"
  echo "writer alone with a 10 ms backoff and a slower in-process sink (goodput 0.80-0.85 there)."
  echo
  fault_table
  echo
  echo "## WAN: 20 ms one way, 50 MiB/s ($size MiB, median of $wan_runs run(s))"
  echo
  echo "Through \`bin/reliablewriter-chaos --latency 0.02 --bandwidth 52428800 --window 4194304\` in front"
  echo "of the fake: one connection moves at most 50 MiB/s. A session takes one chunk at a time, and a"
  echo "chunked client waits a round trip (40 ms) for each chunk's reply before it sends the next: with"
  echo "8 MiB chunks (160 ms at 50 MiB/s) that caps it near 8 / (0.16 + 0.04) = 40 MiB/s; rclone's 16 MiB"
  echo "chunks near 44 MiB/s; the curl CLI's single PUT waits once. Bigger chunks (rwup --chunk) help here."
  echo
  speed_table wan
  echo
  echo "## Notes"
  echo
  echo "- Clients: libcurl = bench/writer/curl_ref.c (one connection, a chunk at a time, ISA-L CRC32C, no"
  echo "  retries); ours = bench/writer/lua_up.lua (Lua 5.4) and bin/rwup; Node = bench/writer/node_up.js"
  echo "  (bench/faults/node_upload.js under faults: with ifGenerationMatch=0, else it never retries);"
  echo "  curl = bench/lib/curl_cli.sh. Chunks: 8 MiB, except rclone 1.60 (16 MiB, no flag to change it,"
  echo "  MD5 instead of CRC32C) and the curl CLI (the whole file in one PUT, no checksum)."
  echo "- Chart: latest.png (MiB/s per client: no faults, under faults, WAN; 0 where a client failed)."
  echo "- Raw runs: latest.dat is the chart's data; rerun with \`bench/run.sh --seed $seed\`."
} >"$report"

# The chart's data: client, MiB/s without faults, under faults, WAN.
dat="$out/latest.dat"
{
  echo "# client	no_faults	faults	wan	(MiB/s, medians; 0: failed or missing)"
  for c in "${clients[@]}"; do
    printf '"%s%s"' "$(short "$c")" "${missing[$c]:+ (n/a)}"
    for s in direct faults wan; do
      v=$(mibs "$(vals "$s" "$c" 6 | median)")
      [[ $v = - ]] && v=0
      printf '\t%s' "$v"
    done
    echo
  done
} >"$dat"
gnuplot -e "datafile='$dat'; outfile='$out/latest.png'; subtitle='$size MiB, $(date -u +%Y-%m-%d), $(nproc) shared CPUs'" \
  bench/lib/chart.gp 2>"$work/gnuplot.log" || { cat "$work/gnuplot.log" >&2; exit 1; }

cat "$report"
echo "bench: wrote $report, $dat and $out/latest.png" >&2
