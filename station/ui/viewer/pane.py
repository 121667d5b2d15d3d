"""One view of the slice viewer: an image plane, its annotations and its mouse gestures.

A ``ViewPane`` is a pyqtgraph ``GraphicsLayoutWidget`` holding one ``PaneViewBox`` with
one ``PaneImageItem``. Everything drawn over the image (crosshair, threat boxes, ruler,
ROI, corner text) is painted in ``drawForeground`` with one ``QPainter`` pass inside the
repaint the image change causes anyway: separate graphics items or transparent labels
each cost a repaint of their own, and slice changes per second are the figure that
matters (see PERFORMANCE.md).

View coordinates are millimetres on the plane, so non-square pixels keep their true
aspect and rulers measure mm directly. GUI thread only.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import QLineF, QPointF, QRectF, Qt, Signal
from PySide6.QtGui import QBrush, QColor, QFont, QFontMetricsF, QImage, QPainter, QPen, QPolygonF, QTransform

from station.ui.viewer.colormaps import gray_lut

LOGGER = logging.getLogger(__name__)

_SIXTEEN_BIT = (np.dtype("<i2"), np.dtype("<u2")) if np.little_endian else (np.dtype(">i2"), np.dtype(">u2"))

BACKGROUND = "#202327"  # dark gray, not black: black next to bright UI tires the eye

#: Threat outline colours by (source, flag); machine boxes are dashed, operator solid.
THREAT_COLORS = {
    ("machine", "HIGH_THREAT"): "#ff4d4d",
    ("machine", "THREAT"): "#ff4d4d",
    ("machine", "UNKNOWN"): "#ffa94d",
    ("machine", "NO_THREAT"): "#a0a7b0",
    ("operator", "HIGH_THREAT"): "#ff5fd2",
    ("operator", "THREAT"): "#ff5fd2",
    ("operator", "UNKNOWN"): "#ffd43b",
    ("operator", "NO_THREAT"): "#63e6be",
}
CROSSHAIR = QColor(120, 200, 255, 150)
RULER = QColor("#ffe066")
ROI = QColor("#74c0fc")
ACCENT = QColor("#4fb3ff")


def threat_color(source: str, flag: str) -> QColor:
    return QColor(THREAT_COLORS.get((source, flag), THREAT_COLORS[(source, "UNKNOWN")]))


class PaneImageItem(pg.ImageItem):
    """An ImageItem that windows a slice straight into an RGB32 QImage through a table.

    pyqtgraph renders a grayscale slice as a Grayscale8/Indexed8 QImage, which Qt converts
    to RGB on every paint; drawing an RGB32 image scaled is about three times faster
    (0.4 ms against 1.3 ms for 512x512 drawn at 880x880), and painting is most of the
    cost of a slice change. Levels are in the units of the array given (stored values:
    the pane folds the rescale into them). ``set_lut`` takes a (256,) table, or a
    (classes, 256) material table with either class bounds (in the array's units,
    compared per pixel) or a precomputed class image.

    16-bit images (CT as stored) skip the arithmetic altogether: window, colour map and
    material class are folded into one 65536-entry colour table per setting (rebuilt in
    about a millisecond when the window moves), and a slice is painted with a single
    ``np.take`` of its raw values: the cheapest a change of slice can be in numpy.
    """

    def __init__(self) -> None:
        super().__init__(axisOrder="row-major")
        self._lut32 = gray_lut()
        self._class_bounds: tuple[float, ...] = ()
        self._class_image: np.ndarray | None = None
        self._scratch: np.ndarray | None = None
        self._argb: np.ndarray | None = None
        self._value_lut: np.ndarray | None = None
        self._value_lut_key: tuple[Any, ...] | None = None
        #: Paint count, so tests and the benchmark can tell a frame really was drawn.
        self.paints = 0

    def set_lut(self, lut: np.ndarray, *, class_bounds: tuple[float, ...] = (),
                class_image: np.ndarray | None = None) -> None:
        self._lut32 = lut
        self._class_bounds = tuple(class_bounds)
        self._class_image = class_image
        self._value_lut_key = None
        self._renderRequired = True
        self.update()

    def paint(self, p, *args) -> None:  # noqa: D102 - counts, then pyqtgraph's paint
        self.paints += 1
        super().paint(p, *args)

    def render(self) -> None:  # overrides pyqtgraph; called from paint() on the GUI thread
        image, levels = self.image, self.levels
        if image is None or image.ndim != 2 or image.size == 0 or levels is None or np.ndim(levels) != 1:
            super().render()  # anything unusual: pyqtgraph's general path
            return
        lo, hi = float(levels[0]), float(levels[1])
        lut = self._lut32
        if image.dtype in _SIXTEEN_BIT and (lut.ndim == 1 or self._class_image is None):
            table = self._table_for(image.dtype, lo, hi)
            # Into the buffer of the previous frame: Qt only reads the QImage while it
            # paints, and fresh pages for every frame cost more than the lookup itself.
            # mode="clip" lets take() write in place (every uint16 is a valid index).
            out = self._argb if self._argb is not None and self._argb.shape == image.shape else None
            self._publish(np.take(table, image.view(np.uint16), out=out, mode="clip"))
            return
        scale = 255.0 / (hi - lo) if hi != lo else 0.0
        if self._scratch is None or self._scratch.shape != image.shape:
            self._scratch = np.empty(image.shape, dtype=np.float32)
        buf = self._scratch
        np.multiply(image, np.float32(scale), out=buf, casting="unsafe")
        np.add(buf, np.float32(-lo * scale), out=buf)
        # fmax/fmin rather than clip: they also turn NaN (not yet received) into 0.
        np.fmax(buf, 0, out=buf)
        np.fmin(buf, 255, out=buf)
        level = buf.astype(np.uint8)
        if lut.ndim == 2:
            classes = self._class_image
            if classes is None or classes.shape != image.shape:
                classes = np.zeros(image.shape, dtype=np.uint16)
                for bound in self._class_bounds:
                    classes += image >= bound
            index = classes.astype(np.intp) * 256 + level
            argb = np.take(lut.ravel(), index)
        else:
            argb = np.take(lut, level)  # take() beats fancy indexing 2x
        self._publish(argb)

    def _publish(self, argb: np.ndarray) -> None:
        self._argb = argb  # the QImage borrows this buffer: keep it alive with the image
        h, w = argb.shape
        self.qimage = QImage(argb.data, w, h, w * 4, QImage.Format.Format_RGB32)
        self._renderRequired = False
        self._unrenderable = False

    def _table_for(self, dtype: np.dtype, lo: float, hi: float) -> np.ndarray:
        """Colour of every 16-bit value under the current window and colour map, indexed
        by the value's bit pattern (so int16 images index it through a uint16 view)."""
        key = (dtype, lo, hi)
        if self._value_lut is not None and self._value_lut_key == key:
            return self._value_lut
        values = np.arange(65536, dtype=np.uint32).astype(np.uint16).view(dtype).astype(np.float32)
        scale = 255.0 / (hi - lo) if hi != lo else 0.0
        level = np.clip((values - np.float32(lo)) * np.float32(scale), 0, 255).astype(np.uint8)
        lut = self._lut32
        if lut.ndim == 2:
            classes = np.zeros(values.shape, dtype=np.intp)
            for bound in self._class_bounds:
                classes += values >= bound
            table = np.take(lut.ravel(), classes * 256 + level)
        else:
            table = np.take(lut, level)
        self._value_lut, self._value_lut_key = table, key
        return table


