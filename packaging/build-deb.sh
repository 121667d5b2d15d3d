#!/usr/bin/env bash
# Wraps the frozen station (dist/inspection-station/, built from packaging/station.spec) in a
# Debian package: dist/inspection-station_<version>_<arch>.deb.
#
#   /opt/inspection-station/                      the frozen application (one folder)
#   /usr/bin/inspection-station                   -> /opt/inspection-station/inspection-station
#   /usr/share/applications/inspection-station.desktop
#   /usr/share/icons/hicolor/{scalable,48x48,128x128,256x256}/apps/inspection-station.*
#   /usr/share/doc/inspection-station/copyright   our licence, bundled components, their licences
#
# User data (store, settings, logs) lives in the platform's user directories
# (~/.local/share/inspection-station, ~/.config/inspection-station), never under /opt, so
# upgrades and removal leave it alone.
#
# Usage: packaging/build-deb.sh [FROZEN_DIR] [OUT_DIR]      (run by `make package`)
# Environment: PYTHON (the build venv's python, for the version and licences),
#              DEB_MAINTAINER ("Name <mail>" for the control file),
#              DEB_XZ_LEVEL (xz compression level, default 6).
set -euo pipefail
cd "$(dirname "$0")/.."
frozen=${1:-dist/inspection-station}
out=${2:-dist}
py=${PYTHON:-.venv/bin/python}
name=inspection-station
maintainer=${DEB_MAINTAINER:-Inspection Station developers <inspection-station@localhost>}

[ -x "$frozen/$name" ] || { echo "build-deb: no frozen build at $frozen (run pyinstaller packaging/station.spec)" >&2; exit 1; }
command -v dpkg-deb >/dev/null || { echo "build-deb: dpkg-deb not found" >&2; exit 1; }

# -- version: the package metadata, checked against what the frozen build reports -------------
pep440=$("$py" -c 'from importlib.metadata import version; print(version("inspection-station"))')
frozen_version=$(env -i PATH=/usr/bin:/bin "$frozen/$name" --version 2>/dev/null | awk '{print $NF}')
if [ "$frozen_version" != "$pep440" ]; then
  echo "build-deb: the frozen build reports version '$frozen_version' but the package metadata says '$pep440'" \
       "(a stale build? rerun pyinstaller)" >&2
  exit 1
fi
# PEP 440 pre-releases sort before the release in Debian only with a tilde: 1.0rc1 -> 1.0~rc1.
version=$(sed -E 's/\.?(a|b|rc|dev)([0-9]+)/~\1\2/g' <<<"$pep440")
arch=$(dpkg --print-architecture)
glibc=$(dpkg-query -W -f='${Version}' libc6 2>/dev/null | sed -E 's/-.*//') || glibc=""

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
root=$work/root
mkdir -p "$root/opt" "$root/usr/bin" "$root/usr/share/applications" "$root/usr/share/doc/$name" "$root/DEBIAN"

# -- files ------------------------------------------------------------------------------------------
cp -a "$frozen" "$root/opt/$name"
ln -s "/opt/$name/$name" "$root/usr/bin/$name"
install -m 0644 resources/inspection-station.desktop "$root/usr/share/applications/$name.desktop"
install -D -m 0644 resources/station.svg "$root/usr/share/icons/hicolor/scalable/apps/$name.svg"
# PNG sizes for menus and docks that do not take SVG, rendered with the build's own Qt.
QT_QPA_PLATFORM=offscreen "$py" - "$root/usr/share/icons/hicolor" resources/station.svg <<'PY'
import sys
from pathlib import Path

from PySide6.QtCore import Qt
from PySide6.QtGui import QGuiApplication, QImage, QPainter
from PySide6.QtSvg import QSvgRenderer

app = QGuiApplication(sys.argv[:1])
renderer = QSvgRenderer(sys.argv[2])
if not renderer.isValid():
    sys.exit(f"build-deb: cannot read {sys.argv[2]}")
for size in (48, 128, 256):
    image = QImage(size, size, QImage.Format.Format_ARGB32)
    image.fill(Qt.GlobalColor.transparent)
    painter = QPainter(image)
    renderer.render(painter)
    painter.end()
    target = Path(sys.argv[1]) / f"{size}x{size}" / "apps" / "inspection-station.png"
    target.parent.mkdir(parents=True, exist_ok=True)
    if not image.save(str(target)):
        sys.exit(f"build-deb: cannot write {target}")
