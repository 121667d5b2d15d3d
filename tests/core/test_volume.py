"""Tests for station.core.imaging.volume: geometric ordering, rescale, lazy pixels, growth.

Series are synthesised here with pydicom (not with station.core.synth.bags) so these tests
pin the volume model against hand-checked voxels and positions.
"""

from __future__ import annotations

import random
import threading
import tracemalloc
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.pixels import pack_bits
from pydicom.sequence import Sequence
from pydicom.uid import (
    CTImageStorage,
    DICOSCTImageStorage,
    DeflatedExplicitVRLittleEndian,
    DigitalXRayImageStorageForPresentation,
    EnhancedCTImageStorage,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    RLELossless,
    generate_uid,
)

from station.core.imaging.volume import SeriesVolume, SliceInfo, VolumeError, group_series, load_volume

AXIAL = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
SAGITTAL = (0.0, 1.0, 0.0, 0.0, 0.0, -1.0)  # normal = row x col = (-1, 0, 0)


# --------------------------------------------------------------------------- builders


def _base(sop_class: str, series_uid: str, sop_uid: str | None = None, ts: str = ExplicitVRLittleEndian) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ts
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.file_meta.MediaStorageSOPInstanceUID = sop_uid or generate_uid()
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = "1.2.3.4"
    ds.SeriesInstanceUID = series_uid
    ds.PatientID = "BAG-1"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1
    return ds


def write_ct_slice(
    path: Path,
    pixels: np.ndarray,
    *,
    series_uid: str,
    position: tuple[float, float, float] | None,
    orientation: tuple[float, ...] | None = AXIAL,
    instance_number: int | None = 1,
    slope: float | None = None,
    intercept: float | None = None,
    thickness: float | None = 1.0,
    spacing: tuple[float, float] = (0.5, 0.75),
    window: tuple[float, float] | None = None,
    sop_uid: str | None = None,
    sop_class: str = CTImageStorage,
    modality: str = "CT",
    ts: str = ExplicitVRLittleEndian,
) -> Path:
    """One classic single-frame slice holding ``pixels`` (int16 or uint16) verbatim."""
    ds = _base(sop_class, series_uid, sop_uid, ts)
    ds.Modality = modality
    if instance_number is not None:
        ds.InstanceNumber = instance_number
    if position is not None:
        ds.ImagePositionPatient = list(position)
    if orientation is not None:
        ds.ImageOrientationPatient = list(orientation)
    ds.PixelSpacing = list(spacing)
    if thickness is not None:
        ds.SliceThickness = thickness
    if slope is not None:
        ds.RescaleSlope = slope
        ds.RescaleIntercept = intercept or 0
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = window
    ds.Rows, ds.Columns = pixels.shape
    ds.PixelRepresentation = 1 if pixels.dtype.kind == "i" else 0
    ds.PixelData = pixels.astype(pixels.dtype.newbyteorder("<")).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


