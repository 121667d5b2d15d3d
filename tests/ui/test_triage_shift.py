"""Keyboard triage (issue 7): a whole shift driven by key events only, then the audit log,
the operator TDRs and the report; plus the keymap override, sign-in and the statistics."""

from __future__ import annotations

import csv
import sqlite3
import threading
import time

import pydicom
import pytest
from PySide6.QtCore import Qt, QTimer
from PySide6.QtWidgets import QApplication, QWidget

from station.app.cli import main as cli_main
from station.core.synth import bags as synth
from station.core.triage.audit import AuditLog
from station.core.config import Settings
from station.core.dicos import Algorithm, Pto, read_tdr, scan_ref_from_volume, write_machine_tdr
from station.core.dicom.sopclasses import DICOS_TDR
from station.core.imaging.volume import load_volume
from station.ui.main_window import MainWindow
from station.ui.triage.controller import CheatSheet, SignInDialog, ask_operator

N_SCANS = 20
ALARMED = {1, 4, 7, 10, 13, 16}  # ATR ALARM with one PTO
ATR_CLEAR = {2, 5, 8}  # ATR CLEAR (no PTO); the rest have no TDR at all


@pytest.fixture
def settings(tmp_path) -> Settings:
    s = Settings()
    s.store.path = tmp_path / "store"
    s.receiver.port = 0
    s.ui.keymap = str(tmp_path / "no-user-keymap.toml")  # never the developer's own keymap
    return s


@pytest.fixture
def window(qtbot, store, bridge, settings):
    w = MainWindow(store, bridge, settings)
    qtbot.addWidget(w)
    w.show()
    w.activateWindow()
    qtbot.waitExposed(w)
    yield w
    w.close()


def _bags(tmp_path, n: int):
    """n small DICOS CT bags (+ machine TDRs for some), in arrival order: [(ct, tdr | None)]."""
    out = []
    for i in range(n):
        bag = synth.make_bag_volume(size=32, slices=8, threats=1 if i in ALARMED else 0, seed=100 + i)
        (ct,) = [f for f in synth.write_ct_series(bag, tmp_path / f"bag{i}", dicos=True) if f.suffix == ".dcm"]
        tdr = None
        if i in ALARMED or i in ATR_CLEAR:
            ptos = []
            if i in ALARMED:
                (t,) = bag.threats
                ptos = [Pto(id=1, base=tuple(map(float, t.base_xyz)), extent=tuple(map(float, t.extent_xyz)),
                            flag="THREAT", category="EXPLOSIVE", probability=0.8)]
            tdr = tmp_path / f"tdr{i}.dcm"
            write_machine_tdr(ptos, tdr, scan=scan_ref_from_volume(load_volume([ct])),
                              algorithm=Algorithm("Acme ATR", "7"), processing_ms=1.0)
        out.append((ct, tdr))
    return out


def _arrive(store, bus, paths):
    def work():
        for p in paths:
            bus.publish(store.import_file(p, source="SCANNER@127.0.0.1:4000"))
            time.sleep(0.002)  # distinct arrival times: the queue's order

    t = threading.Thread(target=work, name="fake-association")
    t.start()
    t.join()


def _key(qtbot, window, key, modifier=Qt.KeyboardModifier.NoModifier):
    """A key press where the analyst's focus is (whatever widget has it in the window)."""
    target = QApplication.focusWidget() or window
    if QWidget.window(target) is not window:
        target = window
    qtbot.keyClick(target, key, modifier)


