"""Scripting hooks: sites extend the station with a few lines of Python.

Configuration (``[hooks]`` in the station's TOML file, read with the rest of it into
``settings.hooks``, a ``station.core.config.HooksSettings``; every key optional)::

    [hooks]
    scripts = ["forward_alarms.py", "/etc/station/decisions_csv.py"]  # relative: to this file
    quiet_time_s = 2.0     # a classic series is complete after this long without a new instance
    queue_size = 1000      # events waiting per script; beyond that new ones are dropped and counted
    slow_call_s = 1.0      # a call longer than this is logged and counted as slow
    stop_timeout_s = 5.0   # how long station_will_stop callbacks (and queued events) may take
    process_workers = 1    # processes behind api.run_in_process

    [hooks.options.forward_alarms]   # handed to forward_alarms.py as api.options
    to = "supervisor"

A script defines ``register(api)``; the station imports it once at start (from its path,
under the module name ``station_hook_<stem>``) and calls ``register`` with a ``HookApi``::

    def register(api):
        @api.scan_did_complete
        def on_scan(scan):              # a ScanCompleted
            api.log.info("%s: %d instances", scan.series_uid, scan.instances)

Hooks (Anki's ``<subject>_did_<verb>`` naming) and what each callback receives:

- ``instance_did_store(InstanceStored)``: an instance is durably stored.
- ``scan_did_complete(ScanCompleted)``: a series is complete: no new instance for
  ``quiet_time_s``, or a multi-frame instance arrived (it holds all its frames).
- ``alert_did_raise(AlertRaised)``: a machine TDR with AlarmDecision ALARM arrived (from a
  scanner's ATR or the station's own detector).
- ``decision_did_record(DecisionRecorded)``: an operator TDR (an analyst's decision) arrived.
- ``station_did_start(StationStarted)`` / ``station_will_stop(StationStopping)``.

Plus ``api.register_detector(detector)`` (a ``station.core.detection.detectors.Detector``, into its registry),
``api.run_in_process(fn, *args)`` (CPU-heavy work; returns a Future) and
``api.forward(scan_or_alert_or_study_uid, to="remote")`` (the routing outbox).

Threads: callbacks never run on the GUI thread or a receiver thread. Each script has its
own worker thread and its own bounded queue, fed by ``HookRunner.submit`` (any thread,
never blocks): a script whose callback sleeps only delays that script's own later events.
When a script's queue is full, new events for it are dropped and counted (``dropped``);
the publisher (a receiver thread acknowledging a scanner) never waits. A callback that
raises is logged with the script's name and counted (``failures``); one that takes longer
than ``slow_call_s`` is logged and counted (``slow``), and ``counters()`` shows for how
long a script has been busy, so a stuck hook is visible in the status bar.

Scripts are plain modules: keep side effects inside ``register`` (a ``run_in_process``
worker, a separate spawned process, imports the script again to find its functions).
Pure core: no Qt, no networking.
"""

from __future__ import annotations

import importlib.util
import logging
import multiprocessing
import pickle
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from queue import SimpleQueue
from typing import Any, Protocol

from station.core.config import ConfigError, HooksSettings, hook_script_name
from station.core.events import EventBus, InstanceStored
from station.core.dicom.sopclasses import DICOS_TDR

LOGGER = logging.getLogger(__name__)

__all__ = [
    "AlertRaised",
    "DecisionRecorded",
    "HOOKS",
    "HookApi",
    "HookLoadError",
    "HookRunner",
    "HooksSettings",
    "ScanCompleted",
    "ScanTracker",
    "ScriptDetector",
    "StationStarted",
    "StationStopping",
    "is_report",
]

HOOKS: tuple[str, ...] = (
    "instance_did_store",
    "scan_did_complete",
    "alert_did_raise",
    "decision_did_record",
    "station_did_start",
    "station_will_stop",
)
"""Every hook name a script may register a callback for."""


# --------------------------------------------------------------------------- events


