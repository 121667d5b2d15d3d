"""The event-driven pynetdicom reactors keep pynetdicom's behaviour (SCU and SCP sides)."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

import pynetdicom
import pytest
from pynetdicom import AE, evt
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom.sop_class import CTImageStorage, Verification

from station.net.dimse.pynetdicom_ext import cstore, pdu as pdu_guard, reactor, spooling
from station.core.store import spool as store_spool
from tests.dicom_factory import make_ct_files


@pytest.fixture(autouse=True)
def installed():
    reactor.install()


def _start_scp(on_store=None, direct: bool = False) -> tuple[object, list[str]]:
    stored: list[str] = []

    def record(event):
        stored.append(event.request.AffectedSOPInstanceUID)
        return 0x0000

    ae = AE(ae_title="SCP")
    if direct:
        setattr(ae, cstore.DIRECT_C_STORE_ATTRIBUTE, True)
    ae.add_supported_context(Verification)
    ae.add_supported_context(CTImageStorage)
    ae.network_timeout = 1.0
    ae.acse_timeout = 2.0
    server = ae.start_server(("127.0.0.1", 0), block=False,
                             evt_handlers=[(evt.EVT_C_STORE, on_store or record)])
    return server, stored


@pytest.fixture
def scp():
    server, stored = _start_scp()
    yield server.server_address[1], stored
    server.shutdown()


@pytest.fixture
def quiet_scp(monkeypatch):
    """An SCP without pynetdicom's standard logging handlers (as the receiver runs)."""
    from pynetdicom import _config

    # Bound, those handlers see every PDU and so turn the P-DATA fast paths off.
    monkeypatch.setattr(_config, "LOG_HANDLER_LEVEL", "none")
    server, stored = _start_scp()
    yield server.server_address[1], stored
    server.shutdown()


def test_installed_against_the_pinned_version():
    assert pynetdicom.__version__ == reactor.SUPPORTED_PYNETDICOM
    assert pynetdicom.dul.DULServiceProvider.run_reactor is reactor._dul_run_reactor
    assert pynetdicom.association.Association._run_reactor is reactor._assoc_run_reactor


def test_echo_store_and_release(scp, tmp_path):
    port, stored = scp
    files = make_ct_files(tmp_path, n=3)
    ae = AE()
    ae.add_requested_context(Verification)
    ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", port, ae_title="SCP")
    assert assoc.is_established
    assert assoc.send_c_echo().Status == 0
    for f in files:
        assert assoc.send_c_store(f).Status == 0
    assoc.release()
    assert assoc.is_released
    assert len(stored) == 3


def test_abort_is_seen_by_the_peer(scp):
    port, _ = scp
    aborted = threading.Event()
    ae = AE()
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", port, ae_title="SCP",
                         evt_handlers=[(evt.EVT_ABORTED, lambda e: aborted.set())])
    assert assoc.is_established
    assoc.abort()
    assert assoc.is_aborted
    assoc.join(5)
    assert not assoc.is_alive()


def test_idle_peer_is_dropped_after_the_network_timeout(scp):
    """The SCP's 1 s network timeout still fires though its loops now block instead of poll."""
    port, _ = scp
    ae = AE()
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", port, ae_title="SCP")
    assert assoc.is_established
    deadline = time.monotonic() + 10
    while assoc.is_established and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not assoc.is_established
    assert assoc.is_aborted or assoc.is_released
    assoc.join(5)


def test_peer_vanishing_mid_association_ends_the_threads(scp):
    port, _ = scp
    sock = socket.create_connection(("127.0.0.1", port))
    sock.sendall(b"\x01\x00\x00\x00\x00\x10" + b"\x00" * 8)  # a truncated A-ASSOCIATE-RQ
    sock.close()
    # pynetdicom (and so the station) keeps the acceptor until the ACSE timeout (2 s
    # here); the autouse thread-leak check fails the test if it stays beyond that.
    time.sleep(0.3)


def test_many_sequential_associations_do_not_leak_threads(scp, tmp_path):
    port, stored = scp
    (f,) = make_ct_files(tmp_path, n=1)
    before = threading.active_count()
    for _ in range(20):
        ae = AE()
        ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
        assoc = ae.associate("127.0.0.1", port, ae_title="SCP")
        assert assoc.send_c_store(f).Status == 0
        assoc.release()
    deadline = time.monotonic() + 5
    while threading.active_count() > before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert threading.active_count() <= before
    assert len(stored) == 20


