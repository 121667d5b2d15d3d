"""Remote frames benchmark (``station bench frames --json``), against a private Orthanc
(``station.testing.orthanc``).

Against a real Orthanc 1.10 with the DICOMweb plugin, on loopback, with one DICOS CT
multi-frame series (default 300 slices of 512x512, 16-bit: 157 MB), measured in one run:

* ``first_frame_ratio``: time from ``RemoteSeries.start`` (metadata already loaded, as
  when the viewer has opened) to the first decoded, rescaled slice, divided by the time
  of one plain raw single-frame request (``requests``, new connection each). Goal <= 1.5.
* ``speedup_vs_per_frame``: the whole series pulled on demand (cold cache; decoded and
  rescaled, i.e. more work than the peer does) versus dicomweb-client retrieving the same
  frames one request per frame (bytes only). Goal >= 3.
* ``warm_speedup``: re-opening the series from a warm cache (a new client and a new
  ``FrameCache`` on the same directory: the disk tier, as after a restart) versus the
  cold pull. Goal >= 20. ``warm_memory_speedup`` is the same from the memory tier.

Every figure is the best of ``repeat`` runs, interleaved. Timings are figures to read,
never pass/fail in tests. Orthanc is configured as a production archive would be for
multi-frame CT: its storage cache holds the instance (``MaximumStorageCacheSize``), and
HTTP compression is off (pixel data hardly compresses; gzip would cost both sides CPU).
"""

from __future__ import annotations

import logging
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import requests

from station.testing.orthanc import OrthancServer

LOGGER = logging.getLogger(__name__)

# --------------------------------------------------------------------------- benchmark


def _best(values: list[float]) -> float:
    return min(values) if values else float("nan")


