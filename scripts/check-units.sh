#!/bin/bash
# Installs the units into a scratch root and checks them with
# systemd-analyze: verify must print nothing, and the security exposure of
# each unit is reported.
set -euo pipefail
command -v systemd-analyze >/dev/null || { echo "systemd-analyze not found (apt-get install systemd)"; exit 1; }
root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
make -s install DESTDIR="$root" PREFIX=/usr/local >/dev/null
status=0
for u in callscribe-coordinator callscribe-agent; do
  unit="$root/lib/systemd/system/$u.service"
  out=$(systemd-analyze verify --root="$root" "$unit" 2>&1 || true)
  if [ -n "$out" ]; then echo "$u: systemd-analyze verify:"; echo "$out"; status=1; else echo "$u: verify OK"; fi
  echo "$u: $(systemd-analyze security --offline=true --root="$root" "$unit" 2>/dev/null | tail -1)"
done
exit $status
