"""Tests for station.core.synth.bags: the synthetic bag generator and its DICOM/DICOS writers.

Small volumes (64x64x24 and similar) keep the whole file to a few seconds.
"""

from __future__ import annotations

import ast
import json
import time
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import (
    CTImageStorage,
    DICOSCTImageStorage,
    DICOSDigitalXRayImageStorageForPresentation,
    DigitalXRayImageStorageForPresentation,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    RLELossless,
)
from scipy import ndimage

from station.core.synth import bags as synth
from station.core.synth.bags import (
    THREAT_DENSITY_RANGE,
    BagVolume,
    make_bag_volume,
    synth_main,
    write_ct_series,
    write_dx,
)

LO, HI = THREAT_DENSITY_RANGE
SIZE, SLICES = 64, 24


@pytest.fixture(scope="module")
def bag() -> BagVolume:
    return make_bag_volume(size=SIZE, slices=SLICES, threats=2, seed=7)


def _threat_mask(b: BagVolume) -> np.ndarray:
    mask = np.zeros(b.voxels.shape, dtype=bool)
    for t in b.threats:
        mask[t.slices] = True
    return mask


def _frames_mhu_classic(paths: list[Path]) -> tuple[list[pydicom.Dataset], np.ndarray]:
    dss = [pydicom.dcmread(p) for p in paths]
    vol = np.stack([
        ds.pixel_array.astype(np.int32) * int(ds.RescaleSlope) + int(ds.RescaleIntercept)
        for ds in dss
    ])
    return dss, vol


def _mhu_dicos(ds: pydicom.Dataset) -> np.ndarray:
    pvt = ds.SharedFunctionalGroupsSequence[0].PixelValueTransformationSequence[0]
    return ds.pixel_array.astype(np.int32) * int(pvt.RescaleSlope) + int(pvt.RescaleIntercept)


# ---------------------------------------------------------------------------------------
# Volume
# ---------------------------------------------------------------------------------------


def test_volume_shape_dtype_and_geometry(bag: BagVolume) -> None:
    assert bag.voxels.shape == (SLICES, SIZE, SIZE)
    assert bag.voxels.dtype == np.int16
    assert not bag.voxels.flags.writeable
    sz, sy, sx = bag.spacing_mm
    assert sy == sx
    # the case is roughly 600 x 250 x 400 mm (x, y, z)
    ex, ey, ez = bag.case_extent_xyz
    assert 500 < ex * sx < 680 and 200 < ey * sy < 290 and 330 < ez * sz < 440
    # air around the bag is about 0 MHU, water-like bottles about 1000
    assert abs(float(np.median(bag.voxels[:, :5, :]))) < 5


def test_deterministic_for_a_seed() -> None:
    a = make_bag_volume(SIZE, SLICES, threats=2, seed=11)
    b = make_bag_volume(SIZE, SLICES, threats=2, seed=11)
    c = make_bag_volume(SIZE, SLICES, threats=2, seed=12)
    assert np.array_equal(a.voxels, b.voxels)
    assert a.threats == b.threats and a.items == b.items
    assert not np.array_equal(a.voxels, c.voxels)


def test_threat_count_does_not_move_the_rest_of_the_bag() -> None:
    clean = make_bag_volume(SIZE, SLICES, threats=0, seed=5)
    loaded = make_bag_volume(SIZE, SLICES, threats=3, seed=5)
    assert clean.threats == [] and len(loaded.threats) == 3
    outside = ~_threat_mask(loaded)
    assert np.array_equal(clean.voxels[outside], loaded.voxels[outside])
    assert not np.array_equal(clean.voxels, loaded.voxels)


@pytest.mark.parametrize(("size", "slices", "count", "seed"),
                         [(64, 24, 2, 7), (64, 24, 3, 1), (128, 48, 4, 3)])
