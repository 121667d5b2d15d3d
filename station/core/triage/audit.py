"""The triage audit log: an append-only SQLite file in the store folder (``audit.sqlite``).

Every sign-in, every scan shown to an analyst, every decision (with per-alert marks, note,
the ATR's verdict, when the scan was shown and decided, seconds to decision) and every undo
is one row of ``events``. Nothing edits history: SQLite triggers abort any UPDATE or
DELETE on ``events``, so neither the UI nor a careless script can rewrite it; an undo is a
new ``undo`` event naming the decision it withdraws. ``decisions()`` folds the events
into the effective decision per scan (what ``station report`` prints). No Qt. Called from
the GUI thread (one connection per ``AuditLog``) and from ``station report``.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path

LOGGER = logging.getLogger(__name__)

AUDIT_NAME = "audit.sqlite"
DECISIONS = ("CLEAR", "SUSPECT", "THREAT")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    at          REAL NOT NULL,             -- seconds since the epoch
    kind        TEXT NOT NULL,             -- signin, shown, decision, undo
    operator    TEXT NOT NULL,
    series_uid  TEXT NOT NULL DEFAULT '',
    patient_id  TEXT NOT NULL DEFAULT '',  -- bag / OOI ID
    decision    TEXT NOT NULL DEFAULT '',  -- CLEAR, SUSPECT, THREAT (decision events)
    atr         TEXT NOT NULL DEFAULT '',  -- the ATR's verdict then: ALARM, CLEAR or ''
    marks       TEXT NOT NULL DEFAULT '{}',-- JSON: alert key -> THREAT / NO_THREAT
    note        TEXT NOT NULL DEFAULT '',
    shown_at    REAL,                      -- decision: when the scan was first shown
    seconds     REAL,                      -- decision: seconds from shown to decided
    ref_event   INTEGER,                   -- undo: the decision event it withdraws
    tdr_uids    TEXT NOT NULL DEFAULT '[]' -- decision: operator TDRs written for it
);
CREATE INDEX IF NOT EXISTS events_series ON events(series_uid);
CREATE TRIGGER IF NOT EXISTS events_no_update BEFORE UPDATE ON events
BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
CREATE TRIGGER IF NOT EXISTS events_no_delete BEFORE DELETE ON events
BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
"""


class AuditError(Exception):
    """The audit log refused (locked, read-only, full disk): the decision is not recorded."""


@dataclass(frozen=True)
class Event:
    """One row of the audit log."""

    id: int
    at: float
    kind: str
    operator: str
    series_uid: str
    patient_id: str
    decision: str
    atr: str
    marks: dict[str, str] = field(default_factory=dict)
    note: str = ""
    shown_at: float | None = None
    seconds: float | None = None
    ref_event: int | None = None
    tdr_uids: tuple[str, ...] = ()


_COLUMNS = "id, at, kind, operator, series_uid, patient_id, decision, atr, marks, note, shown_at, seconds, ref_event, tdr_uids"


def _event(row: tuple) -> Event:
    return Event(id=row[0], at=row[1], kind=row[2], operator=row[3], series_uid=row[4], patient_id=row[5],
                 decision=row[6], atr=row[7], marks=json.loads(row[8] or "{}"), note=row[9], shown_at=row[10],
                 seconds=row[11], ref_event=row[12], tdr_uids=tuple(json.loads(row[13] or "[]")))


