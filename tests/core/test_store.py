"""The store's durability, naming and index rules."""

from __future__ import annotations

import io
import os
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import pydicom
import pytest
from pydicom.config import disable_value_validation
from pydicom.data import get_testdata_file

from station.core.store.store import InvalidInstanceError, Store, StoreError, StoreFullError, uid_token
from tests.dicom_factory import make_ct_files


def test_ingest_writes_the_bytes_it_was_given_and_indexes_them(store, tmp_path):
    files = make_ct_files(tmp_path / "in", n=3, patient_id="BAG-42")
    raws = [f.read_bytes() for f in files]
    events = [store.ingest([raw[:300], memoryview(raw)[300:]], source="CT1@10.0.0.1:1234") for raw in raws]
    for raw, event in zip(raws, events):
        assert Path(event.path).read_bytes() == raw
        assert event.patient_id == "BAG-42"
        assert event.modality == "CT"
        assert event.source == "CT1@10.0.0.1:1234"
    rows = store.series_list()
    assert len(rows) == 1
    assert rows[0].instances == 3
    assert rows[0].bytes == sum(len(r) for r in raws)
    assert [i.instance_number for i in store.instances(rows[0].series_uid)] == [1, 2, 3]
    assert list(store.tmp_dir.iterdir()) == []


def test_file_names_never_come_from_peer_text(store, tmp_path):
    hostile = ["../../../../etc/passwd", "/absolute/path", "1.2.3\x00evil", "9" * 300]
    for k, uid in enumerate(hostile):
        ds = pydicom.dcmread(make_ct_files(tmp_path / f"h{k}", n=1)[0])
        with disable_value_validation():  # a hostile peer does not validate either
            ds.StudyInstanceUID = uid
            ds.SeriesInstanceUID = uid + ".1"
            ds.SOPInstanceUID = uid + ".2"
            ds.file_meta.MediaStorageSOPInstanceUID = uid + ".2"
            buf = io.BytesIO()
            ds.save_as(buf, enforce_file_format=True)
        event = store.ingest([buf.getvalue()])
        path = Path(event.path)
        assert path.is_relative_to(store.objects_dir)
        assert path.name == uid_token(uid + ".2") + ".dcm"
        assert all(part.isalnum() or part.endswith(".dcm") for part in path.relative_to(store.objects_dir).parts)
    assert store.count_instances() == len(hostile)


def test_same_instance_twice_replaces_it_and_keeps_counts(store, tmp_path):
    f = make_ct_files(tmp_path / "a", n=1)[0]
    store.ingest([f.read_bytes()])
    store.ingest([f.read_bytes()])
    (row,) = store.series_list()
    assert row.instances == 1
    assert row.bytes == f.stat().st_size
    assert store.count_instances() == 1


def test_garbage_is_refused_and_leaves_nothing(store):
    with pytest.raises(InvalidInstanceError):
        store.ingest([b"\x00" * 128 + b"DICM" + b"garbage" * 50])
    with pytest.raises(InvalidInstanceError):
        store.ingest([b"not dicom at all"])
    assert store.count_instances() == 0
    assert list(store.tmp_dir.iterdir()) == []
    assert list(store.objects_dir.rglob("*.dcm")) == []


def test_missing_uids_are_refused(store, tmp_path):
    ds = pydicom.dcmread(make_ct_files(tmp_path, n=1)[0])
    del ds.SeriesInstanceUID
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    with pytest.raises(InvalidInstanceError, match="SeriesInstanceUID"):
        store.ingest([buf.getvalue()])


def test_stale_temp_files_from_a_crash_are_removed_on_open(tmp_path):
    with Store(tmp_path / "s") as s:
        (s.tmp_dir / "dead.part").write_bytes(b"half a file")
    with Store(tmp_path / "s") as s:
        assert list(s.tmp_dir.iterdir()) == []