def write_multiframe(
    path: Path,
    frames: np.ndarray,
    positions: list[tuple[float, float, float]],
    *,
    series_uid: str,
    sop_class: str = DICOSCTImageStorage,
    orientation: tuple[float, ...] = AXIAL,
    slope: float = 1.0,
    intercept: float = 0.0,
    per_frame_rescale: list[tuple[float, float]] | None = None,
    rescale_type: str = "MHU",
    window: tuple[float, float] | None = (1000.0, 4000.0),
    compress: str | None = None,
    bot: bool = True,
) -> Path:
    """An Enhanced-CT-style multi-frame (DICOS CT by default) with per-frame positions."""
    ds = _base(sop_class, series_uid)
    ds.Modality = "CT"
    ds.InstanceNumber = 1
    ds.NumberOfFrames = len(frames)
    ds.Rows, ds.Columns = frames.shape[1:]
    ds.PixelRepresentation = 1 if frames.dtype.kind == "i" else 0

    shared = Dataset()
    measures = Dataset()
    measures.PixelSpacing = [0.8, 0.8]
    measures.SliceThickness = 1.0
    shared.PixelMeasuresSequence = Sequence([measures])
    plane = Dataset()
    plane.ImageOrientationPatient = list(orientation)
    shared.PlaneOrientationSequence = Sequence([plane])
    transform = Dataset()
    transform.RescaleSlope = slope
    transform.RescaleIntercept = intercept
    transform.RescaleType = rescale_type
    shared.PixelValueTransformationSequence = Sequence([transform])
    if window is not None:
        voi = Dataset()
        voi.WindowCenter, voi.WindowWidth = window
        shared.FrameVOILUTSequence = Sequence([voi])
    ds.SharedFunctionalGroupsSequence = Sequence([shared])

    items = []
    for i, pos in enumerate(positions):
        item = Dataset()
        pp = Dataset()
        pp.ImagePositionPatient = list(pos)
        item.PlanePositionSequence = Sequence([pp])
        if per_frame_rescale is not None:
            t = Dataset()
            t.RescaleSlope, t.RescaleIntercept = per_frame_rescale[i]
            t.RescaleType = rescale_type
            item.PixelValueTransformationSequence = Sequence([t])
        items.append(item)
    ds.PerFrameFunctionalGroupsSequence = Sequence(items)

    ds.PixelData = frames.tobytes()
    if compress is not None:
        ds.compress(compress, frames)
        if not bot:
            encoded = [get_frame_bytes(ds, i) for i in range(len(frames))]
            ds.PixelData = encapsulate(encoded, has_bot=False)
    ds.save_as(path, enforce_file_format=True)
    return path


def get_frame_bytes(ds: Dataset, index: int) -> bytes:
    from pydicom.encaps import get_frame

    return get_frame(ds.PixelData, index, number_of_frames=int(ds.NumberOfFrames))


def make_series(
    folder: Path,
    n: int,
    *,
    z0: float = 50.0,
    dz: float = -5.0,
    shape: tuple[int, int] = (6, 7),
    series_uid: str | None = None,
    **kwargs,
) -> tuple[list[Path], np.ndarray, list[float]]:
    """n classic slices with descending z (file i at z0 + i*dz) and unique voxels.

    Returns the paths, the stored pixels in file order, and the z of each file.
    """
    folder.mkdir(parents=True, exist_ok=True)
    series_uid = series_uid or generate_uid()
    rng = np.random.default_rng(7)
    pixels = rng.integers(-1000, 3000, size=(n, *shape), dtype=np.int16)
    instance_numbers = list(range(1, n + 1))
    random.Random(3).shuffle(instance_numbers)  # InstanceNumber must not decide the order
    paths, zs = [], []
    for i in range(n):
        z = z0 + i * dz
        paths.append(
            write_ct_slice(
                folder / f"f{i:03d}.dcm",
                pixels[i],
                series_uid=series_uid,
                position=(-10.0, -20.0, z),
                instance_number=instance_numbers[i],
                **kwargs,
            )
        )
        zs.append(z)
    return paths, pixels, zs


# --------------------------------------------------------------------------- ordering


def test_shuffled_descending_positions_come_out_ascending(tmp_path):
    paths, pixels, zs = make_series(tmp_path, 8)
    shuffled = paths[:]
    random.Random(11).shuffle(shuffled)

    vol = SeriesVolume()
    assert vol.add_files(shuffled) == 8

    order = np.argsort(zs)  # files were written with descending z
    assert [s.path for s in vol.slices] == [paths[i] for i in order]
    assert [s.position_mm[2] for s in vol.slices] == sorted(zs)
    arr = vol.array()
    assert arr.dtype == np.float32 and arr.shape == (8, 6, 7) == vol.shape
    np.testing.assert_array_equal(arr, pixels[order].astype(np.float32))
    for k in range(8):
        np.testing.assert_array_equal(vol.slice(k), arr[k])
    assert vol.spacing_mm == (5.0, 0.5, 0.75)
    assert vol.origin_mm == (-10.0, -20.0, min(zs))
    np.testing.assert_allclose(vol.direction, np.eye(3))
    assert vol.modality == "CT" and vol.sop_class_uid == CTImageStorage


