"""Hooks and routing around a running receiver: what ``station serve`` starts after it listens.

Runs in the process that owns the receiver: ``station serve`` headless, and also in the
GUI's case, because the GUI's receiver is a ``station serve --events-stdout`` child. That
is where scans arrive, so hooks and routing work whether or not a GUI is open, and a
slow hook or a dead PACS never touches the GUI's interpreter. The GUI sees the routing
state by reading the outbox database (``station.core.routing.outbox.OutboxReader``); hook counters
are published there too, under the status key ``"hooks"``.

Flow::

    receiver thread --InstanceStored--> bus --> ScanTracker.add (a dict update)
                                           \\--> HookRunner.submit (bounded queue per script)
    scheduler thread, every 0.2 s: ScanTracker.pop_due -> for each complete scan:
        TDR: read it -> study alarm/decision in the outbox -> alert_did_raise / decision_did_record
        images: paths from the store -> outbox.record_scan -> scan_did_complete
        -> Router.route (rules, study routes) -> jobs in the outbox
    sender thread per remote: claim a due job -> C-STORE or STOW-RS -> sent / failing

At start, scans the store received since the outbox was created but that never completed
(the station stopped or crashed during their quiet time) are tracked again, so they are
routed after a restart too. ``Services.stop()`` delivers ``station_will_stop`` and joins
every thread it started.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from station.core.config import Settings
from station.core.events import EventBus, InstanceStored
from station.core.hooks.runner import (
    AlertRaised,
    DecisionRecorded,
    HookRunner,
    HooksSettings,
    OpenScan,
    ScanCompleted,
    ScanTracker,
    StationStarted,
    is_report,
)
from station.core.routing.outbox import Outbox, OutboxSettings, outbox_path
from station.core.remote.remotes import RemoteSettings
from station.core.scheduler import Scheduler
from station.core.dicom.sopclasses import DICOS_TDR
from station.core.store.store import Store

if TYPE_CHECKING:
    from station.net.routing.router import Router, RoutingRule

LOGGER = logging.getLogger(__name__)

__all__ = ["Services", "ServicesConfig", "load_services_config", "prepare_services", "start_services"]

COLLECT_INTERVAL_S = 0.2
KICK_INTERVAL_S = 0.5
STATUS_INTERVAL_S = 1.0
WATCHDOG_INTERVAL_S = 5.0
REPORT_WATCH_INTERVAL_S = 1.0
PRUNE_INTERVAL_S = 3600.0
_MACHINE_TDR_TYPES = ("MACHINE", "AGGREGATE", "MOD_AGGREGATE")


@dataclass
class ServicesConfig:
    """Everything hooks and routing read from the configuration file."""

    hooks: HooksSettings = field(default_factory=HooksSettings)
    remotes: list[RemoteSettings] = field(default_factory=list)
    rules: list[RoutingRule] = field(default_factory=list)
    outbox: OutboxSettings = field(default_factory=OutboxSettings)
    outbox_path: Path | None = None

    @property
    def enabled(self) -> bool:
        """False without hook scripts and routing rules (remotes alone are for browsing):
        ``station serve`` then starts no thread at all."""
        return bool(self.hooks.scripts or self.rules)


def load_services_config(settings: Settings) -> ServicesConfig:
    """``[hooks]``, ``[[remotes]]``, ``[[routing]]`` and ``[outbox]`` of the settings, the
    routing rules checked against the remotes. ConfigError when unusable."""
    rules: list[RoutingRule] = []
    if settings.routing:
        # Imported only when needed: a plain `station serve` stays free of HTTP imports.
        from station.net.routing.router import parse_routing

        rules = parse_routing(settings.routing, settings.remotes, settings.source or "<settings>")
    return ServicesConfig(
        hooks=settings.hooks,
        remotes=list(settings.remotes),
        rules=rules,
        outbox=settings.outbox,
        outbox_path=outbox_path(settings),
    )


class Services:
    """Hooks, scan completion, routing and their scheduler, for one receiver.

    ``start``/``stop`` from the owner's (main) thread. See the module docstring for which
    thread runs what.
    """

    def __init__(self, settings: Settings, config: ServicesConfig, runner: HookRunner | None) -> None:
        self.settings = settings
        self.config = config
        self.runner = runner
        self.tracker = ScanTracker(config.hooks.quiet_time_s)
        self.scheduler = Scheduler("station-services")
        self.outbox: Outbox | None = None
        self.router: Router | None = None
        self.store: Store | None = None
        self._unsubscribe: Any = None
        self._last_status: Any = None
        self._last_status_at = 0.0
        self._warned_busy: set[tuple[str, str]] = set()
        self._reports_seen: OrderedDict[str, None] = OrderedDict()
        self._index: sqlite3.Connection | None = None
        self._index_rowid = 0
        self._started = False

    # -- lifecycle (main thread) --------------------------------------------------------------

    def start(self, store: Store, bus: EventBus, *, port: int | None = None) -> None:
        """Open the outbox, start the hook workers, subscribe to ``bus``, pick up scans left
        unfinished by the last run, then start the scheduler and the senders. Problems
        with the outbox disable routing (logged), never reception."""
        if self._started or not self.config.enabled:
            return
        self._started = True
        self.store = store
        # The outbox also holds what hooks need across restarts (completed scans, study
        # state) and their counters for the GUI, so it is opened even without routing.
        try:
            assert self.config.outbox_path is not None
            self.outbox = Outbox(self.config.outbox_path)
        except Exception as exc:
            LOGGER.error("routing disabled: cannot open the outbox %s: %s", self.config.outbox_path, exc)
            self.outbox = None
        if self.outbox is not None and self.config.remotes:
            from station.net.routing.router import Router

            self.router = Router(self.config.rules, self.config.remotes, self.outbox, self.config.outbox)
        if self.runner is not None:
            self.runner.forwarder = self.router
            self.runner.start()
        # Subscribe before looking at the store, so nothing falls between the two.
        self._unsubscribe = bus.subscribe(self._on_event)
        self._open_index(store)
        if self.outbox is not None:
            try:
                self._catch_up(store)
            except Exception:
                LOGGER.exception("routing: cannot look for scans left unfinished by the last run")
        s = self.scheduler
        s.every(COLLECT_INTERVAL_S, self._collect, name="scan completion")
        s.every(STATUS_INTERVAL_S, self._publish_status, name="status", first_in=0.0)
        s.every(WATCHDOG_INTERVAL_S, self._watchdog, name="hook watchdog")
        s.every(REPORT_WATCH_INTERVAL_S, self._watch_reports, name="reports stored by others")
        if self.router is not None:
            s.every(KICK_INTERVAL_S, self.router.kick, name="routing retries")
            s.every(PRUNE_INTERVAL_S, self._prune, name="outbox pruning", first_in=60.0)
            self.router.start()
        s.start()
        if self.runner is not None:
            r = self.settings.receiver
            self.runner.submit(StationStarted(r.aet, r.host, port if port is not None else r.port, str(store.root)))
        LOGGER.info("services: %d hook script(s), %d routing rule(s), %d remote(s), outbox %s",
                    len(self.config.hooks.scripts), len(self.config.rules), len(self.config.remotes),
                    self.outbox.path if self.outbox is not None else "none")

    def stop(self) -> None:
        """Stop receiving events and the scheduler (scans still in their quiet time are
        picked up at the next start), run ``station_will_stop`` hooks and stop the hook
        workers, stop the senders (a send in progress ends first), close the outbox. Safe
        to call twice; also releases a ``Services`` that was prepared but never started."""
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        self.scheduler.stop()
        if self.runner is not None:
            self.runner.stop()
        if self.router is not None:
            self.router.stop()
            self.router = None
        if self.outbox is not None:
            try:
                self._publish_status(force=True)
                counts = self.outbox.counts()
                LOGGER.info("outbox: %d pending, %d failing, %d sent", counts["pending"] + counts["sending"],
                            counts["failing"], counts["sent"])
            except Exception:
                LOGGER.exception("outbox: cannot write the final status")
            self.outbox.close()
            self.outbox = None
        if self._index is not None:
            self._index.close()
            self._index = None
        if self.runner is not None and self._started:
            total = self.runner.counters()["total"]
            LOGGER.info("hooks: %d calls, %d failures, %d slow, %d dropped", total["calls"], total["failures"],
                        total["slow"], total["dropped"])
        self._started = False

    # -- receiver threads ---------------------------------------------------------------------

    def _on_event(self, event: Any) -> None:
        """Bus subscriber (receiver threads): record and queue, never wait."""
        if isinstance(event, InstanceStored):
            self.tracker.add(event)
        if self.runner is not None:
            self.runner.submit(event)

    # -- scheduler thread ----------------------------------------------------------------------

    def _collect(self) -> None:
        for scan in self.tracker.pop_due():
            try:
                if scan.is_report:
                    self._complete_report(scan)
                else:
                    self._complete_scan(scan)
            except Exception:  # one unreadable scan must not stop the others
                LOGGER.exception("cannot complete scan %s", scan.key)

    def _complete_scan(self, open_scan: OpenScan) -> None:
        assert self.store is not None
        rows = self.store.instances(open_scan.series_uid)
        rows = [r for r in rows if not is_report(r.sop_class_uid)]
        if not rows:
            LOGGER.warning("scan %s is complete but has no instances in the store", open_scan.key)
            return
        alarm, decision = self.outbox.study_state(open_scan.study_uid) if self.outbox is not None else ("", "")
        scan = ScanCompleted(
            key=open_scan.key, patient_id=open_scan.patient_id, study_uid=open_scan.study_uid,
            series_uid=open_scan.series_uid, modality=open_scan.modality,
            sop_class_uids=tuple(sorted({r.sop_class_uid for r in rows})),
            paths=tuple(str(r.path) for r in rows), instances=len(rows), frames=sum(max(1, r.frames) for r in rows),
            reason=open_scan.reason, source=open_scan.source, alarm=alarm, decision=decision)
        if self.outbox is not None:
            self.outbox.record_scan(scan)
        if self.runner is not None:
            self.runner.submit(scan)
        if self.router is not None:
            self.router.route(scan)

    def _complete_report(self, open_scan: OpenScan) -> None:
        """A TDR arrived: update its study's alarm state or decision, raise the hook
        events, route the report, and re-evaluate the study's scans if its state changed."""
        if open_scan.key in self._reports_seen:
            return  # found by the index watch and then announced on the bus too (or resent)
        self._reports_seen[open_scan.key] = None
        if len(self._reports_seen) > 10000:
            self._reports_seen.popitem(last=False)
        from station.core.dicos import DicosError, read_tdr

        study_uid, changed = open_scan.study_uid, False
        event: AlertRaised | DecisionRecorded | None = None
        try:
            tdr = read_tdr(open_scan.path)
        except (DicosError, OSError, ValueError) as exc:
            LOGGER.warning("TDR %s (%s) cannot be read: %s", open_scan.key, open_scan.path, exc)
            tdr = None
        if tdr is not None:
            study_uid = tdr.scan_study_uid or study_uid
            if tdr.tdr_type == "OPERATOR":
                decision = tdr.operator_decision or ""
                changed = self.outbox.update_study(study_uid, decision=decision) if self.outbox else False
                event = DecisionRecorded(open_scan.patient_id or tdr.ooi_id, study_uid, decision, tdr.operator_id,
                                         open_scan.path, tdr.sop_instance_uid, tdr.alarm_decision, tdr.note,
                                         open_scan.source)
            elif tdr.tdr_type in _MACHINE_TDR_TYPES:
                changed = self.outbox.update_study(study_uid, alarm=tdr.alarm_decision) if self.outbox else False
                if tdr.is_alarm:
                    event = AlertRaised(open_scan.patient_id or tdr.ooi_id, study_uid, open_scan.path,
                                        tdr.sop_instance_uid, tdr.alarm_decision, len(tdr.ptos),
                                        tuple(dict.fromkeys(p.category for p in tdr.ptos)),
                                        str(tdr.algorithm or ""), open_scan.source)
        alarm, decision = self.outbox.study_state(study_uid) if self.outbox is not None else ("", "")
        report = ScanCompleted(
            key=open_scan.key, patient_id=open_scan.patient_id, study_uid=study_uid,
            series_uid=open_scan.series_uid, modality=open_scan.modality or "TDR",
            sop_class_uids=tuple(sorted(open_scan.sop_class_uids)), paths=(open_scan.path,), instances=1, frames=0,
            reason="report", source=open_scan.source, is_report=True, alarm=alarm, decision=decision)
        if self.outbox is not None:
            self.outbox.record_scan(report)
        if self.runner is not None and event is not None:
            self.runner.submit(event)
        if self.router is not None:
            self.router.route(report)
            if changed:
                self.router.study_changed(study_uid)

    def _catch_up(self, store: Store) -> None:
        """Track again the scans received since the outbox exists that never completed."""
        assert self.outbox is not None
        since = self.outbox.created_at
        found = 0
        for row in store.series_list():  # newest activity first
            if row.last_received < since:
                break
            if is_report(row.sop_class_uid, row.modality):
                for inst in store.instances(row.series_uid):
                    if self.outbox.scan_instances(inst.sop_instance_uid) is None:
                        self.tracker.seed(inst.sop_instance_uid, patient_id=row.patient_id, study_uid=row.study_uid,
                                          series_uid=row.series_uid, modality=row.modality,
                                          sop_class_uid=inst.sop_class_uid, path=str(inst.path))
                        found += 1
                continue
            done = self.outbox.scan_instances(row.series_uid)
            if done is None or done < row.instances:
                self.tracker.seed(row.series_uid, patient_id=row.patient_id, study_uid=row.study_uid,
                                  series_uid=row.series_uid, modality=row.modality, sop_class_uid=row.sop_class_uid)
                found += 1
        if found:
            LOGGER.warning("%d scan(s) had not completed when the station last stopped; completing them now", found)

    def _open_index(self, store: Store) -> None:
        try:
            self._index = sqlite3.connect(f"file:{store.index_path}?mode=ro", uri=True, timeout=5,
                                          check_same_thread=False)
            self._index_rowid = self._index.execute("SELECT coalesce(max(rowid), 0) FROM instances").fetchone()[0]
        except sqlite3.Error as exc:
            LOGGER.error("cannot watch the store index for reports stored by the GUI: %s", exc)
            self._index = None

    def _watch_reports(self) -> None:
        """TDRs that reach the store without passing this process's bus: the GUI records an
        analyst's decision by storing an operator TDR itself (``station.core.triage.alerts``), in
        another process. New index rows are found by rowid (cheap: a range scan) and
        tracked like received reports; duplicates of bus events are skipped."""
        if self._index is None or self.store is None:
            return
        rows = self._index.execute(
            "SELECT i.rowid, i.sop_instance_uid, i.series_uid, i.sop_class_uid, i.path, i.source, se.study_uid,"
            " se.modality, st.patient_id FROM instances i JOIN series se ON se.series_uid = i.series_uid"
            " JOIN studies st ON st.study_uid = se.study_uid"
            " WHERE i.rowid > ? AND i.sop_class_uid = ? ORDER BY i.rowid", (self._index_rowid, DICOS_TDR)).fetchall()
        for rowid, sop_uid, series_uid, sop_class, path, source, study_uid, modality, patient_id in rows:
            self._index_rowid = max(self._index_rowid, rowid)
            if sop_uid in self._reports_seen:
                continue
            self.tracker.seed(sop_uid, patient_id=patient_id, study_uid=study_uid, series_uid=series_uid,
                              modality=modality, sop_class_uid=sop_class, path=str(self.store.root / path),
                              source=source or "store")

    def _publish_status(self, force: bool = False) -> None:
        """Hook counters for the GUI (the outbox's status table); written when they change
        and at least every 10 s, so the GUI can tell a live receiver from a stale file."""
        if self.outbox is None:
            return
        status = {
            "pid": os.getpid(),
            "scripts": self.runner.scripts if self.runner is not None else [],
            "counters": self.runner.counters() if self.runner is not None else None,
            "open_scans": self.tracker.open_scans,
        }
        now = time.monotonic()
        if force or status != self._last_status or now - self._last_status_at > 10.0:
            self.outbox.set_status("hooks", status)
            self._last_status, self._last_status_at = status, now

    def _watchdog(self) -> None:
        """Log (once per call) a hook that has been running for longer than slow_call_s."""
        if self.runner is None:
            return
        for name, (what, seconds) in self.runner.busy().items():
            if (name, what) not in self._warned_busy:
                self._warned_busy.add((name, what))
                LOGGER.warning("hook script %r has been busy with %s for %.0f s; its events are queueing",
                               name, what, seconds)
        if len(self._warned_busy) > 1000:
            self._warned_busy.clear()

    def _prune(self) -> None:
        if self.outbox is not None:
            removed = self.outbox.prune(self.config.outbox.keep_days)
            if removed:
                LOGGER.info("outbox: pruned %d sent job(s) older than %.0f days", removed, self.config.outbox.keep_days)


def prepare_services(settings: Settings) -> Services:
    """Read the configuration and load the hook scripts (their ``register(api)`` runs now),
    starting nothing: ``station serve`` calls this before its receiver listens, so a
    broken configuration or script stops it with a clear message (ConfigError)."""
    config = load_services_config(settings)
    runner = None
    if config.hooks.scripts:
        runner = HookRunner(config.hooks, station_settings=settings, remote_names=[r.name for r in config.remotes])
        runner.load()
    return Services(settings, config, runner)


def start_services(settings: Settings, store: Store, bus: EventBus, *, port: int | None = None) -> Services:
    """``prepare_services`` then ``Services.start``: hooks and routing for a receiver that
    publishes on ``bus`` and stores into ``store``. Call ``.stop()`` before stopping the
    receiver. ConfigError when the configuration or a hook script is unusable."""
    services = prepare_services(settings)
    try:
        services.start(store, bus, port=port)
    except BaseException:
        services.stop()
        raise
    return services

