#!/bin/bash
# Builds callscribe_VERSION_amd64.deb from a built tree (make build: the
# binary, bin/lib and bin/models) with dpkg-deb. `make deb` runs it.
#
#   packaging/build-deb.sh --version V [--bin DIR] [--out DIR] [--compress gzip|xz|none]
#
# gzip (-6) is the default: xz takes a minute for 2 % less (the ONNX weights
# hardly compress), and lintian 2.116 (Debian 12) rejects zstd members.
#
# Layout (Debian 12): /usr/bin/callscribe (RUNPATH $ORIGIN/../lib/callscribe
# only), /usr/lib/callscribe/ (sherpa-onnx, ONNX Runtime),
# /usr/share/callscribe/{models,firmware-configs,monitoring},
# /lib/systemd/system, /usr/lib/sysusers.d, /usr/lib/tmpfiles.d,
# /etc/callscribe/*.toml (conffiles), man pages, bash completion, docs.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
top=$(cd "$here/.." && pwd)
bin=$top/bin
out=$top/bin
version=""
compress=${DEB_COMPRESS:-gzip}
maintainer=${DEB_MAINTAINER:-callscribe maintainers <maintainers@callscribe.example>}
while [ $# -gt 0 ]; do
  case "$1" in
    --version) version=$2; shift 2 ;;
    --bin) bin=$(cd "$2" && pwd); shift 2 ;;
    --out) mkdir -p "$2"; out=$(cd "$2" && pwd); shift 2 ;;
    --compress) compress=$2; shift 2 ;;
    *) echo "build-deb.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
[ -n "$version" ] || version=$("$here/version.sh")
dpkg --validate-version "$version"
for t in dpkg-deb dpkg-shlibdeps patchelf strip; do
  command -v $t >/dev/null || { echo "build-deb.sh: $t is missing (make deb installs it: scripts/deps.sh deb)" >&2; exit 1; }
done
for f in "$bin/callscribe" "$bin/lib/libsherpa-onnx-c-api.so" "$bin/lib/libonnxruntime.so" "$bin/models"; do
  [ -e "$f" ] || { echo "build-deb.sh: $f is missing: run make build first" >&2; exit 1; }
done
# Timestamps in the package come from the commit, not the clock.
export SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(git -C "$top" log -1 --format=%ct 2>/dev/null || date +%s)}
commit=$(git -C "$top" rev-parse --short HEAD 2>/dev/null || echo unknown)

work=$(mktemp -d "${TMPDIR:-/tmp}/callscribe-deb.XXXXXX")
trap 'rm -rf "$work"' EXIT
# dpkg-shlibdeps wants a source-package layout: debian/control, debian/PKG.
mkdir -p "$work/debian"
printf 'Source: callscribe\n\nPackage: callscribe\nArchitecture: amd64\n' >"$work/debian/control"
pkg=$work/debian/callscribe
umask 022

# The binary: only the installed RUNPATH stays (the build tree's bin/lib and
# the Go module cache path are dropped), and the symbols go as dh_strip does.
install -D -m 0755 "$bin/callscribe" "$pkg/usr/bin/callscribe"
patchelf --set-rpath '$ORIGIN/../lib/callscribe' "$pkg/usr/bin/callscribe"
strip --remove-section=.comment --remove-section=.note "$pkg/usr/bin/callscribe"
rp=$(patchelf --print-rpath "$pkg/usr/bin/callscribe")
[ "$rp" = '$ORIGIN/../lib/callscribe' ] || { echo "build-deb.sh: RUNPATH is $rp" >&2; exit 1; }
install -d "$pkg/usr/lib/callscribe"
for l in libsherpa-onnx-c-api.so libonnxruntime.so; do
  install -m 0644 "$bin/lib/$l" "$pkg/usr/lib/callscribe/$l"
  strip --remove-section=.comment --remove-section=.note --strip-unneeded "$pkg/usr/lib/callscribe/$l"
done
cs=$pkg/usr/bin/callscribe
"$cs" version >/dev/null # loads every library through the installed RUNPATH

