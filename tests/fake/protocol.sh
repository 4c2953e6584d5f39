#!/usr/bin/env bash
# Curl-level protocol test of bin/reliablewriter-fakegcs: every upload rule and
# every fault instruction, with seeded random data, bytes read back and compared.
# Usage: tests/fake/protocol.sh   (RW_TEST_SEED to repeat a run)
set -uo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
make -s bins >/dev/null || exit 1

seed=${RW_TEST_SEED:-$(( $(date +%s) % 1000000000 ))}
echo "protocol: seed=$seed (set RW_TEST_SEED to repeat)"
work=$(mktemp -d)
bin/reliablewriter-fakegcs --bucket b >"$work/url" 2>"$work/server.log" &
pid=$!
trap 'kill $pid 2>/dev/null; wait $pid 2>/dev/null; rm -rf "$work"' EXIT
for _ in $(seq 50); do [[ -s "$work/url" ]] && break; sleep 0.1; done
U=$(head -1 "$work/url")
Q=262144
fails=0 passes=0

ok() { # name cond...
  local name=$1; shift
  if "$@"; then passes=$((passes + 1)); else fails=$((fails + 1)); echo "FAIL: $name" >&2; fi
}
eq() { [[ "$1" == "$2" ]] || { echo "  got '$1', want '$2'" >&2; return 1; }; }

# rand NAME SIZE: seeded random bytes (AES-CTR keystream, never i % 256)
rand() {
  head -c "$2" /dev/zero | openssl enc -aes-256-ctr -nosalt -pass "pass:$seed-$1" -pbkdf2 \
    >"$work/$1" 2>/dev/null
}
# slice NAME OFFSET LEN -> file NAME.OFFSET
slice() { tail -c +"$(($2 + 1))" "$work/$1" | head -c "$3" >"$work/$1.$2"; }

# req METHOD URL [curl args...]: sets CODE, RANGE, BODY, EXIT
req() {
  local m=$1 u=$2; shift 2
  CODE=$(curl -s -X "$m" -D "$work/h" -o "$work/b" -w '%{http_code}' "$@" "$u")
  EXIT=$?
  RANGE=$(tr -d '\r' <"$work/h" 2>/dev/null | sed -n 's/^[Rr]ange: //p')
  BODY=$(tr -d '\0' <"$work/b" 2>/dev/null)
}
start() { # name [extra query] [curl args] -> LOC
  local n=$1 q=${2:-}; shift 2 2>/dev/null || shift $#
  LOC=$(curl -s -X POST -D - -o /dev/null -H 'Content-Type: application/json' -d '{}' "$@" \
    "$U/upload/storage/v1/b/b/o?uploadType=resumable&name=$n$q" | tr -d '\r' |
    sed -n 's/^[Ll]ocation: //p')
}
put() { # range [file] [curl args]
  local r=$1 f=${2:-}; shift 2 2>/dev/null || shift $#
  if [[ -n "$f" ]]; then req PUT "$LOC" -H "Content-Range: $r" --data-binary "@$f" "$@"
  else req PUT "$LOC" -H "Content-Range: $r" "$@"; fi
}
same() { curl -s "$U/storage/v1/b/b/o/$1?alt=media" | cmp -s - "$work/$2"; }
retry_test() { # json instructions -> RT
  RT=$(curl -s -X POST "$U/retry_test" -d "{\"instructions\":$1}" | sed -n 's/.*"id":"\([^"]*\)".*/\1/p')
}

# ---- resumable rules ----
rand d1 $((2 * Q + 777)); slice d1 0 $Q; slice d1 $Q $((Q + 777))
start o1
ok "location has upload_id" eq "$(grep -c upload_id= <<<"$LOC")" 1
put "bytes */*"; ok "308 without Range before any byte" eq "$CODE/$RANGE" "308/"
put "bytes 0-$((Q - 1))/*" "$work/d1.0"; ok "chunk 308 Range" eq "$CODE/$RANGE" "308/bytes=0-$((Q - 1))"
put "bytes $Q-$((2 * Q + 776))/$((2 * Q + 777))" "$work/d1.$Q"
ok "final 200" eq "$CODE" 200
ok "final size string" eq "$(grep -o '"size":"[0-9]*"' <<<"$BODY")" "\"size\":\"$((2 * Q + 777))\""
ok "bytes back" same o1 d1
put "bytes */*"; ok "finished session answers 200" eq "$CODE" 200

