"""Core events: plain dataclasses that any thread may publish and any layer may consume.

The receiver publishes them from association threads; the UI bridge turns them into Qt
signals on the GUI thread. Subscribers run on the publishing thread, so they must be
quick and must never block (the receiver must not wait on anyone before it answers a
scanner).
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

LOGGER = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class InstanceStored:
    """One instance is durably on disk and indexed (it is safe to acknowledge it)."""

    patient_id: str
    study_uid: str
    series_uid: str
    sop_instance_uid: str
    sop_class_uid: str
    modality: str
    path: str
    number_of_frames: int
    instance_number: int | None
    nbytes: int
    source: str = ""  # "AET@host:port" for network transfers, "import" for imports
    received_at: float = field(default_factory=time.time)


@dataclass(frozen=True, slots=True)
class AssociationOpened:
    """A peer opened an association with the receiver."""

    peer: str
    calling_aet: str
    open_associations: int


@dataclass(frozen=True, slots=True)
class AssociationClosed:
    """An association ended (released, aborted or dropped)."""

    peer: str
    calling_aet: str
    open_associations: int
    how: str  # "released", "aborted", "closed"


@dataclass(frozen=True, slots=True)
class ReceiverError:
    """Something went wrong with a peer or while storing what it sent."""

    peer: str
    calling_aet: str
    message: str
    status: int | None = None  # the DIMSE status returned, when there was one
    at: float = field(default_factory=time.time)


@dataclass(frozen=True, slots=True)
class ReceiverState:
    """The receiver started listening or stopped."""

    listening: bool
    aet: str
    host: str
    port: int
    message: str = ""


Event = InstanceStored | AssociationOpened | AssociationClosed | ReceiverError | ReceiverState
Subscriber = Callable[[Event], None]


class EventBus:
    """A thread-safe publish/subscribe hub for core events.

    ``publish`` may be called from any thread and calls every subscriber on that thread.
    A subscriber that raises is logged and does not affect the publisher or the others.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._subscribers: tuple[Subscriber, ...] = ()

    def subscribe(self, callback: Subscriber) -> Callable[[], None]:
        """Register `callback`; return a function that unregisters it."""
        with self._lock:
            self._subscribers = (*self._subscribers, callback)

        def unsubscribe() -> None:
            with self._lock:
                self._subscribers = tuple(s for s in self._subscribers if s is not callback)

        return unsubscribe

    def publish(self, event: Event) -> None:
        """Deliver `event` to every subscriber, on the calling thread."""
        for callback in self._subscribers:  # tuple swap makes this safe without the lock
            try:
                callback(event)
            except Exception:  # a broken subscriber must never break the receiver
                LOGGER.exception("event subscriber %r failed on %s", callback, type(event).__name__)
