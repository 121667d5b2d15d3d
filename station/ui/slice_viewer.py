"""The axial slice viewer: one slice of a (possibly still arriving) series at a time.

Built on a bare pyqtgraph ``ImageItem`` in a ``ViewBox`` with fixed levels, not on
``ImageView``: ImageView recomputes histograms and levels on every slice change and is
several times slower (see PERFORMANCE.md). Header reads for arriving files run on the
viewer's own one-thread ``QThreadPool`` (one thread keeps the volume's single-writer
rule and the arrival order); the volume is safe for one writer and many readers
(``station.core.volume.SeriesVolume``), and results come back to the GUI thread by a
queued signal. The first slice shows as soon as its header is read, and the slice on
screen stays the same slice when earlier slices arrive later.

Controls: wheel, Up/Down, PageUp/PageDown, Home/End scroll; Ctrl+wheel zooms; left drag
pans; right drag changes window (horizontal: width, vertical: level); 1-5 window
presets; A auto window; I inverts; R resets the zoom.
"""

from __future__ import annotations

import functools
import logging
import math
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import QObject, QPointF, QRectF, Qt, QThreadPool, QTimer, Signal
from PySide6.QtGui import QColor, QFont, QImage, QKeyEvent, QPainter, QWheelEvent
from PySide6.QtWidgets import QSizePolicy, QSlider, QVBoxLayout, QWidget

from station.core.volume import SeriesVolume, SliceInfo, VolumeError

LOGGER = logging.getLogger(__name__)

#: Seconds after the last ``add_paths`` during which the overlay says "receiving…".
RECEIVING_S = 3.0

#: How often the header worker reports progress while working through a long batch; the
#: first file is always reported at once so the first slice shows without delay.
PROGRESS_INTERVAL_S = 0.05

BACKGROUND = "#202327"  # dark gray, not black: black next to bright UI tires the eye


@dataclass(frozen=True)
class WindowPreset:
    name: str
    center: float
    width: float


def window_presets(mode: str, rescale_type: str) -> list[WindowPreset]:
    """Named (center, width) presets for keys 2-5 (key 1 is the series' own default).

    Airport CT covers everything from air to dense metal, so its main preset is the full
    range; MHU (DICOS modified Hounsfield units) puts air at 0 instead of -1000. Clinic
    presets are the usual radiology ones.
    """
    if mode == "airport":
        offset = 1000.0 if rescale_type == "MHU" else 0.0
        return [
            WindowPreset("Full range", 1000 + offset, 4000),
            WindowPreset("Organic", 100 + offset, 1200),
            WindowPreset("Dense", 1500 + offset, 3000),
            WindowPreset("Wide", 4000 + offset, 10000),
        ]
    return [
        WindowPreset("Soft tissue", 40, 400),
        WindowPreset("Lung", -600, 1500),
        WindowPreset("Bone", 400, 1800),
        WindowPreset("Brain", 40, 80),
    ]


def default_window(volume: SeriesVolume, mode: str, first_slice: np.ndarray | None) -> WindowPreset:
    """The window a series opens with: its own VOI window, else a preset for CT in this
    mode, else (DX, MR, unknown units) the 0.5-99.5 percentile range of the first slice."""
    own = volume.default_window
    if own is not None:
        return WindowPreset("Default", own[0], own[1])
    if volume.modality == "CT" or volume.rescale_type in ("HU", "MHU"):
        return window_presets(mode, volume.rescale_type)[0]
    return auto_window(first_slice)


