"""SliceViewer: geometric order, growth while arriving, stable current slice, keys, wheel."""

from __future__ import annotations

import random

import numpy as np
import pytest
from PySide6.QtCore import QPoint, QPointF, Qt
from PySide6.QtGui import QWheelEvent
from PySide6.QtWidgets import QApplication

from station.ui.viewer import widget as slice_viewer
from station.ui.viewer.widget import SliceViewer, auto_window, default_window, window_presets



def slice_value(k: int) -> float:
    """The rescaled value of geometric slice k written by the ``ct_files`` fixture."""
    return k * 10.0


@pytest.fixture
def viewer(qtbot):
    v = SliceViewer(mode="clinic")
    qtbot.addWidget(v)
    v.resize(500, 500)
    v.show()
    yield v
    v.shutdown()


def wait_loaded(qtbot, v, n):
    qtbot.waitUntil(lambda: v.volume is not None and v.volume.n_slices == n and not v.is_busy(), timeout=5000)


def shown_value(v) -> float:
    """The modality value of the (flat) axial slice on screen."""
    image = v.displayed_values()
    assert image is not None
    return float(np.median(image))


def test_slices_appear_in_geometric_order(qtbot, viewer, ct_files):
    paths = ct_files(12)
    shuffled = paths[:]
    random.Random(3).shuffle(shuffled)
    viewer.set_series(None, shuffled, label="BAG0001")
    wait_loaded(qtbot, viewer, 12)
    for k in (0, 5, 11):
        viewer.set_index(k)
        assert viewer.current_index == k
        assert shown_value(viewer) == slice_value(k)
    assert [s.path for s in viewer.volume.slices] == paths
    assert viewer.errors == []


def test_first_slice_shows_while_the_rest_arrive_and_stays_put_once_touched(qtbot, viewer, ct_files):
    paths = ct_files(10)
    viewer.set_series(None, [paths[5]])
    qtbot.waitUntil(lambda: viewer.current_index == 0, timeout=3000)
    assert shown_value(viewer) == slice_value(5)
    assert viewer.first_slice_latency_s is not None
    viewer.setFocus()
    qtbot.keyClick(viewer, Qt.Key.Key_Home)  # the analyst has taken over

    # Earlier slices arrive later: the slice on screen must not change, its index must.
    viewer.add_paths(paths[:5])
    wait_loaded(qtbot, viewer, 6)
    assert viewer.current_index == 5
    assert shown_value(viewer) == slice_value(5)
    assert viewer._slider.value() == 5 and viewer._slider.maximum() == 5
    assert "receiving" in viewer.overlay_text("tr")

    viewer.add_paths(paths[6:] + paths[:2])  # duplicates are ignored
    wait_loaded(qtbot, viewer, 10)
    assert viewer.current_index == 5
    assert viewer.overlay_text("bl").startswith("Slice 6 / 10")


def test_untouched_viewer_keeps_to_the_middle_of_a_growing_scan(qtbot, viewer, ct_files):
    paths = ct_files(20)
    viewer.set_series(None, paths[:4])
    wait_loaded(qtbot, viewer, 4)
    assert viewer.current_index == 2
    assert shown_value(viewer) == slice_value(2)
    viewer.add_paths(paths[4:])
    wait_loaded(qtbot, viewer, 20)
    qtbot.waitUntil(lambda: viewer.current_index == 10, timeout=3000)
    assert shown_value(viewer) == slice_value(10)


def test_growth_is_shown_in_one_go_per_interval_and_ends_on_the_newest(qtbot, viewer, ct_files, monkeypatch):
    monkeypatch.setattr(slice_viewer, "GROWTH_REFRESH_MS", 1500)
    grew: list[int] = []
    viewer.volumeGrew.connect(grew.append)
    paths = ct_files(20)
    viewer.set_series(None, paths[:1])
    wait_loaded(qtbot, viewer, 1)
    assert grew == [1]  # the first slice shows at once
    for path in paths[1:]:  # one file per arrival, as a scanner sends them
        viewer.add_paths([path])
    qtbot.waitUntil(lambda: viewer.volume.n_slices == 20, timeout=5000)
    assert viewer.slice_count < 20 and viewer.is_busy()  # read, not yet on screen
    wait_loaded(qtbot, viewer, 20)
    assert viewer.slice_count == 20 and grew[-1] == 20
    assert len(grew) <= 3  # 19 arrivals, shown at most once or twice more
    assert viewer.current_index == 10  # still following the middle of the scan
    assert shown_value(viewer) == slice_value(10)