@pytest.mark.parametrize("status", [0x0000, 0xA700, 0xC000, 0xB007])
@pytest.mark.parametrize("sop_uid", ["1.2.3.4", "1.2.3.45", "1.2.826.0.1.3680043.8.498." + "9" * 30])
def test_direct_c_store_response_matches_pynetdicoms_encoding(status, sop_uid):
    from pynetdicom.dimse_messages import C_STORE_RSP
    from pynetdicom.dimse_primitives import C_STORE

    primitive = C_STORE()
    primitive.MessageIDBeingRespondedTo = 65535
    primitive.AffectedSOPClassUID = "1.2.840.10008.5.1.4.1.1.501.1"
    primitive.AffectedSOPInstanceUID = sop_uid
    primitive.Status = status
    message = C_STORE_RSP()
    message.primitive_to_message(primitive)
    (pdata,) = list(message.encode_msg(1, 0))
    (_, fragment), = pdata.presentation_data_value_list
    assert fragment[0] == 0x03
    assert cstore.encode_c_store_rsp(primitive) == fragment[1:]


def _pdata_tf(items: list[tuple[int, bytes]]) -> bytes:
    from pynetdicom.pdu import P_DATA_TF
    from pynetdicom.pdu_primitives import P_DATA

    primitive = P_DATA()
    primitive.presentation_data_value_list = [[cx, value] for cx, value in items]
    pdu = P_DATA_TF()
    pdu.from_primitive(primitive)
    return pdu.encode()


@pytest.mark.parametrize("items", [
    [(1, b"\x03" + b"\x00" * 20)],
    [(1, b"\x03" + b"\x01" * 31), (1, b"\x00" + bytes(range(256)) * 3), (3, b"\x02\xff")],
])
def test_pdv_split_matches_pynetdicoms_p_data_decoder(items):
    from pynetdicom.pdu import P_DATA_TF

    encoded = _pdata_tf(items)
    pdu = P_DATA_TF()
    pdu.decode(encoded)
    expected = pdu.to_primitive().presentation_data_value_list
    split = pdu_guard._split_pdvs(memoryview(encoded))
    assert [(cx, bytes(value)) for cx, value in split] == [(cx, bytes(value)) for cx, value in expected]


@pytest.mark.parametrize("bad", [
    b"\x04\x00\x00\x00\x00\x00",  # no item
    b"\x04\x00\x00\x00\x00\x05\x00\x00\x00\x01\x01",  # item shorter than its two header bytes
    b"\x04\x00\x00\x00\x00\x08\x00\x00\x00\x03\x01\x03\x00\x00",  # trailing bytes after the item
    b"\x04\x00\x00\x00\x00\x06\x00\x00\x00\x09\x01\x03",  # item longer than the PDU
])
def test_malformed_pdvs_are_left_to_pynetdicoms_decoder(bad):
    assert pdu_guard._split_pdvs(memoryview(bad)) is None


def test_store_skips_pdu_objects_and_the_dul_hand_over(quiet_scp, tmp_path, monkeypatch):
    """On a plain association, received P-DATA bypasses PDU decoding and C-STORE responses
    go out from the association thread; what arrives and what the sender gets is unchanged."""
    from pynetdicom.dul import DULServiceProvider

    decoded: list[tuple[bool, int]] = []
    original = DULServiceProvider._decode_pdu

    def counting(self, bytestream):
        decoded.append((self.assoc.is_acceptor, bytestream[0]))
        return original(self, bytestream)

    monkeypatch.setattr(DULServiceProvider, "_decode_pdu", counting)
    direct: list[int] = []
    original_direct = cstore._send_pdata_directly

    def counting_direct(dul, context_id, value):
        sent = original_direct(dul, context_id, value)
        direct.append(sent)
        return sent

    monkeypatch.setattr(cstore, "_send_pdata_directly", counting_direct)
    port, stored = quiet_scp
    files = make_ct_files(tmp_path, n=3, size=256)
    ae = AE()
    ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
    ae.maximum_pdu_size = 16384  # many P-DATA PDUs per instance
    assoc = ae.associate("127.0.0.1", port, ae_title="SCP")
    assert assoc.is_established
    assert [assoc.send_c_store(f).Status for f in files] == [0, 0, 0]
    assoc.release()
    assert len(stored) == 3
    assert (True, 0x04) not in decoded
    assert direct == [True, True, True]