def test_unclean_stop_is_reconciled_from_the_files(tmp_path):
    files = make_ct_files(tmp_path / "in", n=4)
    s = Store(tmp_path / "s")
    for f in files:
        s.ingest([f.read_bytes()])
    # Simulate a power loss that lost the last index commits but not the fsynced files,
    # and one row whose file vanished.
    s._writer.execute("DELETE FROM instances WHERE instance_number IN (3, 4)")
    victim = s.instances(s.series_list()[0].series_uid)[0].path
    s._connections.clear()  # no close(): the dirty marker stays, as after a crash
    victim.unlink()
    s2 = Store(tmp_path / "s")
    try:
        numbers = sorted(i.instance_number for i in s2.instances(s2.series_list()[0].series_uid))
        assert numbers == [2, 3, 4]
    finally:
        s2.close()


def test_lost_index_is_rebuilt_from_files(tmp_path):
    files = make_ct_files(tmp_path / "in", n=5)
    with Store(tmp_path / "s") as s:
        for f in files:
            s.ingest([f.read_bytes()])
    for p in (tmp_path / "s").glob("index.sqlite3*"):
        p.unlink()
    with Store(tmp_path / "s") as s:
        assert s.count_instances() == 5
        assert s.series_list()[0].instances == 5


def test_corrupt_index_is_set_aside_and_rebuilt(tmp_path):
    files = make_ct_files(tmp_path / "in", n=2)
    with Store(tmp_path / "s") as s:
        for f in files:
            s.ingest([f.read_bytes()])
    for p in (tmp_path / "s").glob("index.sqlite3-*"):
        p.unlink()
    (tmp_path / "s" / "index.sqlite3").write_bytes(b"this is not a database" * 100)
    with Store(tmp_path / "s") as s:
        assert s.count_instances() == 2
    assert list((tmp_path / "s").glob("index.sqlite3.corrupt-*"))


def test_import_keeps_going_past_bad_files_and_names_them(store, tmp_path):
    folder = tmp_path / "mixed"
    make_ct_files(folder, n=3)
    (folder / "notes.txt").write_text("not an image")
    (folder / "truncated.dcm").write_bytes(make_ct_files(tmp_path / "t", n=1)[0].read_bytes()[:200])
    result = store.import_paths([folder])
    assert len(result.stored) == 3
    # notes.txt is not DICOM at all: ignored; the truncated Part 10 file is an error
    assert result.ignored == [folder / "notes.txt"]
    assert len(result.errors) == 1
    assert "truncated.dcm" in result.errors[0]


@pytest.mark.parametrize("name", ["CT_small.dcm", "MR_small_RLE.dcm", "JPEG2000.dcm", "rtplan.dcm"])
def test_files_written_by_other_toolkits_import(store, name):
    event = store.import_file(get_testdata_file(name))
    assert Path(event.path).read_bytes() == Path(get_testdata_file(name)).read_bytes()


def test_bare_dataset_without_file_meta_gets_one(store, tmp_path):
    part10 = make_ct_files(tmp_path / "p10", n=1)[0].read_bytes()
    ds = pydicom.dcmread(io.BytesIO(part10))
    meta_length = int.from_bytes(part10[140:144], "little")  # (0002,0000) group length
    bare = tmp_path / "bare.dcm"
    bare.write_bytes(part10[144 + meta_length:])  # the dataset alone, explicit VR LE
    raw = bare.read_bytes()
    assert raw[128:132] != b"DICM"
    event = store.import_file(bare)
    assert pydicom.dcmread(event.path).SOPInstanceUID == ds.SOPInstanceUID


