"""Event-driven reactors for pynetdicom 3.0.4 (pinned in pyproject.toml).

Why: pynetdicom's two per-association threads poll. The DUL thread sleeps 1 ms whenever
it finds nothing to do, and the association thread sleeps 1 ms at the top of every loop,
so every C-STORE pays several milliseconds of pure waiting (a plain pynetdicom SCP does
about 270 images/s where dcmtk does about 1,000). Here both loops wait on what they are
actually waiting for instead:

- the DUL thread blocks in ``select`` on its socket and on a wake-up socketpair that is
  written whenever a primitive is queued for sending or the DUL is killed;
- the association thread blocks on a ``threading.Event`` that is set whenever a DIMSE
  message is complete, an ACSE primitive (release, abort) arrives, the reactor is asked
  to pause, the association is killed, or the DUL thread ends.

Both keep a short timeout so timers (ARTIM, network idle timeout) are still checked.
The rest of each loop is pynetdicom's own logic, unchanged. Socket reads use
``recv_into`` a preallocated buffer instead of 4 KiB ``recv`` calls and copies, and a
plain C-STORE response (status only) is encoded directly instead of through a pydicom
Dataset, which cost about half a millisecond per instance. Once the association is
established, a P-DATA-TF PDU goes straight to DIMSE as memoryviews of the received buffer
(no PDU objects, copies or state-machine event), and the association thread sends that
response itself rather than handing it to the DUL thread (see ``_send_pdata_directly``).
Where the AE allows it (the station's receiver does), a complete plain C-STORE request
is not handed to the association thread at all: the DUL thread runs the handler and
sends the response itself (see ``_may_serve_directly``), saving a thread wake-up per
instance.

``install()`` patches the classes once per process; it is idempotent and checked by
tests/net/test_reactor.py against pynetdicom's own behaviour (echo, store, release,
abort, pause for SCU operations). With any other pynetdicom than SUPPORTED_PYNETDICOM it
refuses (UnsupportedPynetdicomError): ``station serve`` does not start and the self-test
fails, rather than serving without the PDU-length and stall protections.
"""

from __future__ import annotations

import logging
import os
import queue
import select
import socket
import threading
import time
from typing import Any

import pynetdicom
from pynetdicom import association as _association
from pynetdicom import dul as _dul
from pynetdicom import transport as _transport
from pynetdicom import dimse as _dimse
from pynetdicom import dimse_messages as _dimse_messages
from pynetdicom.pdu import A_ABORT_RQ


from station.core.store.spool import SpoolFile
from station.net.dimse.pynetdicom_ext import cstore
from station.net.dimse.pynetdicom_ext.cstore import _decode, _message_to_primitive, _send_msg
from station.net.dimse.pynetdicom_ext.pdu import (
    STALL_TIMEOUT_ATTRIBUTE,
    _dul_read_pdu_data,
    _set_stall_timeout,
    _socket_recv,
)
from station.net.dimse.pynetdicom_ext.spooling import (
    SPOOL_DIR_ATTRIBUTE,
    _create_file_meta,
    _discard_ready_spool_file,
    _named_temporary_file,
    _spool,
    _write_file_meta_info,
)

LOGGER = logging.getLogger(__name__)

SUPPORTED_PYNETDICOM = "3.0.4"
# Longest sleep of an idle loop: bounds how late a timer (ARTIM, idle timeout) is noticed.
DUL_IDLE_WAIT_S = 0.02
ASSOC_IDLE_WAIT_S = 0.05

_installed = False
_install_lock = threading.Lock()


class _WakingQueue(queue.Queue):  # type: ignore[type-arg]
    """A queue that calls `wake` after every put."""

    def __init__(self, wake: Any) -> None:
        super().__init__()
        self._wake = wake

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        super().put(item, block, timeout)
        self._wake()


class _MessageQueue(_WakingQueue):
    """The DIMSE message queue of an association.

    On the P-DATA fast path a complete C-STORE request that the DUL thread may serve
    itself (see ``_may_serve_directly``) is not queued but handed back to it; a spooled
    C-STORE that is queued is marked for the DUL thread to flush (see
    ``SpoolFile.finish``) before anyone sees it."""

    def __init__(self, wake: Any, assoc: Any) -> None:
        super().__init__(wake)
        self._assoc = assoc

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        direct = getattr(_spool, "direct", None)
        if direct is not None and cstore._may_serve_directly(self._assoc, item):
            spooled = getattr(item[1], "_dataset_file", None)
            if isinstance(spooled, SpoolFile):
                spooled.start_flush()  # runs while the DUL thread goes on to the handler
            direct.append(item)  # the serve lock is now held for it
            return
        finishing = getattr(_spool, "finishing", None)
        if finishing is not None and isinstance(item, tuple) and len(item) == 2:
            spooled = getattr(item[1], "_dataset_file", None)
            if isinstance(spooled, SpoolFile):
                spooled.sync_pending = True
                finishing.append(spooled)
        super().put(item, block, timeout)