@pytest.mark.parametrize("sop_uid", ["1.2.3.4", "1.2.3.45", "1.2.826.0.1.3680043.8.498." + "9" * 36])
@pytest.mark.parametrize("syntax", ["1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.4.70"])
@pytest.mark.parametrize("aet", ["", "CT1", "CT_LANE_01", "SIXTEEN_CHARS_AE"])
def test_file_meta_encoding_matches_pydicoms(sop_uid, syntax, aet):
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_file_meta_info
    from pynetdicom.dsutils import create_file_meta

    meta = create_file_meta(sop_class_uid="1.2.840.10008.5.1.4.1.1.2", sop_instance_uid=sop_uid,
                            transfer_syntax=syntax)
    if aet:
        meta.SourceApplicationEntityTitle = aet
    expected = DicomBytesIO()
    write_file_meta_info(expected, meta, enforce_standard=True)
    encoded = spooling.encode_file_meta("1.2.840.10008.5.1.4.1.1.2", sop_uid, syntax, aet)
    assert encoded == expected.getvalue()


def test_spool_file_flush_failure_on_the_dul_thread_reaches_the_adopting_thread(tmp_path, monkeypatch):
    import errno

    def disk_full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    spooled = store_spool.SpoolFile(tmp_path)
    spooled.write(b"x" * 1000)
    spooled.sync_pending = True  # as the message queue marks it on the fast path
    monkeypatch.setattr(store_spool, "_fdatasync", disk_full)
    flusher = threading.Timer(0.1, spooled.finish)
    flusher.start()
    with pytest.raises(OSError) as failure:
        spooled.sync()  # waits for the flush on the other thread
    assert failure.value.errno == errno.ENOSPC
    spooled.close()
    flusher.join()


def test_spool_file_not_flushed_elsewhere_is_flushed_by_sync(tmp_path, monkeypatch):
    flushed: list[int] = []
    spooled = store_spool.SpoolFile(tmp_path)
    spooled.write(b"x" * 1000)
    monkeypatch.setattr(store_spool, "_fdatasync", flushed.append)
    spooled.sync()
    assert flushed == [spooled.fileno()]
    spooled.close()


@pytest.mark.skipif(store_spool._aio is None, reason="no POSIX AIO (glibc, 64-bit Linux) here")
def test_spool_file_flush_started_in_the_background_is_waited_for_by_sync(tmp_path, monkeypatch):
    monkeypatch.setattr(store_spool, "_fdatasync", lambda fd: pytest.fail("flushed again in the foreground"))
    spooled = store_spool.SpoolFile(tmp_path)
    spooled.write(b"x" * 300_000)
    spooled.start_flush()
    assert spooled._aio_cb is not None
    spooled.sync()
    spooled.close()
    assert Path(spooled.name).read_bytes() == b"x" * 300_000


class _FakeAio:
    def __init__(self, result):
        self.result, self.waited = result, 0

    def start(self, fd):
        return object()

    def wait(self, cb, timeout):
        self.waited += 1
        return self.result


def test_background_flush_failure_is_raised_by_sync_and_the_file_still_closes(tmp_path, monkeypatch):
    import errno

    monkeypatch.setattr(store_spool, "_aio", _FakeAio(errno.ENOSPC))
    spooled = store_spool.SpoolFile(tmp_path)
    spooled.write(b"x" * 1000)
    spooled.start_flush()
    with pytest.raises(OSError) as failed:
        spooled.sync()
    assert failed.value.errno == errno.ENOSPC
    spooled.close()
    assert spooled.fileno() == -1


def test_background_flush_that_never_ends_keeps_the_descriptor_open(tmp_path, monkeypatch):
    """A descriptor closed (and reused) under a running flush would flush another file."""
    import os

    aio = _FakeAio(None)  # still running at every look
    monkeypatch.setattr(store_spool, "_aio", aio)
    spooled = store_spool.SpoolFile(tmp_path)
    spooled.start_flush()
    with pytest.raises(OSError):
        spooled.sync()
    fd = spooled.fileno()
    spooled.close()
    assert spooled.fileno() == fd and aio.waited == 2
    os.close(fd)


