"""The GUI's receiver as a child process: events relayed, clean stops, no orphans."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from station.core.config import ReceiverSettings
from station.core.events import EventBus, InstanceStored, ReceiverState
from station.core.priority import RECEIVER_NICE
from station.net.dimse.receiver import ReceiverStartError
from station.app.receiver_process import ReceiverProcess
from tests.dicom_factory import make_ct_files


class Collect:
    def __init__(self) -> None:
        self.events: list = []
        self.lock = threading.Lock()

    def __call__(self, event) -> None:
        with self.lock:
            self.events.append(event)

    def of(self, kind):
        with self.lock:
            return [e for e in self.events if isinstance(e, kind)]


def wait_for(predicate, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


def test_events_from_the_child_reach_the_parents_bus(tmp_path, dcmtk_env):
    bus = EventBus()
    seen = Collect()
    bus.subscribe(seen)
    rx = ReceiverProcess(tmp_path / "store", bus, ReceiverSettings(aet="STATION", host="127.0.0.1", port=0))
    rx.start()
    try:
        assert rx.is_running and rx.port > 0
        assert rx.pid != os.getpid()
        files = make_ct_files(tmp_path / "scan", n=5, patient_id="BAG-5")
        out = subprocess.run(["storescu", "-R", "-aec", "STATION", "127.0.0.1", str(rx.port), *map(str, files)],
                             env=dcmtk_env, capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        assert wait_for(lambda: len(seen.of(InstanceStored)) == 5)
        assert {e.patient_id for e in seen.of(InstanceStored)} == {"BAG-5"}
        assert rx.instances_received == 5
        assert wait_for(lambda: rx.open_associations == 0)
        # Every thread of the child yields the CPU to the GUI (Linux nice is per thread).
        wanted = min(19, os.getpriority(os.PRIO_PROCESS, 0) + RECEIVER_NICE)
        tids = [int(t) for t in os.listdir(f"/proc/{rx.pid}/task")]
        assert {os.getpriority(os.PRIO_PROCESS, t) for t in tids} == {wanted}
    finally:
        rx.stop()
    assert not rx.is_running
    assert seen.of(ReceiverState)[-1].listening is False


def test_a_busy_port_is_a_start_error_naming_it(tmp_path):
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        port = blocker.getsockname()[1]
        rx = ReceiverProcess(tmp_path / "store", EventBus(), ReceiverSettings(host="127.0.0.1", port=port))
        with pytest.raises(ReceiverStartError, match=f"127.0.0.1:{port}"):
            rx.start()
        rx.stop()


def test_a_dead_child_is_reported(tmp_path):
    bus = EventBus()
    seen = Collect()
    bus.subscribe(seen)
    rx = ReceiverProcess(tmp_path / "store", bus, ReceiverSettings(host="127.0.0.1", port=0))
    rx.start()
    try:
        os.kill(rx.pid, signal.SIGKILL)
        assert wait_for(lambda: not seen.of(ReceiverState)[-1].listening)
        assert "exited" in seen.of(ReceiverState)[-1].message
        assert not rx.is_running
    finally:
        rx.stop()


def test_the_child_stops_when_its_parent_dies(tmp_path):
    parent = textwrap.dedent(f"""
        import os, sys
        sys.path.insert(0, {os.getcwd()!r})
        from station.core.config import ReceiverSettings
        from station.core.events import EventBus
        from station.app.receiver_process import ReceiverProcess
        rx = ReceiverProcess({str(tmp_path / "store")!r}, EventBus(), ReceiverSettings(host="127.0.0.1", port=0))
        rx.start()
        print(rx.pid, flush=True)
        os._exit(0)  # a crash: no stop(), no cleanup
    """)
    out = subprocess.run([sys.executable, "-c", parent], capture_output=True, text=True, timeout=60)
    child = int(out.stdout.strip())

    def gone() -> bool:
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            return True
        # A zombie (exited, waiting for init to reap it) counts as gone.
        with open(f"/proc/{child}/stat") as f:
            return f.read().split()[2] == "Z"

    assert wait_for(gone, timeout=15), "receiver process outlived its parent"