# Model files: copied from the build, then checked against the pinned hashes
# by the packaged binary itself (models install repairs nothing here: every
# file is already right, or it refetches and rechecks it), found where the
# installed binary looks for them (EXEDIR/../share/callscribe/models).
install -d "$pkg/usr/share/callscribe/models"
cp -r "$bin/models/." "$pkg/usr/share/callscribe/models/"
env -u CALLSCRIBE_MODEL_DIR "$cs" models install --dest "$pkg/usr/share/callscribe/models" >/dev/null 2>"$work/models.log" || { cat "$work/models.log" >&2; exit 1; }
env -u CALLSCRIBE_MODEL_DIR "$cs" models check >"$work/models-check.log" 2>&1 || { cat "$work/models-check.log" >&2; exit 1; }

# systemd units, sysusers, tmpfiles: the tree's own, with the package's paths.
for u in callscribe-coordinator callscribe-agent; do
  install -D -m 0644 "$top/systemd/$u.service" "$pkg/lib/systemd/system/$u.service"
  sed -i -e 's|/usr/local/bin/callscribe|/usr/bin/callscribe|g' \
         -e 's|/usr/local/share/|/usr/share/|g' "$pkg/lib/systemd/system/$u.service"
done
install -D -m 0644 "$top/systemd/callscribe.sysusers" "$pkg/usr/lib/sysusers.d/callscribe.conf"
install -D -m 0644 "$top/systemd/callscribe.tmpfiles" "$pkg/usr/lib/tmpfiles.d/callscribe.conf"
for f in coordinator agent; do
  install -D -m 0644 "$top/systemd/$f.toml" "$pkg/etc/callscribe/$f.toml"
  sed -i 's|/usr/local/share/|/usr/share/|g' "$pkg/etc/callscribe/$f.toml"
done
if grep -rn /usr/local "$pkg/lib" "$pkg/etc" "$pkg/usr/lib/sysusers.d" "$pkg/usr/lib/tmpfiles.d"; then
  echo "build-deb.sh: /usr/local left in a packaged file (above)" >&2; exit 1