def _c_store_rq_message(sop_uid: str, priority: int = 0, move_originator: str = ""):
    from io import BytesIO

    from pynetdicom.dimse_messages import C_STORE_RQ
    from pynetdicom.dimse_primitives import C_STORE
    from pynetdicom.dsutils import decode, encode

    primitive = C_STORE()
    primitive.MessageID = 4242
    primitive.AffectedSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    primitive.AffectedSOPInstanceUID = sop_uid
    primitive.Priority = priority
    if move_originator:
        primitive.MoveOriginatorApplicationEntityTitle = move_originator
        primitive.MoveOriginatorMessageID = 7
    sent = C_STORE_RQ()
    sent.primitive_to_message(primitive)
    encoded = encode(sent.command_set, True, True)
    received = C_STORE_RQ()
    received.encoded_command_set = BytesIO(encoded)
    received.command_set = decode(BytesIO(encoded), True, True)
    received.data_set = BytesIO(b"dataset")
    received.context_id = 3
    received._data_set_path = None
    received._data_set_file = None
    return received, encoded


@pytest.mark.parametrize(("sop_uid", "priority", "move_originator"), [
    ("1.2.3.4", 0, ""), ("1.2.3.45", 1, ""), ("1.2.826.0.1.3680043.8.498." + "9" * 36, 2, ""),
    ("1.2.3.4", 0, "MOVER"),  # not plain: pynetdicom's way
    ("1.2.03.4", 0, ""), ("1.2..4", 0, ""), ("1.2.3.4.", 0, ""),  # not conformant: pynetdicom's setter
])
def test_c_store_request_primitive_matches_pynetdicoms(sop_uid, priority, move_originator):
    message, encoded = _c_store_rq_message(sop_uid, priority, move_originator)
    assert (cstore._plain_c_store_rq(encoded) is None) == bool(move_originator)
    ours = cstore._message_to_primitive(message)
    theirs = cstore._original_message_to_primitive(message)
    assert type(ours) is type(theirs)
    assert vars(ours) == vars(theirs)
    assert type(ours.AffectedSOPInstanceUID) is type(theirs.AffectedSOPInstanceUID)
    assert type(ours.AffectedSOPClassUID) is type(theirs.AffectedSOPClassUID)


@pytest.mark.filterwarnings("ignore:The value length")  # pydicom's, on the way to the refusal
def test_c_store_request_with_an_overlong_uid_is_refused_as_pynetdicom_does():
    from pynetdicom.dimse_primitives import C_STORE

    overlong = "1." + "2" * 70
    with pytest.raises(ValueError):
        C_STORE().AffectedSOPInstanceUID = overlong
    with pytest.raises(ValueError):
        cstore._set_affected_uids(C_STORE(), CTImageStorage.encode(), overlong.encode())


def test_unusual_c_store_commands_are_left_to_pynetdicom():
    _, encoded = _c_store_rq_message("1.2.3.4")
    assert cstore._plain_c_store_rq(encoded[:-3]) is None  # truncated
    assert cstore._plain_c_store_rq(encoded.replace(b"1.2.3.4", b"1.2.x.4")) is None  # not a UID
    extra = b"\x00\x00\x00\x09\x02\x00\x00\x00\x00\x00"  # (0000,0900) Status: not in a request
    assert cstore._plain_c_store_rq(encoded + extra) is None


@pytest.mark.parametrize(("sop_uid", "priority", "move_originator"), [
    ("1.2.3.4", 0, ""), ("1.2.826.0.1.3680043.8.498." + "9" * 36, 2, ""), ("1.2.3.4", 0, "MOVER"),
])
def test_command_set_decoding_answers_as_pydicom_does(sop_uid, priority, move_originator):
    """decode_msg's command set: what it reads comes straight from the encoding for a plain
    C-STORE-RQ, anything else from pydicom's Dataset; the values are the same either way."""
    from io import BytesIO

    from pynetdicom.dsutils import decode

    _, encoded = _c_store_rq_message(sop_uid, priority, move_originator)
    ours, theirs = cstore._decode(BytesIO(encoded), True, True), decode(BytesIO(encoded), True, True)
    assert isinstance(ours, cstore._PlainCStoreCommand) != bool(move_originator)
    for keyword in ("CommandField", "CommandDataSetType", "AffectedSOPClassUID", "AffectedSOPInstanceUID",
                    "MessageID", "Priority", "CommandGroupLength"):
        assert getattr(ours, keyword) == getattr(theirs, keyword), keyword
    assert [e.tag for e in ours] == [e.tag for e in theirs]
    assert ours[0x00000110].value == 4242 and 0x00001000 in ours and len(ours) == len(theirs)
    message, _ = _c_store_rq_message(sop_uid, priority, move_originator)
    message.command_set = ours
    assert vars(cstore._message_to_primitive(message)) == vars(cstore._original_message_to_primitive(message))


