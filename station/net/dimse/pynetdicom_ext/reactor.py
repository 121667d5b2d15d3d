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

import ctypes
import ctypes.util
import errno
import logging
import os
import queue
import re
import secrets
import select
import socket
import ssl
import struct
import sys
import tempfile
import threading
import time
from io import BytesIO
from pathlib import Path
from typing import Any

from pydicom.uid import UID
import pynetdicom
from pynetdicom import _config
from pynetdicom import association as _association
from pynetdicom import dul as _dul
from pynetdicom import transport as _transport
from pynetdicom import dimse as _dimse
from pynetdicom import dimse_messages as _dimse_messages
from pynetdicom import evt as _evt
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.pdu import A_ABORT_RQ
from pynetdicom.pdu_primitives import P_DATA
from pynetdicom.service_class import StorageServiceClass
from pynetdicom.sop_class import uid_to_service_class

from station.core.store.store import HEADER_SCAN_BYTES

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
        if direct is not None and _may_serve_directly(self._assoc, item):
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
MAX_PDATA_BYTES_ATTRIBUTE = "_station_max_pdata_bytes"
# Seconds a peer may go silent in the middle of a PDU (ae attribute set by the receiver).
STALL_TIMEOUT_ATTRIBUTE = "_station_stall_timeout"
DEFAULT_MAX_PDATA_BYTES = 64 * 1024 * 1024
MAX_ASSOCIATION_PDU_BYTES = 1024 * 1024
_FIXED_PDU_LENGTH = {0x05: 4, 0x06: 4, 0x07: 4}


def _peer_of(dul: Any) -> str:
    try:
        host, port = dul.socket.socket.getpeername()[:2]
        return f"{host}:{port}"
    except (AttributeError, OSError):
        return "unknown peer"


def _pdu_length_refused(dul: Any, pdu_type: int, pdu_length: int) -> str:
    """Why a PDU of this type and length must not be read (empty if it may be)."""
    if pdu_type in _FIXED_PDU_LENGTH:
        expected = _FIXED_PDU_LENGTH[pdu_type]
        return "" if pdu_length == expected else f"PDU type 0x{pdu_type:02X} with length {pdu_length} (must be {expected})"
    if pdu_type == 0x04:
        limit = getattr(getattr(dul.assoc, "ae", None), MAX_PDATA_BYTES_ATTRIBUTE, DEFAULT_MAX_PDATA_BYTES)
    else:
        limit = MAX_ASSOCIATION_PDU_BYTES
    return f"PDU type 0x{pdu_type:02X} of {pdu_length} bytes (limit {limit})" if pdu_length > limit else ""


def _set_stall_timeout(sock: socket.socket, seconds: float) -> bool:
    """Bound how long one read or write may wait; True if the kernel enforces it.

    Python's own socket timeout polls before every recv, a system call per read; for a
    plain TCP socket the kernel's SO_RCVTIMEO/SO_SNDTIMEO bound a blocking socket the
    same way (a read that waits too long fails with EAGAIN, an OSError like Python's
    TimeoutError). TLS sockets keep Python's timeout.
    """
    if isinstance(sock, ssl.SSLSocket) or not hasattr(socket, "SO_RCVTIMEO"):
        sock.settimeout(seconds)
        return False
    whole = int(seconds)
    timeval = struct.pack("ll", whole, int((seconds - whole) * 1_000_000))
    try:
        sock.settimeout(None)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, timeval)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, timeval)
    except OSError:
        sock.settimeout(seconds)
        return False
    return True


def _dul_read_pdu_data(self: Any) -> None:
    """pynetdicom's DULServiceProvider._read_pdu_data, refusing absurd PDU lengths.

    pynetdicom reads whatever length a peer announces; a hostile peer announcing 4 GB
    would make it allocate 4 GB. Here the announced length is checked first: too long
    for its type is an invalid PDU (Evt19: the association is aborted).

    The P-DATA PDUs of one DIMSE message are read back to back while the next one has
    already arrived (see ``_next_pdu_waiting``), rather than one per turn of the loop.
    """
    while _read_pdu(self) and _next_pdu_waiting(self):
        pass


def _next_pdu_waiting(dul: Any) -> bool:
    """Whether the DUL thread may read the next PDU at once, skipping its loop's checks:
    it is here already, and the loop has nothing else to do (events, primitives to send,
    a kill). Only where the kernel enforces the stall timeout, so that peeking cannot block.
    """
    if dul._kill_thread or not dul.event_queue.empty() or not dul.to_provider_queue.empty():
        return False
    if not getattr(dul, "_station_kernel_timeouts", False):
        return False
    try:
        return bool(dul.socket.socket.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT))
    except (OSError, AttributeError):  # nothing there yet, or the socket is gone
        return False


