"""Triage queue, append-only audit log and the shift report (issue 7), without Qt."""

from __future__ import annotations

import sqlite3

import pytest

from station.core.triage.audit import AuditLog
from station.core.triage.report import shift_stats, write_csv
from station.core.triage.queue import ScanInfo, TriageQueue, atr_decision


def test_queue_arrival_order_alarms_first_next_previous_decided():
    q = TriageQueue()
    q.update([ScanInfo("a", 1.0), ScanInfo("b", 2.0, alarm=True), ScanInfo("c", 3.0),
              ScanInfo("d", 0.5, decided=True), ScanInfo("t", 0.1, modality="TDR")])
    assert q.pending() == ["a", "b", "c"]
    assert q.next() == "a" and q.next() == "b"
    assert q.decided("b") == "c"
    assert q.previous() == "b"  # look again at what was just decided
    q.set_alarms_first(True)
    q.reopen("b")
    assert q.pending() == ["b", "a", "c"]
    assert q.decided("a") == "c" and q.decided("c") == "b" and q.decided("b") is None


def test_enter_accepts_the_atr():
    assert atr_decision("ALARM") == "SUSPECT"
    assert atr_decision("CLEAR") == "CLEAR"
    assert atr_decision(None) is None


def test_audit_log_is_append_only_and_undo_is_an_event(tmp_path):
    with AuditLog(tmp_path) as log:
        log.sign_in("OP", at=100.0)
        log.shown("OP", "s1", "BAG1", at=100.0)
        first = log.decision("OP", "s1", "threat", shown_at=100.0, at=104.0, atr="ALARM", marks={"k#1": "THREAT"})
        log.decision("OP", "s2", "CLEAR", shown_at=104.0, at=105.0, atr="CLEAR")
        last = log.last_decision("OP")
        assert last is not None and last.series_uid == "s2"
        log.undo("OP", last, at=106.0)
        assert [d.series_uid for d in log.decisions()] == ["s1"]
        assert log.decisions()[0].seconds == pytest.approx(4.0) and log.decisions()[0].id == first
        log.decision("OP", "s2", "SUSPECT", shown_at=104.0, at=107.0, atr="CLEAR")
        decided = log.decisions()
        assert [(d.series_uid, d.decision) for d in decided] == [("s1", "THREAT"), ("s2", "SUSPECT")]
        assert [e.kind for e in log.events()] == ["signin", "shown", "decision", "decision", "undo", "decision"]
        assert log.decisions(since=106.5)[0].series_uid == "s2"
        with pytest.raises(sqlite3.DatabaseError, match="append-only"):
            log._db.execute("UPDATE events SET operator = 'X'")
        with pytest.raises(sqlite3.DatabaseError, match="append-only"):
            log._db.execute("DELETE FROM events WHERE kind = 'undo'")
        with pytest.raises(ValueError):
            log.decision("OP", "s3", "MAYBE")
        with pytest.raises(ValueError):
            log.decision(" ", "s3", "CLEAR")
        stats = shift_stats(decided)
        assert stats["scans"] == 2 and stats["median_seconds"] == pytest.approx(3.5)
        assert stats["alarm_rate"] == pytest.approx(0.5) and stats["atr_agreement"] == pytest.approx(0.5)
        out = write_csv(decided, tmp_path / "r.csv")
        lines = out.read_text().splitlines()
        assert lines[0].startswith("scan,bag,decision,operator,decided_at,shown_at,seconds_to_decision")
        assert len(lines) == 3
