"""Periodic eviction in the store's owner: LRU over quota, never alarmed or recently opened
scans; a scan and its TDRs as one unit; a loud warning when protected scans exceed the quota."""

from __future__ import annotations

import time

from station.core.synth import bags as synth
from station.core.config import StoreSettings
from station.core.dicos import Algorithm, Pto, scan_ref_from_volume, write_machine_tdr
from station.core.store.maintenance import StoreMaintenance
from station.core.imaging.volume import load_volume
from tests.dicom_factory import make_ct_files


def test_eviction_keeps_alarmed_and_recently_opened_scans(store, tmp_path):
    later = time.time() + 3600  # past the receiving grace and the pending window
    old, opened, plain = (store.import_paths([f]).stored[0].series_uid
                          for f in (make_ct_files(tmp_path / n, n=2, size=64)[0] for n in "abc"))
    store.touch(old, now=later - 3000)      # least recently used of all...
    store.touch(opened, now=later - 60)     # ...this one was opened a minute ago
    store.touch(plain, now=later - 2000)
    # An alarmed scan, accessed longest ago: still never evicted.
    bag = synth.make_bag_volume(size=32, slices=8, threats=1, seed=2)
    (ct,) = [f for f in synth.write_ct_series(bag, tmp_path / "bag", dicos=True) if f.suffix == ".dcm"]
    alarmed = store.import_file(ct).series_uid
    store.touch(alarmed, now=later - 5000)
    (t,) = bag.threats
    tdr = tmp_path / "tdr.dcm"
    write_machine_tdr([Pto(id=1, base=tuple(map(float, t.base_xyz)), extent=tuple(map(float, t.extent_xyz)),
                           flag="THREAT", category="EXPLOSIVE")], tdr, scan=scan_ref_from_volume(load_volume([ct])),
                      algorithm=Algorithm("Acme", "1"), processing_ms=1.0)
    store.import_file(tdr)

    sizes = {r.series_uid: r.bytes for r in store.series_list()}
    quota_bytes = sum(sizes.values()) - sizes[old] - sizes[plain] + 1  # two scans must go
    maintenance = StoreMaintenance(store, StoreSettings(path=store.root, quota_gb=quota_bytes / 1e9),
                                   clock=lambda: later)
    deleted = maintenance.run_once()
    assert set(deleted) == {old, plain}
    left = {r.series_uid for r in store.series_list()}
    assert {opened, alarmed} <= left and old not in left and plain not in left
    assert maintenance.evicted_total == 2


def test_disabled_without_quota_or_age(store):
    maintenance = StoreMaintenance(store, StoreSettings(path=store.root))
    assert not maintenance.enabled
    maintenance.start()  # a no-op: no thread is left behind
    maintenance.stop()


def _bag_with_tdr(store, tmp_path, name: str, seed: int, *, import_scan: bool = True) -> tuple[str, str]:
    """A DICOS CT with one planted threat and the machine TDR on it, in the store: returns
    (scan series UID or "", TDR series UID)."""
    bag = synth.make_bag_volume(size=32, slices=8, threats=1, seed=seed)
    (ct,) = synth.write_ct_series(bag, tmp_path / name, dicos=True, seed=seed)
    (t,) = bag.threats
    tdr = tmp_path / f"{name}-tdr.dcm"
    write_machine_tdr([Pto(id=1, base=tuple(map(float, t.base_xyz)), extent=tuple(map(float, t.extent_xyz)),
                           flag="THREAT", category="EXPLOSIVE")], tdr, scan=scan_ref_from_volume(load_volume([ct])),
                      algorithm=Algorithm("Acme", "1"), processing_ms=1.0)
    scan = store.import_file(ct).series_uid if import_scan else ""
    return scan, store.import_file(tdr).series_uid


def test_a_scan_and_its_reports_go_as_one_and_protected_scans_over_quota_are_loud(store, tmp_path):
    from station.core.triage.alerts import AlertBook

    later = time.time() + 3600
    decided, decided_tdr = _bag_with_tdr(store, tmp_path, "decided", 1)
    book = AlertBook(store)
    book.load()
    (operator_uid,) = book.record_decision(decided, "CLEAR", "analyst-1")
    operator_series = store.series_of_instance(operator_uid)
    open_alarm, open_alarm_tdr = _bag_with_tdr(store, tmp_path, "alarm", 2)
    _, orphan_tdr = _bag_with_tdr(store, tmp_path, "orphan", 3, import_scan=False)  # scan never came
    plain = store.import_paths([make_ct_files(tmp_path / "plain", n=2, size=64)[0]]).stored[0].series_uid

    warnings: list[str] = []
    maintenance = StoreMaintenance(store, StoreSettings(path=store.root, quota_gb=1e-9),
                                   clock=lambda: later, on_warning=warnings.append)
    deleted = maintenance.run_once()
    # the decided scan went with its machine and operator TDRs; nothing was left orphaned
    assert set(deleted) == {decided, decided_tdr, operator_series, plain}
    assert {r.series_uid for r in store.series_list()} == {open_alarm, open_alarm_tdr, orphan_tdr}
    # what is left is protected and still over the quota: said once, loudly
    (message,) = warnings
    assert "over its quota" in message and "2 scan(s) with unresolved alarms" in message
    assert maintenance.over_quota == message
    assert maintenance.run_once() == [] and len(warnings) == 1

    book = AlertBook(store)
    book.load()
    book.record_decision(open_alarm, "THREAT", "analyst-1")  # resolved: now it may go, with its reports
    assert open_alarm in maintenance.run_once()
    assert {r.series_uid for r in store.series_list()} == {orphan_tdr}
