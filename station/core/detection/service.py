"""Runs the station's detectors on every CT scan as it arrives, and stores the result.

Where it runs: in the process that owns the receiver (``station serve``, which is also
the GUI's receiver child), so scans are examined whether or not a GUI is open. Detection
itself runs in a process pool (spawned workers): never on a receiver thread, never on the
GUI thread. The outcome is a DICOS machine TDR written into the store like any received
instance; its ``InstanceStored`` event reaches the GUI, which turns TDRs into alerts
(``station.core.triage.alerts``). A scanner's own TDRs take exactly the same path.

A scan is complete when a multi-frame instance arrives (all its frames are in it) or when
no new instance of a classic series has arrived for ``quiet_s`` seconds.

Streaming: while a classic series arrives, every ``STREAM_SLAB_SLICES`` new slices (from
``STREAM_MIN_SLICES`` on) one step of each detector's stream examines the slices stored so
far (``DensityStream``: the slab's candidates settle unless the next slices could still
change them). A step that settles a new object stores a *provisional* machine TDR at
once, holding every object settled so far; the GUI shows its alerts like any other, and
each later TDR of the scan replaces them (``station.core.triage.alerts``). Once the scan
is complete, the last step settles the rest and the final machine TDR is stored: the
same objects a whole-volume run gives, at the cost of the last slab only. One task per
series at a time, in the same pool, at the same low priority.
"""

from __future__ import annotations

import logging
import multiprocessing
import tempfile
import threading
import time
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from typing import Any

from pydicom.uid import generate_uid

from station.core.detection.detectors import Detector, DetectionRun, DensityDetector, run_detectors_in_pool
from station.core.detection.detectors import detectors as registered_detectors
from station.core.dicos.site import Site
from station.core.dicos import Algorithm, write_machine_tdr
from station.core.events import EventBus, InstanceStored
from station.core.hooks.runner import ScanTracker
from station.core.priority import lower_priority
from station.core.dicom.sopclasses import DICOS_TDR
from station.core.store.store import Store, StoreError
from station.core.triage.alerts import PROVISIONAL

LOGGER = logging.getLogger(__name__)

# Image storage classes the detector can examine (CT, Enhanced CT, DICOS CT).
CT_SOP_CLASSES = frozenset({
    "1.2.840.10008.5.1.4.1.1.2",
    "1.2.840.10008.5.1.4.1.1.2.1",
    "1.2.840.10008.5.1.4.1.1.501.1",
})

# Streaming (module constants until the settings grow a [detect] key for them): a step
# once this many slices are stored, then after every slab of this many new slices. A
# scan shorter than STREAM_MIN_SLICES is examined once, whole, when complete.
STREAM_MIN_SLICES = 64
STREAM_SLAB_SLICES = 32


@dataclass
class DetectionStats:
    """Counters for the status bar and the closing report."""

    scans_examined: int = 0
    stream_steps: int = 0  # examinations of scans still arriving
    alarms: int = 0
    failures: int = 0
    last_latency_s: float | None = None
    errors: list[str] = field(default_factory=list)


