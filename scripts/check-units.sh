#!/bin/bash
# Installs into a scratch DESTDIR and checks the units there with
# systemd-analyze: `verify` must print nothing (it exits 0 on warnings, so
# any output fails), and each unit's security exposure is reported.
set -euo pipefail
command -v systemd-analyze >/dev/null || { echo "systemd-analyze not found (apt-get install systemd)"; exit 1; }
root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
make -s install DESTDIR="$root" PREFIX=/usr/local >/dev/null
mkdir -p "$root/check"
status=0
for u in callscribe-coordinator callscribe-agent; do
  # verify resolves ExecStart on this machine: point it at the scratch install.
  sed "s|/usr/local/bin/callscribe|$root/usr/local/bin/callscribe|" "$root/lib/systemd/system/$u.service" >"$root/check/$u.service"
  out=$(cd "$root/check" && systemd-analyze verify "./$u.service" 2>&1 || true)
  if [ -n "$out" ]; then echo "$u: systemd-analyze verify:"; echo "$out"; status=1; else echo "$u: verify OK"; fi
  echo "$u: $(systemd-analyze security --offline=true "$root/check/$u.service" 2>/dev/null | tail -1)"
done
exit $status