def _store_over_one_association(port: int, files, **kwargs) -> list[int]:
    ae = AE()
    ae.add_requested_context(Verification)
    ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", port, ae_title="SCP", **kwargs)
    assert assoc.is_established
    statuses = [assoc.send_c_store(f).Status for f in files]
    if assoc.is_established:
        assert assoc.send_c_echo().Status == 0
        assoc.release()
    assoc.join(5)
    return statuses


@pytest.mark.parametrize("direct", [False, True])
def test_c_store_handler_runs_on_the_dul_thread_only_where_the_ae_allows_it(monkeypatch, tmp_path, direct):
    from pynetdicom import _config

    monkeypatch.setattr(_config, "LOG_HANDLER_LEVEL", "none")
    threads: list[str] = []

    def on_store(event):
        threads.append(threading.current_thread().name)
        return 0x0000

    server, _ = _start_scp(on_store, direct=direct)
    try:
        files = make_ct_files(tmp_path, n=3, size=64)
        assert _store_over_one_association(server.server_address[1], files) == [0, 0, 0]
    finally:
        server.shutdown()
    assert len(threads) == 3
    assert all(("_dul_run_reactor" in name) == direct for name in threads), threads


def test_failing_handler_on_the_dul_thread_answers_a_failure_status(monkeypatch, tmp_path):
    from pynetdicom import _config

    monkeypatch.setattr(_config, "LOG_HANDLER_LEVEL", "none")

    def on_store(event):
        raise RuntimeError("handler bug")

    server, _ = _start_scp(on_store, direct=True)
    try:
        files = make_ct_files(tmp_path, n=2, size=64)
        assert _store_over_one_association(server.server_address[1], files) == [0xC211, 0xC211]
    finally:
        server.shutdown()


def test_c_store_on_the_dul_thread_skips_pynetdicoms_service_machinery(monkeypatch, tmp_path):
    """The DUL thread calls the bound handler itself and encodes the answer directly."""
    from pynetdicom import _config
    from pynetdicom.association import Association
    from pynetdicom.dimse_primitives import C_STORE

    monkeypatch.setattr(_config, "LOG_HANDLER_LEVEL", "none")

    original = Association._serve_request

    def not_for_c_store(self, msg, context_id):
        assert type(msg) is not C_STORE, "pynetdicom's _serve_request served a C-STORE"
        return original(self, msg, context_id)

    monkeypatch.setattr(Association, "_serve_request", not_for_c_store)
    contexts = []

    def on_store(event):
        contexts.append((event.context.abstract_syntax, event.request.AffectedSOPInstanceUID))
        return 0xB000 if len(contexts) == 2 else 0x0000  # a warning status is answered as is

    server, _ = _start_scp(on_store, direct=True)
    try:
        files = make_ct_files(tmp_path, n=3, size=64)
        assert _store_over_one_association(server.server_address[1], files) == [0, 0xB000, 0]
    finally:
        server.shutdown()
    assert [c for c, _ in contexts] == [CTImageStorage] * 3
    assert len({uid for _, uid in contexts}) == 3


@pytest.mark.parametrize("returned", ["dataset", "unknown", "not a status"])
def test_c_store_on_the_dul_thread_validates_other_statuses_as_pynetdicom_does(monkeypatch, tmp_path, returned):
    from pydicom import Dataset
    from pynetdicom import _config

    monkeypatch.setattr(_config, "LOG_HANDLER_LEVEL", "none")

    def on_store(event):
        if returned == "dataset":
            status = Dataset()
            status.Status = 0xA700
            status.ErrorComment = "full"
            return status
        return 0xA7FF if returned == "unknown" else "yes"

    server, _ = _start_scp(on_store, direct=True)
    try:
        files = make_ct_files(tmp_path, n=1, size=64)
        expected = {"dataset": 0xA700, "unknown": 0xA7FF, "not a status": 0xC002}[returned]
        assert _store_over_one_association(server.server_address[1], files) == [expected]
    finally:
        server.shutdown()


