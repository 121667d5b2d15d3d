"""Outbox: idempotent jobs per scan and remote, backoff, crash recovery, study state,
read-only access from another process's point of view."""

from __future__ import annotations

import sqlite3
import textwrap

import pytest

from station.core.config import ConfigError, load_settings
from station.core.hooks.runner import ScanCompleted
from station.core.routing.outbox import Outbox, OutboxReader, outbox_path, retry_delay


def scan(key: str = "SE1", paths: tuple[str, ...] = ("/s/a", "/s/b"), study: str = "ST1", **kw) -> ScanCompleted:
    return ScanCompleted(key, "BAG1", study, key, kw.pop("modality", "CT"), ("1.2.840.10008.5.1.4.1.1.2",), paths,
                         len(paths), len(paths), **kw)


def test_retry_delay_doubles_up_to_the_maximum():
    assert [retry_delay(n) for n in range(1, 8)] == [1, 2, 4, 8, 15, 15, 15]
    assert retry_delay(3, 0.5, 30) == 2.0


def test_a_scan_is_queued_once_per_remote_and_late_instances_are_added_or_sent_after(tmp_path):
    with Outbox(tmp_path / "o.sqlite3") as box:
        job = box.enqueue(scan(), "pacs", "dimse", "rule 1", now=100.0)
        assert job is not None and job.state == "pending" and job.paths == ("/s/a", "/s/b")
        assert box.enqueue(scan(), "pacs", "dimse", "rule 1") is None  # idempotent
        assert box.enqueue(scan(), "archive", "stowrs") is not None  # another remote
        grown = box.enqueue(scan(paths=("/s/a", "/s/b", "/s/c")), "pacs", "dimse")
        assert grown is not None and grown.id == job.id and grown.instances == 3  # unsent: extended
        claimed = box.claim_due("pacs", now=200.0)
        assert claimed is not None and claimed.id == job.id
        assert box.job(job.id).state == "sending"
        box.mark_sent(job.id)
        late = box.enqueue(scan(paths=("/s/a", "/s/b", "/s/c", "/s/d")), "pacs", "dimse")
        assert late is not None and late.part == 1 and late.paths == ("/s/d",)  # sent: only the rest
        assert box.counts() == {"pending": 2, "sending": 0, "failing": 0, "sent": 1}
        assert box.job(job.id).sent_count == 1


def test_failures_back_off_a_down_remote_waits_as_a_whole_and_a_crash_resends(tmp_path):
    path = tmp_path / "o.sqlite3"
    box = Outbox(path)
    a = box.enqueue(scan("A"), "pacs", "dimse", now=10.0)
    b = box.enqueue(scan("B"), "pacs", "dimse", now=10.0)
    assert box.claim_due("pacs", now=5.0) is None  # not due yet
    job = box.claim_due("pacs", now=10.0)
    assert job.id == a.id
    box.mark_failed(a.id, "connection refused", retry_at=11.0, now=10.0)
    assert box.defer_remote("pacs", "connection refused", 11.0, now=10.0) == 2
    failing = {j.id: j for j in box.jobs()}
    assert failing[a.id].attempts == 1 and failing[b.id].attempts == 0
    assert all(j.state == "failing" and j.last_error == "connection refused" for j in failing.values())
    assert box.claim_due("pacs", now=10.5) is None
    assert box.next_due("pacs") == 11.0
    assert box.claim_due("pacs", now=11.0).id == a.id  # left "sending": the process dies here
    box.close()
    with Outbox(path) as again:
        assert again.job(a.id).state == "pending"  # sent again, whole
        assert again.retry_now("pacs", now=11.0) == 0


def test_study_state_keeps_the_worst_alarm_and_the_latest_decision(tmp_path):
    with Outbox(tmp_path / "o.sqlite3") as box:
        assert box.study_state("ST1") == ("", "")
        assert box.update_study("ST1", alarm="CLEAR")
        assert box.update_study("ST1", alarm="ALARM")
        assert not box.update_study("ST1", alarm="CLEAR")  # a second ATR's CLEAR does not clear it
        assert box.update_study("ST1", decision="SUSPECT")
        assert box.update_study("ST1", decision="CLEAR")
        assert box.study_state("ST1") == ("ALARM", "CLEAR")
        box.record_scan(scan("SE1"))
        box.record_scan(scan("T1", ("/s/t",), is_report=True, modality="TDR"))
        scans = box.scans_of_study("ST1")
        assert [s.key for s in scans] == ["SE1", "T1"] and scans[0].alarm == "ALARM" and scans[1].is_report
        assert box.scan_instances("SE1") == 2 and box.scan_instances("nope") is None
        assert box.add_study_route("ST1", "pacs", "dimse", "hook x")
        assert not box.add_study_route("ST1", "pacs", "dimse", "hook x")
        assert [r.remote for r in box.study_routes("ST1")] == ["pacs"]


def test_prune_forgets_old_sent_jobs_only(tmp_path):
    with Outbox(tmp_path / "o.sqlite3") as box:
        old = box.enqueue(scan("A"), "pacs", "dimse", now=0.0)
        box.mark_sent(old.id, now=0.0)
        box.enqueue(scan("B"), "pacs", "dimse", now=0.0)
        assert box.prune(1.0, now=2 * 86400.0) == 1
        assert [j.scan_key for j in box.jobs()] == ["B"]


def test_reader_is_read_only_and_works_before_the_outbox_exists(tmp_path):
    path = tmp_path / "o.sqlite3"
    reader = OutboxReader(path)
    assert not reader.available and reader.jobs() == [] and reader.counts()["pending"] == 0
    with Outbox(path) as box:
        box.enqueue(scan(), "pacs", "dimse")
        box.set_status("hooks", {"calls": 3})
        assert reader.available
        assert [j.scan_key for j in reader.jobs()] == ["SE1"]
        assert reader.status("hooks")[0] == {"calls": 3}
        with pytest.raises(sqlite3.OperationalError):
            reader._conn.execute("DELETE FROM jobs")
    assert reader.counts()["pending"] == 1  # still readable after the writer closed
    reader.close()


def test_outbox_settings_and_path(tmp_path):
    config = tmp_path / "station.toml"
    config.write_text(textwrap.dedent(f"""
        [store]
        path = "{tmp_path / 'store'}"
        [outbox]
        retry_max_s = 30
    """))
    settings = load_settings(config)
    assert settings.outbox.retry_max_s == 30.0
    assert outbox_path(settings) == tmp_path / "store" / "outbox.sqlite3"
    config.write_text(f'[outbox]\npath = "{tmp_path / "x.db"}"\n')
    assert outbox_path(load_settings(config)) == tmp_path / "x.db"
    for text in ('[outbox]\nretry_min_s = 20\nretry_max_s = 10\n', '[outbox]\nretries = 3\n',
                 '[outbox]\npath = 3\n'):
        config.write_text(text)
        with pytest.raises(ConfigError):
            load_settings(config)