def test_order_follows_the_normal_not_z(tmp_path):
    """Sagittal slices: normal (-1,0,0), so ascending along it means x descending."""
    uid = generate_uid()
    xs = [3.0, -6.0, 0.0, 9.0, -3.0]
    pix = {}
    for i, x in enumerate(xs):
        pix[x] = np.full((4, 5), i, dtype=np.int16)
        # z identical for all, instance numbers ascending with x: both would mislead.
        write_ct_slice(
            tmp_path / f"s{i}.dcm", pix[x], series_uid=uid, position=(x, 0.0, 0.0),
            orientation=SAGITTAL, instance_number=int(x) + 10,
        )
    vol = load_volume(tmp_path)
    got_x = [s.position_mm[0] for s in vol.slices]
    assert got_x == sorted(xs, reverse=True)
    np.testing.assert_array_equal(vol.array(), np.stack([pix[x] for x in got_x]).astype(np.float32))
    np.testing.assert_allclose(vol.direction[2], [-1.0, 0.0, 0.0])
    assert vol.spacing_mm[0] == pytest.approx(3.0)
    assert vol.origin_mm == (9.0, 0.0, 0.0)
    assert list(vol.positions_along_normal_mm) == sorted(-x for x in xs)


def test_rescale_slope_and_intercept(tmp_path):
    paths, pixels, zs = make_series(tmp_path, 4, slope=2, intercept=-1024, window=(40, 400))
    vol = load_volume(paths)
    order = np.argsort(zs)
    expected = pixels[order].astype(np.float32) * 2 - 1024
    np.testing.assert_array_equal(vol.array(), expected)
    np.testing.assert_array_equal(vol.slice(1), expected[1])
    np.testing.assert_array_equal(vol.raw_slice(1), pixels[order][1])
    assert vol.rescale_type == "HU"  # CT without RescaleType is HU by definition
    assert vol.default_window == (40.0, 400.0)
    assert all(s.rescale_slope == 2.0 and s.rescale_intercept == -1024.0 for s in vol.slices)


def test_spacing_comes_from_positions_not_slice_thickness(tmp_path):
    # Overlapping reconstruction: 5 mm thick slices every 2.5 mm.
    paths, _, _ = make_series(tmp_path / "a", 5, z0=0.0, dz=2.5, thickness=5.0)
    vol = load_volume(paths)
    assert vol.spacing_mm[0] == pytest.approx(2.5)
    assert vol.uniform_spacing

    one = load_volume(paths[:1])
    assert one.spacing_mm[0] == 5.0  # one slice: only the thickness is left

    # A missing slice: median still gives the true step, and the gap is reported.
    gap = load_volume(paths[:2] + paths[3:])
    assert gap.spacing_mm[0] == pytest.approx(2.5)
    assert not gap.uniform_spacing


def test_projection_image_without_position_is_one_slice(tmp_path):
    ds_path = write_ct_slice(
        tmp_path / "dx.dcm", np.arange(12, dtype=np.uint16).reshape(3, 4), series_uid=generate_uid(),
        position=None, orientation=None, thickness=None, sop_class=DigitalXRayImageStorageForPresentation,
        modality="DX",
    )
    vol = load_volume([ds_path])
    assert vol.shape == (1, 3, 4)
    assert vol.slices[0].position_mm is None
    np.testing.assert_array_equal(vol.slice(0), np.arange(12, dtype=np.float32).reshape(3, 4))
    assert vol.origin_mm == (0.0, 0.0, 0.0)
    np.testing.assert_allclose(vol.direction, np.eye(3))
    assert vol.rescale_type == ""


# --------------------------------------------------------------------------- multi-frame


