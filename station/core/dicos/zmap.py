"""Threat boxes between a TDR's voxel space and the station's volume.

A PTO's ThreatROIBase/ThreatROIExtents are voxel coordinates (x, y, z) of the scan it
references. For a multi-frame CT (DICOS CT, Enhanced CT) z is the frame number, in the
order the frames are stored, whatever their direction in space: that is how the NEMA
toolkit and the scanners that use it read and write a box. The station's volumes hold
slices in geometric order (ascending along the slice normal), so for a multi-frame scan
stored in descending order, or whose normal makes the positions fall (negative spacing),
frame f is not volume slice f. For a classic series (one instance per slice) there is no
stored order to speak of: z is the index in geometric order, so the order in which the
slices were sent does not move a box.

``scan_z`` gives the TDR z of every volume slice; ``to_scan`` and ``to_volume`` move a
PTO (its box, its bitmap planes and its centre) from one space to the other. Any thread.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import numpy as np

from station.core.dicos.model import Pto


def scan_z(slices: Sequence[Any]) -> tuple[int, ...]:
    """TDR z of each slice of a volume in geometric order (``SliceInfo``-like objects with
    ``sop_instance_uid`` and ``frame_index``): the frame number for a one-instance
    multi-frame volume, else the geometric index."""
    if len(slices) > 1 and len({s.sop_instance_uid for s in slices}) == 1:
        return tuple(int(s.frame_index) for s in slices)
    return tuple(range(len(slices)))


def to_scan(pto: Pto, zs: Sequence[int]) -> Pto:
    """``pto`` with a box in volume (geometric) z moved to the scan's TDR z."""
    return _remap(pto, zs)


def to_volume(pto: Pto, zs: Sequence[int]) -> Pto:
    """``pto`` with a box in the scan's TDR z moved to volume (geometric) z."""
    inverse = [0] * len(zs)
    for k, z in enumerate(zs):
        if not 0 <= z < len(zs):
            return pto  # frame numbers that are not a permutation: leave the box alone
        inverse[z] = k
    return _remap(pto, inverse)


def box_to_volume(base: Sequence[float], extent: Sequence[float],
                  zs: Sequence[int]) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
    """(base, extent) of a box in the scan's TDR z, in volume z."""
    p = to_volume(Pto(id=0, base=tuple(base), extent=tuple(extent)), zs)  # type: ignore[arg-type]
    return p.base, p.extent


def _remap(pto: Pto, mapping: Sequence[int]) -> Pto:
    """Move the box's z planes through ``mapping`` (index in the source space -> index in
    the target space). The identity and boxes outside the mapping are left as they are."""
    n = len(mapping)
    if all(m == k for k, m in enumerate(mapping)):
        return pto
    z, ez = float(pto.base[2]), float(pto.extent[2])
    lo, hi = max(0, int(math.floor(z))), min(n, int(math.ceil(z + ez)))
    if hi <= lo:
        return pto
    planes = [mapping[k] for k in range(lo, hi)]
    new_lo, new_hi = min(planes), max(planes) + 1
    descending = planes[0] > planes[-1]  # one plane: nothing to turn over either way
    changes: dict[str, Any] = {
        "base": (pto.base[0], pto.base[1], float(new_lo)),
        "extent": (pto.extent[0], pto.extent[1], float(new_hi - new_lo)),
    }
    if pto.center is not None:
        offset = float(pto.center[2]) - lo
        cz = (new_hi - 1 - offset) if descending else (new_lo + offset)
        changes["center"] = (pto.center[0], pto.center[1], cz)
    mask = pto.mask()
    if descending and mask is not None and mask.shape[0] == new_hi - new_lo:
        changes["bitmap"] = np.packbits(mask[::-1].ravel(), bitorder="little").tobytes()
    return replace(pto, **changes)
