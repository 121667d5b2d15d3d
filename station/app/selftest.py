"""``station --self-test``: does this installation of the station work, here and now?

Written for the people who install workstations (and for CI, which runs it on the frozen
build unpacked from the .deb with an empty environment). It starts the real pieces, not
mocks, each on throw-away data in a temporary folder, and never touches the user's store:

- ``settings``: the user's settings file (if any) parses, as the station would read it.
- ``decoders``: RLE Lossless, JPEG 2000 Lossless, JPEG Baseline, JPEG Lossless (SV1) and
  JPEG-LS Lossless images are encoded here at run time (pydicom's encoders, Pillow, and a
  tiny lossless JPEG writer below) and decoded twice: with the pydicom plugin the station
  ships for that syntax named explicitly (pylibjpeg for RLE and JPEG 2000, GDCM for JPEG,
  pyjpegls for JPEG-LS: all permissively licensed, see packaging/README.md; a frozen
  build that lost a plugin fails here) and through the station's own volume reader. The
  arrays must match what was encoded.
- ``receiver``: pynetdicom is the version the station's changes to it are verified
  against (with another, ``station serve`` refuses to start); a receiver process
  (``station serve``, started the way the GUI starts it: from the frozen executable when
  frozen) on a free loopback port and a temporary store; a synthetic CT series and a
  DICOS multi-frame instance go over C-STORE; every instance must be announced and indexed.
- ``viewer``: the Qt application (offscreen unless ``QT_QPA_PLATFORM`` says otherwise),
  its theme and icon, a main window on a temporary store holding a synthetic bag, the bag
  selected; the viewer must show its slices with the stored values and paint them.

Prints one line per check and exits 0, or 1 naming what failed and why. Takes a few
seconds. Set ``QT_QPA_PLATFORM=xcb`` (or ``wayland``) to check the real display too.
"""

from __future__ import annotations

import io
import logging
import os
import platform
import shutil
import struct
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

if TYPE_CHECKING:
    import numpy as np
    from pydicom.dataset import Dataset

LOGGER = logging.getLogger(__name__)

#: Longest any single wait inside a check may take before it counts as a failure.
WAIT_S = 30.0


class SelfTestFailure(Exception):
    """A check found something wrong; the message is the reason shown to the user."""


@dataclass
class CheckResult:
    """The outcome of one check: its name, whether it passed, how long it took, and what it
    saw (on success) or why it failed."""

    name: str
    ok: bool
    seconds: float
    detail: str


# -- settings ---------------------------------------------------------------------------------------


def check_settings(work: Path, config: str | None = None) -> str:
    """The settings the station would start with parse (a typo stops a station starting)."""
    from station.core.config import ConfigError, default_config_path, load_settings

    path = Path(config) if config else None
    try:
        settings = load_settings(path)
    except ConfigError as exc:
        raise SelfTestFailure(str(exc)) from exc
    source = settings.source or default_config_path()
    state = "read" if settings.source else "not present, defaults"
    return f"{source} ({state}); store {settings.store.path}"


# -- pixel decoders ---------------------------------------------------------------------------------


def _test_image(rows: int = 48, cols: int = 40) -> np.ndarray:
    """A deterministic 16-bit image with smooth parts, noise and both extremes."""
    import numpy as np

    rng = np.random.default_rng(10)
    img = np.add.outer(np.arange(rows) * 37, np.arange(cols) * 23) + rng.integers(0, 300, (rows, cols))
    img = img.astype(np.uint16)
    img[3, 4], img[3, 5], img[4, 4] = 65535, 0, 32768  # the largest differences a predictor sees
    return img


