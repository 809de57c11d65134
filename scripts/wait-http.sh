#!/usr/bin/env bash
# Wait until URL answers HTTP 200 (or 401: auth on), at most SECONDS.
#   usage: scripts/wait-http.sh URL [SECONDS]
set -euo pipefail
url="$1"
limit="${2:-60}"
end=$((SECONDS + limit))
while ((SECONDS < end)); do
  code="$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "$url" || true)"
  if [[ "$code" == 200 || "$code" == 401 ]]; then
    echo "$url answers $code"
    exit 0
  fi
  sleep 1
done
echo "$url not answering after ${limit}s" >&2
exit 1
