"""The persistent outgoing queue of routing: one job per (scan, remote), in SQLite.

Why a database and not a list in memory: what must be forwarded has to survive a crash,
a restart or a PACS that is down for hours. The outbox lives next to the store
(``<store>/outbox.sqlite3`` unless ``[outbox] path`` says otherwise), in WAL mode so the
GUI process can read it (``OutboxReader``, read-only) while the receiver process writes.

Rules it keeps:

- A job is a whole scan: it is created only when the scan is complete, with the paths
  of all its instances, and a (re)send always sends all of them; a job interrupted in the
  middle of sending (crash) is pending again at the next start and is sent whole.
- Each scan goes to each remote once: jobs are unique per (scan, remote, part). A scan that
  grows after it was completed (late instances) gets its new paths added to its unsent job,
  or, if that was sent already, a follow-up part with only the new instances.
- Failed attempts are retried with exponential backoff, ``retry_min_s`` doubling up to
  ``retry_max_s`` (15 s by default); the state says why it failed.

Besides jobs it remembers completed scans, the alarm state and analyst decision of each
study (rules may match on them, and they often arrive after the scan), study routes
(``api.forward`` of a study: scans that complete later follow) and a small status table
(hook counters) for the GUI.

Configuration (``[outbox]``, every key optional; ``settings.outbox``, a
``station.core.config.OutboxSettings``)::

    [outbox]
    path = ""            # default: <store>/outbox.sqlite3
    retry_min_s = 1.0    # first retry after this long, doubling...
    retry_max_s = 15.0   # ...up to this
    keep_days = 7.0      # sent jobs and old scan records are pruned after this long
    stowrs_batch_mb = 64 # STOW-RS: at most this much per request

Thread safety: one connection guarded by a lock; every method may be called from any
thread. Pure core: sqlite3 only.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from station.core.config import OutboxSettings, Settings
from station.core.hooks.runner import ScanCompleted

LOGGER = logging.getLogger(__name__)

__all__ = [
    "Job",
    "JOB_STATES",
    "OUTBOX_NAME",
    "Outbox",
    "OutboxReader",
    "OutboxSettings",
    "outbox_path",
    "retry_delay",
]

OUTBOX_NAME = "outbox.sqlite3"
SCHEMA_VERSION = 1

JOB_STATES: tuple[str, ...] = ("pending", "sending", "failing", "sent")
"""pending: waiting for its first attempt; sending: being sent now; failing: the last
attempt failed (``last_error`` says why), retried at ``next_attempt_at``; sent: done."""

ALARM_RANK = {"": 0, "CLEAR": 1, "UNKNOWN": 2, "ALARM": 3}
"""A study's alarm state is the worst any machine TDR reported (UNKNOWN: an ATR aborted,
so the bag cannot count as cleared)."""

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS scans (
    scan_key      TEXT PRIMARY KEY,
    study_uid     TEXT NOT NULL,
    series_uid    TEXT NOT NULL,
    patient_id    TEXT NOT NULL DEFAULT '',
    modality      TEXT NOT NULL DEFAULT '',
    sop_classes   TEXT NOT NULL DEFAULT '[]',
    paths         TEXT NOT NULL DEFAULT '[]',
    instances     INTEGER NOT NULL DEFAULT 0,
    frames        INTEGER NOT NULL DEFAULT 0,
    is_report     INTEGER NOT NULL DEFAULT 0,
    reason        TEXT NOT NULL DEFAULT '',
    completed_at  REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS scans_by_study ON scans(study_uid);
CREATE TABLE IF NOT EXISTS studies (
    study_uid   TEXT PRIMARY KEY,
    alarm       TEXT NOT NULL DEFAULT '',
    decision    TEXT NOT NULL DEFAULT '',
    updated_at  REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS study_routes (
    study_uid   TEXT NOT NULL,
    remote      TEXT NOT NULL,
    via         TEXT NOT NULL,
    reason      TEXT NOT NULL DEFAULT '',
    created_at  REAL NOT NULL,
    PRIMARY KEY (study_uid, remote)
);
CREATE TABLE IF NOT EXISTS jobs (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    scan_key        TEXT NOT NULL,
    part            INTEGER NOT NULL DEFAULT 0,
    study_uid       TEXT NOT NULL DEFAULT '',
    series_uid      TEXT NOT NULL DEFAULT '',
    patient_id      TEXT NOT NULL DEFAULT '',
    modality        TEXT NOT NULL DEFAULT '',
    remote          TEXT NOT NULL,
    via             TEXT NOT NULL,
    reason          TEXT NOT NULL DEFAULT '',
    paths           TEXT NOT NULL,
    instances       INTEGER NOT NULL,
    state           TEXT NOT NULL DEFAULT 'pending',
    attempts        INTEGER NOT NULL DEFAULT 0,
    last_error      TEXT NOT NULL DEFAULT '',
    next_attempt_at REAL NOT NULL,
    created_at      REAL NOT NULL,
    updated_at      REAL NOT NULL,
    sent_at         REAL,
    sent_count      INTEGER NOT NULL DEFAULT 0,
    UNIQUE (scan_key, remote, part)
);
CREATE INDEX IF NOT EXISTS jobs_due ON jobs(remote, state, next_attempt_at);
CREATE TABLE IF NOT EXISTS status (key TEXT PRIMARY KEY, value TEXT NOT NULL, updated_at REAL NOT NULL);
"""


