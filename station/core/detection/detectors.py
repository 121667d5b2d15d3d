"""Threat detectors: the interface, the built-in density detector, a registry, a process-pool
runner, and ``station detect``.

A detector looks at one CT volume and returns ``Detection`` objects (a voxel box, optional
polygon and bitmap, mass/density/volume estimates and an assessment); the station turns
them into alerts and into a machine TDR (``station.core.dicos.write_machine_tdr``).

The built-in ``DensityDetector`` looks for compact objects in the density band of common
explosives (about 1.40-1.70 g/cm^3, i.e. 1400-1700 MHU): threshold, morphological
opening (drops anything thinner than ``min_thickness_mm``, such as a PVC document folder
or a book cover that lies in the band), connected components (scipy.ndimage), size and
density limits. To stay well under a second on a 512x512x300 bag it first labels a strided
sample of the volume whose step equals the opening size (every object that survives the
opening contains a full opening cube, so it always contains a sample point) and then
refines each candidate at full resolution in its own small box.

Processes and threads: detection is CPU-bound numpy/scipy work; the station runs it in a
``concurrent.futures.ProcessPoolExecutor`` via ``run_detectors_in_pool`` (never on the GUI
thread or a receiver thread). Detectors and their results are plain picklable dataclasses.
The registry is guarded by a lock and may be used from any thread; a pool worker gets
the detector objects themselves (pickled), so detectors registered at run time work in
workers started any way.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from concurrent.futures import Executor, Future
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol, runtime_checkable

import numpy as np
from scipy import ndimage

from station.core.dicos.site import Site
from station.core.dicos import Algorithm, Pto, ScanRef, scan_ref_from_volume, write_machine_tdr

LOGGER = logging.getLogger(__name__)

__all__ = [
    "DensityDetector",
    "DensityStream",
    "DetectError",
    "Detection",
    "DetectionRun",
    "Detector",
    "DetectorResult",
    "EXPLOSIVE_BAND_MHU",
    "LazyVolume",
    "box_iou",
    "detect_main",
    "detectors",
    "get_detector",
    "load_for_detection",
    "register_detector",
    "run_detectors",
    "run_detectors_in_pool",
    "unregister_detector",
]

EXPLOSIVE_BAND_MHU: tuple[float, float] = (1400.0, 1700.0)
"""Density band of common explosives in MHU (air 0, water 1000; ~1000 x g/cm^3). The
synthetic bags of ``station.core.synth.bags`` plant their threats in the same band."""

DETECTION_FLAGS = ("HIGH_THREAT", "THREAT", "ANOMALY")

_HU_TO_MHU = 1000.0  # MHU = HU + 1000 (air -1000 HU = 0 MHU, water 0 HU = 1000 MHU)


class DetectError(Exception):
    """Detection cannot run on the given input (not a CT volume, no geometry...)."""


# --------------------------------------------------------------------------- model


@dataclass(frozen=True)
class Detection:
    """One object a detector found.

    ``base_xyz``/``extent_xyz``: voxel box (x, y, z) of the volume as given to the detector
    (first voxel, voxel counts), as DICOS ThreatROIBase/Extents. ``flag``: HIGH_THREAT,
    THREAT or ANOMALY (ANOMALY becomes ATDAssessmentFlag UNKNOWN with category ANOMALY in
    a TDR). ``bitmap``: the object's voxels inside the box, packed as
    ``station.core.dicos`` documents (x fastest, LSB first). ``polygon``: flat x, y, z list.
    Mass in g, density in g/cm^3, volume in ml. ``probability`` is a heuristic score in
    [0, 1], not a calibrated probability.
    """

    base_xyz: tuple[int, int, int]
    extent_xyz: tuple[int, int, int]
    flag: str = "THREAT"
    category: str = "EXPLOSIVE"
    probability: float = 0.5
    mass_g: float | None = None
    density_g_cm3: float | None = None
    volume_ml: float | None = None
    center_xyz: tuple[float, float, float] | None = None
    polygon: tuple[float, ...] | None = None
    bitmap: bytes | None = field(default=None, repr=False)
    category_description: str = ""
    detector: str = ""
    processing_start: datetime | None = None
    processing_end: datetime | None = None

    def to_pto(self, pto_id: int) -> Pto:
        """The DICOS PTO for this detection (``write_machine_tdr`` calls this)."""
        anomaly = self.flag == "ANOMALY"
        ms = None
        if self.processing_start is not None and self.processing_end is not None:
            ms = (self.processing_end - self.processing_start).total_seconds() * 1000.0
        return Pto(
            id=pto_id,
            base=tuple(float(v) for v in self.base_xyz),  # type: ignore[arg-type]
            extent=tuple(float(v) for v in self.extent_xyz),  # type: ignore[arg-type]
            flag="UNKNOWN" if anomaly else self.flag,
            category="ANOMALY" if anomaly else self.category,
            category_description=self.category_description,
            probability=self.probability,
            bitmap=self.bitmap,
            polygon=self.polygon,
            center=self.center_xyz,
            mass_g=self.mass_g,
            density_g_cm3=self.density_g_cm3,
            volume_ml=self.volume_ml,
            processing_start=self.processing_start,
            processing_end=self.processing_end,
            processing_ms=ms,
        )

    def to_json(self) -> dict[str, Any]:
        """An alert as ``station detect --json`` prints it."""
        return {
            "flag": self.flag,
            "category": "ANOMALY" if self.flag == "ANOMALY" else self.category,
            "probability": round(self.probability, 3),
            "base": list(self.base_xyz),
            "extent": list(self.extent_xyz),
            "center": [round(v, 1) for v in self.center_xyz] if self.center_xyz else None,
            "mass_g": _round(self.mass_g, 1),
            "density_g_cm3": _round(self.density_g_cm3, 3),
            "volume_ml": _round(self.volume_ml, 1),
            "description": self.category_description,
            "detector": self.detector,
        }

    def mask(self) -> np.ndarray | None:
        """The bitmap as a (z, y, x) bool array over the box, or None."""
        return self.to_pto(0).mask()


def _round(v: float | None, nd: int) -> float | None:
    return None if v is None else round(float(v), nd)


@runtime_checkable
class Detector(Protocol):
    """What the station runs on every complete CT.

    ``detect`` gets the volume as (z, y, x) modality values (float32 usually; any numeric
    array or memmap works) and ``spacing_mm`` (z, y, x). Context keywords: ``units``
    ("MHU" for DICOS/security CT, "HU" for clinical CT). It runs in a pool worker process,
    so a detector must be picklable (a module-level class with plain attributes) and must
    not touch Qt or sockets. A detector that only slices the volume and reads ``.shape``
    may set ``reads_lazy_volume = True`` to receive a ``LazyVolume`` (pixels read on
    demand) instead of a full in-memory array when the scan comes from files.
    """

    name: str
    version: str

    def detect(
        self, volume: np.ndarray, spacing_mm: tuple[float, float, float], **context: Any
    ) -> list[Detection]: ...


class LazyVolume:
    """Read-only (z, y, x) float32 view of a ``SeriesVolume`` that reads only the slices an
    index expression touches (basic slicing only: ``v[z0:z1:dz, y0:y1, x0:x1]``).

    The density detector samples every k-th slice and then a few small boxes, so it reads
    a fraction of a scan and never allocates a whole float32 copy (~300 MB for 512x512x300;
    first-touch page faults alone cost up to a second on a small VM). Detectors that do
    not declare ``reads_lazy_volume = True`` get ``array()``. Worker process.
    """

    def __init__(self, volume: Any) -> None:
        self._volume = volume
        self.shape: tuple[int, int, int] = tuple(volume.shape)  # type: ignore[assignment]
        self.ndim = 3
        self.dtype = np.dtype(np.float32)

    def __getitem__(self, key: Any) -> np.ndarray:
        if not isinstance(key, tuple):
            key = (key,)
        if len(key) > 3 or not all(isinstance(k, slice) for k in key):
            raise TypeError("LazyVolume supports slices only, e.g. v[0:10, ::2, 5:20]")
        key = key + (slice(None),) * (3 - len(key))
        zs = range(*key[0].indices(self.shape[0]))
        ny = len(range(*key[1].indices(self.shape[1])))
        nx = len(range(*key[2].indices(self.shape[2])))
        out = np.empty((len(zs), ny, nx), dtype=np.float32)
        for i, z in enumerate(zs):
            out[i] = self._volume.slice(z)[key[1], key[2]]
        return out

    @property
    def positions_mm(self) -> tuple[float, ...]:
        """Slice positions along the normal (how a stream tells a continuation)."""
        return tuple(self._volume.positions_along_normal_mm)

    def is_prefix_from(self, first_sop: str | None) -> bool:
        """Whether these slices look like the start of the final volume while it arrives:
        the first slice to arrive is the lowest one and no slice is missing in between
        (uniform spacing). Slices sent top down or in any order are not."""
        slices = self._volume.slices
        return bool(slices) and slices[0].sop_instance_uid == first_sop and self._volume.uniform_spacing

    def array(self) -> np.ndarray:
        """The whole volume (what an ndarray-only detector gets)."""
        return self._volume.array()


# --------------------------------------------------------------------------- built-in


def _opening(mask: np.ndarray, k: tuple[int, int, int]) -> np.ndarray:
    """Morphological opening with a k[0] x k[1] x k[2] box: the union of all such boxes
    lying entirely inside ``mask``. Separable min/max filters make it a few linear passes
    instead of a 27-neighbour erosion."""
    m = mask.view(np.uint8)
    eroded = ndimage.minimum_filter(m, size=k, mode="constant", cval=0)
    # Dilate with the reflected box: for even sizes the window must shift by one.
    origin = tuple(-1 if kk % 2 == 0 else 0 for kk in k)
    return ndimage.maximum_filter(eroded, size=k, mode="constant", cval=0, origin=origin).view(bool)


def _outline_polygon(proj: np.ndarray, x0: int, y0: int, z: float) -> tuple[float, ...] | None:
    """Convex hull of a (y, x) projection as flat x, y, z triples at slice ``z``; the
    bounding rectangle when the projection is a line or a point."""
    ys, xs = np.nonzero(proj)
    if xs.size == 0:
        return None
    pts = np.column_stack([xs + x0, ys + y0]).astype(np.float64)
    hull_pts: np.ndarray | None = None
    if np.unique(xs).size > 1 and np.unique(ys).size > 1:
        from scipy.spatial import ConvexHull, QhullError

        try:
            hull = ConvexHull(pts)
            hull_pts = pts[hull.vertices]
        except QhullError:
            hull_pts = None
    if hull_pts is None:
        (xa, ya), (xb, yb) = pts.min(axis=0), pts.max(axis=0)
        hull_pts = np.array([[xa, ya], [xb, ya], [xb, yb], [xa, yb]])
    return tuple(float(v) for p in hull_pts for v in (p[0], p[1], z))


@dataclass(frozen=True)
class DensityDetector:
    """Built-in detector: compact objects in an explosive-like density band.

    Parameters (tuned on ``station.core.synth.bags`` bags, see ``station bench detect``):

    * ``band_mhu``: density band in MHU (HU volumes are shifted by 1000).
    * ``min_thickness_mm``: an object must contain a box at least this thick along every
      axis (and at least 2 voxels): thin in-band sheets (PVC folders, book covers) and
      isolated noise voxels are ignored.
    * ``min_volume_ml``: smaller objects are ignored.
    * ``max_volume_ml``: larger in-band regions are reported as ANOMALY, not THREAT (a
      slab that size is more likely a calibration/units problem than a device, but an
      analyst must still look).
    * ``high_threat_mass_g``: objects at least this heavy are HIGH_THREAT.
    """

    name: str = "station-density"
    version: str = "1.0"
    reads_lazy_volume: bool = True  # only basic slicing and .shape are used on the volume
    band_mhu: tuple[float, float] = EXPLOSIVE_BAND_MHU
    min_thickness_mm: float = 4.0
    min_volume_ml: float = 5.0
    max_volume_ml: float = 20000.0
    high_threat_mass_g: float = 1000.0
    # A candidate must keep this fraction of the coarse samples the smallest accepted
    # object would have (sampling loses up to one step per side).
    coarse_keep_fraction: float = 0.25

    def parameters(self) -> list[str]:
        """For ThreatDetectionAlgorithmAndVersion (each value fits an LO)."""
        lo, hi = self.band_mhu
        return [f"band_mhu={lo:g}-{hi:g}", f"min_thickness_mm={self.min_thickness_mm:g}",
                f"min_volume_ml={self.min_volume_ml:g}", f"max_volume_ml={self.max_volume_ml:g}"]

    def detect(
        self, volume: np.ndarray, spacing_mm: tuple[float, float, float], **context: Any
    ) -> list[Detection]:
        """Find in-band compact objects; pool worker process (any thread is safe). The
        one-step run of a ``DensityStream``: a scan examined slab by slab as it arrives
        ends with exactly these detections."""
        return self.stream().step(volume, spacing_mm, complete=True, **context)

    def stream(self) -> DensityStream:
        """An incremental run over a scan whose slices arrive in order (see DensityStream)."""
        return DensityStream(self)

    def _refine(
        self, vol: np.ndarray, box_lo: list[int], box_hi: list[int], seeds: np.ndarray,
        k: tuple[int, int, int], lo: float, hi: float, shift: float, voxel_ml: float,
        started: datetime,
    ) -> tuple[list[Detection], int]:
        """Full-resolution components holding the candidate's sample points, in a box that
        grows until no kept component touches an inner face of it; with the z stop of
        that box (it reached the last slice given when it equals ``vol.shape[0]``)."""
        shape = vol.shape
        while True:
            sub = vol[box_lo[0]:box_hi[0], box_lo[1]:box_hi[1], box_lo[2]:box_hi[2]]
            mask = _opening((sub >= lo) & (sub <= hi), k)
            lab, _ = ndimage.label(mask)
            local = seeds - np.asarray(box_lo)
            inside = np.all((local >= 0) & (local < np.asarray(sub.shape)), axis=1)
            ids = np.unique(lab[tuple(local[inside].T)])
            ids = ids[ids > 0]
            if ids.size == 0:
                return [], box_hi[0]
            objects = ndimage.find_objects(lab)
            grown = False
            for cid in ids:
                sl = objects[cid - 1]
                for axis in range(3):
                    # Grow by the component's own size: a clipped object reaches at least
                    # that far, and few rounds reach any size.
                    step = max(2 * k[axis], sl[axis].stop - sl[axis].start)
                    if sl[axis].start == 0 and box_lo[axis] > 0:
                        box_lo[axis] = max(0, box_lo[axis] - step)
                        grown = True
                    if sl[axis].stop == sub.shape[axis] and box_hi[axis] < shape[axis]:
                        box_hi[axis] = min(shape[axis], box_hi[axis] + step)
                        grown = True
            if not grown:
                break
        out = []
        for cid in ids:
            det = self._measure(sub, lab, int(cid), objects[cid - 1], box_lo, shift, voxel_ml, started)
            if det is not None:
                out.append(det)
        return out, box_hi[0]

    def _measure(
        self, sub: np.ndarray, lab: np.ndarray, cid: int, sl: tuple[slice, slice, slice],
        box_lo: list[int], shift: float, voxel_ml: float, started: datetime,
    ) -> Detection | None:
        comp = lab[sl] == cid
        n = int(np.count_nonzero(comp))
        volume_ml = n * voxel_ml
        if volume_ml < self.min_volume_ml:
            return None
        mean_mhu = float(sub[sl][comp].mean(dtype=np.float64)) - shift
        density = mean_mhu / 1000.0
        mass = density * volume_ml
        z0, y0, x0 = (s.start + o for s, o in zip(sl, box_lo))
        ez, ey, ex = comp.shape
        cz, cy, cx = (float(c) for c in ndimage.center_of_mass(comp))
        center = (x0 + cx, y0 + cy, z0 + cz)
        polygon = _outline_polygon(comp.any(axis=0), x0, y0, round(center[2], 2))
        lo_band, hi_band = self.band_mhu
        half = (hi_band - lo_band) / 2.0
        centrality = max(0.0, 1.0 - abs(mean_mhu - (lo_band + half)) / half)
        size_score = min(1.0, volume_ml / (10.0 * self.min_volume_ml))
        probability = 0.5 + 0.45 * size_score * (0.5 + 0.5 * centrality)
        if volume_ml > self.max_volume_ml:
            flag, category = "ANOMALY", "ANOMALY"
            description = (f"{volume_ml / 1000:.1f} l in the explosive density band: "
                           "check calibration/units")
            probability = 0.5
        else:
            flag = "HIGH_THREAT" if mass >= self.high_threat_mass_g else "THREAT"
            category = "EXPLOSIVE"
            description = f"density {density:.2f} g/cm3, {mass:.0f} g"
        return Detection(
            base_xyz=(int(x0), int(y0), int(z0)),
            extent_xyz=(int(ex), int(ey), int(ez)),
            flag=flag,
            category=category,
            probability=round(probability, 3),
            mass_g=mass,
            density_g_cm3=density,
            volume_ml=volume_ml,
            center_xyz=center,
            polygon=polygon,
            bitmap=np.packbits(comp.ravel(), bitorder="little").tobytes(),
            category_description=description,
            detector=f"{self.name} {self.version}",
            processing_start=started,
            processing_end=datetime.now().astimezone(),
        )


@dataclass
class DensityStream:
    """A ``DensityDetector`` run over a scan examined slab by slab while its slices arrive.

    ``step`` is called with the slices arrived so far, in geometric order (a prefix of the
    final volume: slices sent in ascending order), and returns the objects settled by it.
    Whole-volume detection works candidate by candidate: a component of the strided
    coarse sample (26-connected), then full-resolution refinement in a box around it.
    A step settles exactly the candidates whose outcome the slices still to come cannot
    change: the coarse component does not reach the newest sample row (it could still
    grow there) and its refinement box stopped short of the newest slice. The others wait
    for the next step, which reads only the new sample rows and refines them again:
    that is the slabs' overlap, as deep as the objects that need it, so an object across
    a slab boundary is found once and whole. With ``complete=True`` every candidate
    settles, so the detections equal a whole-volume run's (``DensityDetector.detect`` is
    that run in one step).

    When the given slices are not a continuation of the ones examined (other spacing,
    units or slice size; ``positions`` that differ from the examined ones: slices sent
    out of order) the stream starts over (``restarted``). Plain data: it pickles to and
    from a pool worker between steps.
    """

    detector: DensityDetector
    slices_examined: int = 0
    positions: tuple[float, ...] = ()
    restarted: bool = False  # the last step started over
    _key: tuple[Any, ...] | None = None
    _coarse: np.ndarray | None = field(default=None, repr=False)
    _settled: set[tuple[int, int, int]] = field(default_factory=set, repr=False)
    _found: dict[tuple[Any, ...], Detection] = field(default_factory=dict, repr=False)

    @property
    def detections(self) -> list[Detection]:
        """Everything settled so far, in the order ``detect`` returns it."""
        return _ordered(self._found.values())

    def step(
        self, volume: np.ndarray, spacing_mm: tuple[float, float, float], *, complete: bool,
        positions: Sequence[float] | None = None, **context: Any,
    ) -> list[Detection]:
        """Examine the slices given (all of the scan when ``complete``); return the objects
        settled by this step (pool worker process)."""
        started = datetime.now().astimezone()
        det = self.detector
        # ndarray, memmap or LazyVolume: only .shape and basic slicing are used.
        vol = volume if hasattr(volume, "shape") and hasattr(volume, "__getitem__") else np.asarray(volume)
        if len(vol.shape) != 3 or min(vol.shape) == 0:
            return []
        spacing = tuple(float(s) for s in spacing_mm)
        if len(spacing) != 3 or not all(math.isfinite(s) and s > 0 for s in spacing):
            raise DetectError(f"invalid voxel spacing {spacing_mm!r}")
        units = str(context.get("units") or "MHU").upper()
        shift = -_HU_TO_MHU if units == "HU" else 0.0
        lo, hi = det.band_mhu[0] + shift, det.band_mhu[1] + shift
        k = tuple(max(2, math.ceil(det.min_thickness_mm / s)) for s in spacing)
        m = vol.shape[0]
        given = tuple(float(p) for p in positions) if positions is not None else ()
        key = (spacing, units, tuple(vol.shape[1:]))
        if (key != self._key or m < self.slices_examined
                or given[:len(self.positions)] != self.positions[:len(given)]):
            self.restarted = self._key is not None
            if self.restarted:
                LOGGER.info("density stream: the slices are not a continuation; examining from the start")
            self.slices_examined, self._key, self._coarse = 0, key, None
            self._settled, self._found = set(), {}
        else:
            self.restarted = False
        self.slices_examined, self.positions = m, given

        # Coarse pass on a strided view: only the sample rows not read by earlier steps.
        rows = -(-m // k[0])
        have = 0 if self._coarse is None else self._coarse.shape[0]
        if rows > have:
            sample = vol[have * k[0]:m:k[0], :: k[1], :: k[2]]
            fresh = (sample >= lo) & (sample <= hi)
            self._coarse = fresh if self._coarse is None else np.concatenate([self._coarse, fresh])
        cmask = self._coarse
        if cmask is None or not cmask.any():
            return []
        clab, _ = ndimage.label(cmask, structure=np.ones((3, 3, 3), dtype=bool))
        counts = np.bincount(clab.ravel())
        coarse_ml = math.prod(kk * s for kk, s in zip(k, spacing)) / 1000.0
        min_count = max(1, int(det.coarse_keep_fraction * det.min_volume_ml / coarse_ml))

        voxel_ml = math.prod(spacing) / 1000.0
        new: list[Detection] = []
        for i, sl in enumerate(ndimage.find_objects(clab), 1):
            if sl is None or counts[i] < min_count:
                continue
            if not complete and sl[0].stop >= rows:
                continue  # reaches the newest sample row: may grow with the next slices
            seeds = (np.argwhere(clab[sl] == i) + [s.start for s in sl]) * np.asarray(k)
            candidate = tuple(int(v) for v in seeds[0])  # a settled component never changes
            if candidate in self._settled:
                continue
            box_lo = [max(0, s.start * kk - kk) for s, kk in zip(sl, k)]
            box_hi = [min(n, (s.stop - 1) * kk + kk + 1) for s, kk, n in zip(sl, k, vol.shape)]
            found, z_stop = det._refine(vol, box_lo, box_hi, seeds, k, lo, hi, shift, voxel_ml, started)
            if not complete and z_stop >= m:
                continue  # its box reached the newest slice: the next slices may change it
            self._settled.add(candidate)
            for d in found:
                dkey = (d.base_xyz, d.extent_xyz, d.volume_ml)
                if dkey not in self._found:
                    self._found[dkey] = d
                    new.append(d)
        return _ordered(new)


def _ordered(found: Any) -> list[Detection]:
    return sorted(found, key=lambda d: (d.base_xyz[::-1], d.extent_xyz[::-1], d.volume_ml or 0.0))


# --------------------------------------------------------------------------- registry

_REGISTRY: dict[str, Detector] = {}
_REGISTRY_LOCK = threading.Lock()


def register_detector(detector: Detector, *, replace: bool = False) -> None:
    """Add a detector the station runs on every CT (any thread). Names are unique:
    registering a taken name is a ValueError unless ``replace``."""
    if not isinstance(detector, Detector):
        raise TypeError(f"{detector!r} is not a Detector (needs name, version, detect())")
    with _REGISTRY_LOCK:
        if detector.name in _REGISTRY and not replace:
            raise ValueError(f"a detector named {detector.name!r} is already registered")
        _REGISTRY[detector.name] = detector
    LOGGER.info("detector registered: %s %s", detector.name, detector.version)


def unregister_detector(name: str) -> None:
    """Remove a detector by name (KeyError when unknown)."""
    with _REGISTRY_LOCK:
        del _REGISTRY[name]


def detectors() -> list[Detector]:
    """Registered detectors in registration order (a snapshot)."""
    with _REGISTRY_LOCK:
        return list(_REGISTRY.values())


def get_detector(name: str) -> Detector:
    with _REGISTRY_LOCK:
        return _REGISTRY[name]


register_detector(DensityDetector())


# --------------------------------------------------------------------------- running


@dataclass(frozen=True)
class DetectorResult:
    """What one detector returned for one volume; ``error`` is set (and ``detections``
    empty) when it raised: one broken detector never hides the others' alerts."""

    detector: str
    version: str
    detections: list[Detection]
    seconds: float
    error: str = ""


