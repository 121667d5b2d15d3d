"""MainWindow: following arrivals, never stealing a chosen scan, status bar, run_gui."""

from __future__ import annotations

import socket
import threading
import time

import pytest
from PySide6.QtCore import Qt, QTimer
from PySide6.QtWidgets import QApplication, QMessageBox

from station.core.config import Settings
from station.core.events import (
    AssociationClosed,
    AssociationOpened,
    ReceiverError,
    ReceiverState,
)
from station.ui import main_window as main_window_module
from station.ui.main_window import MainWindow


@pytest.fixture
def settings(tmp_path) -> Settings:
    s = Settings()
    s.store.path = tmp_path / "store"
    s.receiver.host = "127.0.0.1"
    s.receiver.port = 0
    return s


@pytest.fixture
def window(qtbot, store, bridge, settings):
    w = MainWindow(store, bridge, settings)
    qtbot.addWidget(w)
    w.show()
    yield w
    w.close()


@pytest.fixture
def arrive(store, bus, ct_files):
    """``arrive(paths)``: store files and publish their events from a 'receiver' thread."""

    def run(paths):
        def work():
            for p in paths:
                bus.publish(store.import_file(p, source="SCANNER@127.0.0.1:4000"))

        t = threading.Thread(target=work, name="fake-association")
        t.start()
        t.join()

    return run


def test_title_and_initial_status(window, store):
    assert window.windowTitle() == "Inspection Station"
    assert "Not listening" in window.receiver_label.text()
    assert str(store.root) in window.store_label.text()
    assert window.scan_list is not None and window.viewer is not None


def test_status_bar_follows_receiver_events(qtbot, window, bus):
    def publish():
        bus.publish(ReceiverState(True, "STATION", "0.0.0.0", 11112))
        bus.publish(AssociationOpened("10.0.0.7:40001", "", 1))
        bus.publish(AssociationOpened("10.0.0.8:40002", "", 2))
        bus.publish(ReceiverError("10.0.0.7:40001", "CT_LANE3", "cannot write: disk full", 0xA700))
        bus.publish(AssociationClosed("10.0.0.7:40001", "CT_LANE3", 1, "aborted"))

    t = threading.Thread(target=publish)
    t.start()
    t.join()
    qtbot.waitUntil(lambda: "Errors: 1" in window.errors_label.text(), timeout=2000)
    assert "Listening" in window.receiver_label.text()
    assert "STATION" in window.receiver_label.text() and "0.0.0.0:11112" in window.receiver_label.text()
    assert window.associations_label.text() == "Associations: 1"
    assert "CT_LANE3@10.0.0.7:40001" in window.errors_label.text()
    assert "disk full" in window.errors_label.text()
    assert "0xA700" in window.errors_label.toolTip()

    bus.publish(ReceiverState(False, "STATION", "0.0.0.0", 11112, "cannot listen on 0.0.0.0:11112: in use"))
    qtbot.waitUntil(lambda: "Not listening" in window.receiver_label.text(), timeout=2000)
    assert "in use" in window.receiver_label.text()


def test_store_full_is_a_loud_warning_until_instances_arrive_again(qtbot, window, bus, arrive, ct_files):
    assert window.storage_warning.isHidden()
    bus.publish(ReceiverError("10.0.0.7:40001", "CT_LANE3", "cannot write: disk full", None))
    qtbot.waitUntil(lambda: "Errors: 1" in window.errors_label.text(), timeout=2000)
    assert window.storage_warning.isHidden()  # an ordinary error is not a full store
    bus.publish(ReceiverError("10.0.0.7:40001", "CT_LANE3", "store /x is full: No space left", 0xA700))
    qtbot.waitUntil(lambda: not window.storage_warning.isHidden(), timeout=2000)
    assert "STORE FULL" in window.storage_warning.text()
    assert "No space left" in window.storage_warning.toolTip()
    arrive(ct_files(1, patient_id="BAG-9"))
    qtbot.waitUntil(lambda: window.storage_warning.isHidden(), timeout=3000)


