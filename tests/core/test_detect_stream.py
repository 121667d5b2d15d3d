"""Streaming detection: ``DensityStream`` examines a scan slab by slab as it arrives, and
``DetectionService`` raises a provisional alert while the scan still arrives, then stores
the final machine TDR, equal to a whole-volume run's.

Orderings of events are asserted, never timings (those are in ``station bench detect``).
"""

from __future__ import annotations

import queue
import threading
from pathlib import Path

import numpy as np
import pytest

from station.core.detection.detectors import DensityDetector, Detection, box_iou, load_for_detection
from station.core.detection.service import DetectionService
from station.core.dicom.sopclasses import DICOS_TDR
from station.core.dicos import read_tdr
from station.core.events import EventBus, InstanceStored
from station.core.synth import bags as synth
from station.core.triage.alerts import AlertBook, is_provisional


def _boxes(found: list[Detection]) -> list[tuple[object, ...]]:
    return [(d.base_xyz, d.extent_xyz, d.flag, round(d.volume_ml or 0, 6), d.bitmap) for d in found]


@pytest.mark.parametrize("seed", [0, 4, 7, 16])
@pytest.mark.parametrize("slab", [3, 8, 21])
def test_streaming_equals_the_whole_volume_run(seed: int, slab: int):
    bag = synth.make_bag_volume(size=96, slices=96, threats=3, seed=seed)
    det = DensityDetector()
    whole = det.detect(bag.voxels, bag.spacing_mm, units="MHU")
    stream = det.stream()
    early: list[Detection] = []
    for m in range(slab, bag.shape[0], slab):
        early += stream.step(bag.voxels[:m], bag.spacing_mm, complete=False, units="MHU")
    last = stream.step(bag.voxels, bag.spacing_mm, complete=True, units="MHU")
    assert len(whole) == 3
    assert _boxes(stream.detections) == _boxes(whole)
    assert len(early) + len(last) == len(whole)  # each object settles exactly once
    assert early, "no object settled before the scan was complete"


