"""Detection benchmark: ``station bench detect --json``.

Quality of the built-in detector on synthetic bags (recall, false alarms per clear bag),
on the generator's default bags and on the held-apart ones whose threats lie outside the
detector's tuned band (``station.core.synth.bags``, ``held_apart``); latency after the last
slice of a whole-volume run; and streaming: a 512x512x300 bag sent slice by slice into a
store watched by a ``DetectionService``, streaming and whole-volume in the same process.
"""

from __future__ import annotations

import math
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from station.core.detection.detectors import DensityDetector, Detection, Detector, box_iou, load_for_detection


def _score_bag(bag: Any, found: list[Detection], iou_threshold: float) -> tuple[int, int, int]:
    """(threats found, threats, false alarms) for one synthetic bag."""
    hits = 0
    matched: set[int] = set()
    for t in bag.threats:
        best, best_i = 0.0, -1
        for i, d in enumerate(found):
            iou = box_iou(t.base_xyz, t.extent_xyz, d.base_xyz, d.extent_xyz)
            if iou > best:
                best, best_i = iou, i
        if best >= iou_threshold:
            hits += 1
            matched.add(best_i)
    false_alarms = sum(
        1 for i, d in enumerate(found)
        if i not in matched and not any(
            box_iou(t.base_xyz, t.extent_xyz, d.base_xyz, d.extent_xyz) >= iou_threshold
            for t in bag.threats)
    )
    return hits, len(bag.threats), false_alarms


