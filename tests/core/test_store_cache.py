"""The store as a cache: scan state, deletion, eviction (quota, age, LRU, protections),
export and rebuild. Times are injected (``now=``); nothing sleeps."""

from __future__ import annotations

import sqlite3
import zipfile
from pathlib import Path

import pytest

from station.core.store.store import (
    INDEX_NAME,
    PENDING_WINDOW_S,
    RECEIVING_GRACE_S,
    SeriesRow,
    Store,
    StoreError,
)
from tests.dicom_factory import make_ct_files

DAY = 86400.0


def _add_series(store: Store, tmp_path: Path, name: str, n: int = 3) -> str:
    files = make_ct_files(tmp_path / name, n, patient_id=name)
    result = store.import_paths(files)
    assert not result.errors and not result.ignored
    return result.stored[0].series_uid


def _age(store: Store, uid: str, received: float) -> None:
    """Pretend a series was received at ``received`` (the store stamps the real time)."""
    store._writer.execute("UPDATE series SET first_received=?, last_received=? WHERE series_uid=?",
                          (received, received, uid))


@pytest.fixture
def scans(tmp_path):
    """A store with four series A..D received at t=1000..1003 and their sizes."""
    s = Store(tmp_path / "store", durable=False)
    uids = {}
    for k, name in enumerate("ABCD"):
        uid = _add_series(s, tmp_path, name)
        _age(s, uid, 1000.0 + k)
        uids[name] = uid
    yield s, uids
    s.close()


def _bytes(store: Store, uid: str) -> int:
    row = store.series(uid)
    assert row is not None
    return row.bytes


# Far enough after reception that nothing is pending or receiving any more.
LATER = 1000.0 + PENDING_WINDOW_S + 10


def test_scan_state_table_is_added_to_an_existing_index(tmp_path):
    s = Store(tmp_path / "store", durable=False)
    s.close()
    conn = sqlite3.connect(tmp_path / "store" / INDEX_NAME)
    conn.execute("DROP TABLE scan_state")
    conn.commit()
    conn.close()
    s = Store(tmp_path / "store", durable=False)
    s.pin("1.2.3")
    assert s.scan_states() == {"1.2.3": (True, None, "")}
    s.close()


def test_pin_touch_and_decision_survive_rebuild(scans):
    store, uids = scans
    store.pin(uids["A"])
    store.touch(uids["B"], now=5000.0)
    store.set_decision(uids["B"], "clear")
    store.rebuild_index()
    states = store.scan_states()
    assert states[uids["A"]][0] is True
    assert states[uids["B"]] == (False, 5000.0, "CLEAR")


def test_rebuild_recovers_every_file(tmp_path):
    store = Store(tmp_path / "store", durable=False)
    series = [_add_series(store, tmp_path, f"P{k}", n=2 + k) for k in range(3)]
    before = {uid: [i.sop_instance_uid for i in store.instances(uid)] for uid in series}
    store.close()
    (tmp_path / "store" / INDEX_NAME).unlink()
    for suffix in ("-wal", "-shm"):
        Path(str(tmp_path / "store" / INDEX_NAME) + suffix).unlink(missing_ok=True)
    store = Store(tmp_path / "store", durable=False)  # rebuilds by itself
    try:
        assert store.count_instances() == sum(len(v) for v in before.values())
        for uid, sops in before.items():
            assert sorted(i.sop_instance_uid for i in store.instances(uid)) == sorted(sops)
            assert all(i.path.exists() for i in store.instances(uid))
    finally:
        store.close()


def test_delete_series_removes_rows_and_files(scans):
    store, uids = scans
    paths = [i.path for i in store.instances(uids["A"])]
    assert store.delete_series(uids["A"], now=LATER) == len(paths)
    assert store.series(uids["A"]) is None
    assert store.instances(uids["A"]) == []
    assert not any(p.exists() for p in paths)
    assert not paths[0].parent.exists()  # empty series folder removed
    assert store.series(uids["B"]) is not None
    assert store.delete_series("no.such.uid", now=LATER) == 0


