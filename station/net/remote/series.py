"""Open a remote series at once and pull its frames in the order the analyst needs them.

``SeriesLayout.from_metadata`` turns WADO-RS metadata into the slice order a viewer
shows: ascending along the slice normal (the projection of ImagePositionPatient on the
normal of ImageOrientationPatient, ties broken by InstanceNumber, SOP Instance UID and
frame), with each slice's rescale. The rules are those of ``station.core.imaging.volume`` (and
its helpers are reused), so a remote scan and the same scan received locally look alike.

``RemoteSeries`` is the scheduler. Given the layout and the slice on screen it fetches

1. the visible slice, alone, before anything else (so the first image costs one small
   request, not a share of a large one),
2. then its neighbours outward, in small contiguous batches in both directions,
3. then the rest in the background, in larger batches of contiguous frames (one request
   each, see ``DicomWebClient.retrieve_frames``); a classic series (one instance per
   slice, where no frames request can carry two slices) gets its far slices from ONE
   series-level retrieve instead (``DicomWebClient.retrieve_series_frames``), while
   another worker fetches the neighbours,

re-centring whenever the viewer calls ``set_current`` and stopping when ``cancel`` is
called (the analyst moved to another scan). Every frame is decoded, rescaled and handed
to ``on_frame`` as a ``FrameArrived`` (slice index, float32 modality values) so a viewer
can show slices as they arrive; ``on_progress`` reports counts. Frames already in the
shared frame cache cost no request, so re-opening a scan is served locally.

Threads: ``start`` launches ``workers`` threads named ``remote-series-N`` owned by the
object; ``close`` (or leaving a ``with`` block) cancels and joins them. Callbacks run
on those worker threads: a Qt consumer must marshal them to the GUI thread (the UI's
bridge does that). All public methods are thread-safe.

``fetch_series`` is the ``station fetch`` command's engine: metadata, a full pull
through the same scheduler, the assembled volume and, if asked, the stored instances.
"""

from __future__ import annotations

import hashlib
import logging
import math
import re
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from pydicom.dataset import Dataset

from station.core.imaging.volume import (  # geometry rules shared with local volumes
    FrameVolume,
    SliceInfo,
    VolumeError,
    _fg,
    _float,
    _floats,
    _item,
    _normal,
    _same_orientation,
    _same_spacing,
)
from station.net.dicomweb.client import (
    Cancelled,
    CancelToken,
    DicomWebClient,
    DicomWebError,
    Frame,
    PixelDescription,
    RemoteUnavailable,
    decode_frame,
)

LOGGER = logging.getLogger(__name__)

DEFAULT_WORKERS: int = 2
"""Concurrent requests of one pull. Two keep the link busy while one answer is parsed and
decoded; more compete with the archive for its cores (2 here) without finishing sooner."""

NEIGHBOUR_BATCH: int = 8
"""Frames per request next to the visible slice: small, so both directions fill quickly."""

NEIGHBOUR_RADIUS: int = 16
"""Slices on either side of the visible one that count as neighbours."""

BACKGROUND_BATCH: int = 32
"""Frames per request for the rest (16 MiB at 512x512x16 bits): few requests, yet a
cancel or a re-centre waits for at most one such answer."""

BULK_MIN_INSTANCES: int = 16
"""A classic series (one instance per slice) with at least this many slices left beyond
the neighbours gets them from one series-level retrieve instead of one request each."""

BULK_MAX_BYTES: int = 512 * 1024 * 1024
"""Largest series (estimated pixel bytes) pulled by one series-level retrieve: the answer
is held in memory while it is parsed. Larger classic series go frame by frame."""

LAYOUT_KEYWORDS: frozenset[str] = frozenset({
    "SOPInstanceUID", "SOPClassUID", "StudyInstanceUID", "SeriesInstanceUID", "Modality", "InstanceNumber",
    "Rows", "Columns", "NumberOfFrames", "SamplesPerPixel", "BitsAllocated", "BitsStored", "PixelRepresentation",
    "PhotometricInterpretation", "PlanarConfiguration", "ImageOrientationPatient", "ImagePositionPatient",
    "PixelSpacing", "ImagerPixelSpacing", "SliceThickness", "WindowCenter", "WindowWidth", "RescaleSlope",
    "RescaleIntercept", "RescaleType", "SharedFunctionalGroupsSequence", "PerFrameFunctionalGroupsSequence",
})
"""What ``SeriesLayout.from_metadata`` and frame decoding read of the series metadata
(``DicomWebClient.series_metadata(..., keywords=LAYOUT_KEYWORDS)`` converts only these)."""

