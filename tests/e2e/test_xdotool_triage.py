"""The real GUI under Xvfb, driven by xdotool key presses only (issue 7).

Five synthetic bags in a store; ``station gui --operator XDO`` on a virtual screen; X key
events decide them (1, 2, 3, an undo, the cheat sheet) and quit (Ctrl+Q); then
``station report`` must list five decided scans with the decisions pressed.
"""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not (shutil.which("Xvfb") and shutil.which("xdotool")), reason="needs Xvfb and xdotool"),
]

STATION = [sys.executable, "-m", "station"]


def _free_display() -> int:
    for n in range(140, 200):
        if not Path(f"/tmp/.X11-unix/X{n}").exists() and not Path(f"/tmp/.X{n}-lock").exists():
            return n
    pytest.skip("no free X display number")


def _xdo(env, *args: str) -> str:
    return subprocess.run(["xdotool", *args], env=env, check=True, capture_output=True, text=True,
                          timeout=30).stdout.strip()


def test_real_gui_triage_with_xdotool(tmp_path):
    store = tmp_path / "store"
    for k in range(5):
        out = tmp_path / f"bag{k}"
        subprocess.run([*STATION, "synth", "ct", "--out", str(out), "--slices", "8", "--size", "32",
                        "--seed", str(k)], check=True, capture_output=True, timeout=120)
        (out / "truth.json").unlink(missing_ok=True)  # not DICOM: import would name it as bad
        subprocess.run([*STATION, "import", "--store", str(store), str(out)], check=True, capture_output=True,
                       timeout=120)
        time.sleep(0.05)  # distinct arrival times: the queue's order
    display = _free_display()
    xvfb = subprocess.Popen(["Xvfb", f":{display}", "-screen", "0", "1600x1000x24", "-nolisten", "tcp"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    env = {**os.environ, "DISPLAY": f":{display}", "XDG_CONFIG_HOME": str(tmp_path / "config")}
    env.pop("QT_QPA_PLATFORM", None)
    env["QT_QPA_PLATFORM"] = "xcb"
    gui = None
    try:
        deadline = time.monotonic() + 20
        while not Path(f"/tmp/.X11-unix/X{display}").exists():
            assert time.monotonic() < deadline, "Xvfb did not start"
            time.sleep(0.05)
        gui = subprocess.Popen([*STATION, "gui", "--store", str(store), "--no-receiver", "--operator", "XDO"],
                               env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        wid = _xdo(env, "search", "--sync", "--onlyvisible", "--name", "^Inspection Station$").split()[0]
        time.sleep(1.5)  # let the window map and settle
        _xdo(env, "windowfocus", "--sync", wid)
        time.sleep(0.3)
        for keys in (["space"], ["1"], ["2"], ["3"], ["ctrl+z"], ["1"], ["F1"], ["Escape"], ["3"], ["1"]):
            if keys == ["Escape"]:  # the cheat sheet has the focus: Esc closes it, then back to the window
                _xdo(env, "key", *keys)
                time.sleep(0.4)
                _xdo(env, "windowfocus", "--sync", wid)
            else:
                _xdo(env, "key", "--delay", "80", *keys)
            time.sleep(0.4)
        _xdo(env, "key", "ctrl+q")
        output, _ = gui.communicate(timeout=30)
        assert gui.returncode == 0, output
    finally:
        if gui is not None and gui.poll() is None:
            gui.kill()
            gui.communicate()
        xvfb.terminate()
        xvfb.wait(10)
    report = tmp_path / "report.csv"
    done = subprocess.run([*STATION, "report", "--store", str(store), "--format", "csv", "--out", str(report)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    with report.open(encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    # 1, 2, 3 (undone, then 1), 3, 1: five scans in arrival order
    assert [r["decision"] for r in rows] == ["CLEAR", "SUSPECT", "CLEAR", "THREAT", "CLEAR"], output
    assert {r["operator"] for r in rows} == {"XDO"}
