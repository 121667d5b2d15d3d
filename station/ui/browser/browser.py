"""The cache browser: every scan held locally, searchable as you type, with thumbnails and
the housekeeping actions (open, pin, delete, export, import).

``BrowserModel`` is a table model over rows read from the SQLite index in one query
(``Store.browse_rows``); filtering and sorting are done on that in-memory list (a few
milliseconds for 10,000 scans) and rows reach the view in batches through ``fetchMore``.
``CacheBrowser`` is the widget; ``make_browser_dock`` puts it in the main window.
Thumbnails, imports and exports run on the browser's own thread pool; their results come
back as queued signals. Everything else runs on the GUI thread.

Search syntax (terms combine with AND)::

    BAG-12 mod:CT alarm:yes 2026-11-01..2026-11-22 pin:yes dec:clear src:import

Free words match ID, name, description or UID (case-insensitive). ``mod:CT,DX`` modality;
``alarm:yes|no|resolved``; a date ``2026-11-01``, a range ``A..B``, ``A..`` or ``..B``;
``pin:yes|no``; ``dec:<decision>`` (``dec:none`` for undecided); ``src:<text>``.

Remote stores. With ``[[remotes]]`` configured, the "Search archive" switch (Ctrl+Shift+A)
also sends the search to every remote (``station.ui.browser.remote.RemoteStores``: QIDO-RS
through the query cache, a short pause after typing): the first word matches ID or name,
dates and ``mod:`` go along, the other terms filter the answers here. Remote scans appear
beside the local ones, marked ``remote: <name>`` in blue, unless the same series is held
locally; opening one shows it in the viewer while its frames arrive. Pin, delete and
export apply to local scans only. When a remote does not answer, the last answer to the
same search is shown (offline) and the status line says so.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PySide6.QtCore import (
    QAbstractTableModel,
    QModelIndex,
    QObject,
    QPersistentModelIndex,
    QRunnable,
    QSize,
    Qt,
    QThreadPool,
    QTimer,
    Signal,
)
from PySide6.QtGui import QAction, QBrush, QColor, QFont, QImage, QKeySequence, QPixmap
from PySide6.QtWidgets import (
    QAbstractItemView,
    QCheckBox,
    QDockWidget,
    QFileDialog,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QMessageBox,
    QTableView,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from station.core.triage.alerts import AlertBook
from station.core.store.store import Store, StoreError
from station.net.remote.search import RemoteHit, SearchTerms
from station.ui.browser.remote import RemoteStores
from station.ui.scan_list import human_size

LOGGER = logging.getLogger(__name__)

(COL_THUMB, COL_ID, COL_NAME, COL_DATE, COL_MODALITY, COL_IMAGES, COL_SIZE, COL_ALARM,
 COL_DECISION, COL_SOURCE) = range(10)
_HEADERS = ["", "ID", "Name / description", "Date", "Mod.", "Images", "Size", "Alarm", "Decision", "Source"]
_ID_LABEL = {"airport": "Bag / OOI", "clinic": "Patient"}

#: Rows handed to the view per ``fetchMore``: the view asks for more as it scrolls.
FETCH_BATCH = 500
THUMB_PX = 40
#: Thumbnails kept in memory (a 40 px pixmap is ~6 kB).
THUMB_CACHE = 2000
#: Pause after the last keystroke before the search goes to the remote stores.
REMOTE_SEARCH_DELAY_MS = 350
REPORT_MODALITIES = frozenset({"TDR"})  # alarm objects, not scans: shown only with mod:TDR

_ALARM = QColor("#ff6b6b")
_RESOLVED = QColor("#5cc98a")
_DIM = QColor("#8b929c")
_PIN = "★ "
_REMOTE = QColor("#6cb4ff")


# ------------------------------------------------------------------------- rows and query


@dataclass(slots=True)
class BrowserEntry:
    """One local scan as the browser shows it (a plain record, GUI thread)."""

    series_uid: str
    patient_id: str
    patient_name: str
    description: str
    date: str  # ISO YYYY-MM-DD
    modality: str
    images: int
    nbytes: int
    received: float
    pinned: bool
    alarm: str  # "yes" (unresolved), "resolved" or "no"
    decision: str
    source: str
    haystack: str = field(default="", repr=False)
    remote: str = ""  # the remote store's name for a scan found there ("" = local)
    study_uid: str = ""  # remote scans: needed to address the series (WADO-RS)


def remote_entry(hit: RemoteHit) -> BrowserEntry:
    """A browser row for a series found on a remote store."""
    return BrowserEntry(
        series_uid=hit.series_uid, patient_id=hit.patient_id, patient_name=hit.patient_name,
        description=hit.description, date=_iso_date(hit.study_date, 0), modality=hit.modality,
        images=hit.instances, nbytes=0, received=0.0, pinned=False, alarm="no", decision="",
        source=f"remote: {hit.remote}", remote=hit.remote, study_uid=hit.study_uid,
        haystack=f"{hit.patient_id}\n{hit.patient_name}\n{hit.description}\n{hit.series_uid}".lower(),
    )


def _iso_date(study_date: str, received: float) -> str:
    d = study_date.strip()
    if len(d) == 8 and d.isdigit():
        return f"{d[:4]}-{d[4:6]}-{d[6:]}"
    return time.strftime("%Y-%m-%d", time.localtime(received)) if received else ""


def load_entries(store: Store, book: AlertBook | None) -> list[BrowserEntry]:
    """Read every scan from the index in one query and attach alarm state. GUI thread."""
    alarm: dict[str, str] = {}
    decided: dict[str, str] = {}
    if book is not None:
        for alert in book.alerts():
            if alert.series_uid is None:
                continue
            if book.is_resolved(alert):
                alarm.setdefault(alert.series_uid, "resolved")
                decided.setdefault(alert.series_uid, book.decision_for(alert) or "")
            else:
                alarm[alert.series_uid] = "yes"
    entries = []
    for (uid, pid, name, _study, sdate, sdesc, mod, desc, inst, frames, nbytes, first, _last,
         pinned, _access, decision, source) in store.browse_rows():
        text = desc or sdesc
        entries.append(BrowserEntry(
            series_uid=uid, patient_id=pid, patient_name=(name or "").replace("^", " ").strip(),
            description=text, date=_iso_date(sdate, first), modality=mod, images=max(inst, frames),
            nbytes=nbytes, received=first, pinned=bool(pinned), alarm=alarm.get(uid, "no"),
            decision=decided.get(uid) or decision, source=source or "received",
            haystack=f"{pid}\n{name}\n{text}\n{uid}".lower(),
        ))
    return entries


_DATE = re.compile(r"^(\d{4})-?(\d{2})-?(\d{2})$")


def _norm_date(text: str) -> str | None:
    m = _DATE.match(text)
    return f"{m[1]}-{m[2]}-{m[3]}" if m else None


@dataclass(frozen=True, slots=True)
class BrowserQuery:
    """A parsed search-box text; ``matches`` decides one row. Pure Python, any thread."""

    words: tuple[str, ...] = ()
    modalities: frozenset[str] = frozenset()
    alarm: str | None = None  # "yes", "no", "resolved"
    date_from: str | None = None
    date_to: str | None = None
    pinned: bool | None = None
    decision: str | None = None  # upper case; "" means undecided
    source: str | None = None
    raw_words: tuple[str, ...] = ()  # the words as typed (a remote may match IDs by case)

    @property
    def local_only(self) -> bool:
        """Asks about local state (alarms, pins, decisions): no remote scan can match."""
        return self.alarm in ("yes", "resolved") or self.pinned is True or bool(self.decision)

    def remote_terms(self) -> SearchTerms:
        return SearchTerms(words=self.raw_words, modalities=tuple(sorted(self.modalities)),
                           date_from=self.date_from, date_to=self.date_to)

    def matches(self, e: BrowserEntry) -> bool:
        if self.modalities:
            if e.modality.upper() not in self.modalities:
                return False
        elif e.modality in REPORT_MODALITIES:
            return False
        if self.alarm is not None and e.alarm != self.alarm:
            return False
        if self.date_from is not None and e.date < self.date_from:
            return False
        if self.date_to is not None and e.date > self.date_to:
            return False
        if self.pinned is not None and e.pinned != self.pinned:
            return False
        if self.decision is not None and e.decision.upper() != self.decision:
            return False
        if self.source is not None and self.source not in e.source.lower():
            return False
        hay = e.haystack
        return all(w in hay for w in self.words)


_YES = {"yes", "y", "1", "true", "on"}


def parse_query(text: str) -> BrowserQuery:
    """Parse the search syntax of the module docstring; unknown ``key:`` terms are words."""
    words: list[str] = []
    raw: list[str] = []
    kw: dict[str, object] = {}
    for token in text.split():
        key, sep, value = token.partition(":")
        key = key.lower()
        if sep and value:
            v = value.lower()
            if key in ("mod", "modality"):
                kw["modalities"] = frozenset(m.upper() for m in value.split(",") if m)
                continue
            if key == "alarm":
                kw["alarm"] = "yes" if v in _YES or v == "unresolved" else ("resolved" if v.startswith("res") else "no")
                continue
            if key in ("pin", "pinned"):
                kw["pinned"] = v in _YES
                continue
            if key in ("dec", "decision"):
                kw["decision"] = "" if v in ("none", "-") else value.upper()
                continue
            if key in ("src", "source"):
                kw["source"] = v
                continue
        if ".." in token:
            lo, _, hi = token.partition("..")
            lo_d, hi_d = _norm_date(lo) if lo else None, _norm_date(hi) if hi else None
            if (lo_d or not lo) and (hi_d or not hi) and (lo or hi):
                kw["date_from"], kw["date_to"] = lo_d, hi_d
                continue
        day = _norm_date(token)
        if day is not None:
            kw["date_from"] = kw["date_to"] = day
            continue
        words.append(token.lower())
        raw.append(token)
    return BrowserQuery(words=tuple(words), raw_words=tuple(raw), **kw)  # type: ignore[arg-type]


_SORT_KEYS: dict[int, Callable[[BrowserEntry], object]] = {
    COL_THUMB: lambda e: (not e.pinned, -e.received),
    COL_ID: lambda e: e.patient_id.lower(),
    COL_NAME: lambda e: (e.patient_name or e.description).lower(),
    COL_DATE: lambda e: (e.date, e.received),
    COL_MODALITY: lambda e: e.modality,
    COL_IMAGES: lambda e: e.images,
    COL_SIZE: lambda e: e.nbytes,
    COL_ALARM: lambda e: {"yes": 0, "resolved": 1}.get(e.alarm, 2),
    COL_DECISION: lambda e: e.decision,
    COL_SOURCE: lambda e: e.source.lower(),
}


# ----------------------------------------------------------------------------- the model


_GROUP_SHADE = QBrush(QColor("#2c3036"))  # every other bag / patient group, on the dark theme


class BrowserModel(QAbstractTableModel):
    """Filtered, sorted rows of ``BrowserEntry``; rows reach the view in ``FETCH_BATCH``es.

    GUI thread only. ``thumbnailWanted`` is emitted the first time the view paints a
    row's thumbnail cell; the browser renders it off the GUI thread and calls
    ``set_thumbnail``.
    """

    thumbnailWanted = Signal(str)

    def __init__(self, mode: str = "airport", parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._mode = mode
        self._all: list[BrowserEntry] = []
        self._remote: list[BrowserEntry] = []
        self._rows: list[BrowserEntry] = []
        self._shown = 0
        self._query = BrowserQuery()
        self._sort_col = COL_THUMB
        self._sort_order = Qt.SortOrder.AscendingOrder
        self._thumbs: dict[str, QPixmap | None] = {}  # None: asked for, not there yet / none
        # Grouped by bag / patient: a group's scans are kept together, in the chosen order,
        # and the group's place is that of its first scan; the ID shows once per group.
        self.grouped = True
        self._group_first: list[bool] = []
        self._group_size: dict[str, int] = {}
        self._group_odd: list[bool] = []

    # -- content ------------------------------------------------------------------------

    def set_entries(self, entries: list[BrowserEntry]) -> None:
        self._all = entries
        self._rebuild()

    def set_remote_entries(self, entries: list[BrowserEntry]) -> None:
        """Scans found on remote stores, shown beside the local ones (a series held
        locally is shown once, as local)."""
        self._remote = entries
        self._rebuild()

    def remote_count(self) -> int:
        return sum(1 for e in self._rows if e.remote)

    def set_query(self, query: BrowserQuery) -> None:
        self._query = query
        self._rebuild()

    def entries(self) -> list[BrowserEntry]:
        """The rows matching the query, in display order (also those not fetched yet)."""
        return self._rows

    def total(self) -> int:
        return len(self._all)

    def entry(self, row: int) -> BrowserEntry | None:
        return self._rows[row] if 0 <= row < self._shown else None

    def row_of(self, series_uid: str) -> int | None:
        for i, e in enumerate(self._rows):
            if e.series_uid == series_uid:
                if i >= self._shown:
                    self._fetch_to(i + 1)
                return i
        return None

    def _rebuild(self) -> None:
        self.beginResetModel()
        q = self._query
        rows = [e for e in self._all if q.matches(e)]
        if self._remote:
            local = {e.series_uid for e in self._all}
            rows += [e for e in self._remote if e.series_uid not in local and q.matches(e)]
        rows.sort(key=_SORT_KEYS[self._sort_col], reverse=self._sort_order == Qt.SortOrder.DescendingOrder)
        if self.grouped:
            first_at: dict[str, int] = {}
            for i, e in enumerate(rows):
                first_at.setdefault(e.patient_id, i)
            rows.sort(key=lambda e: first_at[e.patient_id])  # stable: keeps the order inside a group
        self._group_first, self._group_odd, self._group_size = [], [], {}
        odd = True
        for i, e in enumerate(rows):
            starts = i == 0 or rows[i - 1].patient_id != e.patient_id
            odd = (not odd) if starts else odd
            self._group_first.append(starts)
            self._group_odd.append(odd)
            self._group_size[e.patient_id] = self._group_size.get(e.patient_id, 0) + 1
        self._rows = rows
        self._shown = min(len(rows), FETCH_BATCH)
        self.endResetModel()

    def set_grouped(self, grouped: bool) -> None:
        self.grouped = bool(grouped)
        self._rebuild()

    def sort(self, column: int, order: Qt.SortOrder = Qt.SortOrder.AscendingOrder) -> None:
        if column not in _SORT_KEYS:
            return
        self._sort_col, self._sort_order = column, order
        self.layoutAboutToBeChanged.emit()
        self._rebuild()
        self.layoutChanged.emit()

    # -- lazy fetching --------------------------------------------------------------------

    def canFetchMore(self, parent: QModelIndex | QPersistentModelIndex = QModelIndex()) -> bool:  # noqa: N802, B008
        return not parent.isValid() and self._shown < len(self._rows)

    def fetchMore(self, parent: QModelIndex | QPersistentModelIndex = QModelIndex()) -> None:  # noqa: N802, B008
        if not parent.isValid():
            self._fetch_to(self._shown + FETCH_BATCH)

    def _fetch_to(self, n: int) -> None:
        n = min(n, len(self._rows))
        if n <= self._shown:
            return
        self.beginInsertRows(QModelIndex(), self._shown, n - 1)
        self._shown = n
        self.endInsertRows()

    # -- Qt model API ---------------------------------------------------------------------

    def rowCount(self, parent: QModelIndex | QPersistentModelIndex = QModelIndex()) -> int:  # noqa: N802, B008
        return 0 if parent.isValid() else self._shown

    def columnCount(self, parent: QModelIndex | QPersistentModelIndex = QModelIndex()) -> int:  # noqa: N802, B008
        return 0 if parent.isValid() else len(_HEADERS)

    def headerData(self, section: int, orientation: Qt.Orientation, role: int = Qt.ItemDataRole.DisplayRole):  # noqa: N802
        if orientation != Qt.Orientation.Horizontal:
            return None
        if role == Qt.ItemDataRole.DisplayRole:
            return _ID_LABEL.get(self._mode, "ID") if section == COL_ID else _HEADERS[section]
        if role == Qt.ItemDataRole.ToolTipRole:
            if section == COL_THUMB:
                return "Middle slice; sort: pinned first, then newest"
            if section == COL_ALARM:
                return "Alarm: unresolved (ALARM), resolved, or none"
        return None

    def data(self, index: QModelIndex | QPersistentModelIndex, role: int = Qt.ItemDataRole.DisplayRole):
        if not index.isValid() or index.row() >= self._shown:
            return None
        e = self._rows[index.row()]
        col = index.column()
        row = index.row()
        if role == Qt.ItemDataRole.DisplayRole:
            if self.grouped and col == COL_ID:
                if not self._group_first[row]:
                    return "    └"  # the same bag / patient as the row above
                n = self._group_size.get(e.patient_id, 1)
                return self._display(e, col) + (f"   ({n})" if n > 1 else "")
            return self._display(e, col)
        if role == Qt.ItemDataRole.BackgroundRole and self.grouped:
            return _GROUP_SHADE if self._group_odd[row] else None
        if role == Qt.ItemDataRole.DecorationRole and col == COL_THUMB:
            if e.remote:
                return None  # no pixels here until opened
            if e.series_uid not in self._thumbs:
                self._thumbs[e.series_uid] = None
                self.thumbnailWanted.emit(e.series_uid)
            return self._thumbs[e.series_uid]
        if role == Qt.ItemDataRole.ForegroundRole:
            if e.remote and col in (COL_ID, COL_SOURCE):
                return _REMOTE
            if col == COL_ALARM:
                return {"yes": _ALARM, "resolved": _RESOLVED}.get(e.alarm, _DIM)
            if col in (COL_SOURCE, COL_DATE):
                return _DIM
        if role == Qt.ItemDataRole.FontRole and col == COL_ALARM and e.alarm == "yes":
            font = QFont()
            font.setBold(True)
            return font
        if role == Qt.ItemDataRole.TextAlignmentRole and col in (COL_IMAGES, COL_SIZE):
            return int(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
        if role == Qt.ItemDataRole.ToolTipRole and e.remote:
            return (f"{e.patient_id} {e.patient_name}\n{e.description}\nSeries UID: {e.series_uid}\n"
                    f"On remote store {e.remote!r}: opens in the viewer as its frames arrive")
        if role == Qt.ItemDataRole.ToolTipRole:
            return (f"{e.patient_id} {e.patient_name}\n{e.description}\nSeries UID: {e.series_uid}\n"
                    f"Received {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(e.received))}"
                    + ("\nPinned: never evicted" if e.pinned else ""))
        if role == Qt.ItemDataRole.UserRole:
            return e.series_uid
        return None

    @staticmethod
    def _display(e: BrowserEntry, col: int) -> str:
        if col == COL_ID:
            return (_PIN if e.pinned else "") + (e.patient_id or "(no ID)")
        if col == COL_NAME:
            return " · ".join(t for t in (e.patient_name, e.description) if t)
        if col == COL_DATE:
            return e.date
        if col == COL_MODALITY:
            return e.modality
        if col == COL_IMAGES:
            return str(e.images)
        if col == COL_SIZE:
            return "remote" if e.remote else human_size(e.nbytes)
        if col == COL_ALARM:
            return {"yes": "ALARM", "resolved": "resolved"}.get(e.alarm, "—")
        if col == COL_DECISION:
            return e.decision or "—"
        if col == COL_SOURCE:
            return e.source
        return ""

    def set_thumbnail(self, series_uid: str, pixmap: QPixmap | None) -> None:
        if len(self._thumbs) > THUMB_CACHE:
            self._thumbs.clear()  # cheap bound: visible rows ask again
        self._thumbs[series_uid] = pixmap
        for i in range(self._shown):
            if self._rows[i].series_uid == series_uid:
                idx = self.index(i, COL_THUMB)
                self.dataChanged.emit(idx, idx, [Qt.ItemDataRole.DecorationRole])
                break

    def forget_thumbnail(self, series_uid: str) -> None:
        self._thumbs.pop(series_uid, None)


# ------------------------------------------------------------------------ background work


def render_thumbnail(store: Store, series_uid: str, size: int = THUMB_PX) -> np.ndarray | None:
    """A small 8-bit image of the series' middle slice, or None. Runs on a pool thread."""
    import pydicom

    files = store.instances(series_uid)
    if not files:
        return None
    inst = files[len(files) // 2]
    try:
        ds = pydicom.dcmread(inst.path)
        pixels = ds.pixel_array
    except Exception as exc:  # any decoding trouble only costs the thumbnail
        LOGGER.debug("no thumbnail for %s: %s", series_uid, exc)
        return None
    if pixels.ndim == 3 and int(getattr(ds, "NumberOfFrames", 1) or 1) > 1:
        pixels = pixels[pixels.shape[0] // 2]
    if pixels.ndim != 2:
        pixels = pixels[..., 0] if pixels.ndim == 3 else None
        if pixels is None:
            return None
    step = max(1, max(pixels.shape) // size)
    small = pixels[::step, ::step].astype(np.float32)
    lo, hi = np.percentile(small, (1, 99.5))
    if hi <= lo:
        hi = lo + 1
    out = np.clip((small - lo) * (255.0 / (hi - lo)), 0, 255).astype(np.uint8)
    if str(getattr(ds, "PhotometricInterpretation", "")) == "MONOCHROME1":
        out = 255 - out
    return np.ascontiguousarray(out)


class _Relay(QObject):
    """Carries results from pool threads to the GUI thread (queued signals)."""

    thumbnail = Signal(str, object)
    imported = Signal(int, list)
    exported = Signal(list, list)


class _Task(QRunnable):
    """Runs a callable on the browser's pool (a pool thread)."""

    def __init__(self, fn: Callable[[], None]) -> None:
        super().__init__()
        self._fn = fn

    def run(self) -> None:
        try:
            self._fn()
        except Exception:  # a worker must never take the process down
            LOGGER.exception("cache browser background task failed")


# ------------------------------------------------------------------------------- widget


class CacheBrowser(QWidget):
    """What is in the local store: search, sort, thumbnails, open/pin/delete/export/import.

    GUI thread. ``in_use`` returns the series that must not be deleted now (open in a
    viewer). ``openRequested(series_uid)`` asks the main window to show a scan;
    ``importFinished(stored, errors)`` and ``exportFinished(written, errors)`` report the
    background jobs (errors name the bad files).
    """

    openRequested = Signal(str)
    remoteOpenRequested = Signal(str, str, str, str)  # remote, study UID, series UID, label
    importFinished = Signal(int, list)
    exportFinished = Signal(list, list)

    def __init__(self, store: Store, alert_book: AlertBook | None = None, *, mode: str = "airport",
                 in_use: Callable[[], Iterable[str | None]] = tuple, thumbnails: bool = True,
                 remotes: RemoteStores | None = None, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.remotes = remotes
        self._remote_generation = 0
        self.setObjectName("CacheBrowser")
        self.store = store
        self.alert_book = alert_book
        self._in_use = in_use
        self._thumbnails = thumbnails
        self._pool = QThreadPool(self)
        self._pool.setMaxThreadCount(2)
        self._pool.setExpiryTimeout(1000)  # idle workers go soon: nothing lingers
        self._relay = _Relay(self)
        self._relay.thumbnail.connect(self._on_thumbnail)
        self._relay.imported.connect(self._on_imported)
        self._relay.exported.connect(self._on_exported)
        self._closed = False

        self.model = BrowserModel(mode, self)
        self.model.thumbnailWanted.connect(self._on_thumbnail_wanted)

        self.search = QLineEdit()
        self.search.setObjectName("BrowserSearch")
        self.search.setClearButtonEnabled(True)
        self.search.setPlaceholderText("Search  (e.g. BAG-12  mod:CT  alarm:yes  2026-11-01..2026-11-22)")
        self.search.setToolTip(
            "Filter as you type (Ctrl+F). Words match ID, name, description, UID.\n"
            "mod:CT,DX · alarm:yes|no|resolved · 2026-11-01 or A..B · pin:yes · dec:clear|none · src:import\n"
            "Down arrow: to the table")
        self.search.textChanged.connect(self._on_search_changed)
        self.search.returnPressed.connect(self._on_search_return)
        self.count_label = QLabel("")
        self.count_label.setObjectName("PanelCount")

        self.table = QTableView()
        self.table.setObjectName("BrowserTable")
        self.table.setModel(self.model)
        self.table.setSortingEnabled(True)
        self.table.sortByColumn(COL_THUMB, Qt.SortOrder.AscendingOrder)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.ExtendedSelection)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.setAlternatingRowColors(not self.model.grouped)  # groups are shaded instead
        self.table.setShowGrid(False)
        self.table.setWordWrap(False)
        self.table.setIconSize(QSize(THUMB_PX, THUMB_PX))
        self.table.verticalHeader().hide()
        self.table.verticalHeader().setSectionResizeMode(QHeaderView.ResizeMode.Fixed)
        self.table.verticalHeader().setDefaultSectionSize(THUMB_PX + 6 if thumbnails else 24)
        header = self.table.horizontalHeader()
        header.setHighlightSections(False)
        header.setStretchLastSection(False)
        widths = {COL_THUMB: THUMB_PX + 12, COL_ID: 130, COL_NAME: 220, COL_DATE: 92, COL_MODALITY: 52,
                  COL_IMAGES: 64, COL_SIZE: 76, COL_ALARM: 74, COL_DECISION: 80, COL_SOURCE: 110}
        for col, w in widths.items():
            header.resizeSection(col, w)
        header.setSectionResizeMode(COL_NAME, QHeaderView.ResizeMode.Stretch)
        if not thumbnails:
            self.table.hideColumn(COL_THUMB)
        self.table.activated.connect(self._on_activated)
        self.table.selectionModel().selectionChanged.connect(self._on_selection_changed)

        # Actions: shortcuts apply while the browser (or a child) has focus, so plain keys
        # like Delete never reach past the dock into the viewer.
        self.actions_by_name: dict[str, QAction] = {}
        buttons = QHBoxLayout()
        buttons.setContentsMargins(0, 0, 0, 0)
        buttons.setSpacing(4)
        for name, text, keys, slot in (
            ("open", "Open", "Return", self.open_selected),
            ("pin", "Pin", "Ctrl+P", self.toggle_pin),
            ("delete", "Delete…", "Delete", self.delete_selected),
            ("export", "Export…", "Ctrl+E", lambda: self.export_selected()),
            ("export_zip", "Zip…", "Ctrl+Shift+E", lambda: self.export_selected(zip_file=True)),
            ("import", "Import folder…", "Ctrl+I", lambda: self.import_folder()),
            ("refresh", "Refresh", "Ctrl+R", self.refresh),
        ):
            action = QAction(text, self)
            action.setShortcut(QKeySequence(keys))
            action.setShortcutContext(Qt.ShortcutContext.WidgetWithChildrenShortcut)
            action.setToolTip(f"{text.rstrip('…')} ({QKeySequence(keys).toString(QKeySequence.SequenceFormat.NativeText)})")
            action.triggered.connect(slot)
            self.addAction(action)
            self.actions_by_name[name] = action
            button = QToolButton()
            button.setDefaultAction(action)
            button.setFocusPolicy(Qt.FocusPolicy.TabFocus)
            buttons.addWidget(button)
        self.actions_by_name["open"].setShortcuts([QKeySequence("Return"), QKeySequence("Enter")])
        self.actions_by_name["open"].setShortcutContext(Qt.ShortcutContext.WidgetShortcut)
        self.table.addAction(self.actions_by_name["open"])
        find = QAction("Search", self)
        find.setShortcut(QKeySequence("Ctrl+F"))
        find.setShortcutContext(Qt.ShortcutContext.WidgetWithChildrenShortcut)
        find.triggered.connect(self._on_find)
        self.addAction(find)
        buttons.addStretch(1)
        self.status = QLabel("")
        self.status.setObjectName("BrowserStatus")
        self.status.setWordWrap(True)

        title = QLabel("Local store" if remotes is None or not remotes.names else "Local store and archive")
        title.setObjectName("PanelTitle")
        head = QHBoxLayout()
        head.setContentsMargins(0, 0, 0, 0)
        head.addWidget(title)
        head.addWidget(self.count_label)
        head.addStretch(1)
        self.group_box = QCheckBox("Group by " + ("bag" if mode == "airport" else "patient"))
        self.group_box.setObjectName("BrowserGroup")
        self.group_box.setChecked(self.model.grouped)
        self.group_box.setToolTip("Keep each bag's / patient's scans together (Ctrl+G)")
        self.group_box.toggled.connect(self._on_group_toggled)
        head.addWidget(self.group_box)
        # Remote stores: off until asked for (each search then costs the archive a query).
        names = remotes.names if remotes is not None else []
        self.remote_box = QCheckBox("Search archive" if len(names) == 1 else f"Search {len(names)} archives")
        self.remote_box.setObjectName("BrowserRemote")
        self.remote_box.setToolTip("Also search the remote store(s) " + ", ".join(names)
                                   + " (Ctrl+Shift+A); their scans open as their frames arrive")
        self.remote_box.toggled.connect(self._on_remote_toggled)
        self.remote_box.setVisible(bool(names))
        head.addWidget(self.remote_box)
        remote_action = QAction("Search archive", self)
        remote_action.setShortcut(QKeySequence("Ctrl+Shift+A"))
        remote_action.setShortcutContext(Qt.ShortcutContext.WidgetWithChildrenShortcut)
        remote_action.triggered.connect(lambda: self.remote_box.setChecked(bool(names) and not self.remote_box.isChecked()))
        self.addAction(remote_action)
        self.actions_by_name["remote"] = remote_action
        self._remote_timer = QTimer(self)
        self._remote_timer.setSingleShot(True)
        self._remote_timer.setInterval(REMOTE_SEARCH_DELAY_MS)
        self._remote_timer.timeout.connect(self.search_remotes)
        if remotes is not None:
            remotes.searchFinished.connect(self._on_remote_results)
            if remotes.errors:
                self._set_status("; ".join(remotes.errors), error=True)
        group_action = QAction("Group", self)
        group_action.setShortcut(QKeySequence("Ctrl+G"))
        group_action.setShortcutContext(Qt.ShortcutContext.WidgetWithChildrenShortcut)
        group_action.triggered.connect(self.group_box.toggle)
        self.addAction(group_action)
        self.actions_by_name["group"] = group_action
        layout = QVBoxLayout(self)
        layout.setContentsMargins(8, 6, 8, 6)
        layout.setSpacing(6)
        layout.addLayout(head)
        layout.addWidget(self.search)
        layout.addLayout(buttons)
        layout.addWidget(self.table, 1)
        layout.addWidget(self.status)
        self.setTabOrder(self.search, self.table)

        self._refresh_timer = QTimer(self)
        self._refresh_timer.setSingleShot(True)
        self._refresh_timer.setInterval(500)
        self._refresh_timer.timeout.connect(self.refresh)
        self.refresh()
        self._on_selection_changed()

    # -- public API ---------------------------------------------------------------------------

    def refresh(self) -> None:
        """Re-read the index (one query) and re-apply the search; keeps the selection."""
        if self._closed:
            return  # a refresh scheduled before the window closed; the store may be gone
        keep = self.selected_uids()
        self.model.set_entries(load_entries(self.store, self.alert_book))
        self._update_count()
        for uid in keep[:1]:
            self.select(uid)

    def schedule_refresh(self, *_: object) -> None:
        """Refresh soon, once for a burst of arrivals (connect the bridge's seriesChanged)."""
        if not self._refresh_timer.isActive():
            self._refresh_timer.start()

    def search_remotes(self) -> bool:
        """Send the current search to the remote stores now (the switch must be on).
        False when nothing was asked (switch off, no remotes, a local-only search)."""
        self._remote_timer.stop()
        if self.remotes is None or not self.remote_box.isChecked() or self._closed:
            return False
        query = parse_query(self.search.text())
        if query.local_only:
            self.model.set_remote_entries([])
            self._update_count()
            return False
        self._remote_generation = self.remotes.search(query.remote_terms())
        self._set_status("Searching " + ", ".join(self.remotes.names) + "…")
        return True

    def selected_entries(self) -> list[BrowserEntry]:
        rows = sorted({i.row() for i in self.table.selectionModel().selectedRows()})
        return [e for e in (self.model.entry(r) for r in rows) if e is not None]

    def _selected_local(self) -> list[str]:
        """Selected local scans (pin, delete and export do not apply to remote ones)."""
        return [e.series_uid for e in self.selected_entries() if not e.remote]

    def set_filter(self, text: str) -> None:
        """Set the search text (the table filters at once)."""
        self.search.setText(text)

    def selected_uids(self) -> list[str]:
        return [e.series_uid for e in self.selected_entries()]

    def select(self, series_uid: str) -> bool:
        row = self.model.row_of(series_uid)
        if row is None:
            return False
        self.table.selectRow(row)
        self.table.scrollTo(self.model.index(row, COL_ID))
        return True

    def open_selected(self) -> None:
        entries = self.selected_entries()
        if entries:
            self._open(entries[0])

    def toggle_pin(self) -> None:
        """Pin the selected scans (never evicted), or unpin them if all are pinned."""
        uids = self._selected_local()
        if not uids:
            return
        pinned = {e.series_uid for e in self.model.entries() if e.pinned}
        target = not all(u in pinned for u in uids)
        for uid in uids:
            self.store.pin(uid, target)
        self._set_status(f"{'Pinned' if target else 'Unpinned'} {len(uids)} scan(s)")
        self.refresh()

    def delete_selected(self) -> None:
        """Delete the selected scans after a confirmation; scans in use are refused."""
        uids = self._selected_local()
        if not uids:
            return
        in_use = {u for u in self._in_use() if u}
        text = (f"Delete {len(uids)} scan(s) and their files from the local store?\n\n"
                + "\n".join(self._describe(u) for u in uids[:8]) + ("\n…" if len(uids) > 8 else ""))
        answer = QMessageBox.question(self, "Delete scans", text,
                                      QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.Cancel,
                                      QMessageBox.StandardButton.Cancel)
        if answer != QMessageBox.StandardButton.Yes:
            return
        done, refused = 0, []
        for uid in uids:
            try:
                self.store.delete_series(uid, in_use=uid in in_use)
                self.model.forget_thumbnail(uid)
                done += 1
            except StoreError as exc:
                refused.append(f"{self._describe(uid)}: {exc}")
        self._set_status(f"Deleted {done} scan(s)" + ("; kept: " + "; ".join(refused) if refused else ""),
                         error=bool(refused))
        self.refresh()

    def export_selected(self, dest: str | Path | None = None, *, zip_file: bool = False) -> bool:
        """Export the selected scans to a folder or a zip (asks where when ``dest`` is None).
        Runs on the pool; ``exportFinished`` reports. Returns False if nothing was started."""
        uids = self._selected_local()
        if not uids:
            return False
        if dest is None:
            if zip_file:
                dest, _ = QFileDialog.getSaveFileName(self, "Export to zip", "scans.zip", "Zip archives (*.zip)")
                if dest and not dest.lower().endswith(".zip"):
                    dest += ".zip"
            else:
                dest = QFileDialog.getExistingDirectory(self, "Export to folder")
            if not dest:
                return False
        target = Path(dest)
        store, relay = self.store, self._relay

        def job() -> None:
            written: list[str] = []
            errors: list[str] = []
            for uid in uids:
                try:
                    written.append(str(store.export_series(uid, target)))
                except StoreError as exc:
                    errors.append(str(exc))
            relay.exported.emit(written, errors)

        self._set_status(f"Exporting {len(uids)} scan(s) to {target}…")
        self._pool.start(_Task(job))
        return True

    def import_folder(self, folder: str | Path | None = None) -> bool:
        """Import a folder (asks which when None) off the GUI thread; ``importFinished``
        reports what was stored and names each bad file."""
        if folder is None:
            folder = QFileDialog.getExistingDirectory(self, "Import a folder of DICOM files")
            if not folder:
                return False
        path = Path(folder)
        store, relay = self.store, self._relay

        def job() -> None:
            try:
                result = store.import_paths([path])
            except StoreError as exc:  # the store is full: stop, say so
                relay.imported.emit(0, [str(exc)])
                return
            # The status line names what was not imported, DICOM or not, as before.
            relay.imported.emit(len(result.stored),
                                result.errors + [f"ignored (not DICOM): {p}" for p in result.ignored])

        self._set_status(f"Importing {path}…")
        self._pool.start(_Task(job))
        return True

    def shutdown(self) -> None:
        """Stop background work (called when the window closes). GUI thread."""
        self._closed = True
        self._refresh_timer.stop()
        self._remote_timer.stop()
        self._pool.clear()
        self._pool.waitForDone()

    # -- slots ---------------------------------------------------------------------------------

    def _on_group_toggled(self, grouped: bool) -> None:
        keep = self.selected_uids()
        self.model.set_grouped(grouped)
        self.table.setAlternatingRowColors(not grouped)
        for uid in keep[:1]:
            self.select(uid)

    def _on_search_changed(self, text: str) -> None:
        self.model.set_query(parse_query(text))
        self._update_count()
        if self.remote_box.isChecked():
            self._remote_timer.start()  # a pause in typing, then one search
        if self.model.rowCount() and not self.selected_uids():
            self.table.selectRow(0)

    def _on_search_return(self) -> None:
        self.table.setFocus()
        if self.model.rowCount() and not self.selected_uids():
            self.table.selectRow(0)

    def _on_find(self) -> None:
        self.search.setFocus()
        self.search.selectAll()

    def _on_activated(self, index: QModelIndex) -> None:
        e = self.model.entry(index.row())
        if e is not None:
            self._open(e)

    def _on_selection_changed(self, *_: object) -> None:
        self.actions_by_name["open"].setEnabled(bool(self.selected_entries()))
        local = bool(self._selected_local())
        for name in ("pin", "delete", "export", "export_zip"):
            self.actions_by_name[name].setEnabled(local)

    def _on_remote_toggled(self, on: bool) -> None:
        if on:
            self.search_remotes()
        else:
            self._remote_timer.stop()
            self._remote_generation = -1  # answers still on their way are dropped
            self.model.set_remote_entries([])
            self._update_count()
            self._set_status("")

    def _on_remote_results(self, generation: int, hits: list, errors: list) -> None:
        if generation != self._remote_generation or not self.remote_box.isChecked():
            return  # an older search, or the switch went off meanwhile
        keep = self.selected_uids()
        self.model.set_remote_entries([remote_entry(h) for h in hits])
        self._update_count()
        for uid in keep[:1]:
            self.select(uid)
        if errors:
            self._set_status("; ".join(errors), error=True)
        else:
            self._set_status(f"{len(hits)} scan(s) found on " + ", ".join(self.remotes.names if self.remotes else []))

    def _on_thumbnail_wanted(self, series_uid: str) -> None:
        if not self._thumbnails or self._closed:
            return
        store, relay = self.store, self._relay
        self._pool.start(_Task(lambda: relay.thumbnail.emit(series_uid, render_thumbnail(store, series_uid))))

    def _on_thumbnail(self, series_uid: str, pixels: object) -> None:
        if not isinstance(pixels, np.ndarray):
            return
        h, w = pixels.shape
        image = QImage(pixels.data, w, h, w, QImage.Format.Format_Grayscale8).copy()
        pixmap = QPixmap.fromImage(image).scaled(
            THUMB_PX, THUMB_PX, Qt.AspectRatioMode.KeepAspectRatio, Qt.TransformationMode.SmoothTransformation)
        self.model.set_thumbnail(series_uid, pixmap)

    def _on_imported(self, count: int, errors: list) -> None:
        msg = f"Imported {count} instance(s)"
        if errors:
            msg += f"; {len(errors)} bad file(s): " + "; ".join(errors[:5]) + (" …" if len(errors) > 5 else "")
        self._set_status(msg, error=bool(errors))
        self.refresh()
        self.importFinished.emit(count, list(errors))

    def _on_exported(self, written: list, errors: list) -> None:
        msg = f"Exported {len(written)} scan(s)" + (f" to {written[0]}" if len(written) == 1 else "")
        if errors:
            msg += "; failed: " + "; ".join(errors)
        self._set_status(msg, error=bool(errors))
        self.exportFinished.emit(list(written), list(errors))

    # -- helpers -------------------------------------------------------------------------------

    def _open(self, entry: BrowserEntry) -> None:
        if entry.remote:
            label = " ".join(t for t in (entry.patient_id, entry.modality, entry.date) if t)
            self.remoteOpenRequested.emit(entry.remote, entry.study_uid, entry.series_uid, label)
            return
        series_uid = entry.series_uid
        try:
            self.store.touch(series_uid)
        except Exception:  # recording the access must never stop the analyst opening it
            LOGGER.exception("cannot record access to %s", series_uid)
        self.openRequested.emit(series_uid)

    def _describe(self, series_uid: str) -> str:
        for e in self.model.entries():
            if e.series_uid == series_uid:
                return f"{e.patient_id or '(no ID)'} {e.modality} {e.date}".strip()
        return series_uid

    def _update_count(self) -> None:
        remote = self.model.remote_count()
        shown, total = len(self.model.entries()) - remote, self.model.total()
        text = f"{shown} of {total}" if shown != total else f"{total}"
        self.count_label.setText(text + (f"  ·  {remote} remote" if remote else ""))

    def _set_status(self, text: str, *, error: bool = False) -> None:
        LOGGER.log(logging.WARNING if error else logging.INFO, "cache browser: %s", text)
        self.status.setText(text)
        self.status.setStyleSheet("color: #ff6b6b;" if error else "")


def make_browser_dock(window) -> QDockWidget:
    """A dock with the cache browser for ``MainWindow`` (uses ``window.store``,
    ``window.alert_book``, ``window.select_series``; Ctrl+B shows and hides it). GUI thread."""
    viewer = getattr(window, "viewer", None)
    browser = CacheBrowser(
        window.store, getattr(window, "alert_book", None), mode=getattr(window, "mode", "airport"),
        in_use=lambda: (getattr(viewer, "series_uid", None),), remotes=getattr(window, "remotes", None),
    )
    browser.openRequested.connect(lambda uid: window.select_series(uid))
    if hasattr(window, "open_remote"):
        browser.remoteOpenRequested.connect(window.open_remote)
    bridge = getattr(window, "bridge", None)
    if bridge is not None:
        bridge.seriesChanged.connect(browser.schedule_refresh)
    scan_list = getattr(window, "scan_list", None)
    if scan_list is not None and hasattr(scan_list, "seriesChosen"):
        # Opening from the scan list counts as an access too (LRU order, no longer pending).
        scan_list.seriesChosen.connect(lambda uid, *_: window.store.touch(uid))
    dock = QDockWidget("Local store", window)
    dock.setObjectName("CacheBrowserDock")
    dock.setWidget(browser)
    dock.setFeatures(QDockWidget.DockWidgetFeature.DockWidgetClosable
                     | QDockWidget.DockWidgetFeature.DockWidgetMovable
                     | QDockWidget.DockWidgetFeature.DockWidgetFloatable)
    window.addDockWidget(Qt.DockWidgetArea.BottomDockWidgetArea, dock)
    toggle = dock.toggleViewAction()
    toggle.setShortcut(QKeySequence("Ctrl+B"))
    toggle.setToolTip("Show or hide the local store browser (Ctrl+B)")
    window.addAction(toggle)
    from PySide6.QtWidgets import QApplication

    app = QApplication.instance()
    if app is not None:
        app.aboutToQuit.connect(browser.shutdown)
    return dock