def _read_pdu(self: Any) -> bool:
    """Read and act on one PDU; True if it was part of a DIMSE message that is not complete yet."""
    try:
        header = self.socket.recv(6)
    except (OSError, TimeoutError) as exc:
        LOGGER.error("connection from %s closed before the entire PDU was received: %s", _peer_of(self), exc)
        self.event_queue.put("Evt17")
        return False
    if len(header) != 6:
        self.event_queue.put("Evt17")
        return False
    pdu_type, _, pdu_length = struct.unpack(">BBL", header)
    if pdu_type not in (0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07):
        LOGGER.error("unknown PDU type 0x%02X from %s", pdu_type, _peer_of(self))
        self.event_queue.put("Evt19")
        return False
    refused = _pdu_length_refused(self, pdu_type, pdu_length)
    if refused:
        LOGGER.error("refusing %s from %s", refused, _peer_of(self))
        self.event_queue.put("Evt19")
        return False
    pdu_bytes = _pdu_buffer(self, 6 + pdu_length)  # one buffer: no concatenation copy
    pdu_bytes[:6] = header
    try:
        received = _recv_into(self.socket.socket, pdu_bytes[6:])
    except (OSError, TimeoutError) as exc:
        LOGGER.error("connection from %s closed before the entire PDU was received: %s", _peer_of(self), exc)
        self.event_queue.put("Evt17")
        return False
    if received != pdu_length:
        LOGGER.error("PDU from %s is shorter than announced (%d of %d bytes)", _peer_of(self), received, pdu_length)
        self.event_queue.put("Evt17")
        return False
    if pdu_type == 0x04 and _pdata_fast_path_allowed(self):
        pdvs = _split_pdvs(pdu_bytes)
        if pdvs is not None:
            # What pynetdicom's DT-2 action does with a P-DATA-TF PDU in Sta6 (hand it to
            # DIMSE as a P-DATA primitive; the state stays Sta6), without building PDU
            # and item objects, copying every fragment twice and queueing an event.
            primitive = P_DATA()
            primitive._presentation_data_value_list = pdvs  # memoryviews; the setter wants bytes
            _spool.finishing = []
            _spool.direct = [] if getattr(self.assoc.ae, DIRECT_C_STORE_ATTRIBUTE, False) else None
            try:
                self.assoc.dimse.receive_primitive(primitive)
            finally:
                # A complete C-STORE was just queued: flush it here while the association
                # thread wakes up and reads its header, rather than after that, on its thread.
                finishing, _spool.finishing = _spool.finishing, None
                direct, _spool.direct = _spool.direct, None
                for spooled in finishing:
                    spooled.finish()
            for context_id, request in direct or ():
                _serve_directly(self.assoc, context_id, request)
            if _spool.wanted and self.assoc.dimse.message is None:
                # The message is complete: its handler runs meanwhile on the association
                # thread, or ran here and the sender is now busy with its next request.
                _prepare_spool_file()
            return self.assoc.dimse.message is not None
    try:
        pdu, event = self._decode_pdu(bytearray(pdu_bytes))  # its own copy: PDU objects may keep it
    except Exception as exc:  # pynetdicom raises many types for malformed PDUs
        LOGGER.error("cannot decode a PDU from %s: %s", _peer_of(self), exc)
        self.event_queue.put("Evt19")
        return False
    self.event_queue.put(event)
    self._recv_pdu.put(pdu)
    return False


# PDUs up to this size are read into one buffer per association, reused: allocating (and
# zero-filling) a fresh 128 KiB buffer for each P-DATA PDU showed up in profiles.
REUSED_PDU_BUFFER_BYTES = 1024 * 1024


def _pdu_buffer(dul: Any, size: int) -> memoryview:
    """A writable buffer of ``size`` bytes for one PDU (DUL thread).

    The P-DATA fast path is done with it once DIMSE has written the fragments away (to
    the spool file or its own buffers); anything else gets a copy.
    """
    if size > REUSED_PDU_BUFFER_BYTES:
        return memoryview(bytearray(size))
    buffer = getattr(dul, "_station_pdu_buffer", None)
    if buffer is None or len(buffer) < size:
        # A new one rather than a resize: a view of the old one may still be referenced.
        buffer = dul._station_pdu_buffer = bytearray(max(size, 64 * 1024))
    return memoryview(buffer)[:size]


# Handlers that pynetdicom's own P-DATA path would call and the fast path does not.
_PDATA_PATH_EVENTS = (_evt.EVT_DATA_RECV, _evt.EVT_PDU_RECV, _evt.EVT_FSM_TRANSITION)
_PDV_HEADER = struct.Struct(">LB")


def _pdata_fast_path_allowed(dul: Any) -> bool:
    """Whether a P-DATA-TF PDU may skip pynetdicom's PDU objects and state machine.

    Only in Sta6 (association established: P-DATA-TF is Evt10, action DT-2, next state
    Sta6), with nothing queued before it (events and PDUs are handled in order), and
    with no handler bound that would have seen the PDU or the transition.
    """
    assoc = dul.assoc
    return (
        dul.state_machine.current_state == "Sta6"
        and dul.event_queue.empty()
        and dul._recv_pdu.empty()
        and not any(assoc.get_handlers(event) for event in _PDATA_PATH_EVENTS)
    )


def _split_pdvs(pdu: memoryview) -> list[tuple[int, memoryview]] | None:
    """The (context ID, control header + fragment) items of an encoded P-DATA-TF PDU.

    None if the items do not exactly fill the PDU or one is shorter than its two header
    bytes: pynetdicom's decoder then gets the PDU and rejects it as it always did.
    """
    items: list[tuple[int, memoryview]] = []
    pos, end = 6, len(pdu)
    while pos < end:
        if pos + 6 > end:
            return None
        length, context_id = _PDV_HEADER.unpack_from(pdu, pos)
        if length < 2 or pos + 4 + length > end:
            return None
        items.append((context_id, pdu[pos + 5:pos + 4 + length]))
        pos += 4 + length
    return items or None


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
DIRECT_C_STORE_ATTRIBUTE = "_station_direct_c_store"


