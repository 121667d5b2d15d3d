"""Guards the PySide6 / pyqtgraph pair: PySide6 6.12.0 crashes pyqtgraph 0.14.0's ImageView
on the first scroll ("none_dealloc"). The station's viewer uses a bare ImageItem, but other
tools and plugins may use ImageView, and the crash takes the whole process down, so the
pinned pair is checked here on every run."""

from __future__ import annotations

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import QPoint, QPointF, Qt
from PySide6.QtGui import QWheelEvent
from PySide6.QtWidgets import QApplication


def _wheel(widget, notches: int) -> None:
    pos = QPointF(widget.width() / 2, widget.height() / 2)
    event = QWheelEvent(
        pos, QPointF(widget.mapToGlobal(pos.toPoint())), QPoint(0, 0), QPoint(0, 120 * notches),
        Qt.MouseButton.NoButton, Qt.KeyboardModifier.NoModifier, Qt.ScrollPhase.NoScrollPhase, False,
    )
    QApplication.sendEvent(widget, event)


def test_imageview_survives_scrolling_a_volume(qtbot):
    pg.setConfigOptions(imageAxisOrder="row-major")
    rng = np.random.default_rng(0)
    volume = rng.integers(-1000, 3000, size=(40, 128, 128), dtype=np.int16)
    view = pg.ImageView()
    qtbot.addWidget(view)
    view.resize(400, 400)
    view.show()
    view.setImage(volume)
    app = QApplication.instance()
    app.processEvents()
    viewport = view.ui.graphicsView.viewport()
    for i in range(60):
        _wheel(viewport, 1 if i % 3 else -1)
        view.setCurrentIndex(i % volume.shape[0])
        view.jumpFrames(1)
        app.processEvents()
    view.setCurrentIndex(17)
    app.processEvents()
    assert view.currentIndex == 17
    np.testing.assert_array_equal(view.getProcessedImage()[17], volume[17])
    view.close()
