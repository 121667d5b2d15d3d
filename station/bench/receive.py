"""Receive benchmark: the same CT series sent by dcmtk storescu to dcmtk storescp and to
``station serve`` (durable writes), best of N each, interleaved, in one run.

TCP_NODELAY=1 is set for every dcmtk tool: without it, loopback transfers stall ~40 ms
per image on Nagle/delayed-ACK and the comparison would measure that instead.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from station.testing.dcmtk import dcmtk_env
from station.testing.ports import free_port, wait_port


def _storescu(port: int, aec: str, folder: Path) -> float:
    started = time.perf_counter()
    proc = subprocess.run(
        ["storescu", "+sd", "-R", "-aec", aec, "127.0.0.1", str(port), str(folder)],
        capture_output=True, text=True, env=dcmtk_env(), check=False,
    )
    elapsed = time.perf_counter() - started
    if proc.returncode != 0:
        raise RuntimeError(f"storescu failed ({proc.returncode}): {proc.stderr.strip()[-400:]}")
    return elapsed


def _run_dcmtk(folder: Path, work: Path) -> float:
    out = Path(tempfile.mkdtemp(dir=work, prefix="storescp-"))
    port = free_port()
    proc = subprocess.Popen(["storescp", "-od", str(out), "-aet", "DCMTK", str(port)],
                            env=dcmtk_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port(port, proc)
        return _storescu(port, "DCMTK", folder)
    finally:
        proc.terminate()
        proc.wait(10)
        shutil.rmtree(out, ignore_errors=True)


def _run_station(folder: Path, work: Path, expected: int) -> float:
    store = Path(tempfile.mkdtemp(dir=work, prefix="station-"))
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "station", "serve", "--store", str(store), "--port", str(port),
         "--host", "127.0.0.1", "--aet", "STATION"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line.startswith("listening"):
            raise RuntimeError(f"station serve did not start: {line!r}")
        elapsed = _storescu(port, "STATION", folder)
    finally:
        proc.terminate()
        proc.wait(20)
    listing = subprocess.run([sys.executable, "-m", "station", "store", "ls", "--store", str(store), "--json"],
                             capture_output=True, text=True, check=True)
    stored = sum(row["instances"] for row in json.loads(listing.stdout))
    shutil.rmtree(store, ignore_errors=True)
    if stored != expected:
        raise RuntimeError(f"station stored {stored} of {expected} instances")
    return elapsed


def _dcmtk_version() -> str:
    proc = subprocess.run(["storescp", "--version"], capture_output=True, text=True, check=False)
    first = (proc.stdout or proc.stderr).strip().splitlines()
    return first[0] if first else "storescp"


def bench_receive(*, slices: int = 300, size: int = 512, repeat: int = 3) -> dict[str, Any]:
    """Run the comparison; return the JSON-able result."""
    from station.core.synth.bags import make_bag_volume, write_ct_series

    for tool in ("storescu", "storescp"):
        if shutil.which(tool) is None:
            raise RuntimeError(f"{tool} not found: install Debian package dcmtk (make system-deps)")
    work = Path(tempfile.mkdtemp(prefix="station-bench-"))
    try:
        folder = work / "series"
        bag = make_bag_volume(size=size, slices=slices, threats=1, seed=7)
        files = write_ct_series(bag, folder)
        (folder / "truth.json").unlink(missing_ok=True)  # storescu +sd sends every file
        nbytes = sum(f.stat().st_size for f in files)
        peer_times: list[float] = []
        station_times: list[float] = []
        for _ in range(repeat):  # interleaved, so drift on a shared machine hits both
            peer_times.append(_run_dcmtk(folder, work))
            station_times.append(_run_station(folder, work, len(files)))
        peer, station = min(peer_times), min(station_times)
        return {
            "benchmark": "receive",
            "instances": len(files),
            "bytes": nbytes,
            "peer": _dcmtk_version(),
            "peer_seconds": round(peer, 4),
            "station_seconds": round(station, 4),
            "peer_images_per_s": round(len(files) / peer, 1),
            "station_images_per_s": round(len(files) / station, 1),
            "ratio": round(peer / station, 3),
            "goal_ratio": 0.5,
            "station_durable": True,
            "all_runs": {"peer": [round(t, 4) for t in peer_times],
                         "station": [round(t, 4) for t in station_times]},
            "complete": True,
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)
