#!/usr/bin/env bash
# Runs the real station (`station demo`: receiver + simulated scanner) on a virtual
# screen, lets a few bags arrive, and saves a screenshot of the whole screen.
# Usage: packaging/screenshot-live.sh [OUT.png] [SECONDS]
set -euo pipefail
out=${1:-docs/screenshot-main.png}
wait_s=${2:-25}
bin=${BIN:-.venv/bin}
display=":$((90 + RANDOM % 400))"
work=$(mktemp -d)
app=""
Xvfb "$display" -screen 0 1600x1000x24 -nolisten tcp >/dev/null 2>&1 &
xvfb=$!
cleanup() { [ -n "$app" ] && kill "$app" 2>/dev/null; kill "$xvfb" 2>/dev/null; wait 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT
sleep 1
DISPLAY=$display "$bin/station" demo --store "$work/store" --port 0 >"$work/station.log" 2>&1 &
app=$!
sleep "$wait_s"
DISPLAY=$display "$bin/python" - "$out" <<'PY'
import sys
from PySide6.QtGui import QGuiApplication
app = QGuiApplication(sys.argv[:1])
shot = app.primaryScreen().grabWindow(0)
if not shot.save(sys.argv[1]):
    sys.exit(f"cannot write {sys.argv[1]}")
print(f"saved {sys.argv[1]} ({shot.width()}x{shot.height()})")
PY