def bench_frames(
    *,
    slices: int = 300,
    size: int = 512,
    repeat: int = 3,
    peer_sample: int = 30,
    classic: bool = True,
    workdir: str | None = None,
) -> dict[str, Any]:
    """Run the frames benchmark against a private Orthanc; return the JSON-ready figures.

    The headline figures use the DICOS multi-frame series. This Orthanc spends about
    0.5 s per frames request on a 157 MB multi-frame instance whatever the number of
    frames asked (it loads and parses the instance for every request), so the
    frame-by-frame peer would take minutes: it is timed on ``peer_sample`` frames spread
    over the series and scaled to the whole series (said so in the JSON). With
    ``classic`` the same bag is also measured as classic CT (one instance per slice,
    where no request can carry more than one frame), every frame timed for the peer.
    """
    from station.core.synth.bags import make_bag_volume, write_ct_series

    repeat = max(1, repeat)
    root = Path(tempfile.mkdtemp(prefix="bench-frames-", dir=workdir))
    try:
        bag = make_bag_volume(size=size, slices=slices, seed=7)
        frame_bytes = size * size * 2
        dicos_files = write_ct_series(bag, root / "dicos", dicos=True, seed=7, patient_id="BENCH-DICOS")
        classic_files = (write_ct_series(bag, root / "classic", dicos=False, seed=8, patient_id="BENCH-CLASSIC")
                         if classic else [])
        # The storage cache should hold the whole multi-frame instance, as a site serving
        # multi-frame CT would configure it (both sides of every comparison benefit).
        cache_mb = max(128, int(slices * frame_bytes * 1.5 / 1e6) + 64)
        with OrthancServer(root / "orthanc", config={"MaximumStorageCacheSize": cache_mb}) as orthanc:
            orthanc.upload(dicos_files)
            orthanc.upload(classic_files)
            result: dict[str, Any] = {
                "benchmark": "frames",
                "series": f"DICOS CT multi-frame, {slices} x {size}x{size} uint16 ({slices * frame_bytes / 1e6:.0f} MB)",
                "server": "Orthanc 1.10 + DICOMweb plugin 1.7, loopback",
                "peer": "dicomweb-client retrieve_instance_frames, one request per frame",
                "ours": "RemoteSeries (visible slice first, then contiguous batches, 2 workers), "
                        "frames decoded and rescaled",
                "repeat": repeat,
            }
            result.update(_measure(orthanc, "BENCH-DICOS", root / "m-dicos", repeat, peer_sample, frame_bytes))
            result["first_frame_goal"] = "<= 1.5"
            result["speedup_goal"] = ">= 3"
            result["warm_goal"] = ">= 20"
            if classic:
                figures = _measure(orthanc, "BENCH-CLASSIC", root / "m-classic", repeat, 0, frame_bytes)
                result["classic"] = {"series": f"classic CT, {slices} single-frame instances", **figures}
        result["complete"] = True
        return result
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _measure(orthanc: OrthancServer, patient_id: str, work: Path, repeat: int, peer_sample: int,
             frame_bytes: int) -> dict[str, Any]:
    """The figures for one uploaded series (see ``bench_frames``); interleaved runs."""
    from dicomweb_client.api import DICOMwebClient

    from station.core.remote.framecache import FrameCache
    from station.net.dicomweb.client import RAW_ACCEPT_ANY, DicomWebClient
    from station.net.remote.series import SeriesLayout

    probe = DicomWebClient(orthanc.dicomweb_url)
    try:
        study = probe.search_studies(patient_id=patient_id)[0].StudyInstanceUID
        series = probe.search_series(study)[0].SeriesInstanceUID
        t0 = time.perf_counter()
        metadata = probe.series_metadata(study, series)
        metadata_s = time.perf_counter() - t0
    finally:
        probe.close()
    layout = SeriesLayout.from_metadata(metadata, study_uid=study, series_uid=series)
    n = layout.n_slices
    middle = layout.slices[n // 2]
    frame_url = (f"{orthanc.dicomweb_url}/studies/{study}/series/{series}/instances/"
                 f"{middle.sop_instance_uid}/frames/{middle.frame_number}")
    # Warm the archive once: its first access to an instance loads it from disk.
    requests.get(frame_url, headers={"Accept": RAW_ACCEPT_ANY}, timeout=120).raise_for_status()
    if peer_sample and peer_sample < n:
        step = n / peer_sample
        peer_slices = [layout.slices[int(i * step)] for i in range(peer_sample)]
    else:
        peer_slices = list(layout.slices)

    single: list[float] = []
    first: list[float] = []
    cold: list[float] = []
    warm_disk: list[float] = []
    warm_mem: list[float] = []
    per_frame: list[float] = []
    cold_requests = warm_requests = 0
    for r in range(repeat):
        with requests.Session() as s:  # one raw single-frame request, new connection
            t0 = time.perf_counter()
            resp = s.get(frame_url, headers={"Accept": RAW_ACCEPT_ANY}, timeout=120)
            _ = resp.content
            single.append(time.perf_counter() - t0)
            resp.raise_for_status()

        cache_dir = work / f"cache-{r}"
        cache = FrameCache(cache_dir)
        client = DicomWebClient(orthanc.dicomweb_url, cache=cache)
        try:
            t_first, t_all, cold_requests = _pull(client, layout)
            first.append(t_first)
            cold.append(t_all)
            _, t_mem, _ = _pull(client, layout)  # the same client again: memory tier
            warm_mem.append(t_mem)
        finally:
            client.close()
            cache.close()
        cache = FrameCache(cache_dir)  # what a restarted station finds
        client = DicomWebClient(orthanc.dicomweb_url, cache=cache)
        try:
            _, t_disk, warm_requests = _pull(client, layout)
            warm_disk.append(t_disk)
        finally:
            client.close()
            cache.close()
        shutil.rmtree(cache_dir, ignore_errors=True)

        peer = DICOMwebClient(url=orthanc.dicomweb_url)
        try:
            t0 = time.perf_counter()
            for s_ in peer_slices:
                got = peer.retrieve_instance_frames(study, series, s_.sop_instance_uid,
                                                    frame_numbers=[s_.frame_number],
                                                    media_types=(("application/octet-stream", "*"),))
                if len(got) != 1 or len(got[0]) < frame_bytes:
                    raise RuntimeError(f"peer got {len(got)} frame(s) for {s_.frame_number}")
            per_frame.append((time.perf_counter() - t0) * n / len(peer_slices))
        finally:
            session = getattr(peer, "_session", None)
            if session is not None:
                session.close()

    single_s, first_s = _best(single), _best(first)
    cold_s, disk_s, mem_s, peer_s = _best(cold), _best(warm_disk), _best(warm_mem), _best(per_frame)
    return {
        "slices": n,
        "metadata_s": round(metadata_s, 4),
        "single_frame_request_s": round(single_s, 4),
        "first_frame_s": round(first_s, 4),
        "first_frame_ratio": round(first_s / single_s, 2),
        "cold_pull_s": round(cold_s, 3),
        "cold_pull_requests": cold_requests,
        "per_frame_peer_s": round(peer_s, 3),
        "per_frame_peer_frames_timed": len(peer_slices),
        "per_frame_peer_scaled": len(peer_slices) < n,
        "speedup_vs_per_frame": round(peer_s / cold_s, 2),
        "warm_disk_pull_s": round(disk_s, 4),
        "warm_pull_requests": warm_requests,
        "warm_speedup": round(cold_s / disk_s, 1),
        "warm_memory_pull_s": round(mem_s, 4),
        "warm_memory_speedup": round(cold_s / mem_s, 1),
        "runs": {
            "single_frame_request_s": [round(v, 4) for v in single],
            "first_frame_s": [round(v, 4) for v in first],
            "cold_pull_s": [round(v, 3) for v in cold],
            "per_frame_peer_s": [round(v, 3) for v in per_frame],
            "warm_disk_pull_s": [round(v, 4) for v in warm_disk],
        },
        "median_cold_pull_s": round(statistics.median(cold), 3),
    }


def _pull(client: Any, layout: Any) -> tuple[float, float, int]:
    """(seconds to first slice, seconds to all slices, requests made) of one full pull,
    every slice decoded and rescaled (as the viewer gets them)."""
    from station.net.remote.series import RemoteSeries

    first: list[float] = []
    before = client.stats.requests

    def on_frame(event: Any) -> None:
        if not first:
            first.append(time.perf_counter())

    with RemoteSeries(client, layout, on_frame=on_frame) as pull:
        t0 = time.perf_counter()
        pull.start()
        pull.wait()
        t_all = time.perf_counter() - t0
        progress = pull.progress
    if not progress.complete:
        raise RuntimeError(f"pull incomplete: {progress}")
    return first[0] - t0, t_all, client.stats.requests - before


__all__ = ["bench_frames"]
