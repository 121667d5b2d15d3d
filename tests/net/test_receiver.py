"""The receiver against real dcmtk peers (storescu, echoscu) on loopback."""

from __future__ import annotations

import subprocess
import threading
import time
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file

from station.core.config import ReceiverSettings
from station.core.events import AssociationClosed, EventBus, InstanceStored, ReceiverError, ReceiverState
from station.net.dimse.receiver import Receiver, ReceiverStartError
from station.net.dimse.sender import send_files
from station.core.store import spool as store_spool
from station.net.dimse.pynetdicom_ext import cstore
from tests.dicom_factory import make_ct_files


class Recorder:
    def __init__(self) -> None:
        self.events: list[object] = []
        self.lock = threading.Lock()

    def __call__(self, event: object) -> None:
        with self.lock:
            self.events.append(event)

    def of(self, kind: type) -> list:
        with self.lock:
            return [e for e in self.events if isinstance(e, kind)]


@pytest.fixture
def running(store):
    bus = EventBus()
    recorder = Recorder()
    bus.subscribe(recorder)
    receiver = Receiver(store, bus, ReceiverSettings(aet="STATION", host="127.0.0.1", port=0))
    receiver.start()
    yield receiver, recorder
    receiver.stop()


def storescu(env, port: int, *paths: Path, aec: str = "STATION", extra: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["storescu", "-R", "+sd", *extra, "-aet", "SCANNER1", "-aec", aec, "127.0.0.1", str(port), *map(str, paths)],
        capture_output=True, text=True, env=env, timeout=60,
    )


def test_echo(running, dcmtk_env):
    receiver, _ = running
    out = subprocess.run(["echoscu", "-aec", "STATION", "127.0.0.1", str(receiver.port)],
                         capture_output=True, text=True, env=dcmtk_env, timeout=30)
    assert out.returncode == 0, out.stderr


def test_storescu_series_is_stored_indexed_and_published(running, store, tmp_path, dcmtk_env):
    receiver, recorder = running
    files = make_ct_files(tmp_path / "scan", n=12, size=32, patient_id="BAG-777")
    out = storescu(dcmtk_env, receiver.port, tmp_path / "scan")
    assert out.returncode == 0, out.stderr
    (row,) = store.series_list()
    assert row.instances == 12
    assert row.patient_id == "BAG-777"
    stored = recorder.of(InstanceStored)
    assert len(stored) == 12
    assert all(e.source.startswith("SCANNER1@127.0.0.1:") for e in stored)
    # Every acknowledged instance is on disk byte for byte as sent (dataset part).
    by_uid = {pydicom.dcmread(f).SOPInstanceUID: f for f in files}
    for event in stored:
        original = pydicom.dcmread(by_uid[event.sop_instance_uid])
        kept = pydicom.dcmread(event.path)
        assert kept.PixelData == original.PixelData
        assert kept.file_meta.SourceApplicationEntityTitle.strip() == "SCANNER1"
    assert receiver.instances_received == 12
    assert recorder.of(AssociationClosed)[-1].how == "released"
    assert receiver.open_associations == 0
    # The spool file prepared for a 13th instance that never came is gone with the association.
    deadline = time.monotonic() + 5
    while list(store.tmp_dir.iterdir()) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert list(store.tmp_dir.iterdir()) == []


@pytest.mark.parametrize(("name", "propose"), [
    ("CT_small.dcm", ()),
    ("MR_small.dcm", ()),
    ("MR_small_RLE.dcm", ("-xr",)),  # storescu proposes a compressed syntax only when told
    ("JPEG2000.dcm", ("-xw",)),
    ("SC_rgb_jpeg_gdcm.dcm", ("-xs",)),
])
def test_files_other_toolkits_write_are_received(running, store, dcmtk_env, name, propose):
    receiver, _ = running
    source = Path(get_testdata_file(name))
    out = storescu(dcmtk_env, receiver.port, source, extra=propose)
    assert out.returncode == 0, out.stderr
    assert store.count_instances() == 1
    (row,) = store.series_list()
    kept = store.instances(row.series_uid)[0]
    original = pydicom.dcmread(source)
    assert kept.transfer_syntax == original.file_meta.TransferSyntaxUID
    assert pydicom.dcmread(kept.path).PixelData == original.PixelData


def test_dicos_ct_is_accepted(running, store, tmp_path, dcmtk_env):
    receiver, _ = running
    (f,) = make_ct_files(tmp_path / "dicos", n=1, sop_class="1.2.840.10008.5.1.4.1.1.501.1")
    out = storescu(dcmtk_env, receiver.port, f)
    assert out.returncode == 0, out.stderr
    assert store.series_list()[0].sop_class_uid == "1.2.840.10008.5.1.4.1.1.501.1"