@dataclass(frozen=True)
class DetectionRun:
    """Results of all detectors on one volume, with what was needed to report them.

    ``scan`` is set when the volume was loaded from DICOM files (for the machine TDR).
    A step of a scan still arriving (``complete`` False) holds what the detectors'
    ``streams`` settled so far (detectors without ``stream()`` run on complete scans
    only); ``new`` counts the objects this step settled, ``streams`` carries their state
    back for the next step.
    """

    results: list[DetectorResult]
    shape: tuple[int, int, int]
    spacing_mm: tuple[float, float, float]
    units: str
    load_seconds: float
    scan: ScanRef | None = None
    complete: bool = True
    new: int = 0
    streams: tuple[Any, ...] = ()

    @property
    def detections(self) -> list[Detection]:
        return [d for r in self.results for d in r.detections]


def run_detectors(
    volume: np.ndarray | LazyVolume,
    spacing_mm: tuple[float, float, float],
    *,
    detector_list: Sequence[Detector] | None = None,
    **context: Any,
) -> list[DetectorResult]:
    """Run detectors (default: the registered ones) on one volume, in this process.
    A ``LazyVolume`` is materialised once for detectors that need an ndarray. A pool
    worker calls it; so do tests and the CLI."""
    out = []
    full: np.ndarray | None = None
    for det in detector_list if detector_list is not None else detectors():
        t0 = time.perf_counter()
        try:
            given: Any = volume
            if isinstance(volume, LazyVolume) and not getattr(det, "reads_lazy_volume", False):
                if full is None:
                    full = volume.array()
                given = full
            found = list(det.detect(given, spacing_mm, **context))
            error = ""
        except Exception as exc:  # a plug-in detector's bug must not cost the other alerts
            LOGGER.exception("detector %s %s failed", det.name, det.version)
            found, error = [], f"{type(exc).__name__}: {exc}"
        out.append(DetectorResult(det.name, det.version, found, time.perf_counter() - t0, error))
    return out