@pytest.mark.parametrize("sop_class", [DICOSCTImageStorage, EnhancedCTImageStorage])
def test_multiframe_with_reverse_positions(tmp_path, sop_class):
    n = 6
    frames = (np.arange(n * 5 * 4, dtype=np.uint16).reshape(n, 5, 4) * 3)
    positions = [(0.0, 0.0, 100.0 - 1.25 * i) for i in range(n)]  # reverse order
    per_frame = [(1.0 + i, -100.0 * i) for i in range(n)]
    path = write_multiframe(
        tmp_path / "mf.dcm", frames, positions, series_uid=generate_uid(), sop_class=sop_class,
        per_frame_rescale=per_frame,
    )
    vol = SeriesVolume()
    assert vol.add_file(path) == n
    assert vol.shape == (n, 5, 4)
    assert [s.frame_index for s in vol.slices] == list(range(n))[::-1]
    assert vol.spacing_mm == pytest.approx((1.25, 0.8, 0.8))
    assert vol.origin_mm == (0.0, 0.0, 100.0 - 1.25 * (n - 1))
    assert vol.rescale_type == "MHU"
    assert vol.default_window == (1000.0, 4000.0)
    assert vol.sop_class_uid == sop_class

    expected = np.stack(
        [frames[i].astype(np.float32) * per_frame[i][0] + per_frame[i][1] for i in reversed(range(n))]
    )
    np.testing.assert_array_equal(vol.array(), expected)
    assert isinstance(vol.raw_slice(0), np.memmap)


def test_multiframe_shared_rescale_only(tmp_path):
    frames = np.arange(3 * 4 * 4, dtype=np.int16).reshape(3, 4, 4)
    path = write_multiframe(
        tmp_path / "mf.dcm", frames, [(0, 0, 2.0), (0, 0, 0.0), (0, 0, 1.0)],
        series_uid=generate_uid(), slope=2.0, intercept=-1024.0,
    )
    vol = load_volume([path])
    np.testing.assert_array_equal(vol.array(), frames[[1, 2, 0]].astype(np.float32) * 2 - 1024)


@pytest.mark.parametrize("bot", [True, False])
def test_rle_multiframe_decodes_to_same_voxels(tmp_path, bot):
    n = 5
    rng = np.random.default_rng(1)
    frames = rng.integers(-2000, 2000, size=(n, 8, 9), dtype=np.int16)
    positions = [(0.0, 0.0, -2.0 * i) for i in range(n)]
    uid = generate_uid()
    plain = write_multiframe(tmp_path / "plain.dcm", frames, positions, series_uid=uid, slope=2, intercept=-1024)
    rle = write_multiframe(
        tmp_path / "rle.dcm", frames, positions, series_uid=uid, slope=2, intercept=-1024,
        compress=RLELossless, bot=bot,
    )
    assert pydicom.dcmread(rle).file_meta.TransferSyntaxUID == RLELossless

    a = load_volume([plain])
    b = load_volume([rle])
    np.testing.assert_array_equal(b.array(), a.array())
    # Per-frame random access too, not only the sequential whole-volume path.
    for k in (3, 0, 4):
        np.testing.assert_array_equal(b.slice(k), a.slice(k))
    assert not isinstance(b.raw_slice(0), np.memmap)
    assert b.cache_bytes == 3 * 8 * 9 * 2  # frames 3, 0, 4 (raw_slice(0) hit the cache)


def test_jpeg2000_classic_slices(tmp_path):
    uid = generate_uid()
    rng = np.random.default_rng(5)
    pix = rng.integers(0, 4000, size=(3, 64, 64), dtype=np.uint16)
    for i in range(3):
        ds = _base(CTImageStorage, uid)
        ds.Modality = "CT"
        ds.ImagePositionPatient = [0, 0, float(i)]
        ds.ImageOrientationPatient = list(AXIAL)
        ds.PixelSpacing = [1, 1]
        ds.Rows = ds.Columns = 64
        ds.PixelRepresentation = 0
        ds.BitsStored = 12
        ds.HighBit = 11
        ds.RescaleSlope, ds.RescaleIntercept = 1, -1024
        ds.PixelData = pix[i].tobytes()
        ds.compress(JPEG2000Lossless, pix[i])
        ds.save_as(tmp_path / f"j{i}.dcm", enforce_file_format=True)
    vol = load_volume(tmp_path)
    np.testing.assert_array_equal(vol.array(), pix.astype(np.float32) - 1024)