PY

# -- copyright: ours, then every bundled component with its licence -------------------------------
doc=$root/usr/share/doc/$name
"$py" - "$doc" "$pep440" <<'PY'
"""Write copyright and copy the licence texts of the Python distributions in the bundle."""
import re
import shutil
import sys
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path

from packaging.requirements import Requirement

doc, version = Path(sys.argv[1]), sys.argv[2]
third = doc / "third-party"


def licence(dist) -> str:
    meta = dist.metadata
    if meta.get("License-Expression"):
        return meta["License-Expression"]
    text = (meta.get("License") or "").strip()
    if text and "\n" not in text and len(text) < 60:
        return text
    classifiers = [c.split(" :: ")[-1] for c in meta.get_all("Classifier") or [] if c.startswith("License ::")]
    return " / ".join(classifiers) or "see the licence files"


# The runtime closure of the station's own requirements (no extras: no test tools).
seen: dict[str, object] = {}
todo = ["inspection-station"]
while todo:
    name = todo.pop()
    key = re.sub(r"[-_.]+", "-", name).lower()
    if key in seen:
        continue
    try:
        dist = distribution(name)
    except PackageNotFoundError:
        continue
    seen[key] = dist
    for spec in dist.requires or []:
        req = Requirement(spec)
        if req.marker is None or req.marker.evaluate({"extra": ""}):
            todo.append(req.name)

lines = []
for key, dist in sorted(seen.items()):
    if key == "inspection-station":
        continue
    copied = []
    for f in dist.files or []:
        parts = Path(str(f)).parts
        info = next((i for i, part in enumerate(parts) if part.endswith(".dist-info")), None)
        if info is None or not parts[-1].upper().startswith(("LICEN", "COPYING", "NOTICE", "AUTHORS")):
            continue
        src = Path(dist.locate_file(f))
        if src.is_file():
            # Keep the path inside the dist-info: numpy has several LICENSE.txt files.
            inner = parts[info + 1:]
            inner = inner[1:] if len(inner) > 1 and inner[0] == "licenses" else inner
            dst = third.joinpath(key, *inner)
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, dst)
            copied.append(str(dst))
    where = f"third-party/{key}/" if copied else "/usr/share/common-licenses/ (none in the distribution)"
    lines.append(f"  {dist.metadata['Name'] + ' ' + dist.version:<32} {licence(dist):<50} {where}")

python_licence = Path(sys.base_prefix) / "lib" / f"python{sys.version_info[0]}.{sys.version_info[1]}" / "LICENSE.txt"
if python_licence.is_file():
    (third / "python").mkdir(parents=True, exist_ok=True)
    shutil.copyfile(python_licence, third / "python" / "LICENSE.txt")

(doc / "copyright").write_text(f"""\
Inspection Station {version}

Copyright: the Inspection Station developers. All rights reserved.
License: Proprietary. This software may be used, copied and distributed only as
 agreed with its owners.

This package contains the station frozen with PyInstaller (/opt/inspection-station),
which bundles the software below, each under its own licence. Licence texts shipped with
each component are in /usr/share/doc/inspection-station/third-party/; the common licences
(GPL-2, GPL-3, LGPL-3, Apache-2.0, MPL-2.0) are in /usr/share/common-licenses/.

  {'Python ' + sys.version.split()[0]:<32} {'PSF-2.0':<50} third-party/python/
  {'PyInstaller bootloader':<32} GPL-2.0-or-later WITH Bootloader-exception
{chr(10).join(lines)}

Qt (inside PySide6-Essentials) is used under LGPL-3.0-only: its libraries are separate
shared libraries in /opt/inspection-station/_internal/PySide6/Qt/lib and can be replaced.

Shared libraries copied from the build system's Debian packages are listed, with the
copyright file of each package, under third-party/debian/.
""")
PY
# The Debian libraries PyInstaller copied into the bundle: name them and ship their copyright.
mkdir -p "$doc/third-party/debian"
for lib in "$root/opt/$name/_internal/"*.so*; do
  base=$(basename "$lib")
  case $base in *.cpython-*|*.abi3.so|libpython3*) continue ;; esac
  host=$(ldconfig -p | awk -v l="$base" '$1 == l && !found {print $NF; found = 1}')  # no early exit: SIGPIPE
  [ -n "$host" ] || continue
  pkg=$( (dpkg -S "$host" 2>/dev/null || dpkg -S "$(readlink -f "$host")" 2>/dev/null) | awk -F: 'NR == 1 {print $1}') || true
  [ -n "$pkg" ] || continue
  echo "$base $pkg $(dpkg-query -W -f='${Version}' "$pkg")" >>"$work/debian-libs.txt"
  [ -f "/usr/share/doc/$pkg/copyright" ] && cp "/usr/share/doc/$pkg/copyright" "$doc/third-party/debian/$pkg.copyright"
