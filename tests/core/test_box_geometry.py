"""Issue 17: threat boxes land on the right slices for every geometry.

A PTO's z is the frame number of a multi-frame scan (how the NEMA toolkit reads and writes
it), whatever the direction of the frames in space; the station's volume is in geometric
order. Checked both ways with the toolkit itself: its boxes shown on the right slices of
the station's volume, and the station's own detections read by the toolkit on the frames
that hold the threat. Also classic series whose positions fall as the instance number
grows (negative spacing) and that arrive in any order."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pydicom
import pytest

from station.core.detection.detectors import box_iou, detect_main
from station.core.dicos import read_tdr
from station.core.dicos.zmap import box_to_volume, scan_z
from station.core.imaging.volume import SeriesVolume, load_volume
from station.core.synth import bags as synth
from tests.dicos_toolkit import toolkit_ct, toolkit_read, toolkit_tdr

BRIGHT = 3000


def _reverse_frames_in_space(path: Path) -> None:
    """Store the frames top down: frame 0 gets the highest position (descending order)."""
    ds = pydicom.dcmread(path)
    frames = ds.PerFrameFunctionalGroupsSequence
    positions = [list(f.PlanePositionSequence[0].ImagePositionPatient) for f in frames]
    for f, pos in zip(frames, reversed(positions)):
        f.PlanePositionSequence[0].ImagePositionPatient = pos
    ds.save_as(path)


def _flip_normal(path: Path) -> None:
    """Column direction (0,-1,0): the slice normal points down, so positions growing with the
    frame number fall along the normal (negative spacing); the frames themselves unchanged."""
    ds = pydicom.dcmread(path)
    for group in (ds.SharedFunctionalGroupsSequence[0], *ds.PerFrameFunctionalGroupsSequence):
        if "PlaneOrientationSequence" in group:
            group.PlaneOrientationSequence[0].ImageOrientationPatient = [1, 0, 0, 0, -1, 0]
    ds.save_as(path)


GEOMETRIES = {"ascending": None, "descending": _reverse_frames_in_space, "negative-normal": _flip_normal}


@pytest.mark.parametrize("geometry", list(GEOMETRIES))
def test_a_toolkit_box_is_shown_on_the_frames_it_marks(tmp_path, geometry):
    voxels = np.full((10, 24, 24), 1000, np.uint16)
    voxels[2:4, 5:9, 4:8] = BRIGHT  # frames 2 and 3 hold the object
    ct = toolkit_ct(tmp_path / "ct.dcs", voxels)
    if GEOMETRIES[geometry]:
        GEOMETRIES[geometry](ct)
    tdr = read_tdr(toolkit_tdr(tmp_path / "tdr.dcs", ct, [((4, 5, 2), (4, 4, 2))]))
    volume = load_volume([ct])
    reversed_in_volume = geometry != "ascending"
    assert [s.frame_index for s in volume.slices][0] == (9 if reversed_in_volume else 0)

    (pto,) = tdr.ptos
    (x, y, z), (ex, ey, ez) = box_to_volume(pto.base, pto.extent, scan_z(volume.slices))
    shown = volume.array()[int(z):int(z + ez), int(y):int(y + ey), int(x):int(x + ex)]
    assert shown.shape == (2, 4, 4) and (shown == BRIGHT).all()
    outside = np.delete(volume.array(), range(int(z), int(z + ez)), axis=0)
    assert not (outside == BRIGHT).any()


@pytest.mark.parametrize("geometry", list(GEOMETRIES))
def test_the_toolkit_reads_the_station_s_box_on_the_frames_of_the_threat(tmp_path, geometry):
    bag = synth.make_bag_volume(size=96, slices=40, threats=2, seed=5)
    (ct,) = synth.write_ct_series(bag, tmp_path / "ct", dicos=True, seed=5)
    if GEOMETRIES[geometry]:
        GEOMETRIES[geometry](ct)
    tdr_path = tmp_path / "machine.dcm"
    assert detect_main([ct], tdr_out=tdr_path)["alarm_decision"] == "ALARM"
    ptos = toolkit_read("tdr", tdr_path).get_data()["PTOs"]
    boxes = [((p["Base"]["x"], p["Base"]["y"], p["Base"]["z"]),
              (p["Extent"]["x"], p["Extent"]["y"], p["Extent"]["z"])) for p in ptos]
    # the planted threats are in frame order: the frames were written from bag.voxels
    for threat in bag.threats:
        best = max(box_iou(threat.base_xyz, threat.extent_xyz, b, e) for b, e in boxes)
        assert best >= 0.5, (geometry, threat.base_xyz, threat.extent_xyz, boxes)
    # each PTO's bitmap marks the threat's voxels in the frames the toolkit reads
    (frames_read,) = toolkit_read("ct", ct).get_data()
    for p in read_tdr(tdr_path).ptos:
        (x, y, z), (ex, ey, ez) = p.box_int
        marked = frames_read[z:z + ez, y:y + ey, x:x + ex][p.mask()].astype(np.int32) - 1000
        assert marked.size and marked.min() >= 300, (geometry, p.id, marked.min())  # threat MHU
    # and the station shows each box where the object is in its own (geometric) volume
    volume = load_volume([ct])
    for p in read_tdr(tdr_path).ptos:
        (x, y, z), (ex, ey, ez) = box_to_volume(p.base, p.extent, scan_z(volume.slices))
        frames = [volume.slices[k].frame_index for k in range(int(z), int(z + ez))]
        assert min(frames) == p.base[2] and max(frames) == p.base[2] + p.extent[2] - 1


def test_classic_series_with_falling_positions_in_any_order(tmp_path):
    """Instance numbers grow while positions fall; the files are added in a shuffled order:
    the box is on the threat in the volume's geometric order, and the TDR says the same."""
    bag = synth.make_bag_volume(size=64, slices=30, threats=1, seed=9)
    files = synth.write_ct_series(bag, tmp_path / "ct", seed=9)
    n = len(files)
    for k, f in enumerate(files):  # file k holds bag slice k; put it at the mirrored place
        ds = pydicom.dcmread(f)
        x0, y0, _ = ds.ImagePositionPatient
        ds.ImagePositionPatient = [x0, y0, float(bag.origin_mm[2] + (n - 1 - k) * bag.spacing_mm[0])]
        ds.save_as(f)
    random.Random(3).shuffle(files)
    tdr_path = tmp_path / "machine.dcm"
    assert detect_main(files, tdr_out=tdr_path)["alarm_decision"] == "ALARM"
    volume = SeriesVolume()
    volume.add_files(files)
    (threat,) = bag.threats
    tx, ty, tz = threat.base_xyz
    ex, ey, ez = threat.extent_xyz
    mirrored = ((tx, ty, n - tz - ez), (ex, ey, ez))  # where the threat is in geometric order
    shown = [box_to_volume(p.base, p.extent, scan_z(volume.slices)) for p in read_tdr(tdr_path).ptos]
    assert max(box_iou(*mirrored, b, e) for b, e in shown) >= 0.5, (mirrored, shown)


def test_a_box_moved_to_reversed_frames_turns_its_bitmap_and_centre_over():
    from station.core.dicos import Pto
    from station.core.dicos.zmap import to_scan, to_volume

    mask = np.zeros((3, 2, 2), bool)
    mask[0] = True  # only the lowest plane of the box
    pto = Pto(id=1, base=(0.0, 0.0, 1.0), extent=(2.0, 2.0, 3.0), center=(0.5, 0.5, 1.0),
              bitmap=np.packbits(mask.ravel(), bitorder="little").tobytes())
    zs = tuple(range(9, -1, -1))  # ten frames stored top down
    moved = to_scan(pto, zs)
    assert (moved.base[2], moved.extent[2], moved.center[2]) == (6.0, 3.0, 8.0)
    assert moved.mask()[2].all() and not moved.mask()[:2].any()
    back = to_volume(moved, zs)
    assert (back.base, back.extent, back.center) == (pto.base, pto.extent, pto.center)
    assert np.array_equal(back.mask(), mask)
