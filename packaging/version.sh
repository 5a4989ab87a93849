#!/bin/sh
# Maps a version as `git describe --tags --always --dirty` prints it (the
# Makefile's VERSION) to a Debian version that grows with every commit:
#   v1.2.3                -> 1.2.3
#   v1.2.3-4-gabcdef0     -> 1.2.3+git4.abcdef0
#   abcdef0 (no tag yet)  -> 0.0~gitN.abcdef0   (N: commits on HEAD)
#   ...-dirty             -> ...+dirty
#   dev (not a git tree) -> 0.0~dev
# Anything else that is already a valid Debian version (make deb VERSION=2.0.1)
# is used as it is.
set -eu
v=${1:-$(git describe --tags --always --dirty 2>/dev/null || echo dev)}
dirty=""
case "$v" in *-dirty) dirty="+dirty"; v=${v%-dirty} ;; esac
if printf '%s\n' "$v" | grep -Eq '^v?[0-9][0-9.]*-[0-9]+-g[0-9a-f]+$'; then
  d=$(printf '%s\n' "$v" | sed -E 's/^v?([0-9][0-9.]*)-([0-9]+)-g([0-9a-f]+)$/\1+git\2.\3/')
elif printf '%s\n' "$v" | grep -Eq '^v[0-9]'; then
  d=${v#v}
elif printf '%s\n' "$v" | grep -Eq '^[0-9a-f]{7,40}$'; then
  d="0.0~git$(git rev-list --count HEAD 2>/dev/null || echo 0).$v"
elif [ "$v" = dev ]; then
  d="0.0~dev"   # not a git checkout
else
  d=$v
fi
d="$d$dirty"
dpkg --validate-version "$d" >/dev/null 2>&1 || { echo "version.sh: $1 gives $d, not a valid Debian version; set VERSION=X.Y.Z" >&2; exit 1; }
printf '%s\n' "$d"