class _WakingEvent(threading.Event):
    """The association's pause checkpoint; clearing it (a pause request) wakes the reactor."""

    def __init__(self, wake: threading.Event) -> None:
        super().__init__()
        self._wake = wake

    def clear(self) -> None:
        super().clear()
        self._wake.set()

    def set(self) -> None:
        super().set()
        self._wake.set()


# -- DUL ----------------------------------------------------------------------------------------


def _dul_setup_wakeup(dul: Any) -> None:
    r, w = socket.socketpair()
    r.setblocking(False)
    w.setblocking(False)
    dul._station_wake_r, dul._station_wake_w = r, w
    dul.to_provider_queue = _WakingQueue(lambda: _dul_wake(dul))
    # Held by the DUL thread while it runs a state machine action (which is where it takes
    # primitives off to_provider_queue and sends them), and by the association thread
    # while it sends a C-STORE response itself (see _send_pdata_directly).
    dul._station_send_lock = threading.Lock()


def _dul_wake(dul: Any) -> None:
    w = getattr(dul, "_station_wake_w", None)
    if w is None:
        return
    try:
        w.send(b"\x01")
    except (BlockingIOError, OSError):  # already has a pending wake-up, or closing
        pass


def _dul_wait_idle(dul: Any) -> None:
    r = dul._station_wake_r
    watch = [r]
    sock = getattr(dul.socket, "socket", None) if dul.socket is not None else None
    if sock is not None and sock.fileno() >= 0:
        watch.append(sock)
    try:
        ready, _, _ = select.select(watch, [], [], DUL_IDLE_WAIT_S)
    except (OSError, ValueError):  # the socket closed under us; let the loop notice
        time.sleep(0.001)
        return
    if r in ready:
        try:
            while r.recv(4096):
                pass
        except (BlockingIOError, OSError):
            pass


def _dul_run_reactor(self: Any) -> None:
    """pynetdicom's DULServiceProvider.run_reactor, waiting in select instead of sleeping."""
    ae = getattr(self.assoc, "ae", None)
    _spool.directory = getattr(ae, SPOOL_DIR_ATTRIBUTE, None)
    _spool.assoc = self.assoc
    _spool.ready = None
    _spool.wanted = False
    stall = getattr(ae, STALL_TIMEOUT_ATTRIBUTE, None)
    raw_socket = getattr(self.socket, "socket", None) if self.socket is not None else None
    if stall is not None and raw_socket is not None:
        # Reads only start once select() says data is waiting, so this bounds how long
        # a peer may stall in the middle of a PDU (a truncated PDU would otherwise hold
        # the thread, and its association slot, forever).
        self._station_kernel_timeouts = _set_stall_timeout(raw_socket, stall)
    self._idle_timer.start()
    try:
        while True:
            if not self.assoc._dul_ready.is_set():
                self.assoc._dul_ready.set()
            if self._kill_thread:
                break
            if self.artim_timer.expired:
                self.event_queue.put("Evt18")
            # Events first: pynetdicom reads the socket before acting on queued events,
            # so a peer that stalls mid-PDU right after connecting was read while the
            # connection event (Evt5) still waited, and the close that followed was lost.
            try:
                event = self.event_queue.get(block=False)
            except queue.Empty:
                event = None
            if event is not None:
                with self._station_send_lock:
                    self.state_machine.do_action(event)
                continue
            try:
                if self._process_recv_primitive():
                    continue
                if self._is_transport_event():
                    self._idle_timer.restart()
                    continue
            except Exception as exc:
                LOGGER.error("Exception in DUL.run(), aborting association")
                LOGGER.exception(exc)
                abort_pdu = A_ABORT_RQ()
                abort_pdu.source = 0x02
                abort_pdu.reason_diagnostic = 0x00
                try:
                    with self._station_send_lock:
                        self.socket.send(abort_pdu.encode())
                except Exception:  # the peer may already be gone
                    LOGGER.debug("could not send A-ABORT", exc_info=True)
                self.assoc.is_aborted = True
                self.assoc.is_established = False
                self.assoc._kill = True
                self._kill_thread = True
                return
            _dul_wait_idle(self)
    finally:
        wake = getattr(self.assoc, "_station_wake", None)
        if wake is not None:
            wake.set()
        if self.assoc.is_acceptor and not self.assoc.is_established:
            # The connection ended before an association was made. pynetdicom's acceptor
            # thread would wait out the whole ACSE timeout for a request that can no
            # longer come (holding an association slot); None is what it gets on time-out.
            self.to_user_queue.put(None)
        for s in (getattr(self, "_station_wake_r", None), getattr(self, "_station_wake_w", None)):
            if s is not None:
                s.close()
        self._station_wake_w = None
        _discard_ready_spool_file()


# Largest PDU a peer may send us, by PDU type. P-DATA may be as large as we advertised
# (ae attribute set by the receiver) and no larger; association PDUs are small even with
# 128 presentation contexts; release and abort PDUs have a fixed length of 4.
_original_kill_dul = _dul.DULServiceProvider.kill_dul