def encode_jpeg_lossless(image: np.ndarray) -> bytes:
    """Encode a 16-bit greyscale image as a JPEG Lossless codestream (process 14,
    predictor 1, point transform 0): what DICOM calls JPEG Lossless SV1.

    Neither pydicom nor the pylibjpeg plugins can write this format, and the self-test
    needs one to check the decoder that CT scanners' lossless files go through. One
    Huffman table with a 5-bit code for every difference category keeps it short; the
    result is valid, only not compact.
    """
    import numpy as np

    img = np.asarray(image, dtype=np.uint16)
    if img.ndim != 2:
        raise ValueError("one greyscale frame expected")
    rows, cols = img.shape
    precision = 16
    x = img.astype(np.int64)
    pred = np.empty_like(x)
    pred[0, 0] = 1 << (precision - 1)
    pred[0, 1:] = x[0, :-1]  # first row: left neighbour
    pred[1:, 0] = x[:-1, 0]  # first column: the pixel above
    pred[1:, 1:] = x[1:, :-1]  # elsewhere: left neighbour (selection value 1)
    diff = (x - pred) % 65536
    diff = np.where(diff > 32768, diff - 65536, diff)

    out = bytearray()
    acc = 0
    nbits = 0

    def put(value: int, length: int) -> None:
        nonlocal acc, nbits
        acc = (acc << length) | (value & ((1 << length) - 1))
        nbits += length
        while nbits >= 8:
            nbits -= 8
            byte = (acc >> nbits) & 0xFF
            out.append(byte)
            if byte == 0xFF:
                out.append(0)  # byte stuffing
        acc &= (1 << nbits) - 1

    for d in diff.ravel().tolist():
        category = int(abs(d)).bit_length()
        put(category, 5)  # the Huffman code of category k is k, in 5 bits
        if 0 < category < 16:  # category 16 (difference 32768) has no extra bits
            put(d if d > 0 else d - 1, category)
    if nbits:
        put(0x7F, 8 - nbits)  # pad with 1-bits

    def segment(marker: int, body: bytes) -> bytes:
        return struct.pack(">BBH", 0xFF, marker, len(body) + 2) + body

    counts = [0] * 16
    counts[4] = 17  # 17 codes of length 5: categories 0..16
    dht = bytes([0x00]) + bytes(counts) + bytes(range(17))
    sof3 = struct.pack(">BHHB", precision, rows, cols, 1) + bytes([1, 0x11, 0])
    sos = bytes([1, 1, 0x00, 1, 0, 0])  # one component, table 0, predictor 1, Se 0, Pt 0
    return (b"\xff\xd8" + segment(0xC3, sof3) + segment(0xC4, dht) + segment(0xDA, sos)
            + bytes(out) + b"\xff\xd9")


