"""Scan list: rows from the store, pending first, incremental updates, stable selection."""

from __future__ import annotations

import time

import pytest
from PySide6.QtCore import Qt

from station.ui.scan_list import (
    COL_ID,
    COL_IMAGES,
    COL_STATUS,
    STATUS_ROLE,
    ScanList,
    human_size,
    received_text,
)


@pytest.fixture
def import_series(store, ct_files):
    """``import_series(pid, n)`` writes and imports a CT series; returns its series UID."""

    def run(patient_id: str, n: int = 2, **kw) -> str:
        result = store.import_paths(ct_files(n, patient_id=patient_id, **kw))
        assert not result.errors and not result.ignored
        time.sleep(0.01)  # distinct arrival times
        return result.stored[0].series_uid

    return run


class Counter:
    def __init__(self, model):
        self.resets = self.inserts = self.moves = self.removes = 0
        model.modelReset.connect(lambda: self._bump("resets"))
        model.rowsInserted.connect(lambda *a: self._bump("inserts"))
        model.rowsMoved.connect(lambda *a: self._bump("moves"))
        model.rowsRemoved.connect(lambda *a: self._bump("removes"))

    def _bump(self, name):
        setattr(self, name, getattr(self, name) + 1)


def test_rows_and_headers_follow_mode(qtbot, store, import_series):
    a = import_series("BAG-A", 3)
    b = import_series("BAG-B", 2)
    airport = ScanList(store, "airport")
    qtbot.addWidget(airport)
    model = airport.scan_model
    assert model.headerData(COL_ID, Qt.Orientation.Horizontal) == "Bag / OOI"
    assert model.uids() == [b, a]  # newest first
    assert model.index(1, COL_ID).data() == "BAG-A"
    assert model.index(1, COL_IMAGES).data() == "3"
    clinic = ScanList(store, "clinic")
    qtbot.addWidget(clinic)
    assert clinic.scan_model.headerData(COL_ID, Qt.Orientation.Horizontal) == "Patient"


def test_new_series_is_inserted_without_reset_and_selection_stays(qtbot, store, import_series):
    a = import_series("BAG-A")
    b = import_series("BAG-B")
    view = ScanList(store)
    qtbot.addWidget(view)
    model = view.scan_model
    counts = Counter(model)
    chosen = []
    view.seriesChosen.connect(lambda uid, explicit: chosen.append((uid, explicit)))
    view.select_series(a, explicit=True)
    assert chosen == [(a, True)]
    model.mark_viewed(a)

    c = import_series("BAG-C")
    view._on_series_changed({c})
    assert counts.resets == 0 and counts.inserts == 1
    assert model.uids()[0] == c
    assert view.current_series() == a  # the selection followed its row
    assert chosen == [(a, True)]  # ...and nobody re-chose anything
    assert model.uids() == [c, b, a]


def test_growing_series_updates_its_row(qtbot, store, ct_files):
    view = ScanList(store)
    qtbot.addWidget(view)
    model = view.scan_model
    paths = ct_files(5, series_uid="1.2.826.0.1.3680043.8.498.1")
    store.import_paths(paths[:2])
    view._on_series_changed({"1.2.826.0.1.3680043.8.498.1"})
    assert model.index(0, COL_IMAGES).data() == "2"
    assert model.index(0, COL_STATUS).data(STATUS_ROLE) == "receiving"
    counts = Counter(model)
    changed = []
    model.dataChanged.connect(lambda tl, br, roles: changed.append(tl.row()))
    store.import_paths(paths[2:])
    view._on_series_changed({"1.2.826.0.1.3680043.8.498.1"})
    assert model.index(0, COL_IMAGES).data() == "5"
    assert changed == [0]
    assert counts.inserts == counts.resets == 0


def test_pending_first_and_the_open_scan_does_not_jump(qtbot, store, import_series):
    a = import_series("BAG-A")
    b = import_series("BAG-B")
    c = import_series("BAG-C")
    view = ScanList(store)
    qtbot.addWidget(view)
    model = view.scan_model
    assert model.uids() == [c, b, a]
    model.mark_viewed(c)
    assert model.uids() == [c, b, a]  # the open scan keeps its place...
    assert model.is_viewed(c)
    model.mark_viewed(b)
    assert model.uids() == [b, a, c]  # ...until another opens: viewed ones go below pending
    model.mark_viewed(a)
    assert model.uids() == [a, c, b]  # a still sorts as pending while open; b, c newest first
    view._on_series_changed(set())
    d = import_series("BAG-D")
    view._on_series_changed({d})
    assert model.uids()[0] == d


def test_keyboard_navigation_chooses_explicitly(qtbot, store, import_series):
    a = import_series("BAG-A")
    b = import_series("BAG-B")
    view = ScanList(store)
    qtbot.addWidget(view)
    view.show()
    chosen = []
    view.seriesChosen.connect(lambda uid, explicit: chosen.append((uid, explicit)))
    activated = []
    view.activatedSeries.connect(activated.append)
    view.select_series(b)  # programmatic
    assert chosen == [(b, False)]
    view.setFocus()
    qtbot.keyClick(view, Qt.Key.Key_Down)
    assert chosen[-1] == (a, True)
    qtbot.keyClick(view, Qt.Key.Key_Return)
    assert activated == [a]
    qtbot.keyClick(view, Qt.Key.Key_Up)
    assert chosen[-1] == (b, True)


def test_status_turns_from_receiving_to_new(qtbot, store, import_series, monkeypatch):
    import station.ui.scan_list as scan_list

    monkeypatch.setattr(scan_list, "RECEIVING_S", 0.2)
    a = import_series("BAG-A")
    view = ScanList(store)
    qtbot.addWidget(view)
    view._on_series_changed({a})
    index = view.scan_model.index(0, COL_STATUS)
    assert index.data(STATUS_ROLE) == "receiving"
    qtbot.waitUntil(lambda: index.data(STATUS_ROLE) == "new", timeout=3000)
    qtbot.waitUntil(lambda: not view.scan_model._status_timer.isActive(), timeout=3000)


def test_formatting_helpers():
    assert human_size(512) == "512 B"
    assert human_size(35_600_000) == "35.6 MB"
    assert human_size(350_000_000) == "350 MB"
    now = time.mktime((2026, 11, 22, 12, 0, 0, 0, 0, -1))
    assert received_text(now - 60, now) == "11:59:00"
    assert received_text(now - 86400 * 2, now) == "20 Nov 12:00"
