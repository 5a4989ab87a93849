#!/bin/bash
# Starts `callscribe dev`, waits until it is ready, streams a recording
# through it in real time (partials on stderr, finals on stdout), and stops it.
set -euo pipefail
bin=$1 data=$2 http=$3 quic=$4 wav=$5
mkdir -p "$data"
log="$data/dev.log"
"$bin" dev --data "$data" --http "$http" --quic "$quic" --workers 2 >"$data/dev.out" 2>"$log" &
dev=$!
trap 'kill -TERM $dev 2>/dev/null; wait $dev 2>/dev/null || true' EXIT
echo "starting callscribe dev (log: $log) ..."
for _ in $(seq 1 120); do
  if curl -sf "http://$http/readyz" >/dev/null; then break; fi
  if ! kill -0 $dev 2>/dev/null; then echo "callscribe dev exited:"; tail -20 "$log"; exit 1; fi
  sleep 0.5
done
curl -sf "http://$http/readyz" >/dev/null || { echo "not ready after 60 s:"; tail -20 "$log"; exit 1; }
token=$(cat "$data/console.token")
call="demo-$(date +%s)"
echo "ready. streaming $wav as call $call in real time; partials (…) and finals (✓) as they come:"
echo
"$bin" stream --server "$quic" --ca "$data/ca.pem" --token "$token" --call "$call" "$wav"
echo
echo "transcript stored by the coordinator: http://$http/v1/calls/$call/transcript?format=text"
curl -sf -H "Authorization: Bearer $token" "http://$http/v1/calls/$call/transcript?format=text"