def _may_serve_directly(assoc: Any, item: Any) -> bool:
    """Whether the DUL thread may serve this just-decoded request itself (taking the serve lock).

    Handing a C-STORE to the association thread costs a thread wake-up per instance, and
    the association thread then has nothing to do but run the handler. The DUL thread
    would only wait for the response meanwhile (the peer sends nothing more until it has
    it, or, if it does, the socket buffers it). Only for plain C-STORE requests on an
    acceptor whose AE allows it (the handler must not wait on this association's network
    traffic, such as its own SCU operations), when nothing is queued or being served (so
    requests keep their order), the reactor is not paused, and ``_serve_request`` could
    not abort (a blocking abort would wait for this very thread to stop).
    """
    if not (isinstance(item, tuple) and len(item) == 2):
        return False
    context_id, request = item
    if (
        type(request) is not C_STORE
        or request.MessageIDBeingRespondedTo is not None
        or not assoc.is_acceptor
        or not assoc.is_established
        or assoc._sent_release
        or not assoc._reactor_checkpoint.is_set()
        or context_id not in assoc._accepted_cx
        or not _is_storage_service(assoc, request)
    ):
        return False
    lock = assoc._station_serve_lock
    if not lock.acquire(blocking=False):
        return False
    if not assoc.dimse.msg_queue.empty():
        lock.release()
        return False
    return True


def _is_storage_service(assoc: Any, request: C_STORE) -> bool:
    """Whether ``_serve_request`` would give this C-STORE to the Storage service class."""
    if _config.UNRESTRICTED_STORAGE_SERVICE:
        return True
    class_uid = request.AffectedSOPClassUID
    class_uid = assoc.acceptor.accepted_common_extended.get(class_uid, (class_uid,))[0]
    try:
        return uid_to_service_class(class_uid) is StorageServiceClass
    except Exception:  # unknown to pynetdicom: let its own path say so
        return False


def _serve_directly(assoc: Any, context_id: int, request: C_STORE) -> None:
    """Serve a C-STORE request on the DUL thread (see ``_may_serve_directly``); releases the serve lock."""
    try:
        # An abort from here must not wait for the DUL thread (this one) to stop: it is
        # queued, and this thread sends it once the request is done.
        assoc.abort = assoc._abort_nonblocking
        if not _store_directly(assoc, context_id, request):
            assoc._serve_request(request, context_id)
    finally:
        assoc.abort = assoc._abort_blocking
        assoc._station_serve_lock.release()


_STORAGE_STATUSES = frozenset(StorageServiceClass.statuses)


def _store_directly(assoc: Any, context_id: int, request: C_STORE) -> bool:
    """What ``_serve_request`` and ``StorageServiceClass.SCP`` do for a plain C-STORE; False
    (nothing done) where this does not apply.

    Their machinery (service class lookup and instance, response primitive with validated
    UIDs, ``attempt`` context, ``evt.trigger``, status validation, the response's
    conversion back) cost about a tenth of a millisecond per instance on the DUL thread,
    between the request and our answer. Here the bound EVT_C_STORE handler gets the same
    ``evt.Event`` (request and context), an exception in it answers 0xC211 as
    pynetdicom's does, no answer goes out once the handler aborted or released the
    association, and an integer status is answered with a C-STORE-RSP encoded directly
    (anything else, such as a status Dataset, goes through pynetdicom's validation and
    sending). Unlike pynetdicom, the spooled dataset file is also closed and removed
    after a failing handler.
    """
    handler = assoc.get_handlers(_evt.EVT_C_STORE)
    if not handler or handler[0] is None or not request.is_valid_request:
        return False
    context = assoc._accepted_cx[context_id]  # checked by _may_serve_directly
    dimse = assoc.dimse
    dimse.cancel_req = {}
    assoc._is_paused = True  # as _serve_request: the handler may use this association's SCU side
    event = _evt.Event(assoc, _evt.EVT_C_STORE, {"request": request, "context": context.as_tuple})
    failed = False
    try:
        function, args = handler
        status = function(event, *args) if args is not None else function(event)
    except Exception as exc:
        LOGGER.error("Exception in handler bound to 'evt.EVT_C_STORE'")
        LOGGER.exception(exc)
        status, failed = 0xC211, True
    finally:
        spooled = request._dataset_file
        if spooled:
            spooled.close()
            try:
                os.unlink(spooled.name)
            except OSError:  # adopted (renamed into the store) or already gone
                pass
        assoc._is_paused = False
        dimse.cancel_req = {}
    if not failed and not assoc.is_established:
        return True  # the handler aborted or released the association
    if type(status) is int and 0 <= status <= 0xFFFF:
        if status not in _STORAGE_STATUSES:
            LOGGER.warning(f"Unknown status value returned by callback - 0x{status:04X}")
        encoded = c_store_rsp_command(str(request.AffectedSOPClassUID), int(request.MessageID), status,
                                      str(request.AffectedSOPInstanceUID))
        if _send_c_store_rsp(dimse, context_id, encoded):
            return True
    rsp = C_STORE()
    rsp.MessageID = request.MessageID
    rsp.MessageIDBeingRespondedTo = request.MessageID
    rsp.AffectedSOPInstanceUID = request.AffectedSOPInstanceUID
    rsp.AffectedSOPClassUID = request.AffectedSOPClassUID
    if failed:
        rsp.Status = status
    else:
        rsp = StorageServiceClass(assoc).validate_status(status, rsp)
    dimse.send_msg(rsp, context_id)
    return True