rand d2 $((Q - 1)); start o2
put "bytes 0-$((Q - 2))/*" "$work/d2"; ok "small non-final chunk 400" eq "$CODE" 400
ok "error is GCS JSON" eq "$(grep -c '"error":{"code":400' <<<"$BODY")" 1

rand d3 $((Q + 5000)); start o3
put "bytes 0-$((Q + 4999))/*" "$work/d3"
ok "non-multiple persists largest multiple" eq "$RANGE" "bytes=0-$((Q - 1))"
put "bytes 0-$((Q + 4999))/$((Q + 5000))" "$work/d3"
ok "bytes before the persisted offset skipped" eq "$CODE" 200
ok "bytes back (skip)" same o3 d3

rand d4 $Q; start o4
put "bytes $Q-$((2 * Q - 1))/*" "$work/d4"; ok "gap 400" eq "$CODE" 400
put "bytes 0-$((Q - 1))/*" "$work/d4"; put "bytes */$Q"
ok "bytes */N finalizes" eq "$CODE" 200
start o5; put "bytes */0"; ok "empty object" eq "$CODE" 200

start o6
for bad in "bytes 5-1/*" "bytes 0-9/5" "bits 0-9/*" "bytes 0-9" "bytes x-y/*" "bytes */-1"; do
  put "$bad" "$work/d4"; ok "malformed '$bad' 400" eq "$CODE" 400
done

start o7 "" -H "X-Upload-Content-Length: 10"
rand d7 11; put "bytes 0-10/11" "$work/d7"; ok "X-Upload-Content-Length enforced" eq "$CODE" 400

start g "&ifGenerationMatch=0"; rand dg 10; put "bytes 0-9/10" "$work/dg"
ok "ifGenerationMatch=0 on new" eq "$CODE" 200
start g "&ifGenerationMatch=0"; put "bytes 0-9/10" "$work/dg"
ok "ifGenerationMatch=0 on existing 412" eq "$CODE" 412

start h; put "bytes 0-9/10" "$work/dg" -H "X-Goog-Hash: crc32c=AAAAAA=="
ok "crc32c mismatch 400" eq "$CODE" 400
ok "...a JSON error about the CRC32C not matching" \
  eq "$(grep -c '"error":{"code":400.*"message":"Provided CRC32C does not match' <<<"$BODY")" 1
req GET "$U/storage/v1/b/b/o/h"; ok "no object after mismatch" eq "$CODE" 404
start h5; put "bytes 0-9/10" "$work/dg" -H "X-Goog-Hash: md5=AAAAAAAAAAAAAAAAAAAAAA=="
ok "md5 mismatch 400, a JSON error about the MD5 not matching" \
  eq "$CODE/$(grep -c '"error":{"code":400.*"message":"Provided MD5 hash does not match' <<<"$BODY")" "400/1"
req GET "$U/storage/v1/b/b/o/h5"; ok "no object after md5 mismatch" eq "$CODE" 404
put "bytes */*"; ok "...the failed session repeats its 400" eq "$CODE" 400

start c; req DELETE "$LOC"; ok "cancel 499" eq "$CODE" 499
put "bytes */*"; ok "then 404" eq "$CODE" 404

start n; put "bytes 0-$((Q - 1))/*" "$work/d4" -H "X-GUploader-No-308: yes"
ok "X-GUploader-No-308" eq "$CODE/$RANGE" "200/bytes=0-$((Q - 1))"