def test_threats_inside_bag_and_in_density_band(size: int, slices: int, count: int, seed: int) -> None:
    b = make_bag_volume(size, slices, threats=count, seed=seed)
    assert [t.id for t in b.threats] == list(range(1, count + 1))
    case_lo = np.array(b.case_base_xyz)
    case_hi = case_lo + np.array(b.case_extent_xyz)
    sz, sy, sx = b.spacing_mm
    for t in b.threats:
        lo = np.array(t.base_xyz)
        hi = lo + np.array(t.extent_xyz)
        # strictly inside the case: the shell walls are not part of the box
        assert np.all(lo > case_lo) and np.all(hi < case_hi), t
        box = b.voxels[t.slices]
        assert box.shape == tuple(reversed(t.extent_xyz))
        assert box.min() >= LO and box.max() <= HI
        assert LO <= box.mean() <= HI and t.density == pytest.approx(box.mean())
        assert t.category == "EXPLOSIVE"
        # realistic size: a few cm to 15 cm, never a single voxel thick
        assert min(t.extent_xyz) >= 2
        ex, ey, ez = t.extent_xyz
        assert 15 <= ex * sx <= 170 and 15 <= ez * sz <= 170 and ey * sy <= 120
        # surrounded by something else: the voxels just outside the box along x differ
        x0, y0, z0 = t.base_xyz
        ring = b.voxels[z0:z0 + ez, y0:y0 + ey, x0 - 1]
        assert np.mean((ring >= LO) & (ring <= HI)) < 0.5
    boxes = [(np.array(t.base_xyz), np.array(t.base_xyz) + np.array(t.extent_xyz)) for t in b.threats]
    for i, (alo, ahi) in enumerate(boxes):
        for blo, bhi in boxes[i + 1:]:
            assert not np.all((alo < bhi) & (blo < ahi)), "threat boxes overlap"


@pytest.mark.parametrize("seed", [0, 2, 9])
def test_no_compact_in_band_region_outside_threats(seed: int) -> None:
    """A threshold-plus-erosion detector on the band finds the threats and nothing else."""
    b = make_bag_volume(96, 32, threats=2, seed=seed)
    in_band = (b.voxels >= LO) & (b.voxels <= HI)
    compact = ndimage.binary_erosion(in_band, np.ones((3, 3, 3), dtype=bool))
    assert not np.any(compact & ~_threat_mask(b))
    for t in b.threats:
        assert compact[t.slices].any() or min(t.extent_xyz) < 3


def test_confusers_are_dense_but_out_of_band_or_thin() -> None:
    b = make_bag_volume(128, 48, threats=0, seed=4, clear_dense=True)
    confusers = {i.name: i for i in b.items if i.kind == "confuser"}
    assert {"book", "shampoo", "mug", "pvc folder"} <= set(confusers)
    for item in confusers.values():
        lo, hi = item.density_range
        assert hi < LO or lo > HI or min(item.extent_xyz) == 1, item
        box = b.voxels[item.slices]
        # dense enough that a naive "above 1000 MHU" detector fires on them
        assert np.count_nonzero(box > 1000) > 0, item.name
    folder = confusers["pvc folder"]
    assert folder.extent_xyz[1] == 1
    folder_vox = b.voxels[folder.slices]
    assert np.mean((folder_vox >= LO) & (folder_vox <= HI)) > 0.2  # in band, but thin
    plain = make_bag_volume(128, 48, threats=0, seed=4, clear_dense=False)
    assert not any(i.kind == "confuser" for i in plain.items)
    assert {i.name for i in plain.items} == {i.name for i in b.items if i.kind != "confuser"}


def test_bag_has_everyday_contents(bag: BagVolume) -> None:
    kinds = {i.kind for i in bag.items}
    assert {"structure", "electronics", "metal", "liquid"} <= kinds
    coin = next(i for i in bag.items if i.name.startswith("coin"))
    assert bag.voxels[coin.slices].max() > 7000
    laptop = next(i for i in bag.items if i.name == "laptop")
    assert bag.voxels[laptop.slices].max() > 2500


def test_invalid_arguments() -> None:
    with pytest.raises(ValueError):
        make_bag_volume(size=16, slices=24)
    with pytest.raises(ValueError):
        make_bag_volume(size=64, slices=24, threats=-1)
    with pytest.raises(ValueError):
        make_bag_volume(size=64, slices=24, threats=200)


def test_generation_is_fast() -> None:
    make_bag_volume(256, 96, threats=3, seed=0)  # warm caches / page pool
    t0 = time.perf_counter()
    make_bag_volume(256, 96, threats=3, seed=1)
    # nominally ~0.1 s; generous bound because the test machine is shared
    assert time.perf_counter() - t0 < 3.0


# ---------------------------------------------------------------------------------------
# Classic CT series
# ---------------------------------------------------------------------------------------


