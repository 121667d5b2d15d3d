"""Hostile or broken peers cannot stop the receiver or hold its slots (issue 9)."""

from __future__ import annotations

import logging
import socket
import subprocess
import time

import pytest
from pynetdicom import AE
from pynetdicom.sop_class import Verification

from station.core.config import ReceiverSettings
from station.core.events import AssociationClosed, EventBus, ReceiverError
from station.net.dimse.receiver import Receiver
from tests.dicom_factory import make_ct_files


@pytest.fixture
def make_receiver(store):
    started: list[Receiver] = []

    def make(**overrides) -> tuple[Receiver, list]:
        bus = EventBus()
        events: list = []
        bus.subscribe(events.append)
        settings = ReceiverSettings(aet="STATION", host="127.0.0.1", port=0, acse_timeout=1.0,
                                    network_timeout=5.0, **overrides)
        receiver = Receiver(store, bus, settings)
        receiver.start()
        started.append(receiver)
        return receiver, events

    yield make
    for r in started:
        r.stop()


def wait_closed(sock: socket.socket, limit: float) -> float | None:
    """Seconds until the server closed `sock`, or None if it stayed open past `limit`."""
    sock.settimeout(0.1)
    start = time.monotonic()
    while time.monotonic() - start < limit:
        try:
            if sock.recv(65536) == b"":
                return time.monotonic() - start
        except socket.timeout:
            continue
        except OSError:
            return time.monotonic() - start
    return None


def echo(port: int, env) -> int:
    return subprocess.run(["echoscu", "-aec", "STATION", "127.0.0.1", str(port)], env=env,
                          capture_output=True, timeout=30).returncode


HOSTILE = {
    "random bytes": bytes(range(256)) * 8,
    "silent": b"",
    "truncated association request": b"\x01\x00\x00\x00\x03\xe8" + b"\x00" * 10,
    "absurd length field": b"\x01\x00\xff\xff\xff\xff" + b"\x00" * 10,
    "data before association": b"\x04\x00\x00\x00\x00\x06\x00\x00\x00\x02\x01\x03",
    "release out of order": b"\x05\x00\x00\x00\x00\x04\x00\x00\x00\x00",
}


@pytest.mark.parametrize("name", list(HOSTILE))
def test_hostile_connection_is_dropped_within_seconds_and_service_goes_on(make_receiver, dcmtk_env, name, caplog):
    receiver, events = make_receiver()
    caplog.set_level(logging.ERROR)
    with socket.create_connection(("127.0.0.1", receiver.port)) as sock:
        if HOSTILE[name]:
            sock.sendall(HOSTILE[name])
        closed_after = wait_closed(sock, 10.0)
    assert closed_after is not None and closed_after < 4.0, f"{name}: slot held {closed_after}"
    deadline = time.monotonic() + 5
    while receiver.open_associations and time.monotonic() < deadline:
        time.sleep(0.05)
    assert receiver.open_associations == 0
    assert any(isinstance(e, AssociationClosed) for e in events)
    assert echo(receiver.port, dcmtk_env) == 0  # a real scanner is still served


def test_errors_name_the_peer(make_receiver, caplog):
    receiver, _ = make_receiver()
    caplog.set_level(logging.ERROR, logger="station")
    with socket.create_connection(("127.0.0.1", receiver.port)) as sock:
        sock.sendall(b"\x01\x00\xff\xff\xff\xff")
        local_port = sock.getsockname()[1]
        wait_closed(sock, 5)
    assert f"from 127.0.0.1:{local_port}" in caplog.text
    assert "4294967295 bytes" in caplog.text


def test_oversized_pdata_after_association_is_aborted_not_buffered(make_receiver, caplog):
    receiver, _ = make_receiver(max_pdu=65536)
    ae = AE(ae_title="EVIL")
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", receiver.port, ae_title="STATION")
    assert assoc.is_established
    caplog.set_level(logging.ERROR, logger="station")
    # Announce a 2 GB P-DATA-TF: the receiver must refuse it, not try to read it.
    assoc.dul.socket.socket.sendall(b"\x04\x00\x7f\xff\xff\xff" + b"\x00" * 64)
    deadline = time.monotonic() + 5
    while assoc.is_established and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not assoc.is_established
    assert "refusing PDU type 0x04 of 2147483647 bytes (limit 65536)" in caplog.text
    assoc.abort()
    assoc.join(5)