class PaneViewBox(pg.ViewBox):
    """A ViewBox with the viewer's gestures. Emits, in view coordinates (mm):

    - ``sigWheel(steps)``: wheel without Ctrl (+n: towards the user); Ctrl+wheel zooms.
    - ``sigWindowDrag(dx, dy)``: right drag, in screen pixels.
    - ``sigLeftDrag(start, pos, phase)``: left drag without Shift; phase 0 start, 1 move,
      2 finish. Shift+left and middle drags pan, as does pyqtgraph by default.
    - ``sigLeftClick(pos)``.
    """

    sigWheel = Signal(int)
    sigWindowDrag = Signal(float, float)
    sigLeftDrag = Signal(object, object, int)
    sigLeftClick = Signal(object)

    def __init__(self, invert_y: bool = True) -> None:
        super().__init__(lockAspect=True, invertY=invert_y, enableMenu=False)
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
            self.sigWheel.emit(-steps)  # wheel away from the user: towards the start
        ev.accept()

    def mouseDragEvent(self, ev, axis=None):  # noqa: N802
        button = ev.button()
        if button == Qt.MouseButton.RightButton:
            ev.accept()
            delta = ev.screenPos() - ev.lastScreenPos()
            self.sigWindowDrag.emit(delta.x(), delta.y())
            return
        shift = bool(ev.modifiers() & Qt.KeyboardModifier.ShiftModifier)
        if button == Qt.MouseButton.LeftButton and not shift:
            ev.accept()
            start = self.mapToView(ev.buttonDownPos(button))
            pos = self.mapToView(ev.pos())
            phase = 0 if ev.isStart() else (2 if ev.isFinish() else 1)
            self.sigLeftDrag.emit(QPointF(start), QPointF(pos), phase)
            return
        super().mouseDragEvent(ev, axis)

    def mouseClickEvent(self, ev):  # noqa: N802
        if ev.button() == Qt.MouseButton.LeftButton:
            ev.accept()
            self.sigLeftClick.emit(QPointF(self.mapToView(ev.pos())))
            return
        ev.accept()  # no context menu: right is for windowing