def _units_for(rescale_type: str) -> str:
    rt = (rescale_type or "").upper()
    if rt == "HU":
        return "HU"
    if rt not in ("", "MHU"):
        LOGGER.warning("rescale type %r: assuming MHU (air 0, water 1000)", rescale_type)
    return "MHU"


def load_for_detection(
    source: np.ndarray | str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    spacing_mm: tuple[float, float, float] | None = None,
    units: str | None = None,
) -> tuple[np.ndarray | LazyVolume, tuple[float, float, float], str, ScanRef | None]:
    """(volume, spacing_mm, units, scan) from an array, a ``.npy`` file (memory-mapped;
    ``spacing_mm`` required) or DICOM files/folders of one CT series (a ``LazyVolume``;
    geometry, units and scan references from the headers; pixels are read by the
    detectors as they need them). Raises DetectError for anything that is not a CT
    volume. Worker process or any non-GUI thread."""
    if isinstance(source, np.ndarray):
        if spacing_mm is None:
            raise DetectError("spacing_mm is required with an array")
        return source, tuple(spacing_mm), (units or "MHU").upper(), None  # type: ignore[return-value]
    if isinstance(source, (str, os.PathLike)) and str(source).endswith(".npy"):
        if spacing_mm is None:
            raise DetectError(f"{source}: spacing_mm is required with a .npy volume")
        arr = np.load(source, mmap_mode="r")
        return arr, tuple(spacing_mm), (units or "MHU").upper(), None  # type: ignore[return-value]

    from station.core.imaging.volume import VolumeError, load_volume

    try:
        vol = load_volume(source)
    except VolumeError as exc:
        raise DetectError(str(exc)) from exc
    return _ct_volume(vol, units)