def test_unused_high_bits_are_ignored_like_pydicom(tmp_path):
    stored = np.array([[1, 2047], [-2048, -1]], dtype=np.int16)  # 12-bit signed values
    junk = (stored.view(np.uint16) & 0x0FFF) | 0xA000  # garbage above bit 11
    ds = _base(CTImageStorage, generate_uid())
    ds.Modality = "CT"
    ds.ImagePositionPatient = [0, 0, 0]
    ds.ImageOrientationPatient = list(AXIAL)
    ds.Rows = ds.Columns = 2
    ds.BitsStored, ds.HighBit = 12, 11
    ds.PixelData = junk.astype("<u2").tobytes()
    ds.save_as(tmp_path / "b.dcm", enforce_file_format=True)
    vol = load_volume([tmp_path / "b.dcm"])
    np.testing.assert_array_equal(vol.slice(0), stored.astype(np.float32))
    np.testing.assert_array_equal(vol.slice(0), pydicom.dcmread(tmp_path / "b.dcm").pixel_array)


# --------------------------------------------------------------------------- series handling


def test_group_series_separates_a_mixed_folder(tmp_path):
    a, _, _ = make_series(tmp_path, 3, series_uid="1.2.3.100", z0=0, dz=1)
    b_uid = "1.2.3.200"
    b = [
        write_ct_slice(tmp_path / f"b{i}.dcm", np.zeros((6, 7), np.int16), series_uid=b_uid, position=(0, 0, i))
        for i in range(2)
    ]
    # A localizer filed under series A's UID: other orientation and size.
    loc = write_ct_slice(
        tmp_path / "loc.dcm", np.zeros((8, 8), np.int16), series_uid="1.2.3.100", position=(0, 0, 0),
        orientation=SAGITTAL,
    )
    (tmp_path / "notes.txt").write_text("not DICOM")
    groups = group_series(tmp_path)
    assert groups == {"1.2.3.100": sorted(a), b_uid: sorted(b), "1.2.3.100#2": [loc]}

    with pytest.raises(VolumeError, match="3 series"):
        load_volume(tmp_path)
    assert load_volume(groups[b_uid]).n_slices == 2


def test_file_of_another_series_is_rejected(tmp_path):
    paths, _, _ = make_series(tmp_path / "a", 2, series_uid="1.2.3.1")
    other = write_ct_slice(
        tmp_path / "intruder.dcm", np.zeros((6, 7), np.int16), series_uid="1.2.3.2", position=(0, 0, 9)
    )
    vol = SeriesVolume("1.2.3.1")
    vol.add_files(paths)
    with pytest.raises(VolumeError, match="intruder.dcm") as err:
        vol.add_file(other)
    assert "1.2.3.2" in str(err.value)
    assert vol.n_slices == 2

    # Without a UID given, the first file decides the series.
    vol2 = SeriesVolume()
    vol2.add_file(paths[0])
    with pytest.raises(VolumeError, match="intruder.dcm"):
        vol2.add_file(other)


def test_incompatible_geometry_is_rejected(tmp_path):
    uid = generate_uid()
    first = write_ct_slice(tmp_path / "a.dcm", np.zeros((6, 7), np.int16), series_uid=uid, position=(0, 0, 0))
    small = write_ct_slice(tmp_path / "small.dcm", np.zeros((5, 7), np.int16), series_uid=uid, position=(0, 0, 1))
    tilted = write_ct_slice(
        tmp_path / "tilted.dcm", np.zeros((6, 7), np.int16), series_uid=uid, position=(0, 0, 2),
        orientation=SAGITTAL,
    )
    vol = SeriesVolume()
    vol.add_file(first)
    with pytest.raises(VolumeError, match="small.dcm.*5x7"):
        vol.add_file(small)
    with pytest.raises(VolumeError, match="tilted.dcm.*orientation"):
        vol.add_file(tilted)
    with pytest.raises(VolumeError, match="notes.txt"):
        (tmp_path / "notes.txt").write_text("x")
        vol.add_file(tmp_path / "notes.txt")
    assert vol.n_slices == 1 and vol.version == 1