@dataclass
class Shape:
    """A threat outline in view coordinates (mm): a rectangle or a polygon."""

    points: list[QPointF]
    label: str
    source: str
    flag: str
    closed: bool = True


class ViewPane(pg.GraphicsLayoutWidget):
    """One plane of the viewer: the image, where its pixels lie (mm) and the annotations.

    The viewer sets the data (``set_image``), the window (``set_window``) and the
    annotations; the pane draws them and maps view points back to pixels and values.
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
    PLATE = QColor(24, 26, 30, 120)

    def __init__(self, kind: str, *, invert_y: bool = True) -> None:
        super().__init__()
        self.kind = kind
        self.setObjectName("SliceCanvas")
        self.setBackground(BACKGROUND)
        self.setFocusPolicy(Qt.FocusPolicy.NoFocus)
        self.ci.setContentsMargins(0, 0, 0, 0)
        self.view = PaneViewBox(invert_y)
        self.addItem(self.view)
        self.item = PaneImageItem()
        self.view.addItem(self.item)

        self.corners: dict[str, str] = dict.fromkeys(self._ALIGN, "")
        self.colors: dict[str, QColor] = dict.fromkeys(self._ALIGN, self.TEXT)
        self.placeholder = ""
        self.active = False
        self.show_active = False
        self.crosshair: tuple[float | None, float | None] = (None, None)
        self.crosshair_visible = True
        self.shapes: list[Shape] = []
        self.ruler: tuple[QPointF, QPointF, str] | None = None
        self.roi: tuple[QRectF, str] | None = None
        self.help: tuple[tuple[str, str], ...] = ()

        # What is on screen, for readouts: values as given, rescale, pixel placement.
        self.values: np.ndarray | None = None
        self.slope = 1.0
        self.intercept = 0.0
        self.origin = (0.0, 0.0)  # view coordinates of the first pixel's outer corner
        self.pixel_mm = (1.0, 1.0)  # (row height, column width)
        self._rect: tuple[float, float, float, float] | None = None
        self._window = (0.0, 1.0)

        self._overlay_font = QFont(self.font())
        self._overlay_font.setPointSizeF(max(10.5, self._overlay_font.pointSizeF()))
        self._small_font = QFont(self.font())
        self._small_font.setPointSizeF(max(9.0, self._overlay_font.pointSizeF() - 1.5))
        self._placeholder_font = QFont(self.font())
        self._placeholder_font.setPointSizeF(14.0)

    # ------------------------------------------------------------------ data

    def set_image(self, values: np.ndarray, *, slope: float = 1.0, intercept: float = 0.0,
                  origin: tuple[float, float] = (0.0, 0.0), pixel_mm: tuple[float, float] = (1.0, 1.0)) -> None:
        """Show ``values`` (2-D; modality = values * slope + intercept) with its first
        pixel's corner at ``origin`` and pixels of ``pixel_mm`` (row, column) size."""
        self.values, self.slope, self.intercept = values, float(slope) or 1.0, float(intercept)
        self.origin, self.pixel_mm = origin, pixel_mm
        self.item.setImage(values, levels=self._folded(self._window), autoLevels=False)
        rect = (origin[0], origin[1], values.shape[1] * pixel_mm[1], values.shape[0] * pixel_mm[0])
        if rect != self._rect:
            self._rect = rect
            self.item.setRect(QRectF(*rect))

    def clear_image(self) -> None:
        self.values = None
        self._rect = None
        self.item.clear()
        self.update_overlay()

    def set_window(self, lo: float, hi: float) -> None:
        """Display window in modality units (HU, MHU...)."""
        self._window = (float(lo), float(hi))
        if self.values is not None:
            self.item.setLevels(self._folded(self._window))

    @property
    def window(self) -> tuple[float, float]:
        """(low, high) display window in modality units."""
        return self._window

    def fold(self, value: float) -> float:
        """A modality value in the units of the array on screen."""
        return (value - self.intercept) / self.slope

    def _folded(self, window: tuple[float, float]) -> tuple[float, float]:
        lo, hi = self.fold(window[0]), self.fold(window[1])
        return (lo, hi) if lo <= hi else (hi, lo)

    def has_image(self) -> bool:
        return self.values is not None

    def pixel_at(self, point: QPointF) -> tuple[int, int] | None:
        """(row, col) of the pixel under a view point, or None outside the image."""
        if self.values is None:
            return None
        col = math.floor((point.x() - self.origin[0]) / self.pixel_mm[1])
        row = math.floor((point.y() - self.origin[1]) / self.pixel_mm[0])
        h, w = self.values.shape
        return (row, col) if 0 <= row < h and 0 <= col < w else None

    def value_at(self, row: int, col: int) -> float:
        """Modality value of pixel (row, col) of the image on screen."""
        assert self.values is not None
        return float(self.values[row, col]) * self.slope + self.intercept

    def pixel_center(self, row: float, col: float) -> QPointF:
        """View coordinates of the centre of pixel (row, col)."""
        return QPointF(self.origin[0] + (col + 0.5) * self.pixel_mm[1],
                       self.origin[1] + (row + 0.5) * self.pixel_mm[0])

    def modality_image(self) -> np.ndarray | None:
        """The image on screen as float32 modality values (for ROI statistics)."""
        if self.values is None:
            return None
        out = np.asarray(self.values, dtype=np.float32)
        if self.slope != 1.0 or self.intercept != 0.0:
            out = out * np.float32(self.slope) + np.float32(self.intercept)
        return out

    # ------------------------------------------------------------------ annotations

    def set_overlay(self, corners: dict[str, str], colors: dict[str, QColor] | None = None,
                    placeholder: str = "") -> None:
        """Replace the corner texts; repaints only when something changed."""
        colors = colors or dict.fromkeys(corners, self.TEXT)
        if corners == self.corners and colors == self.colors and placeholder == self.placeholder:
            return
        self.corners, self.colors, self.placeholder = dict(corners), dict(colors), placeholder
        self.update_overlay()

    def set_help(self, rows: tuple[tuple[str, str], ...]) -> None:
        """Show (or with no rows, hide) a table of keys over the image."""
        if tuple(rows) != self.help:
            self.help = tuple(rows)
            self.update_overlay()

    def update_overlay(self) -> None:
        """Repaint the annotations (after changing crosshair, shapes, ruler or ROI)."""
        self.viewport().update()

    def view_to_device(self) -> QTransform:
        """Transform from view coordinates (mm) to viewport pixels."""
        return self.view.childGroup.sceneTransform() * self.viewportTransform()

    def drawForeground(self, painter: QPainter, rect: QRectF) -> None:  # noqa: N802 (Qt API)
        super().drawForeground(painter, rect)
        painter.save()
        painter.resetTransform()  # viewport pixels, whatever the zoom
        painter.setRenderHint(QPainter.RenderHint.Antialiasing, True)
        area = QRectF(self.viewport().rect()).adjusted(10, 8, -10, -8)
        if self.values is not None:
            to_device = self.view_to_device()
            self._paint_crosshair(painter, to_device)
            self._paint_shapes(painter, to_device)
            self._paint_ruler(painter, to_device)
            self._paint_roi(painter, to_device)
        if self.placeholder:
            painter.setFont(self._placeholder_font)
            painter.setPen(self.MUTED)
            painter.drawText(area, int(Qt.AlignmentFlag.AlignCenter | Qt.TextFlag.TextWordWrap), self.placeholder)
        painter.setFont(self._overlay_font)
        areas = dict.fromkeys(self._ALIGN, area)
        # In a narrow pane, left and right texts of one edge may meet: the right one
        # then moves clear of the left one (below it at the top, above at the bottom).
        for left, right, down in (("tl", "tr", True), ("bl", "br", False)):
            if self.corners.get(left) and self.corners.get(right):
                a = painter.boundingRect(area, int(self._ALIGN[left]), self.corners[left])
                b = painter.boundingRect(area, int(self._ALIGN[right]), self.corners[right])
                if a.adjusted(0, 0, 12, 0).intersects(b):
                    shift = a.height() + 4
                    areas[right] = area.adjusted(0, shift, 0, 0) if down else area.adjusted(0, 0, 0, -shift)
        for name, text in self.corners.items():
            if not text:
                continue
            area = areas[name]
            flags = int(self._ALIGN[name])
            # A faint plate under the text: legible on light radiograph backgrounds too.
            plate = painter.boundingRect(area, flags, text).adjusted(-5, -2, 5, 2)
            painter.setPen(Qt.PenStyle.NoPen)
            painter.setBrush(self.PLATE)
            painter.drawRoundedRect(plate, 3, 3)
            painter.setPen(self.SHADOW)
            painter.drawText(area.translated(1, 1), flags, text)
            painter.setPen(self.colors.get(name, self.TEXT))
            painter.drawText(area, flags, text)
        if self.help:
            self._paint_help(painter)
        if self.show_active and self.active:
            painter.setRenderHint(QPainter.RenderHint.Antialiasing, False)
            painter.setPen(QPen(ACCENT, 2))
            painter.setBrush(Qt.BrushStyle.NoBrush)
            painter.drawRect(QRectF(self.viewport().rect()).adjusted(1, 1, -1, -1))
        painter.restore()

    def _paint_help(self, painter: QPainter) -> None:
        """The key table on a dark plate, centred, shrunk to fit a narrow pane."""
        vp = QRectF(self.viewport().rect()).adjusted(8, 8, -8, -8)
        font = QFont(self._overlay_font)
        for _ in range(6):
            metrics = QFontMetricsF(font)
            keys_w = max(metrics.horizontalAdvance(k) for k, _ in self.help)
            text_w = max(metrics.horizontalAdvance(t) for _, t in self.help)
            line = metrics.height() * 1.35
            width, height = keys_w + text_w + 48, line * len(self.help) + 24
            if width <= vp.width() and height <= vp.height() or font.pointSizeF() <= 7.5:
                break
            font.setPointSizeF(font.pointSizeF() - 1.0)
        plate = QRectF(0, 0, width, height)
        plate.moveCenter(vp.center())
        painter.setRenderHint(QPainter.RenderHint.Antialiasing, True)
        painter.setPen(QPen(QColor(79, 179, 255, 120), 1))
        painter.setBrush(QColor(22, 24, 28, 235))
        painter.drawRoundedRect(plate, 6, 6)
        painter.setFont(font)
        y = plate.top() + 12
        for keys, text in self.help:
            painter.setPen(QColor("#9fd3ff"))
            painter.drawText(QRectF(plate.left() + 16, y, keys_w, line), int(Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignVCenter), keys)
            painter.setPen(self.TEXT)
            painter.drawText(QRectF(plate.left() + 32 + keys_w, y, text_w, line), int(Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignVCenter), text)
            y += line

    def _paint_crosshair(self, painter: QPainter, t: QTransform) -> None:
        cx, cy = self.crosshair
        if not self.crosshair_visible or (cx is None and cy is None):
            return
        vp = QRectF(self.viewport().rect())
        centre = t.map(QPointF(cx or 0.0, cy or 0.0))
        gap = 14.0  # keep the point itself clear: that is what the analyst looks at
        painter.setPen(QPen(CROSSHAIR, 1))
        if cx is not None:
            x = centre.x()
            if cy is not None:
                painter.drawLine(QLineF(x, vp.top(), x, centre.y() - gap))
                painter.drawLine(QLineF(x, centre.y() + gap, x, vp.bottom()))
            else:
                painter.drawLine(QLineF(x, vp.top(), x, vp.bottom()))
        if cy is not None:
            y = centre.y()
            if cx is not None:
                painter.drawLine(QLineF(vp.left(), y, centre.x() - gap, y))
                painter.drawLine(QLineF(centre.x() + gap, y, vp.right(), y))
            else:
                painter.drawLine(QLineF(vp.left(), y, vp.right(), y))

    def _paint_shapes(self, painter: QPainter, t: QTransform) -> None:
        if not self.shapes:
            return
        polys = [QPolygonF([t.map(p) for p in shape.points]) for shape in self.shapes]
        painter.setBrush(Qt.BrushStyle.NoBrush)
        for shape, poly in zip(self.shapes, polys):
            color = threat_color(shape.source, shape.flag)
            machine = shape.source == "machine"
            shadow = QPen(QColor(0, 0, 0, 160), 4 if not machine else 3)
            pen = QPen(color, 2 if not machine else 1.6)
            if machine:
                pen.setStyle(Qt.PenStyle.DashLine)
            # Axis-aligned boxes are crisp without antialiasing, which costs a lot on
            # dashed lines; only free polygons get it.
            painter.setRenderHint(QPainter.RenderHint.Antialiasing, len(shape.points) != 4)
            for p in (shadow, pen):
                painter.setPen(p)
                if shape.closed:
                    painter.drawPolygon(poly)
                else:
                    painter.drawPolyline(poly)
        # Labels after every outline, so no outline crosses a label, and never on top of
        # each other: neighbouring boxes (machine and operator on one object) are common.
        painter.setFont(self._small_font)
        metrics = QFontMetricsF(self._small_font)
        tags: list[QRectF] = []
        for shape, poly in zip(self.shapes, polys):
            if not shape.label:
                continue
            color = threat_color(shape.source, shape.flag)
            bounds = poly.boundingRect()
            tag = QRectF(0, 0, metrics.horizontalAdvance(shape.label) + 8, metrics.height() + 2)
            tag.moveBottomLeft(QPointF(bounds.left(), bounds.top() - 2))
            if tag.top() < 2:  # no room above: inside the top edge
                tag.moveTopLeft(QPointF(bounds.left(), bounds.top() + 2))
            for _ in range(len(tags)):
                clash = next((r for r in tags if r.intersects(tag)), None)
                if clash is None:
                    break
                tag.moveTop(clash.bottom() + 1)
            tags.append(QRectF(tag))
            fill = QColor(color)
            fill.setAlpha(215)
            painter.setPen(Qt.PenStyle.NoPen)
            painter.setBrush(QBrush(fill))
            painter.drawRoundedRect(tag, 3, 3)
            painter.setPen(QColor("#111315"))
            painter.drawText(tag, int(Qt.AlignmentFlag.AlignCenter), shape.label)

    def _paint_ruler(self, painter: QPainter, t: QTransform) -> None:
        if self.ruler is None:
            return
        p0, p1, text = self.ruler
        a, b = t.map(p0), t.map(p1)
        painter.setPen(QPen(QColor(0, 0, 0, 160), 3))
        painter.drawLine(QLineF(a, b))
        painter.setPen(QPen(RULER, 1.5))
        painter.drawLine(QLineF(a, b))
        for end in (a, b):
            painter.drawEllipse(end, 3, 3)
        self._label(painter, QPointF(b.x() + 8, b.y() - 8), text, RULER)

    def _paint_roi(self, painter: QPainter, t: QTransform) -> None:
        if self.roi is None:
            return
        rect, text = self.roi
        poly = t.map(QPolygonF(rect))
        painter.setBrush(QColor(116, 192, 252, 30))
        painter.setPen(QPen(ROI, 1.5))
        painter.drawPolygon(poly)
        bounds = poly.boundingRect()
        self._label(painter, QPointF(bounds.right() + 8, bounds.top()), text, ROI)

    def _label(self, painter: QPainter, at: QPointF, text: str, color: QColor) -> None:
        """Text on a dark plate, kept inside the viewport."""
        painter.setFont(self._small_font)
        metrics = QFontMetricsF(self._small_font)
        lines = text.split("\n")
        width = max(metrics.horizontalAdvance(line) for line in lines) + 10
        height = metrics.height() * len(lines) + 6
        box = QRectF(at.x(), at.y(), width, height)
        vp = QRectF(self.viewport().rect()).adjusted(4, 4, -4, -4)
        if box.right() > vp.right():
            box.moveRight(min(at.x() - 16, vp.right()))
        if box.bottom() > vp.bottom():
            box.moveBottom(vp.bottom())
        box.moveTop(max(box.top(), vp.top()))
        box.moveLeft(max(box.left(), vp.left()))
        painter.setPen(Qt.PenStyle.NoPen)
        painter.setBrush(QColor(20, 22, 25, 200))
        painter.drawRoundedRect(box, 3, 3)
        painter.setPen(color)
        painter.drawText(box.adjusted(5, 3, -5, -3), int(Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignTop), text)


__all__ = ["BACKGROUND", "PaneImageItem", "PaneViewBox", "Shape", "THREAT_COLORS", "ViewPane", "threat_color"]