def test_unknown_vendor_storage_class_is_accepted(running, store, tmp_path):
    # storescu refuses SOP classes it does not know, so the station's own sender plays
    # the vendor scanner here.
    receiver, _ = running
    files = make_ct_files(tmp_path / "v", n=2, sop_class="1.2.840.10008.5.1.4.1.1.501.7.1")
    result = send_files("127.0.0.1", receiver.port, files, called_aet="STATION")
    assert result.ok, result.failed
    assert store.count_instances() == 2


def test_unparseable_instance_gets_failure_status_not_success(running, store, tmp_path):
    receiver, recorder = running
    ds = pydicom.dcmread(make_ct_files(tmp_path / "b", n=1)[0])
    del ds.StudyInstanceUID
    bad = tmp_path / "bad.dcm"
    ds.save_as(bad, enforce_file_format=True)
    result = send_files("127.0.0.1", receiver.port, [bad], called_aet="STATION")
    assert not result.ok
    assert "0xC000" in result.failed[0][1]
    assert store.count_instances() == 0
    (error,) = recorder.of(ReceiverError)
    assert error.status == 0xC000
    assert error.peer.startswith("127.0.0.1:")
    assert "StudyInstanceUID" in error.message


def test_port_in_use_is_a_clear_error(store, running):
    receiver, _ = running
    bus = EventBus()
    second = Receiver(store, bus, ReceiverSettings(host="127.0.0.1", port=receiver.port))
    states: list[ReceiverState] = []
    bus.subscribe(lambda e: states.append(e) if isinstance(e, ReceiverState) else None)
    with pytest.raises(ReceiverStartError, match=str(receiver.port)):
        second.start()
    assert states and not states[-1].listening