def test_first_arrival_opens_and_grows_in_the_viewer(qtbot, window, arrive, ct_files):
    paths = ct_files(12, patient_id="BAG-1")
    arrive(paths[4:7])  # the middle of the scan arrives first
    viewer = window.viewer
    qtbot.waitUntil(lambda: viewer.current_index >= 0, timeout=3000)
    assert window.scan_list.current_series() == viewer.series_uid
    assert "BAG-1" in viewer.overlay_text("tl")
    qtbot.waitUntil(lambda: viewer.volume.n_slices == 3 and not viewer.is_busy(), timeout=3000)
    shown = viewer.current_slice  # one of slices 4-6, depending on what was stored first
    k = round(shown.position_mm[2] / 2.0)  # ct_files: slice k lies at z = 2k
    assert k in (4, 5, 6)
    # Untouched, the viewer keeps to the middle of the growing scan...
    arrive(paths[:4] + paths[7:])
    qtbot.waitUntil(lambda: viewer.volume.n_slices == 12 and not viewer.is_busy(), timeout=3000)
    qtbot.waitUntil(lambda: viewer.current_index == 6, timeout=3000)
    assert round(viewer.current_slice.position_mm[2] / 2.0) == 6
    # ...until the analyst scrolls: from then on arrivals never move the view.
    viewer.setFocus()
    qtbot.keyClick(viewer, Qt.Key.Key_Up)
    shown = viewer.current_slice
    assert round(shown.position_mm[2] / 2.0) == 5
    assert window.received_label.text() == "Received: 12"
    assert window.following


def test_arrivals_never_replace_a_chosen_scan(qtbot, window, arrive, ct_files):
    arrive(ct_files(2, patient_id="BAG-A"))
    arrive(ct_files(2, patient_id="BAG-B"))
    model = window.scan_list.scan_model
    qtbot.waitUntil(lambda: model.rowCount() == 2, timeout=3000)
    first_uid = model.uids()[-1]  # BAG-A, the older
    window.scan_list.setFocus()
    window.scan_list.select_series(first_uid, explicit=True)
    assert window.viewer.series_uid == first_uid
    assert not window.following and not window.follow_box.isChecked()

    arrive(ct_files(2, patient_id="BAG-C"))
    qtbot.waitUntil(lambda: model.rowCount() == 3, timeout=3000)
    qtbot.wait(100)
    assert window.viewer.series_uid == first_uid
    assert window.scan_list.current_series() == first_uid
    newest = [u for u in model.uids() if model.series_at(model.row_of(u)).patient_id == "BAG-C"][0]
    assert not model.is_viewed(newest)

    # Esc: back to following, jump to the newest at once.
    qtbot.keyClick(window.scan_list, Qt.Key.Key_Escape)
    assert window.following
    assert window.viewer.series_uid == newest


def test_clicking_the_auto_opened_scan_keeps_it(qtbot, window, arrive, ct_files):
    arrive(ct_files(2, patient_id="BAG-A"))
    qtbot.waitUntil(lambda: window.viewer.series_uid is not None, timeout=3000)
    assert window.following
    shown = window.viewer.series_uid
    view = window.scan_list
    rect = view.visualRect(view.scan_model.index(view.scan_model.row_of(shown), 1))
    qtbot.mouseClick(view.viewport(), Qt.MouseButton.LeftButton, pos=rect.center())
    assert not window.following
    arrive(ct_files(2, patient_id="BAG-B"))
    qtbot.waitUntil(lambda: view.scan_model.rowCount() == 2, timeout=3000)
    assert window.viewer.series_uid == shown


def test_a_report_arriving_after_its_scan_does_not_replace_it(qtbot, window, arrive, ct_files):
    arrive(ct_files(3, patient_id="BAG-A"))
    viewer = window.viewer
    qtbot.waitUntil(lambda: viewer.current_index >= 0, timeout=3000)
    scan = viewer.series_uid
    arrive(ct_files(1, patient_id="BAG-A", modality="TDR"))
    qtbot.waitUntil(lambda: window.received_label.text() == "Received: 4", timeout=3000)
    assert window.scan_list.scan_model.rowCount() == 1  # reports are alerts, not scans
    assert viewer.series_uid == scan


