"""Fixtures for tests against a real Orthanc with the DICOMweb plugin (Debian packages);
tests/conftest.py registers them for every test directory.

One private Orthanc per test session on 127.0.0.1 (ephemeral HTTP and DICOM ports, its
own storage in a temp dir), started by ``station.bench.frames.OrthancServer`` and
stopped (terminate, wait) at teardown. Synthetic scans from ``station.core.synth.bags`` are
uploaded once; ``truth.json`` stays behind. Skips when Orthanc is not installed, fails
in CI (``CI`` set) because CI must have it (packaging/system-deps.sh).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest

from station.testing.orthanc import OrthancServer, orthanc_executable
from station.core.synth.bags import make_bag_volume, write_ct_series

SIZE = 48
SLICES = 10


@dataclass(frozen=True)
class Scan:
    """One uploaded synthetic series and its truth (voxels in MHU, (z, y, x))."""

    name: str
    patient_id: str
    study_uid: str
    series_uid: str
    sop_uids: tuple[str, ...]  # in slice order
    files: tuple[Path, ...]
    voxels: np.ndarray
    transfer_syntax: str
    multiframe: bool
    study_date: str


# name: (dicos multi-frame?, transfer syntax, seed, acquisition date)
SCANS: dict[str, tuple[bool, str | None, int, datetime]] = {
    "classic": (False, None, 11, datetime(2024, 3, 1, 9, 0)),
    "dicos": (True, None, 12, datetime(2024, 3, 5, 9, 0)),
    "rle": (True, "1.2.840.10008.1.2.5", 13, datetime(2024, 4, 2, 9, 0)),
    "j2k": (False, "1.2.840.10008.1.2.4.90", 14, datetime(2024, 5, 20, 9, 0)),
}


@pytest.fixture(scope="session")
def orthanc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OrthancServer]:
    if orthanc_executable() is None:
        message = ("Orthanc with the DICOMweb plugin is not installed (Debian packages orthanc, "
                   "orthanc-dicomweb: packaging/system-deps.sh)")
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    server = OrthancServer(tmp_path_factory.mktemp("orthanc"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def scans(orthanc: OrthancServer, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Scan]:
    """The synthetic series of ``SCANS``, uploaded to ``orthanc``."""
    import pydicom

    out: dict[str, Scan] = {}
    root = tmp_path_factory.mktemp("scans")
    for name, (dicos, ts, seed, when) in SCANS.items():
        bag = make_bag_volume(size=SIZE, slices=SLICES, seed=seed)
        pid = f"BAG-{name.upper()}"
        files = write_ct_series(bag, root / name, dicos=dicos, transfer_syntax=ts, seed=seed,
                                patient_id=pid, acquired_at=when)
        orthanc.upload(files)
        headers = [pydicom.dcmread(f, stop_before_pixels=True) for f in files]
        out[name] = Scan(
            name=name, patient_id=pid, study_uid=str(headers[0].StudyInstanceUID),
            series_uid=str(headers[0].SeriesInstanceUID),
            sop_uids=tuple(str(h.SOPInstanceUID) for h in headers), files=tuple(files),
            voxels=bag.voxels, transfer_syntax=str(headers[0].file_meta.TransferSyntaxUID),
            multiframe=dicos, study_date=when.strftime("%Y%m%d"),
        )
    return out