# -- transport ----------------------------------------------------------------------------------


def _recv_into(sock: socket.socket, view: memoryview) -> int:
    """Fill `view` from `sock`; return the bytes read (fewer only if the peer closed)."""
    nr_read = 0
    while nr_read < len(view):
        n = sock.recv_into(view[nr_read:], len(view) - nr_read)
        if not n:
            break
        nr_read += n
    return nr_read


def _socket_recv(self: Any, nr_bytes: int) -> bytearray:
    """AssociationSocket.recv: read exactly `nr_bytes` (fewer only if the peer closed)."""
    buffer = bytearray(nr_bytes)
    with memoryview(buffer) as view:
        nr_read = _recv_into(self.socket, view)
    if nr_read < nr_bytes:
        del buffer[nr_read:]
    return buffer


# -- spooling received datasets -----------------------------------------------------------------

# The DUL thread of an association learns where to spool from its AE (set by the receiver).
_spool = threading.local()
SPOOL_DIR_ATTRIBUTE = "_station_spool_dir"
# Start kernel writeback once this much is buffered, so the final fsync has little left.
WRITEBACK_CHUNK = 256 * 1024
_SYNC_FILE_RANGE_WRITE = 2


def _load_sync_file_range() -> Any:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        fn = libc.sync_file_range
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_longlong, ctypes.c_longlong, ctypes.c_uint]
    return fn


_sync_file_range = _load_sync_file_range()
_fdatasync = getattr(os, "fdatasync", os.fsync)


class _Aio:
    """glibc's POSIX AIO, for one thing: ``aio_fsync(O_DSYNC)``, an fdatasync run on glibc's
    own I/O thread while the caller goes on.

    A Python thread could not start the flush in time: it needs the GIL to call
    fdatasync, and the DUL thread holds it (running the handler's Python code) until it
    waits for that very flush. glibc's thread needs no GIL. ``struct aiocb`` is laid out
    here by hand (fd at 0, sigevent.sigev_notify at 44, 168 bytes), which is right for
    glibc on the 64-bit Linux ABIs listed; anywhere else this is None and the spool
    file is flushed with a plain fdatasync as before.
    """

    SIZE = 168
    NOTIFY_OFFSET = 44
    SIGEV_NONE = 1
    EINPROGRESS = errno.EINPROGRESS

    def __init__(self, libc: Any) -> None:
        self.fsync = libc.aio_fsync
        self.fsync.argtypes = [ctypes.c_int, ctypes.c_void_p]
        self.error = libc.aio_error
        self.error.argtypes = [ctypes.c_void_p]
        self.result = libc.aio_return
        self.result.argtypes = [ctypes.c_void_p]
        self.result.restype = ctypes.c_ssize_t
        self.suspend = libc.aio_suspend
        self.suspend.argtypes = [ctypes.POINTER(ctypes.c_void_p), ctypes.c_int, ctypes.c_void_p]

    def start(self, fd: int) -> Any:
        """Queue an fdatasync of ``fd``; the control block to wait on, or None if it was not queued."""
        cb = ctypes.create_string_buffer(self.SIZE)
        struct.pack_into("i", cb, 0, fd)
        struct.pack_into("i", cb, self.NOTIFY_OFFSET, self.SIGEV_NONE)
        return cb if self.fsync(os.O_DSYNC, cb) == 0 else None

    def wait(self, cb: Any, timeout: float) -> int | None:
        """Wait for a queued flush; 0 once it succeeded, its errno if it failed, None on time-out."""
        deadline = time.monotonic() + timeout
        pending = (ctypes.c_void_p * 1)(ctypes.addressof(cb))
        while True:
            err = self.error(cb)
            if err != self.EINPROGRESS:
                self.result(cb)  # frees glibc's record of the request
                return err
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            whole = int(left)
            timespec = struct.pack("ll", whole, int((left - whole) * 1e9))
            self.suspend(pending, 1, ctypes.c_char_p(timespec))  # EINTR or EAGAIN: look again


def _load_aio() -> _Aio | None:
    import platform

    if not sys.platform.startswith("linux") or platform.machine() not in ("x86_64", "aarch64") \
            or platform.libc_ver()[0] != "glibc" or ctypes.sizeof(ctypes.c_void_p) != 8:
        return None
    for name in (ctypes.util.find_library("c") or "libc.so.6", ctypes.util.find_library("rt")):
        if not name:
            continue
        try:
            return _Aio(ctypes.CDLL(name, use_errno=True))
        except (OSError, AttributeError):
            continue
    return None


_aio = _load_aio()
_SPOOL_OPEN_FLAGS = (os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
                     | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0))
# Longest the association thread waits for the DUL thread's flush of a spool file.
SYNC_WAIT_S = 60.0


