"""The scan list: every series in the store, pending scans first, updated as slices arrive.

``ScanListModel`` keeps its own ordered copy of ``Store.series_list()`` rows and applies
changes row by row (insert, move, dataChanged) instead of resetting, so the selection and
the scroll position survive a scanner sending 300 slices a second. ``ScanList`` is the
keyboard-navigable table on top of it. Everything here runs on the GUI thread.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable

from PySide6.QtCore import (
    QAbstractTableModel,
    QItemSelectionModel,
    QModelIndex,
    QPersistentModelIndex,
    Qt,
    QTimer,
    Signal,
)
from PySide6.QtGui import QColor, QFont, QFontMetrics, QKeyEvent, QPainter, QPen
from PySide6.QtWidgets import (
    QAbstractItemView,
    QHeaderView,
    QStyle,
    QStyledItemDelegate,
    QStyleOptionViewItem,
    QTableView,
    QWidget,
)

from station.core.store.store import SeriesRow, Store

LOGGER = logging.getLogger(__name__)

REPORT_MODALITIES = frozenset({"TDR"})  # listed elsewhere (alert panel), not as scans

#: A series that got an instance less than this many seconds ago is shown as receiving.
RECEIVING_S = 3.0

COL_STATUS, COL_ID, COL_MODALITY, COL_DESCRIPTION, COL_IMAGES, COL_SIZE, COL_RECEIVED = range(7)

#: Item data role carrying "receiving" / "new" / "viewed" for the status dot.
STATUS_ROLE = Qt.ItemDataRole.UserRole + 1

_ID_LABEL = {"airport": "Bag / OOI", "clinic": "Patient"}
_HEADERS = ["", "", "Mod.", "Description", "Images", "Size", "Received"]

# Status colours chosen to stay distinguishable for the common colour-vision deficiencies
# (blue/amber, not red/green) and to read on the dark theme.
_RECEIVING = QColor("#4fb3ff")
_NEW = QColor("#f0b429")
_VIEWED = QColor("#5c6370")


def human_size(nbytes: int) -> str:
    """Bytes as a short human-readable size (1000-based, like file managers)."""
    value = float(nbytes)
    for unit in ("B", "kB", "MB", "GB"):
        if value < 1000 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" or value >= 100 else f"{value:.1f} {unit}"
        value /= 1000
    return f"{value:.1f} TB"  # unreachable; keeps type checkers quiet


def received_text(ts: float, now: float | None = None) -> str:
    """Time of day for today's scans, day and time for older ones (the tooltip has the year)."""
    now = time.time() if now is None else now
    local, today = time.localtime(ts), time.localtime(now)
    if local[:3] == today[:3]:
        return time.strftime("%H:%M:%S", local)
    return time.strftime("%d %b %H:%M", local)