def test_growing_volume(tmp_path):
    paths, pixels, zs = make_series(tmp_path, 10)
    random.Random(5).shuffle(paths)
    vol = SeriesVolume()
    assert (vol.n_slices, vol.version, vol.shape) == (0, 0, (0, 0, 0))
    assert vol.add_files(paths[:5]) == 5
    assert (vol.n_slices, vol.version) == (5, 5)
    first_half = vol.array()
    assert first_half.shape == (5, 6, 7)
    assert vol.add_file(paths[0]) == 0  # duplicate SOPInstanceUID: ignored, no change
    assert vol.version == 5
    assert vol.add_files(paths[5:]) == 5
    assert (vol.n_slices, vol.version) == (10, 10)
    np.testing.assert_array_equal(vol.array(), pixels[np.argsort(zs)].astype(np.float32))
    assert vol.nearest_slice(min(zs) + 5.1) == 1


def test_readers_see_consistent_snapshots_while_growing(tmp_path):
    paths, pixels, zs = make_series(tmp_path, 30, shape=(16, 16))
    by_z = {z: pixels[i] for i, z in enumerate(zs)}
    vol = SeriesVolume()
    errors: list[BaseException] = []
    done = threading.Event()

    def reader() -> None:
        try:
            while not done.is_set():
                slices = vol.slices
                for k in range(len(slices)):
                    got = vol.slice(k)
                    # Index k may have moved on by now; positions are ascending anyway.
                    assert got.shape == (16, 16)
                z = [s.position_mm[2] for s in slices]
                assert z == sorted(z)
        except BaseException as exc:  # noqa: BLE001 - reported to the main thread
            errors.append(exc)

    t = threading.Thread(target=reader)
    t.start()
    try:
        for p in paths:
            vol.add_file(p)
    finally:
        done.set()
        t.join(5)
    assert not t.is_alive() and not errors
    for k, s in enumerate(vol.slices):
        np.testing.assert_array_equal(vol.slice(k), by_z[s.position_mm[2]])


# --------------------------------------------------------------------------- vendor quirks


def test_vendor_quirks_load(tmp_path):
    """(0002,0004) in the file meta, unknown tags, a UID with a leading-zero component."""
    uid = "1.2.826.0.1.3680043.2.0999.1"  # "0999": invalid, but real toolkits write it
    paths = []
    for i in range(2):
        ds = _base(DICOSCTImageStorage, uid, sop_uid=f"1.2.826.0.1.3680043.2.0999.2.0{i + 1}")
        ds.file_meta.add_new(0x00020004, "CS", "V03")
        ds.Modality = "CT"
        ds.add_new(0x00082108, "CS", "X")
        ds.add_new(0x43000902, "LO", "vendor")
        ds.add_new(0x00091010, "LO", "private")
        ds.ImagePositionPatient = [0, 0, float(1 - i)]
        ds.ImageOrientationPatient = list(AXIAL)
        ds.PixelSpacing = [1, 1]
        ds.Rows, ds.Columns = 2, 3
        ds.PixelData = np.full((2, 3), i, np.int16).tobytes()
        paths.append(tmp_path / f"q{i}.dcm")
        ds.save_as(paths[-1], enforce_file_format=True)
    assert 0x00020004 in pydicom.dcmread(paths[0]).file_meta
    vol = load_volume(paths)
    assert vol.series_uid == uid
    np.testing.assert_array_equal(vol.array()[:, 0, 0], [1.0, 0.0])
    assert vol.rescale_type == ""  # DICOS may mean MHU: no HU assumed without RescaleType


def test_implicit_vr_file_is_memory_mapped(tmp_path):
    pix = np.arange(20, dtype=np.int16).reshape(4, 5)
    p = write_ct_slice(tmp_path / "i.dcm", pix, series_uid=generate_uid(), position=(0, 0, 0), ts=ImplicitVRLittleEndian)
    vol = load_volume([p])
    assert isinstance(vol.raw_slice(0), np.memmap)
    np.testing.assert_array_equal(vol.slice(0), pix)