class SpoolFile:
    """Where pynetdicom's chunked receive writes one C-STORE dataset (Part 10, with meta).

    It lives in the store's own temp folder, so the store can adopt it with a rename
    instead of a copy, and the kernel starts writing it to disk while the rest of the
    instance is still arriving, so the fsync before the acknowledgement has little left
    to do. A write error (disk full) is remembered rather than raised: raising on the DUL
    thread would abort the association, and the sender must get a status instead.
    """

    def __init__(self, directory: Path) -> None:
        # What mkstemp does (a new file only we can read), without its name generator and
        # path handling, which cost more than creating the file.
        while True:
            name = os.path.join(directory, f"tmp{secrets.token_hex(8)}.part")
            try:
                fd = os.open(name, _SPOOL_OPEN_FLAGS, 0o600)
                break
            except FileExistsError:
                continue
        self.name = name
        self._fd = fd
        self.file = self  # pynetdicom calls ``.file.flush()`` after each fragment
        self.error: OSError | None = None
        # The file's first bytes as written, for the store's header scan (no re-read).
        self.head = bytearray()
        self._written = 0
        self._flushed_to = 0
        # Set (before the message is queued) when the DUL thread will flush the file itself
        # once the message is complete; _synced is set when that flush has ended.
        self.sync_pending = False
        self._synced = threading.Event()
        # The control block of a flush started with start_flush (glibc's I/O thread).
        self._aio_cb: Any = None

    def write(self, data: bytes | bytearray | memoryview) -> int:
        if self.error is not None or self._fd < 0:
            return len(data)
        view = memoryview(data).cast("B")
        if len(self.head) < HEADER_SCAN_BYTES:
            self.head += view[:HEADER_SCAN_BYTES - len(self.head)]
        try:
            done = 0
            while done < len(view):
                done += os.write(self._fd, view[done:])
        except OSError as exc:
            self.error = exc
            return len(data)
        self._written += done
        if _sync_file_range is not None and self._written - self._flushed_to >= WRITEBACK_CHUNK:
            _sync_file_range(self._fd, self._flushed_to, self._written - self._flushed_to, _SYNC_FILE_RANGE_WRITE)
            self._flushed_to = self._written
        return done

    @property
    def size(self) -> int:
        """Bytes written so far (the whole file once its message is complete)."""
        return self._written

    def flush(self) -> None:
        return None

    def fileno(self) -> int:
        return self._fd

    def finish(self) -> None:
        """Flush the complete file to disk (DUL thread, right after queueing its message).

        The association thread meanwhile wakes up and reads the header; ``sync`` waits for
        this. A failure is remembered, like a write error.
        """
        try:
            if self.error is None and self._fd >= 0:
                try:
                    _fdatasync(self._fd)
                except OSError as exc:
                    self.error = exc
        finally:
            self._synced.set()

    def start_flush(self) -> None:
        """Start flushing the complete file in the background (DUL thread, served directly).

        The flush then runs while the DUL thread builds the event and reads the header, up
        to ``sync``, which waits for it: most of the fdatasync is off the critical path.
        Without POSIX AIO, ``sync`` flushes as before.
        """
        if _aio is not None and self.error is None and self._fd >= 0 and self._aio_cb is None:
            self._aio_cb = _aio.start(self._fd)

    def _wait_for_flush(self) -> None:
        """Wait for the flush start_flush began; remember its failure like a write error."""
        cb, self._aio_cb = self._aio_cb, None
        err = _aio.wait(cb, SYNC_WAIT_S)  # type: ignore[union-attr]  # cb only exists with _aio
        if err is None:
            self._aio_cb = cb  # still running: close must not free the descriptor under it
            raise OSError(errno.ETIMEDOUT, "the spool file was not flushed in time")
        if err and self.error is None:
            self.error = OSError(err, os.strerror(err))

    def sync(self) -> None:
        """Return once the file's data and size are on disk; raise the OSError if they cannot be.

        Called by the store (association thread) before it renames the file into place.
        fdatasync suffices: it also flushes the metadata needed to read the data back,
        such as the size of this new file; timestamps are not needed.
        """
        if self._aio_cb is not None:
            self._wait_for_flush()
        elif self.sync_pending:
            if not self._synced.wait(SYNC_WAIT_S):
                raise OSError(errno.ETIMEDOUT, "the spool file was not flushed in time")
        elif self.error is None:
            _fdatasync(self._fd)
        if self.error is not None:
            raise self.error

    def close(self) -> None:
        if self._aio_cb is not None:
            try:
                self._wait_for_flush()
            except OSError:
                LOGGER.error("spool file %s is still being flushed; leaving its descriptor open", self.name)
                return
        if self.sync_pending:
            self._synced.wait(SYNC_WAIT_S)  # never close the descriptor under a running flush
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


_AET_UNSAFE = re.compile(r"[^\x20-\x5b\x5d-\x7e]")  # printable ASCII except backslash


def safe_aet(text: str) -> str:
    """A peer's AE title made safe to write into a file's meta (ASCII, no backslash, 16 chars)."""
    return _AET_UNSAFE.sub("_", text.strip())[:16]


_original_create_file_meta = _dimse_messages.create_file_meta
_original_write_file_meta_info = _dimse_messages.write_file_meta_info


def _explicit_le(group_element: int, vr: bytes, value: bytes) -> bytes:
    """One explicit VR little endian element with a 16-bit length (OB: reserved + 32-bit)."""
    head = struct.pack("<HH", group_element >> 16, group_element & 0xFFFF) + vr
    if vr == b"OB":
        return head + b"\x00\x00" + struct.pack("<L", len(value)) + value
    return head + struct.pack("<H", len(value)) + value