# --------------------------------------------------------------------------- settings


def outbox_path(settings: Settings) -> Path:
    """Where the outbox of ``settings`` (a ``station.core.config.Settings``) lives; the GUI
    uses this to find the receiver process's outbox."""
    configured = settings.outbox.path
    if configured:
        return Path(configured).expanduser()
    return Path(settings.store.path).expanduser() / OUTBOX_NAME


def retry_delay(attempts: int, min_s: float = 1.0, max_s: float = 15.0) -> float:
    """Seconds to wait after the ``attempts``-th failed attempt: min_s, 2*min_s, ... max_s."""
    return min(max_s, min_s * 2 ** max(0, min(attempts - 1, 30)))


# --------------------------------------------------------------------------- model


@dataclass(frozen=True)
class Job:
    """One row of the outbox, as the routing panel shows it."""

    id: int
    scan_key: str
    part: int
    study_uid: str
    series_uid: str
    patient_id: str
    modality: str
    remote: str
    via: str
    reason: str
    paths: tuple[str, ...]
    instances: int
    state: str
    attempts: int
    last_error: str
    next_attempt_at: float
    created_at: float
    updated_at: float
    sent_at: float | None
    sent_count: int


_JOB_COLUMNS = ("id, scan_key, part, study_uid, series_uid, patient_id, modality, remote, via, reason, paths,"
                " instances, state, attempts, last_error, next_attempt_at, created_at, updated_at, sent_at,"
                " sent_count")


def _job(row: tuple[Any, ...]) -> Job:
    values = list(row)
    values[10] = tuple(json.loads(values[10]))
    return Job(*values)


@dataclass
class StudyRoute:
    study_uid: str
    remote: str
    via: str
    reason: str = ""


