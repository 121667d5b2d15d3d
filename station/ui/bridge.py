"""The one place where core events cross into Qt.

Receiver threads publish core events on the ``EventBus``. ``EventBridge`` subscribes to
that bus; its subscriber runs on whichever thread publishes and does nothing but append
the event to a lock-protected buffer and, when no flush is pending yet, post a single
wake-up to the GUI thread. On the GUI thread the buffer is flushed at most every
``interval_ms`` (50 ms by default) into a few typed Qt signals, so a burst of 300 slices
in a second costs the GUI a handful of emissions instead of 300.
"""

from __future__ import annotations

import logging
import threading
import time

from PySide6.QtCore import QObject, Qt, QTimer, Signal

from station.core.events import Event, EventBus, InstanceStored

LOGGER = logging.getLogger(__name__)

#: Minimum time between two flushes on the GUI thread. Short enough that the first slice
#: of a scan shows without a perceptible delay, long enough to coalesce a fast burst.
DEFAULT_INTERVAL_MS = 50


class EventBridge(QObject):
    """Turns core events from any thread into batched Qt signals on the GUI thread.

    Create it on the GUI thread (it must live there: its timer and queued slot run in that
    thread's event loop). Signals, all emitted on the GUI thread:

    - ``instancesStored(list)``: the ``InstanceStored`` events of one flush, in arrival order.
    - ``seriesChanged(set)``: the series UIDs those instances belong to.
    - ``receiverEvent(object)``: each other event (``ReceiverState``, ``AssociationOpened``,
      ``AssociationClosed``, ``ReceiverError``), one emission per event, in order.
    """

    instancesStored = Signal(list)
    seriesChanged = Signal(set)
    receiverEvent = Signal(object)

    # Emitted from publisher threads only; queued to the GUI thread. Posting a queued
    # signal never touches widgets and never waits, so it is safe on a receiver thread.
    _wake = Signal()

    def __init__(self, bus: EventBus, parent: QObject | None = None, *,
                 interval_ms: int = DEFAULT_INTERVAL_MS) -> None:
        """Subscribe to `bus`. Called on the GUI thread."""
        super().__init__(parent)
        self._interval_s = interval_ms / 1000.0
        self._lock = threading.Lock()
        self._buffer: list[Event] = []
        self._flush_pending = False  # a wake-up or a timer is already on its way
        self._closed = False
        self._last_flush = float("-inf")
        self._timer = QTimer(self)
        self._timer.setSingleShot(True)
        self._timer.timeout.connect(self._on_timer)
        self._wake.connect(self._on_wake, Qt.ConnectionType.QueuedConnection)
        #: Number of flushes that emitted something; for tests and diagnostics.
        self.flushes = 0
        self._unsubscribe = bus.subscribe(self._on_event)

    # -- any thread ----------------------------------------------------------------------

    def _on_event(self, event: Event) -> None:
        """Bus subscriber. Runs on the publishing (receiver) thread: buffer and wake only."""
        with self._lock:
            if self._closed:
                return
            self._buffer.append(event)
            if self._flush_pending:
                return
            self._flush_pending = True
            # Emitting under the lock guarantees no wake-up is posted after close()
            # returned; posting a queued event does not block, so this cannot deadlock.
            self._wake.emit()

    # -- GUI thread ------------------------------------------------------------------------

    def _on_wake(self) -> None:
        """Queued slot, GUI thread: flush now if the last flush is old enough, else later."""
        if self._closed:
            return
        wait_s = self._last_flush + self._interval_s - time.monotonic()
        if wait_s <= 0:
            # The first event after a quiet spell goes out at once: the first slice of a
            # scan should not wait for the coalescing interval.
            self.flush()
        elif not self._timer.isActive():
            self._timer.start(max(1, int(wait_s * 1000 + 0.5)))

    def _on_timer(self) -> None:
        """Timer slot, GUI thread."""
        self.flush()

    def flush(self) -> None:
        """Emit everything buffered so far. GUI thread only (tests may call it directly)."""
        with self._lock:
            events, self._buffer = self._buffer, []
            self._flush_pending = False
        self._timer.stop()
        self._last_flush = time.monotonic()
        if not events or self._closed:
            return
        self.flushes += 1
        stored: list[InstanceStored] = []
        series: set[str] = set()
        for event in events:
            if isinstance(event, InstanceStored):
                stored.append(event)
                series.add(event.series_uid)
            else:
                # Receiver events are rare (per association, not per slice): keep each one
                # so the status bar can follow counts and show every error.
                self.receiverEvent.emit(event)
        if stored:
            self.instancesStored.emit(stored)
            self.seriesChanged.emit(series)

    def close(self) -> None:
        """Unsubscribe and drop anything not yet flushed. GUI thread; safe to call twice."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            dropped = len(self._buffer)
            self._buffer = []
        self._unsubscribe()
        self._timer.stop()
        if dropped:
            LOGGER.debug("bridge closed with %d unflushed events", dropped)
