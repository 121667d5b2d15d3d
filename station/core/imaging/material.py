"""Material classes for the security colour palette: from CT density or dual-energy X-ray.

Security analysts read colour, not numbers: orange = organic (effective atomic number
about 6-10: explosives, drugs, food, plastics), green = mixed or light inorganic (glass,
aluminium, salts), blue = metal, black = opaque (the beam did not get through). A CT
slice gives density only, so its class comes from density bands (the same bands the
synthetic DX model uses: organic < 2000 <= light inorganic < 5000 <= metal, in MHU).
A dual-energy radiograph gives the material itself: the ratio of low- to high-energy log
attenuation grows with Z (about 1.3 for organics, 2 for aluminium, 5 for iron in the
synthetic scanner), independent of thickness.

Numpy/scipy/pydicom only: the viewer turns classes into colours (``station.ui.viewer.colormaps``).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from scipy import ndimage

LOGGER = logging.getLogger(__name__)

BACKGROUND, ORGANIC, INORGANIC, METAL, OPAQUE = range(5)
MATERIAL_NAMES = ("background", "organic", "inorganic", "metal", "opaque")
"""Class index -> name; the colour palette is indexed by the same numbers."""

CT_BANDS_MHU = (400.0, 2000.0, 5000.0, 20000.0)
"""Lower bounds (MHU, air 0, water 1000) of organic, inorganic, metal and opaque. Below
400 MHU (0.4 g/cm³) are air, foam and clothes: organic too, but shown in plain gray so
that solid and liquid organics (about 1000-1700: food, drinks, explosives) stand out
from the clothes packed around them. 20000 MHU is beyond any metal the synthetic bags
hold (coins reach 9500): only saturated, unmeasurable voxels."""

HU_PER_MHU_OFFSET = 1000.0
"""MHU = HU + 1000 (air -1000 HU = 0 MHU, water 0 HU = 1000 MHU)."""

DE_RATIO_BANDS = (1.6, 2.5)
"""low/high log-attenuation ratio bounds: organic below 1.6, inorganic up to 2.5, metal
above. Pure materials of the synthetic scanner sit at 1.34 (organic), 2.1 (aluminium-
like) and 5.3 (iron-like); a ray through a coin also crosses clothes and the case, which
pulls its ratio down to about 3, hence a metal bound well below 5."""

DE_BACKGROUND = 150.0
"""High-energy log attenuation (x1000) below which nothing is in the beam: shown as the
bare background, since a ratio of two near-zero numbers is noise."""

DE_OPAQUE = 11000.0
"""High-energy log attenuation (x1000) from which the detector sees (almost) no photons:
ln(2e5 counts) is about 12.2 for the synthetic scanner, so 11.0 leaves about 3 counts."""


def ct_bands(rescale_type: str) -> tuple[float, ...]:
    """The density bands in the units of the data: MHU as is, HU shifted by -1000."""
    if rescale_type.upper() == "HU":
        return tuple(b - HU_PER_MHU_OFFSET for b in CT_BANDS_MHU)
    return CT_BANDS_MHU


def classify_density(values: np.ndarray, rescale_type: str = "MHU") -> np.ndarray:
    """Material class (uint8, see MATERIAL_NAMES) of each CT value. NaN is background."""
    classes = np.zeros(values.shape, dtype=np.uint8)
    for bound in ct_bands(rescale_type):
        classes += np.asarray(values >= bound, dtype=np.uint8)
    return classes


def classify_dual_energy(high: np.ndarray, low: np.ndarray, *, smooth_sigma: float = 1.0,
                         background: float = DE_BACKGROUND, opaque: float = DE_OPAQUE) -> np.ndarray:
    """Material class (uint8) of each pixel of a dual-energy pair of log-attenuation images.

    The images are smoothed a little first: the ratio of two noisy numbers is noisier than
    either, and colour speckle tires the eye more than a slightly soft colour edge.
    Brightness is not decided here: the viewer takes it from the high-energy image.
    """
    if high.shape != low.shape:
        raise ValueError(f"high {high.shape} and low {low.shape} energy images differ in size")
    h = np.asarray(high, dtype=np.float32)
    lo = np.asarray(low, dtype=np.float32)
    if smooth_sigma > 0:
        h = ndimage.gaussian_filter(h, smooth_sigma)
        lo = ndimage.gaussian_filter(lo, smooth_sigma)
    ratio = lo / np.maximum(h, 1.0)
    classes = np.full(h.shape, METAL, dtype=np.uint8)
    classes[ratio < DE_RATIO_BANDS[1]] = INORGANIC
    classes[ratio < DE_RATIO_BANDS[0]] = ORGANIC
    classes[h < background] = BACKGROUND
    classes[np.asarray(high) >= opaque] = OPAQUE
    return classes


@dataclass(frozen=True)
class EnergyInfo:
    """What a projection image's header says about its beam energy."""

    path: Path
    energy: str  # "HIGH", "LOW" or ""
    kvp: float | None


def energy_of(path: str | Path) -> EnergyInfo:
    """Read the energy of a DX/CR image from its header (ImageType value 3, ImageComments,
    else only KVP). Reads the header only. Any thread."""
    path = Path(path)
    ds = pydicom.dcmread(path, stop_before_pixels=True,
                         specific_tags=["ImageType", "ImageComments", "KVP"])
    energy = ""
    image_type = [str(v).upper() for v in (ds.get("ImageType") or [])]
    comments = str(ds.get("ImageComments", "") or "").upper()
    for name in ("HIGH", "LOW"):
        if name in image_type[2:] or comments.startswith(name):
            energy = name
    kvp_value = ds.get("KVP")
    try:
        kvp = float(kvp_value) if kvp_value not in (None, "") else None
    except (TypeError, ValueError):
        kvp = None
    return EnergyInfo(path, energy, kvp)


def dual_energy_pair(paths: Sequence[str | Path]) -> tuple[int, int] | None:
    """Indices (high, low) of a dual-energy pair among the images of one series, or None.

    Labelled images (ImageType HIGH/LOW, as DICOS and the synthetic scanner write them)
    win; two unlabelled images with different KVP are paired by KVP.
    """
    if len(paths) < 2:
        return None
    try:
        infos = [energy_of(p) for p in paths]
    except (OSError, pydicom.errors.InvalidDicomError) as exc:
        LOGGER.info("no dual-energy pair: %s", exc)
        return None
    labelled = {i.energy: n for n, i in enumerate(infos) if i.energy}
    if "HIGH" in labelled and "LOW" in labelled:
        return labelled["HIGH"], labelled["LOW"]
    if len(infos) == 2 and all(i.kvp for i in infos) and infos[0].kvp != infos[1].kvp:
        high = 0 if (infos[0].kvp or 0) > (infos[1].kvp or 0) else 1
        return high, 1 - high
    return None


__all__ = [
    "BACKGROUND",
    "CT_BANDS_MHU",
    "DE_OPAQUE",
    "DE_RATIO_BANDS",
    "EnergyInfo",
    "INORGANIC",
    "MATERIAL_NAMES",
    "METAL",
    "OPAQUE",
    "ORGANIC",
    "classify_density",
    "classify_dual_energy",
    "ct_bands",
    "dual_energy_pair",
    "energy_of",
]
