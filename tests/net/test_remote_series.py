"""The on-demand scheduler against a real Orthanc: order of arrival, whole volumes equal
to the synthetic voxels, re-centring, cancel, a dead store, offline reads from the cache."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from station.testing.ports import free_port
from station.core.remote.framecache import FrameCache
from station.core.imaging.volume import VolumeError
from station.net.dicomweb.client import DicomWebClient
from station.net.remote.series import FrameArrived, PullProgress, RemoteSeries, SeriesLayout
from tests.orthanc_fixtures import SIZE, SLICES


class Recorder:
    def __init__(self) -> None:
        self.events: list[FrameArrived] = []
        self.progress: list[PullProgress] = []
        self.lock = threading.Lock()

    def on_frame(self, event: FrameArrived) -> None:
        with self.lock:
            self.events.append(event)

    def on_progress(self, progress: PullProgress) -> None:
        with self.lock:
            self.progress.append(progress)

    @property
    def order(self) -> list[int]:
        return [e.index for e in self.events]


@pytest.fixture
def client(orthanc):
    c = DicomWebClient(orthanc.dicomweb_url, cache=FrameCache(None), timeout=20)
    yield c
    c.close()


def layout_of(client: DicomWebClient, scan) -> SeriesLayout:
    return SeriesLayout.from_metadata(client.series_metadata(scan.study_uid, scan.series_uid),
                                      study_uid=scan.study_uid, series_uid=scan.series_uid)


@pytest.mark.parametrize("name", ["classic", "dicos"])
def test_layout_from_metadata(client, scans, name):
    layout = layout_of(client, scans[name])
    assert layout.shape == (SLICES, SIZE, SIZE)
    assert layout.rescale_type == "MHU" and layout.modality == "CT"
    z = layout.positions_along_normal_mm
    assert list(z) == sorted(z)
    # DS values carry limited precision
    assert layout.spacing_mm == pytest.approx((440.0 / SLICES, 680.0 / SIZE, 680.0 / SIZE), rel=1e-4)
    assert all(s.rescale_intercept == -1000 and s.rescale_slope == 1 for s in layout.slices)
    if scans[name].multiframe:
        assert [s.frame_number for s in layout.slices] == list(range(1, SLICES + 1))
    else:
        assert [s.sop_instance_uid for s in layout.slices] == list(scans[name].sop_uids)


def test_layout_rejects_mixed_sizes(client, scans):
    a = client.series_metadata(scans["classic"].study_uid, scans["classic"].series_uid)
    b = client.series_metadata(scans["dicos"].study_uid, scans["dicos"].series_uid)
    b[0].Rows = SIZE * 2
    with pytest.raises(VolumeError, match="pixels"):
        SeriesLayout.from_metadata(a + b)
    with pytest.raises(VolumeError, match="no image"):
        SeriesLayout.from_metadata([])


@pytest.mark.parametrize("name", ["classic", "dicos", "rle", "j2k"])
def test_pull_whole_series_equals_voxels(client, scans, name):
    scan = scans[name]
    layout = layout_of(client, scan)
    volume = np.full(layout.shape, np.nan, dtype=np.float32)
    rec = Recorder()

    def on_frame(event: FrameArrived) -> None:
        rec.on_frame(event)
        volume[event.index] = event.array

    with RemoteSeries(client, layout, on_frame=on_frame, on_progress=rec.on_progress) as pull:
        pull.start(current=4)
        assert pull.wait(30)
        assert pull.progress.complete and pull.progress.finished
    np.testing.assert_array_equal(volume, scan.voxels.astype(np.float32))
    assert rec.order[0] == 4  # the visible slice first
    assert sorted(rec.order) == list(range(SLICES))
    assert rec.progress[-1].done == SLICES and rec.progress[-1].finished
    assert all(e.array.dtype == np.float32 and not e.rendered for e in rec.events)


def test_visible_first_then_neighbours_outward(client, scans):
    scan = scans["dicos"]
    layout = layout_of(client, scan)
    before = client.stats.requests
    rec = Recorder()
    with RemoteSeries(client, layout, on_frame=rec.on_frame, workers=1, neighbour_batch=2,
                      neighbour_radius=3, background_batch=4) as pull:
        pull.start(current=5)
        assert pull.wait(30)
    # One worker makes the order deterministic: 5 alone, then runs alternating outward
    # (nearest pending slice first, ties above), small near 5, larger further out.
    assert rec.order == [5, 6, 7, 4, 3, 8, 9, 2, 1, 0]
    # [5] [6,7] [4,3] [8,9] [2,1] [0]: one request per run, none longer than 2 within
    # the neighbour radius of 3 slices
    assert client.stats.requests - before == 6


def test_set_current_moves_the_front(client, scans):
    scan = scans["dicos"]
    layout = layout_of(client, scan)
    rec = Recorder()
    pull = RemoteSeries(client, layout, workers=1, neighbour_batch=2, neighbour_radius=2, background_batch=8)

    def on_frame(event: FrameArrived) -> None:
        rec.on_frame(event)
        if len(rec.events) == 1:
            pull.set_current(0)  # the analyst jumped to the first slice

    pull._on_frame = on_frame
    with pull:
        pull.start(current=8)
        assert pull.wait(30)
    assert rec.order[:4] == [8, 0, 1, 2]
    assert sorted(rec.order) == list(range(SLICES))


def test_cancel_stops_delivery_and_joins_threads(client, scans):
    scan = scans["classic"]  # single-frame instances: one request per slice
    layout = layout_of(client, scan)
    rec = Recorder()
    pull = RemoteSeries(client, layout, workers=2)

    def on_frame(event: FrameArrived) -> None:
        rec.on_frame(event)
        if len(rec.events) == 2:
            pull.cancel()  # the analyst moved to another scan

    pull._on_frame = on_frame
    pull.start(current=0)
    assert pull.wait(30)
    pull.close()
    progress = pull.progress
    assert progress.cancelled and progress.finished and not progress.complete
    assert progress.done < SLICES and len(rec.events) <= 3
    assert not [t for t in threading.enumerate() if t.name.startswith("remote-series")]


def test_dead_store_fails_fast_and_reports(scans):
    import pydicom

    scan = scans["dicos"]
    # The metadata was had; then the store went away (nothing listens on that port).
    ds = pydicom.dcmread(scan.files[0], stop_before_pixels=True)
    layout = SeriesLayout.from_metadata([ds])
    rec = Recorder()
    with DicomWebClient(f"http://127.0.0.1:{free_port()}/dicom-web", timeout=2) as dead:
        with RemoteSeries(dead, layout, on_frame=rec.on_frame, on_progress=rec.on_progress) as pull:
            pull.start()
            assert pull.wait(10)
            progress = pull.progress
        assert dead.stats.requests <= 3  # gave up after the store was found dead
    assert progress.failed == SLICES and progress.finished and not progress.complete
    assert "unreachable" in progress.error and rec.events == []
    assert rec.progress[-1].finished


def test_reopen_is_served_by_the_cache_even_offline(orthanc, scans, tmp_path):
    scan = scans["rle"]
    cache = FrameCache(tmp_path / "frames")
    with DicomWebClient(orthanc.dicomweb_url, cache=cache) as c:
        layout = layout_of(c, scan)
        with RemoteSeries(c, layout) as pull:
            pull.start()
            assert pull.wait(30) and pull.progress.complete
        before = c.stats.requests
        rec = Recorder()
        with RemoteSeries(c, layout, on_frame=rec.on_frame) as again:
            again.start()
            assert again.wait(30) and again.progress.from_cache == SLICES
        assert c.stats.requests == before
        assert all(e.from_cache for e in rec.events)
    cache.close()
    # A restarted station reads what was pulled from the disk tier without any request
    # (test_dicomweb.py stops a server to show the same for a dead store).
    offline_cache = FrameCache(tmp_path / "frames")
    with DicomWebClient(orthanc.dicomweb_url, cache=offline_cache) as offline:
        pull = RemoteSeries(offline, layout)
        assert pull.cached_slice(SLICES - 1) is not None
        arrived = pull.cached_slice(3)
        assert arrived is not None and arrived.from_cache
        np.testing.assert_array_equal(arrived.array, scan.voxels[3].astype(np.float32))
        assert offline.stats.requests == 0
    offline_cache.close()


@pytest.mark.parametrize("name", ["classic", "j2k"])
def test_classic_series_far_slices_come_in_one_series_retrieve(client, scans, name):
    """One instance per slice: the visible slice and its neighbours by frames requests,
    the rest from one series-level retrieve."""
    scan = scans[name]
    layout = layout_of(client, scan)
    volume = np.full(layout.shape, np.nan, dtype=np.float32)
    rec = Recorder()

    def on_frame(event: FrameArrived) -> None:
        rec.on_frame(event)
        volume[event.index] = event.array

    before = client.stats.requests
    with RemoteSeries(client, layout, on_frame=on_frame, workers=1, neighbour_radius=1,
                      bulk_min_instances=4) as pull:
        pull.start(current=5)
        assert pull.wait(30) and pull.progress.complete
    np.testing.assert_array_equal(volume, scan.voxels.astype(np.float32))
    assert rec.order[:3] == [5, 6, 4]  # visible, then the neighbours, then the bulk
    assert sorted(rec.order) == list(range(SLICES))
    assert client.stats.requests - before == 4  # 3 frames requests + 1 series retrieve


def test_series_retrieve_is_skipped_for_cached_slices(orthanc, scans, tmp_path):
    scan = scans["classic"]
    with DicomWebClient(orthanc.dicomweb_url, cache=FrameCache(tmp_path / "c")) as c:
        layout = layout_of(c, scan)
        frames = c.retrieve_series_frames(scan.study_uid, scan.series_uid)
        assert set(frames) == set(scan.sop_uids)
        import pydicom

        for sop, path in zip(scan.sop_uids, scan.files):
            assert frames[sop].data == pydicom.dcmread(path).PixelData
        before = c.stats.requests
        with RemoteSeries(c, layout, workers=2, neighbour_radius=1, bulk_min_instances=4) as pull:
            pull.start()
            assert pull.wait(30) and pull.progress.from_cache == SLICES
        assert c.stats.requests == before
        c.cache.close()