fi
install -d "$pkg/usr/share/callscribe/firmware-configs"
install -m 0644 "$top"/firmware-configs/*.toml "$pkg/usr/share/callscribe/firmware-configs/"

# Monitoring: the Grafana dashboard and its provisioning example, the
# Prometheus alerting rules and a scrape example.
m=$pkg/usr/share/callscribe/monitoring
install -D -m 0644 "$top/monitoring/grafana/callscribe-dashboard.json" "$m/grafana/callscribe-dashboard.json"
install -D -m 0644 "$top/monitoring/grafana/provisioning/dashboards/callscribe.yaml" "$m/grafana/provisioning/dashboards/callscribe.yaml"
install -D -m 0644 "$top/monitoring/grafana/provisioning/datasources/prometheus.yaml" "$m/grafana/provisioning/datasources/prometheus.yaml"
install -D -m 0644 "$top/monitoring/prometheus/callscribe-rules.yml" "$m/prometheus/callscribe-rules.yml"
install -D -m 0644 "$top/monitoring/prometheus/scrape-example.yml" "$m/prometheus/scrape-example.yml"

# Man pages and bash completion, generated from the binary's flag sets.
"$cs" gendocs --man "$work/man" --bash "$work/callscribe.bash" --version "$version"
install -d "$pkg/usr/share/man/man1"
for p in "$work"/man/*.1; do
  gzip -9n <"$p" >"$pkg/usr/share/man/man1/$(basename "$p").gz"
done
install -D -m 0644 "$work/callscribe.bash" "$pkg/usr/share/bash-completion/completions/callscribe"

# Documentation: README, copyright (with the Go modules linked in), changelog.
doc=$pkg/usr/share/doc/callscribe
install -D -m 0644 "$top/README.md" "$doc/README.md"
gomods=$(go version -m "$bin/callscribe" | awk '$1 == "dep" {print $2, $3}')
modlist=$(cd "$top" && go list -m -f '{{.Path}} {{.Version}} {{.Dir}}' all 2>/dev/null || true)
golines=" the Go standard library and runtime $(go version -m "$bin/callscribe" | awk 'NR == 1 {print $2}'): BSD-3-Clause"$'\n'
while read -r path ver; do
  [ -n "$path" ] || continue
  dir=$(awk -v p="$path" -v v="$ver" '$1 == p && $2 == v {print $3}' <<<"$modlist")
  lic=""
  lf=$(ls "$dir"/LICENSE* "$dir"/LICENCE* "$dir"/COPYING* 2>/dev/null | head -1 || true)
  if [ -n "$lf" ]; then
    # Every licence the file holds (some modules carry several).
    grep -q "Apache License" "$lf" && lic+=" and Apache-2.0"
    grep -q "Mozilla Public License" "$lf" && lic+=" and MPL-2.0"
    if grep -q "Redistribution and use in source and binary forms" "$lf"; then
      if grep -q "Neither the name" "$lf"; then lic+=" and BSD-3-Clause"; else lic+=" and BSD-2-Clause"; fi
    fi
    grep -q "Permission is hereby granted, free of charge" "$lf" && lic+=" and Expat"
    grep -q "Permission to use, copy, modify, and/or distribute" "$lf" && lic+=" and ISC"
  fi
  lic=${lic# and }
  lic=${lic:-see its licence file}
  golines+=" $path $ver: $lic"$'\n'
done <<<"$gomods"
awk -v mods="$golines" '{ if ($0 == "@GO_MODULES@") printf "%s", mods; else print }' "$here/deb/copyright" >"$doc/copyright"
chmod 0644 "$doc/copyright"
{
  printf 'callscribe (%s) bookworm; urgency=medium\n\n' "$version"
  printf '  * Built from git commit %s.\n\n' "$commit"
  printf ' -- %s  %s\n' "$maintainer" "$(date -u -R -d "@$SOURCE_DATE_EPOCH")"
} | gzip -9n >"$doc/changelog.gz"
install -D -m 0644 "$here/deb/lintian-overrides" "$pkg/usr/share/lintian/overrides/callscribe"

# Control area: control (Depends pinned in control.in, checked against
# dpkg-shlibdeps below), conffiles, maintainer scripts, md5sums.
install -d "$pkg/DEBIAN"
install -m 0644 "$here/deb/conffiles" "$pkg/DEBIAN/conffiles"
for s in postinst prerm postrm; do install -m 0755 "$here/deb/$s" "$pkg/DEBIAN/$s"; done
size=$(du -sk --apparent-size --exclude=DEBIAN "$pkg" | cut -f1)
sed -e "s|@VERSION@|$version|" -e "s|@MAINTAINER@|$maintainer|" -e "s|@INSTALLED_SIZE@|$size|" \
  "$here/deb/control.in" >"$pkg/DEBIAN/control"
(cd "$pkg" && find . -type f ! -path './DEBIAN/*' -printf '%P\0' | LC_ALL=C sort -z | xargs -0 md5sum) >"$pkg/DEBIAN/md5sums"
chmod 0644 "$pkg/DEBIAN/md5sums"

# The Debian libraries the ELF files link must all be in the pinned Depends:
# a new library (or a newer symbol) fails the build here, saying what to pin.
shl=$(cd "$work" && dpkg-shlibdeps -O -ldebian/callscribe/usr/lib/callscribe \
  debian/callscribe/usr/bin/callscribe debian/callscribe/usr/lib/callscribe/*.so 2>/dev/null)
shl=${shl#shlibs:Depends=}
pinned=$(sed -n 's/^Depends: //p' "$here/deb/control.in")
IFS=',' read -ra need <<<"$shl"
for d in "${need[@]}"; do
  d=$(echo "$d" | sed 's/^ *//; s/ *$//')
  case ", $pinned," in
    *", $d,"*) ;;
    *) echo "build-deb.sh: dpkg-shlibdeps says the package needs \"$d\", which packaging/deb/control.in does not pin." >&2
       echo "  computed: $shl" >&2; exit 1 ;;
  esac
done

find "$pkg" -depth -exec touch -h -d "@$SOURCE_DATE_EPOCH" {} +
deb=$out/callscribe_${version}_amd64.deb
case "$compress" in
  gzip) z=(-Zgzip -z6) ;;
  xz) z=(-Zxz -z6) ;;
  none) z=(-Znone) ;;
  *) echo "build-deb.sh: --compress gzip|xz|none" >&2; exit 2 ;;
esac
dpkg-deb --root-owner-group "${z[@]}" --build "$pkg" "$deb" >/dev/null
echo "$deb"
