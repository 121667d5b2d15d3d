"""The routing panel: what the station forwards, to where, and why something is waiting.

Routing and hooks run in the receiver process (``station serve``, the GUI's child), so
this panel reads that process's outbox database read-only (``OutboxReader``) on a QTimer:
one row per job (scan, remote, state pending / sending / failing with the reason / sent,
attempts, next retry), unsent first, plus a summary line and the hook counters the
receiver process publishes in the same file. Reading a small SQLite file once a second
costs well under a millisecond; there is no thread and nothing to shut down but the timer.

``make_routing_dock(window, settings)`` wraps it in a QDockWidget for the main window.
GUI thread only.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from pathlib import Path
from typing import Any

from PySide6.QtCore import QAbstractTableModel, QModelIndex, QPersistentModelIndex, Qt, QTimer, Signal
from PySide6.QtGui import QBrush, QColor
from PySide6.QtWidgets import (
    QAbstractItemView,
    QDockWidget,
    QHeaderView,
    QLabel,
    QTableView,
    QVBoxLayout,
    QWidget,
)

from station.core.routing.outbox import Job, OutboxReader, outbox_path

LOGGER = logging.getLogger(__name__)

__all__ = ["JobModel", "RoutingPanel", "hooks_summary", "make_routing_dock", "routing_summary"]

STATE_COLOURS = {"failing": "#ff6b6b", "pending": "#f0d43a", "sending": "#5dade2", "sent": "#6d737c"}
STALE_STATUS_S = 30.0  # the receiver refreshes its status at least every 10 s
_Index = QModelIndex | QPersistentModelIndex


def _ago(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.0f} s"
    if seconds < 3600:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def next_retry_text(job: Job, now: float) -> str:
    """What the "Next retry" column says for a job."""
    if job.state == "sent":
        return ""
    if job.state == "sending":
        return "sending…"
    wait = job.next_attempt_at - now
    return "now" if wait <= 0.5 else f"in {_ago(wait)}"


def routing_summary(counts: dict[str, int]) -> str:
    """'3 pending · 1 failing · 12 sent' for the panel and the status bar."""
    waiting = counts.get("pending", 0) + counts.get("sending", 0)
    return f"{waiting} pending · {counts.get('failing', 0)} failing · {counts.get('sent', 0)} sent"


def hooks_summary(status: tuple[Any, float] | None, now: float | None = None) -> str:
    """The hook counters line ('' when the receiver publishes none)."""
    if status is None:
        return ""
    value, updated_at = status
    counters = (value or {}).get("counters") or {}
    total = counters.get("total")
    if not total:
        return ""
    scripts = len((value or {}).get("scripts") or [])
    text = (f"Hooks: {scripts} script{'s' if scripts != 1 else ''} · {total['calls']} calls · "
            f"{total['failures']} failed · {total['slow']} slow · {total['dropped']} dropped")
    if total.get("busy_s", 0) > 5:
        text += f" · one busy for {_ago(total['busy_s'])}"
    age = (time.time() if now is None else now) - updated_at
    if age > STALE_STATUS_S:
        text += f" (as of {_ago(age)} ago: is the receiver running?)"
    return text


class JobModel(QAbstractTableModel):
    """The outbox's jobs as a table; ``set_jobs`` replaces them (a reset only when they
    changed, so a selection survives idle refreshes)."""

    COLUMNS = ("State", "ID", "Modality", "Scan", "Remote", "Via", "Instances", "Attempts", "Next retry", "Reason")

    def __init__(self, mode: str = "airport") -> None:
        super().__init__()
        self.mode = mode
        self._jobs: list[Job] = []
        self._now = time.time()

    def set_jobs(self, jobs: list[Job], now: float | None = None) -> None:
        self._now = time.time() if now is None else now
        if jobs == self._jobs:
            if self._jobs:  # only the "next retry" countdown moved
                col = self.COLUMNS.index("Next retry")
                self.dataChanged.emit(self.index(0, col), self.index(len(self._jobs) - 1, col))
            return
        self.beginResetModel()
        self._jobs = list(jobs)
        self.endResetModel()

    def job_at(self, row: int) -> Job | None:
        return self._jobs[row] if 0 <= row < len(self._jobs) else None

    def rowCount(self, parent: _Index = QModelIndex()) -> int:  # noqa: N802, B008
        return 0 if parent.isValid() else len(self._jobs)

    def columnCount(self, parent: _Index = QModelIndex()) -> int:  # noqa: N802, B008
        return 0 if parent.isValid() else len(self.COLUMNS)

    def headerData(self, section: int, orientation: Qt.Orientation, role: int = Qt.ItemDataRole.DisplayRole):  # noqa: N802
        if orientation == Qt.Orientation.Horizontal and role == Qt.ItemDataRole.DisplayRole:
            if section == 1:
                return "Bag / OOI" if self.mode == "airport" else "Patient"
            return self.COLUMNS[section]
        return None

    def data(self, index: _Index, role: int = Qt.ItemDataRole.DisplayRole):
        job = self.job_at(index.row()) if index.isValid() else None
        if job is None:
            return None
        col = index.column()
        if role == Qt.ItemDataRole.DisplayRole:
            part = f" (part {job.part + 1})" if job.part else ""
            values = (
                job.state, job.patient_id, job.modality, f"…{job.series_uid[-12:]}{part}", job.remote, job.via,
                str(job.instances), str(job.attempts), next_retry_text(job, self._now),
                job.last_error if job.state == "failing" else job.reason,
            )
            return values[col]
        if role == Qt.ItemDataRole.ForegroundRole and col == 0:
            return QBrush(QColor(STATE_COLOURS.get(job.state, "#ffffff")))
        if role == Qt.ItemDataRole.ForegroundRole and job.state == "sent":
            return QBrush(QColor(STATE_COLOURS["sent"]))
        if role == Qt.ItemDataRole.ToolTipRole:
            lines = [f"{job.modality} series {job.series_uid}", f"study {job.study_uid}",
                     f"to {job.remote} by {job.via} ({job.reason or 'no reason recorded'})",
                     f"{job.instances} instance(s), {job.attempts} attempt(s)"]
            if job.last_error:
                lines.append(f"last error: {job.last_error}")
            if job.sent_at:
                lines.append("sent " + time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(job.sent_at)))
            return "\n".join(lines)
        if role == Qt.ItemDataRole.TextAlignmentRole and col in (6, 7):
            return int(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
        return None


class RoutingPanel(QWidget):
    """Outbox jobs and hook counters of the receiver process, refreshed every
    ``interval_ms``. ``countsChanged(dict)`` carries the job counts per state (for a
    status bar). GUI thread only."""

    countsChanged = Signal(dict)

    def __init__(self, path: str | Path, *, mode: str = "airport", interval_ms: int = 1000,
                 parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.reader = OutboxReader(path)
        self.model = JobModel(mode)
        self._counts: dict[str, int] = {}
        self.summary = QLabel("Routing: no outbox yet (no [[routing]] or [[remotes]] configured?)")
        self.summary.setObjectName("routingSummary")
        self.hooks = QLabel("")
        self.hooks.setObjectName("hooksSummary")
        self.hooks.setVisible(False)
        self.table = QTableView()
        self.table.setModel(self.model)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.verticalHeader().setVisible(False)
        self.table.setWordWrap(False)
        header = self.table.horizontalHeader()
        header.setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        header.setStretchLastSection(True)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(4, 4, 4, 4)
        layout.addWidget(self.summary)
        layout.addWidget(self.hooks)
        layout.addWidget(self.table)
        self.timer = QTimer(self)
        self.timer.setInterval(interval_ms)
        self.timer.timeout.connect(self.refresh)
        self.timer.start()
        self.refresh()

    @property
    def counts(self) -> dict[str, int]:
        return dict(self._counts)

    def refresh(self) -> None:
        """Read the outbox again (timer slot)."""
        try:
            if not self.reader.available:
                return
            jobs = self.reader.jobs()
            counts = self.reader.counts()
            status = self.reader.status("hooks")
        except sqlite3.Error as exc:  # being replaced, or not ours to read: say so, retry later
            self.summary.setText(f"Routing: cannot read {self.reader.path}: {exc}")
            return
        self.model.set_jobs(jobs)
        self.summary.setText("Routing: " + routing_summary(counts))
        hooks = hooks_summary(status)
        self.hooks.setText(hooks)
        self.hooks.setVisible(bool(hooks))
        if counts != self._counts:
            self._counts = counts
            self.countsChanged.emit(dict(counts))

    def shutdown(self) -> None:
        """Stop refreshing and close the database connection."""
        self.timer.stop()
        self.reader.close()

    def closeEvent(self, event: Any) -> None:  # noqa: N802
        self.shutdown()
        super().closeEvent(event)


def make_routing_dock(window: QWidget, settings: Any) -> QDockWidget:
    """A dock with the routing panel for ``settings``' outbox (``<store>/outbox.sqlite3``
    unless ``[outbox] path`` says otherwise). The caller adds it:
    ``window.addDockWidget(Qt.DockWidgetArea.BottomDockWidgetArea, dock)``."""
    dock = QDockWidget("Routing", window)
    dock.setObjectName("routingDock")
    panel = RoutingPanel(outbox_path(settings), mode=getattr(getattr(settings, "ui", None), "mode", "airport"),
                         parent=dock)
    dock.setWidget(panel)
    dock.setAllowedAreas(Qt.DockWidgetArea.BottomDockWidgetArea | Qt.DockWidgetArea.RightDockWidgetArea)
    return dock