def _image_dataset(pixels: np.ndarray, bits: int) -> Dataset:
    """A minimal secondary-capture image (file meta included) holding `pixels` uncompressed."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.PatientID = "SELFTEST"
    ds.Modality = "OT"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = bits
    ds.BitsStored = bits
    ds.HighBit = bits - 1
    ds.PixelRepresentation = 0
    ds.PixelData = pixels.tobytes()
    return ds


def _encapsulated(ds: Dataset, frame: bytes, transfer_syntax: str) -> Dataset:
    """`ds` with its pixels replaced by one compressed frame."""
    from pydicom.encaps import encapsulate

    ds.PixelData = encapsulate([frame])
    ds["PixelData"].VR = "OB"
    ds.file_meta.TransferSyntaxUID = transfer_syntax
    return ds


# The pydicom decoding plugin the station ships for each compressed syntax. No GPL code:
# pylibjpeg-libjpeg (GPL-3.0) is not a dependency; JPEG baseline/lossless go through GDCM
# (BSD-3-Clause), JPEG-LS through pyjpegls (MIT, CharLS BSD-3-Clause).
DECODER_PLUGINS = {
    "1.2.840.10008.1.2.5": "pylibjpeg",  # RLE Lossless: pylibjpeg-rle (MIT)
    "1.2.840.10008.1.2.4.90": "pylibjpeg",  # JPEG 2000 Lossless: pylibjpeg-openjpeg (MIT, OpenJPEG BSD-2)
    "1.2.840.10008.1.2.4.50": "gdcm",  # JPEG Baseline
    "1.2.840.10008.1.2.4.70": "gdcm",  # JPEG Lossless SV1 (DICOS CT)
    "1.2.840.10008.1.2.4.80": "pyjpegls",  # JPEG-LS Lossless
}


def check_decoders(work: Path) -> str:
    """Encode small images in the compressed transfer syntaxes scanners send and decode them
    with the plugin shipped for each (DECODER_PLUGINS) and through the station's volume reader."""
    import numpy as np
    import pydicom
    from PIL import Image
    from pydicom.pixels import get_decoder
    from pydicom.uid import JPEG2000Lossless, JPEGBaseline8Bit, JPEGLosslessSV1, JPEGLSLossless, RLELossless

    from station.core.imaging.volume import load_volume

    image16 = _test_image()
    image8 = (image16 >> 8).astype(np.uint8)

    def rle() -> tuple[Dataset, np.ndarray, int]:
        ds = _image_dataset(image16, 16)
        ds.compress(RLELossless, image16, generate_instance_uid=False)
        return ds, image16, 0

    def j2k() -> tuple[Dataset, np.ndarray, int]:
        ds = _image_dataset(image16, 16)
        ds.compress(JPEG2000Lossless, image16, generate_instance_uid=False)
        return ds, image16, 0

    def jpeg_baseline() -> tuple[Dataset, np.ndarray, int]:
        buffer = io.BytesIO()
        Image.fromarray(image8, mode="L").save(buffer, format="JPEG", quality=95)
        expected = np.asarray(Image.open(io.BytesIO(buffer.getvalue())))  # Pillow's own reading
        ds = _encapsulated(_image_dataset(image8, 8), buffer.getvalue(), JPEGBaseline8Bit)
        return ds, expected, 2  # two IDCTs may differ by a grey level or two

    def jpeg_lossless() -> tuple[Dataset, np.ndarray, int]:
        ds = _encapsulated(_image_dataset(image16, 16), encode_jpeg_lossless(image16), JPEGLosslessSV1)
        return ds, image16, 0

    def jpeg_ls() -> tuple[Dataset, np.ndarray, int]:
        ds = _image_dataset(image16, 16)
        ds.compress(JPEGLSLossless, image16, generate_instance_uid=False)
        return ds, image16, 0

    cases: list[tuple[str, str, Callable[[], tuple[Dataset, np.ndarray, int]]]] = [
        ("RLE", RLELossless, rle),
        ("JPEG 2000", JPEG2000Lossless, j2k),
        ("JPEG baseline", JPEGBaseline8Bit, jpeg_baseline),
        ("JPEG lossless", JPEGLosslessSV1, jpeg_lossless),
        ("JPEG-LS", JPEGLSLossless, jpeg_ls),
    ]
    problems: list[str] = []
    done: list[str] = []
    for label, ts, make in cases:
        decoder = get_decoder(ts)
        plugin = DECODER_PLUGINS[ts]
        if plugin not in decoder.available_plugins:
            missing = "; ".join(decoder.missing_dependencies) or "plugin not registered"
            problems.append(f"{label}: no {plugin} decoder (available: "
                            f"{', '.join(decoder.available_plugins) or 'none'}; {missing})")
            continue
        try:
            ds, expected, tolerance = make()
            path = work / f"decoders-{label.replace(' ', '-').lower()}.dcm"
            ds.save_as(path, enforce_file_format=True)
            via_plugin = np.asarray(pydicom.pixels.pixel_array(str(path), decoding_plugin=plugin))
            via_station = np.asarray(load_volume([path]).raw_slice(0))
        except Exception as exc:  # encoders and decoders raise anything
            problems.append(f"{label}: {type(exc).__name__}: {exc}")
            continue
        for how, got in ((plugin, via_plugin), ("station reader", via_station)):
            if got.shape != expected.shape:
                problems.append(f"{label} via {how}: shape {got.shape}, expected {expected.shape}")
                break
            worst = int(np.max(np.abs(got.astype(np.int64) - expected.astype(np.int64))))
            if worst > tolerance:
                problems.append(f"{label} via {how}: pixels differ by up to {worst} (allowed {tolerance})")
                break
        else:
            done.append(label)
    if problems:
        raise SelfTestFailure("; ".join(problems))
    return ", ".join(done) + " decoded (the shipped plugins and the station's reader agree with the encoded pixels)"