def test_delete_refuses_in_use_and_receiving(scans):
    store, uids = scans
    with pytest.raises(StoreError, match="in use"):
        store.delete_series(uids["A"], in_use=True, now=LATER)
    with pytest.raises(StoreError, match="received"):
        store.delete_series(uids["A"], now=1000.0 + RECEIVING_GRACE_S / 2)
    assert len(store.instances(uids["A"])) == 3


def test_age_limit_evicts_old_unprotected(scans):
    store, uids = scans
    store.pin(uids["B"])
    gone = store.evict(None, max_age_s=10.0, now=LATER)
    assert set(gone) == {uids["A"], uids["C"], uids["D"]}
    assert store.series(uids["B"]) is not None


def test_quota_evicts_least_recently_used_first(scans):
    store, uids = scans
    # Access order: C oldest, then A, D, B.
    for name, t in (("C", 2000.0), ("A", 2001.0), ("D", 2002.0), ("B", 2003.0)):
        store.touch(uids[name], now=t)
    total = sum(_bytes(store, u) for u in uids.values())
    quota = total - _bytes(store, uids["C"]) - 1  # C alone is not enough: A goes too
    gone = store.evict(quota, None, now=LATER)
    assert gone == [uids["C"], uids["A"]]
    assert store.series(uids["D"]) is not None and store.series(uids["B"]) is not None


def test_quota_never_evicts_pinned_pending_alarmed_or_in_use(scans):
    store, uids = scans
    store.pin(uids["A"])
    for name in "ABCD":
        store.touch(uids[name], now=1500.0)
    gone = store.evict(0, None, now=LATER, protected={uids["B"]}, alarmed={uids["C"]})
    assert gone == [uids["D"]]
    # An old scan with everything protected stays even over the age limit.
    assert store.evict(0, 1.0, now=LATER, protected={uids["B"]}, alarmed={uids["C"]}) == []


def test_pending_means_recent_never_viewed_and_undecided(scans):
    store, uids = scans
    now = 1000.0 + PENDING_WINDOW_S / 2  # all four received within the pending window
    store.touch(uids["A"], now=now - 1)  # viewed: no longer pending
    store.set_decision(uids["B"], "CLEAR")  # decided: no longer pending
    gone = store.evict(0, None, now=now)
    assert set(gone) == {uids["A"], uids["B"]}
    assert store.series(uids["C"]) is not None and store.series(uids["D"]) is not None


def test_still_receiving_is_not_evicted(scans):
    store, uids = scans
    now = LATER
    _age(store, uids["A"], now - 1.0)  # an instance a second ago
    store.touch(uids["A"], now=0.0)  # viewed long ago: otherwise the first to go
    gone = store.evict(0, None, now=now, pending_window_s=0.0)
    assert uids["A"] not in gone
    assert store.series(uids["A"]) is not None


def test_export_to_folder_and_zip(scans, tmp_path):
    store, uids = scans
    out = store.export_series(uids["A"], tmp_path / "out")
    assert sorted(p.name for p in out.iterdir()) == ["IM000001.dcm", "IM000002.dcm", "IM000003.dcm"]
    archive = store.export_series(uids["B"], tmp_path / "x.zip")
    store.export_series(uids["C"], tmp_path / "x.zip")
    with zipfile.ZipFile(archive) as zf:
        names = zf.namelist()
    assert len(names) == 6 and len({n.split("/")[0] for n in names}) == 2
    with pytest.raises(StoreError):
        store.export_series("no.such.uid", tmp_path / "out")


def test_add_index_rows_for_benchmarks(tmp_path):
    store = Store(tmp_path / "store", durable=False)
    rows = [SeriesRow(f"P{k}", "", f"1.{k}", "20261101", "", "", f"2.{k}", 1, "CT", "", "", 1, 1, 10, 1.0, 2.0)
            for k in range(100)]
    assert store.add_index_rows(rows) == 100
    assert len(store.browse_rows()) == 100
    store.close()