def encode_file_meta(sop_class_uid: str, sop_instance_uid: str, transfer_syntax: str,
                     source_aet: str = "") -> bytes:
    """The File Meta Information group pynetdicom writes for a received dataset.

    Byte for byte what ``pydicom.filewriter.write_file_meta_info`` writes for pynetdicom's
    ``create_file_meta`` (plus Source AE Title if given), without building a pydicom
    dataset, which cost about 0.3 ms per instance (tests/net/test_reactor.py compares).
    Raises UnicodeEncodeError for values that are not ASCII (the caller lets pydicom
    handle those).
    """
    def text(value: str) -> bytes:
        raw = value.encode("ascii")
        return raw + b" " if len(raw) % 2 else raw

    body = b"".join((
        _explicit_le(0x00020001, b"OB", b"\x00\x01"),
        _explicit_le(0x00020002, b"UI", _ui(sop_class_uid)),
        _explicit_le(0x00020003, b"UI", _ui(sop_instance_uid)),
        _explicit_le(0x00020010, b"UI", _ui(transfer_syntax)),
        _explicit_le(0x00020012, b"UI", _ui(pynetdicom.PYNETDICOM_IMPLEMENTATION_UID)),
        _explicit_le(0x00020013, b"SH", text(pynetdicom.PYNETDICOM_IMPLEMENTATION_VERSION)),
        _explicit_le(0x00020016, b"AE", text(source_aet)) if source_aet else b"",
    ))
    return _explicit_le(0x00020000, b"UL", struct.pack("<L", len(body))) + body


class _EncodedFileMeta:
    """Stands in for the FileMetaDataset pynetdicom passes on to write_file_meta_info."""

    __slots__ = ("encoded",)

    def __init__(self, encoded: bytes) -> None:
        self.encoded = encoded


def _create_file_meta(*, sop_class_uid: str, sop_instance_uid: str, transfer_syntax: str) -> Any:
    """pynetdicom's file meta for a spooled dataset, plus the sender's AE title (as Part 10 intends)."""
    assoc = getattr(_spool, "assoc", None)
    spooling = assoc is not None and getattr(_spool, "directory", None) is not None
    aet = safe_aet(str(assoc.requestor.ae_title or "")) if spooling else ""
    if spooling:
        try:
            return _EncodedFileMeta(encode_file_meta(sop_class_uid, sop_instance_uid, transfer_syntax, aet))
        except UnicodeEncodeError:
            pass  # a hostile UID: pydicom's writer decides what becomes of it
    meta = _original_create_file_meta(
        sop_class_uid=sop_class_uid, sop_instance_uid=sop_instance_uid, transfer_syntax=transfer_syntax)
    if aet:
        meta.SourceApplicationEntityTitle = aet
    return meta


def _write_file_meta_info(fp: Any, file_meta: Any, enforce_standard: bool = True) -> None:
    if isinstance(file_meta, _EncodedFileMeta):
        fp.write(file_meta.encoded)
        return
    _original_write_file_meta_info(fp, file_meta, enforce_standard)


def _named_temporary_file(*args: Any, **kwargs: Any) -> Any:
    """Stand-in for the NamedTemporaryFile pynetdicom's chunked C-STORE receive opens."""
    directory = getattr(_spool, "directory", None)
    if directory is None:
        return tempfile.NamedTemporaryFile(*args, **kwargs)
    _spool.wanted = True
    ready, _spool.ready = getattr(_spool, "ready", None), None
    return ready if ready is not None else SpoolFile(directory)


def _prepare_spool_file() -> None:
    """Create the spool file for the association's next C-STORE now (DUL thread).

    Creating a file right after the previous instance's fsyncs costs about a tenth to a
    quarter of a millisecond (the journal is busy), on the path between the sender's
    request and our answer. Done once a message is complete, it overlaps with that
    message's handler on the association thread, or, when the DUL thread served it
    itself, with the sender's turnaround after our answer. An unused one is removed when
    the association ends, or with the other leftovers of a crash when the store is next
    opened.
    """
    _spool.wanted = False
    try:
        _spool.ready = SpoolFile(_spool.directory)
    except OSError as exc:  # no inode or descriptor left: the next C-STORE meets it itself
        LOGGER.debug("cannot prepare a spool file: %s", exc)


def _discard_ready_spool_file() -> None:
    ready, _spool.ready = getattr(_spool, "ready", None), None
    if ready is not None:
        ready.close()
        try:
            os.unlink(ready.name)
        except OSError as exc:
            LOGGER.warning("cannot remove unused spool file %s: %s", ready.name, exc)


# -- C-STORE response ----------------------------------------------------------------------------

_RSP_EXTRAS = ("OffendingElement", "ErrorComment", "ErrorID", "MoveOriginatorApplicationEntityTitle",
               "MoveOriginatorMessageID")


def _element(tag: int, value: bytes) -> bytes:
    """One implicit VR little endian element: group, element, 32-bit length, value."""
    return (tag >> 16).to_bytes(2, "little") + (tag & 0xFFFF).to_bytes(2, "little") \
        + len(value).to_bytes(4, "little") + value


def _ui(uid: str) -> bytes:
    raw = uid.encode("ascii")
    return raw + b"\x00" if len(raw) % 2 else raw


