#!/usr/bin/env bash
# Runs spec/fakegcs_spec.lua against a core.so built with ASan/UBSan (Lua 5.4
# with the sanitizer runtimes preloaded; child processes run without them).
# Usage: tests/fake/asan_spec.sh
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
out=build/asan-lua
mkdir -p "$out/reliablewriter" "$out/nopreload"
pkgs="libcurl libmicrohttpd jansson libisal openssl"
cc -std=c11 -D_GNU_SOURCE -fPIC -pthread -O1 -g -fsanitize=address,undefined \
  -fno-omit-frame-pointer -fno-sanitize-recover=all -Icsrc $(pkg-config --cflags $pkgs lua5.4) \
  -shared -o "$out/reliablewriter/core.so" $(ls csrc/*/*.c | grep -v '^csrc/bin/') \
  $(pkg-config --libs $pkgs) -lm
for c in curl openssl head date base64; do
  printf '#!/bin/sh\nunset LD_PRELOAD\nexec %s "$@"\n' "$(command -v $c)" >"$out/nopreload/$c"
  chmod +x "$out/nopreload/$c"
done
PATH="$root/$out/nopreload:$PATH" \
LD_PRELOAD="$(cc -print-file-name=libasan.so) $(cc -print-file-name=libubsan.so)" \
ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
  lua5.4 "$(command -v busted)" --run=inproc --cpath="$out/?.so" spec/fakegcs_spec.lua
