"""Alerts from TDRs in the store, decisions as operator TDRs, and the detection service."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from station.core.synth import bags as synth
from station.core.triage.alerts import AlertBook
from station.core.detection.detectors import DensityDetector
from station.core.detection.service import DetectionService
from station.core.dicos import Algorithm, Pto, read_tdr, scan_ref_from_volume, write_machine_tdr
from station.core.events import EventBus, InstanceStored
from station.core.dicom.sopclasses import DICOS_TDR
from station.core.imaging.volume import load_volume


@pytest.fixture
def bag_in_store(store, tmp_path):
    bag = synth.make_bag_volume(size=64, slices=24, threats=1, seed=8)
    files = [f for f in synth.write_ct_series(bag, tmp_path / "bag", dicos=True) if f.suffix == ".dcm"]
    stored = store.import_file(files[0])
    return bag, files, stored


def machine_tdr(tmp_path: Path, files, bag, *, vendor="VendorX ATR", flag="HIGH_THREAT") -> Path:
    (threat,) = bag.threats
    out = tmp_path / f"tdr-{vendor.replace(' ', '_')}.dcm"
    write_machine_tdr(
        [Pto(id=1, base=tuple(map(float, threat.base_xyz)), extent=tuple(map(float, threat.extent_xyz)),
             flag=flag, category="EXPLOSIVE", probability=0.93)],
        out, scan=scan_ref_from_volume(load_volume(files)), algorithm=Algorithm(vendor, "4.2"), processing_ms=12.0)
    return out


def test_a_machine_tdr_becomes_an_alert_on_its_scan(store, tmp_path, bag_in_store):
    bag, files, scan = bag_in_store
    store.import_file(machine_tdr(tmp_path, files, bag))
    book = AlertBook(store)
    assert book.load() == 1
    (alert,) = book.alerts()
    assert alert.series_uid == scan.series_uid
    assert alert.severity == "HIGH_THREAT" and alert.category == "EXPLOSIVE"
    assert alert.probability == pytest.approx(0.93)
    assert alert.source == "VendorX ATR 4.2" and not alert.from_station
    assert alert.base == tuple(float(v) for v in bag.threats[0].base_xyz)
    assert book.unresolved() == [alert]


def test_a_decision_is_an_operator_tdr_that_resolves_and_persists(store, tmp_path, bag_in_store):
    bag, files, scan = bag_in_store
    machine = store.import_file(machine_tdr(tmp_path, files, bag))
    book = AlertBook(store)
    book.load()
    (written,) = book.record_decision(scan.series_uid, "THREAT", "OP-7", pto_marks={1: "THREAT"})
    assert book.unresolved() == []
    assert book.decision_for(book.alerts()[0]) == "THREAT"
    operator = [r for r in store.instances_of_class(DICOS_TDR) if r.sop_instance_uid == written]
    tdr = read_tdr(operator[0].path)
    assert tdr.tdr_type == "OPERATOR" and tdr.operator_id == "OP-7"
    assert [r.sop_instance_uid for r in tdr.referenced_tdrs] == [machine.sop_instance_uid]
    again = AlertBook(store)  # a restarted station reads the same state from the store
    again.load()
    assert again.unresolved() == [] and len(again.alerts()) == 1


def test_a_tdr_before_its_scan_is_attached_when_the_scan_arrives(tmp_path):
    from station.core.store.store import Store

    bag = synth.make_bag_volume(size=64, slices=24, threats=1, seed=9)
    files = [f for f in synth.write_ct_series(bag, tmp_path / "bag", dicos=True) if f.suffix == ".dcm"]
    tdr_file = machine_tdr(tmp_path, files, bag)
    with Store(tmp_path / "s") as store:
        store.import_file(tdr_file)
        book = AlertBook(store)
        book.load()
        assert book.alerts()[0].series_uid is None
        scan = store.import_file(files[0])
        book.refresh_series()
        assert book.alerts()[0].series_uid == scan.series_uid


def test_a_malformed_tdr_is_named_and_affects_nothing_else(store, tmp_path, bag_in_store):
    import pydicom

    bag, files, _ = bag_in_store
    good = machine_tdr(tmp_path, files, bag)
    store.import_file(good)
    ds = pydicom.dcmread(good)
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
    del ds.ThreatSequence[0].PTORepresentationSequence[0].ThreatROIVoxelSequence[0].ThreatROIBase
    bad = tmp_path / "bad_tdr.dcm"
    ds.save_as(bad, enforce_file_format=True)
    store.import_file(bad)
    book = AlertBook(store)
    assert book.load() == 1
    assert len(book.errors) == 1 and "ThreatROIBase" in book.errors[0]


def test_detection_service_examines_a_complete_scan_and_stores_a_machine_tdr(store, tmp_path):
    bus = EventBus()
    tdrs: list[InstanceStored] = []
    got = threading.Event()

    def on_event(event):
        if isinstance(event, InstanceStored) and event.sop_class_uid == DICOS_TDR:
            tdrs.append(event)
            got.set()

    bus.subscribe(on_event)
    service = DetectionService(store, bus, quiet_s=0.3, detectors=[DensityDetector()])
    service.start()
    try:
        bag = synth.make_bag_volume(size=96, slices=32, threats=1, seed=21)
        for f in sorted(synth.write_ct_series(bag, tmp_path / "classic")):
            if f.suffix == ".dcm":
                bus.publish(store.import_file(f))
        assert got.wait(120), f"no TDR; errors: {service.stats.errors}"
    finally:
        service.stop()
    (event,) = tdrs
    tdr = read_tdr(event.path)
    assert tdr.tdr_type == "MACHINE" and tdr.alarm_decision == "ALARM"
    (pto,) = tdr.ptos
    assert [round(v) for v in pto.base] == list(bag.threats[0].base_xyz)
    assert service.stats.scans_examined == 1 and service.stats.failures == 0
    book = AlertBook(store)
    book.load()
    (alert,) = book.alerts()
    assert alert.from_station and alert.source.startswith("station detector")


def test_a_scan_sent_again_unchanged_gets_no_second_report(store, tmp_path):
    bus = EventBus()
    reports: list[InstanceStored] = []
    first = threading.Event()
    bus.subscribe(lambda e: (reports.append(e), first.set())
                  if isinstance(e, InstanceStored) and e.sop_class_uid == DICOS_TDR else None)
    service = DetectionService(store, bus, quiet_s=0.2, detectors=[DensityDetector()])
    service.start()
    try:
        bag = synth.make_bag_volume(size=64, slices=16, threats=1, seed=22)
        (ct,) = [f for f in synth.write_ct_series(bag, tmp_path / "d", dicos=True) if f.suffix == ".dcm"]
        bus.publish(store.import_file(ct))
        assert first.wait(120)
        bus.publish(store.import_file(ct))  # the scanner sends the same scan again
        deadline = threading.Event()
        deadline.wait(2.0)  # well past the quiet time and a detection run
    finally:
        service.stop()
    assert len(reports) == 1