class DetectionService:
    """Watches the bus for CT instances, detects on complete scans, stores machine TDRs.

    ``on_event`` runs on receiver threads (it only records arrival times). A watcher
    thread decides when scans are complete and submits them; pool callbacks write the
    TDR and publish it. ``stop()`` from the owner's thread.
    """

    def __init__(self, store: Store, bus: EventBus, *, quiet_s: float = 2.0,
                 detectors: list[Detector] | None = None, workers: int = 1,
                 stream_slab: int | None = STREAM_SLAB_SLICES, stream_min: int = STREAM_MIN_SLICES,
                 site: Site | None = None) -> None:
        self.store = store
        self.site = site  # who signs the machine TDRs ([site] settings)
        self.bus = bus
        self.quiet_s = quiet_s
        # Default: every registered detector (the built-in one plus any a hook script
        # registered), as they are when the service starts.
        self.detectors = detectors or registered_detectors() or [DensityDetector()]
        self.workers = workers
        self.stream_slab = stream_slab  # None: whole-volume detection on complete scans only
        self.stream_min = stream_min
        self.stats = DetectionStats()
        self._lock = threading.Lock()
        # The same notion of "complete" as hooks and routing (station.core.hooks.runner).
        self._tracker = ScanTracker(quiet_s)
        self._running: set[str] = set()
        self._again: set[str] = set()  # completed again while its detection was running
        self._examined: dict[str, tuple[int, int]] = {}  # series -> (instances, bytes) last examined
        self._pool: ProcessPoolExecutor | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._unsubscribe = None
        self._futures: set[Future[DetectionRun]] = set()
        # Streaming, per series: single-frame CT instances announced, instances the last
        # step examined, the streams' state, the TDR series its reports share.
        self._arrived: dict[str, int] = {}
        self._stepped: dict[str, int] = {}
        self._streams: dict[str, tuple[Any, ...]] = {}
        self._tdr_series: dict[str, str] = {}
        self._first: dict[str, str] = {}  # the first instance to arrive

    def start(self) -> None:
        self._unsubscribe = self.bus.subscribe(self.on_event)
        self._thread = threading.Thread(target=self._watch, name="detection-watch", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Stop watching; let running detections finish (up to `timeout`), then shut the pool."""
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        deadline = time.monotonic() + timeout
        for future in list(self._futures):
            remaining = max(0.0, deadline - time.monotonic())
            try:
                future.result(remaining)
            except Exception:  # already logged by the callback
                pass
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    # -- receiver threads -------------------------------------------------------------------

    def on_event(self, event: object) -> None:
        if isinstance(event, InstanceStored) and event.sop_class_uid in CT_SOP_CLASSES:
            self._tracker.add(event)
            if self.stream_slab and event.number_of_frames <= 1:
                with self._lock:
                    self._arrived[event.series_uid] = self._arrived.get(event.series_uid, 0) + 1
                    self._first.setdefault(event.series_uid, event.sop_instance_uid)

    # -- watcher thread -----------------------------------------------------------------------

    def _watch(self) -> None:
        while not self._stop.wait(0.2):
            ready: list[tuple[str, bool]] = []
            with self._lock:
                for scan in self._tracker.pop_due():
                    if scan.series_uid in self._running:
                        self._again.add(scan.series_uid)  # more slices arrived while it ran
                    else:
                        self._running.add(scan.series_uid)
                        ready.append((scan.series_uid, True))
                if self.stream_slab:
                    for uid, arrived in self._arrived.items():
                        if (uid not in self._running and arrived >= self.stream_min
                                and arrived - self._stepped.get(uid, 0) >= self.stream_slab):
                            self._running.add(uid)
                            ready.append((uid, False))
            for uid, complete in ready:
                self._submit(uid, complete)

    def _submit(self, series_uid: str, complete: bool = True) -> None:
        instances = self.store.instances(series_uid)
        paths = [str(i.path) for i in instances]
        # A scanner that sends the same scan again (same instances, same bytes) gets no
        # second report: it would only duplicate every alert of that scan.
        # A step of it would only raise its alerts again before that.
        snapshot = (len(instances), sum(i.bytes for i in instances))
        streams: tuple[Any, ...] | None = None
        with self._lock:
            if not complete:
                self._stepped[series_uid] = len(instances)
            if not paths or self._examined.get(series_uid) == snapshot:
                self._running.discard(series_uid)
                if complete:
                    self._forget_stream(series_uid)
                return
            if complete:
                self._examined[series_uid] = snapshot
                streams = self._streams.get(series_uid)
            else:
                streams = self._streams.get(series_uid) or tuple(
                    d.stream() if callable(getattr(d, "stream", None)) else None for d in self.detectors)
        if self._pool is None:
            # Spawned workers: forking a process that runs receiver threads is unsafe.
            self._pool = ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context("spawn"),
                                             initializer=lower_priority)
        started = time.monotonic()
        future = run_detectors_in_pool(self._pool, paths, detector_list=self.detectors, streams=streams,
                                       complete=complete, volume_key=series_uid,
                                       first_sop=self._first.get(series_uid))
        self._futures.add(future)
        future.add_done_callback(lambda f: self._done(series_uid, started, f, complete))

    def _forget_stream(self, series_uid: str) -> None:
        """A complete scan's streaming state goes (under the lock); slices arriving later
        open the scan again and stream from the start."""
        self._arrived.pop(series_uid, None)
        self._stepped.pop(series_uid, None)
        self._streams.pop(series_uid, None)
        self._first.pop(series_uid, None)

    # -- pool callback thread ------------------------------------------------------------------

    def _done(self, series_uid: str, started: float, future: Future[DetectionRun], complete: bool) -> None:
        self._futures.discard(future)
        run: DetectionRun | None = None
        try:
            run = future.result()
            detections = [d for r in run.results if not r.error for d in r.detections]
            failed = [f"{r.name}: {r.error}" for r in run.results if r.error]
            if failed:
                raise RuntimeError("; ".join(failed))
            if run.scan is None:
                raise RuntimeError("the scan's identity could not be read")
            if not complete:
                with self._lock:
                    self._streams[series_uid] = run.streams
                self.stats.stream_steps += 1
                if run.new:  # a threat seen while the scan arrives: alert now
                    self._report(series_uid, run, detections, started)
            else:
                tdr = self._report(series_uid, run, detections, started)
                self.stats.scans_examined += 1
                self.stats.alarms += int(tdr.alarm_decision == "ALARM")
                self.stats.last_latency_s = time.monotonic() - started
                LOGGER.info("detector examined %s: %s, %d object(s), %.2f s", series_uid, tdr.alarm_decision,
                            len(detections), self.stats.last_latency_s)
        except (StoreError, OSError, RuntimeError, ValueError) as exc:
            self.stats.failures += 1
            self.stats.errors.append(f"{series_uid}: {exc}")
            LOGGER.error("detection of series %s failed: %s", series_uid, exc)
        except Exception:  # a worker crash must not kill the callback thread silently
            self.stats.failures += 1
            LOGGER.exception("detection of series %s failed", series_uid)
        finally:
            with self._lock:
                self._running.discard(series_uid)
                if complete:
                    self._forget_stream(series_uid)
                    self._tdr_series.pop(series_uid, None)
                elif run is None:
                    self._streams.pop(series_uid, None)  # a failed step: the next one starts over
                again = series_uid in self._again
                self._again.discard(series_uid)
                if again:
                    self._running.add(series_uid)
            if again and not self._stop.is_set():
                self._submit(series_uid)  # the scan completed while a step ran, or has late slices

    def _report(self, series_uid: str, run: DetectionRun, detections: list, started: float) -> Any:
        """Write the machine TDR of a run into the store and publish it (pool callback
        thread). A step's TDR is provisional: its algorithm parameters say so."""
        assert run.scan is not None
        names = "+".join(d.name for d in self.detectors)
        versions = "+".join(d.version for d in self.detectors)
        parameters = tuple(p for d in self.detectors for p in getattr(d, "parameters", list)())
        if not run.complete:
            parameters += (f"{PROVISIONAL}: {run.shape[0]} slices of an arriving scan",)
        with self._lock:
            tdr_series = self._tdr_series.setdefault(series_uid, generate_uid())
        with tempfile.TemporaryDirectory(prefix="station-tdr-") as tmp:
            out = Path(tmp) / "tdr.dcm"
            tdr = write_machine_tdr(
                detections, out, scan=run.scan,
                algorithm=Algorithm(names, versions, parameters),
                processing_ms=(time.monotonic() - started) * 1000.0,
                series_uid=tdr_series, site=self.site,
            )
            stored = self.store.ingest([out.read_bytes()], source="station-detector")
        assert stored.sop_class_uid == DICOS_TDR
        if not run.complete:
            LOGGER.info("detector: %d object(s) in the first %d slices of %s (provisional TDR)",
                        len(detections), run.shape[0], series_uid)
        self.bus.publish(stored)
        return tdr