# ---- bad input ----
req PUT "$U/upload/storage/v1/b/b/o?uploadType=resumable&upload_id=nope" -H "Content-Range: bytes */*"
ok "unknown upload id 404" eq "$CODE" 404
req POST "$U/upload/storage/v1/b/b/o?uploadType=resumable" -d '{}'; ok "missing name 400" eq "$CODE" 400
req PATCH "$U/upload/storage/v1/b/b/o?uploadType=resumable&name=x"; ok "wrong method 405" eq "$CODE" 405
start o8; rand d8 $((Q + 1)); put "bytes 0-$((Q - 1))/*" "$work/d8"
ok "body longer than announced 400" eq "$CODE" 400
head -c 100000 /dev/zero | tr '\0' a | sed 's/^/X-Big: /' >"$work/midhdr"
req GET "$U/storage/v1/b" -H "@$work/midhdr"
ok "100 KB of headers: JSON 431" eq "$CODE/$(grep -c '"error":{"code":431' <<<"$BODY")" "431/1"
rand d431 $((Q + 5))
req POST "$U/upload/storage/v1/b/b/o?uploadType=media&name=h431" -H "@$work/midhdr" --data-binary "@$work/d431"
ok "100 KB of headers with a body: 431 after the body" eq "$CODE/$EXIT" "431/0"
req GET "$U/storage/v1/b/b/o/h431"; ok "no object after 431" eq "$CODE" 404
head -c 2000000 /dev/zero | tr '\0' a | sed 's/^/X-Big: /' >"$work/bighdr"
req GET "$U/storage/v1/b" -H "@$work/bighdr"
# past its 1 MiB pool libmicrohttpd answers 431 itself and closes while curl
# may still be sending, so curl can report the reset instead of the status
ok "2 MB of headers: 431 or closed, never served" test "$CODE" = 431 -o \( "$CODE" = 000 -a "$EXIT" -ne 0 \)
req GET "$U/storage/v1/b"; ok "still serving" eq "$CODE" 200

# ---- simple uploads and objects ----
rand dm 100000
req POST "$U/upload/storage/v1/b/b/o?uploadType=media&name=m%2Fa" --data-binary "@$work/dm"
ok "media upload" eq "$CODE" 200
ok "media bytes" same "m%2Fa" dm
req GET "$U/storage/v1/b/b/o/m%2Fa?alt=media" -H "Range: bytes=10-19"
ok "range download 206" eq "$CODE" 206
ok "range bytes" eq "$(od -An -tx1 <"$work/b")" "$(tail -c +11 "$work/dm" | head -c 10 | od -An -tx1)"
req GET "$U/storage/v1/b/b/o?prefix=m/"; ok "list with prefix" eq "$(grep -c '"name":"m/a"' <<<"$BODY")" 1
req POST "$U/storage/v1/b/b/o/both/compose" -d '{"sourceObjects":[{"name":"m/a"},{"name":"o1"}]}'
ok "compose" eq "$CODE" 200
cat "$work/dm" "$work/d1" >"$work/both"; ok "compose bytes" same both both
req DELETE "$U/storage/v1/b/b/o/both"; ok "delete 204" eq "$CODE" 204
req POST "$U/storage/v1/b?project=p" -d '{"name":"nb"}'; ok "bucket create" eq "$CODE" 200
req GET "$U/storage/v1/b/nb"; ok "bucket get" eq "$CODE" 200

# ---- every fault instruction ----
H() { echo "x-retry-test-id: $RT"; }
retry_test '{"storage.objects.insert":["return-reset-connection","return-503","return-408","return-401","return-400"]}'
for want in reset 503 408 401 400; do
  req POST "$U/upload/storage/v1/b/b/o?uploadType=resumable&name=f" -H "$(H)" -d '{}'
  if [[ $want == reset ]]; then ok "return-reset-connection (curl 56)" eq "$EXIT" 56
  else ok "return-$want" eq "$CODE" "$want"; fi
done
req GET "$U/retry_test/$RT"; ok "retry test completed" eq "$(grep -c '"completed":true' <<<"$BODY")" 1