def _ct_volume(vol: Any, units: str | None) -> tuple[LazyVolume, tuple[float, float, float], str, ScanRef]:
    """``load_for_detection``'s answer for a ``SeriesVolume``; DetectError unless it is a CT."""
    if vol.modality.upper() != "CT" or vol.n_slices < 2:
        raise DetectError(
            f"series {vol.series_uid}: modality {vol.modality or '?'} with {vol.n_slices} "
            "slice(s) is not a CT volume"
        )
    if not vol.uniform_spacing:
        LOGGER.warning("series %s: slice spacing is not uniform; using the median", vol.series_uid)
    return LazyVolume(vol), vol.spacing_mm, units or _units_for(vol.rescale_type), scan_ref_from_volume(vol)


# Pool worker process: the volumes of the scans being streamed (by series), so that a step
# reads the headers of the slices stored since the last step only. A task for another
# worker, or files gone from the list, build the volume afresh; the last step drops it.
_GROWING: OrderedDict[str, tuple[Any, set[str]]] = OrderedDict()
_GROWING_MAX = 2


def _growing_volume(key: str, paths: list[str], units: str | None, last: bool) -> tuple[Any, ...]:
    from station.core.imaging.volume import SeriesVolume, VolumeError

    vol, seen = _GROWING.pop(key, (None, set()))
    if vol is None or not seen <= set(paths):
        vol, seen = SeriesVolume(), set()
    try:
        for p in paths:
            if p not in seen:
                vol.add_file(p)
                seen.add(p)
    except VolumeError as exc:
        raise DetectError(str(exc)) from exc
    if not last:
        _GROWING[key] = (vol, seen)
        while len(_GROWING) > _GROWING_MAX:
            _GROWING.popitem(last=False)
    return _ct_volume(vol, units)


