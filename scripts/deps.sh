#!/bin/sh
# Installs the Debian packages callscribe needs, only if some are missing.
# Usage: scripts/deps.sh run|test|bench
set -eu
need="gcc pkg-config curl libpocketsphinx-dev pocketsphinx-en-us libopus-dev"
case "${1:-run}" in
  test)  need="$need pocketsphinx-testdata iproute2" ;;
  bench) need="$need pocketsphinx-testdata" ;;
esac
missing=""
for p in $need; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
  echo "installing Debian packages:$missing"
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends $missing >/dev/null
fi
if ! command -v go >/dev/null 2>&1 && [ -x /usr/local/go/bin/go ]; then
  echo "note: go is at /usr/local/go/bin; the Makefile adds it to PATH"
fi
