"""The GUI's receiver in a process of its own, relaying its events to the GUI's EventBus.

Why a process: in one process, eight scanners sending at once made the receiver's
Python threads and the GUI fight over the GIL: the event loop stalled for up to ~450 ms
and reception dropped to ~170 instances/s. With ``station serve`` as a child process the
same load runs at ~490 instances/s and the GUI's longest stall is ~50 ms (figures from
``station bench reliability``). It also isolates faults: a GUI crash does not take a
transfer down with it, and the receiver never waits on the GUI.

The child is ``station serve --events-stdout``: it writes each core event as a
length-prefixed pickle on its stdout; a reader thread here publishes them on the local
``EventBus``, so the GUI sees exactly the events an in-process ``Receiver`` would give.
The child stops on SIGTERM, and by itself when its parent goes away.
"""

from __future__ import annotations

import logging
import os
import pickle
import queue
import signal
import struct
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import msgspec

from station.core.config import ReceiverSettings
from station.core.resources import station_command
from station.core.events import (
    AssociationClosed,
    AssociationOpened,
    Event,
    EventBus,
    InstanceStored,
    ReceiverError,
    ReceiverState,
)
from station.net.dimse.receiver import ReceiverStartError, ReceiverStatus

LOGGER = logging.getLogger(__name__)

_FRAME = struct.Struct("!I")
_EVENT_TYPES = (InstanceStored, AssociationOpened, AssociationClosed, ReceiverError, ReceiverState)


class EventPipeWriter:
    """Child side: queue events from any thread, write them to `stream` on one thread.

    A full pipe (a GUI that reads slowly) must never block an association thread, so
    writes happen on a writer thread. Called on receiver threads; ``close`` on the main one.
    """

    def __init__(self, stream: IO[bytes]) -> None:
        self._stream = stream
        self._queue: queue.Queue[Event | None] = queue.Queue()
        self.broken = threading.Event()  # the reader went away
        self._thread = threading.Thread(target=self._run, name="event-pipe-writer", daemon=True)
        self._thread.start()

    def __call__(self, event: Event) -> None:
        self._queue.put(event)

    def _run(self) -> None:
        while True:
            event = self._queue.get()
            if event is None:
                return
            payload = pickle.dumps(event, protocol=pickle.HIGHEST_PROTOCOL)
            try:
                self._stream.write(_FRAME.pack(len(payload)) + payload)
                self._stream.flush()
            except (BrokenPipeError, OSError, ValueError):
                self.broken.set()
                return

    def close(self, timeout: float = 5.0) -> None:
        """Write what is queued, then stop the writer thread."""
        self._queue.put(None)
        self._thread.join(timeout)


def read_events(stream: IO[bytes]) -> Iterator[Event]:
    """Parent side: the events a child writes, until it closes its stdout."""
    while True:
        header = stream.read(_FRAME.size)
        if len(header) < _FRAME.size:
            return
        (length,) = _FRAME.unpack(header)
        payload = stream.read(length)
        if len(payload) < length:
            return
        event = pickle.loads(payload)  # our own child process, same user: trusted
        if isinstance(event, _EVENT_TYPES):
            yield event
        else:
            LOGGER.warning("ignoring unexpected object from the receiver process: %r", type(event))


class ReceiverProcess(ReceiverStatus):
    """A ``Receiver`` running in a child process; same properties, events on `bus`.

    ``start()`` and ``stop()`` are called from the owner's thread (the GUI thread). The
    reader thread publishes events on `bus` (so subscribers run on it, as they would on
    an association thread with an in-process receiver).
    """

    def __init__(self, store_path: str | os.PathLike[str], bus: EventBus, settings: ReceiverSettings, *,
                 config_path: str | os.PathLike[str] | None = None) -> None:
        self.store_path = Path(store_path)
        # The child reads the same file, so hooks, routing and detection settings apply there.
        self.config_path = Path(config_path) if config_path else None
        self.bus = bus
        self.settings = settings
        self._proc: subprocess.Popen[bytes] | None = None
        self._reader: threading.Thread | None = None
        self._ready = threading.Event()
        self._state: ReceiverState | None = None
        self._port = settings.port
        self._open = 0
        self._received = 0
        self._errors = 0

    @property
    def is_running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None and bool(self._state and self._state.listening)

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def start(self, timeout: float = 60.0) -> None:
        """Start the child and wait until it listens; raise ReceiverStartError if it cannot."""
        if self._proc is not None:
            return
        receiver_json = msgspec.json.encode(self.settings).decode()
        config = ["--config", str(self.config_path)] if self.config_path else []
        command = [*station_command("serve"), *config, "--store", str(self.store_path),
                   "--port", str(self.settings.port), "--events-stdout", "--receiver-json", receiver_json]
        self._proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE)
        self._reader = threading.Thread(target=self._read, name="receiver-process-events", daemon=True)
        self._reader.start()
        if not self._ready.wait(timeout):
            self.stop()
            raise ReceiverStartError(f"the receiver process did not start within {timeout:.0f} s")
        state = self._state
        if state is None or not state.listening:
            message = state.message if state is not None else "the receiver process exited"
            self.stop()
            raise ReceiverStartError(message)
        self._port = state.port
        LOGGER.info("receiver process %d listening on %s:%d", self._proc.pid, self.host, self._port)

    def _read(self) -> None:
        """Reader thread: count and publish what the child reports."""
        assert self._proc is not None and self._proc.stdout is not None
        try:
            for event in read_events(self._proc.stdout):
                if isinstance(event, ReceiverState):
                    self._state = event
                    self._ready.set()
                elif isinstance(event, (AssociationOpened, AssociationClosed)):
                    self._open = event.open_associations
                elif isinstance(event, InstanceStored):
                    self._received += 1
                elif isinstance(event, ReceiverError):
                    self._errors += 1
                self.bus.publish(event)
        finally:
            self._open = 0
            if not self._ready.is_set():
                self._ready.set()
            elif self._state is not None and self._state.listening:
                # The child went away without saying so (crashed or was killed).
                code = self._proc.wait()
                self._state = ReceiverState(False, self.aet, self.host, self._port,
                                            f"receiver process exited ({code})")
                self.bus.publish(self._state)

    def stop(self, timeout: float = 20.0) -> None:
        """Stop the child cleanly (SIGTERM, then SIGKILL after `timeout`). Safe to call twice."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                LOGGER.error("receiver process %d did not stop; killing it", proc.pid)
                proc.kill()
                proc.wait()
        if self._reader is not None:
            self._reader.join(timeout)
            self._reader = None
        if proc.stdout is not None:
            proc.stdout.close()


def watch_parent(stop: threading.Event, interval: float = 1.0) -> threading.Thread:
    """Child side: set `stop` when the parent process goes away (a thread; daemon)."""
    parent = os.getppid()

    def run() -> None:
        while not stop.wait(interval):
            if os.getppid() != parent:
                LOGGER.warning("parent process %d is gone: stopping the receiver", parent)
                stop.set()

    thread = threading.Thread(target=run, name="parent-watch", daemon=True)
    thread.start()
    return thread


def receiver_settings_from_json(text: str) -> ReceiverSettings:
    """Settings handed to the child on its command line (the parent's, already validated)."""
    return msgspec.json.decode(text, type=ReceiverSettings)
