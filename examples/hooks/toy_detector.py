"""A toy extra detector: flags the box around very dense voxels (metal-like). It joins the
station's detector registry (``station.core.detection.detectors.detectors()``) next to the built-in
density detector.

It shows the shape of a detector a site can add with a hook: a picklable module-level
class with ``name``, ``version`` and ``detect(volume, spacing_mm, **context)`` returning
``station.core.detection.detectors.Detection`` objects. Detectors run in worker processes, never on
the GUI or receiver threads; the station imports this file there again to unpickle it,
so keep side effects inside ``register``. Configuration::

    [hooks]
    scripts = ["toy_detector.py"]

    [hooks.options.toy_detector]
    threshold_mhu = 2500.0   # voxels above this count (MHU; HU volumes are converted)
    min_voxels = 8           # fewer dense voxels than this is noise
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from station.core.detection.detectors import Detection


@dataclass
class DenseSpotDetector:
    """One ANOMALY box around every voxel denser than ``threshold_mhu``."""

    threshold_mhu: float = 2500.0
    min_voxels: int = 8
    name: str = "toy-dense-spot"
    version: str = "1.0"

    def parameters(self) -> list[str]:
        return [f"threshold_mhu={self.threshold_mhu}", f"min_voxels={self.min_voxels}"]

    def detect(self, volume: Any, spacing_mm: tuple[float, float, float], **context: Any) -> list[Detection]:
        threshold = self.threshold_mhu - (1000.0 if context.get("units") == "HU" else 0.0)
        mask = np.asarray(volume) > threshold
        if int(mask.sum()) < self.min_voxels:
            return []
        z, y, x = np.nonzero(mask)
        base = (int(x.min()), int(y.min()), int(z.min()))
        extent = (int(x.max()) - base[0] + 1, int(y.max()) - base[1] + 1, int(z.max()) - base[2] + 1)
        return [Detection(base_xyz=base, extent_xyz=extent, flag="ANOMALY", category="OTHER", probability=0.3,
                          category_description="dense spot (toy detector)", detector=f"{self.name} {self.version}")]


def register(api):
    api.register_detector(DenseSpotDetector(
        threshold_mhu=float(api.options.get("threshold_mhu", 2500.0)),
        min_voxels=int(api.options.get("min_voxels", 8)),
    ))