def test_other_encodings(tmp_path):
    """Big endian is still memory-mapped (byte order in the dtype); deflated and 1-bit
    data go through pydicom."""
    pix = np.arange(-10, 20, dtype=np.int16).reshape(5, 6)

    def slice_ds(ts: str) -> Dataset:
        ds = _base(CTImageStorage, generate_uid(), ts=ts)
        ds.Modality = "CT"
        ds.Rows, ds.Columns = 5, 6
        ds.ImagePositionPatient = [0, 0, 0]
        ds.ImageOrientationPatient = list(AXIAL)
        return ds

    ds = slice_ds(ExplicitVRBigEndian)
    ds.RescaleSlope, ds.RescaleIntercept = 2, -1
    ds.PixelData = pix.astype(">i2").tobytes()
    ds.save_as(tmp_path / "be.dcm", enforce_file_format=True, little_endian=False, implicit_vr=False)
    vol = load_volume([tmp_path / "be.dcm"])
    assert isinstance(vol.raw_slice(0), np.memmap)
    np.testing.assert_array_equal(vol.slice(0), pix * 2 - 1)

    ds = slice_ds(DeflatedExplicitVRLittleEndian)
    ds.PixelData = pix.tobytes()
    ds.save_as(tmp_path / "deflated.dcm", enforce_file_format=True)
    np.testing.assert_array_equal(load_volume([tmp_path / "deflated.dcm"]).slice(0), pix)

    bits = (np.arange(32).reshape(4, 8) % 3 == 0).astype(np.uint8)
    ds = _base("1.2.840.10008.5.1.4.1.1.7", generate_uid())
    ds.Modality = "OT"
    ds.Rows, ds.Columns = bits.shape
    ds.BitsAllocated = ds.BitsStored = 1
    ds.HighBit = ds.PixelRepresentation = 0
    ds.PixelData = pack_bits(bits)
    ds.save_as(tmp_path / "bits.dcm", enforce_file_format=True)
    np.testing.assert_array_equal(load_volume([tmp_path / "bits.dcm"]).slice(0), bits)


# --------------------------------------------------------------------------- lazy pixels


def test_uncompressed_pixels_are_memory_mapped_and_bounded(tmp_path):
    paths, pixels, zs = make_series(tmp_path, 6)
    vol = load_volume(paths, max_open_maps=2)
    raws = [vol.raw_slice(k) for k in range(6)]
    assert all(isinstance(r, np.memmap) for r in raws)
    assert not raws[0].flags.writeable
    assert len(vol._cache._maps) == 2  # descriptors bounded; views handed out stay valid
    np.testing.assert_array_equal(raws[0], pixels[np.argsort(zs)][0])


def test_decoded_frame_cache_is_bounded_by_bytes(tmp_path):
    n = 6
    frames = np.arange(n * 10 * 10, dtype=np.int16).reshape(n, 10, 10)
    path = write_multiframe(
        tmp_path / "rle.dcm", frames, [(0, 0, float(i)) for i in range(n)], series_uid=generate_uid(),
        compress=RLELossless,
    )
    vol = load_volume([path], cache_bytes=2 * 200)
    for k in range(n):
        np.testing.assert_array_equal(vol.slice(k), frames[k])
    assert vol.cache_bytes == 400
    vol.array()  # whole-volume reads must not churn the cache
    assert vol.cache_bytes == 400


def test_array_peak_memory_stays_near_result_size(tmp_path):
    paths, _, _ = make_series(tmp_path, 40, shape=(128, 128))
    vol = load_volume(paths)
    tracemalloc.start()
    try:
        arr = vol.array()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak <= 1.5 * arr.nbytes