@dataclass(frozen=True, slots=True)
class ScanCompleted:
    """A scan (one series) has arrived completely; what routing and hooks work on.

    ``key`` identifies the unit: the series UID for images, the SOP instance UID for a TDR
    (each report is complete on arrival and routed on its own). ``paths`` are the store's
    files of the whole series (including instances received before a restart). ``reason``:
    "quiet" (no new instance for the quiet time), "frames" (a multi-frame instance holds all
    its frames), "report" (a TDR), "restart" (found unfinished in the store at start).
    ``alarm`` (ALARM / UNKNOWN / CLEAR, "" = no machine TDR yet) and ``decision`` (CLEAR /
    SUSPECT / THREAT, "" = none yet) are the study's state when the event was made.
    """

    key: str
    patient_id: str
    study_uid: str
    series_uid: str
    modality: str
    sop_class_uids: tuple[str, ...]
    paths: tuple[str, ...]
    instances: int
    frames: int
    reason: str = "quiet"
    source: str = ""
    is_report: bool = False
    alarm: str = ""
    decision: str = ""
    completed_at: float = field(default_factory=time.time)


@dataclass(frozen=True, slots=True)
class AlertRaised:
    """A machine TDR says ALARM for the scan of ``study_uid`` (a scanner's ATR or the
    station's detector). ``categories``: the threat categories of its PTOs."""

    patient_id: str
    study_uid: str
    tdr_path: str
    tdr_sop_instance_uid: str
    alarm_decision: str
    ptos: int
    categories: tuple[str, ...] = ()
    algorithm: str = ""
    source: str = ""
    at: float = field(default_factory=time.time)


@dataclass(frozen=True, slots=True)
class DecisionRecorded:
    """An operator TDR recorded an analyst's ``decision`` (CLEAR / SUSPECT / THREAT) on the
    scan of ``study_uid``."""

    patient_id: str
    study_uid: str
    decision: str
    operator: str
    tdr_path: str
    tdr_sop_instance_uid: str
    alarm_decision: str = ""
    note: str = ""
    source: str = ""
    at: float = field(default_factory=time.time)


@dataclass(frozen=True, slots=True)
class StationStarted:
    """The station's receiver listens and its hooks and routing run."""

    aet: str = ""
    host: str = ""
    port: int = 0
    store: str = ""


@dataclass(frozen=True, slots=True)
class StationStopping:
    """The station is about to stop (callbacks get ``stop_timeout_s`` in total)."""

    reason: str = "stop"


_HOOK_OF: dict[type, str] = {
    InstanceStored: "instance_did_store",
    ScanCompleted: "scan_did_complete",
    AlertRaised: "alert_did_raise",
    DecisionRecorded: "decision_did_record",
    StationStarted: "station_did_start",
    StationStopping: "station_will_stop",
}


def is_report(sop_class_uid: str, modality: str = "") -> bool:
    """True for a DICOS Threat Detection Report (routed and tracked one instance at a time)."""
    return sop_class_uid == DICOS_TDR or (not sop_class_uid and modality.upper() == "TDR")


# --------------------------------------------------------------------------- scan completion


@dataclass
class OpenScan:
    """A scan still arriving (or complete and waiting to be collected by ``pop_due``)."""

    key: str
    patient_id: str
    study_uid: str
    series_uid: str
    modality: str
    sop_class_uids: set[str]
    instances: int
    frames: int
    source: str
    due: float
    reason: str
    is_report: bool = False
    path: str = ""


