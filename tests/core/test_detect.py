"""Tests for station.core.detection.detectors: the density detector on synthetic bags, the registry,
the process-pool runner, ``station detect`` and the benchmark's report shape.

Bags are small (128x128x64) with fixed seeds; timings belong to ``bench_detect``, never
to these tests.
"""

from __future__ import annotations

import json
import math
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from station.core.detection import detectors as detect
from station.core.detection.detectors import (
    DensityDetector,
    DetectError,
    Detection,
    Detector,
    LazyVolume,
    box_iou,
    detect_main,
    detectors,
    get_detector,
    register_detector,
    run_detectors,
    run_detectors_in_pool,
    unregister_detector,
)
from station.core.dicos import Algorithm, ScanRef, read_tdr, write_machine_tdr, write_operator_tdr
from station.core.synth.bags import THREAT_DENSITY_RANGE, make_bag_volume, write_ct_series, write_dx
from station.core.imaging.volume import load_volume
from station.bench.detect import bench_detect

SIZE, SLICES = 128, 64
THREAT_SEEDS = (3, 11, 17, 29)
CLEAR_SEEDS = (5, 13, 21, 37)


def _best_iou(threat, found: list[Detection]) -> float:
    return max((box_iou(threat.base_xyz, threat.extent_xyz, d.base_xyz, d.extent_xyz)
                for d in found), default=0.0)


@pytest.mark.parametrize("seed", THREAT_SEEDS)
def test_finds_planted_threats(seed: int):
    bag = make_bag_volume(size=SIZE, slices=SLICES, threats=3, seed=seed)
    found = DensityDetector().detect(bag.voxels.astype(np.float32), bag.spacing_mm, units="MHU")
    assert len(found) == len(bag.threats) == 3
    voxel_ml = math.prod(bag.spacing_mm) / 1000.0
    for t in bag.threats:
        [d] = [d for d in found if box_iou(t.base_xyz, t.extent_xyz, d.base_xyz, d.extent_xyz) >= 0.3]
        assert box_iou(t.base_xyz, t.extent_xyz, d.base_xyz, d.extent_xyz) > 0.9
        assert d.flag in ("THREAT", "HIGH_THREAT") and d.category == "EXPLOSIVE"
        assert d.density_g_cm3 == pytest.approx(t.density / 1000.0, rel=0.01)
        assert d.volume_ml == pytest.approx(math.prod(t.extent_xyz) * voxel_ml, rel=0.05)
        assert d.mass_g == pytest.approx(d.density_g_cm3 * d.volume_ml)
        assert 0.5 <= d.probability <= 0.95
        mask = d.mask()
        assert mask is not None and mask.shape == tuple(reversed(d.extent_xyz)) and mask.all()
        assert d.polygon is not None and len(d.polygon) % 3 == 0
        assert d.center_xyz is not None


@pytest.mark.parametrize("seed", CLEAR_SEEDS)
def test_clear_bags_with_dense_confusers_raise_nothing(seed: int):
    bag = make_bag_volume(size=SIZE, slices=SLICES, threats=0, seed=seed, clear_dense=True)
    names = {i.name for i in bag.items if i.kind == "confuser"}
    assert {"pvc folder", "book"} <= names  # the in-band sheet and the near-band book are there
    lo, hi = THREAT_DENSITY_RANGE
    assert np.count_nonzero((bag.voxels >= lo) & (bag.voxels <= hi)) > 0  # not trivially clear
    assert DensityDetector().detect(bag.voxels, bag.spacing_mm) == []


def test_empty_and_all_air_volumes():
    det = DensityDetector()
    assert det.detect(np.zeros((16, 32, 32), dtype=np.float32), (2.0, 1.0, 1.0)) == []
    assert det.detect(np.zeros((0, 32, 32), dtype=np.float32), (2.0, 1.0, 1.0)) == []
    assert det.detect(np.zeros((32, 32), dtype=np.float32), (1.0, 1.0, 1.0)) == []
    with pytest.raises(DetectError):
        det.detect(np.zeros((4, 4, 4), dtype=np.float32), (0.0, 1.0, 1.0))


