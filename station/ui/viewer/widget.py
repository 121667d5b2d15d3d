"""The slice viewer: axial, coronal and sagittal planes, slabs and a rotating projection
of one (possibly still arriving) series, or a 2-D view of a radiograph.

Layouts (L cycles): 1x1 axial, 1x3 MPR (axial, coronal, sagittal) and 2x2 (MPR plus a
projection of the whole bag turned about its vertical axis). A linked crosshair ties the
planes together: a click or drag in one plane moves the others.

Threads. Header reads for arriving files run on the viewer's one-thread header pool (one
thread keeps the volume's single-writer rule and the arrival order); the first slice
shows as soon as its header is read. Gathering slices for reslicing, building the
projection input, projecting and dual-energy classification run on a second one-thread
compute pool, so a big series never stalls the GUI. Results come back by queued signals
on small emitter objects that may outlive the viewer. Every job carries the generation
it was started for and stops (or is ignored) once the viewer moved on.

Memory. Axial slices are shown straight from the volume (memory-mapped files, or the
volume's decoded-frame cache) without any copy; coronal and sagittal planes come from a
``SliceStore`` (``station.core.imaging.mpr``) that keeps each slice at its stored size, filled
only once a layout needs it. A loaded series costs about its voxel bytes.

Controls (the viewer has keyboard focus; keys act on the active pane, the one under the
mouse or last clicked, V cycles it):
wheel, Up/Down, Left/Right, PageUp/PageDown, Home/End scroll (in the projection: turn);
Ctrl+wheel or +/- zoom, Shift+drag or middle drag pan, R resets; right drag windows;
1 series window, 2-6 presets; A auto window; C colour map, I inverse; L layout;
S slab mode (MIP, MinIP, average) with [ ] thickness; P projection MIP/average, , . turn;
T threat boxes, N next threat; D ruler, O region statistics, B marks a threat box,
Delete clears them; X crosshair; H help. Inside the main window 1-3, N, P, F1 and ? are triage keys
(station.ui.triage.controller): there the presets are Alt+1..6, next threat Shift+N and the
projection mode Shift+P (the modifiers reach this handler with the same key code).
"""

from __future__ import annotations

import functools
import logging
import math
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PySide6.QtCore import QObject, QPointF, QRectF, Qt, QThreadPool, QTimer, Signal
from PySide6.QtGui import QKeyEvent, QWheelEvent
from PySide6.QtWidgets import QGridLayout, QSizePolicy, QSlider, QVBoxLayout, QWidget

from station.core.imaging import material
from station.core.imaging.mpr import (
    AXES,
    ProjectionImage,
    Projector,
    SliceStore,
    ThreatBox,
    as_threat_boxes,
    distance_mm,
    mass_center,
    roi_stats,
)
from station.core.imaging.volume import FrameVolume, SeriesVolume, SliceInfo, SliceNotLoaded, VolumeError
from station.ui.keymap import Keymap
from station.ui.viewer.actions import KeyBindings
from station.ui.viewer.colormaps import COLORMAP_TITLES, COLORMAPS, lut_for, material_lut
from station.ui.viewer.pane import BACKGROUND, PaneImageItem, PaneViewBox, Shape, ViewPane

LOGGER = logging.getLogger(__name__)

#: Seconds after the last ``add_paths`` during which the overlay says "receiving…".
RECEIVING_S = 3.0

#: How often the header worker reports progress while working through a long batch; the
#: first file is always reported at once so the first slice shows without delay.
PROGRESS_INTERVAL_S = 0.05

#: Decoded-frame cache of the viewer's volumes. Small: once the reslicer holds a series,
#: it is the cache, and two full copies would break the 1.5x memory budget.
VOLUME_CACHE_BYTES = 64 * 1024 * 1024

#: Memory maps a viewer's volume keeps open (each holds a descriptor and mapped pages).
VOLUME_OPEN_MAPS = 16

LAYOUTS = ("single", "mpr", "quad")
LAYOUT_PANES = {
    "single": ("axial",),
    "mpr": ("axial", "coronal", "sagittal"),
    "quad": ("axial", "coronal", "sagittal", "projection"),
}
LAYOUT_TITLES = {"single": "1×1", "mpr": "1×3 MPR", "quad": "2×2 MPR + projection"}
PANE_TITLES = {"axial": "Axial", "coronal": "Coronal", "sagittal": "Sagittal", "projection": "Projection"}

SLAB_STEPS_MM = (3.0, 5.0, 10.0, 20.0, 40.0, 80.0)
"""Slab thicknesses the [ and ] keys step through."""
SLAB_TITLES = {"mip": "MIP", "minip": "MinIP", "avg": "Average"}

ROTATE_KEY_DEG = 10.0  # , and . turn the projection
ROTATE_STEP_DEG = 5.0  # one wheel notch or arrow key on the projection
ROTATE_DRAG_DEG_PER_PX = 0.5

GROWTH_REFRESH_MS = 250
"""While the open series grows, what is on screen follows it at most this often: each
update repaints every pane, and at ~20 header batches a second (eight scanners sending)
that kept a two-core station's GUI thread busy enough to stall for 100-300 ms."""
MPR_REFRESH_MS = GROWTH_REFRESH_MS
"""While a series arrives, coronal/sagittal/projection refresh at most this often."""
PROJECTION_REBUILD_S = 1.0
"""While a series arrives, the projection input is rebuilt at most this often."""

_PANE_ORDER = ("axial", "coronal", "sagittal", "projection")
_FIXED_AXIS = {"axial": "z", "coronal": "y", "sagittal": "x"}


def plane_axes(pane: str, mode: str) -> tuple[str, str]:
    """(horizontal, vertical) volume axes of a pane on screen.

    Clinic: the radiological convention, head up in coronal and sagittal planes. Airport:
    y is up in the world (the belt is at the bottom rows), so every plane that contains
    y shows it vertically with the top of the bag on top: the sagittal plane becomes the
    side view of the bag (belt direction z across the screen); the coronal plane is the
    view from above (z up the screen). The projection shows (u, y): the bag from the side.
    """
    if pane == "axial":
        return ("x", "y")
    if pane == "coronal":
        return ("x", "z")
    if pane == "sagittal":
        return ("z", "y") if mode == "airport" else ("y", "z")
    return ("u", projection_axes(mode)[1])


def projection_axes(mode: str) -> tuple[str, str]:
    """(depth, vertical) of the rotating projection: it turns about the vertical axis and
    looks along the depth axis at 0 degrees. Airport: about the bag's vertical (y),
    starting along the belt (z). Clinic: about the patient's long axis (z), starting
    front to back (y), the usual rotating MIP of a CT."""
    return ("z", "y") if mode == "airport" else ("y", "z")


def _inverted(pane: str, mode: str) -> bool:
    """Row 0 on top when the vertical axis is y; z grows upwards."""
    return plane_axes(pane, mode)[1] == "y"

_GRID = {
    "mpr": {"axial": (0, 0), "coronal": (0, 1), "sagittal": (0, 2)},
    "quad": {"axial": (0, 0), "coronal": (0, 1), "sagittal": (1, 0), "projection": (1, 1)},
    "single": {"axial": (0, 0)},
}

_HELP = (
    ("Wheel  ↑ ↓  PgUp PgDn  Home End", "scroll the view under the mouse"),
    ("Click / drag", "move the crosshair; turn the projection"),
    ("Ctrl+wheel  + −  ·  Shift+drag  ·  R", "zoom · pan · fit again"),
    ("Right drag", "window (width, level)"),
    ("1 · 2–6 · A", "series window · presets · auto"),
    ("C · I", "colour map · inverse"),
    ("L · V", "layout · next view"),
    ("S · [ ]", "slab MIP / MinIP / average · thickness"),
    ("P · , .", "projection MIP / average · turn"),
    ("T · N", "threat boxes · next threat"),
    ("D · O · B · Del", "ruler · region statistics · mark a threat box · clear"),
    ("X · H", "crosshair · this help"),
    ("Alt+1–6 · Shift+N · Shift+P", "in the station (1-3, N, P are triage keys; F1 lists all)"),
)
"""Key help (H): (keys, what they do), painted as a table over the axial view."""


# --------------------------------------------------------------------------- windows


@dataclass(frozen=True)
class WindowPreset:
    name: str
    center: float
    width: float


AIRPORT_PRESETS_MHU = (
    WindowPreset("Full range", 2000, 4000),  # air (0) to light metal: the everyday bag window
    WindowPreset("Organic", 1250, 1500),  # 500-2000: explosives, liquids, plastics apart
    WindowPreset("Metals", 6000, 8000),  # 2000-10000: inside metal objects
    WindowPreset("High penetration", 8000, 16000),  # nothing saturates: see through dense items
    WindowPreset("Low penetration", 400, 1000),  # thin, light things: cloth, paper, foam
)
"""Security CT presets in MHU (air 0, water 1000, organics about 1000-1700, metals above
2500); shifted by -1000 for data in HU."""

AIRPORT_PRESETS_DX = (
    WindowPreset("Full range", 6000, 12000),
    WindowPreset("Organic", 2500, 5000),
    WindowPreset("Metals", 8000, 8000),
    WindowPreset("High penetration", 9000, 7000),
    WindowPreset("Low penetration", 1500, 3000),
)
"""Radiograph presets in log attenuation x1000 (the synthetic scanner's units)."""

PRESET_NAMES = frozenset(p.name for p in AIRPORT_PRESETS_MHU)

CLINIC_PRESETS_HU = (
    WindowPreset("Soft tissue", 40, 400),
    WindowPreset("Lung", -600, 1500),
    WindowPreset("Bone", 400, 1800),
    WindowPreset("Brain", 40, 80),
)
"""The usual radiology windows in HU (air -1000, water 0); +1000 for data in MHU."""
PRESET_NAMES = PRESET_NAMES | {p.name for p in CLINIC_PRESETS_HU}


def data_units(rescale_type: str, modality: str, mode: str) -> str:
    """Units of a series' values as the viewer labels them: the RescaleType when it is
    HU or MHU; CT without one (DICOS) is taken as MHU in airport mode, HU in clinic mode."""
    units = (rescale_type or "").upper()
    if units in ("HU", "MHU"):
        return units
    if modality == "CT":
        return "MHU" if mode == "airport" else "HU"
    return units if units not in ("US",) else ""


