"""Another pynetdicom than the one the station's changes are verified against is fatal:
the receiver (``station serve``, the GUI's receiver child) refuses to start, naming both
versions, instead of serving without the PDU-length and stall protections."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pynetdicom
import pytest

from station.app.receiver_process import ReceiverProcess
from station.core.config import ReceiverSettings
from station.core.events import EventBus, ReceiverState
from station.net.dimse.pynetdicom_ext import reactor
from station.net.dimse.receiver import Receiver, ReceiverStartError
from station.net.dimse.sender import SendError, send_files
from tests.dicom_factory import make_ct_files

OTHER = "3.0.3"


def _names_both_versions(message: str) -> bool:
    return f"pynetdicom {OTHER} is installed" in message and f"pynetdicom=={reactor.SUPPORTED_PYNETDICOM}" in message


@pytest.fixture
def other_pynetdicom_in_children(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Child processes (station serve, the GUI's receiver child) see pynetdicom OTHER."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(f"import pynetdicom\npynetdicom.__version__ = {OTHER!r}\n")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")])))
    return dict(os.environ)


def test_the_receiver_and_the_sender_refuse_another_pynetdicom(store, tmp_path, monkeypatch):
    reactor.install()  # already patched in this process: the check must still run
    monkeypatch.setattr(pynetdicom, "__version__", OTHER)
    bus = EventBus()
    states: list[ReceiverState] = []
    bus.subscribe(lambda e: states.append(e) if isinstance(e, ReceiverState) else None)
    receiver = Receiver(store, bus, ReceiverSettings(host="127.0.0.1", port=0))
    with pytest.raises(ReceiverStartError) as info:
        receiver.start()
    assert _names_both_versions(str(info.value))
    assert [s.listening for s in states] == [False] and _names_both_versions(states[0].message)
    assert receiver._server is None  # nothing listens
    with pytest.raises(SendError) as sent:
        send_files("127.0.0.1", 9, make_ct_files(tmp_path / "ct", n=1))
    assert _names_both_versions(str(sent.value))
    monkeypatch.undo()
    reactor.check_version()  # the pinned version passes


def test_station_serve_refuses_to_start_naming_both_versions(tmp_path, free_port, other_pynetdicom_in_children):
    out = subprocess.run([sys.executable, "-m", "station", "serve", "--store", str(tmp_path / "store"),
                          "--host", "127.0.0.1", "--port", str(free_port)],
                         env=other_pynetdicom_in_children, capture_output=True, text=True, timeout=120,
                         stdin=subprocess.DEVNULL)
    assert out.returncode == 2, out.stdout + out.stderr
    assert "station serve: " in out.stderr and _names_both_versions(out.stderr)
    assert "listening" not in out.stdout


def test_the_guis_receiver_child_refuses_to_start_naming_both_versions(tmp_path, other_pynetdicom_in_children):
    rx = ReceiverProcess(tmp_path / "store", EventBus(), ReceiverSettings(host="127.0.0.1", port=0))
    try:
        with pytest.raises(ReceiverStartError) as info:
            rx.start()
    finally:
        rx.stop()
    assert _names_both_versions(str(info.value))