_DICOS_STORAGE_ROOT = "1.2.840.10008.5.1.4.1.1.501."
_UID_RE = re.compile(r"^[0-9.]{1,64}$")


# --------------------------------------------------------------------------- layout


@dataclass(frozen=True)
class RemoteSlice:
    """One slice of a remote series: which instance and frame (1-based) holds it, where
    it lies and how its stored values become modality values."""

    index: int
    sop_instance_uid: str
    frame_number: int
    position_mm: tuple[float, float, float] | None
    instance_number: int | None
    rescale_slope: float = 1.0
    rescale_intercept: float = 0.0


@dataclass(frozen=True)
class SeriesLayout:
    """Slices of a remote series in viewing order, with the series geometry.

    ``slices`` ascend along the normal; ``pixel`` and ``number_of_frames`` are per SOP
    Instance UID. ``spacing_mm`` is (z, y, x) as in ``SeriesVolume``; ``origin_mm`` the
    position (x, y, z) of the first slice.
    """

    study_uid: str
    series_uid: str
    slices: tuple[RemoteSlice, ...]
    rows: int
    columns: int
    orientation: tuple[float, ...] | None
    pixel_spacing: tuple[float, float] | None
    slice_thickness: float | None
    modality: str
    sop_class_uid: str
    rescale_type: str
    window: tuple[float, float] | None
    photometric: str
    pixel: dict[str, PixelDescription] = field(default_factory=dict)
    number_of_frames: dict[str, int] = field(default_factory=dict)

    @property
    def n_slices(self) -> int:
        return len(self.slices)

    @property
    def shape(self) -> tuple[int, int, int]:
        return (len(self.slices), self.rows, self.columns)

    @property
    def normal(self) -> np.ndarray:
        return _normal(self.orientation)

    @property
    def positions_along_normal_mm(self) -> tuple[float, ...]:
        n = self.normal
        return tuple(float(np.dot(n, s.position_mm)) if s.position_mm else 0.0 for s in self.slices)

    @property
    def spacing_mm(self) -> tuple[float, float, float]:
        """(z, y, x): z is the median step along the normal, as in ``SeriesVolume``."""
        dy, dx = self.pixel_spacing if self.pixel_spacing is not None else (1.0, 1.0)
        dz: float | None = None
        if len(self.slices) > 1 and all(s.position_mm is not None for s in self.slices):
            steps = np.diff(np.asarray(self.positions_along_normal_mm))
            steps = steps[steps > 1e-4]
            if steps.size:
                dz = float(np.median(steps))
        if dz is None:
            dz = self.slice_thickness or 1.0
        return (dz, float(dy), float(dx))

    @property
    def origin_mm(self) -> tuple[float, float, float]:
        if not self.slices or self.slices[0].position_mm is None:
            return (0.0, 0.0, 0.0)
        return self.slices[0].position_mm

    @property
    def direction(self) -> np.ndarray:
        if self.orientation is None:
            return np.eye(3)
        o = self.orientation
        return np.array([o[:3], o[3:], self.normal], dtype=float)

    def frame_volume(self) -> FrameVolume:
        """An empty ``FrameVolume`` with this layout's slices (same order, same index)
        for a viewer to show while ``RemoteSeries`` fills it."""
        slices = [
            SliceInfo(path=Path("remote", s.sop_instance_uid), frame_index=s.frame_number - 1,
                      position_mm=s.position_mm, instance_number=s.instance_number,
                      sop_instance_uid=s.sop_instance_uid)
            for s in self.slices
        ]
        return FrameVolume(
            self.series_uid, slices, rows=self.rows, columns=self.columns, orientation=self.orientation,
            pixel_spacing=self.pixel_spacing, slice_thickness=self.slice_thickness, modality=self.modality,
            sop_class_uid=self.sop_class_uid, rescale_type=self.rescale_type, window=self.window,
            photometric=self.photometric,
        )

    @classmethod
    def from_metadata(cls, datasets: Sequence[Dataset], *, study_uid: str = "", series_uid: str = "") -> SeriesLayout:
        """Build the layout from WADO-RS series metadata (one Dataset per instance).

        Instances without pixels (a TDR, a report filed in the series) are skipped; a
        size, orientation or spacing that does not fit the first image raises
        ``VolumeError``, as for local files. Any thread.
        """
        images = [ds for ds in datasets if "Rows" in ds and "Columns" in ds]
        if not images:
            raise VolumeError(f"series {series_uid or '?'}: no image instances in the metadata")
        entries: list[tuple[tuple[Any, ...], RemoteSlice]] = []
        pixel: dict[str, PixelDescription] = {}
        counts: dict[str, int] = {}
        first: dict[str, Any] | None = None
        for ds in images:
            sop = str(ds.get("SOPInstanceUID", "") or "")
            if not sop:
                raise VolumeError(f"series {series_uid or '?'}: an instance has no SOPInstanceUID")
            if sop in pixel:
                continue
            info = _instance_geometry(ds, sop)
            if first is None:
                first = info
                study_uid = study_uid or str(ds.get("StudyInstanceUID", "") or "")
                series_uid = series_uid or str(ds.get("SeriesInstanceUID", "") or "")
            else:
                _check_fits(sop, info, first)
            pixel[sop] = PixelDescription.from_dataset(ds)
            counts[sop] = info["n_frames"]
            normal = _normal(first["orientation"])
            for s in info["slices"]:
                proj = float(np.dot(normal, s.position_mm)) if s.position_mm is not None else 0.0
                key = (proj, s.instance_number if s.instance_number is not None else math.inf,
                       s.sop_instance_uid, s.frame_number)
                entries.append((key, s))
        assert first is not None
        entries.sort(key=lambda e: e[0])
        slices = tuple(
            RemoteSlice(i, s.sop_instance_uid, s.frame_number, s.position_mm, s.instance_number,
                        s.rescale_slope, s.rescale_intercept)
            for i, (_, s) in enumerate(entries)
        )
        rescale_type = first["rescale_type"]
        if not rescale_type and first["modality"] == "CT" and not first["sop_class"].startswith(_DICOS_STORAGE_ROOT):
            rescale_type = "HU"  # DICOM CT without RescaleType is HU by definition
        return cls(
            study_uid=study_uid, series_uid=series_uid, slices=slices,
            rows=first["rows"], columns=first["columns"], orientation=first["orientation"],
            pixel_spacing=first["spacing"], slice_thickness=first["thickness"],
            modality=first["modality"], sop_class_uid=first["sop_class"], rescale_type=rescale_type,
            window=first["window"], photometric=first["photometric"], pixel=pixel, number_of_frames=counts,
        )


