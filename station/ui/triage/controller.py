"""Keyboard-driven triage in the main window: decision keys, the queue, undo, sign-in,
the cheat sheet and the shift statistics dialog.

``TriageController`` attaches to a ``MainWindow``: it creates one window-level ``QAction``
per triage action with the keys of the keymap (``station.ui.keymap``) and rebinds the
window's other actions from the same keymap, so every key works wherever the focus is
inside the window (text fields keep their typing: Qt lets a focused line edit override
printable shortcuts). A decision key decides the scan on screen and opens the next
pending scan at once. Decisions become operator TDRs through ``AlertBook.record_decision``
when the scan has unresolved machine TDRs; every decision is also kept in the store's
scan state (``Store.set_decision``) and in the append-only audit log
(``station.core.triage.audit``). A CLEAR (or any decision) on a scan without a machine TDR gets
no TDR: ``write_operator_tdr`` needs a machine TDR to review, so only the audit log and
the scan state record it, unless the analyst marked a box (viewer key B): then SUSPECT
or THREAT writes an operator TDR with that box as its own PTO. GUI thread only.
"""

from __future__ import annotations

import logging
import time

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import QEvent, QObject, Qt
from PySide6.QtGui import QAction, QKeyEvent
from PySide6.QtWidgets import (
    QApplication,
    QDialog,
    QDialogButtonBox,
    QFileDialog,
    QFormLayout,
    QHeaderView,
    QInputDialog,
    QLabel,
    QLineEdit,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from station.core.triage.audit import AuditError, AuditLog
from station.core.triage.report import shift_stats, write_report
from station.core.store.store import StoreError
from station.core.triage.queue import NON_IMAGE_MODALITIES, ScanInfo, TriageQueue, atr_decision
from station.ui.keymap import WINDOW_ACTIONS, Keymap, KeymapError

LOGGER = logging.getLogger(__name__)


# --------------------------------------------------------------------------- sign-in


class SignInDialog(QDialog):
    """Asks for the operator ID (required: OK stays disabled while it is empty)."""

    def __init__(self, parent: QWidget | None = None, current: str = "") -> None:
        super().__init__(parent)
        self.setObjectName("SignInDialog")
        self.setWindowTitle("Sign in")
        self.edit = QLineEdit(current)
        self.edit.setObjectName("OperatorId")
        self.edit.setPlaceholderText("operator ID")
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Ok | QDialogButtonBox.StandardButton.Cancel)
        self.ok = buttons.button(QDialogButtonBox.StandardButton.Ok)
        buttons.accepted.connect(self.accept)
        buttons.rejected.connect(self.reject)
        self.edit.textChanged.connect(lambda t: self.ok.setEnabled(bool(t.strip())))
        self.ok.setEnabled(bool(current.strip()))
        form = QFormLayout(self)
        form.addRow(QLabel("Operator ID is required: every decision is recorded under it."))
        form.addRow("Operator", self.edit)
        form.addRow(buttons)

    @property
    def operator(self) -> str:
        return self.edit.text().strip()


def ask_operator(parent: QWidget | None = None, current: str = "") -> str | None:
    """Modal sign-in; the operator ID, or None if cancelled. GUI thread."""
    dialog = SignInDialog(parent, current)
    return dialog.operator if dialog.exec() == QDialog.DialogCode.Accepted and dialog.operator else None


# --------------------------------------------------------------------------- cheat sheet