def _pool_job(
    source: Any, spacing_mm: tuple[float, float, float] | None, dets: list[Detector],
    context: dict[str, Any], streams: Sequence[Any] | None = None, complete: bool = True,
    volume_key: str | None = None, first_sop: str | None = None,
) -> DetectionRun:
    """Body of a pool task (module level so it pickles): load, then run every detector,
    or with ``streams`` one step of each detector's stream (see ``DetectionRun``)."""
    t0 = time.perf_counter()
    if streams is not None and volume_key and isinstance(source, list):
        volume, spacing, units, scan = _growing_volume(volume_key, source, context.pop("units", None), complete)
    else:
        volume, spacing, units, scan = load_for_detection(source, spacing_mm, context.pop("units", None))
    load_s = time.perf_counter() - t0
    shape = tuple(volume.shape)
    if streams is None:
        results = run_detectors(volume, spacing, detector_list=dets, units=units, **context)
        return DetectionRun(results, shape, tuple(spacing), units, load_s, scan)  # type: ignore[arg-type]
    positions = volume.positions_mm if isinstance(volume, LazyVolume) else None
    # Objects settled on slices that are no prefix of the final volume (sent top down, or
    # the stream had to start over) have boxes that will move: no alert from those.
    prefix = complete or not isinstance(volume, LazyVolume) or volume.is_prefix_from(first_sop)
    results, new = [], 0
    for det, stream in zip(dets, streams):
        if stream is None:
            if complete:
                results += run_detectors(volume, spacing, detector_list=[det], units=units, **context)
            continue
        t1 = time.perf_counter()
        try:
            found = stream.step(volume, spacing, complete=complete, positions=positions, units=units, **context)
            new += len(found) if prefix and not getattr(stream, "restarted", False) else 0
            results.append(DetectorResult(det.name, det.version, stream.detections, time.perf_counter() - t1))
        except Exception as exc:  # as in run_detectors: one broken detector hides nothing else
            LOGGER.exception("detector %s %s failed", det.name, det.version)
            results.append(DetectorResult(det.name, det.version, [], time.perf_counter() - t1,
                                          f"{type(exc).__name__}: {exc}"))
    return DetectionRun(results, shape, tuple(spacing), units, load_s, scan,  # type: ignore[arg-type]
                        complete, new, tuple(streams))