def _phantom() -> np.ndarray:
    """Air with a one-voxel in-band sheet touching a 10x8x12 in-band block, a block of
    water, and a small in-band cube below the volume limit."""
    v = np.zeros((40, 60, 60), dtype=np.float32)
    v[5:35, 10, 5:55] = 1480.0  # PVC-folder-like sheet (one voxel thick in y)
    v[12:24, 11:19, 20:30] = 1550.0  # the threat, right under the sheet
    v[25:35, 30:40, 30:40] = 1000.0  # water
    v[2:4, 50:52, 2:4] = 1600.0  # 2x2x2 voxels: thick enough, but 0.008 ml
    return v


def test_thin_sheets_and_tiny_objects_are_ignored_boxes_stay_tight():
    det = DensityDetector(min_volume_ml=0.5, min_thickness_mm=2.0)
    found = det.detect(_phantom(), (1.0, 1.0, 1.0))
    assert len(found) == 1
    d = found[0]
    # The sheet touching the block adds at most its one row above the block.
    assert d.base_xyz[0] == 20 and d.extent_xyz[0] == 10
    assert d.base_xyz[2] == 12 and d.extent_xyz[2] == 12
    assert d.base_xyz[1] in (10, 11) and d.base_xyz[1] + d.extent_xyz[1] == 19
    assert d.volume_ml == pytest.approx(0.96, abs=0.2)


def test_hu_volumes_are_shifted():
    bag = make_bag_volume(size=SIZE, slices=SLICES, threats=2, seed=THREAT_SEEDS[0])
    mhu = DensityDetector().detect(bag.voxels, bag.spacing_mm, units="MHU")
    hu = DensityDetector().detect(bag.voxels.astype(np.float32) - 1000.0, bag.spacing_mm, units="HU")
    assert [(d.base_xyz, d.extent_xyz) for d in hu] == [(d.base_xyz, d.extent_xyz) for d in mhu]
    assert [d.density_g_cm3 for d in hu] == pytest.approx([d.density_g_cm3 for d in mhu])


def test_huge_in_band_region_is_an_anomaly():
    v = np.full((20, 40, 40), 1500.0, dtype=np.float32)
    [d] = DensityDetector(max_volume_ml=10.0).detect(v, (1.0, 1.0, 1.0))
    assert d.flag == "ANOMALY" and d.base_xyz == (0, 0, 0) and d.extent_xyz == (40, 40, 20)
    pto = d.to_pto(7)
    assert (pto.id, pto.flag, pto.category, pto.severity) == (7, "UNKNOWN", "ANOMALY", "ANOMALY")


def test_lazy_volume_gives_the_same_detections(tmp_path: Path):
    bag = make_bag_volume(size=SIZE, slices=SLICES, threats=3, seed=THREAT_SEEDS[1])
    files = write_ct_series(bag, tmp_path, dicos=False, seed=THREAT_SEEDS[1])
    vol = load_volume(files)
    lazy = LazyVolume(vol)
    assert lazy.shape == bag.voxels.shape
    np.testing.assert_array_equal(lazy[3:9:2, 10:20, ::7], bag.voxels[3:9:2, 10:20, ::7])
    with pytest.raises(TypeError):
        lazy[3]  # noqa: B018  (integers are not supported)
    def boxes(found: list[Detection]) -> list[tuple]:
        return [(d.base_xyz, d.extent_xyz, d.volume_ml) for d in found]

    assert boxes(DensityDetector().detect(lazy, vol.spacing_mm)) == boxes(
        DensityDetector().detect(bag.voxels, vol.spacing_mm))


# --------------------------------------------------------------------------- registry / runner


@dataclass(frozen=True)
class _Constant:
    """A plug-in detector (module level, so it pickles into a pool worker)."""

    name: str = "constant"
    version: str = "0.1"

    def detect(self, volume: Any, spacing_mm: Any, **context: Any) -> list[Detection]:
        return [Detection((0, 0, 0), (1, 1, 1), flag="THREAT", category="OTHER",
                          detector=f"{self.name} {context.get('units')}")]


