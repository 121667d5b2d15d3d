#!/usr/bin/env bash
# Installs the Debian packages the station and its tests use, when missing.
# As root it installs them; otherwise it names what is missing and carries on
# (tests that need a missing tool are skipped with that reason).
set -u
PKGS=(dcmtk orthanc orthanc-dicomweb xvfb xdotool
      libxkbcommon-x11-0 libxcb-cursor0 libxcb-icccm4 libxcb-keysyms1 libxcb-shape0
      libxcb-xinerama0 libxcb-randr0 libxcb-render-util0 libxcb-image0 libegl1 libgl1
      libfontconfig1 libdbus-1-3 fonts-dejavu-core binutils)
command -v dpkg-query >/dev/null 2>&1 || { echo "system-deps: not a Debian system, skipping"; exit 0; }
missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -eq 0 ]; then
  echo "system-deps: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null \
    || { echo "system-deps: apt-get install failed" >&2; exit 1; }
else
  echo "system-deps: missing ${missing[*]} (run 'sudo make system-deps' to install)" >&2
fi