class ScanTracker:
    """Turns ``InstanceStored`` events into completed scans.

    A series is complete when no new instance of it arrived for ``quiet_time_s``, or at
    once when a multi-frame instance arrives (the store keeps whole instances only, so all
    its frames are there). A TDR is complete on arrival, as a unit of its own. Instances
    arriving after a series was completed open it again: it completes a second time, and
    routing sends what was not sent yet.

    ``add`` runs on receiver threads: a dictionary update under a lock, nothing else.
    ``pop_due`` runs on the scheduler thread. ``clock`` is injectable for tests.
    """

    def __init__(self, quiet_time_s: float = 2.0, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.quiet_time_s = quiet_time_s
        self._clock = clock
        self._lock = threading.Lock()
        self._open: dict[str, OpenScan] = {}

    def add(self, event: InstanceStored) -> None:
        """Record one stored instance (receiver thread; must stay cheap)."""
        now = self._clock()
        if is_report(event.sop_class_uid, event.modality):
            with self._lock:
                self._open[event.sop_instance_uid] = OpenScan(
                    event.sop_instance_uid, event.patient_id, event.study_uid, event.series_uid, event.modality,
                    {event.sop_class_uid}, 1, 0, event.source, now, "report", True, event.path)
            return
        with self._lock:
            scan = self._open.get(event.series_uid)
            if scan is None:
                scan = self._open[event.series_uid] = OpenScan(
                    event.series_uid, event.patient_id, event.study_uid, event.series_uid, event.modality,
                    set(), 0, 0, event.source, now, "quiet")
            scan.sop_class_uids.add(event.sop_class_uid)
            scan.instances += 1
            scan.frames += max(1, event.number_of_frames)
            if event.number_of_frames > 1:
                scan.due, scan.reason = now, "frames"
            elif scan.reason != "frames":
                scan.due = now + self.quiet_time_s

    def seed(self, key: str, *, patient_id: str, study_uid: str, series_uid: str, modality: str,
             sop_class_uid: str, path: str = "", source: str = "store") -> None:
        """Track a scan found unfinished in the store at start (it completes after the
        quiet time unless more of it arrives). Any thread."""
        report = is_report(sop_class_uid, modality)
        with self._lock:
            if key in self._open:
                return
            self._open[key] = OpenScan(key, patient_id, study_uid, series_uid, modality, {sop_class_uid}, 0, 0,
                                       source, self._clock() + (0.0 if report else self.quiet_time_s),
                                       "report" if report else "restart", report, path)

    def pop_due(self) -> list[OpenScan]:
        """Remove and return the scans that are complete now (scheduler thread)."""
        now = self._clock()
        with self._lock:
            due = [s for s in self._open.values() if s.due <= now]
            for scan in due:
                del self._open[scan.key]
        return due

    @property
    def open_scans(self) -> int:
        with self._lock:
            return len(self._open)


# --------------------------------------------------------------------------- scripts and the API


class HookLoadError(ConfigError):
    """A hook script could not be imported or its ``register(api)`` failed."""


class Forwarder(Protocol):
    """What ``api.forward`` needs from routing (``station.net.routing.router.Router``)."""

    def forward(self, what: Any, to: str, *, via: str | None = None, reason: str = "") -> int: ...

    @property
    def remote_names(self) -> tuple[str, ...]: ...


def _load_module(module_name: str, path: str | Path) -> Any:
    """Import a script from its path under ``module_name`` and register it in
    ``sys.modules`` (so pickle finds what it defines)."""
    spec = importlib.util.spec_from_file_location(module_name, str(path))
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(module_name, None)
        raise
    return module


def ensure_script_module(module_name: str, path: str | Path) -> None:
    """In a spawned worker process: import a hook script once so its functions and
    classes can be unpickled."""
    if module_name not in sys.modules:
        _load_module(module_name, path)


def _init_worker(modules: tuple[tuple[str, str], ...]) -> None:
    """Initializer of the ``run_in_process`` pool: import every hook script."""
    for module_name, path in modules:
        try:
            ensure_script_module(module_name, path)
        except Exception:  # one broken script must not make the pool unusable for others
            LOGGER.exception("hook worker: cannot import %s", path)


def _rebuild_detector(module_name: str, path: str, blob: bytes) -> ScriptDetector:
    ensure_script_module(module_name, path)
    return ScriptDetector(pickle.loads(blob), module_name, path)


class ScriptDetector:
    """A detector defined in a hook script, wrapped so it can be pickled into any
    detection pool: a spawned worker cannot import the script by name, so the wrapper
    imports it from its path first, then unpickles the detector. Delegates everything
    else (``parameters()``, ``reads_lazy_volume``...) to the wrapped detector."""

    def __init__(self, detector: Any, module_name: str, path: str) -> None:
        self._detector = detector
        self._module_name = module_name
        self._path = path
        self.name: str = detector.name
        self.version: str = detector.version

    def detect(self, volume: Any, spacing_mm: tuple[float, float, float], **context: Any) -> Any:
        return self._detector.detect(volume, spacing_mm, **context)

    def __getattr__(self, item: str) -> Any:
        inner = self.__dict__.get("_detector")
        if inner is None or item.startswith("__"):
            raise AttributeError(item)
        return getattr(inner, item)

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild_detector, (self._module_name, self._path, pickle.dumps(self._detector)))

    def __repr__(self) -> str:
        return f"ScriptDetector({self._detector!r} from {self._path})"