def test_a_threat_straddling_a_slab_boundary_is_found_once_and_whole():
    bag = synth.make_bag_volume(size=96, slices=96, threats=2, seed=0)
    threat = max(bag.threats, key=lambda t: t.extent_xyz[2])  # z 41..70
    z0, ez = threat.base_xyz[2], threat.extent_xyz[2]
    det = DensityDetector()
    [whole] = [d for d in det.detect(bag.voxels, bag.spacing_mm) if box_iou(
        d.base_xyz, d.extent_xyz, threat.base_xyz, threat.extent_xyz) > 0.3]
    stream = det.stream()
    settled: list[tuple[int, Detection]] = []
    # Boundaries through its first slices, its middle, and just past its last slice.
    for m in (z0 + 2, z0 + ez // 2, z0 + ez + 1):
        settled += [(m, d) for d in stream.step(bag.voxels[:m], bag.spacing_mm, complete=False)]
    settled += [(bag.shape[0], d) for d in stream.step(bag.voxels, bag.spacing_mm, complete=True)]
    mine = [(m, d) for m, d in settled if box_iou(d.base_xyz, d.extent_xyz, threat.base_xyz, threat.extent_xyz) > 0]
    assert len(mine) == 1
    (m, d), = mine
    assert m > z0 + ez  # settled only once the slices after it had arrived
    assert _boxes([d]) == _boxes([whole])


def test_slices_that_are_no_continuation_start_the_stream_over():
    bag = synth.make_bag_volume(size=96, slices=96, threats=3, seed=4)
    det = DensityDetector()
    stream = det.stream()
    # Slices sent in descending order: the first step sees the top half, the next one
    # more slices below it (a step's slices are in geometric order, ascending).
    positions = np.arange(bag.shape[0], dtype=float)
    stream.step(bag.voxels[48:], bag.spacing_mm, complete=False, positions=positions[48:])
    stream.step(bag.voxels, bag.spacing_mm, complete=True, positions=positions)
    assert _boxes(stream.detections) == _boxes(det.detect(bag.voxels, bag.spacing_mm))


def _tdr_events(events: list[object]) -> list[InstanceStored]:
    return [e for e in events if isinstance(e, InstanceStored) and e.sop_class_uid == DICOS_TDR]


def test_the_service_alerts_while_the_scan_arrives_then_stores_the_whole_volume_tdr(store, tmp_path: Path):
    bag = synth.make_bag_volume(size=96, slices=96, threats=2, seed=6)  # threats at z 22-32 and 73-88
    first, second = sorted(bag.threats, key=lambda t: t.base_xyz[2])
    files = sorted(f for f in synth.write_ct_series(bag, tmp_path / "classic") if f.suffix == ".dcm")
    bus = EventBus()
    events: list[object] = []
    tdrs: queue.Queue[InstanceStored] = queue.Queue()
    bus.subscribe(events.append)
    bus.subscribe(lambda e: tdrs.put(e) if isinstance(e, InstanceStored) and e.sop_class_uid == DICOS_TDR else None)
    service = DetectionService(store, bus, quiet_s=2.0, detectors=[DensityDetector()], stream_min=16,
                               stream_slab=16)
    service.start()
    try:
        for f in files[:48]:
            bus.publish(store.import_file(f))
        early = tdrs.get(timeout=120)  # a guard against a hang, not a timing
        rest = [store.import_file(f) for f in files[48:]]
        for event in rest:
            bus.publish(event)
        final = tdrs.get(timeout=120)
        while not read_tdr(final.path).tdr_type == "MACHINE" or is_provisional(read_tdr(final.path)):
            final = tdrs.get(timeout=120)
    finally:
        service.stop()
    assert service.stats.failures == 0, service.stats.errors
    first_tdr, final_tdr = read_tdr(early.path), read_tdr(final.path)
    # The alert came while the scan was arriving (before its 49th slice), the final TDR after its last.
    assert events.index(early) < events.index(rest[0]) < events.index(rest[-1]) < events.index(final)
    assert is_provisional(first_tdr) and first_tdr.alarm_decision == "ALARM"
    assert [box_iou(p.base, p.extent, first.base_xyz, first.extent_xyz) > 0.9 for p in first_tdr.ptos] == [True]
    assert not is_provisional(final_tdr)
    # The final TDR is the whole-volume run on the same files.
    volume, spacing, units, _ = load_for_detection([str(f) for f in files])
    whole = DensityDetector().detect(volume, spacing, units=units)
    assert [(p.base, p.extent) for p in final_tdr.ptos] == [
        (tuple(map(float, d.base_xyz)), tuple(map(float, d.extent_xyz))) for d in whole]
    assert any(box_iou(p.base, p.extent, second.base_xyz, second.extent_xyz) > 0.9 for p in final_tdr.ptos)
    assert final_tdr.series_uid == first_tdr.series_uid  # the scan's reports share a series
    # In the alert panel the final TDR replaces the provisional one.
    book = AlertBook(store)
    book.load()
    assert sorted(a.tdr_uid for a in book.alerts()) == [final_tdr.sop_instance_uid] * len(final_tdr.ptos)


def test_slices_sent_top_down_raise_no_provisional_alert_and_the_final_tdr_is_whole(store, tmp_path: Path):
    """Sent top down, each step's slices begin further down: objects settled on them would
    have boxes that move. No provisional TDR then; the final TDR is still the whole run."""
    bag = synth.make_bag_volume(size=96, slices=96, threats=2, seed=6)
    files = sorted((f for f in synth.write_ct_series(bag, tmp_path / "classic") if f.suffix == ".dcm"), reverse=True)
    bus = EventBus()
    tdrs: queue.Queue[InstanceStored] = queue.Queue()
    bus.subscribe(lambda e: tdrs.put(e) if isinstance(e, InstanceStored) and e.sop_class_uid == DICOS_TDR else None)
    service = DetectionService(store, bus, quiet_s=2.0, detectors=[DensityDetector()], stream_min=16,
                               stream_slab=16)
    service.start()
    try:
        for f in files[:80]:  # both threats (z 22-32 and 73-88) are in these
            bus.publish(store.import_file(f))
        idle = threading.Event()
        for _ in range(1200):  # until a step has examined the arriving slices (a hang guard, not a timing)
            if service.stats.stream_steps or service.stats.failures or not tdrs.empty():
                break
            idle.wait(0.1)
        for f in files[80:]:
            bus.publish(store.import_file(f))
        final = tdrs.get(timeout=120)
    finally:
        service.stop()
    assert service.stats.failures == 0, service.stats.errors
    assert service.stats.stream_steps >= 1
    assert tdrs.empty()
    tdr = read_tdr(final.path)
    assert not is_provisional(tdr)
    volume, spacing, units, _ = load_for_detection([str(f) for f in files])
    whole = DensityDetector().detect(volume, spacing, units=units)
    assert len(whole) == 2
    assert [(p.base, p.extent) for p in tdr.ptos] == [
        (tuple(map(float, d.base_xyz)), tuple(map(float, d.extent_xyz))) for d in whole]