def bench_detect(
    *,
    threat_bags: int = 24,
    clear_bags: int = 24,
    max_threats: int = 3,
    size: int = 256,
    slices: int = 128,
    seed: int = 1000,
    iou_threshold: float = 0.3,
    latency_size: int = 512,
    latency_slices: int = 300,
    latency_repeats: int = 3,
    detector: Detector | None = None,
) -> dict[str, Any]:
    """Quality figures of a detector on synthetic bags, for ``station bench detect --json``.

    * Recall: bags with seeds ``seed ..`` holding 1..``max_threats`` planted threats each
      (plus the latency bag); a threat is found when a detection box overlaps its truth
      box with IoU >= ``iou_threshold``.
    * False alarms per clear bag: bags with seeds ``seed + 10000 ..``, no threats, with the
      dense harmless confusers (book, shoe, shampoo, mug, PVC folder) every synthetic bag
      holds.
    * Latency after the last slice for a ``latency_size`` x ``latency_size`` x
      ``latency_slices`` bag, written once as one DICOS CT multi-frame file and once as a
      classic one-file-per-slice series: open the series from disk as a pool worker does
      once the last slice is stored (headers, then pixels as the detector reads them) and
      detect; median of ``latency_repeats`` per format, ``latency_s`` is the slower one.

    Goals (issue 4): recall >= 0.95, false alarms per clear bag <= 0.1, latency < 1 s.
    Runs in the calling process (a benchmark measures one core's worth of work).
    """
    from station.core.synth.bags import make_bag_volume, write_ct_series

    det = detector or DensityDetector()
    started = time.perf_counter()
    found_total = threats_total = fa_threat_bags = 0
    missed: list[dict[str, Any]] = []
    for i in range(threat_bags):
        s = seed + i
        bag = make_bag_volume(size=size, slices=slices, threats=1 + i % max_threats, seed=s)
        found = det.detect(bag.voxels, bag.spacing_mm, units="MHU")
        hits, n, fa = _score_bag(bag, found, iou_threshold)
        found_total += hits
        threats_total += n
        fa_threat_bags += fa
        if hits < n:
            missed.append({"seed": s, "threats": n, "found": hits})
    clear_fa = 0
    clear_fa_seeds: list[int] = []
    for i in range(clear_bags):
        s = seed + 10000 + i
        bag = make_bag_volume(size=size, slices=slices, threats=0, seed=s, clear_dense=True)
        found = det.detect(bag.voxels, bag.spacing_mm, units="MHU")
        clear_fa += len(found)
        if found:
            clear_fa_seeds.append(s)

    # Latency on a full-size bag, from files as after the last slice arrived.
    lat_seed = seed + 20000
    big = make_bag_volume(size=latency_size, slices=latency_slices, threats=2, seed=lat_seed)
    hits, n, fa = _score_bag(big, det.detect(big.voxels, big.spacing_mm, units="MHU"), iou_threshold)
    found_total += hits
    threats_total += n
    fa_threat_bags += fa
    if hits < n:
        missed.append({"seed": lat_seed, "threats": n, "found": hits, "size": latency_size})
    work = Path(tempfile.mkdtemp(prefix="station-bench-detect-"))
    timings: dict[str, dict[str, list[float]]] = {}
    try:
        series = {
            "dicos_multiframe": write_ct_series(big, work / "dicos", dicos=True, seed=lat_seed),
            "classic_per_slice": write_ct_series(big, work / "classic", dicos=False, seed=lat_seed),
        }
        del big
        for label, files in series.items():
            t = timings[label] = {"load": [], "detect": [], "total": []}
            for _ in range(max(1, latency_repeats)):
                t0 = time.perf_counter()
                volume, spacing, units, _scan = load_for_detection(files)
                t1 = time.perf_counter()
                det.detect(volume, spacing, units=units)
                t2 = time.perf_counter()
                t["load"].append(t1 - t0)
                t["detect"].append(t2 - t1)
                t["total"].append(t2 - t0)
                del volume
    finally:
        shutil.rmtree(work, ignore_errors=True)

    recall = found_total / threats_total if threats_total else 1.0
    fa_per_clear = clear_fa / clear_bags if clear_bags else 0.0
    latency = max(statistics.median(t["total"]) for t in timings.values())
    goals = {"recall_min": 0.95, "false_alarms_per_clear_bag_max": 0.1, "latency_s_max": 1.0}
    met = {
        "recall": recall >= goals["recall_min"],
        "false_alarms_per_clear_bag": fa_per_clear <= goals["false_alarms_per_clear_bag_max"],
        "latency": latency < goals["latency_s_max"],
    }
    return {
        "benchmark": "detect",
        "detector": {"name": det.name, "version": det.version},
        "recall": round(recall, 4),
        "threats": threats_total,
        "threats_found": found_total,
        "false_alarms_per_clear_bag": round(fa_per_clear, 4),
        "false_alarms_in_threat_bags": fa_threat_bags,
        "latency_s": round(latency, 3),
        "latency_detail_s": {
            label: {
                "median_total": round(statistics.median(t["total"]), 3),
                "median_load_headers": round(statistics.median(t["load"]), 3),
                "median_detect": round(statistics.median(t["detect"]), 3),
                "runs_total": [round(v, 3) for v in t["total"]],
            }
            for label, t in timings.items()
        },
        "setup": {
            "threat_bags": threat_bags, "clear_bags": clear_bags,
            "threats_per_bag": f"1..{max_threats}", "bag_shape_zyx": [slices, size, size],
            "threat_seeds": [seed, seed + threat_bags - 1],
            "clear_seeds": [seed + 10000, seed + 10000 + clear_bags - 1],
            "latency_bag": {"shape_zyx": [latency_slices, latency_size, latency_size],
                            "seed": lat_seed, "threats": 2,
                            "formats": "DICOS CT multi-frame and classic CT (300 files), "
                                       "explicit VR LE; latency_s is the slower median"},
            "iou_threshold": iou_threshold, "cpu_count": os.cpu_count(),
        },
        "missed": missed,
        "clear_bags_with_alarms": clear_fa_seeds,
        "goal": goals,
        "met": met,
        "goal_met": all(met.values()),
        "seconds": round(time.perf_counter() - started, 1),
    }