def run_detectors_in_pool(
    pool: Executor,
    source: np.ndarray | str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    *,
    spacing_mm: tuple[float, float, float] | None = None,
    detector_list: Sequence[Detector] | None = None,
    streams: Sequence[Any] | None = None,
    complete: bool = True,
    volume_key: str | None = None,
    first_sop: str | None = None,
    **context: Any,
) -> Future[DetectionRun]:
    """Submit detection of one scan to ``pool`` (a ProcessPoolExecutor in the station)
    and return the Future of its ``DetectionRun``; add a done-callback to publish alerts.

    Pass DICOM paths (the worker loads them lazily from the store) rather than a big
    array: an array is pickled to the worker, ~300 MB for a 512x512x300 float32 bag.
    The detectors (default: the registered ones) are pickled with the task. ``streams``
    (one per detector: its ``stream()`` or None) makes the task one step over the slices
    arrived so far, or the last step with ``complete``; the Future's run carries the
    streams' new state. ``volume_key`` (the series) lets the worker keep the scan's
    volume between steps and read only the new files' headers; ``first_sop``, the first
    instance of it to arrive, tells slices sent bottom up (a step's objects are then
    where they stay, and count as ``new``) from others. Any thread.
    """
    dets = list(detector_list if detector_list is not None else detectors())
    if not isinstance(source, np.ndarray) and not isinstance(source, (str, os.PathLike)):
        source = [str(p) for p in source]
    if streams is None:
        return pool.submit(_pool_job, source, spacing_mm, dets, dict(context))
    return pool.submit(_pool_job, source, spacing_mm, dets, dict(context), list(streams), complete, volume_key,
                       first_sop)


