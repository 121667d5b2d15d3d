"""The alert panel: every alarm object, unresolved first, impossible to miss.

Shows an ``AlertBook`` (station.core.triage.alerts): severity, category, probability, the bag or
patient, the source (scanner ATR with vendor and version, or the station's detector) and
the time; resolved alerts are dimmed with their decision. Activating a row (click, Enter)
emits ``alertActivated`` so the main window opens the scan and centres the viewers on the
object. GUI thread only.
"""

from __future__ import annotations

import logging
import time

from PySide6.QtCore import QAbstractTableModel, QModelIndex, QPersistentModelIndex, Qt, Signal
from PySide6.QtGui import QBrush, QColor, QFont
from PySide6.QtWidgets import (
    QAbstractItemView,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QTableView,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from station.core.triage.alerts import Alert, AlertBook

LOGGER = logging.getLogger(__name__)

SEVERITY_COLOURS = {
    "HIGH_THREAT": "#ff5c5c",
    "THREAT": "#ff9f43",
    "ANOMALY": "#f0d43a",
    "UNKNOWN": "#a0a7b0",
}
SEVERITY_TEXT = {"HIGH_THREAT": "High threat", "THREAT": "Threat", "ANOMALY": "Anomaly", "UNKNOWN": "Alarm"}
_DIM = QColor("#6d737c")
_Index = QModelIndex | QPersistentModelIndex


class AlertModel(QAbstractTableModel):
    """A table over ``AlertBook.alerts()``; ``refresh()`` after the book changes."""

    COLUMNS = ("", "Severity", "Category", "Prob.", "ID", "Source", "Raised", "Decision")

    def __init__(self, book: AlertBook, mode: str = "airport") -> None:
        super().__init__()
        self.book = book
        self.mode = mode
        self._rows: list[Alert] = []

    def refresh(self) -> None:
        self.beginResetModel()  # alerts are few (tens): a reset is cheap and keeps order simple
        self._rows = self.book.alerts()
        self.endResetModel()

    def alert_at(self, row: int) -> Alert | None:
        return self._rows[row] if 0 <= row < len(self._rows) else None

    def row_of(self, key: str) -> int | None:
        for i, alert in enumerate(self._rows):
            if alert.key == key:
                return i
        return None

    def rowCount(self, parent: _Index = QModelIndex()) -> int:  # noqa: N802, B008
        return 0 if parent.isValid() else len(self._rows)

    def columnCount(self, parent: _Index = QModelIndex()) -> int:  # noqa: N802, B008
        return 0 if parent.isValid() else len(self.COLUMNS)

    def headerData(self, section: int, orientation: Qt.Orientation, role: int = Qt.ItemDataRole.DisplayRole):  # noqa: N802
        if orientation == Qt.Orientation.Horizontal and role == Qt.ItemDataRole.DisplayRole:
            if section == 4:
                return "Bag / OOI" if self.mode == "airport" else "Patient"
            return self.COLUMNS[section]
        return None

    def data(self, index: _Index, role: int = Qt.ItemDataRole.DisplayRole):
        alert = self.alert_at(index.row())
        if alert is None:
            return None
        resolved = self.book.is_resolved(alert)
        column = index.column()
        if role == Qt.ItemDataRole.DisplayRole:
            if column == 0:
                return "●"
            if column == 1:
                return SEVERITY_TEXT.get(alert.severity, alert.severity.title())
            if column == 2:
                return alert.category.replace("_", " ").title()
            if column == 3:
                return f"{alert.probability:.0%}" if alert.probability is not None else ""
            if column == 4:
                return alert.patient_id
            if column == 5:
                return alert.source
            if column == 6:
                return time.strftime("%H:%M:%S", time.localtime(alert.raised_at))
            if column == 7:
                return (self.book.decision_for(alert) or "").title() if resolved else "pending"
        if role == Qt.ItemDataRole.ForegroundRole:
            if resolved:
                return QBrush(_DIM)
            if column in (0, 1):
                return QBrush(QColor(SEVERITY_COLOURS.get(alert.severity, "#a0a7b0")))
        if role == Qt.ItemDataRole.FontRole and column == 1 and not resolved:
            font = QFont()
            font.setBold(True)
            return font
        if role == Qt.ItemDataRole.ToolTipRole:
            box = ""
            if alert.base is not None and alert.extent is not None:
                box = f"\nbox at voxel {tuple(round(v) for v in alert.base)}, size {tuple(round(v) for v in alert.extent)}"
            return f"{alert.source}\nTDR {alert.tdr_uid}{box}"
        if role == Qt.ItemDataRole.TextAlignmentRole and column in (0, 3, 6):
            return int(Qt.AlignmentFlag.AlignCenter)
        return None


class AlertPanel(QWidget):
    """Header with the unresolved count and a mute switch, then the alert table."""

    alertActivated = Signal(object)  # Alert
    muteToggled = Signal(bool)
    decisionRequested = Signal(str)  # CLEAR, SUSPECT or THREAT for the open scan

    def __init__(self, book: AlertBook, mode: str = "airport", parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("AlertPanel")
        self.book = book
        self.model = AlertModel(book, mode)
        title = QLabel("Alerts")
        title.setObjectName("PanelTitle")
        self.count_label = QLabel("")
        self.count_label.setObjectName("AlertCount")
        self.mute_button = QToolButton()
        self.mute_button.setObjectName("MuteButton")
        self.mute_button.setCheckable(True)
        self.mute_button.setFocusPolicy(Qt.FocusPolicy.NoFocus)
        self.mute_button.setToolTip("Mute the alarm sound (M)")
        self.mute_button.toggled.connect(self._on_mute_toggled)
        head = QHBoxLayout()
        head.setContentsMargins(8, 6, 8, 2)
        head.setSpacing(10)
        head.addWidget(title)
        head.addWidget(self.count_label)
        head.addStretch(1)
        head.addWidget(self.mute_button)
        self.table = QTableView()
        self.table.setObjectName("AlertTable")
        self.table.setModel(self.model)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.verticalHeader().hide()
        self.table.setShowGrid(False)
        self.table.setAlternatingRowColors(True)
        self.table.setWordWrap(False)
        header = self.table.horizontalHeader()
        header.setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        header.setSectionResizeMode(5, QHeaderView.ResizeMode.Stretch)
        self.table.activated.connect(self._on_activated)
        self.table.clicked.connect(self._on_activated)
        # Decide the scan on screen (the triage workflow adds keys and a queue).
        decide = QHBoxLayout()
        decide.setContentsMargins(8, 4, 8, 6)
        decide.addWidget(QLabel("Decision for the scan on screen:"))
        self.decision_buttons: dict[str, QToolButton] = {}
        for decision, colour in (("CLEAR", "#5cc98a"), ("SUSPECT", "#f0b429"), ("THREAT", "#ff5c5c")):
            button = QToolButton()
            button.setText(decision.title())
            button.setObjectName(f"Decide{decision.title()}")
            button.setFocusPolicy(Qt.FocusPolicy.NoFocus)
            button.setStyleSheet(f"QToolButton {{ color: {colour}; font-weight: bold; padding: 2px 10px; }}")
            button.clicked.connect(lambda _=False, d=decision: self.decisionRequested.emit(d))
            decide.addWidget(button)
            self.decision_buttons[decision] = button
        decide.addStretch(1)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(0)
        layout.addLayout(head)
        layout.addWidget(self.table)
        layout.addLayout(decide)
        self._on_mute_toggled(False)
        self.refresh()

    @property
    def muted(self) -> bool:
        return self.mute_button.isChecked()

    def set_muted(self, muted: bool) -> None:
        self.mute_button.setChecked(muted)

    def refresh(self) -> None:
        """Re-read the book (after TDRs arrived or a decision was recorded)."""
        selected = self.current_alert()
        self.model.refresh()
        unresolved = len(self.book.unresolved())
        self.count_label.setText(f"{unresolved} unresolved" if unresolved else "none unresolved")
        self.count_label.setProperty("alarm", bool(unresolved))
        self.count_label.setStyleSheet(
            "color: #ff5c5c; font-weight: bold;" if unresolved else "color: #8b929c;")
        if selected is not None:
            row = self.model.row_of(selected.key)
            if row is not None:
                self.table.selectRow(row)

    def current_alert(self) -> Alert | None:
        index = self.table.currentIndex()
        return self.model.alert_at(index.row()) if index.isValid() else None

    def select_alert(self, key: str) -> bool:
        row = self.model.row_of(key)
        if row is None:
            return False
        self.table.selectRow(row)
        self._on_activated(self.model.index(row, 0))
        return True

    def _on_activated(self, index: QModelIndex) -> None:
        alert = self.model.alert_at(index.row())
        if alert is not None:
            self.alertActivated.emit(alert)

    def _on_mute_toggled(self, muted: bool) -> None:
        self.mute_button.setText("Sound off" if muted else "Sound on")
        self.muteToggled.emit(muted)