def test_adding_files_reads_headers_only(tmp_path):
    # Speed is measured by benchmarks, not here: this checks the property that makes
    # adding fast, namely that no pixel data is read or cached until a slice is shown.
    paths, _, _ = make_series(tmp_path, 100, shape=(8, 8))
    vol = SeriesVolume()
    vol.add_files(paths)
    assert vol.n_slices == 100
    assert isinstance(vol.slices[0], SliceInfo)
    assert vol.cache_bytes == 0


# ----------------------------------------------------------------------------- FrameVolume


def _frame_volume(n: int = 4, rows: int = 6, cols: int = 5):
    from station.core.imaging.volume import FrameVolume

    # Slices given in viewing order; positions ascend along the normal (z here).
    slices = [SliceInfo(path=Path("remote", f"1.2.{k}"), frame_index=0, position_mm=(0.0, 0.0, 2.5 * k),
                        instance_number=k + 1, sop_instance_uid=f"1.2.{k}") for k in range(n)]
    return FrameVolume("1.2.3", slices, rows=rows, columns=cols, orientation=(1, 0, 0, 0, 1, 0),
                       pixel_spacing=(0.5, 0.7), modality="CT", rescale_type="MHU")


def test_frame_volume_knows_every_slice_before_any_pixel():
    from station.core.imaging.volume import SliceNotLoaded

    vol = _frame_volume()
    assert vol.shape == (4, 6, 5) and vol.loaded == 0 and not vol.complete
    assert vol.spacing_mm == (2.5, 0.5, 0.7) and vol.rescale_type == "MHU" and vol.modality == "CT"
    assert vol.nearest_slice(5.1) == 2
    with pytest.raises(SliceNotLoaded):
        vol.stored_slice(1)
    with pytest.raises(VolumeError):  # a SliceNotLoaded is a VolumeError for older callers
        vol.slice(vol.slices[3])
    assert np.isnan(vol.array()).all()


def test_frame_volume_put_keeps_whole_numbers_as_int16_and_counts():
    vol = _frame_volume()
    v0 = vol.version
    whole = np.arange(30, dtype=np.float32).reshape(6, 5) - 1000
    fraction = whole + 0.5
    assert vol.put(2, whole) and vol.version == v0 + 1
    assert not vol.put(2, whole)  # once only
    assert vol.put(0, fraction)
    values, slope, intercept = vol.stored_slice(vol.slices[2])
    assert values.dtype == np.int16 and (slope, intercept) == (1.0, 0.0)
    np.testing.assert_array_equal(values, whole)
    assert vol.stored_slice(0)[0].dtype == np.float32
    np.testing.assert_array_equal(vol.slice(0), fraction)
    assert vol.loaded == 2 and vol.missing() == [1, 3] and vol.has(2) and not vol.has(vol.slices[1])
    array = vol.array()
    np.testing.assert_array_equal(array[2], whole)
    assert np.isnan(array[1]).all()
    with pytest.raises(VolumeError, match="pixels"):
        vol.put(1, np.zeros((5, 6), dtype=np.float32))
    vol.put(1, np.zeros((6, 5), dtype=np.uint8), rendered=True)
    assert vol.rendered and vol.rescale_type == ""  # display values, not MHU


def test_slice_store_gathers_what_has_arrived_and_the_rest_later():
    from station.core.imaging.mpr import SliceStore

    vol = _frame_volume()
    store = SliceStore(vol)
    vol.put(1, np.full((6, 5), 7.0, dtype=np.float32))
    assert store.gather() == 1 and not store.complete_for(vol.slices)
    coronal = store.reslice(vol.slices, "coronal", 2)
    assert np.isnan(coronal[0]).all() and (coronal[1] == 7).all()
    for k in (0, 2, 3):
        vol.put(k, np.full((6, 5), float(k), dtype=np.float32))
    assert store.gather() == 4 and store.complete_for(vol.slices)
    assert store.entry(vol.slices[2])[0] is vol.stored_slice(2)[0]  # held, not copied
    assert store.nbytes == 0
    np.testing.assert_array_equal(store.reslice(vol.slices, "sagittal", 0)[:, 0], [0, 7, 2, 3])