def test_concurrent_scanners(running, store, tmp_path, dcmtk_env):
    receiver, recorder = running
    for k in range(4):
        make_ct_files(tmp_path / f"scan{k}", n=15, size=32, patient_id=f"BAG-{k}")
    procs = [
        subprocess.Popen(["storescu", "-R", "+sd", "-aec", "STATION", "127.0.0.1", str(receiver.port),
                          str(tmp_path / f"scan{k}")], env=dcmtk_env,
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        for k in range(4)
    ]
    for p in procs:
        _, err = p.communicate(timeout=60)
        assert p.returncode == 0, err
    assert store.count_instances() == 60
    assert sorted(r.instances for r in store.series_list()) == [15, 15, 15, 15]
    assert len(recorder.of(InstanceStored)) == 60


def _send_three_and_check(running, store, tmp_path) -> None:
    receiver, _ = running
    files = make_ct_files(tmp_path / "scan", n=3, size=64)
    result = send_files("127.0.0.1", receiver.port, files, called_aet="STATION")
    assert result.ok
    assert store.count_instances() == 3


class _ObservedAio:
    """store_spool._aio, reporting each flush it has seen finish (or failing every flush)."""

    def __init__(self, real, on_done=None, fail_with: int = 0) -> None:
        self.real, self.on_done, self.fail_with = real, on_done, fail_with

    def start(self, fd):
        return self.real.start(fd) if self.real is not None else object()

    def wait(self, cb, timeout):
        err = self.real.wait(cb, timeout) if self.real is not None else 0
        if self.on_done is not None:
            self.on_done()
        return self.fail_with or err


def test_each_instance_is_durable_renamed_synced_and_indexed_before_its_answer(running, store, tmp_path,
                                                                             monkeypatch):
    """The durability order, per instance: the spool file's data on disk, then the rename,
    then the directory fsync, then the index commit, then the success response. A plain
    C-STORE is served on the association's DUL thread (no hand-over), so all of it is there."""
    from station.core.store import store as store_module
    from station.core.store.store import Store

    steps: list[tuple[str, str]] = []
    lock = threading.Lock()

    def step(name: str) -> None:
        with lock:
            steps.append((name, threading.current_thread().name))

    fdatasync, replace, fsync_dir = store_spool._fdatasync, store_module.os.replace, store_module._fsync_dir
    commit_index, send = Store._commit_index, cstore._send_pdata_directly
    monkeypatch.setattr(store_spool, "_fdatasync", lambda fd: (fdatasync(fd), step("data flushed")))
    if store_spool._aio is not None:  # the flush started in the background: done once its wait returns
        monkeypatch.setattr(store_spool, "_aio", _ObservedAio(store_spool._aio, lambda: step("data flushed")))
    monkeypatch.setattr(store_module.os, "replace", lambda a, b: (replace(a, b), step("renamed")))
    monkeypatch.setattr(store_module, "_fsync_dir", lambda d: (fsync_dir(d), step("directory synced")))

    def recording_index(self, *args, **kwargs):
        commit_index(self, *args, **kwargs)
        step("indexed")

    def recording_send(dul, context_id, value):
        step("answered")
        return send(dul, context_id, value)

    monkeypatch.setattr(Store, "_commit_index", recording_index)
    monkeypatch.setattr(cstore, "_send_pdata_directly", recording_send)
    _send_three_and_check(running, store, tmp_path)
    per_instance: list[list[str]] = [[]]
    for name, thread in steps:
        assert "_dul_run_reactor" in thread, (name, thread)
        per_instance[-1].append(name)
        if name == "answered":
            per_instance.append([])
    assert per_instance[-1] == [] and len(per_instance) == 4
    for n, names in enumerate(per_instance[:-1]):
        if n == 0:  # the first instance also syncs the directories it creates, before all that
            while names[0] == "directory synced":
                names = names[1:]
        assert names == ["data flushed", "renamed", "directory synced", "indexed", "answered"], names


def test_a_queued_instance_is_flushed_on_the_dul_thread_before_the_rename(running, store, tmp_path, monkeypatch):
    """When the association thread serves a C-STORE (the DUL thread may not: it is busy or
    paused), the DUL thread flushes the complete spool file while the association thread
    wakes up and reads its header; the store's adopt (the rename) ends only after that."""
    from station.core.store.store import Store

    order: list[tuple[str, str, str]] = []
    finish, adopt = store_spool.SpoolFile.finish, Store.adopt

    def recording_finish(self):
        finish(self)
        order.append(("flushed", Path(self.name).name, threading.current_thread().name))

    def recording_adopt(self, spooled, **kwargs):
        event = adopt(self, spooled, **kwargs)
        order.append(("adopted", Path(spooled).name, threading.current_thread().name))
        return event

    monkeypatch.setattr(cstore, "_may_serve_directly", lambda assoc, item: False)
    monkeypatch.setattr(store_spool.SpoolFile, "finish", recording_finish)
    monkeypatch.setattr(Store, "adopt", recording_adopt)
    _send_three_and_check(running, store, tmp_path)
    flushed = {name: (k, thread) for k, (what, name, thread) in enumerate(order) if what == "flushed"}
    adopted = {name: (k, thread) for k, (what, name, thread) in enumerate(order) if what == "adopted"}
    assert len(adopted) == 3 and set(adopted) <= set(flushed)
    for name, (k, thread) in adopted.items():
        assert flushed[name][0] < k
        assert flushed[name][1] != thread


@pytest.mark.parametrize("failing", ["data flush", "rename", "directory fsync"])
def test_a_failing_durable_step_answers_out_of_resources_and_keeps_nothing(running, store, tmp_path, monkeypatch,
                                                                          failing):
    """On the DUL thread's direct path as everywhere: a step of the durable write that
    fails (here a full disk) gets 0xA700, never success, and leaves no file, row or spool."""
    import errno

    from pynetdicom import AE
    from pynetdicom.sop_class import CTImageStorage

    from station.core.store import store as store_module

    def disk_full(*args):
        raise OSError(errno.ENOSPC, "No space left on device")

    target = {"data flush": (store_spool, "_fdatasync"), "rename": (store_module.os, "replace"),
              "directory fsync": (store_module, "_fsync_dir")}[failing]
    receiver, recorder = running
    files = make_ct_files(tmp_path / "scan", n=2, size=64)
    ae = AE(ae_title="SCANNER1")
    ae.add_requested_context(CTImageStorage, "1.2.840.10008.1.2.1")
    assoc = ae.associate("127.0.0.1", receiver.port, ae_title="STATION")
    assert assoc.is_established
    with monkeypatch.context() as patch:
        patch.setattr(*target, disk_full)
        if failing == "data flush":  # whichever way the spool file is flushed
            patch.setattr(store_spool, "_aio", _ObservedAio(store_spool._aio, fail_with=errno.ENOSPC))
        statuses = [assoc.send_c_store(f).Status for f in files]
    assoc.release()
    assert statuses == [0xA700, 0xA700]
    assert store.count_instances() == 0 and store.series_list() == []
    assert list(store.objects_dir.rglob("*.dcm")) == []
    deadline = time.monotonic() + 5
    while list(store.tmp_dir.iterdir()) and time.monotonic() < deadline:  # the unused next spool file
        time.sleep(0.02)
    assert list(store.tmp_dir.iterdir()) == []
    assert [e.status for e in recorder.of(ReceiverError)] == [0xA700, 0xA700]
