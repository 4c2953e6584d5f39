#!/usr/bin/env bash
# Benchmark (not a test): the ReliableReader's hedging under stalls and its
# read_to_file throughput against plain libcurl, on the in-process fake GCS.
#   bench/reader/run.sh [reads=2000] [threads=8] [size_mib=256] [seed]
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
src=$(ls csrc/core/*.c csrc/net/*.c csrc/sinks/*.c csrc/io/*.c csrc/proxy/*.c csrc/testbed/*.c)
cc -std=c11 -D_GNU_SOURCE -O2 -pthread -Icsrc $(pkg-config --cflags libcurl jansson libisal openssl libmicrohttpd) \
  -o "$work/bench" bench/reader/bench.c $src \
  $(pkg-config --libs libmicrohttpd libcurl jansson libisal openssl) -pthread -lm
RW_LOG_LEVEL=error "$work/bench" "$@"