def _instance_geometry(ds: Dataset, sop: str) -> dict[str, Any]:
    """Slices and geometry of one instance's metadata (functional groups for multi-frame)."""
    n_frames = int(_float(ds.get("NumberOfFrames")) or 1)
    shared = _item(ds, "SharedFunctionalGroupsSequence")
    per_frame = ds.get("PerFrameFunctionalGroupsSequence") or []
    multi = shared is not None or len(per_frame) > 0
    if multi and per_frame and len(per_frame) != n_frames:
        raise VolumeError(f"instance {sop}: {len(per_frame)} per-frame items for {n_frames} frames")
    first_group = per_frame[0] if per_frame else None
    orientation = _floats(_fg(first_group, shared, ds, "PlaneOrientationSequence", "ImageOrientationPatient"), 6)
    spacing = _floats(_fg(first_group, shared, ds, "PixelMeasuresSequence", "PixelSpacing"), 2)
    if spacing is None:
        spacing = _floats(ds.get("ImagerPixelSpacing"), 2)
    thickness = _float(_fg(first_group, shared, ds, "PixelMeasuresSequence", "SliceThickness"))
    number = _float(ds.get("InstanceNumber"))
    instance_number = int(number) if number is not None and math.isfinite(number) else None
    center = _float(_fg(first_group, shared, ds, "FrameVOILUTSequence", "WindowCenter"))
    width = _float(_fg(first_group, shared, ds, "FrameVOILUTSequence", "WindowWidth"))
    slices = []
    for i in range(n_frames):
        group = per_frame[i] if i < len(per_frame) else None
        if multi:
            position = _floats(_fg(group, shared, ds, "PlanePositionSequence", "ImagePositionPatient"), 3)
        else:
            position = _floats(ds.get("ImagePositionPatient"), 3) if n_frames == 1 else None
        slope = _float(_fg(group, shared, ds, "PixelValueTransformationSequence", "RescaleSlope"))
        intercept = _float(_fg(group, shared, ds, "PixelValueTransformationSequence", "RescaleIntercept"))
        slices.append(RemoteSlice(
            index=-1, sop_instance_uid=sop, frame_number=i + 1,
            position_mm=position,  # type: ignore[arg-type]
            instance_number=instance_number,
            rescale_slope=1.0 if slope is None else slope,
            rescale_intercept=0.0 if intercept is None else intercept,
        ))
    return {
        "rows": int(ds.Rows), "columns": int(ds.Columns), "orientation": orientation,
        "spacing": spacing, "thickness": thickness, "n_frames": n_frames, "slices": slices,
        "modality": str(ds.get("Modality", "") or ""), "sop_class": str(ds.get("SOPClassUID", "") or ""),
        "rescale_type": str(_fg(first_group, shared, ds, "PixelValueTransformationSequence", "RescaleType") or "").strip().upper(),
        "window": (center, width) if center is not None and width is not None and width > 0 else None,
        "photometric": str(ds.get("PhotometricInterpretation", "") or ""),
        "positioned": all(s.position_mm is not None for s in slices),
    }