def encode_c_store_rsp(primitive: C_STORE) -> bytes:
    """The command set of a C-STORE-RSP, implicit VR little endian (PS3.7 9.3.1.2)."""
    return c_store_rsp_command(str(primitive.AffectedSOPClassUID), int(primitive.MessageIDBeingRespondedTo),
                               int(primitive.Status), str(primitive.AffectedSOPInstanceUID))


def c_store_rsp_command(sop_class_uid: str, message_id: int, status: int, sop_instance_uid: str) -> bytes:
    """The command set of a status-only C-STORE-RSP, implicit VR little endian (PS3.7 9.3.1.2)."""
    body = b"".join((
        _element(0x00000002, _ui(sop_class_uid)),
        _element(0x00000100, (0x8001).to_bytes(2, "little")),
        _element(0x00000120, message_id.to_bytes(2, "little")),
        _element(0x00000800, (0x0101).to_bytes(2, "little")),
        _element(0x00000900, status.to_bytes(2, "little")),
        _element(0x00001000, _ui(sop_instance_uid)),
    ))
    return _element(0x00000000, len(body).to_bytes(4, "little")) + body


# -- C-STORE request --------------------------------------------------------------------------

_original_message_to_primitive = _dimse_messages.DIMSEMessage.message_to_primitive
_IMPLICIT_ELEMENT = struct.Struct("<HHL")
_UID_CHARACTERS = frozenset(b"0123456789.")
# The command elements of a plain C-STORE-RQ (no C-MOVE originator) and their lengths (0: a UID).
_C_STORE_RQ_ELEMENTS = {
    0x00000000: 4, 0x00000002: 0, 0x00000100: 2, 0x00000110: 2, 0x00000700: 2, 0x00000800: 2, 0x00001000: 0,
}


def _plain_c_store_rq(encoded: bytes) -> dict[int, bytes] | None:
    """The raw elements of a plain C-STORE-RQ command set; None for anything else."""
    elements: dict[int, bytes] = {}
    pos, end = 0, len(encoded)
    while pos < end:
        if pos + 8 > end:
            return None
        group, element, length = _IMPLICIT_ELEMENT.unpack_from(encoded, pos)
        tag = (group << 16) | element
        expected = _C_STORE_RQ_ELEMENTS.get(tag)
        pos += 8
        if expected is None or pos + length > end or (expected and length != expected) or tag in elements:
            return None
        elements[tag] = encoded[pos:pos + length]
        pos += length
    if len(elements) != len(_C_STORE_RQ_ELEMENTS) or int.from_bytes(elements[0x00000100], "little") != 0x0001:
        return None
    for tag in (0x00000002, 0x00001000):
        uid = elements[tag]
        uid = uid[:-1] if uid[-1:] == b"\x00" else uid
        if not uid or not set(uid) <= _UID_CHARACTERS:
            return None
        elements[tag] = uid
    return elements


_original_decode = _dimse_messages.decode


class _PlainCStoreCommand:
    """The command set of a plain C-STORE-RQ, read straight from its encoding.

    pynetdicom's ``decode_msg`` decodes every command set with pydicom (about 0.1 ms per
    instance) to read four elements of it; these are answered here from the seven fixed
    elements ``_plain_c_store_rq`` found. Anything else (a handler bound to a DIMSE event
    that looks further) gets pydicom's Dataset, decoded on first use.
    """

    def __init__(self, encoded: bytes, elements: dict[int, bytes]) -> None:
        self.encoded = encoded
        self.elements = elements
        self._dataset: Any = None

    CommandField = 0x0001

    @property
    def CommandDataSetType(self) -> int:  # noqa: N802 (pydicom's keyword)
        return int.from_bytes(self.elements[0x00000800], "little")

    @property
    def AffectedSOPClassUID(self) -> str:  # noqa: N802
        return self.elements[0x00000002].decode("ascii")

    @property
    def AffectedSOPInstanceUID(self) -> str:  # noqa: N802
        return self.elements[0x00001000].decode("ascii")

    def dataset(self) -> Any:
        if self._dataset is None:
            self._dataset = _original_decode(BytesIO(self.encoded), True, True)
        return self._dataset

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        return getattr(self.dataset(), name)

    def __iter__(self) -> Any:
        return iter(self.dataset())

    def __getitem__(self, key: Any) -> Any:
        return self.dataset()[key]

    def __contains__(self, key: Any) -> bool:
        return key in self.dataset()

    def __len__(self) -> int:
        return len(self.dataset())


def _decode(bytestring: Any, is_implicit_vr: bool, is_little_endian: bool, deflated: bool = False) -> Any:
    """pynetdicom's ``decode`` as ``decode_msg`` calls it for a command set (see ``_PlainCStoreCommand``)."""
    if is_implicit_vr and is_little_endian and not deflated:
        encoded = bytestring.getvalue()
        elements = _plain_c_store_rq(encoded)
        if elements is not None:
            return _PlainCStoreCommand(encoded, elements)
    return _original_decode(bytestring, is_implicit_vr, is_little_endian, deflated)