def _dul_kill(self: Any) -> None:
    _original_kill_dul(self)
    _dul_wake(self)


# -- Association --------------------------------------------------------------------------------


_original_assoc_init = _association.Association.__init__
_original_assoc_kill = _association.Association.kill


def _assoc_init(self: Any, *args: Any, **kwargs: Any) -> None:
    _original_assoc_init(self, *args, **kwargs)
    wake = threading.Event()
    self._station_wake = wake
    checkpoint = _WakingEvent(wake)
    checkpoint.set()
    self._reactor_checkpoint = checkpoint
    self.dimse.msg_queue = _MessageQueue(wake.set, self)
    # Held while a request is served, by the association thread or (see _serve_directly)
    # the DUL thread, so requests are served one at a time and in order.
    self._station_serve_lock = threading.Lock()
    self.dul.to_user_queue = _WakingQueue(wake.set)
    _dul_setup_wakeup(self.dul)


def _assoc_kill(self: Any) -> None:
    self._station_wake.set()
    _original_assoc_kill(self)


def _assoc_run_reactor(self: Any) -> None:
    """pynetdicom's Association._run_reactor, waiting on an Event instead of sleeping 1 ms."""
    from pynetdicom import evt

    wake: threading.Event = self._station_wake
    self._is_paused = False
    while not self._kill:
        self._is_paused = True
        self._reactor_checkpoint.wait()
        self._is_paused = False
        if self._kill:
            break
        # Clear before looking, so a wake-up that lands while we look is not lost.
        wake.clear()

        with self._station_serve_lock:
            context_id, msg = self.dimse.get_msg(block=False)
            if msg:
                self._serve_request(msg, context_id)
        if msg:
            continue

        if self.is_established and self.acse.is_release_requested():
            # Mark it released before answering: the peer closes the connection as soon
            # as it has the reply, and the close event must already see a release.
            self.is_released = True
            self.acse.send_release(is_response=True)
            LOGGER.info("Association Released")
            self.is_established = False
            evt.trigger(self, evt.EVT_RELEASED, {})
            self.kill()
            return

        if self.acse.is_aborted():
            log_msg = "Association Aborted"
            if self.acse.is_aborted("a-p-abort"):
                log_msg += " (A-P-ABORT)"
            LOGGER.info(log_msg)
            self.dul.receive_pdu(wait=False)
            self.is_aborted = True
            self.is_established = False
            evt.trigger(self, evt.EVT_ABORTED, {})
            self.kill()
            return

        if not self.dul.is_alive():
            self.kill()
            return

        if self.dul.idle_timer_expired():
            LOGGER.error("Network timeout reached")
            if self.network_timeout_response == "A-RELEASE":
                self._is_paused = True
                self._reactor_checkpoint.wait()
                self.release()
                self._is_paused = False
            else:
                self.abort()
            self.kill()
            return

        wake.wait(ASSOC_IDLE_WAIT_S)


# The receiver sets this AE attribute when its C-STORE handler may run on the DUL thread.
class UnsupportedPynetdicomError(RuntimeError):
    """The installed pynetdicom is not the one these changes were verified against."""


def check_version() -> None:
    """Raise UnsupportedPynetdicomError, naming both versions, unless pynetdicom is
    SUPPORTED_PYNETDICOM: the receiver's bounds on PDU length and its stall timeout live in
    the patched code, so running without it would silently drop them."""
    if pynetdicom.__version__ != SUPPORTED_PYNETDICOM:
        raise UnsupportedPynetdicomError(
            f"pynetdicom {pynetdicom.__version__} is installed, but the station's changes to it "
            f"(PDU-length and stall protections, event-driven reactors) are verified against "
            f"pynetdicom {SUPPORTED_PYNETDICOM} only: install pynetdicom=={SUPPORTED_PYNETDICOM}"
        )


def install() -> None:
    """Patch pynetdicom once for this process (idempotent). UnsupportedPynetdicomError
    when pynetdicom is not SUPPORTED_PYNETDICOM (see ``check_version``)."""
    global _installed
    check_version()
    with _install_lock:
        if _installed:
            return
        _dul.DULServiceProvider.run_reactor = _dul_run_reactor
        _dul.DULServiceProvider.kill_dul = _dul_kill
        _dul.DULServiceProvider._read_pdu_data = _dul_read_pdu_data
        _association.Association.__init__ = _assoc_init
        _association.Association.kill = _assoc_kill
        _association.Association._run_reactor = _assoc_run_reactor
        _transport.AssociationSocket.recv = _socket_recv
        _dimse.DIMSEServiceProvider.send_msg = _send_msg
        _dimse_messages.DIMSEMessage.message_to_primitive = _message_to_primitive
        _dimse_messages.decode = _decode
        _dimse_messages.NamedTemporaryFile = _named_temporary_file
        _dimse_messages.create_file_meta = _create_file_meta
        _dimse_messages.write_file_meta_info = _write_file_meta_info
        _installed = True
        LOGGER.debug("event-driven pynetdicom reactors installed (pid %d)", os.getpid())
