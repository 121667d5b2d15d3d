"""The receiver's guard on what a peer may send: PDU length limits, the stall timeout, PDU
reads into one reused buffer, and the P-DATA fast path (PDVs straight to DIMSE).
Patched into pynetdicom by ``reactor.install``."""


from __future__ import annotations

import logging
import socket
import ssl
import struct
from typing import Any

from pynetdicom import evt as _evt
from pynetdicom.pdu_primitives import P_DATA



from station.net.dimse.pynetdicom_ext.cstore import DIRECT_C_STORE_ATTRIBUTE, _serve_directly
from station.net.dimse.pynetdicom_ext.spooling import _prepare_spool_file, _spool

LOGGER = logging.getLogger(__name__)

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