def test_keys_scroll(qtbot, viewer, ct_files):
    viewer.set_series(None, ct_files(30))
    wait_loaded(qtbot, viewer, 30)
    assert viewer.current_index == 15  # a scan opens at its middle
    viewer.set_index(0)
    viewer.setFocus()
    qtbot.keyClick(viewer, Qt.Key.Key_Down)
    assert viewer.current_index == 1
    qtbot.keyClick(viewer, Qt.Key.Key_PageDown)
    assert viewer.current_index == 4  # a page is a tenth of the scan
    qtbot.keyClick(viewer, Qt.Key.Key_End)
    assert viewer.current_index == 29
    assert shown_value(viewer) == slice_value(29)
    qtbot.keyClick(viewer, Qt.Key.Key_Down)
    assert viewer.current_index == 29  # clamped
    qtbot.keyClick(viewer, Qt.Key.Key_Up)
    assert viewer.current_index == 28
    qtbot.keyClick(viewer, Qt.Key.Key_Home)
    assert viewer.current_index == 0


def _wheel(widget, notches: int, modifiers=Qt.KeyboardModifier.NoModifier):
    pos = QPointF(widget.width() / 2, widget.height() / 2)
    event = QWheelEvent(
        pos, QPointF(widget.mapToGlobal(pos.toPoint())), QPoint(0, 0), QPoint(0, 120 * notches),
        Qt.MouseButton.NoButton, modifiers, Qt.ScrollPhase.NoScrollPhase, False,
    )
    QApplication.sendEvent(widget, event)


def test_wheel_scrolls_slices_and_ctrl_wheel_zooms(qtbot, viewer, ct_files):
    viewer.set_series(None, ct_files(20))
    wait_loaded(qtbot, viewer, 20)
    viewer.set_index(0)
    viewport = viewer._graphics.viewport()
    interactions = []
    viewer.userInteracted.connect(lambda: interactions.append(1))
    _wheel(viewport, -3)  # towards the user: further into the scan
    assert viewer.current_index == 3
    _wheel(viewport, 1)
    assert viewer.current_index == 2
    before = viewer.view_box.viewRange()
    _wheel(viewport, 1, Qt.KeyboardModifier.ControlModifier)
    assert viewer.current_index == 2
    assert viewer.view_box.viewRange() != before
    assert interactions


def test_window_from_series_and_presets(qtbot, viewer, ct_files):
    viewer.set_series(None, ct_files(3))
    wait_loaded(qtbot, viewer, 3)
    assert viewer.window == (40.0, 400.0)  # the files' WindowCenter/Width
    assert viewer.pane("axial").window == (-160.0, 240.0)
    viewer.setFocus()
    qtbot.keyClick(viewer, Qt.Key.Key_3)  # clinic: lung
    assert viewer.window == (-600.0, 1500.0)
    assert "W 1500  L -600 HU" in viewer.overlay_text("br")
    viewer.set_window(100, 50)
    assert viewer.pane("axial").window == (75.0, 125.0)


def test_default_window_without_voi():
    class Vol:
        default_window = None
        modality = "CT"
        rescale_type = "MHU"

    airport = default_window(Vol(), "airport", None)
    assert airport.center - airport.width / 2 == 0  # MHU: air is 0, the range starts there
    clinic = default_window(Vol(), "clinic", None)
    assert (clinic.center, clinic.width) == (1040, 400)  # soft tissue, 40 HU = 1040 MHU
    Vol.modality, Vol.rescale_type = "DX", ""
    image = np.linspace(0, 1000, 10000, dtype=np.float32).reshape(100, 100)
    dx = default_window(Vol(), "clinic", image)
    assert 0 <= dx.center - dx.width / 2 < 20 and 980 < dx.center + dx.width / 2 <= 1000
    assert auto_window(None).width > 0
    assert len(window_presets("airport", "HU")) == 5


def test_switching_series_drops_stale_work(qtbot, viewer, ct_files):
    first = ct_files(40, series_uid="1.2.9.1")
    second = ct_files(4, series_uid="1.2.9.2", patient_id="BAG2")
    viewer.set_series("1.2.9.1", first)
    viewer.set_series("1.2.9.2", second)
    wait_loaded(qtbot, viewer, 4)
    qtbot.wait(50)
    assert viewer.volume.n_slices == 4
    assert viewer.series_uid == "1.2.9.2"