def test_a_whole_shift_with_the_keyboard_only(qtbot, window, store, bus, tmp_path):
    bags = _bags(tmp_path, N_SCANS)
    window.set_operator("OP-7")
    _arrive(store, bus, [p for ct, tdr in bags for p in (ct, tdr) if p is not None])
    series_of = {i: str(pydicom.dcmread(ct, stop_before_pixels=True).SeriesInstanceUID) for i, (ct, _) in enumerate(bags)}
    qtbot.waitUntil(lambda: len(window.triage.queue.pending()) == N_SCANS, timeout=10000)
    qtbot.waitUntil(lambda: len(window.alert_book.unresolved()) == len(ALARMED), timeout=10000)

    # the cheat sheet: F1 shows every key; Esc closes it
    _key(qtbot, window, Qt.Key.Key_F1)
    sheet = window.triage.cheat_sheet
    assert isinstance(sheet, CheatSheet) and sheet.isVisible()
    texts = sheet.texts()
    assert ("Triage", "1", "Decide CLEAR, then the next pending scan") in texts
    assert any(r[0] == "Viewer" for r in texts) and any(r[0] == "Window" and r[1] == "Ctrl+Q" for r in texts)
    qtbot.keyClick(sheet, Qt.Key.Key_Escape)
    assert not sheet.isVisible()
    window.activateWindow()

    # Space: the first pending scan in arrival order
    _key(qtbot, window, Qt.Key.Key_Space)
    assert window.viewer.series_uid == series_of[0]

    keys = {}  # scan index -> key pressed (the plan), all in arrival order
    for i in range(N_SCANS):
        if i in ALARMED:
            keys[i] = Qt.Key.Key_3 if i == 4 else (Qt.Key.Key_Return if i % 2 else Qt.Key.Key_2)
        elif i in ATR_CLEAR:
            keys[i] = Qt.Key.Key_Return
        else:
            keys[i] = Qt.Key.Key_1
    expected = {}
    for i in range(N_SCANS):
        assert window.viewer.series_uid == series_of[i], f"scan {i} is not on screen"
        if i == 4:  # mark the alert as a threat before deciding
            _key(qtbot, window, Qt.Key.Key_N, Qt.KeyboardModifier.AltModifier)
            _key(qtbot, window, Qt.Key.Key_T, Qt.KeyboardModifier.AltModifier)
        _key(qtbot, window, keys[i])
        expected[i] = {Qt.Key.Key_1: "CLEAR", Qt.Key.Key_2: "SUSPECT", Qt.Key.Key_3: "THREAT",
                       Qt.Key.Key_Return: "SUSPECT" if i in ALARMED else "CLEAR"}[keys[i]]
        if i == 10:  # second thoughts: undo (Ctrl+Z) brings scan 10 back; decide it THREAT
            _key(qtbot, window, Qt.Key.Key_Z, Qt.KeyboardModifier.ControlModifier)
            assert window.viewer.series_uid == series_of[10]
            _key(qtbot, window, Qt.Key.Key_3)
            expected[10] = "THREAT"
    assert window.triage.queue.pending() == []
    assert "No pending scans" in window.statusBar().currentMessage() or window.statusBar().currentMessage()

    # P walks back through what was shown
    _key(qtbot, window, Qt.Key.Key_P)
    assert window.viewer.series_uid == series_of[N_SCANS - 2]

    # -- the audit log -----------------------------------------------------------------------
    audit = AuditLog(store.root)
    try:
        decisions = audit.decisions()
        # decision order: 0..9, then 10 (decided again after its undo), 11..19
        order = [series_of[i] for i in range(10)] + [series_of[i] for i in (10, 11)] + \
            [series_of[i] for i in range(12, N_SCANS)]
        assert [d.series_uid for d in decisions] == order
        by_scan = {d.series_uid: d for d in decisions}
        assert len(decisions) == N_SCANS
        assert {i: by_scan[series_of[i]].decision for i in range(N_SCANS)} == expected
        assert all(d.operator == "OP-7" for d in decisions)
        assert all(d.seconds is not None and d.seconds >= 0 for d in decisions)
        assert by_scan[series_of[4]].marks and set(by_scan[series_of[4]].marks.values()) == {"THREAT"}
        assert by_scan[series_of[1]].atr == "ALARM" and by_scan[series_of[2]].atr == "CLEAR"
        assert by_scan[series_of[0]].atr == ""
        undos = audit.events(kind="undo")
        assert len(undos) == 1 and undos[0].series_uid == series_of[10] and undos[0].decision == "SUSPECT"
        assert len(audit.events(kind="decision")) == N_SCANS + 1  # history keeps the undone one
        assert decisions[-1].series_uid == series_of[N_SCANS - 1]
        # nothing edits history
        with pytest.raises(sqlite3.DatabaseError, match="append-only"):
            audit._db.execute("UPDATE events SET decision = 'CLEAR'")
        with pytest.raises(sqlite3.DatabaseError, match="append-only"):
            audit._db.execute("DELETE FROM events")
    finally:
        audit.close()

    # -- the scan state and the operator TDRs --------------------------------------------------
    states = store.scan_states()
    assert {i: states[series_of[i]][2] for i in range(N_SCANS)} == expected
    operator_tdrs = [t for t in (read_tdr(r.path) for r in store.instances_of_class(DICOS_TDR))
                     if t.tdr_type == "OPERATOR"]
    # one per alarmed scan, plus the undone decision's (kept: history) on scan 10
    assert len(operator_tdrs) == len(ALARMED) + 1
    assert not window.alert_book.unresolved()
    decisions_in_tdrs = sorted(t.operator_decision for t in operator_tdrs)
    assert decisions_in_tdrs.count("THREAT") == 2

    # -- the report ----------------------------------------------------------------------------
    out_csv = tmp_path / "shift.csv"
    assert cli_main(["report", "--store", str(store.root), "--format", "csv", "--out", str(out_csv)]) == 0
    with out_csv.open(encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == N_SCANS
    assert [r["scan"] for r in rows] == [d.series_uid for d in decisions]
    assert {r["decision"] for r in rows} == {"CLEAR", "SUSPECT", "THREAT"}
    assert all(r["operator"] == "OP-7" and r["decided_at"] and r["seconds_to_decision"] != "" for r in rows)
    out_xlsx = tmp_path / "shift.xlsx"
    assert cli_main(["report", "--store", str(store.root), "--format", "xlsx", "--out", str(out_xlsx)]) == 0
    from openpyxl import load_workbook

    wb = load_workbook(out_xlsx)
    assert wb.sheetnames == ["Decisions", "Summary"]
    assert wb["Decisions"].max_row == N_SCANS + 1
    summary = {r[0]: r[1] for r in wb["Summary"].iter_rows(min_row=2, values_only=True)}
    assert summary["scans decided"] == N_SCANS
    assert summary["alarm rate"] == pytest.approx(len(ALARMED) / N_SCANS)

    # -- the statistics dialog (Ctrl+Shift+S) ------------------------------------------------
    _key(qtbot, window, Qt.Key.Key_S, Qt.KeyboardModifier.ControlModifier | Qt.KeyboardModifier.ShiftModifier)
    dialog = window.triage.stats_dialog
    assert dialog is not None and dialog.isVisible()
    assert dialog.stats["scans"] == N_SCANS
    # ATR agreement: every ALARM got SUSPECT/THREAT, every ATR CLEAR got CLEAR
    assert dialog.stats["atr_agreement"] == pytest.approx(1.0)
    assert "Median decision time" in dialog.summary.text()
    dialog.export(str(tmp_path / "from-dialog.csv"))
    assert len((tmp_path / "from-dialog.csv").read_text().splitlines()) == N_SCANS + 1
    dialog.close()


def test_an_undone_alarm_is_unresolved_again_after_a_restart(qtbot, store, bridge, settings, bus, tmp_path):
    ((ct, tdr),) = [b for i, b in enumerate(_bags(tmp_path, 2)) if i == 1]
    first = MainWindow(store, bridge, settings)
    qtbot.addWidget(first)
    first.show()
    first.activateWindow()
    first.set_operator("OP-5")
    _arrive(store, bus, [ct, tdr])
    qtbot.waitUntil(lambda: len(first.alert_book.unresolved()) == 1, timeout=5000)
    _key(qtbot, first, Qt.Key.Key_N)
    _key(qtbot, first, Qt.Key.Key_3)
    assert not first.alert_book.unresolved()
    _key(qtbot, first, Qt.Key.Key_Z, Qt.KeyboardModifier.ControlModifier)
    assert len(first.alert_book.unresolved()) == 1
    first.close()
    again = MainWindow(store, bridge, settings)  # the operator TDR of the undone THREAT is in the store
    qtbot.addWidget(again)
    try:
        assert len(again.alert_book.unresolved()) == 1
        assert len(again.triage.queue.pending()) == 1
    finally:
        again.close()


def test_undo_only_within_its_window(qtbot, window, store, bus, tmp_path, ct_files):
    window.set_operator("OP-1")
    window.triage.undo_window_s = 0.2
    _arrive(store, bus, ct_files(3))
    qtbot.waitUntil(lambda: len(window.triage.queue.pending()) == 1, timeout=5000)
    _key(qtbot, window, Qt.Key.Key_N)
    uid = window.viewer.series_uid
    _key(qtbot, window, Qt.Key.Key_1)  # no machine TDR: audit log and scan state only
    assert store.scan_states()[uid][2] == "CLEAR"
    time.sleep(0.3)
    _key(qtbot, window, Qt.Key.Key_Z, Qt.KeyboardModifier.ControlModifier)
    assert "Nothing to undo" in window.statusBar().currentMessage()
    assert store.scan_states()[uid][2] == "CLEAR"


def test_user_keymap_overrides_single_actions(qtbot, store, bridge, settings, tmp_path, bus, ct_files):
    user = tmp_path / "keymap.toml"
    user.write_text('[triage]\nclear = "F9"\n')
    settings.ui.keymap = str(user)
    w = MainWindow(store, bridge, settings)
    qtbot.addWidget(w)
    w.show()
    w.activateWindow()
    try:
        assert w.triage.keymap.keys["triage.clear"] == ["F9"]
        assert w.triage.keymap.keys["triage.suspect"] == ["2"]  # the rest stays default
        w.set_operator("OP-2")
        _arrive(store, bus, ct_files(2))
        qtbot.waitUntil(lambda: len(w.triage.queue.pending()) == 1, timeout=5000)
        _key(qtbot, w, Qt.Key.Key_Space)
        uid = w.viewer.series_uid
        _key(qtbot, w, Qt.Key.Key_1)
        assert store.scan_states().get(uid, (0, 0, ""))[2] == ""  # 1 no longer decides
        _key(qtbot, w, Qt.Key.Key_F9)
        assert store.scan_states()[uid][2] == "CLEAR"
    finally:
        w.close()


def test_sign_in_dialog_requires_an_id(qtbot):
    dialog = SignInDialog()
    qtbot.addWidget(dialog)
    assert not dialog.ok.isEnabled()
    qtbot.keyClicks(dialog.edit, "OP-9")
    assert dialog.ok.isEnabled() and dialog.operator == "OP-9"

    def fill():
        d = next(w for w in QApplication.topLevelWidgets() if isinstance(w, SignInDialog) and w.isVisible())
        d.edit.setText("OP-3")
        d.accept()

    QTimer.singleShot(50, fill)
    assert ask_operator(None) == "OP-3"


def test_a_threat_the_machine_missed_is_marked_and_decided_with_keys(qtbot, window, store, bus, tmp_path):
    """A scan without machine TDR: B, a drag around the object, 3: an operator TDR with the
    analyst's box as its own PTO, referencing the scan, which the toolkit reads."""
    from tests.ui.test_mpr_viewer import drag
    from tests.dicos_toolkit import toolkit_read

    ((ct, none),) = _bags(tmp_path, 1)  # scan 0 has no TDR
    assert none is None
    window.set_operator("OP-9")
    _arrive(store, bus, [ct])
    qtbot.waitUntil(lambda: len(window.triage.queue.pending()) == 1, timeout=10000)
    _key(qtbot, window, Qt.Key.Key_Space)
    viewer = window.viewer
    qtbot.waitUntil(lambda: viewer.volume is not None and viewer.slice_count == 8 and not viewer.is_busy(),
                    timeout=10000)
    viewer.set_crosshair(10, 10, 3)
    viewer.setFocus()
    qtbot.keyClick(viewer, Qt.Key.Key_B)
    assert viewer.tool == "mark"
    dz, dy, dx = viewer.volume.spacing_mm
    drag(viewer.pane("axial"), (4.5 * dx, 6.5 * dy), (12.5 * dx, 9.5 * dy))  # columns 4-12, rows 6-9
    assert (viewer.drawn_box.base, viewer.drawn_box.extent) == ((4.0, 6.0, 3.0), (9.0, 4.0, 1.0))

    _key(qtbot, window, Qt.Key.Key_3)
    (row,) = store.instances_of_class(DICOS_TDR)
    tdr = read_tdr(row.path)
    assert tdr.tdr_type == "OPERATOR" and tdr.operator_decision == "THREAT" and tdr.referenced_tdrs == ()
    (pto,) = tdr.ptos
    assert (pto.base, pto.extent, pto.flag) == ((4.0, 6.0, 3.0), (9.0, 4.0, 1.0), "THREAT")
    assert pto.referenced_instance.sop_instance_uid == pydicom.dcmread(ct, stop_before_pixels=True).SOPInstanceUID
    assert viewer.drawn_box is None  # the mark went into the TDR
    data = toolkit_read("tdr", row.path).get_data()
    assert (data["PTOs"][0]["Base"]["x"], data["PTOs"][0]["Extent"]["x"]) == (4.0, 9.0)
