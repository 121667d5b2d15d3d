"""Crash safety: SIGKILL the receiver in the middle of concurrent transfers (issue 9).

Every instance a scanner saw acknowledged with Success must be there after a restart,
intact and indexed; nothing half-written may remain; index and files must agree.
"""

from __future__ import annotations

import hashlib
import signal
import subprocess
import sys
import time
from pathlib import Path

import pydicom
import pytest

from station.bench.reliability import acknowledged_files
from station.core.synth import bags as synth
from station.core.store.store import Store
from tests.e2e.test_serve import start_serve


def digest(ds: pydicom.Dataset) -> str:
    """A checksum of what matters of an instance: its UIDs and every pixel byte."""
    h = hashlib.sha256()
    for keyword in ("SOPInstanceUID", "SeriesInstanceUID", "StudyInstanceUID", "InstanceNumber"):
        h.update(str(ds.get(keyword, "")).encode())
    h.update(ds.PixelData)
    return h.hexdigest()


@pytest.mark.slow
def test_sigkill_mid_transfer_loses_nothing_acknowledged(tmp_path, free_port, dcmtk_env):
    folders = []
    for k in range(4):
        folder = tmp_path / f"scanner{k}"
        synth.write_ct_series(synth.make_bag_volume(size=256, slices=60, seed=40 + k), folder)
        (folder / "truth.json").unlink()
        folders.append(folder)
    total = 4 * 60
    store_dir = tmp_path / "store"
    serve = start_serve(store_dir, free_port)
    scanners = [
        subprocess.Popen(["storescu", "-v", "-R", "+sd", "-aet", f"CT{k}", "-aec", "STATION", "127.0.0.1",
                          str(free_port), str(folder)],
                         env=dcmtk_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for k, folder in enumerate(folders)
    ]
    # Kill once a fair share has arrived, while all four are still sending.
    objects = store_dir / "objects"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and len(list(objects.rglob("*.dcm"))) < total // 3:
        time.sleep(0.01)
    serve.send_signal(signal.SIGKILL)
    serve.wait(10)
    serve.stdout.close()
    serve.stderr.close()
    logs = [p.communicate(timeout=60)[0] for p in scanners]
    acked = [f for log in logs for f in acknowledged_files(log)]
    assert 0 < len(acked) < total, "the kill must land in the middle of the transfers"

    with Store(store_dir) as store:  # reopening after a crash reconciles the store
        assert list(store.tmp_dir.iterdir()) == []
        indexed = {}
        for row in store.series_list():
            for inst in store.instances(row.series_uid):
                indexed[inst.sop_instance_uid] = inst.path
        on_disk = set(store.objects_dir.rglob("*.dcm"))
        assert set(indexed.values()) == on_disk  # index and files agree
        for path in on_disk:  # nothing half-written: every file reads whole
            assert len(pydicom.dcmread(path).PixelData) == 256 * 256 * 2
        for original in acked:
            source = pydicom.dcmread(original)
            kept = indexed.get(source.SOPInstanceUID)
            assert kept is not None, f"acknowledged but lost: {original}"
            assert digest(pydicom.dcmread(kept)) == digest(source)

    # And the station serves again on the same store.
    again = start_serve(store_dir, free_port)
    again.send_signal(signal.SIGTERM)
    out, _ = again.communicate(timeout=30)
    assert again.returncode == 0
    print(f"acknowledged before the kill: {len(acked)} of {total}; on disk after restart: {len(on_disk)}",
          file=sys.stderr)


def _peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM in /proc status")


@pytest.mark.slow
def test_memory_stays_bounded_while_receiving_a_huge_instance(tmp_path, free_port, dcmtk_env):
    """A 200 MB multi-frame CT streams to disk: the receiver never holds it in memory."""
    bag = synth.make_bag_volume(size=512, slices=400, seed=77)
    synth.write_ct_series(bag, tmp_path / "big", dicos=True)
    (tmp_path / "big" / "truth.json").unlink()
    (big,) = list((tmp_path / "big").glob("*.dcm"))
    size_mb = big.stat().st_size / 2**20
    assert size_mb > 190
    del bag
    serve = start_serve(tmp_path / "store", free_port)
    try:
        before = _peak_rss_mb(serve.pid)
        out = subprocess.run(["storescu", "-R", "-aec", "STATION", "127.0.0.1", str(free_port), str(big)],
                             env=dcmtk_env, capture_output=True, text=True, timeout=180)
        assert out.returncode == 0, out.stderr
        after = _peak_rss_mb(serve.pid)
    finally:
        serve.send_signal(signal.SIGTERM)
        serve.communicate(timeout=60)
    growth = after - before
    print(f"peak RSS {before:.0f} -> {after:.0f} MB receiving a {size_mb:.0f} MB instance", file=sys.stderr)
    assert growth < 0.25 * size_mb, f"receiver memory grew {growth:.0f} MB for a {size_mb:.0f} MB instance"
    with Store(tmp_path / "store") as store:
        (row,) = [r for r in store.series_list() if r.modality == "CT"]
        assert row.frames == 400
        assert abs(row.bytes - big.stat().st_size) < 4096