class ScanListModel(QAbstractTableModel):
    """Series rows ordered pending-first, then newest first; GUI thread only.

    A series counts as pending until ``mark_viewed`` is called for it (the main window
    does so when it opens a scan). The scan currently being viewed keeps its place until
    another one is opened, so a row never jumps away from under the keyboard cursor.
    """

    def __init__(self, store: Store, mode: str = "airport", parent=None) -> None:
        super().__init__(parent)
        self._store = store
        self._mode = mode
        self._rows: list[SeriesRow] = []
        self._viewed: set[str] = set()
        self._pinned: str | None = None  # the open scan: sorted as it was when opened
        self._pinned_was_viewed = False
        # While any row shows "receiving", re-check once a second so it turns to "new"
        # when the scanner has finished sending.
        self._status_timer = QTimer(self)
        self._status_timer.setInterval(1000)
        self._status_timer.timeout.connect(self._on_status_tick)

    # -- reading -------------------------------------------------------------------------

    def rowCount(self, parent: QModelIndex | QPersistentModelIndex = QModelIndex()) -> int:
        return 0 if parent.isValid() else len(self._rows)

    def columnCount(self, parent: QModelIndex | QPersistentModelIndex = QModelIndex()) -> int:
        return 0 if parent.isValid() else len(_HEADERS)

    def headerData(self, section: int, orientation: Qt.Orientation, role: int = Qt.ItemDataRole.DisplayRole):
        if orientation != Qt.Orientation.Horizontal:
            return None
        if role == Qt.ItemDataRole.DisplayRole:
            return _ID_LABEL.get(self._mode, "ID") if section == COL_ID else _HEADERS[section]
        if role == Qt.ItemDataRole.ToolTipRole and section == COL_STATUS:
            return "Status: receiving, new (not yet opened) or viewed"
        if role == Qt.ItemDataRole.TextAlignmentRole and section in (COL_IMAGES, COL_SIZE):
            return int(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
        return None

    def status(self, row: SeriesRow, now: float | None = None) -> str:
        """"receiving", "new" or "viewed"."""
        now = time.time() if now is None else now
        if now - row.last_received < RECEIVING_S:
            return "receiving"
        return "viewed" if row.series_uid in self._viewed else "new"

    def data(self, index: QModelIndex | QPersistentModelIndex, role: int = Qt.ItemDataRole.DisplayRole):
        if not index.isValid() or index.row() >= len(self._rows):
            return None
        row = self._rows[index.row()]
        col = index.column()
        if role == Qt.ItemDataRole.DisplayRole:
            return self._display(row, col)
        if role == Qt.ItemDataRole.ForegroundRole and col == COL_STATUS:
            return {"receiving": _RECEIVING, "new": _NEW, "viewed": _VIEWED}[self.status(row)]
        if role == Qt.ItemDataRole.FontRole and col == COL_ID and row.series_uid not in self._viewed:
            font = QFont()
            font.setBold(True)  # unread mail convention: what still needs a look stands out
            return font
        if role == Qt.ItemDataRole.TextAlignmentRole:
            if col == COL_STATUS:
                return int(Qt.AlignmentFlag.AlignCenter)
            if col in (COL_IMAGES, COL_SIZE):
                return int(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
        if role == Qt.ItemDataRole.ToolTipRole:
            return self._tooltip(row, col)
        if role == Qt.ItemDataRole.UserRole:
            return row.series_uid
        if role == STATUS_ROLE:
            return self.status(row)
        return None

    def _display(self, row: SeriesRow, col: int) -> str:
        if col == COL_STATUS:
            return "○" if self.status(row) == "viewed" else "●"
        if col == COL_ID:
            return row.patient_id or "(no ID)"
        if col == COL_MODALITY:
            return row.modality
        if col == COL_DESCRIPTION:
            return row.description or row.study_description
        if col == COL_IMAGES:
            # A DICOS CT is one instance with hundreds of frames: count what the eye sees.
            return str(max(row.frames, row.instances))
        if col == COL_SIZE:
            return human_size(row.bytes)
        if col == COL_RECEIVED:
            return received_text(row.first_received)
        return ""

    def _tooltip(self, row: SeriesRow, col: int) -> str:
        if col == COL_STATUS:
            return {"receiving": "Receiving…", "new": "New: not yet opened", "viewed": "Viewed"}[
                self.status(row)]
        if col == COL_IMAGES:
            return f"{row.instances} instance(s), {row.frames} frame(s)"
        if col == COL_RECEIVED:
            return (f"first instance {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(row.first_received))}\n"
                    f"last instance {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(row.last_received))}")
        lines = [
            f"{_ID_LABEL.get(self._mode, 'ID')}: {row.patient_id}" + (f" ({row.patient_name})" if row.patient_name else ""),
            f"Study: {row.study_description or '-'} {row.study_date}",
            f"Series {row.series_number if row.series_number is not None else '-'}: {row.description or '-'}",
            f"Series UID: {row.series_uid}",
        ]
        return "\n".join(lines)

    # -- lookups for the view and the main window -----------------------------------------

    @property
    def mode(self) -> str:
        return self._mode

    def set_mode(self, mode: str) -> None:
        """Switch the ID column between airport ("Bag / OOI") and clinic ("Patient") wording."""
        self._mode = mode
        self.headerDataChanged.emit(Qt.Orientation.Horizontal, COL_ID, COL_ID)

    def row_of(self, series_uid: str) -> int | None:
        for i, row in enumerate(self._rows):
            if row.series_uid == series_uid:
                return i
        return None

    def series_at(self, row: int) -> SeriesRow | None:
        return self._rows[row] if 0 <= row < len(self._rows) else None

    def uids(self) -> list[str]:
        """Series UIDs in display order."""
        return [r.series_uid for r in self._rows]

    def is_viewed(self, series_uid: str) -> bool:
        return series_uid in self._viewed

    def mark_viewed(self, series_uid: str) -> None:
        """Record that `series_uid` was opened; it stays in place while it is the open scan."""
        previous = self._pinned
        self._pinned_was_viewed = series_uid in self._viewed
        self._pinned = series_uid
        self._viewed.add(series_uid)
        row = self.row_of(series_uid)
        if row is not None:
            self.dataChanged.emit(self.index(row, COL_STATUS), self.index(row, COL_ID))
        if previous != series_uid:
            self._apply(sorted(self._rows, key=self._sort_key))

    def _sort_key(self, row: SeriesRow) -> tuple[bool, float, str]:
        if row.series_uid == self._pinned:
            viewed = self._pinned_was_viewed
        else:
            viewed = row.series_uid in self._viewed
        return (viewed, -row.first_received, row.series_uid)

    # -- updating ------------------------------------------------------------------------------

    def refresh(self, series_uids: Iterable[str] | None = None) -> None:
        """Bring the rows up to date with the store. GUI thread (slot of seriesChanged).

        `series_uids` names the series known to have changed; other rows are still checked,
        because a full index query costs the same and catches deletions. Rows are changed,
        inserted and moved individually so persistent indexes (the selection) stay valid.
        """
        del series_uids  # one query returns everything; kept for the slot's signature
        try:
            # Threat detection reports are not scans: they appear in the alert panel.
            rows = [r for r in self._store.series_list() if r.modality.upper() not in REPORT_MODALITIES]
        except Exception:  # a busy or closing index must not take the GUI down
            LOGGER.exception("cannot read the series list")
            return
        self._apply(sorted(rows, key=self._sort_key))
        now = time.time()
        if any(self.status(r, now) == "receiving" for r in self._rows):
            if not self._status_timer.isActive():
                self._status_timer.start()

    def _apply(self, target: list[SeriesRow]) -> None:
        """Turn the current rows into `target` with removes, moves, inserts and dataChanged."""
        root = QModelIndex()
        wanted = {r.series_uid for r in target}
        for i in range(len(self._rows) - 1, -1, -1):
            if self._rows[i].series_uid not in wanted:
                self.beginRemoveRows(root, i, i)
                del self._rows[i]
                self.endRemoveRows()
        last_col = len(_HEADERS) - 1
        for i, row in enumerate(target):
            # Invariant: rows [0, i) already equal target[0:i], so a match is at j >= i.
            if i < len(self._rows) and self._rows[i].series_uid == row.series_uid:
                if self._rows[i] != row:
                    self._rows[i] = row
                    self.dataChanged.emit(self.index(i, 0), self.index(i, last_col))
                continue
            j = next((k for k in range(i + 1, len(self._rows)) if self._rows[k].series_uid == row.series_uid),
                     None)
            if j is None:
                self.beginInsertRows(root, i, i)
                self._rows.insert(i, row)
                self.endInsertRows()
                continue
            self.beginMoveRows(root, j, j, root, i)
            old = self._rows.pop(j)
            self._rows.insert(i, row)
            self.endMoveRows()
            if old != row:
                self.dataChanged.emit(self.index(i, 0), self.index(i, last_col))

    def _on_status_tick(self) -> None:
        """Timer slot: repaint the status dots; stop ticking once nothing is receiving."""
        if not self._rows:
            self._status_timer.stop()
            return
        self.dataChanged.emit(self.index(0, COL_STATUS), self.index(len(self._rows) - 1, COL_STATUS))
        now = time.time()
        if not any(self.status(r, now) == "receiving" for r in self._rows):
            self._status_timer.stop()


class _StatusDotDelegate(QStyledItemDelegate):
    """Paints the status column as a dot: filled for new or receiving, a ring once viewed.

    A painted dot keeps its colour on a selected row (text colour would turn white) and
    does not depend on the font having a nice bullet glyph.
    """

    def paint(self, painter: QPainter, option: QStyleOptionViewItem, index: QModelIndex) -> None:
        opt = QStyleOptionViewItem(option)
        self.initStyleOption(opt, index)
        opt.text = ""
        style = opt.widget.style() if opt.widget is not None else None
        if style is not None:
            style.drawControl(QStyle.ControlElement.CE_ItemViewItem, opt, painter, opt.widget)
        status = index.data(STATUS_ROLE)
        color = {"receiving": _RECEIVING, "new": _NEW}.get(status, _VIEWED)
        radius = 4.5
        center = option.rect.center()
        painter.save()
        painter.setRenderHint(QPainter.RenderHint.Antialiasing)
        if status == "viewed":
            painter.setPen(QPen(color, 1.5))
            painter.setBrush(Qt.BrushStyle.NoBrush)
        else:
            painter.setPen(Qt.PenStyle.NoPen)
            painter.setBrush(color)
        painter.drawEllipse(center.x() + 0.5 - radius, center.y() + 0.5 - radius, 2 * radius, 2 * radius)
        painter.restore()


class ScanList(QTableView):
    """The scan table. Emits ``seriesChosen(uid, explicit)`` when the current row changes.

    ``explicit`` is True when the user picked the row (mouse or keyboard) and False when the
    program selected it (``select_series(uid)``), so the main window can tell an analyst's
    choice from automatic following of new arrivals. GUI thread only.
    """

    seriesChosen = Signal(str, bool)
    #: Enter/Return on a row: the user wants to look at the image now.
    activatedSeries = Signal(str)

    def __init__(self, store: Store, mode: str = "airport", parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("ScanList")
        self._programmatic = False
        self._last_uid: str | None = None
        self.scan_model = ScanListModel(store, mode, self)
        self.setModel(self.scan_model)
        self.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.setAlternatingRowColors(True)
        self.setShowGrid(False)
        self.setWordWrap(False)
        self.setTabKeyNavigation(False)  # Tab moves focus to the viewer, not to the next cell
        self.setFocusPolicy(Qt.FocusPolicy.StrongFocus)
        self.setVerticalScrollMode(QAbstractItemView.ScrollMode.ScrollPerPixel)
        self.verticalHeader().hide()
        self.verticalHeader().setDefaultSectionSize(max(26, self.fontMetrics().height() + 10))
        header = self.horizontalHeader()
        header.setHighlightSections(False)
        header.setStretchLastSection(False)
        header.setSectionResizeMode(QHeaderView.ResizeMode.Interactive)
        header.setSectionResizeMode(COL_DESCRIPTION, QHeaderView.ResizeMode.Stretch)
        header.setSectionResizeMode(COL_STATUS, QHeaderView.ResizeMode.Fixed)
        header.setDefaultAlignment(Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignVCenter)
        # Widths from typical content in the real font; cell padding comes from style.qss.
        bold = QFont(self.font())
        bold.setBold(True)
        plain, strong = self.fontMetrics(), QFontMetrics(bold)
        pad = 28
        self.setColumnWidth(COL_STATUS, 26)
        self.setColumnWidth(COL_ID, strong.horizontalAdvance("BAG-000000-00") + pad)
        self.setColumnWidth(COL_MODALITY, plain.horizontalAdvance("Mod.") + pad // 2)
        self.setColumnWidth(COL_IMAGES, plain.horizontalAdvance("Images") + pad)
        self.setColumnWidth(COL_SIZE, plain.horizontalAdvance("999.9 MB") + pad)
        self.setColumnWidth(COL_RECEIVED, plain.horizontalAdvance("28 Nov 00:00") + pad)
        self.setItemDelegateForColumn(COL_STATUS, _StatusDotDelegate(self))
        self.clicked.connect(self._on_clicked)
        self.selectionModel().currentRowChanged.connect(self._on_current_row_changed)
        self.scan_model.refresh()

    # -- API ----------------------------------------------------------------------------

    def current_series(self) -> str | None:
        index = self.currentIndex()
        if not index.isValid():
            return None
        row = self.scan_model.series_at(index.row())
        return row.series_uid if row is not None else None

    def select_series(self, series_uid: str, *, explicit: bool = False) -> bool:
        """Make `series_uid` the current row; return False if it is not listed."""
        row = self.scan_model.row_of(series_uid)
        if row is None:
            return False
        self._programmatic = not explicit
        try:
            self.selectionModel().setCurrentIndex(
                self.scan_model.index(row, COL_ID),
                QItemSelectionModel.SelectionFlag.ClearAndSelect | QItemSelectionModel.SelectionFlag.Rows,
            )
        finally:
            self._programmatic = False
        self.scrollTo(self.scan_model.index(row, COL_ID), QAbstractItemView.ScrollHint.EnsureVisible)
        return True

    def clear_choice(self) -> None:
        """Clear the selection (the main window then follows new arrivals again)."""
        self._programmatic = True
        self._last_uid = None
        try:
            self.selectionModel().clear()
        finally:
            self._programmatic = False

    # -- slots ----------------------------------------------------------------------------

    def _on_series_changed(self, series_uids: set[str]) -> None:
        """Slot for ``EventBridge.seriesChanged`` (GUI thread)."""
        self.scan_model.refresh(series_uids)

    def _on_current_row_changed(self, current: QModelIndex, _previous: QModelIndex) -> None:
        if not current.isValid():
            return
        row = self.scan_model.series_at(current.row())
        # Rows moving under the cursor (a new scan inserted above) also change the current
        # row number; only a different series is a choice.
        if row is not None and row.series_uid != self._last_uid:
            self._last_uid = row.series_uid
            self.seriesChosen.emit(row.series_uid, not self._programmatic)

    def _on_clicked(self, index: QModelIndex) -> None:
        # Clicking the row that is already current (say, a scan opened automatically) is
        # still a choice: the analyst wants to keep that scan.
        row = self.scan_model.series_at(index.row())
        if row is not None and row.series_uid == self._last_uid:
            self.seriesChosen.emit(row.series_uid, True)

    def keyPressEvent(self, event: QKeyEvent) -> None:
        if event.key() in (Qt.Key.Key_Return, Qt.Key.Key_Enter):
            uid = self.current_series()
            if uid:
                self.activatedSeries.emit(uid)
                return
        super().keyPressEvent(event)