def test_only_allowed_calling_ae_titles_may_send(make_receiver, store, tmp_path, dcmtk_env):
    receiver, events = make_receiver(allowed_calling_aets=["CT_LANE1"])
    files = make_ct_files(tmp_path, n=2)

    def send(aet: str) -> subprocess.CompletedProcess:
        return subprocess.run(["storescu", "-R", "-aet", aet, "-aec", "STATION", "127.0.0.1", str(receiver.port),
                               *map(str, files)], env=dcmtk_env, capture_output=True, text=True, timeout=30)

    refused = send("INTRUDER")
    assert refused.returncode != 0
    assert "rejected" in refused.stderr.lower()
    assert store.count_instances() == 0
    # The rejection reaches storescu from the DUL thread while the association thread
    # is still publishing the error: wait for it rather than race it.
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and not any(
            isinstance(e, ReceiverError) and "INTRUDER" in e.calling_aet for e in events):
        time.sleep(0.02)
    assert any(isinstance(e, ReceiverError) and "INTRUDER" in e.calling_aet for e in events)
    accepted = send("CT_LANE1")
    assert accepted.returncode == 0, accepted.stderr
    assert store.count_instances() == 2


def test_one_peer_cannot_take_every_slot(make_receiver):
    receiver, _ = make_receiver(max_associations_per_peer=2)
    held = []
    try:
        for _ in range(2):
            ae = AE(ae_title="GREEDY")
            ae.add_requested_context(Verification)
            assoc = ae.associate("127.0.0.1", receiver.port, ae_title="STATION")
            assert assoc.is_established
            held.append(assoc)
        ae = AE(ae_title="GREEDY")
        ae.add_requested_context(Verification)
        third = ae.associate("127.0.0.1", receiver.port, ae_title="STATION")
        assert third.is_rejected
        held[0].release()
        time.sleep(0.3)
        fourth = ae.associate("127.0.0.1", receiver.port, ae_title="STATION")
        assert fourth.is_established
        held.append(fourth)
    finally:
        for assoc in held:
            if assoc.is_established:
                assoc.release()


def test_tls_with_client_certificates(make_receiver, store, tmp_path, dcmtk_env, pki):
    receiver, _ = make_receiver(tls_cert=str(pki / "server.crt"), tls_key=str(pki / "server.key"),
                                tls_ca=str(pki / "ca.crt"))
    files = make_ct_files(tmp_path, n=2)

    def send(*tls: str) -> subprocess.CompletedProcess:
        return subprocess.run(["storescu", "-R", *tls, "-aec", "STATION", "127.0.0.1", str(receiver.port),
                               *map(str, files)], env=dcmtk_env, capture_output=True, text=True, timeout=30)

    assert send().returncode != 0  # plain DICOM to a TLS port
    assert send("+tla", "+cf", str(pki / "ca.crt")).returncode != 0  # no client certificate
    ok = send("+tls", str(pki / "client.key"), str(pki / "client.crt"), "+cf", str(pki / "ca.crt"))
    assert ok.returncode == 0, ok.stderr
    assert store.count_instances() == 2
    assert receiver.tls


def test_a_connection_flood_from_one_address_does_not_lock_out_scanners(make_receiver, store, tmp_path, dcmtk_env):
    """Forty silent connections from 127.0.0.2: all but a few are closed at once, and a
    scanner on 127.0.0.1 is served meanwhile."""
    receiver, _ = make_receiver(max_associations_per_peer=3, max_associations=12)
    flood = []
    try:
        for _ in range(40):
            s = socket.socket()
            s.bind(("127.0.0.2", 0))
            s.connect(("127.0.0.1", receiver.port))
            flood.append(s)
        closed = sum(1 for s in flood if wait_closed(s, 0.5) is not None)
        assert closed >= 40 - 2 * 3
        files = make_ct_files(tmp_path, n=3)
        out = subprocess.run(["storescu", "-R", "-aec", "STATION", "127.0.0.1", str(receiver.port), *map(str, files)],
                             env=dcmtk_env, capture_output=True, text=True, timeout=30)
        assert out.returncode == 0, out.stderr
        assert store.count_instances() == 3
    finally:
        for s in flood:
            s.close()
    deadline = time.monotonic() + 10
    while receiver.open_associations and time.monotonic() < deadline:
        time.sleep(0.05)
    assert receiver.open_associations == 0
