#!/usr/bin/env bash
# Builds the libFuzzer harness with ASan/UBSan and runs it for a while.
#   tests/fuzz/run.sh [seconds=60]
# New interesting inputs go to build/fuzz/corpus (the seeds stay in tests/fuzz/corpus).
# tests/fuzz/corpus/regress-* are inputs that once crashed the harness (build/fuzz/crash-*),
# kept as seeds once they no longer do.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
secs=${1:-60}
mkdir -p build/fuzz/corpus
srcs=(csrc/testbed/fg_*.c csrc/core/*.c)
clang -g -O1 -std=c11 -D_GNU_SOURCE -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=all \
  -Icsrc $(pkg-config --cflags libmicrohttpd jansson libisal openssl) \
  -o build/fuzz/fuzz_http tests/fuzz/fuzz_http.c "${srcs[@]}" \
  $(pkg-config --libs libmicrohttpd jansson libisal openssl) -pthread -lm
ASAN_OPTIONS=detect_leaks=1 ./build/fuzz/fuzz_http -max_total_time="$secs" -max_len=4096 \
  -timeout=20 -print_final_stats=1 -artifact_prefix=build/fuzz/ build/fuzz/corpus tests/fuzz/corpus