def test_follow_mode_waits_while_the_analyst_scrolls(qtbot, window, arrive, ct_files, monkeypatch):
    monkeypatch.setattr(main_window_module, "HOLD_S", 0.4)
    arrive(ct_files(5, patient_id="BAG-A"))
    viewer = window.viewer
    qtbot.waitUntil(lambda: viewer.volume is not None and viewer.volume.n_slices == 5, timeout=3000)
    first = viewer.series_uid
    viewer.setFocus()
    qtbot.keyClick(viewer, Qt.Key.Key_Down)  # hands on the open scan
    arrive(ct_files(2, patient_id="BAG-B"))
    qtbot.waitUntil(lambda: window.scan_list.scan_model.rowCount() == 2, timeout=3000)
    assert viewer.series_uid == first
    qtbot.waitUntil(lambda: viewer.series_uid != first, timeout=3000)
    assert window.following


def test_keyboard_tab_f5_and_quit(qtbot, window, store, ct_files):
    store.import_paths(ct_files(2))
    assert window.scan_list.scan_model.rowCount() == 0  # nobody told the window yet
    qtbot.keyClick(window, Qt.Key.Key_F5)
    assert window.scan_list.scan_model.rowCount() == 1
    window.activateWindow()
    window.scan_list.setFocus()
    qtbot.keyClick(window.scan_list, Qt.Key.Key_Tab)
    assert window.focusWidget() is window.viewer
    qtbot.keyClick(window.viewer, Qt.Key.Key_Tab)
    assert window.focusWidget() is window.alert_panel.table
    qtbot.keyClick(window.alert_panel.table, Qt.Key.Key_Tab)
    assert window.focusWidget() is window.scan_list
    qtbot.keyClick(window, Qt.Key.Key_Q, Qt.KeyboardModifier.ControlModifier)
    assert not window.isVisible()


# -- run_gui ---------------------------------------------------------------------------------


def _close_soon(check, delay_ms=300, timeout_s=20.0):
    """Run `check(window)` on the GUI thread once it returns True, then close everything."""
    results = {}
    deadline = time.monotonic() + timeout_s

    def poll():
        windows = [w for w in QApplication.topLevelWidgets() if isinstance(w, MainWindow) and w.isVisible()]
        try:
            done = bool(windows) and check(windows[0])
        except Exception as exc:  # reported by the test, not lost in the event loop
            results["error"] = exc
            done = True
        if done or time.monotonic() > deadline:
            results["done"] = done
            QApplication.closeAllWindows()
        else:
            QTimer.singleShot(50, poll)

    QTimer.singleShot(delay_ms, poll)
    return results


def test_run_gui_starts_and_stops_everything(qtbot, settings):
    from station.app.gui import run_gui

    settings.simulator.size = 64
    settings.simulator.slices = 12
    settings.simulator.interval_s = 30
    settings.simulator.dicos_every = 0
    seen = {}

    def check(window):
        seen["receiver"] = window.receiver_label.text()
        viewer = window.viewer
        return viewer.volume is not None and viewer.volume.n_slices == 12

    results = _close_soon(check)
    assert run_gui(settings, simulator=True, operator="alice") == 0
    assert "error" not in results, results
    assert results["done"], "the simulated bag never showed up"
    assert "Listening" in seen["receiver"]


def test_run_gui_opens_even_when_the_port_is_taken(qtbot, settings):
    from station.app.gui import run_gui

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        settings.receiver.port = taken.getsockname()[1]
        seen = {}

        def check(window):
            boxes = [w for w in QApplication.topLevelWidgets() if isinstance(w, QMessageBox) and w.isVisible()]
            seen["box"] = boxes[0].text() if boxes else ""
            seen["status"] = window.receiver_label.text()
            return bool(boxes) and "Not listening" in seen["status"]

        results = _close_soon(check)
        assert run_gui(settings, receiver=True, operator="bob") == 0  # no sign-in dialog
    assert results.get("done"), seen
    assert "could not start" in seen["box"]
    assert str(settings.receiver.port) in seen["status"]