def window_presets(mode: str, rescale_type: str, *, planar: bool = False, modality: str = "CT") -> list[WindowPreset]:
    """Named (center, width) presets for keys 2-6 (key 1 is the series' own default).

    Airport: full range, organic, metals, high and low penetration; clinic: soft tissue,
    lung, bone, brain. Each set is defined in its mode's units (MHU, HU) and converted
    when the data come in the other one. Radiographs (``planar``) have their own airport
    set; in clinic mode they have none (the series window and auto window serve).
    """
    if planar:
        return list(AIRPORT_PRESETS_DX) if mode == "airport" else []
    units = data_units(rescale_type, modality, mode)
    if mode == "airport":
        shift = -1000.0 if units == "HU" else 0.0
        return [WindowPreset(p.name, p.center + shift, p.width) for p in AIRPORT_PRESETS_MHU]
    shift = 1000.0 if units == "MHU" else 0.0
    return [WindowPreset(p.name, p.center + shift, p.width) for p in CLINIC_PRESETS_HU]


def default_window(volume: Any, mode: str, first_slice: np.ndarray | None) -> WindowPreset:
    """The window a series opens with: its own VOI window, else a preset for CT in this
    mode, else (DX, MR, unknown units) the 0.5-99.5 percentile range of the first slice."""
    own = volume.default_window
    if own is not None:
        return WindowPreset("Series", own[0], own[1])
    if volume.modality == "CT" or volume.rescale_type in ("HU", "MHU"):
        return window_presets(mode, volume.rescale_type, modality=volume.modality)[0]
    return auto_window(first_slice)