class _Queries:
    """Read queries shared by the writer (``Outbox``) and the GUI's ``OutboxReader``."""

    def __init__(self) -> None:
        self._conn: sqlite3.Connection | None = None
        self._lock = threading.Lock()

    def _rows(self, sql: str, args: Iterable[Any] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            if self._conn is None:
                raise sqlite3.ProgrammingError("the outbox is closed")
            return self._conn.execute(sql, tuple(args)).fetchall()

    def jobs(self, *, limit: int = 500, states: Iterable[str] | None = None) -> list[Job]:
        """Jobs for display: unsent first (soonest retry first), then the latest sent."""
        where, args = "", []
        if states is not None:
            states = list(states)
            where = f"WHERE state IN ({','.join('?' * len(states))})"
            args = states
        rows = self._rows(
            f"SELECT {_JOB_COLUMNS} FROM jobs {where}"
            " ORDER BY state = 'sent', CASE WHEN state = 'sent' THEN -updated_at ELSE next_attempt_at END, id"
            " LIMIT ?", [*args, limit])
        return [_job(r) for r in rows]

    def job(self, job_id: int) -> Job | None:
        rows = self._rows(f"SELECT {_JOB_COLUMNS} FROM jobs WHERE id=?", (job_id,))
        return _job(rows[0]) if rows else None

    def jobs_for(self, scan_key: str) -> list[Job]:
        return [_job(r) for r in self._rows(f"SELECT {_JOB_COLUMNS} FROM jobs WHERE scan_key=? ORDER BY remote, part",
                                            (scan_key,))]

    def counts(self) -> dict[str, int]:
        """Number of jobs in each state (every state present, 0 when none)."""
        out = dict.fromkeys(JOB_STATES, 0)
        for state, n in self._rows("SELECT state, count(*) FROM jobs GROUP BY state"):
            out[state] = n
        return out

    def status(self, key: str) -> tuple[Any, float] | None:
        """A status value written by the receiver process, and when (wall clock)."""
        rows = self._rows("SELECT value, updated_at FROM status WHERE key=?", (key,))
        return (json.loads(rows[0][0]), rows[0][1]) if rows else None

    def study_state(self, study_uid: str) -> tuple[str, str]:
        """(alarm, decision) of a study; ("", "") when nothing is known."""
        rows = self._rows("SELECT alarm, decision FROM studies WHERE study_uid=?", (study_uid,))
        return (rows[0][0], rows[0][1]) if rows else ("", "")


class Outbox(_Queries):
    """The writable outbox (the receiver process owns it). Open with ``Outbox(path)``,
    close with ``close()``. At opening, jobs left "sending" by a crash are pending again."""

    def __init__(self, path: str | Path, *, durable: bool = True) -> None:
        super().__init__()
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.path, timeout=30, check_same_thread=False, isolation_level=None)
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            # NORMAL: a commit survives a crash of the process (what the queue must
            # survive); an OS crash may lose the last commits, which the start-up
            # catch-up (scans in the store but not in the outbox) finds again.
            conn.execute("PRAGMA synchronous=" + ("NORMAL" if durable else "OFF"))
            conn.executescript(_SCHEMA)
            row = conn.execute("SELECT value FROM meta WHERE key='schema'").fetchone()
            if row is None:
                conn.execute("INSERT INTO meta(key, value) VALUES ('schema', ?), ('created_at', ?)",
                             (str(SCHEMA_VERSION), repr(time.time())))
            elif int(row[0]) != SCHEMA_VERSION:
                raise sqlite3.DatabaseError(f"outbox schema {row[0]}, expected {SCHEMA_VERSION}")
            resumed = conn.execute("UPDATE jobs SET state='pending', updated_at=? WHERE state='sending'",
                                   (time.time(),)).rowcount
        except sqlite3.Error:
            conn.close()
            raise
        self._conn = conn
        if resumed:
            LOGGER.warning("outbox %s: %d job(s) were being sent when the station stopped; sending them again whole",
                           self.path, resumed)

    def close(self) -> None:
        with self._lock:
            conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    def __enter__(self) -> Outbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        """One transaction under the lock (BEGIN IMMEDIATE: the GUI only reads)."""
        with self._lock:
            if self._conn is None:
                raise sqlite3.ProgrammingError("the outbox is closed")
            conn = self._conn
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    @property
    def created_at(self) -> float:
        """When this outbox was first created (wall clock): the start-up catch-up only
        looks at scans received since then, never at a store's whole history."""
        return float(self._rows("SELECT value FROM meta WHERE key='created_at'")[0][0])

    # -- scans and studies -----------------------------------------------------------------

    def record_scan(self, scan: ScanCompleted) -> None:
        """Remember a completed scan (rules may match it again when its study's alarm
        state or decision changes)."""
        with self._tx() as c:
            c.execute(
                "INSERT OR REPLACE INTO scans(scan_key, study_uid, series_uid, patient_id, modality, sop_classes,"
                " paths, instances, frames, is_report, reason, completed_at) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                (scan.key, scan.study_uid, scan.series_uid, scan.patient_id, scan.modality,
                 json.dumps(list(scan.sop_class_uids)), json.dumps(list(scan.paths)), scan.instances, scan.frames,
                 int(scan.is_report), scan.reason, scan.completed_at))

    def scan_instances(self, scan_key: str) -> int | None:
        """How many instances the recorded scan had (None: never completed)."""
        rows = self._rows("SELECT instances FROM scans WHERE scan_key=?", (scan_key,))
        return int(rows[0][0]) if rows else None

    def scans_of_study(self, study_uid: str) -> list[ScanCompleted]:
        """The completed scans of a study, with the study's current alarm and decision."""
        alarm, decision = self.study_state(study_uid)
        rows = self._rows(
            "SELECT scan_key, patient_id, study_uid, series_uid, modality, sop_classes, paths, instances, frames,"
            " reason, is_report, completed_at FROM scans WHERE study_uid=? ORDER BY completed_at", (study_uid,))
        return [ScanCompleted(r[0], r[1], r[2], r[3], r[4], tuple(json.loads(r[5])), tuple(json.loads(r[6])),
                              r[7], r[8], r[9], "", bool(r[10]), alarm, decision, r[11]) for r in rows]

    def update_study(self, study_uid: str, *, alarm: str | None = None, decision: str | None = None) -> bool:
        """Record a machine TDR's alarm (the study keeps the worst) or an analyst's decision
        (the latest wins). True when the study's state changed."""
        with self._tx() as c:
            row = c.execute("SELECT alarm, decision FROM studies WHERE study_uid=?", (study_uid,)).fetchone()
            old_alarm, old_decision = row if row else ("", "")
            new_alarm, new_decision = old_alarm, old_decision
            if alarm is not None and ALARM_RANK.get(alarm, 0) > ALARM_RANK.get(old_alarm, 0):
                new_alarm = alarm
            if decision:
                new_decision = decision
            if row is not None and (new_alarm, new_decision) == (old_alarm, old_decision):
                return False
            c.execute("INSERT OR REPLACE INTO studies(study_uid, alarm, decision, updated_at) VALUES (?,?,?,?)",
                      (study_uid, new_alarm, new_decision, time.time()))
            return (new_alarm, new_decision) != (old_alarm, old_decision)

    def add_study_route(self, study_uid: str, remote: str, via: str, reason: str = "") -> bool:
        """Forward every scan of a study (also those completing later) to ``remote``.
        False when that route existed already."""
        with self._tx() as c:
            cur = c.execute("INSERT OR IGNORE INTO study_routes(study_uid, remote, via, reason, created_at)"
                            " VALUES (?,?,?,?,?)", (study_uid, remote, via, reason, time.time()))
            return cur.rowcount > 0

    def study_routes(self, study_uid: str) -> list[StudyRoute]:
        return [StudyRoute(*r) for r in self._rows(
            "SELECT study_uid, remote, via, reason FROM study_routes WHERE study_uid=?", (study_uid,))]

    # -- jobs -------------------------------------------------------------------------------

    def enqueue(self, scan: ScanCompleted, remote: str, via: str, reason: str = "", *, now: float | None = None) -> Job | None:
        """Queue ``scan`` for ``remote`` unless every one of its instances is queued or sent
        there already (idempotent). Returns the new or extended job, or None."""
        now = time.time() if now is None else now
        with self._tx() as c:
            rows = [_job(r) for r in c.execute(
                f"SELECT {_JOB_COLUMNS} FROM jobs WHERE scan_key=? AND remote=? ORDER BY part", (scan.key, remote))]
            covered = {p for j in rows for p in j.paths}
            new = [p for p in dict.fromkeys(scan.paths) if p not in covered]
            if not new:
                return None
            last = rows[-1] if rows else None
            if last is not None and last.state in ("pending", "failing"):
                paths = [*last.paths, *new]
                c.execute("UPDATE jobs SET paths=?, instances=?, updated_at=? WHERE id=?",
                          (json.dumps(paths), len(paths), now, last.id))
                job_id = last.id
            else:
                part = last.part + 1 if last is not None else 0
                job_id = c.execute(
                    "INSERT INTO jobs(scan_key, part, study_uid, series_uid, patient_id, modality, remote, via, reason,"
                    " paths, instances, state, next_attempt_at, created_at, updated_at)"
                    " VALUES (?,?,?,?,?,?,?,?,?,?,?, 'pending', ?,?,?)",
                    (scan.key, part, scan.study_uid, scan.series_uid, scan.patient_id, scan.modality, remote, via,
                     reason, json.dumps(new), len(new), now, now, now)).lastrowid
            return _job(c.execute(f"SELECT {_JOB_COLUMNS} FROM jobs WHERE id=?", (job_id,)).fetchone())

    def claim_due(self, remote: str, *, now: float | None = None) -> Job | None:
        """The next job for ``remote`` whose attempt is due, marked "sending" (the sender
        thread of that remote calls this)."""
        now = time.time() if now is None else now
        with self._tx() as c:
            row = c.execute(
                f"SELECT {_JOB_COLUMNS} FROM jobs WHERE remote=? AND state IN ('pending', 'failing')"
                " AND next_attempt_at<=? ORDER BY next_attempt_at, id LIMIT 1", (remote, now)).fetchone()
            if row is None:
                return None
            job = _job(row)
            c.execute("UPDATE jobs SET state='sending', updated_at=? WHERE id=?", (now, job.id))
            return job

    def mark_sent(self, job_id: int, *, now: float | None = None) -> None:
        now = time.time() if now is None else now
        with self._tx() as c:
            c.execute("UPDATE jobs SET state='sent', attempts=attempts+1, last_error='', sent_at=?, updated_at=?,"
                      " sent_count=sent_count+1 WHERE id=?", (now, now, job_id))

    def mark_failed(self, job_id: int, reason: str, retry_at: float, *, now: float | None = None) -> None:
        now = time.time() if now is None else now
        with self._tx() as c:
            c.execute("UPDATE jobs SET state='failing', attempts=attempts+1, last_error=?, next_attempt_at=?,"
                      " updated_at=? WHERE id=?", (reason, retry_at, now, job_id))

    def defer_remote(self, remote: str, reason: str, retry_at: float, *, now: float | None = None) -> int:
        """The remote is unreachable: every waiting job for it shows why and waits until
        ``retry_at`` (one connection attempt per backoff period, not one per job)."""
        now = time.time() if now is None else now
        with self._tx() as c:
            return c.execute(
                "UPDATE jobs SET state='failing', last_error=?, next_attempt_at=max(next_attempt_at, ?), updated_at=?"
                " WHERE remote=? AND state IN ('pending', 'failing')", (reason, retry_at, now, remote)).rowcount

    def retry_now(self, remote: str, *, now: float | None = None) -> int:
        """The remote answered again: make its failing jobs due at once."""
        now = time.time() if now is None else now
        with self._tx() as c:
            return c.execute("UPDATE jobs SET next_attempt_at=? WHERE remote=? AND state='failing'"
                             " AND next_attempt_at>?", (now, remote, now)).rowcount

    def next_due(self, remote: str | None = None) -> float | None:
        """When the earliest waiting job (of ``remote``, or of any) is due; None if none."""
        sql = "SELECT min(next_attempt_at) FROM jobs WHERE state IN ('pending', 'failing')"
        rows = self._rows(sql + " AND remote=?", (remote,)) if remote else self._rows(sql)
        return rows[0][0]

    def set_status(self, key: str, value: Any) -> None:
        """Publish a small JSON value for the GUI (hook counters...)."""
        with self._tx() as c:
            c.execute("INSERT OR REPLACE INTO status(key, value, updated_at) VALUES (?,?,?)",
                      (key, json.dumps(value), time.time()))

    def prune(self, keep_days: float, *, now: float | None = None) -> int:
        """Forget sent jobs, scans and studies older than ``keep_days`` (the scheduler calls
        this). Unsent jobs are never pruned. Returns the number of jobs removed."""
        before = (time.time() if now is None else now) - keep_days * 86400.0
        with self._tx() as c:
            n = c.execute("DELETE FROM jobs WHERE state='sent' AND updated_at<?", (before,)).rowcount
            c.execute("DELETE FROM scans WHERE completed_at<? AND scan_key NOT IN"
                      " (SELECT scan_key FROM jobs WHERE state!='sent')", (before,))
            c.execute("DELETE FROM studies WHERE updated_at<? AND study_uid NOT IN (SELECT study_uid FROM scans)",
                      (before,))
            c.execute("DELETE FROM study_routes WHERE created_at<? AND study_uid NOT IN"
                      " (SELECT study_uid FROM scans)", (before,))
            return n


class OutboxReader(_Queries):
    """Read-only view of an outbox for another process (the GUI's routing panel).

    Opens lazily and again after an error, so it works before the receiver process has
    created the outbox and across its restarts. ``available`` says whether it could open.
    Any single thread (the GUI thread).
    """

    def __init__(self, path: str | Path) -> None:
        super().__init__()
        self.path = Path(path)

    @property
    def available(self) -> bool:
        return self._open() is not None

    def _open(self) -> sqlite3.Connection | None:
        if self._conn is not None:
            return self._conn
        if not self.path.exists():
            return None
        try:
            conn = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, timeout=2, check_same_thread=False)
            conn.execute("SELECT count(*) FROM jobs").fetchone()
        except sqlite3.Error as exc:
            LOGGER.debug("outbox %s not readable yet: %s", self.path, exc)
            return None
        self._conn = conn
        return conn

    def _rows(self, sql: str, args: Iterable[Any] = ()) -> list[tuple[Any, ...]]:
        if self._open() is None:
            return []
        try:
            return super()._rows(sql, args)
        except sqlite3.Error:
            self.close()  # reopen next time (the writer may have replaced the file)
            raise

    def close(self) -> None:
        with self._lock:
            conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()