def _message_to_primitive(self: Any) -> Any:
    """DIMSEMessage.message_to_primitive, with a direct path for a plain C-STORE-RQ.

    pynetdicom converts every command element through pydicom (about 0.2 ms per
    instance); a plain C-STORE-RQ has seven fixed elements. The primitive is filled
    through its own setters (so it validates as before); anything else, or anything
    unusual in the command, takes pynetdicom's way (tests/net/test_reactor.py compares).
    """
    command = getattr(self, "command_set", None)
    if isinstance(command, _PlainCStoreCommand):
        elements: dict[int, bytes] | None = command.elements
    else:
        encoded = self.encoded_command_set.getvalue() if isinstance(self, _dimse_messages.C_STORE_RQ) else b""
        elements = _plain_c_store_rq(encoded) if encoded else None
    if elements is None:
        return _original_message_to_primitive(self)
    primitive = C_STORE()
    primitive.MessageID = int.from_bytes(elements[0x00000110], "little")
    _set_affected_uids(primitive, elements[0x00000002], elements[0x00001000])
    primitive.Priority = int.from_bytes(elements[0x00000700], "little")
    primitive.DataSet = self.data_set
    primitive._context_id = self.context_id
    primitive._dataset_path = self._data_set_path
    primitive._dataset_file = self._data_set_file
    return primitive


# A conformant UID (PS3.5 9.1): what pynetdicom's UID setter accepts without a word.
_CONFORMANT_UID = re.compile(rb"(?:0|[1-9][0-9]*)(?:\.(?:0|[1-9][0-9]*))*")
_class_uids: dict[bytes, UID] = {}


def _set_affected_uids(primitive: C_STORE, class_uid: bytes, instance_uid: bytes) -> None:
    """Set a C-STORE-RQ primitive's SOP Class and Instance UIDs.

    pynetdicom's setters convert and validate each UID through pydicom (about 10 us each,
    twice per instance). For a conformant UID of at most 64 characters they would store
    ``UID(text)`` and say nothing, which is what is done here (the class UID, the same for
    a whole series, is converted once); anything else goes through the setters, which
    decide what to warn about or refuse.
    """
    cls = _class_uids.get(class_uid)
    if cls is None:
        primitive.AffectedSOPClassUID = class_uid.decode("ascii")
        if len(class_uid) <= 64 and _CONFORMANT_UID.fullmatch(class_uid) and len(_class_uids) < 1024:
            _class_uids[class_uid] = primitive.AffectedSOPClassUID
    else:
        primitive._affected_sop_class_uid = cls
    if len(instance_uid) <= 64 and _CONFORMANT_UID.fullmatch(instance_uid):
        primitive._affected_sop_instance_uid = UID(instance_uid.decode("ascii"))
    else:
        primitive.AffectedSOPInstanceUID = instance_uid.decode("ascii")


_original_send_msg = _dimse.DIMSEServiceProvider.send_msg


def _send_msg(self: Any, primitive: Any, context_id: int) -> None:
    """DIMSEServiceProvider.send_msg with a direct path for a plain C-STORE response."""
    if (
        type(primitive) is C_STORE
        and primitive.MessageIDBeingRespondedTo is not None
        and primitive.Status is not None
        and primitive.AffectedSOPClassUID
        and primitive.AffectedSOPInstanceUID
        and all(getattr(primitive, name, None) in (None, "") for name in _RSP_EXTRAS)
    ):
        if _send_c_store_rsp(self, context_id, encode_c_store_rsp(primitive)):
            return
    _original_send_msg(self, primitive, context_id)


def _send_c_store_rsp(dimse: Any, context_id: int, encoded: bytes) -> bool:
    """Send an encoded status-only C-STORE-RSP command set; False if it must go pynetdicom's way."""
    if dimse.assoc.get_handlers(_evt.EVT_DIMSE_SENT):
        return False
    max_pdu = dimse.maximum_pdu_size
    if max_pdu and len(encoded) + 6 > max_pdu:
        return False
    value = b"\x03" + encoded  # control header 0x03: a command, last fragment
    if _send_pdata_directly(dimse.dul, context_id, value):
        return True
    pdata = P_DATA()
    pdata.presentation_data_value_list.append((context_id, value))
    dimse.dul.send_pdu(pdata)
    return True


_SENT_EVENTS = (_evt.EVT_PDU_SENT, _evt.EVT_DATA_SENT)
_PDATA_ONE_ITEM = struct.Struct(">BBLLB")


def _send_pdata_directly(dul: Any, context_id: int, value: bytes) -> bool:
    """Send a one-item P-DATA-TF PDU from the calling (association) thread; False if not allowed.

    Queueing it for the DUL thread costs a thread hand-over on every acknowledgement. It is
    what pynetdicom's DT-1 action does (in Sta6 P-DATA is sent and the state stays Sta6),
    done here only when nothing queued earlier is still waiting to go out; the DUL thread
    takes primitives off to_provider_queue only inside an action, under the same lock, so
    nothing can overtake. Not over TLS: an SSL socket must not be written by one thread
    while another reads it.
    """
    sock = dul.socket
    raw = getattr(sock, "socket", None) if sock is not None else None
    if raw is None or isinstance(raw, ssl.SSLSocket) or any(dul.assoc.get_handlers(e) for e in _SENT_EVENTS):
        return False
    pdu = _PDATA_ONE_ITEM.pack(0x04, 0x00, 4 + 1 + len(value), 1 + len(value), context_id) + value
    with dul._station_send_lock:
        if dul.state_machine.current_state != "Sta6" or not dul.to_provider_queue.empty():
            return False
        sock.send(pdu)  # on failure it queues Evt17, as the DUL thread's own send would
    return True


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