# --------------------------------------------------------------------------- CLI


def detect_main(
    paths: Sequence[str | os.PathLike[str]], tdr_out: str | os.PathLike[str] | None = None,
    *, site: Site | None = None,
) -> dict[str, Any]:
    """``station detect PATH... [--tdr-out FILE] --json``: run the built-in detector on
    one CT scan (files or folders) and return the alerts; with ``tdr_out`` also write the
    machine TDR referencing the scan. Raises DetectError when the input is not one CT
    series or the detector fails."""
    detector = DensityDetector()
    run = _pool_job(list(paths), None, [detector], {})
    [result] = run.results
    if result.error:
        raise DetectError(f"{detector.name} failed: {result.error}")
    alerts = []
    for i, det in enumerate(result.detections, 1):
        alerts.append({"id": i, **det.to_json()})
    scan = run.scan
    out: dict[str, Any] = {
        "scan": {
            "study_uid": scan.study_uid if scan else None,
            "series_uid": scan.series_uid if scan else None,
            "patient_id": scan.patient_id if scan else None,
            "shape": list(run.shape),
            "spacing_mm": [round(s, 4) for s in run.spacing_mm],
            "units": run.units,
        },
        "detector": {"name": detector.name, "version": detector.version},
        "alarm_decision": "ALARM" if alerts else "CLEAR",
        "alerts": alerts,
        "seconds": {"load": round(run.load_seconds, 3), "detect": round(result.seconds, 3)},
        "tdr": None,
    }
    if tdr_out is not None and scan is not None:
        tdr = write_machine_tdr(
            result.detections, tdr_out, scan=scan,
            algorithm=Algorithm(detector.name, detector.version, tuple(detector.parameters())),
            processing_ms=(run.load_seconds + result.seconds) * 1000.0, site=site,
        )
        out["tdr"] = {"path": str(tdr_out), "sop_instance_uid": tdr.sop_instance_uid,
                      "alarm_decision": tdr.alarm_decision}
    return out


# --------------------------------------------------------------------------- scoring


def box_iou(
    base_a: Sequence[float], extent_a: Sequence[float], base_b: Sequence[float],
    extent_b: Sequence[float],
) -> float:
    """Intersection over union of two voxel boxes (base, extent), any axis order."""
    inter = 1.0
    for a0, ae, b0, be in zip(base_a, extent_a, base_b, extent_b):
        overlap = min(a0 + ae, b0 + be) - max(a0, b0)
        if overlap <= 0:
            return 0.0
        inter *= overlap
    vol_a = math.prod(extent_a)
    vol_b = math.prod(extent_b)
    return inter / (vol_a + vol_b - inter)