@dataclass(frozen=True)
class _Broken:
    name: str = "broken"
    version: str = "0"

    def detect(self, volume: Any, spacing_mm: Any, **context: Any) -> list[Detection]:
        raise RuntimeError("boom")


def test_registry():
    assert isinstance(get_detector("station-density"), DensityDetector)
    assert isinstance(DensityDetector(), Detector)
    register_detector(_Constant())
    try:
        assert [d.name for d in detectors()][-1] == "constant"
        with pytest.raises(ValueError, match="already registered"):
            register_detector(_Constant())
        register_detector(_Constant(version="0.2"), replace=True)
        assert get_detector("constant").version == "0.2"
    finally:
        unregister_detector("constant")
    assert "constant" not in [d.name for d in detectors()]
    with pytest.raises(TypeError):
        register_detector(object())  # type: ignore[arg-type]


def test_one_failing_detector_does_not_hide_the_others():
    v = np.zeros((8, 8, 8), dtype=np.float32)
    results = run_detectors(v, (1.0, 1.0, 1.0), detector_list=[_Broken(), _Constant()], units="HU")
    assert results[0].error == "RuntimeError: boom" and results[0].detections == []
    assert results[1].error == "" and results[1].detections[0].detector == "constant HU"


def test_run_in_process_pool(tmp_path: Path):
    bag = make_bag_volume(size=SIZE, slices=SLICES, threats=2, seed=THREAT_SEEDS[2])
    files = write_ct_series(bag, tmp_path, dicos=True, seed=THREAT_SEEDS[2])
    with ProcessPoolExecutor(max_workers=1) as pool:
        from_files = run_detectors_in_pool(pool, files, detector_list=[DensityDetector(), _Constant()])
        from_array = run_detectors_in_pool(pool, bag.voxels, spacing_mm=bag.spacing_mm)
        run = from_files.result(timeout=60)
        run2 = from_array.result(timeout=60)
    assert run.units == "MHU" and run.shape == bag.voxels.shape
    assert run.scan is not None and run.scan.instance_uids == (
        json.loads((tmp_path / "truth.json").read_text())["series"]["dicos-ct"]["sop_instance_uids"][0],)
    density, constant = run.results
    assert all(_best_iou(t, density.detections) > 0.9 for t in bag.threats)
    assert constant.detections[0].detector == "constant MHU"
    assert [(d.base_xyz, d.extent_xyz) for d in run2.detections] == [
        (d.base_xyz, d.extent_xyz) for d in density.detections]


def test_load_errors(tmp_path: Path):
    with pytest.raises(DetectError, match="spacing_mm is required"):
        detect.load_for_detection(np.zeros((2, 2, 2)))
    bag = make_bag_volume(size=32, slices=8, threats=0, seed=1)
    write_dx(bag, tmp_path / "dx", seed=1)
    with pytest.raises(DetectError, match="not a CT volume"):
        detect_main([tmp_path / "dx"])
    with pytest.raises(DetectError, match="no readable image"):
        detect_main([tmp_path / "nothing-here"])


# --------------------------------------------------------------------------- CLI and TDR