def _check_fits(sop: str, info: dict[str, Any], first: dict[str, Any]) -> None:
    if (info["rows"], info["columns"]) != (first["rows"], first["columns"]):
        raise VolumeError(f"instance {sop}: {info['rows']}x{info['columns']} pixels, "
                          f"series has {first['rows']}x{first['columns']}")
    if not _same_orientation(info["orientation"], first["orientation"]):
        raise VolumeError(f"instance {sop}: orientation {info['orientation']} differs from {first['orientation']}")
    if not _same_spacing(info["spacing"], first["spacing"]):
        raise VolumeError(f"instance {sop}: pixel spacing {info['spacing']} differs from {first['spacing']}")
    if info["positioned"] != first["positioned"]:
        raise VolumeError(f"instance {sop}: ImagePositionPatient present in some instances only")


def rescale(raw: np.ndarray, s: RemoteSlice, out: np.ndarray | None = None) -> np.ndarray:
    """Stored values of one slice to float32 modality values (as ``SeriesVolume.slice``)."""
    if out is None:
        out = np.empty(raw.shape, dtype=np.float32)
    if s.rescale_slope == 1.0:
        out[...] = raw
    else:
        np.multiply(raw, np.float32(s.rescale_slope), out=out, casting="unsafe")
    if s.rescale_intercept != 0.0:
        out += np.float32(s.rescale_intercept)
    return out


# --------------------------------------------------------------------------- scheduler


@dataclass(frozen=True)
class FrameArrived:
    """One slice ready to show. ``array`` is (rows, columns) float32 modality values, or
    for ``rendered`` frames the server's uint8 display image (no rescale applies).
    ``from_cache`` says no request was needed."""

    index: int
    array: np.ndarray
    rendered: bool
    from_cache: bool


@dataclass(frozen=True)
class PullProgress:
    """Where one pull stands. ``finished`` once nothing more will arrive (all done, the
    store gave up, or cancelled); ``error`` is the last failure's message."""

    total: int
    done: int
    failed: int
    rendered: int
    from_cache: int
    cancelled: bool
    finished: bool
    error: str | None = None

    @property
    def complete(self) -> bool:
        return self.done == self.total


FrameCallback = Callable[[FrameArrived], None]
ProgressCallback = Callable[[PullProgress], None]