done
[ -f "$work/debian-libs.txt" ] && sort -u "$work/debian-libs.txt" >"$doc/third-party/debian/LIBRARIES.txt"
chmod -R u+rwX,go+rX,go-w "$doc"

# -- control --------------------------------------------------------------------------------------
# What a desktop must provide that the bundle does not carry: glibc (at least the build
# system's), OpenGL/EGL, fonts via fontconfig, and Qt's X11 libraries (the bundle has copies
# from the build system; the packages keep a workstation whole when it has not).
depends="libc6 (>= ${glibc:-2.31}), libgl1, libegl1, libfontconfig1, libdbus-1-3, libxcb1, libx11-xcb1,
 libxkbcommon0, libxkbcommon-x11-0, libxcb-cursor0, libxcb-icccm4, libxcb-keysyms1, libxcb-shape0,
 libxcb-randr0, libxcb-render-util0, libxcb-image0, libxcb-xinerama0"
installed_kb=$(du -sk --exclude=DEBIAN "$root" | cut -f1)
description=$("$py" -c 'from importlib.metadata import metadata; print(metadata("inspection-station")["Summary"])')
cat >"$root/DEBIAN/control" <<EOF
Package: $name
Version: $version
Section: science
Priority: optional
Architecture: $arch
Maintainer: $maintainer
Installed-Size: $installed_kb
Depends: $(tr -d '\n' <<<"$depends" | sed 's/  */ /g')
Recommends: dcmtk, fonts-dejavu-core
Description: $description
 Inspection Station receives scans from CT and X-ray scanners and modalities over
 DICOM (C-STORE), stores each object durably before acknowledging it, and shows
 scans in a slice viewer while their slices are still arriving. Airport mode for
 security DICOS (bags, threat reports), clinic mode for clinical DICOM.
 .
 A self-contained build: no Python installation is needed. Check an installation
 with "inspection-station --self-test".
EOF

# Refresh the menu and icon caches where the desktop keeps them (dpkg triggers of
# desktop-file-utils and hicolor-icon-theme do it too on most systems; harmless twice).
cat >"$root/DEBIAN/postinst" <<'EOF'
#!/bin/sh
set -e
if [ "$1" = "configure" ]; then
    if command -v update-desktop-database >/dev/null 2>&1; then
        update-desktop-database -q /usr/share/applications || true
    fi
    if [ -f /usr/share/icons/hicolor/index.theme ] && command -v gtk-update-icon-cache >/dev/null 2>&1; then
        gtk-update-icon-cache -q -f /usr/share/icons/hicolor || true
    fi
fi
exit 0
EOF
cat >"$root/DEBIAN/postrm" <<'EOF'
#!/bin/sh
# Users' stores, settings and logs are in their home directories and are kept, on purge too.
set -e
case "$1" in
    remove|purge|upgrade|abort-install|abort-upgrade)
        if command -v update-desktop-database >/dev/null 2>&1; then
            update-desktop-database -q /usr/share/applications || true
        fi
        if [ -f /usr/share/icons/hicolor/index.theme ] && command -v gtk-update-icon-cache >/dev/null 2>&1; then
            gtk-update-icon-cache -q -f /usr/share/icons/hicolor || true
        fi
        ;;
esac
exit 0
EOF
chmod 0755 "$root/DEBIAN/postinst" "$root/DEBIAN/postrm"

# -- build ----------------------------------------------------------------------------------------
mkdir -p "$out"
deb=$out/${name}_${version}_${arch}.deb
# xz level 6 (dpkg's default): ~80 MB in ~2.5 min on two cores; CI, which unpacks the
# package once and throws it away, asks for level 1 (~90 MB in ~20 s).
dpkg-deb --root-owner-group -Zxz "-z${DEB_XZ_LEVEL:-6}" --build "$root" "$deb" >/dev/null
echo "build-deb: $deb ($(du -m "$deb" | cut -f1) MB, installs $((installed_kb / 1024)) MB)"
