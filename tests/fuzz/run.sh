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
# The budget is shared: fuzz_http gets the larger half, fuzz_frame the rest.
frame_secs=$((secs / 2 > 0 ? secs / 2 : 1))
http_secs=$((secs - frame_secs > 0 ? secs - frame_secs : 1))
mkdir -p build/fuzz/corpus
srcs=(csrc/testbed/fg_*.c csrc/core/*.c)
clang -g -O1 -std=c11 -D_GNU_SOURCE -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=all \
  -Icsrc $(pkg-config --cflags libmicrohttpd jansson libisal openssl) \
  -o build/fuzz/fuzz_http tests/fuzz/fuzz_http.c "${srcs[@]}" \
  $(pkg-config --libs libmicrohttpd jansson libisal openssl) -pthread -lm
ASAN_OPTIONS=detect_leaks=1 ./build/fuzz/fuzz_http -max_total_time="$http_secs" -max_len=4096 \
  -timeout=20 -print_final_stats=1 -artifact_prefix=build/fuzz/ build/fuzz/corpus tests/fuzz/corpus

# The RWP/1 frame reader (docs/PROTOCOL.md section 3.2), before and after auth.
mkdir -p build/fuzz/corpus-frame
clang -g -O1 -std=c11 -D_GNU_SOURCE -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=all \
  -Icsrc $(pkg-config --cflags libisal openssl) \
  -o build/fuzz/fuzz_frame tests/fuzz/fuzz_frame.c csrc/proxy/frame.c csrc/proxy/auth.c csrc/core/error.c csrc/core/checksum.c \
  $(pkg-config --libs libisal openssl) -pthread -lm
ASAN_OPTIONS=detect_leaks=1 ./build/fuzz/fuzz_frame -max_total_time="$frame_secs" -max_len=70000 \
  -timeout=20 -print_final_stats=1 -artifact_prefix=build/fuzz/frame- build/fuzz/corpus-frame
