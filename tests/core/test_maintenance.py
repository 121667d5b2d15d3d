"""Periodic eviction in the store's owner: LRU over quota, never alarmed or recently opened scans."""

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
