"""Reliability figures (issue 9): ``station bench reliability --json``.

Three parts, all against real peers on loopback:

1. crash: four dcmtk ``storescu`` scanners send to ``station serve``, which is killed
   with SIGKILL once a third has arrived; after reopening the store, every instance a
   scanner saw acknowledged must be there (``lost`` must be 0).
2. hostile: hostile connections (random bytes, silence, truncated and absurd PDUs,
   PDUs out of order) hit a receiver while a real scanner sends; the scanner must be
   served and every hostile connection dropped.
3. load: eight scanners send at once, over and over, for ``seconds``, into the real
   GUI (offscreen) with its receiver; nothing may be lost, memory must not keep growing,
   and the GUI event loop's longest stall is measured with a 10 ms timer.
"""

from __future__ import annotations

import os
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from station.testing.dcmtk import dcmtk_env as _dcmtk_env
from station.testing.ports import free_port as _free_port
from station.core.synth import bags as synth
from station.core.dicom.sopclasses import DICOS_TDR
from station.core.store.store import Store

HOSTILE_PAYLOADS = {
    "random": bytes(range(256)) * 8,
    "silent": b"",
    "truncated": b"\x01\x00\x00\x00\x03\xe8" + b"\x00" * 10,
    "absurd_length": b"\x01\x00\xff\xff\xff\xff" + b"\x00" * 10,
    "out_of_order": b"\x04\x00\x00\x00\x00\x06\x00\x00\x00\x02\x01\x03",
}


#: The simulated scanners run this much lower than the station: they stand in for machines
#: elsewhere on the network, which do not take the station's CPUs.
SCANNERS_NICE = 10


def _series(folder: Path, *, size: int, slices: int, seed: int) -> Path:
    synth.write_ct_series(synth.make_bag_volume(size=size, slices=slices, seed=seed), folder)
    (folder / "truth.json").unlink(missing_ok=True)
    return folder


def _start_serve(store: Path, port: int, *extra: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "station", "serve", "--store", str(store), "--port", str(port),
         "--host", "127.0.0.1", "--aet", "STATION", *extra],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line.startswith("listening"):
        proc.kill()
        raise RuntimeError(f"station serve did not start: {line!r}")
    return proc


def acknowledged_files(log: str) -> list[Path]:
    """Files dcmtk storescu -v reports as answered with Success, in order."""
    acked, current = [], None
    for line in log.splitlines():
        m = re.match(r"I: Sending file: (.+)$", line)
        if m:
            current = Path(m.group(1))
        elif "Received Store Response (Success)" in line and current is not None:
            acked.append(current)
            current = None
    return acked


def crash_part(work: Path) -> dict[str, Any]:
    import pydicom

    folders = [_series(work / f"crash{k}", size=256, slices=60, seed=90 + k) for k in range(4)]
    store_dir = work / "crash-store"
    port = _free_port()
    serve = _start_serve(store_dir, port)
    scanners = [subprocess.Popen(["storescu", "-v", "-R", "+sd", "-aec", "STATION", "127.0.0.1", str(port),
                                  str(f)], env=_dcmtk_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                 text=True) for f in folders]
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and len(list((store_dir / "objects").rglob("*.dcm"))) < 80:
        time.sleep(0.01)
    serve.send_signal(signal.SIGKILL)
    serve.communicate(timeout=10)
    acked = [f for p in scanners for f in acknowledged_files(p.communicate(timeout=60)[0])]
    with Store(store_dir) as store:
        indexed = {i.sop_instance_uid: i.path for r in store.series_list() for i in store.instances(r.series_uid)}
        leftovers = len(list(store.tmp_dir.iterdir()))
        files = set(store.objects_dir.rglob("*.dcm"))
    lost = 0
    for original in acked:
        source = pydicom.dcmread(original)
        kept = indexed.get(source.SOPInstanceUID)
        if kept is None or pydicom.dcmread(kept).PixelData != source.PixelData:
            lost += 1
    return {
        "acked_before_kill": len(acked),
        "found_after_restart": len(acked) - lost,
        "lost": lost,
        "temp_files_left": leftovers,
        "index_matches_files": set(indexed.values()) == files,
    }


