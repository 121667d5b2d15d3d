"""The alert panel over an AlertBook: order, colours, decisions, activation, mute."""

from __future__ import annotations


import pytest
from PySide6.QtCore import Qt

from station.core.synth import bags as synth
from station.core.triage.alerts import AlertBook
from station.core.dicos import Algorithm, Pto, scan_ref_from_volume, write_machine_tdr
from station.core.imaging.volume import load_volume
from station.ui.triage.alert_panel import SEVERITY_COLOURS, AlertPanel


@pytest.fixture
def book(store, tmp_path):
    """Two scans: one with a HIGH_THREAT and an ANOMALY from an ATR, one with a THREAT."""
    for seed, flags in ((3, ("HIGH_THREAT", "ANOMALY")), (5, ("THREAT",))):
        bag = synth.make_bag_volume(size=64, slices=24, threats=1, seed=seed)
        (ct,) = [f for f in synth.write_ct_series(bag, tmp_path / f"bag{seed}", dicos=True) if f.suffix == ".dcm"]
        store.import_file(ct)
        (t,) = bag.threats
        ptos = [Pto(id=i + 1, base=tuple(map(float, t.base_xyz)), extent=tuple(map(float, t.extent_xyz)),
                    flag="UNKNOWN" if f == "ANOMALY" else f, category="ANOMALY" if f == "ANOMALY" else "EXPLOSIVE",
                    probability=0.5 + 0.1 * i) for i, f in enumerate(flags)]
        out = tmp_path / f"tdr{seed}.dcm"
        write_machine_tdr(ptos, out, scan=scan_ref_from_volume(load_volume([ct])),
                          algorithm=Algorithm("Acme ATR", "7"), processing_ms=1.0)
        store.import_file(out)
    b = AlertBook(store)
    b.load()
    return b


def test_rows_are_ordered_and_coloured_by_severity(qtbot, book):
    panel = AlertPanel(book)
    qtbot.addWidget(panel)
    model = panel.model
    assert model.rowCount() == 3
    severities = [model.alert_at(r).severity for r in range(3)]
    assert severities == ["HIGH_THREAT", "THREAT", "ANOMALY"]
    colour = model.data(model.index(0, 1), Qt.ItemDataRole.ForegroundRole).color().name()
    assert colour == SEVERITY_COLOURS["HIGH_THREAT"]
    assert model.data(model.index(0, 5)) == "Acme ATR 7"
    assert model.headerData(4, Qt.Orientation.Horizontal) == "Bag / OOI"
    assert "3 unresolved" in panel.count_label.text()


def test_a_decision_dims_its_scan_s_alerts_and_moves_them_down(qtbot, book):
    panel = AlertPanel(book)
    qtbot.addWidget(panel)
    first = panel.model.alert_at(0)
    book.record_decision(first.series_uid, "CLEAR", "OP-2")
    panel.refresh()
    assert "1 unresolved" in panel.count_label.text()
    assert panel.model.alert_at(0).severity == "THREAT"  # the unresolved one now leads
    last = panel.model.rowCount() - 1
    assert panel.model.data(panel.model.index(last, 7)) == "Clear"


def test_activation_and_mute(qtbot, book):
    panel = AlertPanel(book)
    qtbot.addWidget(panel)
    with qtbot.waitSignal(panel.alertActivated) as blocker:
        panel.select_alert(panel.model.alert_at(1).key)
    assert blocker.args[0].severity == "THREAT"
    assert not panel.muted
    with qtbot.waitSignal(panel.muteToggled):
        panel.set_muted(True)
    assert panel.muted and panel.mute_button.text() == "Sound off"


def test_reports_are_not_listed_as_scans(qtbot, book, store):
    from station.ui.scan_list import ScanListModel

    model = ScanListModel(store, "airport")
    model.refresh()
    assert model.rowCount() == 2
    assert {model.series_at(r).modality for r in range(2)} == {"CT"}


def test_decision_buttons_ask_for_a_decision(qtbot, book):
    panel = AlertPanel(book)
    qtbot.addWidget(panel)
    with qtbot.waitSignal(panel.decisionRequested) as blocker:
        panel.decision_buttons["SUSPECT"].click()
    assert blocker.args == ["SUSPECT"]