class CheatSheet(QDialog):
    """Every key of the station on one page (F1 or ?; Esc, F1 or ? closes it)."""

    def __init__(self, keymap: Keymap, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("CheatSheet")
        self.setWindowTitle("Keys")
        rows = keymap.rows()
        self.table = QTableWidget(len(rows), 3)
        self.table.setHorizontalHeaderLabels(["", "Keys", "Action"])
        self.table.verticalHeader().hide()
        self.table.setEditTriggers(QTableWidget.EditTrigger.NoEditTriggers)
        self.table.setFocusPolicy(Qt.FocusPolicy.NoFocus)  # keys go to the sheet (Esc, F1 close it)
        for r, (group, keys, what) in enumerate(rows):
            for c, text in enumerate((group, keys, what)):
                self.table.setItem(r, c, QTableWidgetItem(text))
        self.table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        self.table.horizontalHeader().setStretchLastSection(True)
        layout = QVBoxLayout(self)
        layout.addWidget(self.table)
        sources = ", ".join(str(p) for p in keymap.sources)
        layout.addWidget(QLabel(f"Keymap: {sources}"))
        self.resize(640, 720)

    def texts(self) -> list[tuple[str, str, str]]:
        return [tuple(self.table.item(r, c).text() for c in range(3)) for r in range(self.table.rowCount())]  # type: ignore[misc]

    _CLOSE_KEYS = (Qt.Key.Key_Escape, Qt.Key.Key_F1, Qt.Key.Key_Question, Qt.Key.Key_Return,
                   Qt.Key.Key_Enter, Qt.Key.Key_Space)

    def event(self, event: QEvent) -> bool:
        # The sheet's closing keys are the main window's shortcuts too (Esc follows new
        # scans, F1 opens this): claim them while the sheet has the focus.
        if event.type() == QEvent.Type.ShortcutOverride and event.key() in self._CLOSE_KEYS:  # type: ignore[attr-defined]
            event.accept()
            return True
        return super().event(event)

    def keyPressEvent(self, event: QKeyEvent) -> None:  # noqa: N802
        if event.key() in self._CLOSE_KEYS:
            self.close()
            return
        super().keyPressEvent(event)


# --------------------------------------------------------------------------- statistics


class ShiftStatsDialog(QDialog):
    """Shift statistics from the audit log: scans per hour, decision times (median and a
    histogram), alarm rate, agreement with the ATR; exports the report (CSV or XLSX)."""

    def __init__(self, audit: AuditLog, parent: QWidget | None = None, since: float | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("ShiftStats")
        self.setWindowTitle("Shift statistics")
        self.audit = audit
        self.since = since
        self.summary = QLabel()
        self.summary.setObjectName("ShiftSummary")
        self.summary.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.plot = pg.PlotWidget()
        self.plot.setLabel("bottom", "seconds to decision")
        self.plot.setLabel("left", "scans")
        self.export_button = QPushButton("Export report…")
        self.export_button.clicked.connect(self._on_export)
        layout = QVBoxLayout(self)
        layout.addWidget(self.summary)
        layout.addWidget(self.plot, 1)
        layout.addWidget(self.export_button)
        self.resize(640, 520)
        self.refresh()

    def refresh(self) -> dict:
        decisions = self.audit.decisions(since=self.since)
        self.stats = stats = shift_stats(decisions)
        median = stats["median_seconds"]
        agreement = stats["atr_agreement"]
        counts = stats["by_decision"]
        self.summary.setText(
            f"Scans decided: {stats['scans']}  (CLEAR {counts['CLEAR']}, SUSPECT {counts['SUSPECT']},"
            f" THREAT {counts['THREAT']})\n"
            f"Scans per hour: {stats['scans_per_hour']:.1f}\n"
            f"Median decision time: {'–' if median is None else f'{median:.1f} s'}\n"
            f"Alarm rate: {stats['alarm_rate']:.0%}\n"
            f"Agreement with the ATR: {'–' if agreement is None else f'{agreement:.0%}'}")
        self.plot.clear()
        times = np.asarray(stats["decision_seconds"], dtype=float)
        if times.size:
            hist, edges = np.histogram(times, bins=min(20, max(1, times.size)))
            self.plot.addItem(pg.BarGraphItem(x0=edges[:-1], x1=edges[1:], height=hist, brush="#5c9ccf"))
            if median is not None:
                self.plot.addItem(pg.InfiniteLine(pos=median, angle=90, pen=pg.mkPen("#f0b429", width=2)))
        return stats

    def export(self, path: str, fmt: str | None = None) -> str:
        fmt = fmt or ("xlsx" if path.lower().endswith(".xlsx") else "csv")
        return str(write_report(self.audit.decisions(since=self.since), path, fmt))

    def _on_export(self) -> None:
        path, _ = QFileDialog.getSaveFileName(self, "Export shift report", "shift-report.xlsx",
                                              "Excel (*.xlsx);;CSV (*.csv)")
        if path:
            self.export(path)


# --------------------------------------------------------------------------- the controller


class TriageController(QObject):
    """Keys, queue, decisions, audit and undo for one ``MainWindow``. GUI thread."""

    def __init__(self, window) -> None:  # MainWindow (not imported: it imports us)
        super().__init__(window)
        self.window = window
        self.settings = window.settings
        ui = window.settings.ui
        try:
            self.keymap = Keymap.load(getattr(ui, "keymap", "") or None)
        except KeymapError as exc:  # the default file itself is broken: a packaging bug
            LOGGER.error("%s", exc)
            self.keymap = Keymap()
        window.viewer.set_keymap(self.keymap.keys)  # the viewer's keys from the same file
        self.undo_window_s = float(getattr(ui, "undo_window_s", 10.0))
        self.queue = TriageQueue(alarms_first=bool(getattr(ui, "alarms_first", False)))
        self.audit: AuditLog | None
        try:
            self.audit = AuditLog(window.store.root)
        except AuditError as exc:
            LOGGER.error("%s", exc)
            self.audit = None
        self._shown_at: dict[str, float] = {}
        self._marks: dict[str, str] = {}  # alert key -> THREAT / NO_THREAT, for the scan on screen
        self._marks_for: str | None = None
        self._alert_index = -1
        self._note = ""
        self.started_at = time.time()
        self.cheat_sheet: CheatSheet | None = None
        self.stats_dialog: ShiftStatsDialog | None = None
        self.actions: dict[str, QAction] = {}
        self._closed = False

        for name, slot in (
            ("clear", lambda: self.decide("CLEAR")),
            ("suspect", lambda: self.decide("SUSPECT")),
            ("threat", lambda: self.decide("THREAT")),
            ("accept_atr", self.accept_atr),
            ("next", self.next_scan),
            ("previous", self.previous_scan),
            ("undo", self.undo),
            ("cheat_sheet", self.show_cheat_sheet),
            ("next_alert", self.next_alert),
            ("mark_threat", lambda: self.mark_alert("THREAT")),
            ("mark_clear", lambda: self.mark_alert("NO_THREAT")),
            ("note", self.ask_note),
            ("alarms_first", self.toggle_alarms_first),
            ("statistics", self.show_statistics),
            ("sign_in", self.sign_in),
        ):
            action = QAction(name.replace("_", " ").capitalize(), window)
            action.setObjectName(f"triage.{name}")
            action.setShortcutContext(Qt.ShortcutContext.WindowShortcut)
            self.keymap.bind(action, f"triage.{name}")
            action.triggered.connect(slot)
            window.addAction(action)
            self.actions[name] = action
        for action in window.actions():
            name = WINDOW_ACTIONS.get(action.text())
            if name and name in self.keymap.keys:
                self.keymap.bind(action, name)

        self._reopen_undone()
        window.bridge.seriesChanged.connect(self._on_series_changed)
        window.scan_list.seriesChosen.connect(lambda *_: self._note_shown())
        window.viewer.volumeGrew.connect(lambda _n: self._note_shown())
        app = QApplication.instance()
        if app is not None:
            app.focusChanged.connect(self._on_focus_changed)
        self.rebuild()

    # -- state -------------------------------------------------------------------------------

    @property
    def operator(self) -> str | None:
        return self.window._operator

    def rebuild(self) -> None:
        """Re-read which scans are pending (store index, decisions, alarms)."""
        store = self.window.store
        states = store.scan_states()
        alarmed = {a.series_uid for a in self.window.alert_book.unresolved() if a.series_uid}
        self.queue.update(
            ScanInfo(r.series_uid, r.first_received, r.series_uid in alarmed,
                     bool(states.get(r.series_uid, (False, None, ""))[2]), r.modality)
            for r in store.series_list())

    def _reopen_undone(self) -> None:
        """At start: scans whose last decision was undone are pending again, although the
        undone decision's operator TDR (history, never deleted) marks their alarms resolved."""
        if self.audit is None:
            return
        decided = {e.series_uid for e in self.audit.decisions()}
        for uid in {e.series_uid for e in self.audit.events(kind="undo")} - decided:
            self.window.alert_book.reopen(uid)
        self.window.alert_panel.refresh()

    def _on_series_changed(self, _uids: set[str]) -> None:
        self.rebuild()
        self._note_shown()

    def _on_focus_changed(self, _old: QWidget | None, new: QWidget | None) -> None:
        """Return/Enter belongs to the store browser while it has the focus (its Open);
        elsewhere it accepts the ATR. Both bound at once would make Qt ignore the key."""
        dock = getattr(self.window, "browser_dock", None)
        inside = new is not None and dock is not None and dock.isAncestorOf(new)
        self.actions["accept_atr"].setEnabled(not inside)

    def _note_shown(self) -> None:
        """The scan on screen: remember when it was first shown (audit ``shown`` event)."""
        uid = self.window.viewer.series_uid
        if uid is None:
            return
        self.queue.show(uid)
        if uid != self._marks_for:
            self._marks_for, self._marks, self._alert_index = uid, {}, -1
        if uid in self._shown_at:
            return
        self._shown_at[uid] = time.time()
        if self.audit is not None and self.operator:
            row = self.window.store.series(uid)
            try:
                self.audit.shown(self.operator, uid, row.patient_id if row else "", at=self._shown_at[uid])
            except AuditError as exc:
                LOGGER.error("%s", exc)

    def _status(self, text: str, ms: int = 5000) -> None:
        self.window.statusBar().showMessage(text, ms)

    def _open(self, uid: str | None) -> None:
        if uid is None:
            self._status("No pending scans", 4000)
            return
        self.window.select_series(uid)
        self.window.viewer.setFocus()
        self._note_shown()

    # -- actions -----------------------------------------------------------------------------

    def next_scan(self) -> None:
        self._note_shown()
        self._open(self.queue.next())

    def previous_scan(self) -> None:
        self._note_shown()
        uid = self.queue.previous()
        if uid is None:
            self._status("No earlier scan", 3000)
            return
        self.window.select_series(uid)
        self.window.viewer.setFocus()

    def accept_atr(self) -> None:
        uid = self.window.viewer.series_uid
        if uid is None:
            self._status("Open a scan first", 4000)
            return
        decision = atr_decision(self.window.alert_book.atr_verdict(uid))
        if decision is None:
            self._status("No ATR decision for this scan yet: decide with 1, 2 or 3", 5000)
            return
        self.decide(decision)

    def decide(self, decision: str) -> bool:
        """Decide the scan on screen and open the next pending one. True if recorded."""
        window = self.window
        uid = window.viewer.series_uid
        if uid is None:
            self._status("Open a scan first", 4000)
            return False
        if getattr(window, "remote_open", False):
            self._status("A remote scan is view-only: decisions are recorded on scans in the local store", 6000)
            return False
        if not self.operator:
            self.sign_in()
            if not self.operator:
                self._status("Sign in first: decisions need an operator ID", 6000)
                return False
        self._note_shown()
        book = window.alert_book
        atr = book.atr_verdict(uid) or ""
        marks = dict(self._marks) if self._marks_for == uid else {}
        alerts = {a.key: a for a in book.for_series(uid)}
        tdr_uids = sorted({a.tdr_uid for a in alerts.values() if not book.is_resolved(a)})
        pto_marks = {alerts[k].pto_id: v for k, v in marks.items()
                     if k in alerts and alerts[k].pto_id is not None} if len(tdr_uids) == 1 else None
        now = time.time()
        try:
            # Without machine TDRs this writes a TDR only for a box the analyst marked.
            written = window.record_decision(decision, pto_marks=pto_marks, note=self._note)
            window.store.set_decision(uid, decision)
            if self.audit is not None:
                row = window.store.series(uid)
                self.audit.decision(self.operator, uid, decision, patient_id=row.patient_id if row else "",
                                    atr=atr, marks=marks, note=self._note, shown_at=self._shown_at.get(uid),
                                    at=now, tdr_uids=written)
        except (ValueError, StoreError, AuditError) as exc:
            self._status(f"Decision not recorded: {exc}", 8000)
            return False
        self._note = ""
        LOGGER.info("%s decided %s on %s (%d operator TDRs)", self.operator, decision, uid, len(written))
        window.scan_list.scan_model.refresh({uid})
        self._open(self.queue.decided(uid))
        self._status(f"{decision.title()} recorded by {self.operator}"
                     + ("" if written else " (no machine TDR: audit log only)") + " · Ctrl+Z undoes", 5000)
        return True

    def undo(self) -> bool:
        """Withdraw the last decision if it is recent enough; reopen that scan."""
        if self.audit is None:
            return False
        last = self.audit.last_decision(self.operator)
        if last is None or time.time() - last.at > self.undo_window_s:
            self._status(f"Nothing to undo (only within {self.undo_window_s:.0f} s of a decision)", 4000)
            return False
        try:
            self.audit.undo(self.operator or last.operator, last)
            self.window.store.set_decision(last.series_uid, "")
        except (AuditError, StoreError) as exc:
            self._status(f"Undo failed: {exc}", 8000)
            return False
        self.window.alert_book.reopen(last.series_uid)
        self.window.alert_panel.refresh()
        self.window._update_alarms()
        self.queue.reopen(last.series_uid)
        self.window.scan_list.scan_model.refresh({last.series_uid})
        self.window.select_series(last.series_uid)
        self.queue.show(last.series_uid)
        self.window._show_threats()
        self.window.viewer.setFocus()
        self._status(f"Undone: {last.decision.title()} on {last.patient_id or last.series_uid}", 5000)
        return True

    def next_alert(self) -> None:
        uid = self.window.viewer.series_uid
        alerts = self.window.alert_book.for_series(uid) if uid else []
        if not alerts:
            self._status("No alerts on this scan", 3000)
            return
        self._note_shown()
        self._alert_index = (self._alert_index + 1) % len(alerts)
        alert = alerts[self._alert_index]
        if alert.center is not None:
            x, y, z = alert.center
            self.window.viewer.set_crosshair(int(x), int(y), int(z))
        self._status(f"Alert {self._alert_index + 1}/{len(alerts)}: {alert.category} {alert.severity}"
                     " · Alt+T threat, Alt+C no threat", 5000)

    def mark_alert(self, flag: str) -> None:
        uid = self.window.viewer.series_uid
        alerts = self.window.alert_book.for_series(uid) if uid else []
        if not alerts:
            self._status("No alerts on this scan", 3000)
            return
        self._note_shown()
        alert = alerts[max(0, self._alert_index)]
        self._marks[alert.key] = flag
        self._status(f"Alert {alert.category} marked {flag}", 4000)

    def ask_note(self) -> None:
        text, ok = QInputDialog.getText(self.window, "Note", "Note for the next decision:", text=self._note)
        if ok:
            self.set_note(text)

    def set_note(self, text: str) -> None:
        self._note = text.strip()[:200]

    def toggle_alarms_first(self) -> None:
        self.queue.set_alarms_first(not self.queue.alarms_first)
        self._status("Queue: alarms first" if self.queue.alarms_first else "Queue: arrival order", 4000)

    def show_cheat_sheet(self) -> CheatSheet:
        if self.cheat_sheet is None:
            self.cheat_sheet = CheatSheet(self.keymap, self.window)
        self.cheat_sheet.show()
        self.cheat_sheet.raise_()
        self.cheat_sheet.activateWindow()
        self.cheat_sheet.setFocus()
        return self.cheat_sheet

    def show_statistics(self) -> ShiftStatsDialog | None:
        if self.audit is None:
            self._status("No audit log: no statistics", 4000)
            return None
        if self.stats_dialog is None:
            self.stats_dialog = ShiftStatsDialog(self.audit, self.window)
        self.stats_dialog.refresh()
        self.stats_dialog.show()
        self.stats_dialog.raise_()
        return self.stats_dialog

    def sign_in(self) -> None:
        name = ask_operator(self.window, self.operator or "")
        if name:
            self.window.set_operator(name)

    def on_operator(self, name: str) -> None:
        """MainWindow.set_operator calls this: a sign-in event in the audit log."""
        if self.audit is not None:
            try:
                self.audit.sign_in(name)
            except AuditError as exc:
                LOGGER.error("%s", exc)

    def close(self) -> None:
        """The window closes (may happen twice): dialogs, the focus hook, the audit log."""
        if self._closed:
            return
        self._closed = True
        app = QApplication.instance()
        if app is not None:
            app.focusChanged.disconnect(self._on_focus_changed)
        for dialog in (self.cheat_sheet, self.stats_dialog):
            if dialog is not None:
                dialog.close()
        if self.audit is not None:
            self.audit.close()
            self.audit = None


__all__ = ["TriageController", "SignInDialog", "CheatSheet", "ShiftStatsDialog", "ask_operator",
           "NON_IMAGE_MODALITIES"]