def test_classic_ct_series_round_trip(bag: BagVolume, tmp_path: Path) -> None:
    paths = write_ct_series(bag, tmp_path, seed=7)
    assert [p.name for p in paths] == [f"CT{k:06d}.dcm" for k in range(1, SLICES + 1)]
    dss, vol = _frames_mhu_classic(paths)
    assert np.array_equal(vol, bag.voxels)

    sz, sy, sx = bag.spacing_mm
    z = np.array([float(ds.ImagePositionPatient[2]) for ds in dss])
    assert np.all(np.diff(z) > 0)
    assert np.allclose(np.diff(z), sz, atol=1e-3)
    assert float(dss[0].ImagePositionPatient[0]) == pytest.approx(bag.origin_mm[0], abs=1e-3)
    assert float(dss[0].ImagePositionPatient[1]) == pytest.approx(bag.origin_mm[1], abs=1e-3)
    assert z[0] == pytest.approx(bag.origin_mm[2], abs=1e-3)

    first = dss[0]
    assert first.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert first.file_meta.MediaStorageSOPClassUID == CTImageStorage
    assert first.SOPClassUID == CTImageStorage
    assert first.Modality == "CT"
    assert first.PatientID == "BAG-000007"
    assert first.Manufacturer == "Inspection Station Synth"
    assert [float(v) for v in first.ImageOrientationPatient] == [1, 0, 0, 0, 1, 0]
    assert [float(v) for v in first.PixelSpacing] == pytest.approx([sy, sx])
    assert float(first.SliceThickness) == pytest.approx(sz)
    assert first.PixelRepresentation == 0 and first.BitsAllocated == 16
    assert int(first.RescaleIntercept) == -1000 and first.RescaleType == "MHU"
    assert first.Rows == SIZE and first.Columns == SIZE
    assert [ds.InstanceNumber for ds in dss] == list(range(1, SLICES + 1))
    for key in ("StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID", "StudyDate"):
        assert len({str(ds[key].value) for ds in dss}) == 1, key
    assert len({ds.SOPInstanceUID for ds in dss}) == SLICES
    assert all(ds.SOPInstanceUID == ds.file_meta.MediaStorageSOPInstanceUID for ds in dss)


def test_uids_are_deterministic_and_overridable(bag: BagVolume, tmp_path: Path) -> None:
    a = [pydicom.dcmread(p) for p in write_ct_series(bag, tmp_path / "a", seed=3)[:2]]
    b = [pydicom.dcmread(p) for p in write_ct_series(bag, tmp_path / "b", seed=3)[:2]]
    c = [pydicom.dcmread(p) for p in write_ct_series(bag, tmp_path / "c", seed=4)[:2]]
    assert [d.SOPInstanceUID for d in a] == [d.SOPInstanceUID for d in b]
    assert a[0].StudyInstanceUID != c[0].StudyInstanceUID
    other = make_bag_volume(SIZE, SLICES, threats=0, seed=8)
    e = pydicom.dcmread(write_ct_series(other, tmp_path / "e", seed=3)[0])
    assert e.StudyInstanceUID != a[0].StudyInstanceUID  # same seed, different bag
    d = pydicom.dcmread(write_ct_series(bag, tmp_path / "d", seed=3, patient_id="BAG-123456",
                                        study_uid="1.2.3.4", series_uid="1.2.3.5")[0])
    assert (d.PatientID, d.StudyInstanceUID, d.SeriesInstanceUID) == ("BAG-123456", "1.2.3.4", "1.2.3.5")
    for ds in a + b + c + [d]:
        assert ds.SOPInstanceUID.is_valid


@pytest.mark.parametrize("ts", [RLELossless, JPEG2000Lossless])
def test_classic_ct_compressed_round_trip(bag: BagVolume, tmp_path: Path, ts: str) -> None:
    small = BagVolume(bag.voxels[:4].copy(), bag.spacing_mm, bag.origin_mm)
    paths = write_ct_series(small, tmp_path, transfer_syntax=ts)
    dss, vol = _frames_mhu_classic(paths)
    assert all(ds.file_meta.TransferSyntaxUID == ts for ds in dss)
    assert np.array_equal(vol, small.voxels)