def test_full_disk_raises_store_full_and_keeps_nothing(tmp_path):
    """A real kernel limit (RLIMIT_FSIZE, EFBIG) stands in for a full disk or quota."""
    big = make_ct_files(tmp_path / "in", n=1, size=256)[0]
    small = make_ct_files(tmp_path / "in2", n=1, size=8)[0]
    script = f"""
import resource, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
from station.core.store.store import Store, StoreFullError
s = Store({str(tmp_path / 's')!r})
s.ingest([open({str(small)!r}, 'rb').read()])
resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, 64 * 1024))
try:
    s.ingest([open({str(big)!r}, 'rb').read()])
except StoreFullError as exc:
    print('FULL', exc)
print('COUNT', s.count_instances())
import os
print('TMP', len(os.listdir(s.tmp_dir)))
s.close()
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=os.getcwd())
    assert out.returncode == 0, out.stderr
    assert "FULL" in out.stdout and "is full" in out.stdout
    assert "COUNT 1" in out.stdout
    assert "TMP 0" in out.stdout


def test_closed_store_refuses_writes(tmp_path):
    s = Store(tmp_path / "s")
    s.close()
    with pytest.raises(StoreError):
        s.ingest([b""])


def test_index_uses_wal(store):
    mode = sqlite3.connect(store.index_path).execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"


def _spool(store: Store, name: str, raw: bytes) -> Path:
    spooled = store.spool_dir() / name
    spooled.write_bytes(raw)
    return spooled


def test_adopt_reads_the_header_from_the_head_it_is_given(store, tmp_path, monkeypatch):
    """A receiver that saw the file's first bytes pass hands them over: the same instance
    is indexed without the file being opened again."""
    import builtins

    from station.core.store.store import HEADER_SCAN_BYTES

    a, b = make_ct_files(tmp_path, n=2)
    by_path = store.adopt(_spool(store, "a.part", a.read_bytes()))
    raw = b.read_bytes()
    spooled = _spool(store, "b.part", raw)
    opened: list[str] = []
    real_open = builtins.open
    monkeypatch.setattr(builtins, "open", lambda f, *a, **k: (opened.append(str(f)), real_open(f, *a, **k))[1])
    synced: list[bool] = []
    by_head = store.adopt(spooled, sync=lambda: synced.append(True), head=raw[:HEADER_SCAN_BYTES], size=len(raw))
    assert str(spooled) not in opened and synced == [True]
    assert by_head.nbytes == len(raw) and Path(by_head.path).read_bytes() == raw
    assert (by_head.series_uid, by_head.modality, by_head.number_of_frames) == (
        by_path.series_uid, by_path.modality, by_path.number_of_frames)
    (row,) = store.series_list()
    assert row.instances == 2 and row.bytes == a.stat().st_size + len(raw)


def test_adopt_with_a_head_the_scan_cannot_read_reads_the_file(store, tmp_path):
    raw = make_ct_files(tmp_path, n=1)[0].read_bytes()
    spooled = _spool(store, "c.part", raw)
    event = store.adopt(spooled, sync=lambda: None, head=b"\x00" * 16, size=len(raw))
    assert event.nbytes == len(raw) and store.count_instances() == 1


def test_adopt_refuses_a_head_without_uids_and_keeps_nothing(store, tmp_path):
    from station.core.store.store import HEADER_SCAN_BYTES

    ds = pydicom.dcmread(make_ct_files(tmp_path, n=1)[0])
    del ds.SeriesInstanceUID
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    raw = buf.getvalue()
    spooled = _spool(store, "d.part", raw)
    with pytest.raises(InvalidInstanceError, match="SeriesInstanceUID"):
        store.adopt(spooled, sync=lambda: None, head=raw[:HEADER_SCAN_BYTES], size=len(raw))
    assert not spooled.exists() and store.count_instances() == 0


def test_a_failing_directory_fsync_takes_the_renamed_file_back(store, tmp_path, monkeypatch):
    """Its name is not durable, so it was not stored: no file may stay to be indexed by a
    later reconcile. A file that replaced an indexed copy of the same instance stays."""
    import errno

    from station.core.store import store as store_module

    def failing(directory):
        raise OSError(errno.EIO, "Input/output error")

    kept, new = make_ct_files(tmp_path, n=2)
    first = store.ingest([kept.read_bytes()])
    monkeypatch.setattr(store_module, "_fsync_dir", failing)
    for f in (new, kept):
        with pytest.raises(StoreError, match="Input/output error"):
            store.ingest([f.read_bytes()])
    assert [p.name for p in store.objects_dir.rglob("*.dcm")] == [Path(first.path).name]
    assert store.count_instances() == 1 and list(store.tmp_dir.iterdir()) == []


def _adopt_with_head(store: Store, spooled: Path, raw: bytes, sync=lambda: None):
    from station.core.store.store import HEADER_SCAN_BYTES

    return store.adopt(spooled, sync=sync, head=raw[:HEADER_SCAN_BYTES], size=len(raw))


def test_adopt_writes_the_rows_while_the_flush_runs_and_commits_them_last(store, tmp_path, monkeypatch):
    """With a flush to wait for, the rows are written first but stay invisible (another
    connection sees nothing) until the data is on disk, renamed and its directory synced."""
    from station.core.store import store as store_module

    (f,) = make_ct_files(tmp_path, n=1)
    raw = f.read_bytes()
    steps: list[str] = []
    fsync_dir = store_module._fsync_dir
    other = sqlite3.connect(store.index_path)

    def visible() -> int:
        return other.execute("SELECT count(*) FROM instances").fetchone()[0]

    def sync():
        steps.append(f"flushed, rows written {store._writer.in_transaction}, visible {visible()}")

    monkeypatch.setattr(store_module, "_fsync_dir", lambda d: (fsync_dir(d), steps.append(f"dir synced {visible()}")))
    stored = _adopt_with_head(store, _spool(store, "a.part", raw), raw, sync)
    other.close()
    assert steps[-2:] == ["flushed, rows written True, visible 0", "dir synced 0"]
    assert store.count_instances() == 1 and Path(stored.path).read_bytes() == raw


@pytest.mark.parametrize("failing", ["rows", "flush", "rename", "directory fsync", "commit"])
def test_every_failure_of_an_overlapped_adopt_keeps_nothing(store, tmp_path, monkeypatch, failing):
    import errno

    from station.core.store import store as store_module

    kept, new = make_ct_files(tmp_path, n=2)
    first = _adopt_with_head(store, _spool(store, "k.part", kept.read_bytes()), kept.read_bytes())

    def io_error(*args):
        raise OSError(errno.ENOSPC, "No space left on device")

    def db_error(*args):
        raise sqlite3.OperationalError("database or disk is full")

    sync = io_error if failing == "flush" else (lambda: None)
    if failing == "rows":
        monkeypatch.setattr(Store, "_index_rows", staticmethod(db_error))
    elif failing == "rename":
        monkeypatch.setattr(store_module.os, "replace", io_error)
    elif failing == "directory fsync":
        monkeypatch.setattr(store_module, "_fsync_dir", io_error)
    elif failing == "commit":
        monkeypatch.setattr(Store, "_commit_index", db_error)
    raw = new.read_bytes()
    spooled = _spool(store, "n.part", raw)
    with pytest.raises(StoreFullError):
        _adopt_with_head(store, spooled, raw, sync)
    monkeypatch.undo()
    assert [p.name for p in store.objects_dir.rglob("*.dcm")] == [Path(first.path).name]
    assert store.count_instances() == 1 and list(store.tmp_dir.iterdir()) == []
    assert not store._writer.in_transaction
    (row,) = store.series_list()
    assert row.instances == 1
    # A store that works again takes the instance.
    _adopt_with_head(store, _spool(store, "n.part", raw), raw)
    assert store.count_instances() == 2


def test_adopt_while_another_thread_holds_the_index_flushes_first(store, tmp_path):
    (f,) = make_ct_files(tmp_path, n=1)
    raw = f.read_bytes()
    seen: list[bool] = []
    store._write_lock.acquire()
    released = threading.Timer(0.05, store._write_lock.release)
    released.start()
    try:
        _adopt_with_head(store, _spool(store, "a.part", raw), raw, lambda: seen.append(store._writer.in_transaction))
    finally:
        released.join()
    assert seen == [False] and store.count_instances() == 1