def test_unreadable_file_is_reported_not_fatal(qtbot, viewer, ct_files, tmp_path):
    bad = tmp_path / "junk.dcm"
    bad.write_bytes(b"not dicom at all")
    viewer.set_series(None, [bad, *ct_files(2)])
    qtbot.waitUntil(lambda: not viewer.is_busy() and viewer.volume.n_slices == 2, timeout=3000)
    assert len(viewer.errors) == 1
    assert "unreadable" in viewer.overlay_text("tr")


def test_shutdown_stops_the_worker_and_viewer_can_restart(qtbot, viewer, ct_files):
    viewer.set_series(None, ct_files(2))
    wait_loaded(qtbot, viewer, 2)
    viewer.shutdown()
    assert viewer._pool.activeThreadCount() == 0
    viewer.set_series(None, ct_files(3))
    wait_loaded(qtbot, viewer, 3)


def test_pixels_on_screen_follow_window_and_inversion(qtbot, viewer, ct_files):
    viewer.set_series(None, ct_files(6))
    wait_loaded(qtbot, viewer, 6)
    viewer.set_index(5)  # every pixel 50 HU; window L40 W400 -> (50 + 160) / 400 of white
    center = viewer._graphics.viewport().rect().center()

    def gray() -> int:
        image = viewer._graphics.viewport().grab().toImage()
        return image.pixelColor(center).red()

    expected = round((50 + 160) / 400 * 255)
    assert abs(gray() - expected) <= 2
    viewer.setFocus()
    qtbot.keyClick(viewer, Qt.Key.Key_I)
    assert abs(gray() - (255 - expected)) <= 2
    viewer.set_window(50, 2)  # the value sits at the window's centre
    assert abs(gray() - 128) <= 2


def test_deleting_a_busy_viewer_waits_for_its_pool(qtbot, ct_files):
    import shiboken6

    paths = ct_files(60)
    v = SliceViewer()
    v.set_series(None, paths)
    shiboken6.delete(v)  # no close(), no shutdown(): the pool is a child and must drain
    qtbot.wait(50)


def test_scrolling_while_slices_arrive_shows_the_slice_it_reports(qtbot, viewer, ct_files):
    paths = ct_files(80, dz=2.0)
    viewer.set_series(None, paths[40:41])
    qtbot.waitUntil(lambda: viewer.current_index == 0, timeout=3000)
    rest = paths[:40][::-1] + paths[41:]
    for start in range(0, len(rest), 8):
        viewer.add_paths(rest[start:start + 8])
        for step in (1, -1, 3):
            viewer.scroll(step)
            QApplication.processEvents()
            info = viewer.current_slice
            # write_ct_slices: slice k lies at z = 2k and holds the value 10k.
            assert shown_value(viewer) == slice_value(round(info.position_mm[2] / 2.0))
    wait_loaded(qtbot, viewer, 80)


def test_viewer_keys_are_named_actions_a_keymap_file_remaps(qtbot, viewer, ct_files, tmp_path):
    """[viewer] in keymap.toml: every viewer key is an action; a user file moves one."""
    from station.ui.keymap import Keymap

    user = tmp_path / "keymap.toml"
    user.write_text('[viewer]\nlast = "J"\npreset_3 = "Ctrl+3"\nnot_an_action = "Q"\n')
    keymap = Keymap.load(user)
    assert keymap.problems == [f"{user}: unknown action 'viewer.not_an_action'"]
    viewer.set_keymap(keymap.keys)
    viewer.set_series(None, ct_files(20))
    wait_loaded(qtbot, viewer, 20)
    viewer.set_index(0)
    viewer.setFocus()
    qtbot.keyClick(viewer, Qt.Key.Key_End)  # End no longer means "last"
    assert viewer.current_index == 0
    qtbot.keyClick(viewer, Qt.Key.Key_J)
    assert viewer.current_index == 19
    qtbot.keyClick(viewer, Qt.Key.Key_3)  # moved to Ctrl+3
    assert viewer.window == (40.0, 400.0)
    qtbot.keyClick(viewer, Qt.Key.Key_3, Qt.KeyboardModifier.ControlModifier)
    assert viewer.window == (-600.0, 1500.0)
    qtbot.keyClick(viewer, Qt.Key.Key_Question, Qt.KeyboardModifier.ShiftModifier)  # "?" typed with Shift
    assert viewer._help
    rows = keymap.rows()
    assert ("Viewer", "J", "Last slice") in rows
    assert {r[2] for r in rows if r[0] == "Viewer"} >= {"Centre the next threat box", "Ruler", "Zoom in"}
