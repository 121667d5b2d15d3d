"""Fixtures for the Qt tests: an offscreen display, a store, a bus, a bridge, thread checks."""

from __future__ import annotations

import os

# Must happen before anything imports Qt: the tests never need a real display.
os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from station.core.events import EventBus
from station.core.store.store import Store


def _os_threads() -> dict[str, str]:
    """Every OS thread of this process (tid -> name); sees Qt's threads as well as Python's."""
    threads = {}
    for tid in os.listdir("/proc/self/task"):
        try:
            threads[tid] = Path(f"/proc/self/task/{tid}/comm").read_text().strip()
        except OSError:  # the thread ended while we looked
            pass
    return threads


@pytest.fixture(scope="session")
def qt_warm(qapp):
    """Show one pyqtgraph widget once, so Qt's lazily started helper threads exist before
    the per-test thread check takes its baseline."""
    import pyqtgraph as pg

    pg.setConfigOptions(imageAxisOrder="row-major")
    widget = pg.GraphicsLayoutWidget()
    widget.resize(800, 800)
    view = widget.addViewBox()
    # Qt scales large images on an internal thread pool (not QThreadPool.globalInstance())
    # whose idle threads live on; start them here so the baseline includes them.
    view.addItem(pg.ImageItem(np.zeros((2048, 2048), dtype=np.float32), levels=(0, 1)))
    widget.show()
    qapp.processEvents()
    widget.grab()
    widget.close()
    widget.deleteLater()
    qapp.processEvents()
    return qapp


@pytest.fixture(autouse=True)
def no_thread_left_behind(qt_warm) -> Iterator[None]:
    """Fail a test that leaves a thread (Python, QThread or QThreadPool worker) running.

    Overrides the suite-wide check of the same name for the Qt tests. That one compares
    ``threading.enumerate()``, which cannot see a QThread at all, and which keeps a
    ``_DummyThread`` record, "alive" forever on Python 3.11, for every Qt thread that once
    ran Python code (a log call is enough). Counting the OS threads of the process sees
    Python threads, QThreads and pool workers alike, and only while they really run.
    """
    before = _os_threads()
    yield
    from PySide6.QtCore import QCoreApplication

    from PySide6.QtCore import QThreadPool

    assert QThreadPool.globalInstance().waitForDone(3000), "work left on the global QThreadPool"
    deadline = time.monotonic() + 3.0
    while True:
        # Deferred deletes (deleteLater) of widgets run here; they own their pools.
        QCoreApplication.sendPostedEvents(None, 0)
        QCoreApplication.processEvents()
        left = {tid: name for tid, name in _os_threads().items() if tid not in before}
        if not left or time.monotonic() > deadline:
            break
        time.sleep(0.02)
    assert not left, f"threads left running after the test: {sorted(left.values())}"


@pytest.fixture
def store(tmp_path) -> Iterator[Store]:
    s = Store(tmp_path / "store", durable=False)
    yield s
    s.close()


@pytest.fixture
def bus() -> EventBus:
    return EventBus()


@pytest.fixture
def bridge(qapp, bus):
    from station.ui.bridge import EventBridge

    b = EventBridge(bus)
    yield b
    b.close()
    b.deleteLater()


# -- synthetic CT written with pydicom -----------------------------------------------------


def write_ct_slices(
    out_dir: Path,
    n: int,
    *,
    size: int = 32,
    series_uid: str | None = None,
    study_uid: str | None = None,
    patient_id: str = "BAG0001",
    z0: float = 0.0,
    dz: float = 2.0,
    order: list[int] | None = None,
    description: str = "Synthetic CT",
    modality: str = "CT",
) -> list[Path]:
    """Write `n` one-slice CT files; slice k has z = z0 + k*dz and every pixel equal to k*10.

    Instance numbers are deliberately the reverse of the geometric order, so a viewer that
    sorts by instance number instead of position shows the wrong slice. Returns the paths
    in the order given by `order` (default: geometric).
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    series_uid = series_uid or generate_uid()
    study_uid = study_uid or generate_uid()
    frame_of_reference = generate_uid()
    paths = []
    for k in range(n):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        sop_uid = generate_uid()
        meta.MediaStorageSOPInstanceUID = sop_uid
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        path = out_dir / f"ct_{series_uid[-8:]}_{k:04d}.dcm"
        ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = sop_uid
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series_uid
        ds.FrameOfReferenceUID = frame_of_reference
        ds.PatientID = patient_id
        ds.PatientName = "Test^Bag"
        ds.Modality = modality
        ds.SeriesDescription = description
        ds.SeriesNumber = 1
        ds.InstanceNumber = n - k
        ds.ImagePositionPatient = [0.0, 0.0, z0 + k * dz]
        ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
        ds.PixelSpacing = [0.8, 0.8]
        ds.SliceThickness = abs(dz)
        ds.Rows = size
        ds.Columns = size
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated = 16
        ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 1
        ds.RescaleIntercept = -1000
        ds.RescaleSlope = 1
        ds.RescaleType = "HU"
        ds.WindowCenter = 40
        ds.WindowWidth = 400
        pixels = np.full((size, size), 1000 + k * 10, dtype=np.int16)
        pixels[0, 0] = 0  # one dark corner so the image is not perfectly flat
        ds.PixelData = pixels.tobytes()
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    if order is not None:
        paths = [paths[i] for i in order]
    return paths


@pytest.fixture
def ct_files(tmp_path):
    """A factory: ``ct_files(n, **kw)`` writes a small CT series under tmp_path."""
    counter = iter(range(1000))

    def make(n: int, **kw) -> list[Path]:
        return write_ct_slices(tmp_path / f"ct{next(counter)}", n, **kw)

    return make