# -- receiver -----------------------------------------------------------------------------------------


def _wait_until(predicate: Callable[[], bool], timeout: float, step: Callable[[], object] | None = None) -> bool:
    """Poll `predicate` until it holds or `timeout` passes; call `step` (event processing) between."""
    deadline = time.monotonic() + timeout
    while True:
        if step is not None:
            step()
        if predicate():
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)


def check_receiver(work: Path) -> str:
    """Check pynetdicom is the version the station's changes to it are verified against,
    start a receiver process on loopback, C-STORE a CT series and a DICOS instance to it,
    and check every instance was announced and indexed."""
    import pydicom

    from station.core.synth import bags as synth
    from station.core.config import ReceiverSettings
    from station.core.events import EventBus, InstanceStored, ReceiverError
    from station.core.store.store import Store
    from station.net.dimse.pynetdicom_ext import reactor
    from station.net.dimse.receiver import ReceiverStartError
    from station.app.receiver_process import ReceiverProcess
    from station.net.dimse.sender import SendError, send_files

    try:
        reactor.check_version()
    except reactor.UnsupportedPynetdicomError as exc:
        raise SelfTestFailure(str(exc)) from exc
    bag = synth.make_bag_volume(size=48, slices=8, seed=11)
    files = synth.write_ct_series(bag, work / "send-ct", seed=11, patient_id="SELFTEST-CT")
    files += synth.write_ct_series(bag, work / "send-dicos", dicos=True, seed=12, patient_id="SELFTEST-DICOS",
                                   transfer_syntax="RLELossless")
    store_path = work / "receiver-store"
    bus = EventBus()
    stored: list[InstanceStored] = []
    errors: list[str] = []
    lock = threading.Lock()

    def on_event(event: object) -> None:
        with lock:
            if isinstance(event, InstanceStored):
                stored.append(event)
            elif isinstance(event, ReceiverError):
                errors.append(f"{event.peer}: {event.message}")

    bus.subscribe(on_event)
    settings = ReceiverSettings(aet="SELFTEST", host="127.0.0.1", port=0)
    rx = ReceiverProcess(store_path, bus, settings)
    try:
        try:
            rx.start(timeout=WAIT_S)
        except ReceiverStartError as exc:
            raise SelfTestFailure(f"receiver process did not start: {exc}") from exc
        try:
            result = send_files("127.0.0.1", rx.port, files, calling_aet="SELFTEST_SCU", called_aet=rx.aet,
                                timeout=WAIT_S)
        except SendError as exc:
            raise SelfTestFailure(f"cannot send to the receiver on port {rx.port}: {exc}") from exc
        if result.failed:
            path, why = result.failed[0]
            raise SelfTestFailure(f"{len(result.failed)} of {len(files)} files refused, first {path.name}: {why}")
        if not _wait_until(lambda: len(stored) >= len(files), 10.0):
            raise SelfTestFailure(f"{len(stored)} of {len(files)} stored instances announced by the receiver"
                                  + (f"; errors: {'; '.join(errors)}" if errors else ""))
        port, pid = rx.port, rx.pid
    finally:
        rx.stop()
    if errors:
        raise SelfTestFailure(f"receiver reported errors: {'; '.join(errors)}")
    expected: dict[str, int] = {}  # series UID -> instances sent
    for path in files:
        uid = str(pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["SeriesInstanceUID"]).SeriesInstanceUID)
        expected[uid] = expected.get(uid, 0) + 1
    with Store(store_path, maintenance=False) as store:
        # Other series (a machine TDR from the detector, for instance) may be there too.
        rows = {row.series_uid: row for row in store.series_list() if row.series_uid in expected}
    indexed = {uid: row.instances for uid, row in rows.items()}
    if indexed != expected:
        raise SelfTestFailure(f"the index holds {sum(indexed.values())} of the {len(files)} instances sent "
                              f"({len(indexed)} of {len(expected)} series)")
    frames = max(row.frames for row in rows.values())
    return (f"{len(files)} instances (CT slices and a {frames}-frame DICOS RLE instance) over C-STORE "
            f"to receiver process {pid} on 127.0.0.1:{port}, all indexed")