@pytest.mark.parametrize("dicos", [True, False])
def test_detect_main_writes_a_machine_tdr_for_the_scan(tmp_path: Path, dicos: bool):
    seed = THREAT_SEEDS[3]
    bag = make_bag_volume(size=SIZE, slices=SLICES, threats=2, seed=seed)
    write_ct_series(bag, tmp_path / "scan", dicos=dicos, seed=seed)
    truth = json.loads((tmp_path / "scan" / "truth.json").read_text())["series"]
    series = truth["dicos-ct" if dicos else "ct"]
    out = detect_main([tmp_path / "scan"], tdr_out=tmp_path / "tdr.dcm")
    json.dumps(out)
    assert out["alarm_decision"] == "ALARM" and len(out["alerts"]) == 2
    assert out["scan"]["study_uid"] == series["study_uid"]
    assert out["scan"]["shape"] == [SLICES, SIZE, SIZE] and out["scan"]["units"] == "MHU"
    for t in bag.threats:
        assert any(box_iou(t.base_xyz, t.extent_xyz, a["base"], a["extent"]) > 0.9 for a in out["alerts"])

    tdr = read_tdr(tmp_path / "tdr.dcm")
    assert out["tdr"]["sop_instance_uid"] == tdr.sop_instance_uid
    assert tdr.tdr_type == "MACHINE" and tdr.alarm_decision == "ALARM"
    assert tdr.algorithm is not None and tdr.algorithm.vendor == "station-density"
    assert tdr.scan_study_uid == series["study_uid"] and tdr.ooi_id == series["patient_id"]
    assert set(tdr.referenced_series) == {series["series_uid"]}
    assert [(list(p.base), list(p.extent)) for p in tdr.ptos] == [
        (a["base"], a["extent"]) for a in out["alerts"]]
    for p in tdr.ptos:
        refs = {r.sop_instance_uid for r in p.referenced_instances}
        z0, ez = int(p.base[2]), int(p.extent[2])
        if dicos:
            assert refs == set(series["sop_instance_uids"])
        else:  # the slices the box spans
            assert refs == set(series["sop_instance_uids"][z0:z0 + ez])
        assert p.processing_ms is not None and p.mask() is not None

    operator = write_operator_tdr(tdr, "CLEAR", "op", tmp_path / "op.dcm")
    assert operator.referenced_tdrs[0].sop_instance_uid == tdr.sop_instance_uid
    assert operator.scan_study_uid == series["study_uid"]


def test_detect_main_on_a_clear_bag(tmp_path: Path):
    bag = make_bag_volume(size=SIZE, slices=SLICES, threats=0, seed=CLEAR_SEEDS[0])
    write_ct_series(bag, tmp_path, dicos=True, seed=CLEAR_SEEDS[0])
    out = detect_main([tmp_path], tdr_out=tmp_path / "out" / "tdr.dcm")
    assert out["alarm_decision"] == "CLEAR" and out["alerts"] == []
    assert read_tdr(tmp_path / "out" / "tdr.dcm").alarm_decision == "CLEAR"


def test_detections_written_by_scan_ref_are_read_back(tmp_path: Path):
    scan = ScanRef(study_uid="1.2.3", series_uid="1.2.3.4", sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
                   slice_uids=tuple(f"1.2.3.4.{k}" for k in range(40)))
    found = DensityDetector(min_volume_ml=0.5, min_thickness_mm=2.0).detect(_phantom(), (1.0, 1.0, 1.0))
    tdr = write_machine_tdr(found, tmp_path / "m.dcm", scan=scan,
                            algorithm=Algorithm("x", "1"), processing_ms=3)
    [p] = tdr.ptos
    assert (p.id, p.base, p.extent) == (1, tuple(map(float, found[0].base_xyz)),
                                        tuple(map(float, found[0].extent_xyz)))
    np.testing.assert_array_equal(p.mask(), found[0].mask())


def test_bench_report_shape():
    """Tiny settings: checks the JSON object the CLI prints, not the figures."""
    report = bench_detect(threat_bags=2, clear_bags=2, size=64, slices=32, latency_size=64,
                          latency_slices=32, latency_repeats=1, stream_quiet_s=0.3)
    json.dumps(report)
    for key in ("recall", "false_alarms_per_clear_bag", "latency_s", "goal", "met", "goal_met",
                "setup", "latency_detail_s", "held_apart", "streaming"):
        assert key in report, key
    for key in ("recall", "false_alarms_per_clear_bag", "recall_by_kind"):
        assert key in report["held_apart"], key
    assert set(report["held_apart"]["recall_by_kind"]) <= {"low-density", "high-density", "sheet", "small"}
    streaming = report["streaming"]
    assert streaming["final_tdr_same_as_whole_volume"] is True
    for mode in ("stream", "whole_volume"):
        assert len(streaming[mode]["threat_last_slice_to_alert_s"]) == 2  # the latency bag's threats
    assert set(report["met"]) == {"recall", "false_alarms_per_clear_bag", "latency"}
    assert report["threats"] >= 3 and 0.0 <= report["recall"] <= 1.0
