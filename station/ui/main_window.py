"""The station's main window: scan list on the left, slice viewer on the right, status bar.

New scans open by themselves while the analyst is "following" (nothing chosen, or the
open scan was opened automatically); a scan the analyst picked is never replaced by an
arrival. Esc (or the "Follow new scans" box) returns to following. Everything here runs
on the GUI thread; receiver news arrives through ``EventBridge`` signals.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Iterable

from PySide6.QtCore import Qt, QTimer
from PySide6.QtGui import QAction, QCloseEvent, QKeySequence
from PySide6.QtWidgets import (
    QApplication,
    QCheckBox,
    QHBoxLayout,
    QLabel,
    QMainWindow,
    QSplitter,
    QVBoxLayout,
    QWidget,
)

from station.core.config import Settings
from station.core.events import (
    AssociationClosed,
    AssociationOpened,
    InstanceStored,
    ReceiverError,
    ReceiverState,
)
from station.core.triage.alerts import Alert, AlertBook
from station.core.dicos import Pto, ScanRef, scan_ref_from_volume
from station.core.dicos.zmap import box_to_volume, scan_z
from station.core.imaging.mpr import ThreatBox
from station.core.imaging.volume import FrameVolume
from station.net.remote.series import PullProgress
from station.core.dicom.sopclasses import DICOS_TDR
from station.core.store.store import SeriesRow, Store
from station.ui.triage.alert_panel import SEVERITY_COLOURS, AlertPanel
from station.ui.bridge import EventBridge
from station.ui.browser.browser import make_browser_dock
from station.ui.browser.remote import RemoteStores, progress_text
from station.ui.routing_panel import make_routing_dock, routing_summary
from station.ui.scan_list import ScanList
from station.ui.viewer.widget import SliceViewer
from station.ui.triage.controller import TriageController

LOGGER = logging.getLogger(__name__)

#: After the analyst touched the scan list or the viewer, arrivals wait this long before
#: they may replace what is on screen (even in follow mode).
HOLD_S = 8.0

#: Series that carry no pixels: a TDR arriving right after its CT must not replace the
#: CT on screen. They are listed and can still be chosen by hand.
NON_IMAGE_MODALITIES = frozenset({"TDR", "SR", "PR", "KO", "DOC", "REG", "RTSTRUCT", "RTPLAN", "AU", "ECG"})

#: How many receiver errors the status bar tooltip lists.
RECENT_ERRORS = 10

STATUS_OUT_OF_RESOURCES = 0xA700  # what the receiver answers when the store is full

_GREEN, _AMBER, _RED, _DIM = "#5cc98a", "#f0b429", "#ff6b6b", "#8b929c"


def _scan_label(row: SeriesRow, mode: str) -> str:
    """Top-left overlay text of the viewer: who/what and which series."""
    who = "Bag" if mode == "airport" else "Patient"
    first = f"{who} {row.patient_id or '(no ID)'}"
    if mode == "clinic" and row.patient_name:
        first += f"  {row.patient_name.replace('^', ' ')}"
    second = " · ".join(t for t in (row.modality, row.description or row.study_description) if t)
    return f"{first}\n{second}" if second else first


class MainWindow(QMainWindow):
    """Scan list + slice viewer + receiver status. GUI thread only.

    ``receiver`` is optional: without one (tests, screenshots, a read-only station) the
    status bar shows what the bridge reports, starting from "not listening".
    """

    def __init__(self, store: Store, bridge: EventBridge, settings: Settings, receiver=None,
                 remotes: RemoteStores | None = None) -> None:
        super().__init__()
        self.setWindowTitle("Inspection Station")
        self.setObjectName("MainWindow")
        self.store = store
        self.bridge = bridge
        self.settings = settings
        self.receiver = receiver
        self.mode = settings.ui.mode

        self._follow = True  # open arrivals automatically
        self._last_user_action = float("-inf")
        self._known: set[str] = set()
        self._received = 0
        self._open_associations = receiver.open_associations if receiver is not None else 0
        self._errors: deque[ReceiverError] = deque(maxlen=RECENT_ERRORS)
        self._error_count = 0
        self._deferred: str | None = None
        self.operator_label: QLabel | None = None
        self._defer_timer = QTimer(self)
        self._defer_timer.setSingleShot(True)
        self._defer_timer.timeout.connect(self._on_defer_timeout)

        # -- left: the scan list -------------------------------------------------------
        self.scan_list = ScanList(store, self.mode)
        self.follow_box = QCheckBox("Follow new scans")
        self.follow_box.setObjectName("FollowBox")
        self.follow_box.setToolTip("Open each arriving scan automatically (Esc)")
        self.follow_box.setChecked(True)
        self.follow_box.setFocusPolicy(Qt.FocusPolicy.NoFocus)  # Tab: list <-> viewer only
        self.follow_box.toggled.connect(self._on_follow_toggled)
        title = QLabel("Scans")
        title.setObjectName("PanelTitle")
        self._count_label = QLabel("")
        self._count_label.setObjectName("PanelCount")
        head = QHBoxLayout()
        head.setContentsMargins(8, 6, 8, 2)
        head.addWidget(title)
        head.addWidget(self._count_label)
        head.addStretch(1)
        head.addWidget(self.follow_box)
        left = QWidget()
        left.setObjectName("LeftPanel")
        left_layout = QVBoxLayout(left)
        left_layout.setContentsMargins(0, 0, 0, 0)
        left_layout.setSpacing(0)
        left_layout.addLayout(head)
        left_layout.addWidget(self.scan_list, 1)

        # -- left, below: the alerts (from TDRs in the store: scanners' and our detector's)
        self.alert_book = AlertBook(store, site=settings.site.site())
        self.alert_book.load()
        self.alert_panel = AlertPanel(self.alert_book, self.mode)
        self.alert_panel.alertActivated.connect(self._on_alert_activated)
        self.alert_panel.decisionRequested.connect(self._on_decision_requested)
        self._focus_alert: Alert | None = None
        self._operator: str | None = None
        left_split = QSplitter(Qt.Orientation.Vertical)
        left_split.setObjectName("LeftSplitter")
        scans_box = left
        left = QWidget()
        left.setObjectName("LeftColumn")
        column = QVBoxLayout(left)
        column.setContentsMargins(0, 0, 0, 0)
        left_split.addWidget(scans_box)
        left_split.addWidget(self.alert_panel)
        left_split.setSizes([600, 300])
        left_split.setChildrenCollapsible(False)
        column.addWidget(left_split)

        # -- right: the viewer -----------------------------------------------------------
        self.viewer = SliceViewer(self.mode, layout="quad")  # 2x2: planes plus the projection
        self.viewer.volumeGrew.connect(self._on_volume_grew)
        right = QWidget()
        right.setObjectName("RightPanel")
        right_layout = QVBoxLayout(right)
        right_layout.setContentsMargins(4, 4, 4, 4)
        right_layout.addWidget(self.viewer)

        splitter = QSplitter(Qt.Orientation.Horizontal)
        splitter.setObjectName("MainSplitter")
        splitter.addWidget(left)
        splitter.addWidget(right)
        splitter.setStretchFactor(0, 0)
        splitter.setStretchFactor(1, 1)
        splitter.setSizes([660, 940])
        splitter.setChildrenCollapsible(False)
        self.setCentralWidget(splitter)
        self.setTabOrder(self.scan_list, self.viewer)
        self.setTabOrder(self.viewer, self.alert_panel.table)

        # -- status bar --------------------------------------------------------------------
        bar = self.statusBar()
        bar.setSizeGripEnabled(False)
        self.receiver_label = QLabel()
        self.associations_label = QLabel()
        self.received_label = QLabel()
        self.errors_label = QLabel()
        self.store_label = QLabel(f"Store: {store.root}")
        self.store_label.setToolTip(str(store.root))
        for name, label in (("ReceiverStatus", self.receiver_label), ("AssocStatus", self.associations_label),
                            ("ReceivedStatus", self.received_label), ("ErrorStatus", self.errors_label)):
            label.setObjectName(name)
            bar.addWidget(label)
        self.store_label.setObjectName("StoreStatus")
        # Shown while scanners are being refused for lack of space: an analyst must not
        # miss that bags are not arriving, so it is loud and stays until space is back.
        self.storage_warning = QLabel()
        self.storage_warning.setObjectName("StorageWarning")
        self.storage_warning.setStyleSheet(
            f"QLabel#StorageWarning {{ background: {_RED}; color: #16181c; font-weight: bold;"
            " padding: 2px 10px; border-radius: 3px; }")
        self.storage_warning.hide()
        bar.addPermanentWidget(self.storage_warning)
        # Unresolved alarms: counted, and blinking until resolved (the visible cue).
        self.alarm_label = QLabel()
        self.alarm_label.setObjectName("AlarmStatus")
        self.alarm_label.hide()
        bar.addPermanentWidget(self.alarm_label)
        self._blink_on = False
        self._blink = QTimer(self)
        self._blink.setInterval(600)
        self._blink.timeout.connect(self._on_blink)
        bar.addPermanentWidget(self.store_label)
        if receiver is not None:
            self._set_receiver_state(receiver.is_running, receiver.aet, receiver.host, receiver.port, "")
        else:
            self._set_receiver_state(False, settings.receiver.aet, settings.receiver.host,
                                     settings.receiver.port, "no receiver")
        self._update_counts()
        self._update_alarms()

        # -- actions -------------------------------------------------------------------------
        self._add_action("Quit", "Ctrl+Q", self.close)
        self._add_action("Mute alarm sound", "M", lambda: self.alert_panel.set_muted(not self.alert_panel.muted))

        # -- routing: the outgoing queue the receiver process keeps; hidden until wanted
        self.routing_dock = make_routing_dock(self, settings)
        self.addDockWidget(Qt.DockWidgetArea.BottomDockWidgetArea, self.routing_dock)
        self.routing_dock.hide()
        self.routing_label = QLabel()
        self.routing_label.setObjectName("RoutingStatus")
        bar.addWidget(self.routing_label)
        self.routing_dock.widget().countsChanged.connect(self._on_routing_counts)
        self._add_action("Routing queue", "Ctrl+Shift+R",
                         lambda: self.routing_dock.setVisible(self.routing_dock.isHidden()))
        self.routing_label.setToolTip("Outgoing routing queue (Ctrl+Shift+R shows it)")

        # -- remote stores ([[remotes]]): searched from the browser, viewed as frames arrive
        self.remotes = remotes if remotes is not None else RemoteStores.from_settings(settings.remotes, parent=self)
        self.remote_open: str | None = None  # the remote whose series the viewer shows
        self.remotes.seriesOpened.connect(self._on_remote_opened)
        self.remotes.openFailed.connect(self._on_remote_failed)
        self.remotes.framesArrived.connect(self._on_remote_frames)
        self.remotes.progress.connect(self._on_remote_progress)
        self.remotes.retrieving.connect(self._on_remote_retrieving)
        self.remotes.seriesRetrieved.connect(self._on_remote_retrieved)
        self.remotes.attach_store(store)  # archives without DICOMweb: C-GET into the store
        self.viewer.sliceChanged.connect(self.remotes.set_current)

        # -- the cache browser (Ctrl+B): everything local, searchable, pin/delete/export/import
        self.browser_dock = make_browser_dock(self)
        self.browser_dock.hide()  # the viewer keeps the room until the analyst asks (Ctrl+B)
        self._add_action("Refresh", "F5", self.refresh)
        self._add_action("Follow new scans", "Esc", self.follow_newest)
        self._add_action("Focus scan list", "Ctrl+L", self.scan_list.setFocus)

        # -- wiring ----------------------------------------------------------------------------
        bridge.seriesChanged.connect(self._on_series_changed)
        bridge.instancesStored.connect(self._on_instances_stored)
        bridge.receiverEvent.connect(self._on_receiver_event)
        self.scan_list.seriesChosen.connect(self._on_series_chosen)
        self.scan_list.activatedSeries.connect(lambda _uid: self.viewer.setFocus())
        self.viewer.userInteracted.connect(self._on_user_interacted)

        self._known = set(self.scan_list.scan_model.uids())
        self._update_panel_count()
        # Keyboard triage (issue 7): decision keys, queue, audit log, undo; rebinds the
        # actions above from the keymap, so it comes last.
        self.triage = TriageController(self)
        self.resize(1600, 1000)

    def _add_action(self, text: str, shortcut: str, slot) -> QAction:
        action = QAction(text, self)
        action.setShortcut(QKeySequence(shortcut))
        action.setShortcutContext(Qt.ShortcutContext.WindowShortcut)
        action.triggered.connect(slot)
        self.addAction(action)
        return action

    # -- public API ---------------------------------------------------------------------------

    def select_series(self, series_uid: str, *, explicit: bool = True) -> bool:
        """Select and open a series as if the analyst picked it (explicit) or automatically."""
        if explicit:
            self._choose(series_uid)
        self.scan_list.select_series(series_uid, explicit=explicit)
        return self._open(series_uid)

    def open_remote(self, remote: str, study_uid: str, series_uid: str, label: str = "") -> int:
        """Show a series of a remote store: the viewer opens as soon as its metadata is
        here and fills as frames arrive (visible slice first). Counts as the analyst's
        choice (following new scans stops). Returns the open's ticket."""
        self._choose(series_uid)
        self.scan_list.clear_choice()  # a local row picked next is a change of scan
        self.viewer.clear(f"Opening {label or 'a scan'} from {remote}…")
        self.remote_open = remote
        self._remote_label = f"{label}  ·  {remote}" if label else remote
        self.statusBar().showMessage(f"Opening a scan from {remote}…", 4000)
        return self.remotes.open_series(remote, study_uid, series_uid, label=self._remote_label)

    def refresh(self) -> None:
        """Re-read the store (F5): the list, and files of the open scan that nobody announced
        (imported by another process, for instance)."""
        self.scan_list.scan_model.refresh()
        self._known = set(self.scan_list.scan_model.uids())
        self._update_panel_count()
        uid = self.viewer.series_uid
        if uid is not None:
            self.viewer.add_paths([i.path for i in self.store.instances(uid)])

    def follow_newest(self) -> None:
        """Return to following arrivals and show the newest scan now (Esc)."""
        self._follow = True
        self._last_user_action = float("-inf")
        self._deferred = None
        self.follow_box.blockSignals(True)
        self.follow_box.setChecked(True)
        self.follow_box.blockSignals(False)
        rows = [r for r in self.listed_rows() if r.modality.upper() not in NON_IMAGE_MODALITIES]
        if rows:
            newest = max(rows, key=lambda r: r.first_received)
            self.scan_list.select_series(newest.series_uid, explicit=False)
            self._open(newest.series_uid)

    def listed_rows(self) -> list[SeriesRow]:
        """The scan list's rows in display order."""
        model = self.scan_list.scan_model
        return [r for r in (model.series_at(i) for i in range(model.rowCount())) if r is not None]

    def set_operator(self, name: str) -> None:
        """Show who is on shift (decisions will be recorded under this name)."""
        self._operator = name
        if self.operator_label is not None:  # a change of operator (sign in again)
            self.operator_label.setText(f"Operator: {name}")
        else:
            label = QLabel(f"Operator: {name}")
            label.setObjectName("OperatorStatus")
            self.statusBar().insertPermanentWidget(0, label)
            self.operator_label = label
        self.triage.on_operator(name)

    @property
    def following(self) -> bool:
        return self._follow

    # -- slots: bridge ---------------------------------------------------------------------------

    def _on_series_changed(self, series_uids: set[str]) -> None:
        """Bridge slot: refresh the list, then maybe open the newest arrival."""
        self.scan_list.scan_model.refresh(series_uids)
        new = [u for u in series_uids if u not in self._known]
        self._known.update(series_uids)
        self._update_panel_count()
        if not new:
            return
        model = self.scan_list.scan_model
        rows = [model.series_at(r) for r in (model.row_of(u) for u in new) if r is not None]
        rows = [r for r in rows if r is not None and r.modality.upper() not in NON_IMAGE_MODALITIES]
        if not rows:
            return
        newest = max(rows, key=lambda r: r.first_received)
        self._maybe_follow(newest.series_uid)

    def _on_instances_stored(self, batch: list[InstanceStored]) -> None:
        """Bridge slot: grow the open scan with its new files."""
        self._received += len(batch)
        self._update_counts()
        self._take_tdrs(batch)
        if not self.storage_warning.isHidden():
            self.storage_warning.hide()  # instances are being stored again: space is back
        uid = self.viewer.series_uid
        if uid is None:
            return
        paths = [e.path for e in batch if e.series_uid == uid]
        if paths:
            self.viewer.add_paths(paths)

    def _on_receiver_event(self, event: object) -> None:
        """Bridge slot: keep the status bar in step with the receiver."""
        if isinstance(event, ReceiverState):
            self._set_receiver_state(event.listening, event.aet, event.host, event.port, event.message)
        elif isinstance(event, (AssociationOpened, AssociationClosed)):
            self._open_associations = event.open_associations
            self._update_counts()
        elif isinstance(event, ReceiverError):
            self._error_count += 1
            self._errors.append(event)
            self._update_counts()
            if event.status == STATUS_OUT_OF_RESOURCES:
                self.storage_warning.setText("STORE FULL: scans are being refused")
                self.storage_warning.setToolTip(
                    f"{event.message}\nScanners get status 0xA700 (out of resources) and keep their scans;"
                    " free disk space or raise the quota, then ask them to resend.")
                self.storage_warning.show()
            elif event.peer == "store":  # the store's maintenance: protected scans exceed the quota
                self.storage_warning.setText("STORE OVER QUOTA")
                self.storage_warning.setToolTip(event.message)
                self.storage_warning.show()

    # -- slots: user -----------------------------------------------------------------------------

    def _on_series_chosen(self, series_uid: str, explicit: bool) -> None:
        if explicit:
            self._choose(series_uid)
        self._open(series_uid)

    def _on_user_interacted(self) -> None:
        self._last_user_action = time.monotonic()

    def _on_follow_toggled(self, checked: bool) -> None:
        if checked:
            self.follow_newest()
        else:
            self._follow = False
            self._deferred = None

    def _on_defer_timeout(self) -> None:
        uid, self._deferred = self._deferred, None
        if uid:
            self._maybe_follow(uid)

    # -- following ---------------------------------------------------------------------------------

    def _choose(self, series_uid: str) -> None:
        """The analyst picked a scan: stop following so no arrival replaces it."""
        self._last_user_action = time.monotonic()
        self._deferred = None
        if self._follow:
            self.follow_box.blockSignals(True)
            self.follow_box.setChecked(False)
            self.follow_box.blockSignals(False)
            self._follow = False

    def _maybe_follow(self, series_uid: str) -> None:
        """Open an arrival if we follow and the analyst is not busy with the open scan."""
        if not self._follow or self.viewer.series_uid == series_uid:
            return
        wait_s = self._last_user_action + HOLD_S - time.monotonic()
        if wait_s > 0 and self.viewer.series_uid is not None:
            # Scrolling the open scan right now: try again when the hands are off.
            self._deferred = series_uid
            self._defer_timer.start(int(wait_s * 1000) + 50)
            return
        self.scan_list.select_series(series_uid, explicit=False)
        self._open(series_uid)

    def _open(self, series_uid: str) -> bool:
        """Show `series_uid` in the viewer (no-op if it is already there)."""
        if self.viewer.series_uid == series_uid and self.remote_open is None:
            return True
        row = self.store.series(series_uid)
        if row is None:
            return False
        if self.remote_open is not None:
            self.remotes.close_series()  # stop pulling the remote scan we leave
            self.remote_open = None
        paths = [i.path for i in self.store.instances(series_uid)]
        LOGGER.debug("opening series %s (%d files)", series_uid, len(paths))
        self.viewer.set_series(series_uid, paths, label=_scan_label(row, self.mode))
        self._show_threats()
        self.scan_list.scan_model.mark_viewed(series_uid)
        self._update_panel_count()
        return True

    # -- remote series -------------------------------------------------------------------------------

    def _on_remote_opened(self, ticket: int, volume: FrameVolume, label: str) -> None:
        if ticket != self.remotes.ticket or self.remote_open is None:
            return
        self.viewer.set_volume(volume, label=label)
        self.viewer.set_threats([])
        self._on_remote_frames(ticket)  # frames from the cache may be in already

    def _on_remote_retrieving(self, ticket: int, instances: int) -> None:
        if ticket == self.remotes.ticket and self.remote_open is not None:
            self.statusBar().showMessage(f"Retrieving from {self.remote_open}: {instances} image(s)…", 3000)

    def _on_remote_retrieved(self, ticket: int, series_uid: str, stored: int, errors: list) -> None:
        """A DIMSE archive's series is in the local store now: open it as a local scan."""
        if ticket != self.remotes.ticket or self.remote_open is None:
            return
        remote, self.remote_open = self.remote_open, None
        message = f"Retrieved {stored} image(s) from {remote}"
        if errors:
            message += f"; {len(errors)} not stored: {errors[0]}"
        self.statusBar().showMessage(message, 8000)
        self.refresh()
        self.browser_dock.widget().refresh()  # the row turns local
        self.select_series(series_uid)

    def _on_remote_failed(self, ticket: int, message: str) -> None:
        if ticket != self.remotes.ticket:
            return
        remote, self.remote_open = self.remote_open, None
        self.statusBar().showMessage(f"Cannot open the remote scan: {message}", 10000)
        self.viewer.clear(f"Cannot open the scan from {remote or 'the remote store'}:\n{message}")

    def _on_remote_frames(self, ticket: int) -> None:
        if ticket != self.remotes.ticket or self.remote_open is None:
            return
        arrived = self.remotes.take_arrived()
        if arrived:
            self.viewer.frames_arrived(arrived)

    def _on_remote_progress(self, ticket: int, progress: PullProgress) -> None:
        remote = self.remote_open
        if ticket != self.remotes.ticket or remote is None:
            return
        offline = self.remotes.offline(remote)
        failed = progress.failed and not offline
        self.viewer.set_status(progress_text(remote, progress, offline=offline), alert=bool(offline or failed))
        if failed and progress.finished and progress.error:
            self.statusBar().showMessage(f"{remote}: {progress.failed} slice(s) not fetched: {progress.error}", 10000)

    # -- alerts ------------------------------------------------------------------------------------

    def _take_tdrs(self, batch: list[InstanceStored]) -> None:
        """TDRs among newly stored instances become alerts (and resolutions)."""
        new: list[Alert] = []
        tdrs = [e for e in batch if e.sop_class_uid == DICOS_TDR]
        for event in tdrs:
            new += self.alert_book.add_tdr(event.path, received_at=event.received_at)
        attached = False
        if len(tdrs) < len(batch) and any(a.series_uid is None for a in self.alert_book.alerts()):
            before = sum(a.series_uid is None for a in self.alert_book.alerts())
            self.alert_book.refresh_series()  # a scan whose TDR came first has arrived
            attached = sum(a.series_uid is None for a in self.alert_book.alerts()) < before
        if not tdrs and not attached:
            return  # plain image arrivals change no alert: repainting for them cost ~0.3 s stalls
        self.alert_panel.refresh()
        self._update_alarms()
        self._show_threats()
        if new and not self.alert_panel.muted:
            QApplication.beep()  # the audible cue; M mutes it

    def _show_threats(self) -> None:
        """Outline the open scan's alarm objects (machine style; resolved ones as operator)."""
        uid = self.viewer.series_uid
        if uid is None:
            return
        boxes = []
        for alert in self.alert_book.for_series(uid):
            box = self._volume_box(alert)
            if box is None:
                continue
            prob = f" {alert.probability:.0%}" if alert.probability is not None else ""
            resolved = self.alert_book.is_resolved(alert)
            boxes.append(ThreatBox(base=box[0], extent=box[1],
                                   label=f"{alert.category.replace('_', ' ').title()}{prob}",
                                   source="operator" if resolved else "machine", flag=alert.severity))
        self.viewer.set_threats(boxes)

    def _volume_box(self, alert: Alert):
        """The alert's box (TDR voxel space) in the open volume's geometric z, or None."""
        if alert.base is None or alert.extent is None:
            return None
        volume = self.viewer.volume
        return box_to_volume(alert.base, alert.extent, scan_z(volume.slices) if volume else ())

    def _on_alert_activated(self, alert: Alert) -> None:
        """Open the alert's scan and centre the views on its object."""
        if alert.series_uid is None:
            self.statusBar().showMessage("The scan of this alert has not arrived yet", 5000)
            return
        self._focus_alert = alert
        self.select_series(alert.series_uid)
        self._focus_pending_alert()

    def _on_volume_grew(self, _n: int) -> None:
        self._focus_pending_alert()

    def _focus_pending_alert(self) -> None:
        alert = self._focus_alert
        if alert is None or self.viewer.series_uid != alert.series_uid:
            return
        box = self._volume_box(alert)
        if box is None:
            return
        x, y, z = (b + e / 2.0 for b, e in zip(*box))
        if self.viewer.current_index < 0 or self.viewer.slice_count <= int(z):
            return  # wait until the slice holding the object is on screen (volumeGrew retries)
        self.viewer.set_crosshair(int(x), int(y), int(z))
        self._focus_alert = None

    def _on_decision_requested(self, decision: str) -> None:
        """Alert panel buttons: the same path as the decision keys (TDRs, audit log, next scan)."""
        self.triage.decide(decision)

    def record_decision(self, decision: str, operator: str | None = None, *,
                        pto_marks: dict[int, str] | None = None, note: str = "") -> list[str]:
        """Write the operator TDR(s) for the open scan (CLEAR, SUSPECT or THREAT)."""
        uid = self.viewer.series_uid
        if uid is None or self.remote_open is not None:
            return []
        drawn, scan = self._drawn_pto(decision)
        written = self.alert_book.record_decision(uid, decision, operator or self._operator or "unknown",
                                                  pto_marks=pto_marks, note=note, drawn=drawn, scan=scan)
        if drawn:
            self.viewer.clear_drawn_box()
        self.alert_panel.refresh()
        self._update_alarms()
        self._show_threats()
        return written

    def _drawn_pto(self, decision: str) -> tuple[list[Pto], ScanRef | None]:
        """The analyst's marked box as an operator PTO (THREAT, category OTHER) and the scan
        it is on; nothing for CLEAR (the mark is dropped: the analyst decided otherwise)."""
        box, volume = self.viewer.drawn_box, self.viewer.volume
        if box is None or volume is None:
            return [], None
        if decision.upper() == "CLEAR":
            self.viewer.clear_drawn_box()
            return [], None
        pto = Pto(id=0, base=box.base, extent=box.extent, flag="THREAT", category="OTHER",
                  category_description="marked by the analyst")
        return [pto], scan_ref_from_volume(volume)

    def _on_routing_counts(self, counts: dict) -> None:
        if not any(counts.values()):
            self.routing_label.setText("")
            return
        failing = counts.get("failing", 0)
        text = "Routing: " + routing_summary(counts)
        self.routing_label.setText(f"<span style='color:{_AMBER}'>{text}</span>" if failing else text)

    def _update_alarms(self) -> None:
        count = len(self.alert_book.unresolved())
        if not count:
            self.alarm_label.hide()
            self._blink.stop()
            return
        self.alarm_label.setText(f"ALARMS: {count} unresolved")
        self.alarm_label.setToolTip("Unresolved alarms (alert panel); M mutes the sound")
        self.alarm_label.show()
        if not self._blink.isActive():
            self._blink.start()
            self._on_blink()

    def _on_blink(self) -> None:
        self._blink_on = not self._blink_on
        colour = SEVERITY_COLOURS["HIGH_THREAT"]
        self.alarm_label.setStyleSheet(
            f"background: {colour}; color: #16181c; font-weight: bold; padding: 2px 10px; border-radius: 3px;"
            if self._blink_on else
            f"color: {colour}; font-weight: bold; padding: 2px 10px; border: 1px solid {colour}; border-radius: 3px;")

    # -- status bar ------------------------------------------------------------------------------

    def _set_receiver_state(self, listening: bool, aet: str, host: str, port: int, message: str) -> None:
        if listening:
            text = f"<span style='color:{_GREEN}'>●</span> Listening  <b>{aet}</b> @ {host}:{port}"
            tip = f"DICOM receiver AE title {aet}, listening on {host}:{port}"
        else:
            why = f": {message}" if message else ""
            color = _DIM if message in ("stopped", "no receiver") else _RED
            text = f"<span style='color:{color}'>●</span> Not listening  <b>{aet}</b> @ {host}:{port}{_esc(why)}"
            tip = f"DICOM receiver {aet} is not listening{why}"
        self.receiver_label.setText(text)
        self.receiver_label.setToolTip(tip)

    def _update_counts(self) -> None:
        self.associations_label.setText(f"Associations: {self._open_associations}")
        self.received_label.setText(f"Received: {self._received}")
        if not self._errors:
            self.errors_label.setText("Errors: 0")
            self.errors_label.setToolTip("No receiver errors")
            return
        last = self._errors[-1]
        who = f"{last.calling_aet}@{last.peer}" if last.calling_aet else last.peer
        self.errors_label.setText(
            f"<span style='color:{_AMBER}'>Errors: {self._error_count}</span>  last: {_esc(who)}: {_esc(last.message)}")
        lines = []
        for e in reversed(self._errors):
            stamp = time.strftime("%H:%M:%S", time.localtime(e.at))
            status = f" (status 0x{e.status:04X})" if e.status is not None else ""
            peer = f"{e.calling_aet}@{e.peer}" if e.calling_aet else e.peer
            lines.append(f"{stamp}  {peer}: {e.message}{status}")
        self.errors_label.setToolTip("Recent receiver errors, newest first:\n" + "\n".join(lines))

    def _update_panel_count(self) -> None:
        model = self.scan_list.scan_model
        pending = sum(1 for u in model.uids() if not model.is_viewed(u))
        total = model.rowCount()
        self._count_label.setText(f"{total}" + (f" · {pending} new" if pending else ""))

    # -- shutdown --------------------------------------------------------------------------------

    def closeEvent(self, event: QCloseEvent) -> None:  # noqa: N802
        """Stop the viewer's worker; the application owner stops receiver, bridge, store."""
        self._defer_timer.stop()
        self._blink.stop()
        self.triage.close()
        self.viewer.shutdown()
        self.browser_dock.widget().shutdown()
        self.remotes.shutdown()
        super().closeEvent(event)


def _esc(text: str) -> str:
    """Peer-supplied text goes into rich-text labels: escape it."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


__all__: Iterable[str] = ["MainWindow", "HOLD_S", "NON_IMAGE_MODALITIES"]