@dataclass
class ScriptCounters:
    """Counters of one script (or the sum of all): for the status bar and the routing panel."""

    calls: int = 0
    failures: int = 0
    slow: int = 0
    dropped: int = 0
    queued: int = 0
    busy_s: float = 0.0  # how long the running call has been running (0 when idle)

    def as_dict(self) -> dict[str, float]:
        return {k: getattr(self, k) for k in ("calls", "failures", "slow", "dropped", "queued", "busy_s")}


_STOP = object()


class _Script:
    """One loaded script: its module, callbacks, queue, worker thread and counters."""

    def __init__(self, name: str, path: Path, queue_size: int, slow_call_s: float) -> None:
        self.name = name
        self.path = path
        self.module_name = f"station_hook_{name}"
        self.module: Any = None
        self.callbacks: dict[str, list[Callable[[Any], object]]] = {h: [] for h in HOOKS}
        self.detectors: list[str] = []
        self.queue_size = queue_size
        self.slow_call_s = slow_call_s
        self.counters = ScriptCounters()
        self._queue: SimpleQueue[Any] = SimpleQueue()
        self._lock = threading.Lock()
        self._busy_since: float | None = None
        self._busy_with = ""
        self._drained = threading.Condition(self._lock)
        self.thread: threading.Thread | None = None

    # -- publisher side (any thread) ----------------------------------------------------

    def offer(self, hook: str, event: Any) -> bool:
        """Queue ``event`` for ``hook`` unless the queue is full (then count a drop)."""
        with self._lock:
            if self.counters.queued >= self.queue_size:
                self.counters.dropped += 1
                dropped = self.counters.dropped
            else:
                self.counters.queued += 1
                self._queue.put((hook, event))
                return True
        if dropped == 1 or dropped % 100 == 0:
            LOGGER.warning("hook script %r is behind (%d events queued): %d event(s) dropped so far",
                           self.name, self.queue_size, dropped)
        return False

    def snapshot(self) -> ScriptCounters:
        with self._lock:
            c = ScriptCounters(**vars(self.counters))
            c.busy_s = time.monotonic() - self._busy_since if self._busy_since is not None else 0.0
            return c

    @property
    def busy_with(self) -> str:
        return self._busy_with

    def wait_idle(self, timeout: float) -> bool:
        """Wait until the queue is empty and no call runs (True) or ``timeout`` passes."""
        deadline = time.monotonic() + timeout
        with self._drained:
            while self.counters.queued or self._busy_since is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._drained.wait(left)
        return True

    def start(self) -> None:
        self.thread = threading.Thread(target=self._run, name=f"hook-{self.name}", daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self._queue.put(_STOP)

    # -- worker thread -------------------------------------------------------------------

    def _run(self) -> None:
        """The script's worker thread: run its callbacks for each queued event, in order."""
        while True:
            item = self._queue.get()
            if item is _STOP:
                return
            hook, event = item
            with self._lock:
                # Taken off the queue and busy in one step, so wait_idle never sees a gap.
                self.counters.queued -= 1
                self._busy_since = time.monotonic()
            for fn in list(self.callbacks.get(hook, ())):
                self._call(hook, fn, event)
            with self._lock:
                self._busy_since, self._busy_with = None, ""
                self._drained.notify_all()

    def _call(self, hook: str, fn: Callable[[Any], object], event: Any) -> None:
        what = f"{hook} {getattr(fn, '__name__', fn)!s}"
        started = time.monotonic()
        with self._lock:
            self._busy_since, self._busy_with = started, what
        failed = False
        try:
            fn(event)
        except Exception:  # a site's script must never take the station down
            failed = True
            exc_info = sys.exc_info()
        took = time.monotonic() - started
        with self._lock:
            self.counters.calls += 1
            self.counters.failures += failed
            failures = self.counters.failures
            slow = took > self.slow_call_s
            self.counters.slow += slow
        if failed:
            # Full tracebacks for the first few; then a line now and then, so a hook that
            # fails on every slice does not flood the log.
            if failures <= 5:
                LOGGER.error("hook script %r: %s raised", self.name, what, exc_info=exc_info)
            elif failures % 100 == 0:
                LOGGER.error("hook script %r: %s raised (%d failures so far): %s", self.name, what, failures,
                             exc_info[1])
        if slow:
            LOGGER.warning("hook script %r: %s took %.2f s (slow_call_s %.2f)", self.name, what, took,
                           self.slow_call_s)


class HookApi:
    """What a hook script's ``register(api)`` receives (one per script).

    Register callbacks with the decorators named after the hooks (``@api.scan_did_complete``)
    or ``api.on(hook, fn)``. ``api.name``: the script's name (its file stem);
    ``api.options``: its ``[hooks.options.<name>]`` table; ``api.log``: a logger named after
    it; ``api.settings``: the station's settings. ``register`` runs on the thread that
    starts the station; callbacks run on the script's own worker thread.
    """

    def __init__(self, runner: HookRunner, script: _Script, options: dict[str, Any], settings: Any) -> None:
        self._runner = runner
        self._script = script
        self.name = script.name
        self.options = dict(options)
        self.settings = settings
        self.log = logging.getLogger(f"station.hooks.{script.name}")

    def on(self, hook: str, fn: Callable[[Any], object] | None = None) -> Any:
        """Register ``fn`` for ``hook`` (one of ``HOOKS``); usable as a decorator."""
        if hook not in HOOKS:
            raise ValueError(f"unknown hook {hook!r}; hooks are {', '.join(HOOKS)}")

        def add(f: Callable[[Any], object]) -> Callable[[Any], object]:
            if not callable(f):
                raise TypeError(f"{f!r} is not callable")
            self._script.callbacks[hook].append(f)
            return f

        return add if fn is None else add(fn)

    def instance_did_store(self, fn: Callable[[InstanceStored], object]) -> Callable[[InstanceStored], object]:
        """Decorator: ``fn(InstanceStored)`` for every instance stored."""
        return self.on("instance_did_store", fn)

    def scan_did_complete(self, fn: Callable[[ScanCompleted], object]) -> Callable[[ScanCompleted], object]:
        """Decorator: ``fn(ScanCompleted)`` when a series has arrived completely."""
        return self.on("scan_did_complete", fn)

    def alert_did_raise(self, fn: Callable[[AlertRaised], object]) -> Callable[[AlertRaised], object]:
        """Decorator: ``fn(AlertRaised)`` for every machine TDR that says ALARM."""
        return self.on("alert_did_raise", fn)

    def decision_did_record(self, fn: Callable[[DecisionRecorded], object]) -> Callable[[DecisionRecorded], object]:
        """Decorator: ``fn(DecisionRecorded)`` for every operator TDR (analyst decision)."""
        return self.on("decision_did_record", fn)

    def station_did_start(self, fn: Callable[[StationStarted], object]) -> Callable[[StationStarted], object]:
        """Decorator: ``fn(StationStarted)`` once the station receives."""
        return self.on("station_did_start", fn)

    def station_will_stop(self, fn: Callable[[StationStopping], object]) -> Callable[[StationStopping], object]:
        """Decorator: ``fn(StationStopping)`` before the station stops (keep it short)."""
        return self.on("station_will_stop", fn)

    def register_detector(self, detector: Any, *, replace: bool = False) -> None:
        """Add ``detector`` (a ``station.core.detection.detectors.Detector``) to the detector registry,
        wrapped so it unpickles in spawned pool workers. It is removed again when the
        hooks stop."""
        from station.core.detection.detectors import register_detector

        wrapped = ScriptDetector(detector, self._script.module_name, str(self._script.path))
        register_detector(wrapped, replace=replace)  # type: ignore[arg-type]
        self._script.detectors.append(wrapped.name)

    def run_in_process(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        """Run ``fn(*args, **kwargs)`` in a worker process (CPU-heavy work: the GIL makes
        threads useless for it) and return its Future. ``fn`` must be a module-level
        function of the script (or of an importable module); arguments are pickled."""
        return self._runner.process_pool().submit(fn, *args, **kwargs)

    def forward(self, what: Any, to: str, *, via: str | None = None) -> int:
        """Send to the remote ``to`` through the persistent outbox (retried until it
        arrives): a ``ScanCompleted`` forwards that scan; an ``AlertRaised``,
        ``DecisionRecorded`` or a study UID forwards every scan of the study, including
        those still to complete. ``via``: "dimse" or "stowrs" (default: the remote's).
        Returns the number of jobs queued now."""
        forwarder = self._runner.forwarder
        if forwarder is None:
            raise RuntimeError("routing is not available: configure [[remotes]]")
        return forwarder.forward(what, to, via=via, reason=f"hook {self.name}")

    @property
    def remotes(self) -> tuple[str, ...]:
        """Names of the configured remotes (``[[remotes]]``)."""
        forwarder = self._runner.forwarder
        return tuple(forwarder.remote_names) if forwarder is not None else tuple(self._runner.remote_names)


class HookRunner:
    """Loads the hook scripts and runs their callbacks off the publishers' threads.

    ``load()`` (the starting thread) imports each script and calls its ``register``;
    ``start()`` starts one worker thread per script; ``submit(event)`` (any thread, never
    blocks) queues the event for each script that registered for it; ``stop()`` delivers
    ``station_will_stop``, waits up to ``stop_timeout_s`` for the queues to drain, ends the
    workers and the process pool and unregisters the scripts' detectors. A worker stuck
    in a callback is left behind (a daemon thread) and logged: stopping never hangs on it.
    """

    def __init__(self, settings: HooksSettings, *, station_settings: Any = None,
                 remote_names: tuple[str, ...] | list[str] = ()) -> None:
        self.settings = settings
        self.station_settings = station_settings
        # Known before routing starts, so register(api) can check api.remotes.
        self.remote_names = tuple(remote_names)
        self.forwarder: Forwarder | None = None
        self._scripts: list[_Script] = []
        self._pool: ProcessPoolExecutor | None = None
        self._pool_lock = threading.Lock()
        self._started = False
        self._stopped = False

    @property
    def scripts(self) -> list[str]:
        return [s.name for s in self._scripts]

    def load(self) -> None:
        """Import every configured script and call its ``register(api)``."""
        for path in self.settings.scripts:
            name = hook_script_name(path)
            script = _Script(name, path, self.settings.queue_size, self.settings.slow_call_s)
            try:
                module = _load_module(script.module_name, path)
            except Exception as exc:
                self._unload()
                raise HookLoadError(f"hook script {path}: cannot import it: {type(exc).__name__}: {exc}") from exc
            register = getattr(module, "register", None)
            if not callable(register):
                sys.modules.pop(script.module_name, None)
                self._unload()
                raise HookLoadError(f"hook script {path} defines no register(api) function")
            script.module = module
            self._scripts.append(script)
            api = HookApi(self, script, self.settings.options.get(name, {}), self.station_settings)
            try:
                register(api)
            except Exception as exc:
                self._unload()
                raise HookLoadError(f"hook script {path}: register(api) raised {type(exc).__name__}: {exc}") from exc
            hooks = [h for h, fns in script.callbacks.items() if fns]
            LOGGER.info("hook script %s loaded from %s: %s%s", name, path, ", ".join(hooks) or "no callbacks",
                        f"; detectors {', '.join(script.detectors)}" if script.detectors else "")

    def start(self) -> None:
        """Start the worker threads (one per script)."""
        if self._started:
            return
        self._started = True
        for script in self._scripts:
            script.start()

    def attach(self, bus: EventBus) -> Callable[[], None]:
        """Subscribe ``submit`` to ``bus`` (every hook event type found there is delivered);
        returns the unsubscribe function."""
        return bus.subscribe(self.submit)

    def submit(self, event: Any) -> None:
        """Queue ``event`` for every script that has a callback for it. Any thread; returns
        at once (a full queue drops the event for that script and counts it)."""
        hook = _HOOK_OF.get(type(event))
        if hook is None or not self._started or self._stopped:
            return
        for script in self._scripts:
            if script.callbacks[hook]:
                script.offer(hook, event)

    def counters(self) -> dict[str, Any]:
        """``{"total": {...}, "scripts": {name: {...}}}`` with calls, failures, slow,
        dropped, queued and busy_s (seconds the running call has taken). Any thread."""
        per = {s.name: s.snapshot() for s in self._scripts}
        total = ScriptCounters()
        for c in per.values():
            for k in ("calls", "failures", "slow", "dropped", "queued"):
                setattr(total, k, getattr(total, k) + getattr(c, k))
            total.busy_s = max(total.busy_s, c.busy_s)
        return {"total": total.as_dict(), "scripts": {n: c.as_dict() for n, c in per.items()}}

    def busy(self) -> dict[str, tuple[str, float]]:
        """Scripts in a call for longer than ``slow_call_s``: name -> (what, seconds)."""
        out = {}
        for s in self._scripts:
            c = s.snapshot()
            if c.busy_s > self.settings.slow_call_s:
                out[s.name] = (s.busy_with, c.busy_s)
        return out

    def process_pool(self) -> ProcessPoolExecutor:
        """The pool behind ``api.run_in_process``, created on first use. Spawned workers
        (forking a process that runs receiver threads is unsafe) that import the scripts."""
        with self._pool_lock:
            if self._stopped:
                raise RuntimeError("the hooks have stopped")
            if self._pool is None:
                modules = tuple((s.module_name, str(s.path)) for s in self._scripts)
                self._pool = ProcessPoolExecutor(self.settings.process_workers,
                                                 mp_context=multiprocessing.get_context("spawn"),
                                                 initializer=_init_worker, initargs=(modules,))
            return self._pool

    def stop(self, reason: str = "stop") -> None:
        """Deliver ``station_will_stop``, drain for up to ``stop_timeout_s``, stop the workers,
        the pool and the scripts' detectors. Safe to call twice."""
        if self._stopped:
            return
        if self._started:
            self.submit(StationStopping(reason))
            deadline = time.monotonic() + self.settings.stop_timeout_s
            for script in self._scripts:
                if not script.wait_idle(max(0.0, deadline - time.monotonic())):
                    LOGGER.error("hook script %r did not finish within stop_timeout_s (%.1f s)%s; leaving it",
                                 script.name, self.settings.stop_timeout_s,
                                 f": busy with {script.busy_with}" if script.busy_with else "")
        self._stopped = True
        for script in self._scripts:
            script.stop()
        for script in self._scripts:
            if script.thread is not None:
                script.thread.join(max(0.0, 0.5))
        with self._pool_lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
        self._unload()

    def _unload(self) -> None:
        from station.core.detection.detectors import unregister_detector

        for script in self._scripts:
            for name in script.detectors:
                try:
                    unregister_detector(name)
                except KeyError:
                    pass
            script.detectors.clear()
            if script.thread is None or not script.thread.is_alive():
                sys.modules.pop(script.module_name, None)