class RemoteSeries:
    """On-demand pull of one remote series (see the module docstring).

    ``client``: the DICOMweb client (shared, with its frame cache); ``layout``: from the
    series metadata. ``on_frame`` / ``on_progress`` run on worker threads.
    """

    def __init__(
        self,
        client: DicomWebClient,
        layout: SeriesLayout,
        *,
        on_frame: FrameCallback | None = None,
        on_progress: ProgressCallback | None = None,
        workers: int = DEFAULT_WORKERS,
        neighbour_batch: int = NEIGHBOUR_BATCH,
        neighbour_radius: int = NEIGHBOUR_RADIUS,
        background_batch: int = BACKGROUND_BATCH,
        bulk: bool = True,
        bulk_min_instances: int = BULK_MIN_INSTANCES,
    ) -> None:
        self.client = client
        self.layout = layout
        self._on_frame = on_frame
        self._on_progress = on_progress
        self._workers = max(1, workers)
        self._neighbour_batch = max(1, neighbour_batch)
        self._neighbour_radius = max(0, neighbour_radius)
        self._background_batch = max(1, background_batch)
        self._token = CancelToken()
        self._cond = threading.Condition()
        self._pending: set[int] = set(range(layout.n_slices))
        self._in_flight: set[int] = set()
        self._done: set[int] = set()
        self._failed: dict[int, str] = {}
        self._rendered = 0
        self._from_cache = 0
        self._current = 0
        self._first_done = False
        self._error: str | None = None
        self._threads: list[threading.Thread] = []
        self._live = 0
        self._finished = threading.Event()
        self._started = False
        single = [sop for sop, n in layout.number_of_frames.items() if n == 1]
        pixel_bytes = sum(p.rows * p.columns * p.samples_per_pixel * max(1, p.bits_allocated // 8)
                          for p in layout.pixel.values())
        # "eligible" -> "running" -> "done"; "off" when not worth it or it failed once.
        self._bulk_min = max(2, bulk_min_instances)
        self._bulk = ("eligible" if bulk and client.transfer_syntax == "*" and len(single) >= self._bulk_min
                      and pixel_bytes <= BULK_MAX_BYTES else "off")

    # ----------------------------------------------------------------- control

    def start(self, current: int | None = None) -> None:
        """Begin pulling, visible slice ``current`` first (default: the middle). Any
        thread; returns at once."""
        with self._cond:
            if self._started:
                raise RuntimeError("RemoteSeries.start called twice")
            self._started = True
            n = self.layout.n_slices
            self._current = min(max(0, n // 2 if current is None else current), max(0, n - 1))
            if not self._pending:
                self._finished.set()
                return
            self._live = self._workers
            for i in range(self._workers):
                t = threading.Thread(target=self._run, name=f"remote-series-{i}", daemon=True)
                self._threads.append(t)
            for t in self._threads:
                t.start()

    def set_current(self, index: int) -> None:
        """The analyst looks at slice ``index`` now: fetch it and its neighbours next."""
        with self._cond:
            self._current = min(max(0, index), max(0, self.layout.n_slices - 1))
            self._cond.notify_all()

    def cancel(self) -> None:
        """Stop pulling (the analyst moved on). Running requests stop at their next
        chunk; nothing more is delivered. Returns at once; ``close`` joins the threads."""
        self._token.cancel()
        with self._cond:
            self._cond.notify_all()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the pull is finished (or cancelled and wound down)."""
        return self._finished.wait(timeout)

    def close(self, timeout: float = 30.0) -> None:
        """Cancel if still running and join every worker thread. Idempotent."""
        if not self._finished.is_set():
            self.cancel()
        for t in self._threads:
            t.join(timeout)
            if t.is_alive():
                LOGGER.warning("remote series %s: worker %s did not stop within %.0f s",
                               self.layout.series_uid, t.name, timeout)

    def __enter__(self) -> RemoteSeries:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def cancelled(self) -> bool:
        return self._token.cancelled

    @property
    def progress(self) -> PullProgress:
        with self._cond:
            return self._progress_locked()

    @property
    def failures(self) -> dict[int, str]:
        """Slice index -> why it could not be fetched."""
        with self._cond:
            return dict(self._failed)

    def cached_slice(self, index: int) -> FrameArrived | None:
        """Slice ``index`` from the frame cache only (stale entries too: offline work),
        decoded and rescaled; None if it was never pulled. Never a request. Any thread."""
        s = self.layout.slices[index]
        frame = self.client.cached_frame(self.layout.study_uid, self.layout.series_uid,
                                         s.sop_instance_uid, s.frame_number, allow_stale=True)
        if frame is None:
            return None
        return FrameArrived(index, self._values(s, frame), frame.rendered, True)

    # ----------------------------------------------------------------- workers

    def _progress_locked(self) -> PullProgress:
        return PullProgress(
            total=self.layout.n_slices, done=len(self._done), failed=len(self._failed),
            rendered=self._rendered, from_cache=self._from_cache, cancelled=self._token.cancelled,
            finished=self._finished.is_set(), error=self._error,
        )

    def _next_batch_locked(self) -> tuple[str, list[RemoteSlice]] | None:
        """The next job: ("frames", a run of slices by distance from the visible slice)
        or ("bulk", the slices a series-level retrieve will bring)."""
        if not self._pending:
            return None
        if not self._first_done and self._in_flight:
            return None  # the visible slice goes alone: nothing may compete with it
        c = self._current
        seed = min(self._pending, key=lambda i: (abs(i - c), i < c))
        if not self._first_done or seed == c:
            return ("frames", [self.layout.slices[seed]])
        if self._bulk == "eligible":
            far = [i for i in self._pending if abs(i - c) > self._neighbour_radius
                   and self.layout.number_of_frames.get(self.layout.slices[i].sop_instance_uid) == 1]
            near_left = any(abs(i - c) <= self._neighbour_radius for i in self._pending)
            # One worker fetches the neighbours first; with more, one takes the bulk now.
            if len(far) >= self._bulk_min and (self._workers > 1 or not near_left):
                self._bulk = "running"
                far.sort(key=lambda i: (abs(i - c), i < c))
                return ("bulk", [self.layout.slices[i] for i in far])
            if len(far) < self._bulk_min and not near_left:
                self._bulk = "off"
        limit = self._neighbour_batch if abs(seed - c) <= self._neighbour_radius else self._background_batch
        step = 1 if seed > c else -1  # outward from the visible slice
        slices = self.layout.slices
        run = [slices[seed]]
        direction = 0  # frame-number direction, fixed by the second slice of the run
        i = seed + step
        while len(run) < limit and 0 <= i < len(slices) and i in self._pending:
            s, last = slices[i], run[-1]
            delta = s.frame_number - last.frame_number
            if s.sop_instance_uid != last.sop_instance_uid or abs(delta) != 1 or (direction and delta != direction):
                break
            direction = delta
            run.append(s)
            i += step
        return ("frames", run)

    def _run(self) -> None:
        """Worker loop: take the most urgent run, fetch it, deliver its frames."""
        try:
            while True:
                with self._cond:
                    job = None
                    while not self._token.cancelled:
                        job = self._next_batch_locked()
                        if job is not None or not self._pending:
                            break
                        self._cond.wait()
                    if job is None:
                        return
                    kind, batch = job
                    for s in batch:
                        self._pending.discard(s.index)
                        self._in_flight.add(s.index)
                if kind == "bulk":
                    self._fetch_bulk(batch)
                else:
                    self._fetch(batch)
        finally:
            with self._cond:
                self._live -= 1
                last = self._live == 0
                if last:
                    self._finished.set()
                progress = self._progress_locked()
                self._cond.notify_all()
            if last:
                self._report(progress)

    def _fetch(self, batch: list[RemoteSlice]) -> None:
        sop = batch[0].sop_instance_uid
        by_frame = {s.frame_number: s for s in batch}
        try:
            frames = self.client.retrieve_frames(
                self.layout.study_uid, self.layout.series_uid, sop, sorted(by_frame),
                number_of_frames=self.layout.number_of_frames.get(sop), cancel=self._token,
            )
        except Cancelled:
            self._settle(batch, None)
            return
        except RemoteUnavailable as exc:
            # A dead store fails every remaining request the same way: stop asking.
            self._settle(batch, str(exc), give_up=True)
            return
        except DicomWebError as exc:
            self._settle(batch, str(exc))
            return
        frame_of = {f.number: f for f in frames}
        self._deliver(batch, {s.index: frame_of.get(s.frame_number) for s in batch})

    def _deliver(self, batch: list[RemoteSlice], frames: dict[int, Frame | None]) -> None:
        """Decode, rescale and hand over the frames of a finished job, in the job's
        (outward) order; slices without a frame go back to the queue."""
        delivered: list[RemoteSlice] = []
        for s in batch:
            if self._token.cancelled:
                break
            frame = frames.get(s.index)
            if frame is None:
                continue
            try:
                values = self._values(s, frame)
            except DicomWebError as exc:
                self._settle([s], str(exc))
                continue
            event = FrameArrived(s.index, values, frame.rendered, frame.from_cache)
            with self._cond:
                self._in_flight.discard(s.index)
                self._done.add(s.index)
                self._rendered += frame.rendered
                self._from_cache += frame.from_cache
                self._first_done = True
                self._cond.notify_all()
            delivered.append(s)
            if self._on_frame is not None:
                try:
                    self._on_frame(event)
                except Exception:  # a consumer's bug must not stop the pull
                    LOGGER.exception("on_frame callback failed for slice %d", s.index)
        done = {s.index for s in delivered}
        rest = [s for s in batch if s.index not in done and s.index in self._in_flight]
        if rest:
            self._settle(rest, None)
        self._report(self.progress)

    def _fetch_bulk(self, batch: list[RemoteSlice]) -> None:
        """One series-level retrieve for the far slices of a classic series. If the
        store cannot do it, the slices go back to the frame-by-frame queue."""
        # What the cache holds is served from it (a re-opened scan must not be
        # downloaded again); the retrieve is for the rest, if enough remains.
        cached: dict[int, Frame | None] = {}
        for s in batch:
            if self._token.cancelled:
                break
            cached[s.index] = self.client.cached_frame(self.layout.study_uid, self.layout.series_uid,
                                                       s.sop_instance_uid, s.frame_number)
        hits = [s for s in batch if cached.get(s.index) is not None]
        if hits:
            self._deliver(hits, cached)
        batch = [s for s in batch if cached.get(s.index) is None]
        if len(batch) < self._bulk_min or self._token.cancelled:
            with self._cond:
                self._bulk = "off"
            self._settle(batch, None)
            return
        try:
            frames = self.client.retrieve_series_frames(self.layout.study_uid, self.layout.series_uid,
                                                        cancel=self._token)
        except Cancelled:
            self._settle(batch, None)
            return
        except RemoteUnavailable as exc:
            self._settle(batch, str(exc), give_up=True)
            return
        except DicomWebError as exc:
            LOGGER.info("remote series %s: series retrieve failed (%s); fetching frame by frame",
                        self.layout.series_uid, exc)
            with self._cond:
                self._bulk = "off"
            self._settle(batch, None)
            return
        with self._cond:
            self._bulk = "done"
        self._deliver(batch, {s.index: frames.get(s.sop_instance_uid) for s in batch})

    def _values(self, s: RemoteSlice, frame: Frame) -> np.ndarray:
        raw = decode_frame(frame, self.layout.pixel[s.sop_instance_uid])
        return raw if frame.rendered else rescale(raw, s)

    def _settle(self, batch: list[RemoteSlice], error: str | None, *, give_up: bool = False) -> None:
        """Batch ended without delivering: back to pending when cancelled (error None),
        failed otherwise; ``give_up`` fails everything still pending too."""
        with self._cond:
            for s in batch:
                self._in_flight.discard(s.index)
                if error is None:
                    self._pending.add(s.index)
                else:
                    self._failed[s.index] = error
            if error is not None:
                self._error = error
                self._first_done = True  # do not hold the other workers behind a failure
                if give_up:
                    for i in self._pending:
                        self._failed[i] = error
                    self._pending.clear()
            self._cond.notify_all()
            progress = self._progress_locked()
        if error is not None:
            LOGGER.warning("remote series %s: %d slice(s) failed: %s", self.layout.series_uid, len(batch), error)
        self._report(progress)

    def _report(self, progress: PullProgress) -> None:
        if self._on_progress is None:
            return
        try:
            self._on_progress(progress)
        except Exception:
            LOGGER.exception("on_progress callback failed")


# --------------------------------------------------------------------------- station fetch


def _file_name(sop: str) -> str:
    """Peer-supplied UIDs only become file names when they are plain UIDs."""
    if _UID_RE.match(sop):
        return f"{sop}.dcm"
    return f"{hashlib.sha256(sop.encode()).hexdigest()[:32]}.dcm"


def fetch_series(
    client: DicomWebClient,
    study: str,
    series: str,
    *,
    npy: str | Path | None = None,
    out_dir: str | Path | None = None,
    current: int | None = None,
    workers: int = DEFAULT_WORKERS,
) -> dict[str, Any]:
    """Pull a whole series through ``RemoteSeries`` and write the volume (``npy``: (z, y,
    x) float32, rescale applied, ascending along the normal) and/or the stored instances
    (``out_dir``, one Part 10 file per instance, WADO-RS retrieve). Returns a JSON-ready
    summary. Raises DicomWebError when metadata cannot be had; failed frames are reported
    in the summary (``complete`` false). Caller's thread (blocks)."""
    started = time.perf_counter()
    before = client.stats
    metadata = client.series_metadata(study, series, keywords=LAYOUT_KEYWORDS)
    layout = SeriesLayout.from_metadata(metadata, study_uid=study, series_uid=series)
    volume = np.zeros(layout.shape, dtype=np.float32)
    first_frame: list[float] = []

    def on_frame(event: FrameArrived) -> None:
        if not first_frame:
            first_frame.append(time.perf_counter() - started)
        volume[event.index] = event.array

    with RemoteSeries(client, layout, on_frame=on_frame, workers=workers) as pull:
        pull.start(current)
        pull.wait()
        progress = pull.progress
        failures = pull.failures
    if npy is not None and progress.complete:
        np.save(npy, volume)
    written: list[str] = []
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        for sop in layout.pixel:
            path = out / _file_name(sop)
            path.write_bytes(client.retrieve_instance(study, series, sop))
            written.append(str(path))
    used = client.stats.minus(before)
    return {
        "remote": client.base_url,
        "study_uid": study,
        "series_uid": series,
        "shape": list(volume.shape),
        "spacing_mm": [float(v) for v in layout.spacing_mm],
        "origin_mm": [float(v) for v in layout.origin_mm],
        "direction": layout.direction.tolist(),
        "rescale_type": layout.rescale_type,
        "modality": layout.modality,
        "instances": len(layout.pixel),
        "complete": progress.complete,
        "frames_total": progress.total,
        "frames_fetched": used.frames_from_network,
        "cache_hits": used.frames_from_cache,
        "rendered_frames": progress.rendered,
        "failed_frames": progress.failed,
        "error": progress.error,
        "failures": {str(k): v for k, v in sorted(failures.items())[:10]},
        "requests": used.requests,
        "bytes": used.bytes_received,
        "first_frame_seconds": first_frame[0] if first_frame else None,
        "seconds": time.perf_counter() - started,
        "npy": str(npy) if npy is not None and progress.complete else None,
        "instances_written": written,
        "min": float(volume.min()) if volume.size and progress.complete else None,
        "max": float(volume.max()) if volume.size and progress.complete else None,
    }


def fetch_command(args: Any) -> int:
    """``station fetch``: resolve the remote (``--remote NAME`` from ``[[remotes]]``, or
    ``--dicomweb URL`` with ``--auth``/``--user``/``--password-env``/``--token-env``/
    ``--ca-bundle``/``--timeout``), open the frame cache (``--cache-dir``, default the
    user cache dir; ``--no-cache``: memory only), pull, print the summary. Exit 0 when
    every frame arrived, 1 when some failed, 2 when the series could not be had at all.
    ConfigError (bad remote settings) is left to the CLI's handler."""
    import json
    import sys

    from station.core.config import default_frame_cache_dir
    from station.core.remote.framecache import FrameCache
    from station.core.config import ConfigError, RemoteSettings, load_settings
    from station.core.remote.remotes import find_remote

    if bool(args.remote) == bool(args.dicomweb):
        print("station fetch: give exactly one of --dicomweb URL or --remote NAME", file=sys.stderr)
        return 2
    if args.remote:
        config = getattr(args, "config", None)
        remote = find_remote(load_settings(Path(config) if config else None).remotes, args.remote)
    else:
        try:
            remote = RemoteSettings(
                name="command line", dicomweb=args.dicomweb, auth=args.auth, username=args.user,
                password_env=args.password_env, token_env=args.token_env,
                ca_bundle=Path(args.ca_bundle) if args.ca_bundle else None, timeout=args.timeout,
            )
        except ConfigError as exc:
            raise ConfigError(f"station fetch: {exc}") from None
    if not remote.dicomweb:
        print(f"station fetch: remote {remote.name!r} has no dicomweb URL", file=sys.stderr)
        return 2
    cache_dir = None if args.no_cache else Path(args.cache_dir or default_frame_cache_dir())
    cache = FrameCache(cache_dir)
    try:
        with DicomWebClient.from_settings(remote, cache=cache) as client:
            info = fetch_series(client, args.study, args.series, npy=args.npy, out_dir=args.out,
                                workers=max(1, args.workers))
    except (DicomWebError, VolumeError, OSError) as exc:
        print(f"station fetch: {exc}", file=sys.stderr)
        return 2
    finally:
        cache.close()
    info["cache_dir"] = str(cache_dir) if cache_dir is not None else None
    if args.json:
        print(json.dumps(info))
    else:
        for key, value in info.items():
            print(f"{key}: {value}")
    if not info["complete"]:
        print(f"station fetch: {info['failed_frames']} frame(s) failed: {info['error']}", file=sys.stderr)
        return 1
    return 0


__all__ = [
    "BACKGROUND_BATCH",
    "DEFAULT_WORKERS",
    "FrameArrived",
    "LAYOUT_KEYWORDS",
    "PullProgress",
    "RemoteSeries",
    "RemoteSlice",
    "SeriesLayout",
    "fetch_command",
    "fetch_series",
    "rescale",
]
