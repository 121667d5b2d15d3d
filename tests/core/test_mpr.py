"""station.core.imaging.mpr: reslicing from a SeriesVolume, slabs, projections, measurements.

Volumes are written as small one-file-per-slice CT series (and one multi-frame file) with
pydicom, so the store is exercised on real memory-mapped files, in geometric order that
differs from file order.
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import CTImageStorage, DICOSCTImageStorage, ExplicitVRLittleEndian, generate_uid

from station.core.imaging.mpr import (
    Projector,
    SliceStore,
    ThreatBox,
    as_threat_boxes,
    distance_mm,
    mass_center,
    roi_stats,
    slab_range,
)
from station.core.imaging.volume import SeriesVolume, load_volume

SPACING = (2.0, 0.5, 0.8)  # z, y, x mm: all different, so a swapped axis shows


def _meta(sop_class: str, sop: str) -> FileMetaDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return meta


def _image(ds: Dataset, shape: tuple[int, int]) -> None:
    ds.Rows, ds.Columns = shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    ds.Modality = "CT"


def write_classic(folder: Path, voxels: np.ndarray, *, intercept: int = -1000, shuffle: bool = True) -> list[Path]:
    """One file per slice: stored uint16 = voxels - intercept; InstanceNumber reversed and
    files shuffled, so only ImagePositionPatient gives the order."""
    folder.mkdir(parents=True, exist_ok=True)
    series, study = generate_uid(), generate_uid()
    nz = voxels.shape[0]
    paths = []
    for k in range(nz):
        sop = generate_uid()
        ds = Dataset()
        ds.file_meta = _meta(CTImageStorage, sop)
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, sop
        ds.SeriesInstanceUID, ds.StudyInstanceUID = series, study
        _image(ds, voxels.shape[1:])
        ds.InstanceNumber = nz - k
        ds.ImagePositionPatient = [0, 0, 100 + k * SPACING[0]]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.PixelSpacing = [SPACING[1], SPACING[2]]
        ds.RescaleSlope, ds.RescaleIntercept, ds.RescaleType = 1, intercept, "MHU"
        ds.PixelData = (voxels[k].astype(np.int32) - intercept).astype("<u2").tobytes()
        path = folder / f"s{k:03d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    if shuffle:
        random.Random(7).shuffle(paths)
    return paths


def write_multiframe(path: Path, voxels: np.ndarray, *, intercept: int = -1000) -> Path:
    """One DICOS-like multi-frame instance with per-frame positions."""
    sop = generate_uid()
    ds = Dataset()
    ds.file_meta = _meta(DICOSCTImageStorage, sop)
    ds.SOPClassUID, ds.SOPInstanceUID = DICOSCTImageStorage, sop
    ds.SeriesInstanceUID, ds.StudyInstanceUID = generate_uid(), generate_uid()
    _image(ds, voxels.shape[1:])
    ds.NumberOfFrames = voxels.shape[0]
    shared = Dataset()
    pm = Dataset()
    pm.PixelSpacing = [SPACING[1], SPACING[2]]
    shared.PixelMeasuresSequence = Sequence([pm])
    po = Dataset()
    po.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    shared.PlaneOrientationSequence = Sequence([po])
    pvt = Dataset()
    pvt.RescaleSlope, pvt.RescaleIntercept, pvt.RescaleType = 1, intercept, "MHU"
    shared.PixelValueTransformationSequence = Sequence([pvt])
    ds.SharedFunctionalGroupsSequence = Sequence([shared])
    frames = []
    for k in range(voxels.shape[0]):
        item, pp = Dataset(), Dataset()
        pp.ImagePositionPatient = [0, 0, k * SPACING[0]]
        item.PlanePositionSequence = Sequence([pp])
        frames.append(item)
    ds.PerFrameFunctionalGroupsSequence = Sequence(frames)
    ds.PixelData = (voxels.astype(np.int32) - intercept).astype("<u2").tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


@pytest.fixture
def voxels() -> np.ndarray:
    """(z, y, x) = (6, 5, 7) MHU values, all distinct, with one bright marker voxel."""
    v = (np.arange(6 * 5 * 7, dtype=np.int16).reshape(6, 5, 7) * 3).astype(np.int16)
    v[4, 1, 5] = 9000  # x=5, y=1, z=4
    return v


@pytest.fixture
def classic(tmp_path, voxels) -> tuple[SeriesVolume, SliceStore]:
    vol = load_volume(write_classic(tmp_path / "ct", voxels))
    store = SliceStore(vol)
    assert store.gather() == voxels.shape[0]
    return vol, store


def test_gather_keeps_one_file_per_slice_series_as_compact_int16(classic, voxels):
    vol, store = classic
    assert store.views == 0
    assert store.nbytes == voxels.size * 2  # stored size, not float32
    for info in vol.slices:
        values, slope, intercept = store.entry(info)
        assert values.dtype == np.int16 and (slope, intercept) == (1.0, 0.0)
        assert not values.flags.writeable


def test_multiframe_slices_stay_zero_copy_views(tmp_path, voxels):
    vol = load_volume(write_multiframe(tmp_path / "dicos.dcm", voxels))
    store = SliceStore(vol, view_min_frames=4)
    store.gather()
    assert store.views == voxels.shape[0] and store.nbytes == 0
    values, slope, intercept = store.entry(vol.slices[2])
    assert isinstance(values, np.memmap)
    assert (slope, intercept) == (1.0, -1000.0)
    np.testing.assert_array_equal(store.reslice(vol.slices, "coronal", 1), voxels[:, 1, :])


def test_coronal_and_sagittal_put_a_known_voxel_in_the_right_place(classic, voxels):
    vol, store = classic
    slices = vol.slices
    coronal = store.reslice(slices, "coronal", 1)  # y = 1: image (z, x)
    sagittal = store.reslice(slices, "sagittal", 5)  # x = 5: image (z, y)
    assert coronal.shape == (6, 7) and sagittal.shape == (6, 5)
    assert coronal[4, 5] == 9000 and sagittal[4, 1] == 9000
    np.testing.assert_array_equal(coronal, voxels[:, 1, :].astype(np.float32))
    np.testing.assert_array_equal(sagittal, voxels[:, :, 5].astype(np.float32))
    assert store.value_at(slices, 4, 1, 5) == 9000


def test_slabs_mip_minip_and_average_on_every_plane(classic, voxels):
    vol, store = classic
    slices = vol.slices
    v = voxels.astype(np.float32)
    # Axial slab of 3 centred on z=2: slices 1..3.
    np.testing.assert_array_equal(store.reslice(slices, "axial", 2, 3, "mip"), v[1:4].max(axis=0))
    np.testing.assert_array_equal(store.reslice(slices, "axial", 2, 3, "minip"), v[1:4].min(axis=0))
    np.testing.assert_allclose(store.reslice(slices, "axial", 2, 3, "avg"), v[1:4].mean(axis=0), rtol=1e-6)
    # Coronal slab of 3 rows around y=1 (rows 0..2), sagittal of 5 columns clipped at the edge.
    np.testing.assert_array_equal(store.reslice(slices, "coronal", 1, 3, "mip"), v[:, 0:3, :].max(axis=1))
    np.testing.assert_allclose(store.reslice(slices, "coronal", 1, 3, "avg"), v[:, 0:3, :].mean(axis=1), rtol=1e-6)
    np.testing.assert_array_equal(store.reslice(slices, "sagittal", 6, 5, "minip"), v[:, :, 4:7].min(axis=2))
    with pytest.raises(ValueError):
        store.reslice(slices, "axial", 0, 3, "median")


def test_slabs_apply_a_rescale_that_differs_per_slice(tmp_path, voxels):
    """A float-slope series cannot become int16: stored values stay with their rescale."""
    paths = write_classic(tmp_path / "ct", voxels, shuffle=False)
    import pydicom

    for k, path in enumerate(paths):
        ds = pydicom.dcmread(path)
        ds.RescaleSlope = 0.5 if k % 2 else 1.0
        ds.save_as(path)
    vol = load_volume(paths)
    store = SliceStore(vol)
    store.gather()
    expected = np.stack([vol.slice(k) for k in range(vol.n_slices)])
    np.testing.assert_allclose(store.reslice(vol.slices, "axial", 2, 3, "mip"), expected[1:4].max(axis=0))
    np.testing.assert_allclose(store.reslice(vol.slices, "coronal", 3), expected[:, 3, :])


def test_slices_not_gathered_yet_are_nan_rows(tmp_path, voxels):
    paths = sorted(write_classic(tmp_path / "ct", voxels, shuffle=False))
    vol = SeriesVolume()
    vol.add_files(paths[:3])
    store = SliceStore(vol)
    store.gather()
    vol.add_files(paths[3:])  # arrived after gathering
    coronal = store.reslice(vol.slices, "coronal", 0)
    assert np.isnan(coronal[3:]).all() and np.isfinite(coronal[:3]).all()
    assert not store.complete_for(vol.slices)
    store.gather()
    assert store.complete_for(vol.slices)


def test_the_store_stays_within_its_memory_budget(tmp_path, voxels):
    vol = load_volume(write_classic(tmp_path / "ct", voxels))
    per_slice = voxels[0].nbytes
    store = SliceStore(vol, max_bytes=3 * per_slice + 1)
    assert store.gather() == 3
    assert store.over_budget and store.nbytes == 3 * per_slice
    assert store.complete_for(vol.slices)  # nothing more will come: do not ask again
    coronal = store.reslice(vol.slices, "coronal", 0)
    assert np.isfinite(coronal[:3]).all() and np.isnan(coronal[3:]).all()


def test_slab_range_is_centred_and_clipped():
    assert slab_range(5, 1, 10) == (5, 6)
    assert slab_range(5, 3, 10) == (4, 7)
    assert slab_range(0, 5, 10) == (0, 3)
    assert slab_range(9, 4, 10) == (8, 10)
    assert slab_range(20, 3, 10) == (9, 10)


def test_projection_at_0_and_90_degrees_is_the_mip_and_mean_along_the_axes():
    rng = np.random.default_rng(1)
    vol = rng.integers(0, 3000, size=(9, 6, 13)).astype(np.int16)  # z, y, x
    proj = Projector(vol, (1.5, 1.0, 1.2))
    at0 = proj.project(0.0, "mip")
    np.testing.assert_array_equal(at0.image, vol.max(axis=0))  # along z: image (y, x)
    at90 = proj.project(90.0, "mip")
    np.testing.assert_array_equal(at90.image, vol.max(axis=2).T)  # along x: image (y, z)
    np.testing.assert_allclose(proj.project(0.0, "avg").image, vol.mean(axis=0), rtol=1e-5)
    np.testing.assert_allclose(proj.project(90.0, "avg").image, vol.mean(axis=2).T, rtol=1e-5)
    # Seen from behind, the same picture mirrored.
    np.testing.assert_array_equal(proj.project(180.0, "mip").image, vol.max(axis=0)[:, ::-1])
    assert at0.bin_mm == pytest.approx(1.2) and at90.bin_mm == pytest.approx(1.5)
    assert at0.width_mm == pytest.approx(13 * 1.2) and at0.height_mm == pytest.approx(6.0)


def test_projection_places_a_point_where_u_of_says():
    vol = np.zeros((20, 3, 20), dtype=np.int16)
    vol[15, 1, 4] = 5000  # z=15, x=4
    proj = Projector(vol, (1.0, 1.0, 1.0))
    for angle in (0.0, 30.0, 45.0, 60.0, 90.0, 135.0, 250.0):
        image = proj.project(angle, "mip", with_peak=False)
        col = int(np.argmax(image.image[1]))
        u = proj.u_of(4.5, 15.5, angle)  # the voxel centre in mm
        assert image.left_mm + col * image.bin_mm <= u + image.bin_mm
        assert u - image.bin_mm <= image.left_mm + (col + 1) * image.bin_mm, angle
        assert image.image[1].max() == 5000  # never lost between bins


def test_average_projection_can_report_the_peak_along_each_ray():
    vol = np.zeros((4, 2, 3), dtype=np.int16)
    vol[1, 0, 2] = 8000
    out = Projector(vol, (1.0, 1.0, 1.0)).project(0.0, "avg", with_peak=True)
    assert out.peak is not None and out.peak[0, 2] == 8000
    assert out.image[0, 2] == pytest.approx(2000.0)


def test_downsampled_keeps_thin_dense_things(tmp_path):
    voxels = np.zeros((8, 12, 12), dtype=np.int16)
    voxels[3, 5, 7] = 9000  # one voxel of metal
    vol = load_volume(write_classic(tmp_path / "ct", voxels))
    store = SliceStore(vol)
    store.gather()
    small, spacing = store.downsampled(vol.slices, max_dim=6)
    assert small.shape == (4, 6, 6) and small.dtype == np.int16
    assert spacing == pytest.approx((4.0, 1.0, 1.6))
    assert small.max() == 9000


def test_threat_boxes_from_plain_mappings():
    boxes = as_threat_boxes([
        {"base": [2, 3, 4], "extent": [5, 6, 7], "label": "EXPLOSIVE", "source": "machine"},
        ThreatBox((0, 0, 0), (1, 1, 1), source="operator", flag="no_threat"),
    ])
    assert boxes[0].center == (4.0, 5.5, 7.0)
    assert boxes[0].spans(2, 4) and boxes[0].spans(2, 10) and not boxes[0].spans(2, 11)
    assert boxes[0].interval(0) == (2, 7)
    assert boxes[1].flag == "no_threat" and boxes[1].source == "operator"
    assert ThreatBox.from_any({"base": [0, 0, 0], "extent": [1, 1, 1], "flag": "threat"}).flag == "THREAT"
    with pytest.raises(ValueError):
        ThreatBox.from_any({"base": [0, 0], "extent": [1, 1, 1]})
    with pytest.raises(ValueError):
        ThreatBox.from_any({"base": [0, 0, 0], "extent": [1, 1, 1], "source": "dog"})


def test_distance_and_roi_statistics_on_known_geometry():
    assert distance_mm((0.0, 0.0), (30.0, 40.0)) == 50.0
    image = np.zeros((10, 10), dtype=np.float32)
    image[2:4, 3:7] = [[10, 20, 30, 40], [50, 60, 70, 80]]
    stats = roi_stats(image, (2, 4), (7, 3), (0.5, 2.0))  # corners in any order
    assert stats is not None
    assert stats.mean == 45.0 and stats.min == 10.0 and stats.max == 80.0
    assert stats.std == pytest.approx(np.std([10, 20, 30, 40, 50, 60, 70, 80]))
    assert stats.area_mm2 == 8 * 0.5 * 2.0 and stats.pixels == 8
    assert roi_stats(image, (20, 30), (0, 3), (1, 1)) is None  # outside
    image[2, 3] = np.nan  # not received yet: left out of the numbers, not of the area
    assert roi_stats(image, (2, 4), (3, 7), (1, 1)).pixels == 7


def test_mass_center_finds_the_bag_not_the_field_of_view():
    image = np.zeros((200, 200), dtype=np.float32)
    image[150:190, 20:120] = 1000
    row, col = mass_center(image, 100.0)
    assert 160 <= row <= 180 and 60 <= col <= 80
    assert mass_center(np.zeros((10, 10)), 1.0) is None