def hostile_part(work: Path, rounds: int = 4) -> dict[str, Any]:
    folder = _series(work / "hostile-scan", size=128, slices=20, seed=5)
    port = _free_port()
    serve = _start_serve(work / "hostile-store", port)
    dropped = 0
    connections = 0
    slowest = 0.0
    try:
        scanner = subprocess.Popen(["storescu", "-R", "+sd", "-aec", "STATION", "127.0.0.1", str(port), str(folder)],
                                   env=_dcmtk_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        socks = []
        for _ in range(rounds):
            for payload in HOSTILE_PAYLOADS.values():
                # From another loopback address: a hostile host is not the scanner's host,
                # and per-address limits must not make the scanner pay for it.
                s = socket.socket()
                s.bind(("127.0.0.2", 0))
                s.connect(("127.0.0.1", port))
                if payload:
                    s.sendall(payload)
                s.settimeout(0.1)
                socks.append((s, time.monotonic()))
                connections += 1
        pending = list(socks)
        deadline = time.monotonic() + 30
        while pending and time.monotonic() < deadline:
            still = []
            for s, started in pending:
                try:
                    if s.recv(65536) == b"":
                        dropped += 1
                        slowest = max(slowest, time.monotonic() - started)
                        s.close()
                        continue
                except socket.timeout:
                    pass
                except OSError:
                    dropped += 1
                    slowest = max(slowest, time.monotonic() - started)
                    s.close()
                    continue
                still.append((s, started))
            pending = still
        for s, _ in pending:
            s.close()
        _, err = scanner.communicate(timeout=60)
        served = scanner.returncode == 0
        echo = subprocess.run(["echoscu", "-aec", "STATION", "127.0.0.1", str(port)], env=_dcmtk_env(),
                              capture_output=True, timeout=30).returncode == 0
    finally:
        serve.send_signal(signal.SIGTERM)
        serve.communicate(timeout=30)
    return {
        "hostile_connections": connections,
        "hostile_dropped": dropped,
        "slowest_drop_s": round(slowest, 2),
        "scanner_served_meanwhile": served,
        "still_answers_echo": echo,
        "hostile_survived": served and echo and dropped == connections,
    }


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def load_part(work: Path, seconds: float, senders: int = 8) -> dict[str, Any]:
    """Eight scanners into the real GUI; measures the longest event-loop stall."""
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    from PySide6.QtCore import QElapsedTimer, QTimer

    from station.core.config import Settings
    from station.core.events import EventBus
    from station.app.receiver_process import ReceiverProcess
    from station.app.gui import make_app
    from station.ui.bridge import EventBridge
    from station.ui.main_window import MainWindow

    folders = [_series(work / f"load{k}", size=256, slices=40, seed=300 + k) for k in range(senders)]
    app = make_app()
    bus = EventBus()
    bridge = EventBridge(bus)
    settings = Settings()
    settings.store.path = work / "load-store"
    settings.receiver.host = "127.0.0.1"
    settings.receiver.port = 0
    settings.receiver.max_associations_per_peer = senders + 2  # all scanners share 127.0.0.1
    # As in the station: the receiver is a child process, the GUI shares its store.
    receiver = ReceiverProcess(settings.store.path, bus, settings.receiver)
    receiver.start()
    store = Store(settings.store.path, maintenance=False)
    window = MainWindow(store, bridge, settings, receiver)
    window.resize(1600, 1000)
    window.show()

    # Each scanner is a shell loop of dcmtk storescu runs, outside this process, so the
    # measurement sees the station's own work only (niced: see SCANNERS_NICE).
    loop = ('end=$((SECONDS+{secs})); n=0; while [ $SECONDS -lt $end ]; do '
            'nice -n {nice} storescu -R +sd -aet CT{k} -aec STATION 127.0.0.1 {port} {folder} || exit 1; '
            'n=$((n+40)); done; echo $n')
    procs: list[subprocess.Popen[str]] = []

    stalls: list[float] = []
    clock = QElapsedTimer()
    last = [0]

    def tick() -> None:
        now = clock.elapsed()
        stalls.append(now - last[0])
        last[0] = now

    timer = QTimer()
    timer.setInterval(10)
    timer.timeout.connect(tick)
    # The window's first layout and paint happen before any scan arrives, as at the start
    # of a shift: not part of the load.
    for _ in range(20):
        app.processEvents()
        time.sleep(0.005)
    rss = [_rss_mb()]
    started = time.monotonic()
    # Starting eight shell loops blocks this (the GUI) thread for a while: harness work,
    # so it happens before the stall clock starts; the scanners' first sends are measured.
    for k in range(senders):
        procs.append(subprocess.Popen(
            ["bash", "-c", loop.format(secs=int(seconds), k=k, port=receiver.port, folder=folders[k],
                                       nice=SCANNERS_NICE)],
            env=_dcmtk_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    clock.start()
    last[0] = clock.elapsed()
    timer.start()
    next_sample = started + 5
    while time.monotonic() - started < seconds:
        app.processEvents()
        time.sleep(0.002)
        if time.monotonic() >= next_sample:
            rss.append(_rss_mb())
            next_sample += 5
    sent: list[int] = []
    failures: list[str] = []
    for proc in procs:
        while proc.poll() is None:
            app.processEvents()
            time.sleep(0.01)
        out, err = proc.communicate()
        if proc.returncode != 0:
            failures.append(err[-300:])
        sent.append(int(out.strip() or 0))
    elapsed = time.monotonic() - started
    for _ in range(50):
        app.processEvents()
        time.sleep(0.01)
    timer.stop()
    rss.append(_rss_mb())
    # The station's own detector adds a report (a DICOS TDR) per examined scan: not sent.
    rows = store.series_list()
    stored = sum(r.instances for r in rows if r.sop_class_uid != DICOS_TDR)
    reports = sum(r.instances for r in rows if r.sop_class_uid == DICOS_TDR)
    unique_sent = sum(min(s, 40) for s in sent)  # files repeat: each scanner's 40 are replaced in place
    receiver.stop()
    window.viewer.shutdown()
    window.close()
    bridge.close()
    store.close()
    steady = rss[len(rss) // 2:]
    return {
        "concurrent_senders": senders,
        "scanners_nice": SCANNERS_NICE,
        "seconds": round(elapsed, 1),
        "instances_sent": sum(sent),
        "instances_acknowledged_per_s": round(sum(sent) / elapsed, 1),
        "received_by_gui": window._received,
        "distinct_instances_stored": stored,
        "detector_reports_stored": reports,
        "distinct_instances_sent": unique_sent,
        "sender_failures": len(failures),
        "max_gui_stall_ms": round(max(stalls) if stalls else 0.0, 1),
        "p99_gui_stall_ms": round(sorted(stalls)[int(0.99 * (len(stalls) - 1))], 1) if stalls else 0.0,
        "rss_mb": {"start": round(rss[0], 1), "end": round(rss[-1], 1),
                   "max": round(max(rss), 1), "second_half_growth": round(steady[-1] - steady[0], 1)},
    }


def bench_reliability(*, seconds: float = 120.0) -> dict[str, Any]:
    for tool in ("storescu", "echoscu"):
        if shutil.which(tool) is None:
            raise RuntimeError(f"{tool} not found: install Debian package dcmtk (make system-deps)")
    work = Path(tempfile.mkdtemp(prefix="station-reliability-"))
    try:
        result: dict[str, Any] = {"benchmark": "reliability", "peer": "dcmtk storescu (scanners), raw sockets (hostile)"}
        result["crash"] = crash_part(work)
        result["hostile"] = hostile_part(work)
        result["load"] = load_part(work, seconds)
        load = result["load"]
        result["goals"] = {
            "lost_after_kill": 0,
            "hostile_survived": True,
            "max_gui_stall_ms": 100,
        }
        result["met"] = {
            "lost_after_kill": result["crash"]["lost"] == 0,
            "hostile_survived": result["hostile"]["hostile_survived"],
            "max_gui_stall_ms": load["max_gui_stall_ms"] <= 100,
            "nothing_lost_under_load": load["sender_failures"] == 0
            and load["distinct_instances_stored"] == load["distinct_instances_sent"],
        }
        result["complete"] = True
        return result
    finally:
        shutil.rmtree(work, ignore_errors=True)