def test_jpeg_lossless_70_is_refused(bag: BagVolume, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no JPEG Lossless encoder"):
        write_ct_series(bag, tmp_path, transfer_syntax="1.2.840.10008.1.2.4.70")
    with pytest.raises(ValueError):
        write_ct_series(bag, tmp_path, transfer_syntax="NotATransferSyntax")
    assert not list(tmp_path.glob("*.dcm"))


def test_voxels_below_intercept_are_refused(tmp_path: Path) -> None:
    vox = np.full((2, 8, 8), -1500, dtype=np.int16)
    with pytest.raises(ValueError):
        write_ct_series(BagVolume(vox, (1.0, 1.0, 1.0), (0.0, 0.0, 0.0)), tmp_path)


# ---------------------------------------------------------------------------------------
# DICOS CT
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("ts", [None, RLELossless, JPEG2000Lossless])
def test_dicos_ct_round_trip(bag: BagVolume, tmp_path: Path, ts: str | None) -> None:
    paths = write_ct_series(bag, tmp_path, dicos=True, seed=7, transfer_syntax=ts)
    assert len(paths) == 1
    ds = pydicom.dcmread(paths[0])
    assert ds.file_meta.TransferSyntaxUID == (ts or ExplicitVRLittleEndian)
    assert ds.SOPClassUID == DICOSCTImageStorage
    assert ds.Modality == "CT" and ds.PatientID == "BAG-000007"
    assert ds.NumberOfFrames == SLICES
    assert np.array_equal(_mhu_dicos(ds), bag.voxels)

    shared = ds.SharedFunctionalGroupsSequence[0]
    sz, sy, sx = bag.spacing_mm
    pm = shared.PixelMeasuresSequence[0]
    assert [float(v) for v in pm.PixelSpacing] == pytest.approx([sy, sx])
    assert float(pm.SliceThickness) == pytest.approx(sz)
    assert [float(v) for v in shared.PlaneOrientationSequence[0].ImageOrientationPatient] == [1, 0, 0, 0, 1, 0]
    assert shared.PixelValueTransformationSequence[0].RescaleType == "MHU"
    frames = ds.PerFrameFunctionalGroupsSequence
    assert len(frames) == SLICES
    pos = np.array([[float(v) for v in f.PlanePositionSequence[0].ImagePositionPatient] for f in frames])
    assert np.allclose(pos[:, 0], bag.origin_mm[0], atol=1e-3)
    assert np.allclose(pos[:, 2], bag.origin_mm[2] + sz * np.arange(SLICES), atol=1e-3)
    assert [f.FrameContentSequence[0].InStackPositionNumber for f in frames] == list(range(1, SLICES + 1))
    assert "ImagePositionPatient" not in ds  # per frame only
    if pydicom.datadict.keyword_for_tag(0x40101042) == "OOIType":
        assert ds.OOIType == "BAGGAGE"


# ---------------------------------------------------------------------------------------
# DX
# ---------------------------------------------------------------------------------------


def test_dx_single_dimensions(bag: BagVolume, tmp_path: Path) -> None:
    paths = write_dx(bag, tmp_path)
    assert [p.name for p in paths] == ["DX.dcm"]
    ds = pydicom.dcmread(paths[0])
    assert ds.SOPClassUID == DigitalXRayImageStorageForPresentation
    assert ds.Modality == "DX" and ds.PhotometricInterpretation == "MONOCHROME1"
    # top view: rows = x (across the belt), columns = z (belt direction)
    assert ds.pixel_array.shape == (SIZE, SLICES) and ds.pixel_array.dtype == np.uint16
    sz, _, sx = bag.spacing_mm
    assert [float(v) for v in ds.PixelSpacing] == pytest.approx([sx, sz])
    img = ds.pixel_array.astype(float)
    # the bag attenuates more than the air around it
    x0, _, z0 = bag.case_base_xyz
    ex, _, ez = bag.case_extent_xyz
    assert img[x0 + ex // 2, z0 + ez // 2] > img[1, 1] + 200

    dicos = pydicom.dcmread(write_dx(bag, tmp_path / "dicos", dicos=True)[0])
    assert dicos.SOPClassUID == DICOSDigitalXRayImageStorageForPresentation
    side = pydicom.dcmread(write_dx(bag, tmp_path / "side", axis="x")[0])
    assert side.pixel_array.shape == (SIZE, SLICES)


def test_dual_energy_separates_metal_from_organic(tmp_path: Path) -> None:
    vox = np.zeros((20, 40, 30), dtype=np.int16)
    vox[2:8, 5:35, 5:25] = 1500   # 30 mm of explosive-like organic along y
    vox[12:18, 18:21, 5:25] = 8000  # 3 mm of iron-like metal
    b = BagVolume(vox, (1.0, 1.0, 1.0), (0.0, 0.0, 0.0))
    paths = write_dx(b, tmp_path, dual_energy=True, seed=1)
    assert [p.name for p in paths] == ["DX_HIGH.dcm", "DX_LOW.dcm"]
    high, low = (pydicom.dcmread(p) for p in paths)
    assert high.ImageType[2] == "HIGH" and low.ImageType[2] == "LOW"
    assert float(low.KVP) < float(high.KVP)
    assert high.SeriesInstanceUID == low.SeriesInstanceUID
    assert high.SOPInstanceUID != low.SOPInstanceUID
    h, lo = high.pixel_array.astype(float), low.pixel_array.astype(float)
    # image rows = x, columns = z
    organic = (slice(8, 22), slice(3, 7))
    metal = (slice(8, 22), slice(13, 17))
    r_org = lo[organic].mean() / h[organic].mean()
    r_met = lo[metal].mean() / h[metal].mean()
    assert lo[organic].mean() > h[organic].mean() > 0
    assert 1.1 < r_org < 1.6
    assert r_met > 3.0
    assert np.all(h[:, 20:] < 50) and np.all(lo[:, 20:] < 50)  # empty columns: air only


# ---------------------------------------------------------------------------------------
# truth.json and the CLI entry point
# ---------------------------------------------------------------------------------------


def test_truth_json_records_threats_and_merges_series(bag: BagVolume, tmp_path: Path) -> None:
    write_ct_series(bag, tmp_path, dicos=True)
    write_dx(bag, tmp_path, dual_energy=True)
    truth = json.loads((tmp_path / "truth.json").read_text())
    assert set(truth["series"]) == {"dicos-ct", "dx"}
    assert truth["volume"]["shape_zyx"] == list(bag.voxels.shape)
    assert truth["volume"]["threat_density_range"] == list(THREAT_DENSITY_RANGE)
    assert [(t["id"], tuple(t["base"]), tuple(t["extent"]), t["category"]) for t in truth["threats"]] == [
        (t.id, t.base_xyz, t.extent_xyz, t.category) for t in bag.threats
    ]
    ct = truth["series"]["dicos-ct"]
    ds = pydicom.dcmread(tmp_path / ct["files"][0], stop_before_pixels=True)
    assert ct["sop_instance_uids"] == [ds.SOPInstanceUID]
    dx2d = truth["series"]["dx"]["threats_2d"]
    assert [d["base_col_row"] for d in dx2d] == [[t.base_xyz[2], t.base_xyz[0]] for t in bag.threats]


@pytest.mark.parametrize(("kind", "dicos", "count"), [("ct", False, 16), ("ct", True, 1), ("dx", False, 2)])
def test_synth_main(tmp_path: Path, kind: str, dicos: bool, count: int) -> None:
    paths = synth_main(kind, tmp_path / "out", dicos=dicos, slices=16, size=48, threats=1, seed=2)
    assert len(paths) == count and all(p.exists() for p in paths)
    truth = json.loads((tmp_path / "out" / "truth.json").read_text())
    assert len(truth["threats"]) == 1
    with pytest.raises(ValueError):
        synth_main("mr", tmp_path, dicos=False, slices=16, size=48, threats=0, seed=0)


def test_core_layer_imports_no_gui_or_network() -> None:
    tree = ast.parse(Path(synth.__file__).read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module.split(".")[0])
    assert not imported & {"PySide6", "pyqtgraph", "pynetdicom", "socket", "http", "urllib",
                           "urllib3", "requests"}


def test_held_apart_threats_lie_outside_the_tuned_band_and_sizes():
    """Each kind is what HELD_APART_KINDS says: the box holds only values of its range,
    the density kinds sit outside the band, a sheet is under 4 mm thick, a small one
    under 5 ml; every held-apart bag, clear ones too, holds the honey jar."""
    kinds: set[str] = set()
    for seed in range(4):
        bag = make_bag_volume(size=256, slices=128, threats=3, seed=seed, held_apart=True)  # the bench size
        for t in bag.threats:
            lo, hi = synth.HELD_APART_KINDS[t.kind]
            box = bag.voxels[t.slices]
            assert lo <= box.min() and box.max() <= hi, t
            sz, sy, sx = bag.spacing_mm
            ex, ey, ez = t.extent_xyz
            if t.kind in ("low-density", "high-density"):
                assert not LO <= t.density <= HI
            elif t.kind == "sheet":
                assert ey * sy < 4.0
            else:
                assert ex * ey * ez * sx * sy * sz / 1000.0 < 5.0
            kinds.add(t.kind)
        clear = make_bag_volume(size=128, slices=64, threats=0, seed=seed, held_apart=True)
        assert [i.name for i in clear.items].count("honey jar") == 1
    assert kinds == set(synth.HELD_APART_KINDS)
    # The default bags are unchanged by the option's existence.
    assert not any(i.name == "honey jar" for i in make_bag_volume(size=128, slices=64, threats=1, seed=0).items)