class AuditLog:
    """Append-only events in ``<store>/audit.sqlite``. One thread per instance (the GUI's)."""

    def __init__(self, path: str | Path) -> None:
        path = Path(path)
        if path.is_dir():
            path = path / AUDIT_NAME
        self.path = path
        try:
            self._db = sqlite3.connect(path, timeout=10, isolation_level=None)
            self._db.executescript(_SCHEMA)
        except sqlite3.Error as exc:
            raise AuditError(f"cannot open audit log {path}: {exc}") from exc

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> AuditLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- writing ------------------------------------------------------------------------------

    def _append(self, **values: object) -> int:
        values.setdefault("at", time.time())
        cols = ", ".join(values)
        marks = ", ".join("?" for _ in values)
        try:
            cur = self._db.execute(f"INSERT INTO events ({cols}) VALUES ({marks})", tuple(values.values()))
        except sqlite3.Error as exc:
            raise AuditError(f"audit log {self.path}: {exc}") from exc
        return int(cur.lastrowid)

    def sign_in(self, operator: str, *, at: float | None = None) -> int:
        return self._append(kind="signin", operator=operator, at=at or time.time())

    def shown(self, operator: str, series_uid: str, patient_id: str = "", *, at: float | None = None) -> int:
        return self._append(kind="shown", operator=operator, series_uid=series_uid, patient_id=patient_id,
                            at=at or time.time())

    def decision(self, operator: str, series_uid: str, decision: str, *, patient_id: str = "", atr: str = "",
                 marks: dict[str, str] | None = None, note: str = "", shown_at: float | None = None,
                 at: float | None = None, tdr_uids: list[str] | tuple[str, ...] = ()) -> int:
        """Append a decision; ``seconds`` is computed from ``shown_at`` (None if never shown)."""
        decision = decision.upper()
        if decision not in DECISIONS:
            raise ValueError(f"decision must be one of {DECISIONS}, not {decision!r}")
        if not operator.strip():
            raise ValueError("an operator ID is required")
        at = at or time.time()
        seconds = max(0.0, at - shown_at) if shown_at is not None else None
        return self._append(kind="decision", operator=operator, series_uid=series_uid, patient_id=patient_id,
                            decision=decision, atr=atr, marks=json.dumps(marks or {}, sort_keys=True), note=note,
                            shown_at=shown_at, seconds=seconds, at=at, tdr_uids=json.dumps(list(tdr_uids)))

    def undo(self, operator: str, decision_event: Event, *, at: float | None = None) -> int:
        return self._append(kind="undo", operator=operator, series_uid=decision_event.series_uid,
                            patient_id=decision_event.patient_id, decision=decision_event.decision,
                            ref_event=decision_event.id, at=at or time.time())

    # -- reading ------------------------------------------------------------------------------

    def events(self, *, since: float | None = None, kind: str | None = None) -> list[Event]:
        sql = f"SELECT {_COLUMNS} FROM events WHERE at >= ?"
        args: list[object] = [since if since is not None else float("-inf")]
        if kind:
            sql += " AND kind = ?"
            args.append(kind)
        return [_event(r) for r in self._db.execute(sql + " ORDER BY id", args)]

    def undone_ids(self) -> set[int]:
        return {r[0] for r in self._db.execute("SELECT ref_event FROM events WHERE kind = 'undo'")}

    def last_decision(self, operator: str | None = None) -> Event | None:
        """The newest decision not undone (by `operator` if given)."""
        undone = self.undone_ids()
        for e in reversed(self.events(kind="decision")):
            if e.id not in undone and (operator is None or e.operator == operator):
                return e
        return None

    def decisions(self, *, since: float | None = None) -> list[Event]:
        """The effective decision of every decided scan, in decision order: for each scan
        its newest decision that was not undone (a scan whose only decision was undone is
        pending again and not listed)."""
        undone = self.undone_ids()
        latest: dict[str, Event] = {}
        for e in self.events(kind="decision"):
            if e.id not in undone:
                latest[e.series_uid] = e
        rows = sorted(latest.values(), key=lambda e: (e.at, e.id))
        return [e for e in rows if since is None or e.at >= since]

    def first_shown(self, series_uid: str) -> float | None:
        row = self._db.execute("SELECT min(at) FROM events WHERE kind = 'shown' AND series_uid = ?",
                               (series_uid,)).fetchone()
        return row[0] if row else None
