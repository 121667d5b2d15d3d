"""Routing panel: reads the receiver process's outbox read-only and shows jobs, states,
reasons, retries and hook counters; follows changes on its timer."""

from __future__ import annotations

import time
import textwrap

from PySide6.QtCore import Qt
from PySide6.QtWidgets import QMainWindow

from station.core.config import load_settings
from station.core.hooks.runner import ScanCompleted
from station.core.routing.outbox import Outbox
from station.ui.routing_panel import RoutingPanel, hooks_summary, make_routing_dock


def scan(key: str, patient: str, modality: str = "CT", n: int = 3) -> ScanCompleted:
    return ScanCompleted(key, patient, "ST-" + key, "1.2.3.4.5.6.7.8.9.10." + key, modality,
                         ("1.2.840.10008.5.1.4.1.1.2",), tuple(f"/s/{key}/{i}" for i in range(n)), n, n)


def test_panel_lists_jobs_unsent_first_with_reasons_and_follows_the_outbox(qtbot, tmp_path):
    path = tmp_path / "store" / "outbox.sqlite3"
    panel = RoutingPanel(path, interval_ms=50)
    qtbot.addWidget(panel)
    assert panel.model.rowCount() == 0
    assert "no outbox yet" in panel.summary.text()

    box = Outbox(path)
    try:
        now = time.time()
        sent = box.enqueue(scan("A", "BAG-A"), "pacs", "dimse", "rule 1")
        box.claim_due("pacs")
        box.mark_sent(sent.id)
        failing = box.enqueue(scan("B", "BAG-B"), "pacs", "dimse", "rule 1")
        box.claim_due("pacs")
        box.mark_failed(failing.id, "association with PACS at 10.0.0.5:104 aborted", retry_at=now + 12)
        box.enqueue(scan("C", "BAG-C", "TDR", 1), "archive", "stowrs", "hook forward_alarms")
        box.set_status("hooks", {"pid": 1, "scripts": ["forward_alarms", "decisions_csv"],
                                 "counters": {"total": {"calls": 40, "failures": 2, "slow": 1, "dropped": 0,
                                                        "queued": 0, "busy_s": 0.0}, "scripts": {}}})
        with qtbot.waitSignal(panel.countsChanged, timeout=3000) as blocker:
            pass
        assert blocker.args[0] == {"pending": 1, "sending": 0, "failing": 1, "sent": 1}
        model = panel.model

        def cell(row: int, name: str) -> str:
            return model.index(row, model.COLUMNS.index(name)).data()

        assert [cell(r, "State") for r in range(3)] == ["pending", "failing", "sent"]
        assert [cell(r, "ID") for r in range(3)] == ["BAG-C", "BAG-B", "BAG-A"]
        assert cell(0, "Next retry") == "now" and cell(0, "Reason") == "hook forward_alarms"
        assert cell(1, "Next retry").startswith("in 1") and cell(1, "Attempts") == "1"
        assert cell(1, "Reason") == "association with PACS at 10.0.0.5:104 aborted"
        assert cell(2, "Next retry") == "" and cell(2, "Via") == "dimse"
        assert "last error: association with PACS" in model.index(1, 0).data(Qt.ItemDataRole.ToolTipRole)
        assert model.headerData(1, Qt.Orientation.Horizontal) == "Bag / OOI"
        assert panel.summary.text() == "Routing: 1 pending · 1 failing · 1 sent"
        assert panel.hooks.text() == "Hooks: 2 scripts · 40 calls · 2 failed · 1 slow · 0 dropped"

        # The receiver process sends the failing job: the panel follows on its timer.
        job = box.claim_due("pacs", now=now + 13)
        box.mark_sent(job.id)
        qtbot.waitUntil(lambda: panel.summary.text() == "Routing: 1 pending · 0 failing · 2 sent", timeout=3000)
        panel.table.grab().save(str(tmp_path / "routing_panel.png"))
    finally:
        box.close()
        panel.shutdown()


def test_hooks_summary_says_when_the_status_is_stale():
    status = ({"scripts": ["a"], "counters": {"total": {"calls": 1, "failures": 0, "slow": 0, "dropped": 3,
                                                         "busy_s": 42.0}}}, 1000.0)
    text = hooks_summary(status, now=1100.0)
    assert text.startswith("Hooks: 1 script · 1 calls · 0 failed · 0 slow · 3 dropped · one busy for 42 s")
    assert "is the receiver running?" in text
    assert hooks_summary(None) == "" and hooks_summary(({"counters": None}, 0.0)) == ""


def test_make_routing_dock_reads_the_configured_outbox(qtbot, tmp_path):
    config = tmp_path / "station.toml"
    config.write_text(textwrap.dedent(f"""
        [store]
        path = "{tmp_path / 'store'}"
        [ui]
        mode = "clinic"
    """))
    with Outbox(tmp_path / "store" / "outbox.sqlite3") as box:
        box.enqueue(scan("A", "PAT-1"), "pacs", "dimse")
    window = QMainWindow()
    qtbot.addWidget(window)
    dock = make_routing_dock(window, load_settings(config))
    window.addDockWidget(Qt.DockWidgetArea.BottomDockWidgetArea, dock)
    panel = dock.widget()
    assert isinstance(panel, RoutingPanel)
    assert panel.model.rowCount() == 1 and panel.model.headerData(1, Qt.Orientation.Horizontal) == "Patient"
    panel.shutdown()