def test_handler_aborting_on_the_dul_thread_does_not_wait_for_itself(monkeypatch, tmp_path):
    """An abort from a handler on the DUL thread must not wait for that thread to stop."""
    from pynetdicom import _config

    monkeypatch.setattr(_config, "LOG_HANDLER_LEVEL", "none")

    def on_store(event):
        event.assoc.abort()
        return 0x0000

    server, _ = _start_scp(on_store, direct=True)
    try:
        files = make_ct_files(tmp_path, n=1, size=64)
        aborted = threading.Event()
        ae = AE()
        ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
        assoc = ae.associate("127.0.0.1", server.server_address[1], ae_title="SCP",
                             evt_handlers=[(evt.EVT_ABORTED, lambda e: aborted.set())])
        assert assoc.is_established
        assoc.send_c_store(files[0])
        assert aborted.wait(5)
        assoc.join(5)
        assert not assoc.is_alive()
    finally:
        server.shutdown()


def _fake_acceptor():
    import queue
    from types import SimpleNamespace

    checkpoint = threading.Event()
    checkpoint.set()
    return SimpleNamespace(
        is_acceptor=True, is_established=True, _sent_release=False, _reactor_checkpoint=checkpoint,
        _accepted_cx={1: object()}, acceptor=SimpleNamespace(accepted_common_extended={}),
        _station_serve_lock=threading.Lock(), dimse=SimpleNamespace(msg_queue=queue.Queue()),
    )


def _c_store_request():
    from pynetdicom.dimse_primitives import C_STORE

    request = C_STORE()
    request.MessageID = 1
    request.AffectedSOPClassUID = CTImageStorage
    request.AffectedSOPInstanceUID = "1.2.3.4"
    return request


@pytest.mark.parametrize("why_not", ["paused", "serving", "queued", "response", "echo", "requestor",
                                     "unknown context", "releasing"])
def test_the_dul_thread_serves_only_a_plain_c_store_when_nothing_else_is_going_on(why_not):
    """Requests keep their order (nothing queued or being served before), a paused reactor
    belongs to whoever paused it, and only C-STORE requests on an acceptor qualify."""
    from pynetdicom.dimse_primitives import C_ECHO

    assoc, request, context_id = _fake_acceptor(), _c_store_request(), 1
    assert cstore._may_serve_directly(assoc, (context_id, request))
    assoc._station_serve_lock.release()
    if why_not == "paused":
        assoc._reactor_checkpoint.clear()
    elif why_not == "serving":
        assoc._station_serve_lock.acquire()
    elif why_not == "queued":
        assoc.dimse.msg_queue.put((1, _c_store_request()))
    elif why_not == "response":
        request.MessageIDBeingRespondedTo = 1
        request.Status = 0
    elif why_not == "echo":
        request = C_ECHO()
        request.MessageID = 1
    elif why_not == "requestor":
        assoc.is_acceptor = False
    elif why_not == "unknown context":
        context_id = 3
    elif why_not == "releasing":
        assoc._sent_release = True
    assert not cstore._may_serve_directly(assoc, (context_id, request))
    # Refusing leaves the lock as it was.
    assert assoc._station_serve_lock.locked() == (why_not == "serving")


def test_stall_timeout_on_a_plain_socket_is_the_kernels_and_still_ends_a_stalled_read():
    """Without Python's socket timeout (a poll before every read), a read that waits longer
    than the stall timeout still fails, as an OSError the DUL turns into a closed connection."""
    a, b = socket.socketpair()
    try:
        assert pdu_guard._set_stall_timeout(a, 0.2) is True
        assert a.gettimeout() is None
        b.sendall(b"\x04\x00")  # two bytes of a six-byte PDU header, then silence
        assert a.recv(2) == b"\x04\x00"
        started = time.monotonic()
        with pytest.raises(OSError):
            a.recv(4)
        assert time.monotonic() - started < 5
    finally:
        a.close()
        b.close()