# -- GUI and viewer -------------------------------------------------------------------------------------


def check_viewer(work: Path) -> str:
    """Open the station's main window on a store holding a synthetic bag, select the bag,
    and check the viewer shows its slices with the stored values."""
    import numpy as np
    from PySide6 import __version__ as pyside_version
    from PySide6.QtCore import qVersion
    from PySide6.QtGui import QIcon

    from station.core.synth import bags as synth
    from station.core.config import Settings
    from station.core.events import EventBus
    from station.core.resources import resource_path
    from station.core.store.store import Store
    from station.app.gui import make_app
    from station.ui.bridge import EventBridge
    from station.ui.main_window import MainWindow

    app = make_app([sys.argv[0] if sys.argv else "station"])
    platform_name = app.platformName()
    icon = QIcon(str(resource_path("station.svg")))
    if icon.pixmap(64, 64).isNull():
        raise SelfTestFailure("the application icon (SVG) does not render: Qt's SVG icon engine is missing")
    if not app.styleSheet():
        raise SelfTestFailure("the station style sheet was not applied (resources/style.qss)")

    size, slices = 64, 24
    bag = synth.make_bag_volume(size=size, slices=slices, threats=1, seed=5)
    files = synth.write_ct_series(bag, work / "scan", seed=5, patient_id="SELFTEST-BAG")
    settings = Settings()
    settings.store.path = work / "gui-store"
    bus = EventBus()
    with Store(settings.store.path) as store:
        imported = store.import_paths(files)
        stored, bad = imported.stored, imported.errors
        if bad or len(stored) != slices:
            raise SelfTestFailure(f"importing the synthetic bag stored {len(stored)} of {slices} files: {bad[:1]}")
        series_uid = stored[0].series_uid
        bridge = EventBridge(bus)
        window = MainWindow(store, bridge, settings)
        try:
            window.resize(1280, 800)
            window.show()
            window.refresh()
            if not any(row.series_uid == series_uid for row in window.listed_rows()):
                raise SelfTestFailure("the scan list does not show the imported bag")
            if not window.select_series(series_uid):
                raise SelfTestFailure("the main window could not open the imported bag")
            viewer = window.viewer

            def shown() -> bool:
                volume = viewer.volume
                return (volume is not None and volume.n_slices == slices and not viewer.is_busy()
                        and viewer.current_slice is not None)

            if not _wait_until(shown, WAIT_S, app.processEvents):
                count = viewer.volume.n_slices if viewer.volume is not None else 0
                raise SelfTestFailure(f"the viewer shows {count} of {slices} slices after {WAIT_S:.0f} s"
                                      + (f": {viewer.errors[0]}" if viewer.errors else ""))
            if viewer.errors:
                raise SelfTestFailure(f"the viewer could not use some files: {viewer.errors[0]}")
            k = viewer.current_index
            values = viewer.displayed_values()
            if values is None:
                raise SelfTestFailure("the viewer shows no image")
            if values.shape != (size, size) or not np.array_equal(values, bag.voxels[k].astype(values.dtype)):
                raise SelfTestFailure(f"slice {k} on screen does not hold the stored values (shape {values.shape})")
            picture = window.grab().toImage()
            if picture.isNull() or picture.width() < 100:
                raise SelfTestFailure("the main window did not paint")
            if not _has_detail(picture):
                raise SelfTestFailure("the main window painted a blank picture")
        finally:
            window.close()
            window.deleteLater()
            bridge.close()
            bridge.deleteLater()
            app.processEvents()
    return (f"{slices} slices of a synthetic bag shown and painted (slice {k}, {size}x{size}); "
            f"Qt {qVersion()} (PySide6 {pyside_version}), platform {platform_name}")


