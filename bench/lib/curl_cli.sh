#!/usr/bin/env bash
# The curl CLI as a GCS client: a resumable session made with one POST, then
# one PUT of the whole file (no chunks, no checksum, no retries).
#   bench/lib/curl_cli.sh ENDPOINT BUCKET OBJECT FILE
set -euo pipefail
url=$1 bucket=$2 obj=$3 file=$4
size=$(stat -c %s "$file")
loc=$(curl -sS -f --max-time 30 -X POST -H 'Content-Type: application/json' -H "X-Upload-Content-Length: $size" \
  --data '{}' -D - -o /dev/null "$url/upload/storage/v1/b/$bucket/o?uploadType=resumable&name=$obj" |
  tr -d '\r' | sed -n 's/^[Ll]ocation: //p')
[[ -n $loc ]] || { echo "curl_cli: no Location in the reply to the POST" >&2; exit 1; }
range="bytes 0-$((size - 1))/$size"
((size > 0)) || range="bytes */0"
curl -sS -f --max-time 600 -X PUT -H 'Expect:' -H "Content-Range: $range" -T "$file" -o /dev/null "$loc"
