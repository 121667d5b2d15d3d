#!/usr/bin/env bash
# Checks the built .deb the way a workstation gets it, without installing it: unpacks it
# into a temporary root (dpkg-deb -x), checks its layout, and runs the frozen
# `inspection-station --self-test` from there with an empty environment (no venv, no
# PYTHONPATH, a fresh HOME), so nothing from the build tree can help it. Prints the package
# size, the start-up time and the self-test's time. Run by `make package-test` (and CI).
# Usage: packaging/test-package.sh [PACKAGE.deb]
set -euo pipefail
cd "$(dirname "$0")/.."
deb=${1:-}
if [ -z "$deb" ]; then
  deb=$(ls -t dist/inspection-station_*.deb 2>/dev/null | head -n 1 || true)
fi
[ -n "$deb" ] && [ -f "$deb" ] || { echo "test-package: no dist/inspection-station_*.deb (run make package)" >&2; exit 1; }
name=inspection-station
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fail() { echo "test-package: FAIL: $*" >&2; exit 1; }

dpkg-deb -x "$deb" "$tmp/root"
root=$tmp/root
app=$root/opt/$name/$name

# -- layout -----------------------------------------------------------------------------------
[ -x "$app" ] || fail "no executable /opt/$name/$name"
[ "$(readlink "$root/usr/bin/$name")" = "/opt/$name/$name" ] || fail "/usr/bin/$name is not a link to the app"
[ -f "$root/usr/share/applications/$name.desktop" ] || fail "no .desktop entry"
grep -q "^Exec=$name" "$root/usr/share/applications/$name.desktop" || fail ".desktop entry does not start $name"
if command -v desktop-file-validate >/dev/null 2>&1; then
  desktop-file-validate "$root/usr/share/applications/$name.desktop" || fail ".desktop entry is not valid"
fi
for icon in scalable/apps/$name.svg 256x256/apps/$name.png 48x48/apps/$name.png; do
  [ -s "$root/usr/share/icons/hicolor/$icon" ] || fail "icon $icon missing"
done
[ -s "$root/usr/share/doc/$name/copyright" ] || fail "no copyright file"
for leaked in pytest _pytest pytestqt importlinter tests; do  # (the spec also checks its Python archive)
  [ ! -e "$root/opt/$name/_internal/$leaked" ] || fail "$leaked is in the bundle"
done
version=$(dpkg-deb -f "$deb" Version)

# -- the frozen app, with nothing from the build around it ----------------------------------------
mkdir -p "$tmp/home"
run() { (cd "$tmp/home" && env -i PATH=/usr/bin:/bin HOME="$tmp/home" "$@"); }
start=$(date +%s.%N)
reported=$(run "$app" --version)
startup=$(awk -v s="$start" -v e="$(date +%s.%N)" 'BEGIN {printf "%.2f", e - s}')
[ "$reported" = "station ${version//\~/}" ] || [ "$reported" = "station $version" ] \
  || fail "the app reports '$reported', the package is $version"

start=$(date +%s.%N)
if ! run "$app" --self-test >"$tmp/selftest.out" 2>"$tmp/selftest.err"; then
  cat "$tmp/selftest.out"
  echo "--- stderr (last 30 lines)" >&2
  tail -n 30 "$tmp/selftest.err" >&2
  fail "the frozen self-test failed"
fi
selftest=$(awk -v s="$start" -v e="$(date +%s.%N)" 'BEGIN {printf "%.1f", e - s}')
cat "$tmp/selftest.out"
grep -q "^self-test passed" "$tmp/selftest.out" || fail "no verdict from the self-test"
[ -z "$(find "$tmp/home" -path '*inspection-station/store*' -print -quit)" ] \
  || fail "the self-test wrote into the user's store"

deb_mb=$(du -m "$deb" | cut -f1)
unpacked_mb=$(du -sm "$root" | cut -f1)
echo "test-package: $(basename "$deb"): ${deb_mb} MB, ${unpacked_mb} MB unpacked;" \
     "start-up (--version) ${startup} s; frozen self-test ${selftest} s"
