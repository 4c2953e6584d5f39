#!/usr/bin/env bash
# Runs spec/fakegcs_spec.lua against core.so and testbed.so built with ASan/UBSan (Lua 5.4
# with the sanitizer runtimes preloaded; child processes run without them).
# Usage: tests/fake/asan_spec.sh
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
out=build/asan-lua
mkdir -p "$out/reliablewriter" "$out/nopreload"
pkgs="libcurl libmicrohttpd jansson libisal openssl"
# core.so and testbed.so as the Makefile makes them (the test bed with its own
# hidden copy of the core's C objects).
core_c=$(ls csrc/core/*.c csrc/net/*.c csrc/sinks/*.c csrc/io/*.c csrc/proxy/*.c)
asan_so() {
  local so=$1; shift
  cc -std=c11 -D_GNU_SOURCE -fPIC -fvisibility=hidden -pthread -O1 -g -fsanitize=address,undefined \
    -fno-omit-frame-pointer -fno-sanitize-recover=all -Icsrc $(pkg-config --cflags $pkgs lua5.4) \
    -shared -o "$out/reliablewriter/$so" "$@" $(pkg-config --libs $pkgs) -lm
}
asan_so core.so $core_c csrc/lua/*.c
asan_so testbed.so $core_c csrc/lua/lrw.c csrc/testbed/*.c csrc/testbed/lua/*.c
for c in curl openssl head date base64; do
  printf '#!/bin/sh\nunset LD_PRELOAD\nexec %s "$@"\n' "$(command -v $c)" >"$out/nopreload/$c"
  chmod +x "$out/nopreload/$c"
done
PATH="$root/$out/nopreload:$PATH" \
LD_PRELOAD="$(cc -print-file-name=libasan.so) $(cc -print-file-name=libubsan.so)" \
ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
  lua5.4 "$(command -v busted)" --run=inproc --cpath="$out/?.so" spec/fakegcs_spec.lua