def auto_window(image: np.ndarray | None) -> WindowPreset:
    """A window spanning the robust value range of `image`."""
    if image is None or image.size == 0:
        return WindowPreset("Auto", 0.0, 1.0)
    sample = image[:: max(1, image.shape[0] // 128), :: max(1, image.shape[1] // 128)]
    lo, hi = (float(v) for v in np.nanpercentile(sample, (0.5, 99.5)))
    if not math.isfinite(lo) or not math.isfinite(hi) or hi <= lo:
        lo, hi = float(np.nanmin(image)), float(np.nanmax(image)) + 1.0
    return WindowPreset("Auto", (lo + hi) / 2, hi - lo)


class _Generation:
    """The newest job generation, shared by the viewer (writes it, GUI thread) and its jobs
    (read it, pool thread). A job of an older generation (the viewer switched series or
    shut down) stops at its next file. A plain object, so it may outlive the viewer."""

    def __init__(self) -> None:
        self.value = 0


class _ProgressEmitter(QObject):
    """Carries job results to the GUI thread. It lives there (the viewer creates it) and is
    emitted from the pool thread, so delivery is queued. Separate from the viewer so that
    a job finishing while the viewer is being destroyed still emits on a live object."""

    progress = Signal(int, int, int, list)  # generation, files done, slices added, errors


def _read_headers(generation: int, current: _Generation, volume: SeriesVolume, paths: list[Path],
                  emitter: _ProgressEmitter) -> None:
    """Pool thread: add `paths` to `volume`; report the first slice at once, then every
    PROGRESS_INTERVAL_S, so the first image shows while a long batch is still read."""
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


_GRAY = np.arange(256, dtype=np.uint32) * 0x010101 | np.uint32(0xFF000000)


class _WindowedImageItem(pg.ImageItem):
    """An ImageItem that windows a float slice straight into an RGB32 QImage.

    pyqtgraph renders a grayscale slice as a Grayscale8/Indexed8 QImage, which Qt converts
    to RGB on every paint; drawing an RGB32 image scaled is about three times faster
    (measured 0.4 ms against 1.3 ms for 512x512 drawn at 880x880), and painting is most of
    the cost of a slice change. Levels come from ``setLevels``/``setImage(levels=...)`` as
    usual; ``set_inverted`` replaces pyqtgraph's lookup table.
    """

    def __init__(self) -> None:
        super().__init__(axisOrder="row-major")
        self._lut32 = _GRAY
        self._scratch: np.ndarray | None = None
        self._argb: np.ndarray | None = None

    def set_inverted(self, inverted: bool) -> None:
        self._lut32 = _GRAY[::-1].copy() if inverted else _GRAY
        self._renderRequired = True
        self.update()

    def render(self) -> None:  # overrides pyqtgraph; called from paint() on the GUI thread
        image, levels = self.image, self.levels
        if image is None or image.ndim != 2 or image.size == 0 or levels is None or np.ndim(levels) != 1:
            super().render()  # anything unusual: pyqtgraph's general path
            return
        lo, hi = float(levels[0]), float(levels[1])
        scale = 255.0 / (hi - lo) if hi != lo else 0.0
        if self._scratch is None or self._scratch.shape != image.shape:
            self._scratch = np.empty(image.shape, dtype=np.float32)
        buf = self._scratch
        np.multiply(image, np.float32(scale), out=buf, casting="unsafe")
        np.add(buf, np.float32(-lo * scale), out=buf)
        # fmax/fmin rather than clip: they also turn NaN (float pixel data) into 0.
        np.fmax(buf, 0, out=buf)
        np.fmin(buf, 255, out=buf)
        argb = np.take(self._lut32, buf.astype(np.uint8))  # take() beats fancy indexing 2x
        self._argb = argb  # the QImage borrows this buffer: keep it alive with the image
        h, w = argb.shape
        self.qimage = QImage(argb.data, w, h, w * 4, QImage.Format.Format_RGB32)
        self._renderRequired = False
        self._unrenderable = False


class _SliceViewBox(pg.ViewBox):
    """A ViewBox where the wheel scrolls slices (Ctrl+wheel zooms) and right drag windows."""

    sigSliceWheel = Signal(int)  # +n: n slices further along the normal
    sigWindowDrag = Signal(float, float)  # screen pixels dx, dy

    def __init__(self) -> None:
        super().__init__(lockAspect=True, invertY=True, enableMenu=False)
        self._wheel_rest = 0

    def wheelEvent(self, ev, axis=None):  # noqa: N802 (Qt naming)
        if ev.modifiers() & Qt.KeyboardModifier.ControlModifier:
            super().wheelEvent(ev, axis)
            return
        # High-resolution wheels and touchpads send fractions of a 120-unit notch.
        self._wheel_rest += ev.delta()
        steps = int(self._wheel_rest / 120)
        if steps:
            self._wheel_rest -= steps * 120
            self.sigSliceWheel.emit(-steps)  # wheel away from the user: towards the start
        ev.accept()

    def mouseDragEvent(self, ev, axis=None):  # noqa: N802
        if ev.button() == Qt.MouseButton.RightButton:
            ev.accept()
            delta = ev.screenPos() - ev.lastScreenPos()
            self.sigWindowDrag.emit(delta.x(), delta.y())
            return
        super().mouseDragEvent(ev, axis)


class _Canvas(pg.GraphicsLayoutWidget):
    """The graphics view, plus corner annotations painted in its foreground.

    Painting the text here costs one ``drawText`` per line inside the repaint the image
    change causes anyway. Transparent QLabels on top of the view were measured to cut the
    slice rate by a third: each one is a separate, style-sheeted widget repaint.
    """

    _ALIGN = {
        "tl": Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignTop,
        "tr": Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignTop,
        "bl": Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignBottom,
        "br": Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignBottom,
    }
    TEXT = QColor("#e2e6ea")
    ALERT = QColor("#f0b429")  # amber: still receiving
    MUTED = QColor("#7f8690")
    SHADOW = QColor(0, 0, 0, 170)  # keeps text legible over bright metal

    def __init__(self) -> None:
        super().__init__()
        self.corners: dict[str, str] = dict.fromkeys(self._ALIGN, "")
        self.colors: dict[str, QColor] = dict.fromkeys(self._ALIGN, self.TEXT)
        self.placeholder = ""
        self._overlay_font = QFont(self.font())
        self._overlay_font.setPointSizeF(max(10.5, self._overlay_font.pointSizeF()))
        self._placeholder_font = QFont(self.font())
        self._placeholder_font.setPointSizeF(14.0)

    def set_overlay(self, corners: dict[str, str], colors: dict[str, QColor], placeholder: str) -> None:
        """Replace the annotations; repaints only when something changed. GUI thread."""
        if corners == self.corners and colors == self.colors and placeholder == self.placeholder:
            return
        self.corners, self.colors, self.placeholder = dict(corners), dict(colors), placeholder
        self.viewport().update()

    def drawForeground(self, painter: QPainter, rect: QRectF) -> None:  # noqa: N802 (Qt API)
        super().drawForeground(painter, rect)
        painter.save()
        painter.resetTransform()  # viewport pixels, whatever the zoom
        area = QRectF(self.viewport().rect()).adjusted(10, 8, -10, -8)
        if self.placeholder:
            painter.setFont(self._placeholder_font)
            painter.setPen(self.MUTED)
            painter.drawText(area, int(Qt.AlignmentFlag.AlignCenter | Qt.TextFlag.TextWordWrap), self.placeholder)
        painter.setFont(self._overlay_font)
        for name, text in self.corners.items():
            if not text:
                continue
            flags = int(self._ALIGN[name])
            painter.setPen(self.SHADOW)
            painter.drawText(area.translated(1, 1), flags, text)
            painter.setPen(self.colors[name])
            painter.drawText(area, flags, text)
        painter.restore()


class SliceViewer(QWidget):
    """Axial slice viewer for one series at a time. GUI thread only (its worker is private).

    Signals: ``sliceChanged(int)`` after the shown slice changed, ``volumeGrew(int)``
    with the new slice count, ``userInteracted()`` whenever the user scrolls, windows or
    zooms (the main window uses it to avoid switching scans under the user's hands).
    """

    sliceChanged = Signal(int)
    volumeGrew = Signal(int)
    userInteracted = Signal()

    def __init__(self, mode: str = "airport", parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("SliceViewer")
        self.setFocusPolicy(Qt.FocusPolicy.StrongFocus)
        self._mode = mode
        self._volume: SeriesVolume | None = None
        self._series_uid: str | None = None
        self._generation = 0
        self._submitted: set[str] = set()
        self._files_done = 0
        self._index = -1
        self._track_middle = True
        self.userInteracted.connect(self._on_user_interacted)
        self._current: SliceInfo | None = None
        self._image: np.ndarray | None = None
        self._window: WindowPreset | None = None
        self._inverted = False
        self._label = ""
        self._last_add = float("-inf")
        self._errors: list[str] = []
        self._current_generation = _Generation()
        # One thread: SeriesVolume takes one writer, and files go in as they arrived.
        # Idle threads exit at once, so a quiet viewer holds no thread at all.
        self._pool = QThreadPool(self)
        self._pool.setMaxThreadCount(1)
        self._pool.setExpiryTimeout(0)
        self._emitter = _ProgressEmitter()
        self._emitter.progress.connect(self._on_progress, Qt.ConnectionType.QueuedConnection)
        #: (seconds from set_series to the first slice on screen); for the benchmark.
        self.first_slice_latency_s: float | None = None
        self._opened_at = 0.0

        self._graphics = _Canvas()
        self._graphics.setObjectName("SliceCanvas")
        self._graphics.setBackground(BACKGROUND)
        self._graphics.setFocusPolicy(Qt.FocusPolicy.NoFocus)
        self._graphics.ci.setContentsMargins(0, 0, 0, 0)
        self._graphics.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Expanding)
        self._view = _SliceViewBox()
        self._graphics.addItem(self._view)
        self._item = _WindowedImageItem()
        self._view.addItem(self._item)
        self._view.sigSliceWheel.connect(self._on_wheel_steps)
        self._view.sigWindowDrag.connect(self._on_window_drag)
        self._view.sigRangeChangedManually.connect(self._on_zoomed)
        self._graphics.scene().sigMouseMoved.connect(self._on_mouse_moved)

        self._slider = QSlider(Qt.Orientation.Horizontal)
        self._slider.setObjectName("SliceSlider")
        self._slider.setFocusPolicy(Qt.FocusPolicy.NoFocus)  # Tab: list <-> viewer only
        self._slider.setRange(0, 0)
        self._slider.setEnabled(False)
        self._slider.valueChanged.connect(self._on_slider)

        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(4)
        layout.addWidget(self._graphics, 1)
        layout.addWidget(self._slider)

        self._hover = ""

        self._receiving_timer = QTimer(self)
        self._receiving_timer.setSingleShot(True)
        self._receiving_timer.timeout.connect(self._update_overlay)
        self._update_overlay()

    # -- public API -------------------------------------------------------------------------

    @property
    def volume(self) -> SeriesVolume | None:
        """The open series' volume (None before the first ``set_series``)."""
        return self._volume

    @property
    def current_index(self) -> int:
        """Index of the shown slice in geometric order, -1 when nothing is shown."""
        return self._index

    @property
    def current_slice(self) -> SliceInfo | None:
        """The slice on screen (file, frame, position), None when nothing is shown."""
        return self._current

    @property
    def series_uid(self) -> str | None:
        return self._series_uid

    @property
    def window(self) -> tuple[float, float] | None:
        """(center, width) in modality units, or None before the first slice."""
        return (self._window.center, self._window.width) if self._window else None

    @property
    def image_item(self) -> pg.ImageItem:
        return self._item

    @property
    def view_box(self) -> pg.ViewBox:
        return self._view

    @property
    def errors(self) -> list[str]:
        """Files of the open series the viewer could not use (one message each)."""
        return list(self._errors)

    def set_mode(self, mode: str) -> None:
        self._mode = mode

    def set_series(self, series_uid: str | None, paths: Iterable[str | Path], *, label: str = "") -> None:
        """Open a series (replacing the current one) and start reading its headers.

        Returns at once; slices appear as the worker reads headers. `label` is the text of
        the top-left corner (ID and description).
        """
        self._bump_generation()
        self._volume = SeriesVolume(series_uid)
        self._series_uid = series_uid
        self._track_middle = True
        self._submitted = set()
        self._files_done = 0
        self._index = -1
        self._current = None
        self._image = None
        self._window = None
        self._errors = []
        self._label = label
        self._hover = ""
        self._last_add = float("-inf")
        self._opened_at = time.perf_counter()
        self.first_slice_latency_s = None
        self._item.clear()
        self._slider.blockSignals(True)
        self._slider.setRange(0, 0)
        self._slider.blockSignals(False)
        self._slider.setEnabled(False)
        self._submit(paths, receiving=False)
        self._update_overlay()

    def add_paths(self, paths: Iterable[str | Path]) -> None:
        """Grow the open series with newly arrived files (duplicates are ignored)."""
        if self._volume is None:
            return
        self._submit(paths, receiving=True)

    def clear(self) -> None:
        """Show nothing (no series open)."""
        self._bump_generation()
        self._volume = None
        self._series_uid = None
        self._index = -1
        self._current = None
        self._image = None
        self._item.clear()
        self._slider.setRange(0, 0)
        self._slider.setEnabled(False)
        self._label = ""
        self._update_overlay()

    def set_index(self, k: int) -> None:
        """Show slice `k` (clamped to the volume)."""
        vol = self._volume
        if vol is None or vol.n_slices == 0:
            return
        slices = vol.slices
        k = max(0, min(int(k), len(slices) - 1))
        if k == self._index and self._image is not None:
            return
        self._show(k, slices[k])

    def scroll(self, delta: int) -> None:
        """Move `delta` slices along the normal from the slice on screen."""
        vol, current = self._volume, self._current
        if vol is None or current is None:
            return
        # Slices may have been inserted since the last progress report: count from where
        # the shown slice is now, not from its older index.
        self.set_index(self._find(vol.slices, current, self._index) + delta)

    def set_window(self, center: float, width: float) -> None:
        """Set the display window in modality units (HU, MHU...)."""
        self._window = WindowPreset("Custom", float(center), max(1e-3, float(width)))
        self._apply_levels()

    def shutdown(self) -> None:
        """Cancel header reading and wait for the pool to be idle. Safe to call twice; the
        viewer keeps working if it is used again."""
        self._bump_generation()
        self._pool.clear()  # jobs not started yet
        if not self._pool.waitForDone(5000):
            LOGGER.error("slice viewer header reading did not stop within 5 s")

    def is_busy(self) -> bool:
        """True while submitted files still wait for their header to be read."""
        return self._volume is not None and self._files_done < len(self._submitted)

    # -- worker -------------------------------------------------------------------------

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
        """Queued slot, GUI thread: the worker read `files_done` more headers."""
        if generation != self._generation or self._volume is None:
            return  # a report about a series no longer shown
        self._files_done += files_done
        self._errors.extend(errors)
        vol = self._volume
        slices = vol.slices
        if not slices:
            self._update_overlay()
            return
        middle = len(slices) // 2
        if self._current is None:
            # The first slice(s) show at once, at the middle of what has arrived.
            self._show(middle, slices[middle])
            self.first_slice_latency_s = time.perf_counter() - self._opened_at
            self._view.autoRange(padding=0.02)
        elif self._track_middle and slices[middle] is not self._current:
            # Untouched since it opened: stay at the middle of the growing scan, so the
            # analyst sees the bag rather than the empty belt at its first slice. Once
            # they scroll, zoom or window, arrivals never move the view again.
            self._show(middle, slices[middle])
        else:
            self._index = self._find(slices, self._current, self._index)
        self._slider.blockSignals(True)
        self._slider.setRange(0, len(slices) - 1)
        self._slider.setValue(self._index)
        self._slider.blockSignals(False)
        self._slider.setEnabled(len(slices) > 1)
        self._update_overlay()
        self.volumeGrew.emit(len(slices))

    @staticmethod
    def _find(slices: list[SliceInfo], target: SliceInfo, guess: int) -> int:
        """Where `target` is in `slices`; trying near `guess` first avoids a full scan."""
        for i in (guess, guess + 1, guess - 1):
            if 0 <= i < len(slices) and slices[i] is target:
                return i
        try:
            return slices.index(target)
        except ValueError:  # cannot happen: volumes only grow
            return max(0, min(guess, len(slices) - 1))

    # -- display ------------------------------------------------------------------------

    def _show(self, k: int, info: SliceInfo) -> None:
        vol = self._volume
        assert vol is not None
        try:
            # The worker may insert slices between taking `info` and reading pixels, so
            # check that index k still is `info` afterwards (indices only ever grow).
            for _attempt in range(5):
                image = vol.slice(k)
                now = vol.slices
                if k < len(now) and now[k] is info:
                    break
                k = self._find(now, info, k)
        except (VolumeError, OSError, ValueError) as exc:
            LOGGER.error("cannot show slice %d of %s: %s", k, self._series_uid, exc)
            self._errors.append(str(exc))
            image = np.zeros(vol.shape[1:], dtype=np.float32)
        first = self._image is None
        self._index, self._current, self._image = k, info, image
        if self._window is None:
            self._window = default_window(vol, self._mode, image)
            self._inverted = vol.photometric_interpretation == "MONOCHROME1"
            self._apply_lut()
        lo, hi = self._levels()
        self._item.setImage(image, levels=(lo, hi), autoLevels=False)
        if first:
            _, dy, dx = vol.spacing_mm
            # Millimetres, so non-square pixels keep their true aspect.
            self._item.setRect(0, 0, image.shape[1] * dx, image.shape[0] * dy)
        if self._slider.value() != k:
            self._slider.blockSignals(True)
            self._slider.setValue(k)
            self._slider.blockSignals(False)
        self._update_overlay()
        self.sliceChanged.emit(k)

    def _levels(self) -> tuple[float, float]:
        w = self._window or WindowPreset("", 0, 1)
        return w.center - w.width / 2, w.center + w.width / 2

    def _apply_levels(self) -> None:
        if self._image is not None:
            self._item.setLevels(self._levels())
        self._update_overlay()

    def _apply_lut(self) -> None:
        self._item.set_inverted(self._inverted)

    def overlay_text(self, corner: str) -> str:
        """The annotation shown in corner "tl", "tr", "bl" or "br" ("" if none)."""
        return self._graphics.corners.get(corner, "")

    @property
    def placeholder_text(self) -> str:
        """The centred message shown instead of an image ("" while an image shows)."""
        return self._graphics.placeholder

    def _update_overlay(self) -> None:
        vol = self._volume
        text = _Canvas.TEXT
        if vol is None or self._index < 0:
            if vol is None:
                placeholder = "No scan open"
            elif self._errors:
                placeholder = self._errors[-1]
            else:
                placeholder = "Reading…" if self._submitted else "Waiting for images…"
            corners = {"tl": self._label, "tr": "", "bl": "", "br": ""}
            self._graphics.set_overlay(corners, dict.fromkeys(corners, text), placeholder)
            return
        units = vol.rescale_type or ""
        proj = vol.positions_along_normal_mm
        positioned = self._current is not None and self._current.position_mm is not None
        pos = f"   {proj[self._index]:.1f} mm" if positioned and self._index < len(proj) else ""
        receiving = time.monotonic() - self._last_add < RECEIVING_S
        tr = [f"{vol.modality or '?'}  {vol.shape[2]}×{vol.shape[1]}"]
        if receiving:
            tr.append("receiving…")
        if self._errors:
            tr.append(f"{len(self._errors)} file(s) unreadable")
        w = self._window
        wl = (f"W {w.width:.0f}  L {w.center:.0f}" + (f" {units}" if units else "")) if w else ""
        if self._inverted:
            wl += "  inverted"
        corners = {
            "tl": self._label,
            "tr": "\n".join(tr),
            "bl": f"Slice {self._index + 1} / {vol.n_slices}{pos}",
            "br": "\n".join(t for t in (self._hover, wl) if t),
        }
        colors = dict.fromkeys(corners, text)
        if receiving:
            colors["tr"] = _Canvas.ALERT  # amber while the scanner sends: not a whole scan yet
        self._graphics.set_overlay(corners, colors, "")

    # -- input ----------------------------------------------------------------------------

    def keyPressEvent(self, event: QKeyEvent) -> None:  # noqa: N802
        key = event.key()
        n = self._volume.n_slices if self._volume is not None else 0
        page = max(1, n // 10)
        steps = {
            Qt.Key.Key_Up: -1, Qt.Key.Key_Down: 1, Qt.Key.Key_Left: -1, Qt.Key.Key_Right: 1,
            Qt.Key.Key_PageUp: -page, Qt.Key.Key_PageDown: page,
        }
        if key in steps:
            self.userInteracted.emit()
            self.scroll(steps[key])
        elif key == Qt.Key.Key_Home:
            self.userInteracted.emit()
            self.set_index(0)
        elif key == Qt.Key.Key_End:
            self.userInteracted.emit()
            self.set_index(n - 1)
        elif Qt.Key.Key_1 <= key <= Qt.Key.Key_5 and self._volume is not None and self._image is not None:
            self.userInteracted.emit()
            number = key - Qt.Key.Key_1
            if number == 0:
                preset = default_window(self._volume, self._mode, self._image)
            else:
                presets = window_presets(self._mode, self._volume.rescale_type)
                preset = presets[min(number - 1, len(presets) - 1)]
            self._window = preset
            self._apply_levels()
        elif key == Qt.Key.Key_A and self._image is not None:
            self._window = auto_window(self._image)
            self._apply_levels()
        elif key == Qt.Key.Key_I:
            self._inverted = not self._inverted
            self._apply_lut()
            self._update_overlay()
        elif key == Qt.Key.Key_R:
            self._view.autoRange(padding=0.02)
        else:
            super().keyPressEvent(event)
            return
        event.accept()

    def wheelEvent(self, event: QWheelEvent) -> None:  # noqa: N802
        # Wheel over the slider or the margins scrolls slices too.
        steps = int(event.angleDelta().y() / 120)
        if steps:
            self.userInteracted.emit()
            self.scroll(-steps)
        event.accept()

    def _on_wheel_steps(self, steps: int) -> None:
        self.userInteracted.emit()
        self.scroll(steps)

    def _on_user_interacted(self) -> None:
        self._track_middle = False

    def _on_slider(self, value: int) -> None:
        self.userInteracted.emit()
        self.set_index(value)

    def _on_zoomed(self, *_args) -> None:
        self.userInteracted.emit()

    def _on_window_drag(self, dx: float, dy: float) -> None:
        if self._window is None:
            return
        self.userInteracted.emit()
        # Proportional steps: fine control on a narrow window, quick on a wide one.
        step = max(self._window.width, 10.0) / 300.0
        self._window = WindowPreset(
            "Custom", self._window.center - dy * step, max(1.0, self._window.width + dx * step))
        self._apply_levels()

    def _on_mouse_moved(self, scene_pos: QPointF) -> None:
        if self._image is None or self._volume is None:
            return
        point = self._item.mapFromScene(scene_pos)
        # The item rect is in mm; map back to pixel indices.
        rect = self._item.boundingRect()
        h, w = self._image.shape
        scale_x = w / rect.width() if rect.width() else 1.0
        scale_y = h / rect.height() if rect.height() else 1.0
        col, row = int(point.x() * scale_x), int(point.y() * scale_y)
        if 0 <= row < h and 0 <= col < w:
            units = self._volume.rescale_type
            self._hover = f"({col}, {row})  {self._image[row, col]:.0f}{' ' + units if units else ''}"
        else:
            self._hover = ""
        self._update_overlay()

    def focusInEvent(self, event) -> None:  # noqa: N802
        self._show_focus(True)
        super().focusInEvent(event)

    def focusOutEvent(self, event) -> None:  # noqa: N802
        self._show_focus(False)
        super().focusOutEvent(event)

    def _show_focus(self, focused: bool) -> None:
        # Keyboard users must see whether the keys go to the list or to the image.
        self._graphics.setProperty("focused", focused)
        style = self._graphics.style()
        style.unpolish(self._graphics)
        style.polish(self._graphics)

    def closeEvent(self, event) -> None:  # noqa: N802
        self.shutdown()
        super().closeEvent(event)