rand df $((4 * Q)); slice df 0 $((2 * Q)); slice df $Q $((3 * Q))
retry_test '{"storage.objects.insert":["return-503-after-256K"]}'
start f1 "" -H "$(H)"
put "bytes 0-$((2 * Q - 1))/*" "$work/df.0" -H "$(H)"; ok "return-503-after-256K" eq "$CODE" 503
put "bytes */*"; ok "...persisted exactly 256K" eq "$RANGE" "bytes=0-$((Q - 1))"
put "bytes $Q-$((4 * Q - 1))/$((4 * Q))" "$work/df.$Q"; ok "...then completes" eq "$CODE" 200
ok "...bytes back" same f1 df

retry_test '{"storage.objects.insert":["return-broken-stream"]}'
start f2; rand d2b $((Q + 10)); put "bytes 0-$((Q + 9))/$((Q + 10))" "$work/d2b" -H "$(H)"
ok "return-broken-stream cuts the reply" test "$EXIT" -ne 0
put "bytes */*"; ok "...after persisting it" eq "$CODE" 200
ok "...bytes back" same f2 d2b

retry_test '{"storage.objects.insert":["stall-for-1s-after-256K"]}'
start f3; t0=$(date +%s%N); put "bytes 0-$((2 * Q - 1))/*" "$work/df.0" -H "$(H)"; t1=$(date +%s%N)
ok "stall-for-1s-after-256K stalls" test $(((t1 - t0) / 1000000)) -ge 950
ok "...then answers" eq "$CODE" 308

retry_test '{"storage.objects.insert":["return-broken-stream-final-chunk-after-100B"]}'
start f4 "" -H "$(H)"
put "bytes 0-$((Q - 1))/*" "$work/d4" -H "$(H)"; ok "final-chunk fault skips non-final" eq "$CODE" 308
put "bytes */*" "" -H "$(H)"; ok "final-chunk fault skips a status query before the end" eq "$CODE" 308
rand d4b 1000; put "bytes $Q-$((Q + 999))/$((Q + 1000))" "$work/d4b" -H "$(H)"
# storage-testbench: the upload completes, the reply is a 200 with the first 100 bytes of its JSON
ok "return-broken-stream-final-chunk-after-100B: 200 with a 100-byte body" \
  eq "$CODE/$EXIT/$(stat -c %s "$work/b")" "200/0/100"
cat "$work/d4" "$work/d4b" >"$work/f4"; ok "...the object is final" same f4 f4
for q in "bytes */*" "bytes */$((Q + 1000))"; do
  put "$q"; ok "...status query '$q' answers 200 with the object" \
    eq "$CODE/$(grep -o '"size":"[0-9]*"' <<<"$BODY")" "200/\"size\":\"$((Q + 1000))\""
done
req GET "$U/retry_test/$RT"; ok "...instruction used once" eq "$(grep -c '"completed":true' <<<"$BODY")" 1

retry_test '{"storage.objects.get":["return-broken-stream-after-256K"]}'
req GET "$U/storage/v1/b/b/o/f1?alt=media" -H "$(H)"
ok "return-broken-stream-after-256K download (curl 18)" eq "$EXIT/$(stat -c %s "$work/b")" "18/$Q"

retry_test '{"storage.objects.delete":["return-503"]}'
start f5; req DELETE "$LOC" -H "$(H)"; ok "session DELETE is storage.objects.delete" eq "$CODE" 503
req DELETE "$LOC" -H "$(H)"; ok "...then 499" eq "$CODE" 499
retry_test '{"storage.objects.delete":["stall-for-1s-after-0K"]}'
start f6; t0=$(date +%s%N); req DELETE "$LOC" -H "$(H)"; t1=$(date +%s%N)
ok "stall-for-1s-after-0K on a session DELETE hangs, then 499" eq "$CODE/$(((t1 - t0) / 1000000 >= 950))" "499/1"

req POST "$U/retry_test" -d '{"instructions":{"storage.objects.insert":["return-pizza"]}}'
ok "unknown instruction 400" eq "$CODE" 400
req DELETE "$U/retry_test/$RT"; ok "retry test delete" eq "$CODE" 200

echo "protocol: $passes passed, $fails failed"
[[ $fails -eq 0 ]]
