"""Issue 15, reverse direction: objects written by the NEMA DICOS toolkit (``pydicos``), in
its default transfer syntaxes (JPEG lossless for CT, DX and even the TDR's file meta), are
received from dcmtk's storescu by ``station serve``, stored, loaded as the viewer loads
them, and turned into an alert with every PTO."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pydicom
from pyDICOS import ASSESSMENT_FLAG

from station.core.dicom.sopclasses import DICOS_TDR
from station.core.imaging.volume import load_volume
from station.core.store.store import Store
from station.core.triage.alerts import AlertBook
from tests.dicos_toolkit import toolkit_ct, toolkit_dx, toolkit_tdr
from tests.e2e.test_serve import start_serve, stop_serve, store_ls

import subprocess


def test_toolkit_ct_dx_and_tdr_are_received_stored_shown_and_alerted(tmp_path, free_port, dcmtk_env):
    rng = np.random.default_rng(15)
    voxels = rng.integers(0, 3000, (20, 64, 56)).astype(np.uint16)
    send = tmp_path / "send"
    send.mkdir()
    ct = toolkit_ct(send / "ct.dcs", voxels)
    image = rng.integers(0, 4000, (41, 63)).astype(np.uint16)  # odd sizes
    dx = toolkit_dx(send / "dx.dcs", image)
    boxes = [((4, 5, 2), (10, 12, 5)), ((30, 40, 10), (8, 6, 4)), ((1, 1, 15), (3, 3, 3))]
    tdr = toolkit_tdr(send / "tdr.dcs", ct, boxes, flags={3: ASSESSMENT_FLAG.enumHighThreat})

    proc = start_serve(tmp_path / "store", free_port)
    try:
        for path in (ct, dx, tdr):
            out = subprocess.run(["storescu", "-R", "-xs", "-aec", "STATION", "127.0.0.1", str(free_port),
                                  str(path)], capture_output=True, text=True, env=dcmtk_env,
                                 timeout=120)
            assert out.returncode == 0, f"{path.name}: {out.stdout}{out.stderr}"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and len(store_ls(tmp_path / "store")) < 3:
            time.sleep(0.2)
    finally:
        code, _, stderr = stop_serve(proc)
    assert code == 0, stderr[-2000:]

    with Store(tmp_path / "store") as store:
        rows = {r.sop_instance_uid: r for s in store.series_list() for r in store.instances(s.series_uid)}
        for path in (ct, dx, tdr):
            uid = pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID
            assert uid in rows, f"{path.name} was not stored"
        stored_ct = Path(rows[pydicom.dcmread(ct, stop_before_pixels=True).SOPInstanceUID].path)
        stored_dx = Path(rows[pydicom.dcmread(dx, stop_before_pixels=True).SOPInstanceUID].path)
        volume = load_volume([stored_ct])
        assert np.array_equal(np.asarray(volume.array()), voxels.astype(np.asarray(volume.array()).dtype))
        values, _, _ = load_volume([stored_dx]).stored_slice(0)
        assert np.array_equal(values, image)

        book = AlertBook(store)
        assert book.load() >= 1
        alerts = [a for a in book.alerts() if a.series_uid == volume.series_uid]
        assert sorted((a.base, a.extent) for a in alerts) == sorted(
            (tuple(map(float, b)), tuple(map(float, e))) for b, e in boxes)
        assert sorted(a.severity for a in alerts) == ["HIGH_THREAT", "THREAT", "THREAT"]
        assert [r for r in store.instances_of_class(DICOS_TDR)]