def auto_window(image: np.ndarray | None) -> WindowPreset:
    """A window spanning the robust value range of `image`."""
    if image is None or image.size == 0:
        return WindowPreset("Auto", 0.0, 1.0)
    sample = np.asarray(image[:: max(1, image.shape[0] // 128), :: max(1, image.shape[1] // 128)], dtype=np.float32)
    if not np.isfinite(sample).any():
        return WindowPreset("Auto", 0.0, 1.0)
    lo, hi = (float(v) for v in np.nanpercentile(sample, (0.5, 99.5)))
    if not math.isfinite(lo) or not math.isfinite(hi) or hi <= lo:
        lo, hi = float(np.nanmin(sample)), float(np.nanmax(sample)) + 1.0
    return WindowPreset("Auto", (lo + hi) / 2, hi - lo)


# --------------------------------------------------------------------------- workers


class _Generation:
    """The newest job generation, shared by the viewer (writes it, GUI thread) and its jobs
    (read it, pool threads). A job of an older generation (the viewer switched series or
    shut down) stops at its next step. A plain object, so it may outlive the viewer."""

    def __init__(self) -> None:
        self.value = 0


class _ProgressEmitter(QObject):
    """Carries job results to the GUI thread. It lives there (the viewer creates it) and is
    emitted from pool threads, so delivery is queued. Separate from the viewer so that a
    job finishing while the viewer is being destroyed still emits on a live object."""

    progress = Signal(int, int, int, list)  # generation, files done, slices added, errors
    gathered = Signal(int, int)  # generation, slices held
    projected = Signal(int, object, object)  # generation, ProjectionImage, Projector
    classified = Signal(int, object, object)  # generation, material classes or None, high image
    failed = Signal(int, str)  # generation, message


def _read_headers(generation: int, current: _Generation, volume: SeriesVolume, paths: list[Path],
                  emitter: _ProgressEmitter) -> None:
    """Header pool thread: add `paths` to `volume`; report the first slice at once, then
    every PROGRESS_INTERVAL_S, so the first image shows while a long batch is still read."""
    done = added = 0
    errors: list[str] = []
    last_report = float("-inf")
    for path in paths:
        if generation != current.value:
            return
        try:
            added += volume.add_file(path)
        except VolumeError as exc:
            LOGGER.warning("viewer skipped %s", exc)
            errors.append(str(exc))
        done += 1
        now = time.monotonic()
        if added and now - last_report >= PROGRESS_INTERVAL_S:
            emitter.progress.emit(generation, done, added, errors)
            done, added, errors, last_report = 0, 0, [], now
    if done:
        emitter.progress.emit(generation, done, added, errors)


def _gather(generation: int, current: _Generation, store: SliceStore, emitter: _ProgressEmitter) -> None:
    """Compute pool thread: read every slice the store does not hold yet."""
    try:
        held = store.gather(lambda: generation != current.value)
    except (VolumeError, OSError, ValueError) as exc:
        LOGGER.error("cannot gather slices for reslicing: %s", exc)
        emitter.failed.emit(generation, str(exc))
        return
    if generation == current.value:
        emitter.gathered.emit(generation, held)


class _ProjectionMailbox:
    """Latest-request-wins hand-over between the GUI (``post``) and the compute thread.

    Turning the projection by dragging posts dozens of angles a second; only the newest
    matters. One job runs at a time and keeps taking the newest request until there is
    none, so requests never queue up behind each other. Also keeps the projector (the
    block-reduced volume) between requests; it is rebuilt when the mode changes or more
    slices are held (at most every PROJECTION_REBUILD_S while a series arrives).
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.pending: tuple[float, str, tuple[SliceInfo, ...], bool, str] | None = None
        self.running = False
        self.projector: Projector | None = None
        self.projector_held = -1
        self.projector_about = ""
        self.built_at = float("-inf")

    def post(self, angle: float, mode: str, slices: tuple[SliceInfo, ...], complete: bool, about: str) -> bool:
        """GUI thread: leave a request; True when the caller must start a job."""
        with self.lock:
            self.pending = (angle, mode, slices, complete, about)
            if self.running:
                return False
            self.running = True
            return True

    def take(self) -> tuple[float, str, tuple[SliceInfo, ...], bool, str] | None:
        """Compute thread: the newest request, or None (and the job ends)."""
        with self.lock:
            request, self.pending = self.pending, None
            if request is None:
                self.running = False
            return request

    def reset(self) -> None:
        with self.lock:
            self.pending = None
            self.projector = None
            self.projector_held = -1
            self.built_at = float("-inf")


def _project(generation: int, current: _Generation, store: SliceStore, box: _ProjectionMailbox,
             emitter: _ProgressEmitter) -> None:
    """Compute pool thread: serve projection requests until none is left."""
    while True:
        request = box.take()
        if request is None:
            return
        if generation != current.value:
            continue  # drain: a newer viewer state owns the mailbox
        angle, mode, slices, complete, about = request
        try:
            held = store.ordered(slices).held
            grown = box.projector_held != held and (complete or time.monotonic() - box.built_at >= PROJECTION_REBUILD_S)
            if box.projector is None or grown or box.projector_about != about:
                built = store.downsampled(slices, should_stop=lambda: generation != current.value)
                if built is None:
                    continue
                zyx, (dz, dy, dx) = built
                if about == "y":
                    box.projector = Projector(zyx, (dz, dy, dx))
                else:  # about z: the projector turns about its middle axis
                    box.projector = Projector(zyx.transpose(1, 0, 2), (dy, dz, dx))
                del built, zyx
                box.projector_held = held
                box.projector_about = about
                box.built_at = time.monotonic()
            projector = box.projector
            image = projector.project(angle, mode, with_peak=mode == "avg")
        except (VolumeError, OSError, ValueError, MemoryError) as exc:
            LOGGER.error("projection failed: %s", exc)
            emitter.failed.emit(generation, str(exc))
            continue
        if generation == current.value:
            emitter.projected.emit(generation, image, projector)


def _classify(generation: int, current: _Generation, volume: SeriesVolume, slices: tuple[SliceInfo, ...],
              emitter: _ProgressEmitter) -> None:
    """Compute pool thread: material classes of a dual-energy pair, if the series is one.
    Always answers (classes None when it is not), so the viewer may ask again once more
    images arrived."""
    classes, high = None, None
    try:
        pair = material.dual_energy_pair([s.path for s in slices])
        if pair is not None and generation == current.value:
            images = []
            for k in pair:
                values, slope, intercept = volume.stored_slice(slices[k])
                images.append(np.asarray(values, dtype=np.float32) * slope + intercept)
            classes = material.classify_dual_energy(images[0], images[1])
            high = slices[pair[0]]
    except (VolumeError, OSError, ValueError) as exc:
        LOGGER.warning("no material colours for this radiograph: %s", exc)
    if generation == current.value:
        emitter.classified.emit(generation, classes, high)


# --------------------------------------------------------------------------- viewer


class SliceViewer(QWidget):
    """Slice viewer for one series at a time. GUI thread only (its workers are private).

    Signals: ``sliceChanged(int)`` after the axial slice changed, ``volumeGrew(int)`` with
    the new slice count, ``crosshairChanged(x, y, z)`` in voxels, ``userInteracted()``
    whenever the user scrolls, windows, zooms or clicks (the main window uses it to avoid
    switching scans under the user's hands).
    """

    sliceChanged = Signal(int)
    volumeGrew = Signal(int)
    crosshairChanged = Signal(int, int, int)
    userInteracted = Signal()

    def __init__(self, mode: str = "airport", parent: QWidget | None = None, *, layout: str = "mpr") -> None:
        super().__init__(parent)
        if layout not in LAYOUTS:
            raise ValueError(f"unknown layout {layout!r}; one of {LAYOUTS}")
        self.setObjectName("SliceViewer")
        self.setFocusPolicy(Qt.FocusPolicy.StrongFocus)
        self.setMouseTracking(True)
        self._mode = mode
        self._layout = layout
        self._bindings: KeyBindings | None = None  # viewer actions by key (set_keymap)
        self._volume: SeriesVolume | None = None
        self._empty_message = ""
        self._store: SliceStore | None = None
        self._series_uid: str | None = None
        self._generation = 0
        self._submitted: set[str] = set()
        self._files_done = 0
        self._slices: tuple[SliceInfo, ...] = ()
        self._index = -1
        self._cursor = [0, 0]  # crosshair column (x) and row (y) in voxels; z is _index
        self._cursor_set = False
        self._track_middle = True
        self.userInteracted.connect(self._on_user_interacted)
        self._current: SliceInfo | None = None
        self._window: WindowPreset | None = None
        self._proj_window: WindowPreset | None = None
        self._colormap: str | None = None  # None: the series' natural map
        self._slab_mode: str | None = None
        self._slab_mm = 10.0
        # Airport: the average with material colours looks like the dual-energy X-ray
        # screeners know; clinic: MIP, the usual rotating projection of a CT.
        self._proj_mode = "avg" if mode == "airport" else "mip"
        self._proj_angle = 30.0
        self._projection: ProjectionImage | None = None
        self._projector: Projector | None = None
        self._classes: np.ndarray | None = None  # dual-energy material classes
        self._threats: list[ThreatBox] = []
        self._threats_visible = True
        self._threat_cursor = -1
        self._tool: str | None = None
        self._measure: dict[str, Any] | None = None
        self._drawn: ThreatBox | None = None  # the analyst's own box (tool "mark")
        self._help = False
        self._active = "axial"
        self._hover_pane = ""
        self._hover = ""
        self._label = ""
        self._last_add = float("-inf")
        self._errors: list[str] = []
        self._gathering = False
        self._gathered_version = -1
        self._classifying = False
        self._classified_for = 0  # slice count the last dual-energy check saw
        self._ranged: dict[str, tuple[Any, ...]] = {}
        self._user_zoomed: set[str] = set()
        self._spacing_cache: tuple[tuple[SliceInfo, ...], tuple[float, float, float]] | None = None
        self._current_generation = _Generation()
        # One thread each: SeriesVolume takes one writer, and files go in as they arrived;
        # the compute jobs share one core of a two-core machine with the GUI. Idle threads
        # exit at once, so a quiet viewer holds no thread at all.
        self._pool = QThreadPool(self)
        self._pool.setMaxThreadCount(1)
        self._pool.setExpiryTimeout(0)
        self._compute = QThreadPool(self)
        self._compute.setMaxThreadCount(1)
        self._compute.setExpiryTimeout(0)
        self._mailbox = _ProjectionMailbox()
        self._emitter = _ProgressEmitter()
        queued = Qt.ConnectionType.QueuedConnection
        self._emitter.progress.connect(self._on_progress, queued)
        self._emitter.gathered.connect(self._on_gathered, queued)
        self._emitter.projected.connect(self._on_projected, queued)
        self._emitter.classified.connect(self._on_classified, queued)
        self._emitter.failed.connect(self._on_failed, queued)
        #: (seconds from set_series to the first slice on screen); for the benchmark.
        self.first_slice_latency_s: float | None = None
        self._opened_at = 0.0

        self._grid_host = QWidget()
        self._grid_host.setObjectName("PaneGrid")
        self._grid = QGridLayout(self._grid_host)
        self._grid.setContentsMargins(0, 0, 0, 0)
        self._grid.setSpacing(3)
        self.panes: dict[str, ViewPane] = {}
        for name in _PANE_ORDER:
            pane = ViewPane(name, invert_y=_inverted(name, mode))
            pane.setParent(self._grid_host)
            pane.hide()
            pane.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Expanding)
            pane.view.sigWheel.connect(functools.partial(self._on_wheel_steps, name))
            pane.view.sigWindowDrag.connect(functools.partial(self._on_window_drag, name))
            pane.view.sigLeftDrag.connect(functools.partial(self._on_left_drag, name))
            pane.view.sigLeftClick.connect(functools.partial(self._on_left_click, name))
            pane.view.sigRangeChangedManually.connect(functools.partial(self._on_zoomed, name))
            pane.scene().sigMouseMoved.connect(functools.partial(self._on_mouse_moved, name))
            self.panes[name] = pane
        # Names kept from the single-plane viewer (tests and tools use them).
        self._graphics = self.panes["axial"]
        self._view = self._graphics.view
        self._item = self._graphics.item

        self._slider = QSlider(Qt.Orientation.Horizontal)
        self._slider.setObjectName("SliceSlider")
        self._slider.setFocusPolicy(Qt.FocusPolicy.NoFocus)  # Tab: list <-> viewer only
        self._slider.setRange(0, 0)
        self._slider.setEnabled(False)
        self._slider.valueChanged.connect(self._on_slider)

        layout_box = QVBoxLayout(self)
        layout_box.setContentsMargins(0, 0, 0, 0)
        layout_box.setSpacing(4)
        layout_box.addWidget(self._grid_host, 1)
        layout_box.addWidget(self._slider)

        self._receiving_timer = QTimer(self)
        self._receiving_timer.setSingleShot(True)
        self._receiving_timer.timeout.connect(self._update_overlay)
        self._mpr_timer = QTimer(self)
        self._mpr_timer.setSingleShot(True)
        self._mpr_timer.timeout.connect(self._on_mpr_timer)
        self._growth_timer = QTimer(self)
        self._growth_timer.setSingleShot(True)
        self._growth_timer.timeout.connect(self._take_growth)
        self._last_growth = float("-inf")
        self._arrange()
        self._apply_lut()
        self._update_overlay()

    # -- public API -------------------------------------------------------------------------

    @property
    def volume(self) -> SeriesVolume | None:
        """The open series' volume (None before the first ``set_series``)."""
        return self._volume

    @property
    def store(self) -> SliceStore | None:
        """The reslicing store of the open series (None until a layout needed it)."""
        return self._store

    @property
    def current_index(self) -> int:
        """Index of the shown axial slice in geometric order, -1 when nothing is shown."""
        return self._index

    @property
    def slice_count(self) -> int:
        """How many axial slices the viewer has taken in (may trail the volume briefly)."""
        return len(self._slices)

    @property
    def current_slice(self) -> SliceInfo | None:
        """The axial slice on screen (file, frame, position), None when nothing is shown."""
        return self._current

    @property
    def series_uid(self) -> str | None:
        return self._series_uid

    @property
    def window(self) -> tuple[float, float] | None:
        """(center, width) in modality units, or None before the first slice."""
        return (self._window.center, self._window.width) if self._window else None

    @property
    def window_name(self) -> str:
        return self._window.name if self._window else ""

    @property
    def image_item(self) -> PaneImageItem:
        """The axial pane's image item."""
        return self._item

    @property
    def view_box(self) -> PaneViewBox:
        """The axial pane's view box."""
        return self._view

    @property
    def errors(self) -> list[str]:
        """Files of the open series the viewer could not use (one message each)."""
        return list(self._errors)

    @property
    def mode(self) -> str:
        return self._mode

    @property
    def layout_name(self) -> str:
        """The layout chosen ("single", "mpr", "quad"); radiographs always show one pane."""
        return self._layout

    @property
    def visible_panes(self) -> tuple[str, ...]:
        """Names of the panes on screen now."""
        return ("axial",) if self.planar else LAYOUT_PANES[self._layout]

    @property
    def planar(self) -> bool:
        """True for a series of 2-D images without positions (DX, CR, projections)."""
        s = self._slices[0] if self._slices else None
        return s is not None and s.position_mm is None

    @property
    def crosshair(self) -> tuple[int, int, int]:
        """The crosshair in voxels (x, y, z); z is the axial slice index."""
        return self._cursor[0], self._cursor[1], max(self._index, 0)

    @property
    def colormap(self) -> str:
        return self._effective_colormap()

    @property
    def slab(self) -> tuple[str | None, float]:
        """(mode or None, thickness in mm)."""
        return self._slab_mode, self._slab_mm

    @property
    def projection(self) -> ProjectionImage | None:
        """The projection on screen (None before the first result)."""
        return self._projection

    @property
    def projection_angle(self) -> float:
        return self._proj_angle

    @property
    def threats(self) -> list[ThreatBox]:
        return list(self._threats)

    @property
    def threats_visible(self) -> bool:
        return self._threats_visible

    @property
    def tool(self) -> str | None:
        """The left-button tool: None (crosshair), "ruler", "roi" or "mark"."""
        return self._tool

    @property
    def drawn_box(self) -> ThreatBox | None:
        """The box the analyst marked (a threat the machine missed), in voxel (x, y, z) of
        the volume's geometric order; None when none is drawn."""
        return self._drawn

    def clear_drawn_box(self) -> None:
        self._drawn = None
        self._refresh_annotations()
        self._update_overlay()

    @property
    def measurement(self) -> dict[str, Any] | None:
        """The last ruler or region: pane, kind, and its numbers (mm, mm², value units)."""
        return dict(self._measure) if self._measure else None

    @property
    def active_pane(self) -> str:
        return self._active

    def pane(self, name: str) -> ViewPane:
        return self.panes[name]

    def set_mode(self, mode: str) -> None:
        """Airport (bag, MHU presets) or clinic (patient, HU presets)."""
        self._mode = mode
        for name, pane in self.panes.items():
            pane.view.invertY(_inverted(name, mode))
        self._ranged = {}
        self._apply_lut()
        self._refresh_all()

    def set_series(self, series_uid: str | None, paths: Iterable[str | Path], *, label: str = "") -> None:
        """Open a series (replacing the current one) and start reading its headers.

        Returns at once; slices appear as the worker reads headers. `label` is the text of
        the top-left corner (ID and description). Threat boxes of the previous series go.
        """
        self._bump_generation()
        self._volume = SeriesVolume(series_uid, cache_bytes=VOLUME_CACHE_BYTES, max_open_maps=VOLUME_OPEN_MAPS)
        self._store = None
        self._series_uid = series_uid
        self._reset_series_state()
        self._label = label
        self._opened_at = time.perf_counter()
        self.first_slice_latency_s = None
        self._submit(paths, receiving=False)
        self._update_overlay()

    def set_volume(self, volume: FrameVolume, *, label: str = "", current: int | None = None) -> None:
        """Open a series whose slices are all known but whose pixels are still arriving
        (a remote series): every slice can be scrolled to at once; slices without
        pixels show blank with "loading" until ``frames_arrived`` names them. Starts at
        ``current`` (default the middle). Replaces the open series."""
        self._bump_generation()
        self._volume = volume
        self._store = None
        self._series_uid = volume.series_uid
        self._reset_series_state()
        self._label = label
        self._opened_at = time.perf_counter()
        self.first_slice_latency_s = None
        slices = tuple(volume.slices)
        self._slices = slices
        if slices:
            k = len(slices) // 2 if current is None else min(max(0, current), len(slices) - 1)
            self._track_middle = False
            self._show(k, slices[k], refresh=False)
            self._slider.blockSignals(True)
            self._slider.setRange(0, len(slices) - 1)
            self._slider.setValue(k)
            self._slider.blockSignals(False)
            self._slider.setEnabled(len(slices) > 1)
            self._arrange()
            if self._needs_store():
                self._ensure_gathered()
        self._refresh_annotations()
        self._update_overlay()

    def frames_arrived(self, indices: Iterable[int]) -> None:
        """Pixels of these slices of the open ``FrameVolume`` arrived: show the one on
        screen, and fold the rest into the other planes (batched by the MPR timer)."""
        vol = self._volume
        if not isinstance(vol, FrameVolume) or not self._slices:
            return
        arrived = set(indices)
        if self.first_slice_latency_s is None and self._index in arrived:
            self.first_slice_latency_s = time.perf_counter() - self._opened_at
        if self._index in arrived or (self._slab_mode is not None and not self.planar):
            self._refresh_axial()
        if self._needs_store():
            self._ensure_gathered()
        if not self._cursor_set and not self._cursor_from_data and self._index in arrived:
            # The crosshair starts on the bag in the first real slice, as for local scans.
            self._cursor_from_data = True
            try:
                self._init_cursor(vol.slice(self._index))
            except VolumeError:
                pass
            for name in ("coronal", "sagittal"):
                self._refresh_plane(name)
        self._update_overlay()

    def set_status(self, text: str, *, alert: bool = False) -> None:
        """An extra line for the top-right corner (a remote pull's progress, "offline");
        "" removes it. ``alert`` shows it in the warning colour."""
        self._status, self._status_alert = text, alert
        self._update_overlay()

    def add_paths(self, paths: Iterable[str | Path]) -> None:
        """Grow the open series with newly arrived files (duplicates are ignored)."""
        if self._volume is None:
            return
        self._submit(paths, receiving=True)

    def clear(self, message: str = "") -> None:
        """Show nothing (no series open); ``message`` replaces "No scan open" (e.g. while
        a remote scan's metadata is on its way)."""
        self._bump_generation()
        self._volume = None
        self._store = None
        self._series_uid = None
        self._reset_series_state()
        self._label = ""
        self._empty_message = message
        self._update_overlay()

    def _reset_series_state(self) -> None:
        self._track_middle = True
        self._loading = False
        self._cursor_from_data = False
        self._status = ""
        self._status_alert = False
        self._submitted = set()
        self._files_done = 0
        self._slices = ()
        self._index = -1
        self._cursor = [0, 0]
        self._cursor_set = False
        self._current = None
        self._window = None
        self._proj_window = None
        self._projection = None
        self._projector = None
        self._classes = None
        self._threats = []
        self._threat_cursor = -1
        self._measure = None
        self._drawn = None
        self._errors = []
        self._hover = ""
        self._hover_pane = ""
        self._last_add = float("-inf")
        self._growth_timer.stop()
        self._last_growth = float("-inf")
        self._gathering = False
        self._classifying = False
        self._classified_for = 0
        self._ranged = {}
        self._user_zoomed = set()
        self._mailbox = _ProjectionMailbox()  # a running job keeps the old one
        for pane in self.panes.values():
            pane.ruler = None
            pane.roi = None
            pane.shapes = []
            pane.clear_image()
        self._slider.blockSignals(True)
        self._slider.setRange(0, 0)
        self._slider.blockSignals(False)
        self._slider.setEnabled(False)
        self._arrange()

    def set_index(self, k: int) -> None:
        """Show axial slice `k` (clamped to the volume)."""
        n = len(self._slices)
        if self._volume is None or n == 0:
            return
        k = max(0, min(int(k), n - 1))
        if k == self._index and self._graphics.has_image():
            return
        self._show(k, self._slices[k], refresh=False)
        self._after_cursor_move(z_changed=True)

    def scroll(self, delta: int) -> None:
        """Move `delta` slices along the normal from the axial slice on screen."""
        if self._volume is None or self._current is None:
            return
        self.set_index(self._index + delta)

    def set_crosshair(self, x: int | None = None, y: int | None = None, z: int | None = None) -> None:
        """Move the crosshair to voxel (x, y, z) (None keeps a coordinate); the planes
        through it follow. Clamped to the volume."""
        if self._volume is None or not self._slices:
            return
        _, rows, cols = self._shape()
        moved_x = x is not None and int(x) != self._cursor[0]
        moved_y = y is not None and int(y) != self._cursor[1]
        if x is not None:
            self._cursor[0] = max(0, min(int(x), cols - 1))
        if y is not None:
            self._cursor[1] = max(0, min(int(y), rows - 1))
        self._cursor_set = True
        z_changed = False
        if z is not None:
            k = max(0, min(int(z), len(self._slices) - 1))
            if k != self._index:
                self._show(k, self._slices[k], refresh=False)
                z_changed = True
        if moved_y:
            self._refresh_plane("coronal")
        if moved_x:
            self._refresh_plane("sagittal")
        self._after_cursor_move(z_changed=z_changed)

    def set_window(self, center: float, width: float) -> None:
        """Set the display window in modality units (HU, MHU...)."""
        self._window = WindowPreset("Custom", float(center), max(1e-3, float(width)))
        self._apply_levels()

    def set_layout(self, layout: str) -> None:
        """Show the 1x1 ("single"), 1x3 ("mpr") or 2x2 ("quad") layout."""
        if layout not in LAYOUTS:
            raise ValueError(f"unknown layout {layout!r}; one of {LAYOUTS}")
        if layout == self._layout:
            return
        self._layout = layout
        if self._active not in self.visible_panes:
            self._active = "axial"
        self._arrange()
        self._refresh_all()

    def set_colormap(self, name: str) -> None:
        """One of COLORMAPS: gray, inverse, hot, material."""
        if name not in COLORMAPS:
            raise ValueError(f"unknown colour map {name!r}")
        self._colormap = name
        self._apply_lut()
        self._update_overlay()

    def set_slab(self, mode: str | None, thickness_mm: float | None = None) -> None:
        """Thick slabs on the three planes: None (thin), "mip", "minip" or "avg"."""
        if mode not in (None, "mip", "minip", "avg"):
            raise ValueError(f"unknown slab mode {mode!r}")
        self._slab_mode = mode
        if thickness_mm is not None:
            self._slab_mm = max(0.1, float(thickness_mm))
        if mode is not None:
            self._ensure_gathered()
        self._refresh_all()

    def set_projection(self, angle_deg: float | None = None, mode: str | None = None) -> None:
        """Turn the projection to ``angle_deg`` (about the vertical axis; 0 looks along
        the slices) and/or switch its mode ("mip", "avg"). Computed off the GUI thread."""
        if angle_deg is not None:
            self._proj_angle = float(angle_deg) % 360.0
        if mode is not None:
            if mode not in ("mip", "avg"):
                raise ValueError(f"unknown projection mode {mode!r}")
            if mode != self._proj_mode:
                self._proj_window = None  # a mean has another range than a maximum
            self._proj_mode = mode
        self._request_projection()
        self._update_overlay()

    def set_threats(self, boxes: Iterable[ThreatBox | Mapping[str, Any]]) -> None:
        """Outline threats: boxes in voxel (x, y, z) base/extent with label, source
        ("machine" or "operator") and flag; see ``station.core.imaging.mpr.ThreatBox``."""
        self._threats = as_threat_boxes(boxes)
        self._threat_cursor = -1
        self._refresh_annotations()

    def set_threats_visible(self, visible: bool) -> None:
        self._threats_visible = bool(visible)
        self._refresh_annotations()
        self._update_overlay()

    def set_tool(self, tool: str | None) -> None:
        """Left-button tool: None (crosshair), "ruler" (distance), "roi" (statistics) or
        "mark" (draw a threat box: a drag in one plane sets its two axes, a drag in another
        plane its depth)."""
        if tool not in (None, "ruler", "roi", "mark"):
            raise ValueError(f"unknown tool {tool!r}")
        self._tool = tool
        self._update_overlay()

    def next_threat(self) -> None:
        """Centre the crosshair on the next threat box (N)."""
        if not self._threats:
            return
        self._threat_cursor = (self._threat_cursor + 1) % len(self._threats)
        x, y, z = self._threats[self._threat_cursor].center
        # Half-way centres (even extents) round up, the same way on every axis.
        self.set_crosshair(math.floor(x + 0.5), math.floor(y + 0.5), math.floor(z + 0.5))

    def shutdown(self) -> None:
        """Cancel header reading and computing, and wait for both pools to be idle. Safe
        to call twice; the viewer keeps working if it is used again."""
        self._bump_generation()
        self._mpr_timer.stop()
        for pool in (self._pool, self._compute):
            pool.clear()  # jobs not started yet
            if not pool.waitForDone(5000):
                LOGGER.error("slice viewer worker did not stop within 5 s")
        self._gathering = False
        self._classifying = False
        self._mailbox = _ProjectionMailbox()

    def is_busy(self) -> bool:
        """True while submitted files still wait for their header to be read or to be shown."""
        return self._volume is not None and (self._files_done < len(self._submitted) or self._growth_timer.isActive())

    def is_computing(self) -> bool:
        """True while gathering, projecting or classifying runs or waits."""
        return self._compute.activeThreadCount() > 0 or self._gathering or self._mailbox.running

    def overlay_text(self, corner: str, pane: str = "axial") -> str:
        """The annotation shown in corner "tl", "tr", "bl" or "br" of a pane ("" if none)."""
        return self.panes[pane].corners.get(corner, "")

    @property
    def placeholder_text(self) -> str:
        """The centred message shown instead of an image ("" while an image shows)."""
        return self._graphics.placeholder

    @property
    def help_visible(self) -> bool:
        return self._help

    def displayed_values(self, pane: str = "axial") -> np.ndarray | None:
        """Modality values of the image on a pane (float32), None when it shows nothing."""
        return self.panes[pane].modality_image()

    # -- header worker ------------------------------------------------------------------

    def _bump_generation(self) -> None:
        self._generation += 1
        self._current_generation.value = self._generation

    def _submit(self, paths: Iterable[str | Path], *, receiving: bool) -> None:
        fresh = []
        for p in paths:
            key = str(p)
            if key not in self._submitted:
                self._submitted.add(key)
                fresh.append(Path(p))
        if not fresh:
            return
        if receiving:
            self._last_add = time.monotonic()
            self._receiving_timer.start(int(RECEIVING_S * 1000) + 50)
        self._pool.start(functools.partial(
            _read_headers, self._generation, self._current_generation, self._volume, fresh, self._emitter))

    def _on_progress(self, generation: int, files_done: int, added: int, errors: list[str]) -> None:
        """Queued slot, GUI thread: the header worker read `files_done` more headers."""
        if generation != self._generation or self._volume is None:
            return  # a report about a series no longer shown
        self._files_done += files_done
        self._errors.extend(errors)
        wait_ms = GROWTH_REFRESH_MS - (time.monotonic() - self._last_growth) * 1000.0
        if self._current is not None and wait_ms > 0:
            # The first slice shows at once; later growth is shown in one go per interval.
            if not self._growth_timer.isActive():
                self._growth_timer.start(int(wait_ms) + 1)
            return
        self._take_growth()

    def _take_growth(self) -> None:
        """Show what the volume holds now (GUI thread; from _on_progress or its timer)."""
        self._growth_timer.stop()
        self._last_growth = time.monotonic()
        vol = self._volume
        if vol is None:
            return
        previous = self._slices
        slices = tuple(vol.slices)
        if not slices:
            self._update_overlay()
            return
        self._slices = slices
        middle = len(slices) // 2
        planar_before = bool(previous) and previous[0].position_mm is None
        if self._current is None:
            # The first slice(s) show at once, at the middle of what has arrived.
            self._show(middle, slices[middle])
            self.first_slice_latency_s = time.perf_counter() - self._opened_at
            self._arrange()
        elif self._track_middle and slices[middle] is not self._current:
            # Untouched since it opened: stay at the middle of the growing scan, so the
            # analyst sees the bag rather than the empty belt at its first slice. Once
            # they scroll, zoom or window, arrivals never move the view again.
            self._show(middle, slices[middle])
            if not self._cursor_set:
                # The crosshair too: the first slices of a bag are mostly belt, so a
                # centre taken from them puts the coronal plane through the belt.
                try:
                    self._init_cursor(vol.slice(middle))
                except (VolumeError, OSError, ValueError):
                    pass
                self._refresh_plane("coronal")
                self._refresh_plane("sagittal")
        else:
            self._index = self._find(slices, self._current, self._index)
        if self.planar != planar_before and previous:
            self._arrange()
        self._slider.blockSignals(True)
        self._slider.setRange(0, len(slices) - 1)
        self._slider.setValue(self._index)
        self._slider.blockSignals(False)
        self._slider.setEnabled(len(slices) > 1)
        if self.planar:
            self._maybe_classify()
        elif self._needs_store():
            self._ensure_gathered()
        self._refresh_annotations()
        self._update_overlay()
        self.volumeGrew.emit(len(slices))

    @staticmethod
    def _find(slices: tuple[SliceInfo, ...], target: SliceInfo, guess: int) -> int:
        """Where `target` is in `slices`; trying near `guess` first avoids a full scan."""
        for i in (guess, guess + 1, guess - 1):
            if 0 <= i < len(slices) and slices[i] is target:
                return i
        try:
            return slices.index(target)
        except ValueError:  # cannot happen: volumes only grow
            return max(0, min(guess, len(slices) - 1))

    # -- compute worker ------------------------------------------------------------------

    def _needs_store(self) -> bool:
        if self.planar:
            return False
        return len(self.visible_panes) > 1 or self._slab_mode is not None

    def _ensure_gathered(self) -> None:
        """Start gathering slices for reslicing unless it runs or everything is held."""
        vol = self._volume
        if vol is None or not self._slices or self.planar:
            return
        if self._store is None:
            self._store = SliceStore(vol)
        if self._gathering or self._store.complete_for(self._slices):
            return
        self._gathering = True
        self._gathered_version = vol.version
        self._compute.start(functools.partial(
            _gather, self._generation, self._current_generation, self._store, self._emitter))

    def _on_gathered(self, generation: int, held: int) -> None:
        """Queued slot, GUI thread: the store holds `held` slices now."""
        if generation != self._generation or self._store is None:
            return
        self._gathering = False
        vol = self._volume
        if vol is not None and vol.version != self._gathered_version:
            self._ensure_gathered()  # slices that arrived while we gathered
        if not self._mpr_timer.isActive():
            self._mpr_timer.start(0 if self._store.complete_for(self._slices) else MPR_REFRESH_MS)

    def _on_mpr_timer(self) -> None:
        self._auto_range_once("axial")  # the scan's footprint is known better now
        for name in ("coronal", "sagittal"):
            self._refresh_plane(name)
        if self._slab_mode is not None:
            self._refresh_axial()
        self._request_projection()
        self._refresh_annotations()
        self._update_overlay()

    def _request_projection(self) -> None:
        if "projection" not in self.visible_panes or self._store is None or not self._slices:
            return
        complete = self._store.complete_for(self._slices) and not self.is_busy()
        about = projection_axes(self._mode)[1]
        if self._mailbox.post(self._proj_angle, self._proj_mode, self._slices, complete, about):
            self._compute.start(functools.partial(
                _project, self._generation, self._current_generation, self._store, self._mailbox, self._emitter))

    def _on_projected(self, generation: int, image: ProjectionImage, projector: Projector) -> None:
        """Queued slot, GUI thread: a projection is ready."""
        if generation != self._generation:
            return
        self._projection, self._projector = image, projector
        pane = self.panes["projection"]
        if self._proj_window is None:
            self._proj_window = self._initial_projection_window(image)
        pane.set_image(image.image, origin=(image.left_mm, 0.0), pixel_mm=(image.row_mm, image.bin_mm))
        self._apply_pane_window("projection")
        self._apply_pane_lut("projection")
        self._auto_range_once("projection")
        self._refresh_annotations("projection")
        self._update_overlay()

    def _initial_projection_window(self, image: ProjectionImage) -> WindowPreset:
        """The projection keeps its own window: a mean along the ray has another range
        than a slice, and a clinical MIP (bones, contrast) is read with a bone window
        rather than the soft-tissue window of the slices."""
        if image.mode == "avg":
            return auto_window(image.image)
        if self._mode == "clinic" and self._volume is not None:
            bone = [p for p in window_presets("clinic", self._volume.rescale_type, modality=self._volume.modality)
                    if p.name == "Bone"]
            if bone:
                return bone[0]
        return self._window or auto_window(image.image)

    def _maybe_classify(self) -> None:
        if (self._classifying or self._classes is not None or self._volume is None or len(self._slices) < 2
                or self._classified_for == len(self._slices)):
            return
        self._classifying = True
        self._classified_for = len(self._slices)
        self._compute.start(functools.partial(
            _classify, self._generation, self._current_generation, self._volume, self._slices, self._emitter))

    def _on_classified(self, generation: int, classes: np.ndarray | None, high: SliceInfo | None) -> None:
        """Queued slot, GUI thread: whether (and how) the radiograph is a dual-energy pair."""
        if generation != self._generation:
            return
        self._classifying = False
        if classes is None or high is None:
            self._maybe_classify()  # more images may have arrived meanwhile
            return
        self._classes = classes
        if self._current is not None and self._current is not high and self._track_middle and high in self._slices:
            self._show(self._slices.index(high), high)  # brightness comes from the high image
        self._apply_lut()
        self._update_overlay()

    def _on_failed(self, generation: int, message: str) -> None:
        if generation != self._generation:
            return
        self._gathering = False
        self._errors.append(message)
        self._update_overlay()

    # -- display ------------------------------------------------------------------------

    def _shape(self) -> tuple[int, int, int]:
        vol = self._volume
        if vol is None or not self._slices:
            return (0, 0, 0)
        _, rows, cols = vol.shape
        return len(self._slices), rows, cols

    def _spacing(self) -> tuple[float, float, float]:
        """(z, y, x) spacing; cached per snapshot (the volume takes a median each time)."""
        vol = self._volume
        if vol is None:
            return (1.0, 1.0, 1.0)
        cached = self._spacing_cache
        if cached is None or cached[0] is not self._slices:
            cached = self._spacing_cache = (self._slices, vol.spacing_mm)
        return cached[1]

    def _show(self, k: int, info: SliceInfo, *, refresh: bool = True) -> None:
        """Put axial slice k on screen: straight from the volume (a memory-map view, no
        copy) or the store, with the rescale folded into the levels; or a slab."""
        vol = self._volume
        assert vol is not None
        pane = self._graphics
        first = not pane.has_image()
        self._index, self._current = k, info
        _, dy, dx = self._spacing()
        image: np.ndarray
        slope, intercept = 1.0, 0.0
        self._loading = False
        try:
            if self._slab_mode is not None and self._store is not None and not self.planar:
                image = self._store.reslice(self._slices, "axial", k, self._slab_voxels("z"), self._slab_mode)
            else:
                entry = self._store.entry(info) if self._store is not None else None
                image, slope, intercept = entry if entry is not None else vol.stored_slice(info)
        except SliceNotLoaded:
            # Known but not here yet (remote): blank at the bottom of the window until
            # it arrives; the window is not taken from a placeholder.
            _, rows, cols = vol.shape
            low = self._window.center - self._window.width / 2 if self._window is not None else 0.0
            image = np.full((rows, cols), low, dtype=np.float32)
            self._loading = True
        except (VolumeError, OSError, ValueError) as exc:
            LOGGER.error("cannot show slice %d of %s: %s", k, self._series_uid, exc)
            self._errors.append(str(exc))
            _, rows, cols = vol.shape
            image = np.zeros((rows, cols), dtype=np.float32)
        if self._window is None and self._loading:
            # Only a window that needs no pixels: else the first slice to arrive sets it.
            if vol.default_window is not None or vol.modality == "CT" or vol.rescale_type in ("HU", "MHU"):
                self._window = default_window(vol, self._mode, None)
        elif self._window is None:
            modality = np.asarray(image, dtype=np.float32) * slope + intercept
            self._window = default_window(vol, self._mode, modality)
            if not self._cursor_set:
                self._init_cursor(modality)
        pane.set_image(image, slope=slope, intercept=intercept, pixel_mm=(dy, dx))
        if first:
            self._apply_pane_window("axial")
            self._apply_pane_lut("axial")
            self._auto_range_once("axial")
        elif self._bounds_stale("axial"):
            self._apply_pane_lut("axial")
        if self._slider.value() != k:
            self._slider.blockSignals(True)
            self._slider.setValue(k)
            self._slider.blockSignals(False)
        if refresh:  # else the caller refreshes everything it moved at once
            self._refresh_annotations("axial")
            self._update_overlay()
        self.sliceChanged.emit(k)

    def _init_cursor(self, first: np.ndarray) -> None:
        """Start the crosshair in the middle of what was scanned, not of the field of view."""
        rows, cols = first.shape
        units = self._units()
        threshold = material.ct_bands(units)[0] if units in ("HU", "MHU") else auto_window(first).center
        centre = mass_center(first, threshold)
        row, col = centre if centre is not None else (rows // 2, cols // 2)
        self._cursor = [int(col), int(row)]

    def _refresh_axial(self) -> None:
        if self._current is not None and self._volume is not None:
            self._show(self._index, self._current)

    def _refresh_plane(self, name: str) -> None:
        """Reslice coronal (row y) or sagittal (column x) through the crosshair."""
        if name not in self.visible_panes or self._store is None or not self._slices:
            return
        if self._store.ordered(self._slices).held == 0:
            return
        pane = self.panes[name]
        fixed = _FIXED_AXIS[name]
        mode = self._slab_mode or "mip"
        image = self._store.reslice(self._slices, name, self._axis_index(fixed), self._slab_voxels(fixed), mode)
        h, v = plane_axes(name, self._mode)
        if v != "z":
            image = image.T  # a view: the renderer reads it once per paint anyway
        spacing = self._axis_spacing()
        pane.set_image(image, pixel_mm=(spacing[v], spacing[h]))
        self._apply_pane_window(name)
        if self._bounds_stale(name) or name not in self._ranged:
            self._apply_pane_lut(name)
        self._auto_range_once(name)
        self._refresh_annotations(name)

    def _refresh_all(self) -> None:
        if self._volume is None or not self._slices:
            self._update_overlay()
            return
        if self._needs_store():
            self._ensure_gathered()
        self._refresh_axial()
        for name in ("coronal", "sagittal"):
            self._refresh_plane(name)
        self._request_projection()
        self._refresh_annotations()
        self._update_overlay()

    def _slab_voxels(self, axis: str) -> int:
        """Slab thickness in voxels along axis "x", "y" or "z"; 1 without slabs."""
        if self._slab_mode is None:
            return 1
        return max(1, int(round(self._slab_mm / self._axis_spacing()[axis])))

    def _axis_spacing(self) -> dict[str, float]:
        dz, dy, dx = self._spacing()
        return {"x": dx, "y": dy, "z": dz}

    def _axis_index(self, axis: str) -> int:
        """The crosshair's voxel index along axis "x", "y" or "z"."""
        return {"x": self._cursor[0], "y": self._cursor[1], "z": max(self._index, 0)}[axis]

    def _auto_range_once(self, name: str) -> None:
        """Fit the image to the pane when it first shows and whenever its extent or its
        filled part changes (a scan growing: rows of slices not gathered yet are empty),
        until the analyst zooms or pans that pane."""
        pane = self.panes[name]
        if pane._rect is None or name in self._user_zoomed:
            return
        held = self._store.ordered(self._slices).held if self._store is not None else 0
        key = (pane._rect, held)
        if self._ranged.get(name) == key or (name == "projection" and name in self._ranged):
            return
        self._ranged[name] = key
        if name == "projection" and self._projector is not None:
            # One frame for every angle: the bag turns inside it instead of the view
            # jumping to each angle's width. Rows with content do not change with the
            # angle (the axis is vertical); the width is the farthest content corner.
            zyx = self._projector.zyx
            nz, ny, nx = zyx.shape
            dz, dy, dx = self._projector.spacing_zyx
            units = self._units()
            top, height = 0.0, ny * dy
            half = math.hypot(nx * dx, nz * dz) / 2
            if units in ("HU", "MHU"):
                dense = zyx > (100.0 if units == "MHU" else -900.0)  # (depth, vertical, x)
                rows = np.flatnonzero(dense.any(axis=(0, 2)))
                footprint = dense.any(axis=1)  # (z, x)
                zs, xs = np.nonzero(footprint)
                if rows.size:
                    top, height = rows[0] * dy, (rows[-1] + 1 - rows[0]) * dy
                    corners_x = (np.array([xs.min(), xs.max() + 1]) * dx) - nx * dx / 2
                    corners_z = (np.array([zs.min(), zs.max() + 1]) * dz) - nz * dz / 2
                    half = max(math.hypot(cx, cz) for cx in corners_x for cz in corners_z)
            pane.view.setRange(QRectF(-half, top, 2 * half, height), padding=0.04)
            self._ranged[name] = ()  # fitted once per series
            return
        self._fit(name)

    def _fit(self, name: str) -> None:
        """Zoom a pane to what was scanned: a bag fills a third of a 680 mm field of view,
        and an analyst should not have to zoom every bag by hand."""
        pane = self.panes[name]
        rect = self._content_rect(pane) if not self.planar and name != "projection" else None
        if rect is None:
            pane.view.autoRange(padding=0.02)
        else:
            pane.view.setRange(rect, padding=0.04)

    def _content_rect(self, pane: ViewPane) -> QRectF | None:
        """Bounding rectangle (view mm) of the pixels denser than air, from a sample."""
        image = pane.values
        units = self._units()
        if image is None or units not in ("HU", "MHU"):
            return None
        air = 100.0 if units == "MHU" else -900.0
        if pane.kind == "axial" and self._store is not None and self._store.held:
            # The whole scan's footprint, not the one slice that happened to show first.
            box = self._store.content_box(self._slices, air)
            if box is not None:
                r0, r1, c0, c1 = box
                ph, pw = pane.pixel_mm
                return QRectF(c0 * pw, r0 * ph, (c1 - c0) * pw, (r1 - r0) * ph)
        threshold = pane.fold(air)
        step = max(1, max(image.shape) // 256)
        sample = np.asarray(image[::step, ::step]) > threshold
        rows = np.flatnonzero(sample.any(axis=1))
        cols = np.flatnonzero(sample.any(axis=0))
        if rows.size == 0:
            return None
        ph, pw = pane.pixel_mm
        ox, oy = pane.origin
        r0, r1 = rows[0] * step, min(image.shape[0], (rows[-1] + 1) * step)
        c0, c1 = cols[0] * step, min(image.shape[1], (cols[-1] + 1) * step)
        return QRectF(ox + c0 * pw, oy + r0 * ph, (c1 - c0) * pw, (r1 - r0) * ph)

    def _units(self) -> str:
        vol = self._volume
        if vol is None:
            return ""
        return data_units(vol.rescale_type, vol.modality, self._mode)

    def _levels(self, name: str = "axial") -> tuple[float, float]:
        w = self._window or WindowPreset("", 0, 1)
        if name == "projection" and self._proj_window is not None:
            w = self._proj_window
        return w.center - w.width / 2, w.center + w.width / 2

    def _apply_pane_window(self, name: str) -> None:
        self.panes[name].set_window(*self._levels(name))

    def _apply_levels(self) -> None:
        for name in self.visible_panes:
            self._apply_pane_window(name)
        self._update_overlay()

    def _effective_colormap(self) -> str:
        if self._colormap is not None:
            if self._colormap == "material" and not self._material_possible():
                return "gray"
            return self._colormap
        vol = self._volume
        if self.planar and self._classes is not None:
            return "material"
        if vol is not None and vol.photometric_interpretation == "MONOCHROME1":
            return "inverse"
        if self._mode == "airport" and vol is not None and self._units() in ("MHU", "HU") and not self.planar:
            return "material"
        return "gray"

    def _material_possible(self) -> bool:
        if self.planar:
            return self._classes is not None
        return self._units() in ("HU", "MHU") or self._volume is None

    def _apply_lut(self) -> None:
        for name in _PANE_ORDER:
            self._apply_pane_lut(name)

    def _apply_pane_lut(self, name: str) -> None:
        pane = self.panes[name]
        cmap = self._effective_colormap()
        if name == "projection" and self._proj_mode == "avg" and cmap == "material":
            # A mean along the ray is no density; colour by the densest material the ray
            # met and take brightness from the mean, bright where little is in the way,
            # as a dual-energy radiograph looks to a screener.
            peak = self._projection.peak if self._projection is not None else None
            classes = material.classify_density(peak, self._units()) if peak is not None else None
            pane.item.set_lut(material_lut(inverted=True), class_image=classes)
            pane._lut_bounds_for = None  # type: ignore[attr-defined]
            return
        if cmap != "material":
            pane.item.set_lut(lut_for(cmap))
            pane._lut_bounds_for = None  # type: ignore[attr-defined]
            return
        if self.planar:
            pane.item.set_lut(material_lut(inverted=True), class_image=self._classes)
            pane._lut_bounds_for = None  # type: ignore[attr-defined]
            return
        bounds = tuple(pane.fold(b) for b in material.ct_bands(self._units()))
        pane.item.set_lut(material_lut(), class_bounds=bounds)
        pane._lut_bounds_for = (pane.slope, pane.intercept)  # type: ignore[attr-defined]

    def _bounds_stale(self, name: str) -> bool:
        """True when the material bounds were folded for another rescale than now."""
        pane = self.panes[name]
        folded_for = getattr(pane, "_lut_bounds_for", None)
        return folded_for is not None and folded_for != (pane.slope, pane.intercept)

    # -- layout ---------------------------------------------------------------------------

    def _arrange(self) -> None:
        """Put the visible panes in the grid; hide the others."""
        visible = self.visible_panes
        layout = "single" if self.planar else self._layout
        for pane in self.panes.values():
            self._grid.removeWidget(pane)
        for c in range(3):
            self._grid.setColumnStretch(c, 0)
        for r in range(2):
            self._grid.setRowStretch(r, 0)
        for name in visible:
            row, col = _GRID[layout][name]
            self._grid.addWidget(self.panes[name], row, col)
            self._grid.setColumnStretch(col, 1)
            self._grid.setRowStretch(row, 1)
        for name, pane in self.panes.items():  # after adding: reparenting hides a widget
            pane.setVisible(name in visible)
        multi = len(visible) > 1
        for name, pane in self.panes.items():
            pane.show_active = multi
            pane.active = name == self._active
            pane.update_overlay()

    def _set_active(self, name: str) -> None:
        if name == self._active or name not in self.visible_panes:
            return
        self._active = name
        for n, pane in self.panes.items():
            pane.active = n == name
            pane.update_overlay()

    # -- annotations ----------------------------------------------------------------------

    def _after_cursor_move(self, *, z_changed: bool) -> None:
        self._refresh_annotations()
        self._update_overlay()
        self.crosshairChanged.emit(self._cursor[0], self._cursor[1], max(self._index, 0))

    def _refresh_annotations(self, only: str | None = None) -> None:
        """Crosshair, threat outlines and measurements of the visible panes."""
        if self._volume is None or self._index < 0:
            return
        names = (only,) if only is not None else self.visible_panes
        spacing = self._axis_spacing()
        multi = len(self.visible_panes) > 1 and not self.planar
        for name in names:
            if name not in self.visible_panes:
                continue
            pane = self.panes[name]
            h, v = plane_axes(name, self._mode)
            if name == "projection":
                pane.crosshair = (None, None)
                if self._projector is not None and self._projection is not None:
                    depth, vertical = projection_axes(self._mode)
                    u = self._projector.u_of((self._cursor[0] + 0.5) * spacing["x"],
                                             (self._axis_index(depth) + 0.5) * spacing[depth],
                                             self._projection.angle_deg)
                    pane.crosshair = (float(u), (self._axis_index(vertical) + 0.5) * spacing[vertical])
            elif name == "axial" and not multi:
                pane.crosshair = (None, None)  # alone, the lines would only hide the image
            else:
                pane.crosshair = ((self._axis_index(h) + 0.5) * spacing[h], (self._axis_index(v) + 0.5) * spacing[v])
            pane.shapes = self._shapes_for(name) if self._threats_visible else []
            self._update_measure_overlay(name)
            pane.update_overlay()

    def _shapes_for(self, name: str) -> list[Shape]:
        spacing = self._axis_spacing()
        h, v = plane_axes(name, self._mode)
        shapes = []
        for box in [*self._threats, *([self._drawn] if self._drawn is not None else [])]:
            tag = "ATR" if box.source == "machine" else "OP"
            label = f"{tag} {box.label or box.flag.replace('_', ' ').title()}"
            if name == "projection":
                shape = self._projected_shape(box, label)
                if shape is not None:
                    shapes.append(shape)
                continue
            if not self.planar:
                fixed = _FIXED_AXIS[name]
                if not box.spans(AXES[fixed], self._axis_index(fixed)):
                    continue
            if box.polygon and not self.planar:
                points = [QPointF((p[AXES[h]] + 0.5) * spacing[h], (p[AXES[v]] + 0.5) * spacing[v])
                          for p in box.polygon]
                shapes.append(Shape(points, label, box.source, box.flag))
                continue
            h0, h1 = box.interval(AXES[h])
            v0, v1 = box.interval(AXES[v])
            shapes.append(Shape(_rect_points(h0 * spacing[h], v0 * spacing[v], h1 * spacing[h], v1 * spacing[v]),
                                label, box.source, box.flag))
        return shapes

    def _projected_shape(self, box: ThreatBox, label: str) -> Shape | None:
        if self._projector is None or self._projection is None:
            return None
        spacing = self._axis_spacing()
        depth, vertical = projection_axes(self._mode)
        x0, x1 = box.interval(AXES["x"])
        d0, d1 = box.interval(AXES[depth])
        v0, v1 = box.interval(AXES[vertical])
        xs = np.array([x0, x1, x0, x1]) * spacing["x"]
        ds = np.array([d0, d0, d1, d1]) * spacing[depth]
        u = self._projector.u_of(xs, ds, self._projection.angle_deg)
        return Shape(_rect_points(float(u.min()), v0 * spacing[vertical], float(u.max()), v1 * spacing[vertical]),
                     label, box.source, box.flag)

    def _update_measure_overlay(self, name: str) -> None:
        pane = self.panes[name]
        m = self._measure
        pane.ruler = None
        pane.roi = None
        if m is None or m["pane"] != name:
            return
        if m["kind"] == "ruler":
            pane.ruler = (m["p0"], m["p1"], f"{m['distance_mm']:.1f} mm")
            return
        stats = self._roi_stats(name, m["p0"], m["p1"])
        m.update(stats or {})
        if stats is None:
            text = "no pixels"
        else:
            u = self._units_label()
            text = (f"mean {stats['mean']:.1f}{u}  sd {stats['std']:.1f}\n"
                    f"min {stats['min']:.0f}  max {stats['max']:.0f}{u}\n"
                    f"area {stats['area_mm2']:.1f} mm²")
        pane.roi = (QRectF(m["p0"], m["p1"]).normalized(), text)

    def _roi_stats(self, name: str, p0: QPointF, p1: QPointF) -> dict[str, float] | None:
        pane = self.panes[name]
        image = pane.modality_image()
        if image is None:
            return None
        ox, oy = pane.origin
        ph, pw = pane.pixel_mm
        # Pixels whose centre lies inside the rectangle.
        c0 = math.ceil((min(p0.x(), p1.x()) - ox) / pw - 0.5)
        c1 = math.floor((max(p0.x(), p1.x()) - ox) / pw - 0.5) + 1
        r0 = math.ceil((min(p0.y(), p1.y()) - oy) / ph - 0.5)
        r1 = math.floor((max(p0.y(), p1.y()) - oy) / ph - 0.5) + 1
        stats = roi_stats(image, (r0, r1), (c0, c1), (ph, pw))
        if stats is None:
            return None
        return {"mean": stats.mean, "std": stats.std, "min": stats.min, "max": stats.max,
                "area_mm2": stats.area_mm2, "pixels": stats.pixels}

    def _units_label(self) -> str:
        units = self._units()
        return f" {units}" if units else ""

    def _update_overlay(self) -> None:
        vol = self._volume
        text = ViewPane.TEXT
        axial = self._graphics
        if vol is None or self._index < 0:
            if vol is None:
                placeholder = self._empty_message or "No scan open"
            elif self._errors:
                placeholder = self._errors[-1]
            else:
                placeholder = "Reading…" if self._submitted else "Waiting for images…"
            axial.set_overlay({"tl": self._label, "tr": "", "bl": "", "br": ""}, placeholder=placeholder)
            for name in ("coronal", "sagittal", "projection"):
                self.panes[name].set_overlay({"tl": PANE_TITLES[name]}, placeholder="")
            return
        units = self._units_label()
        visible = self.visible_panes
        multi = len(visible) > 1
        receiving = time.monotonic() - self._last_add < RECEIVING_S
        dz, dy, dx = self._spacing()
        n = len(self._slices)
        tr = [f"{vol.modality or '?'}  {vol.shape[2]}×{vol.shape[1]}"]
        if receiving:
            tr.append("receiving…")
        if self._status:
            tr.append(self._status)
        if self._loading:
            tr.append("this slice is loading…")
        if self._errors:
            tr.append(f"{len(self._errors)} file(s) unreadable")
        if not self._threats_visible and self._threats:
            tr.append(f"{len(self._threats)} threat box(es) hidden (T)")
        if self._tool is not None:
            tr.append({"ruler": "Ruler: drag to measure", "roi": "Region: drag a rectangle",
                       "mark": "Mark: drag a box (another plane: depth)"}[self._tool])
        w = self._window
        cmap = COLORMAP_TITLES[self._effective_colormap()]
        wl = (f"{w.name} · W {w.width:.0f}  L {w.center:.0f}{units}" if w and w.name not in ("Custom", "Series", "Auto")
              else f"W {w.width:.0f}  L {w.center:.0f}{units}" if w else "")
        if self._effective_colormap() == "inverse":
            wl += "  inverted"
        slab = ""
        if self._slab_mode is not None and not self.planar:
            slab = f"  {SLAB_TITLES[self._slab_mode]} slab {self._slab_mm:g} mm"
        proj = vol.positions_along_normal_mm
        positioned = self._current is not None and self._current.position_mm is not None
        where = f"   {proj[self._index]:.1f} mm" if positioned and self._index < len(proj) else ""
        noun = "Image" if self.planar else "Slice"
        hover = {name: (self._hover if self._hover_pane == name else "") for name in _PANE_ORDER}
        axial_title = self._label if not multi else "\n".join(t for t in (self._label, "Axial") if t)
        corners = {
            "tl": axial_title,
            "tr": "\n".join(tr),
            "bl": f"{noun} {self._index + 1} / {n}{where}{slab}",
            "br": "\n".join(t for t in (hover["axial"], f"{wl}  ·  {cmap}" if wl else cmap) if t),
        }
        colors = dict.fromkeys(corners, text)
        if receiving or self._status_alert:
            colors["tr"] = ViewPane.ALERT  # amber while the scanner sends: not a whole scan yet
        axial.set_overlay(corners, colors, "")
        axial.set_help(_HELP if self._help else ())
        i, j = self._cursor
        for name in ("coronal", "sagittal"):
            if name not in visible:
                continue
            pane = self.panes[name]
            if name == "coronal":
                where = f"Row {j + 1} / {vol.shape[1]}   y {j * dy:.1f} mm"
            else:
                where = f"Column {i + 1} / {vol.shape[2]}   x {i * dx:.1f} mm"
            placeholder = "" if pane.has_image() else "Preparing…"
            budget = ""
            if self._store is not None and self._store.over_budget:
                held = self._store.ordered(self._slices).held
                budget = f"memory budget: {held} of {len(self._slices)} slices"
            pane.set_overlay({"tl": PANE_TITLES[name], "tr": budget, "bl": where + slab, "br": hover[name]},
                             placeholder=placeholder)
        if "projection" in visible:
            pane = self.panes["projection"]
            mode = SLAB_TITLES[self._proj_mode]
            shown = self._projection
            behind = shown is not None and (abs(shown.angle_deg - self._proj_angle) > 1e-6 or shown.mode != self._proj_mode)
            pw = self._proj_window
            wl_proj = f"\n{pw.name + ' · ' if pw.name in PRESET_NAMES else ''}W {pw.width:.0f}  L {pw.center:.0f}{units}" if pw else ""
            pane.set_overlay({
                "tl": f"Projection · {mode}",
                "tr": "turning…" if behind else "",
                "bl": f"{self._proj_angle:.0f}°   , . or drag to turn",
                "br": hover["projection"] + wl_proj,
            }, placeholder="" if pane.has_image() else "Preparing…")

    # -- input ----------------------------------------------------------------------------

    def set_keymap(self, keys: Mapping[str, list[str]]) -> None:
        """Which keys trigger which viewer action (a Keymap's ``keys``: "viewer.fit" ->
        ["R"]); the main window passes the analyst's keymap, a viewer on its own uses
        the default file."""
        self._bindings = KeyBindings(dict(keys))

    def keyPressEvent(self, event: QKeyEvent) -> None:  # noqa: N802
        if self._bindings is None:
            self.set_keymap(Keymap.load().keys)
        action = self._bindings.action_for(event)
        has_image = self._graphics.has_image() and self._volume is not None
        if action is None or (action.needs_image and not has_image):
            super().keyPressEvent(event)
            return
        action.handler(self, self._active if self._active in self.visible_panes else "axial")
        event.accept()

    def _plane_count(self, pane: str) -> int:
        z, rows, cols = self._shape()
        return {"axial": z, "coronal": rows, "sagittal": cols}.get(pane, 36)

    def _scroll_pane(self, pane: str, steps: int, *, page: bool = False) -> None:
        if pane == "axial":
            self.scroll(steps)
        elif pane == "coronal":
            self.set_crosshair(y=self._cursor[1] + steps)
        elif pane == "sagittal":
            self.set_crosshair(x=self._cursor[0] + steps)
        elif pane == "projection":
            step = 45.0 if page else ROTATE_STEP_DEG
            self.set_projection(self._proj_angle + (1 if steps > 0 else -1) * step)

    def _jump_pane(self, pane: str, end: bool) -> None:
        last = self._plane_count(pane) - 1
        if pane == "axial":
            self.set_index(last if end else 0)
        elif pane == "coronal":
            self.set_crosshair(y=last if end else 0)
        elif pane == "sagittal":
            self.set_crosshair(x=last if end else 0)
        elif pane == "projection":
            self.set_projection(90.0 if end else 0.0)

    def _apply_preset(self, number: int, *, projection: bool = False) -> None:
        """Key 1-6: the series window or a preset, for the slices or (when the projection
        pane is active) for the projection."""
        vol = self._volume
        assert vol is not None
        if number == 0:
            if projection and self._projection is not None:
                self._proj_window = self._initial_projection_window(self._projection)
                self._apply_levels()
                return
            preset = default_window(vol, self._mode, self._graphics.modality_image())
        else:
            presets = window_presets(self._mode, vol.rescale_type, planar=self.planar, modality=vol.modality)
            if not presets:
                return
            preset = presets[min(number - 1, len(presets) - 1)]
        if projection:
            self._proj_window = preset
        else:
            self._window = preset
        self._apply_levels()

    def _cycle_colormap(self) -> None:
        names = [c for c in COLORMAPS if c != "material" or self._material_possible()]
        current = self._effective_colormap()
        self.set_colormap(names[(names.index(current) + 1) % len(names)] if current in names else names[0])

    def _step_slab(self, direction: int) -> None:
        steps = SLAB_STEPS_MM
        if direction > 0:
            bigger = [s for s in steps if s > self._slab_mm + 1e-6]
            thickness = bigger[0] if bigger else steps[-1]
        else:
            smaller = [s for s in steps if s < self._slab_mm - 1e-6]
            thickness = smaller[-1] if smaller else steps[0]
        self.set_slab(self._slab_mode or "mip", thickness)

    def wheelEvent(self, event: QWheelEvent) -> None:  # noqa: N802
        # Wheel over the slider or the margins scrolls the axial slices too.
        steps = int(event.angleDelta().y() / 120)
        if steps:
            self.userInteracted.emit()
            self.scroll(-steps)
        event.accept()

    def _on_wheel_steps(self, pane: str, steps: int) -> None:
        self.userInteracted.emit()
        self._set_active(pane)
        self._scroll_pane(pane, steps)

    def _on_user_interacted(self) -> None:
        self._track_middle = False

    def _on_slider(self, value: int) -> None:
        self.userInteracted.emit()
        self.set_index(value)

    def _on_zoomed(self, pane: str, *_args) -> None:
        self._user_zoomed.add(pane)
        self.userInteracted.emit()

    def _on_window_drag(self, pane: str, dx: float, dy: float) -> None:
        avg_projection = pane == "projection"
        current = self._proj_window if avg_projection else self._window
        if current is None:
            return
        self.userInteracted.emit()
        # Proportional steps: fine control on a narrow window, quick on a wide one.
        step = max(current.width, 10.0) / 300.0
        changed = WindowPreset("Custom", current.center - dy * step, max(1.0, current.width + dx * step))
        if avg_projection:
            self._proj_window = changed
        else:
            self._window = changed
        self._apply_levels()

    def _voxel_at(self, pane: str, point: QPointF) -> tuple[int | None, int | None, int | None]:
        """(x, y, z) voxel indices a view point in `pane` determines (None: not fixed)."""
        spacing = self._axis_spacing()
        h, v = plane_axes(pane, self._mode)
        found: dict[str, int] = {}
        if h != "u":
            found[h] = math.floor(point.x() / spacing[h])
        found[v] = math.floor(point.y() / spacing[v])
        return found.get("x"), found.get("y"), found.get("z")

    def _on_left_click(self, pane: str, point: QPointF) -> None:
        self._set_active(pane)
        self.setFocus(Qt.FocusReason.MouseFocusReason)
        if self._tool is not None or self.planar or pane == "projection" or self._volume is None:
            return
        self.userInteracted.emit()
        x, y, z = self._voxel_at(pane, point)
        self.set_crosshair(x, y, z)

    def _on_left_drag(self, pane: str, start: QPointF, pos: QPointF, phase: int) -> None:
        if self._volume is None or not self.panes[pane].has_image():
            return
        self._set_active(pane)
        self.userInteracted.emit()
        if self._tool == "ruler":
            self._measure = {"pane": pane, "kind": "ruler", "p0": start, "p1": pos,
                             "distance_mm": distance_mm((start.x(), start.y()), (pos.x(), pos.y()))}
            self._refresh_annotations(pane)
        elif self._tool == "roi":
            self._measure = {"pane": pane, "kind": "roi", "p0": start, "p1": pos}
            self._refresh_annotations(pane)
        elif self._tool == "mark" and pane != "projection":
            self._mark(pane, start, pos)
        elif pane == "projection":
            if phase == 0:
                self._drag_origin = (start.x(), self._proj_angle)
            origin_x, origin_angle = getattr(self, "_drag_origin", (start.x(), self._proj_angle))
            pane_obj = self.panes[pane]
            # Turn by screen pixels, not mm, so the speed does not depend on the zoom.
            t = pane_obj.view_to_device()
            pixels = t.map(pos).x() - t.map(QPointF(origin_x, pos.y())).x()
            self.set_projection(origin_angle + pixels * ROTATE_DRAG_DEG_PER_PX)
        elif not self.planar:
            x, y, z = self._voxel_at(pane, pos)
            self.set_crosshair(x, y, z)

    def _mark(self, pane: str, start: QPointF, pos: QPointF) -> None:
        """Drag of the "mark" tool: the rectangle sets the box along the pane's two axes
        (whole voxels, inside the volume); along the third the box keeps what an earlier
        drag in another plane gave it, else the slice on screen."""
        nz, rows, cols = self._shape()
        size = {"x": cols, "y": rows, "z": nz}
        a, b = self._voxel_at(pane, start), self._voxel_at(pane, pos)
        old = self._drawn
        base, extent = [0.0, 0.0, 0.0], [1.0, 1.0, 1.0]
        for axis in ("x", "y", "z"):
            i = AXES[axis]
            if a[i] is not None and b[i] is not None:
                lo = max(0, min(a[i], b[i]))
                hi = min(size[axis] - 1, max(a[i], b[i]))
                base[i], extent[i] = float(lo), float(max(hi - lo + 1, 1))
            elif old is not None:
                base[i], extent[i] = old.base[i], old.extent[i]
            else:
                base[i] = float(0 if self.planar and axis == "z" else self._axis_index(axis))
        self._drawn = ThreatBox(base=tuple(base), extent=tuple(extent), label="Marked",  # type: ignore[arg-type]
                                source="operator", flag="THREAT")
        self._refresh_annotations()
        self._update_overlay()

    def _on_mouse_moved(self, pane: str, scene_pos: QPointF) -> None:
        p = self.panes[pane]
        if not p.has_image() or self._volume is None:
            return
        self._set_active(pane)
        point = p.view.mapSceneToView(scene_pos)
        pixel = p.pixel_at(point)
        if pixel is None:
            text = ""
        else:
            row, col = pixel
            value = p.value_at(row, col)
            text = f"{self._position_text(pane, row, col)}   {value:.0f}{self._units_label()}"
        if text != self._hover or pane != self._hover_pane:
            self._hover, self._hover_pane = text, pane
            self._update_overlay()

    def _position_text(self, pane: str, row: int, col: int) -> str:
        """Where a pixel lies: patient/scanner coordinates in mm when the series has
        positions, else the pixel's column and row."""
        vol = self._volume
        assert vol is not None
        if pane == "projection":
            vertical = projection_axes(self._mode)[1]
            return f"{vertical} {(row + 0.5) * self._projection.row_mm:.1f} mm" if self._projection else ""
        if self.planar:
            return f"({col}, {row})"
        h, v = plane_axes(pane, self._mode)
        index = {"x": self._cursor[0], "y": self._cursor[1], "z": self._index, h: col, v: row}
        x, y, k = index["x"], index["y"], index["z"]
        if not 0 <= k < len(self._slices) or self._slices[k].position_mm is None:
            return f"({x}, {y}, {k})"
        spacing = self._axis_spacing()
        direction = vol.direction
        p = np.asarray(self._slices[k].position_mm) + x * spacing["x"] * direction[0] + y * spacing["y"] * direction[1]
        return f"x {p[0]:.1f}  y {p[1]:.1f}  z {p[2]:.1f} mm"

    def focusInEvent(self, event) -> None:  # noqa: N802
        self._show_focus(True)
        super().focusInEvent(event)

    def focusOutEvent(self, event) -> None:  # noqa: N802
        self._show_focus(False)
        super().focusOutEvent(event)

    def _show_focus(self, focused: bool) -> None:
        # Keyboard users must see whether the keys go to the list or to the image.
        for pane in self.panes.values():
            pane.setProperty("focused", focused)
            style = pane.style()
            style.unpolish(pane)
            style.polish(pane)

    def closeEvent(self, event) -> None:  # noqa: N802
        self.shutdown()
        super().closeEvent(event)


def _rect_points(h0: float, v0: float, h1: float, v1: float) -> list[QPointF]:
    return [QPointF(h0, v0), QPointF(h1, v0), QPointF(h1, v1), QPointF(h0, v1)]


__all__ = [
    "AIRPORT_PRESETS_MHU",
    "BACKGROUND",
    "CLINIC_PRESETS_HU",
    "LAYOUTS",
    "SliceViewer",
    "WindowPreset",
    "auto_window",
    "data_units",
    "default_window",
    "window_presets",
]