def _has_detail(image: object) -> bool:
    """True if a QImage holds more than a handful of colours (a painted window, not a blank one)."""
    from PySide6.QtGui import QImage

    assert isinstance(image, QImage)
    small = image.scaled(64, 40).convertToFormat(QImage.Format.Format_RGB32)
    colours = {small.pixel(x, y) for x in range(small.width()) for y in range(small.height())}
    return len(colours) > 8


# -- runner -------------------------------------------------------------------------------------------


def _one_line(exc: BaseException) -> str:
    """An unexpected exception as one report line: its type, first and last lines (numpy's
    import error, for one, puts the cause at the end of a long page of advice)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    if len(lines) > 2:
        lines = [lines[0], "...", lines[-1]]
    return f"{type(exc).__name__}: {' '.join(lines)}"


def _describe_build() -> str:
    """One line: version, frozen or not (and where), Python."""
    from station import __version__

    if getattr(sys, "frozen", False):
        where = f"frozen build at {Path(sys.executable).parent}"
    else:
        where = f"from {Path(__file__).resolve().parent}"
    return f"Inspection Station {__version__} self-test, {where}, Python {platform.python_version()}"


def run_self_test(out: TextIO | None = None, *, config: str | None = None) -> int:
    """Run every check, print one line each and a verdict; return 0 if all passed, else 1.

    Main thread only (it creates the QApplication). Uses the offscreen Qt platform unless
    ``QT_QPA_PLATFORM`` is set, so it runs without a display.
    """
    out = out or sys.stdout
    if not os.environ.get("QT_QPA_PLATFORM"):
        os.environ["QT_QPA_PLATFORM"] = "offscreen"
    started = time.perf_counter()
    print(_describe_build(), file=out, flush=True)
    checks: list[tuple[str, Callable[[Path], str]]] = [
        ("settings", lambda work: check_settings(work, config)),
        ("decoders", check_decoders),
        ("receiver", check_receiver),
        ("viewer", check_viewer),
    ]
    results: list[CheckResult] = []
    work = Path(tempfile.mkdtemp(prefix="station-selftest-"))
    try:
        for name, check in checks:
            t0 = time.perf_counter()
            try:
                detail = check(work)
                result = CheckResult(name, True, time.perf_counter() - t0, detail)
            except SelfTestFailure as exc:
                result = CheckResult(name, False, time.perf_counter() - t0, str(exc))
            except Exception as exc:  # a self-test reports whatever breaks, it never crashes
                LOGGER.debug("self-test check %s failed", name, exc_info=True)
                result = CheckResult(name, False, time.perf_counter() - t0, _one_line(exc))
            results.append(result)
            print(f"{'ok  ' if result.ok else 'FAIL'}  {name:<9} {result.seconds:5.2f} s  {result.detail}",
                  file=out, flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    failed = [r.name for r in results if not r.ok]
    total = time.perf_counter() - started
    if failed:
        print(f"self-test FAILED: {', '.join(failed)} ({len(failed)} of {len(results)} checks, {total:.1f} s)",
              file=out, flush=True)
        return 1
    print(f"self-test passed: {len(results)} checks in {total:.1f} s", file=out, flush=True)
    return 0


__all__ = ["CheckResult", "SelfTestFailure", "encode_jpeg_lossless", "run_self_test"]
