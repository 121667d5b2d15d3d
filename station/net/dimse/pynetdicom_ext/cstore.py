"""C-STORE without pynetdicom's per-message machinery: a plain request decoded from its
bytes, the response encoded by hand, and the DUL thread serving a plain C-STORE itself.
Patched into pynetdicom by ``reactor.install``; equivalence with pynetdicom is tested in
tests/net/test_reactor.py."""


from __future__ import annotations

import logging
import os
import re
import ssl
import struct
from io import BytesIO
from typing import Any

from pydicom.uid import UID
from pynetdicom import _config
from pynetdicom import dimse as _dimse
from pynetdicom import dimse_messages as _dimse_messages
from pynetdicom import evt as _evt
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.pdu_primitives import P_DATA
from pynetdicom.service_class import StorageServiceClass
from pynetdicom.sop_class import uid_to_service_class



LOGGER = logging.getLogger(__name__)

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


