"""Synthetic security scans: a packed suitcase on a belt, with optional planted threats.

Used by the demo's simulated scanner, by tests and by benchmarks. Everything is
deterministic for a seed, vectorised, and built object by object inside small bounding
sub-boxes (never one full-volume mask per object), so a 512x512x300 bag takes a few
seconds and a 256x256x96 bag well under one.

Units
-----
Voxels are ``int16`` in a 0-based, density-like *modified Hounsfield* scale (MHU), the
convention of security CT: **air = 0, water = 1000**, and for low-Z materials the value is
about 1000 x density in g/cm^3. Metals are given larger values (coins ~8500-9500).
Noise can push air slightly below 0; values are clipped to ``[MHU_MIN, MHU_MAX]``.
When written to DICOM the stored pixels are ``uint16`` = MHU + 1000 with RescaleSlope 1,
RescaleIntercept -1000 and RescaleType "MHU", so applying the rescale gives back the
voxels exactly.

Ranges used (MHU):

=============================  ==========================================
air                            0 (+ noise, sigma ~12)
clothes                        60-380, in wavy folded layers
water / drinks / shampoo       950-1050 (PET wall 1300, HDPE wall 950)
conveyor belt (rubber)         1100
hard-case shell                1200, zip line 2500-4000
book                           1100-1350 (below the threat band)
shoe sole / upper              1250 / 1100 (plus a thin steel shank)
PVC document folder            1480 -- IN the band, but one voxel thin
laptop                         chassis 3200, battery 2300, PCB 1850 with
                               6000 traces, chips 2600, screen glass 2500
ceramic mug                    2300
trolley rails (aluminium)      3000
coins / keys                   8000-9500
**planted threats**            THREAT_DENSITY_RANGE = (1400, 1700), every
                               voxel of the box, mean within the band
=============================  ==========================================

Held-apart bags (``held_apart=True``): the default threats sit in the density band and
the sizes the built-in detector is tuned to, so its figures on them say little about
anything else. Held-apart threats are, in turn (``HELD_APART_KINDS``):

=============================  ==========================================
low-density                    1150-1380 (peroxide or nitrate mixtures)
high-density                   1720-1900 (PETN, RDX, HMX)
sheet                          in the band, 2-3.5 mm thick (sheet explosive)
small                          in the band, 12-16 mm cube, 2-4 ml (a booster)
=============================  ==========================================

and every held-apart bag, clear ones too, also holds a jar of honey (1420-1450, in the
band and thick, glass wall 2500): the classic nuisance alarm. The detector is never
tuned on these bags; ``station bench detect`` reports its figures on both sets.

Geometry
--------
The volume is ``(z, y, x)``: z runs along the belt (one slice per z), y is vertical with
row 0 at the top (the belt is near the bottom rows), x runs across the belt. The bag is
about 600 (x) x 250 (y) x 400 (z) mm: the axial field of view is 680 mm square
(``spacing_x = spacing_y = 680 / size``) and the scanned length 440 mm
(``spacing_z = 440 / slices``). Threat and item boxes are given in VOXEL coordinates
``(x, y, z)`` as DICOS ThreatROIBase / ThreatROIExtents use them: ``base`` is the index of
the first voxel, ``extent`` the number of voxels, so the box covers
``base .. base + extent - 1`` along each axis.

Seeds: the case, clutter, clothes and noise come from independent random streams, so
the same seed gives the same bag whatever the number of threats; voxels outside the
threat boxes are identical between ``threats=0`` and ``threats=3`` (useful for
threat-image-projection style comparisons).

Writing
-------
``write_ct_series`` writes classic CT (one file per slice) or one DICOS CT multi-frame
instance; ``write_dx`` writes a projection (single or dual energy). Both write
``truth.json`` next to the images. Compressed transfer syntaxes for writing, with the
libraries installed here (pydicom 3 ``Dataset.compress``):

* RLE Lossless (1.2.840.10008.1.2.5): works (pylibjpeg-rle, or pydicom's own encoder).
* JPEG 2000 Lossless (1.2.840.10008.1.2.4.90): works (pylibjpeg-openjpeg).
* JPEG-LS: needs ``pyjpegls``, not installed.
* JPEG Lossless (1.2.840.10008.1.2.4.70 / .57), the syntax DICOS vendors commonly use:
  pydicom has NO encoder for it (pylibjpeg-libjpeg only decodes), so it cannot be
  written here; asking for it raises ``ValueError``.
Deflated and Implicit VR Little Endian are accepted as well.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pydicom.uid
from pydicom.datadict import keyword_for_tag
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.pixels import get_encoder
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    PYDICOM_ROOT_UID,
    UID,
    CTImageStorage,
    DeflatedExplicitVRLittleEndian,
    DICOSCTImageStorage,
    DICOSDigitalXRayImageStorageForPresentation,
    DigitalXRayImageStorageForPresentation,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    RLELossless,
    generate_uid,
)
from pydicom.valuerep import format_number_as_ds

from station.core.dicos.site import Site, set_dicos_common

LOGGER = logging.getLogger(__name__)

__all__ = [
    "BagVolume",
    "MHU_MAX",
    "MHU_MIN",
    "PlacedItem",
    "PlantedThreat",
    "SUPPORTED_TRANSFER_SYNTAXES",
    "HELD_APART_KINDS",
    "THREAT_DENSITY_RANGE",
    "make_bag_volume",
    "synth_main",
    "write_ct_series",
    "write_dx",
]

# Explosive-like density band in MHU (about 1.40-1.70 g/cm^3: TNT, Semtex, C-4 sit here).
# Every voxel of a planted threat box lies in this closed interval; no harmless object
# has a compact (3x3x3) in-band region.
THREAT_DENSITY_RANGE: tuple[int, int] = (1400, 1700)

# Held-apart threats (see the module docstring): kind -> MHU range.
HELD_APART_KINDS: dict[str, tuple[int, int]] = {
    "low-density": (1150, 1380),
    "high-density": (1720, 1900),
    "sheet": THREAT_DENSITY_RANGE,
    "small": THREAT_DENSITY_RANGE,
}

MHU_MIN = -1000  # so that stored = MHU + 1000 always fits uint16 (>= 0)
MHU_MAX = 30000
RESCALE_INTERCEPT = -1000  # stored uint16 = MHU - RESCALE_INTERCEPT

# Field of view and nominal bag size, millimetres.
FOV_XY_MM = 680.0
FOV_Z_MM = 440.0
CASE_MM_XYZ = (600.0, 250.0, 400.0)

NOISE_SIGMA = 12.0  # MHU, image noise of the reconstruction

# DX: stored pixel = DX_SCALE * ln(I0 / I) (log attenuation, higher = more attenuating).
DX_SCALE = 1000.0
DX_PHOTONS = 2.0e5  # unattenuated counts per pixel; ln(DX_PHOTONS) ~ 12.2 is "opaque"
DX_KVP = {"HIGH": 140.0, "LOW": 80.0, "SINGLE": 120.0}

# Organisation root for deterministic UIDs: pydicom's root (generate_uid ignores entropy
# with prefix=None, so a root prefix is needed for reproducible UIDs).
UID_ROOT = PYDICOM_ROOT_UID
MANUFACTURER = "Inspection Station Synth"
# The simulated scanner's own identity in its DICOS objects (calibrated at acquisition,
# so a seed still gives byte-identical files).
SYNTH_SITE = Site(institution_name="Synthetic checkpoint", institution_address="Lane 1, test hall",
                  station_name="SYNTH01", device_serial_number="SYNTH-0001",
                  ooi_id_assigning_authority="SYNTH")

SUPPORTED_TRANSFER_SYNTAXES: tuple[UID, ...] = (
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    DeflatedExplicitVRLittleEndian,
    RLELossless,
    JPEG2000Lossless,
)
_COMPRESSED = {RLELossless, JPEG2000Lossless}


# ---------------------------------------------------------------------------------------
# Public data model
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PlantedThreat:
    """A threat planted in a synthetic bag: the ground truth a detector is scored against.

    ``base_xyz`` / ``extent_xyz`` are voxel coordinates (x, y, z) of the volume, as in
    DICOS ThreatROIBase / ThreatROIExtents; every voxel in the box belongs to the threat.
    ``density`` is the nominal (mean) value in MHU.
    """

    id: int
    base_xyz: tuple[int, int, int]
    extent_xyz: tuple[int, int, int]
    category: str = "EXPLOSIVE"
    density: float = 0.0
    kind: str = ""  # a HELD_APART_KINDS key for held-apart threats

    @property
    def slices(self) -> tuple[slice, slice, slice]:
        """Index expression (z, y, x) selecting the box in ``BagVolume.voxels``."""
        return _xyz_slices(self.base_xyz, self.extent_xyz)

    @property
    def center_xyz(self) -> tuple[float, float, float]:
        """Centre of the box in voxel coordinates (x, y, z)."""
        x, y, z = (b + (e - 1) / 2.0 for b, e in zip(self.base_xyz, self.extent_xyz))
        return x, y, z

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "base": list(self.base_xyz),
            "extent": list(self.extent_xyz),
            "category": self.category,
            "density": round(self.density, 1),
            **({"kind": self.kind} if self.kind else {}),
        }


@dataclass(frozen=True)
class PlacedItem:
    """A harmless object packed in the bag (for tests, debugging and detector scoring).

    ``kind`` is one of "electronics", "liquid", "metal", "structure", "confuser"
    ("confuser" = harmless but dense enough to fool a naive threshold detector).
    ``density_range`` is the nominal MHU range of the materials, before noise.
    """

    name: str
    kind: str
    base_xyz: tuple[int, int, int]
    extent_xyz: tuple[int, int, int]
    density_range: tuple[int, int]

    @property
    def slices(self) -> tuple[slice, slice, slice]:
        """Index expression (z, y, x) selecting the item's box in ``BagVolume.voxels``."""
        return _xyz_slices(self.base_xyz, self.extent_xyz)

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "base": list(self.base_xyz),
            "extent": list(self.extent_xyz),
            "density_range": list(self.density_range),
        }


@dataclass(frozen=True, eq=False)
class BagVolume:
    """A synthetic CT volume of one bag, with its geometry and ground truth.

    ``voxels`` is (z, y, x) int16 MHU (see module docstring) and is made read-only so the
    frozen dataclass really is immutable. ``spacing_mm`` is (z, y, x); ``origin_mm`` is the
    DICOM patient position (x, y, z) of voxel (0, 0, 0); slices are axial
    (orientation [1,0,0,0,1,0]) and z grows with the slice index.
    ``case_base_xyz`` / ``case_extent_xyz`` bound the suitcase shell in voxels.
    """

    voxels: np.ndarray
    spacing_mm: tuple[float, float, float]
    origin_mm: tuple[float, float, float]
    threats: list[PlantedThreat] = field(default_factory=list)
    items: list[PlacedItem] = field(default_factory=list)
    case_base_xyz: tuple[int, int, int] = (0, 0, 0)
    case_extent_xyz: tuple[int, int, int] = (0, 0, 0)

    @property
    def shape(self) -> tuple[int, int, int]:
        """(slices, rows, columns)."""
        nz, ny, nx = self.voxels.shape
        return nz, ny, nx

    def geometry_json(self) -> dict[str, Any]:
        """Volume geometry as written to ``truth.json``."""
        return {
            "shape_zyx": list(self.shape),
            "spacing_mm_zyx": list(self.spacing_mm),
            "origin_mm_xyz": list(self.origin_mm),
            "orientation": [1, 0, 0, 0, 1, 0],
            "units": "MHU (air 0, water 1000); DICOM stored = MHU + 1000, intercept -1000",
            "threat_density_range": list(THREAT_DENSITY_RANGE),
            "case_base_xyz": list(self.case_base_xyz),
            "case_extent_xyz": list(self.case_extent_xyz),
            "box_convention": "voxel (x, y, z); base = first voxel, extent = voxel count",
        }


def _xyz_slices(base: Sequence[int], extent: Sequence[int]) -> tuple[slice, slice, slice]:
    x, y, z = base
    ex, ey, ez = extent
    return slice(z, z + ez), slice(y, y + ey), slice(x, x + ex)


# ---------------------------------------------------------------------------------------
# Volume generation
# ---------------------------------------------------------------------------------------


class _Box(NamedTuple):
    """Half-open voxel box in (z, y, x) order, internal to the generator."""

    lo: tuple[int, int, int]
    hi: tuple[int, int, int]

    @classmethod
    def of(cls, lo: Sequence[int], hi: Sequence[int]) -> _Box:
        return cls((int(lo[0]), int(lo[1]), int(lo[2])), (int(hi[0]), int(hi[1]), int(hi[2])))

    @property
    def slices(self) -> tuple[slice, slice, slice]:
        (z0, y0, x0), (z1, y1, x1) = self.lo, self.hi
        return slice(z0, z1), slice(y0, y1), slice(x0, x1)

    @property
    def ext(self) -> tuple[int, int, int]:
        (z0, y0, x0), (z1, y1, x1) = self.lo, self.hi
        return z1 - z0, y1 - y0, x1 - x0

    def overlaps(self, other: _Box, margin: int = 1) -> bool:
        return all(
            a_lo < b_hi + margin and b_lo < a_hi + margin
            for a_lo, a_hi, b_lo, b_hi in zip(self.lo, self.hi, other.lo, other.hi)
        )

    def xyz(self) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
        (z0, y0, x0), (nz, ny, nx) = self.lo, self.ext
        return (x0, y0, z0), (nx, ny, nz)


class _Builder:
    """State shared while one bag is built: the volume, the case and what is placed."""

    def __init__(self, vol: np.ndarray, spacing: tuple[float, float, float]) -> None:
        self.vol = vol
        self.spacing = np.asarray(spacing, dtype=np.float64)  # (z, y, x) mm
        self.interior: np.ndarray = np.zeros((0, 0, 0), dtype=bool)  # over case box
        self.case = _Box((0, 0, 0), (0, 0, 0))
        self.inner = _Box((0, 0, 0), (0, 0, 0))  # bounding box of the interior
        self.occupied: list[_Box] = []
        self.items: list[PlacedItem] = []

    def vox(self, mm: float, axis: int) -> int:
        """Length in mm -> voxel count along axis (z=0, y=1, x=2), at least one voxel."""
        return max(1, int(round(mm / self.spacing[axis])))

    def interior_of(self, box: _Box) -> np.ndarray:
        """Interior mask restricted to ``box`` (which must lie within the case box)."""
        return self.interior[
            tuple(slice(a - c, b - c) for a, b, c in zip(box.lo, box.hi, self.case.lo))
        ]

    def place(
        self, rng: np.random.Generator, ext: Sequence[int], *, tries: int = 60,
        avoid: Sequence[_Box] | None = None, need_interior: bool = False,
        y_bias: str | None = None,
    ) -> _Box | None:
        """Find a free spot of size ``ext`` (z, y, x) in the interior, or None.

        Rejection sampling against the boxes already placed: few objects, so this is
        cheaper and simpler than an occupancy grid.
        """
        lo, hi = self.inner.lo, self.inner.hi
        ext = [min(int(e), h - l) for e, l, h in zip(ext, lo, hi)]
        if min(ext) < 1:
            return None
        boxes = self.occupied if avoid is None else avoid
        for _ in range(tries):
            start = []
            for axis in range(3):
                span = hi[axis] - lo[axis] - ext[axis]
                if axis == 1 and y_bias == "bottom":
                    # Heavy things lie low in a bag.
                    off = span - int(rng.integers(0, max(1, span // 3 + 1)))
                else:
                    off = int(rng.integers(0, span + 1))
                start.append(lo[axis] + off)
            box = _Box.of(start, [s + e for s, e in zip(start, ext)])
            if any(box.overlaps(b) for b in boxes):
                continue
            if need_interior and not self.interior_of(box).all():
                continue
            return box
        return None

    def paint(self, box: _Box, mask: np.ndarray, values: np.ndarray | int) -> None:
        """Write ``values`` where ``mask`` (local to box) and the bag interior are true."""
        sub = self.vol[box.slices]
        m = mask & self.interior_of(box)
        if np.isscalar(values):
            sub[m] = values
        else:
            sub[m] = np.broadcast_to(values, box.ext)[m]

    def local_mm(self, box: _Box) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Open grids (z, y, x) in mm relative to the box centre."""
        out = []
        for axis, n in enumerate(box.ext):
            c = (np.arange(n, dtype=np.float32) - (n - 1) / 2.0) * np.float32(self.spacing[axis])
            shape = [1, 1, 1]
            shape[axis] = n
            out.append(c.reshape(shape))
        return out[0], out[1], out[2]

    def record(self, name: str, kind: str, box: _Box, dens: tuple[int, int]) -> None:
        self.occupied.append(box)
        base, ext = box.xyz()
        self.items.append(PlacedItem(name, kind, base, ext, dens))


def make_bag_volume(
    size: int = 256,
    slices: int = 96,
    threats: int = 0,
    seed: int = 0,
    clear_dense: bool = True,
    held_apart: bool = False,
) -> BagVolume:
    """Build a synthetic suitcase CT volume of shape (slices, size, size).

    ``threats`` compact explosive-like blocks are planted (boxes known exactly, see
    ``BagVolume.threats``). With ``clear_dense`` the bag also holds harmless dense
    confusers (book, shoe, shampoo, mug, PVC folder) whose densities are outside
    THREAT_DENSITY_RANGE or which are thin. ``held_apart``: threats outside the band and
    sizes the detector is tuned to, and a jar of honey (module docstring). Raises ValueError for sizes too small to hold
    a bag or when the threats cannot be placed.
    """
    if size < 32 or slices < 8:
        raise ValueError(f"volume too small for a bag: size={size}, slices={slices}")
    if threats < 0:
        raise ValueError("threats must be >= 0")

    # Round spacings so that positions written as DICOM DS strings stay exact.
    sxy = round(FOV_XY_MM / size, 4)
    sz = round(FOV_Z_MM / slices, 4)
    spacing = (sz, sxy, sxy)
    origin = (round(-(size - 1) / 2.0 * sxy, 4), round(-(size - 1) / 2.0 * sxy, 4), 0.0)

    # Independent streams: changing the threat count or clear_dense must not move the
    # rest of the bag.
    rng_case = np.random.default_rng([seed, 1])
    rng_items = np.random.default_rng([seed, 2])
    rng_conf = np.random.default_rng([seed, 3])
    rng_threat = np.random.default_rng([seed, 4])
    rng_noise = np.random.default_rng([seed, 5])
    rng_clothes = np.random.default_rng([seed, 6])
    rng_held = np.random.default_rng([seed, 7])

    vol = np.zeros((slices, size, size), dtype=np.int16)
    b = _Builder(vol, spacing)

    _add_belt(b)
    _add_case_and_clothes(b, rng_case, rng_clothes)
    _add_items(b, rng_items)
    if clear_dense:
        _add_confusers(b, rng_conf)
    if held_apart:
        _add_honey(b, rng_held)
    _add_noise(vol, rng_noise)
    np.clip(vol, MHU_MIN, MHU_MAX, out=vol)
    planted = _add_threats(b, rng_threat, threats, held_apart=seed if held_apart else None)

    vol.flags.writeable = False
    case_base, case_ext = b.case.xyz()
    LOGGER.debug("synthetic bag seed=%d shape=%s threats=%d items=%d",
                 seed, vol.shape, len(planted), len(b.items))
    return BagVolume(
        voxels=vol, spacing_mm=spacing, origin_mm=origin, threats=planted,
        items=b.items, case_base_xyz=case_base, case_extent_xyz=case_ext,
    )


def _add_belt(b: _Builder) -> None:
    """Rubber conveyor belt under the bag: a thin slab across the whole field of view."""
    size = b.vol.shape[1]
    top = int(round(size * 0.86))
    rows = b.vox(8.0, 1)
    b.vol[:, top:top + rows, :] = 1100


def _add_case_and_clothes(
    b: _Builder, rng: np.random.Generator, rng_clothes: np.random.Generator
) -> None:
    """Hard-case shell (rounded box, thin walls, zip line) filled with folded clothes.

    The shell is a signed-distance rounded box evaluated in mm (so anisotropic voxels
    keep round corners), slab by slab over the case's bounding box only.
    """
    nz, ny, nx = b.vol.shape
    sz, sy, sx = b.spacing
    scale = rng.uniform(0.92, 1.04, size=3)
    half = np.array([CASE_MM_XYZ[2], CASE_MM_XYZ[1], CASE_MM_XYZ[0]]) * scale[::-1] / 2.0  # z,y,x
    belt_top = int(round(ny * 0.86))
    bottom = belt_top - 1
    height_vox = int(round(2 * half[1] / sy))
    top = max(1, bottom - height_vox + 1)
    cy = (top + bottom) / 2.0
    half[1] = (bottom - top + 1) / 2.0 * sy
    cz = (nz - 1) / 2.0 + rng.uniform(-10.0, 10.0) / sz
    cx = (nx - 1) / 2.0 + rng.uniform(-15.0, 15.0) / sx
    center = np.array([cz, cy, cx])
    radius = float(min(rng.uniform(30.0, 50.0), 0.8 * half.min()))
    # A closed wall needs at least one voxel along every axis, whatever the spacing.
    wall = max(3.0, float(b.spacing.max()) * 1.01)

    lo = [max(0, int(math.floor(c - h / s))) for c, h, s in zip(center, half, b.spacing)]
    hi = [min(n, int(math.ceil(c + h / s)) + 1)
          for c, h, s, n in zip(center, half, b.spacing, b.vol.shape)]
    coords = [(np.arange(l, h, dtype=np.float32) - np.float32(c)) * np.float32(s)
              for l, h, c, s in zip(lo, hi, center, b.spacing)]
    # Exact case extent: the faces of a rounded box are flat where |p| <= half.
    inside_axis = [np.nonzero(np.abs(c) <= h)[0] + l for c, h, l in zip(coords, half, lo)]
    b.case = _Box.of([a[0] for a in inside_axis], [a[-1] + 1 for a in inside_axis])
    # Trim the working box to the case box.
    coords = [c[cb - l:ce - l] for c, cb, ce, l in zip(coords, b.case.lo, b.case.hi, lo)]
    q = [np.abs(c) - np.float32(h - radius) for c, h in zip(coords, half)]
    outer2 = [np.square(np.maximum(qa, 0)) for qa in q]
    qz, qy, qx = q[0][:, None, None], q[1][None, :, None], q[2][None, None, :]

    cbz, cby, cbx = b.case.lo
    ez, ey, ex = b.case.ext
    b.interior = np.zeros((ez, ey, ex), dtype=bool)
    shell_val = np.int16(1200)
    seam_row = int(round(cy)) - cby  # zip runs around the side walls at mid height
    zip_pattern = np.where((np.arange(ex)[None, :] + np.arange(ez)[:, None]) % 3 == 0, 4000, 2500)

    clothes_lut, shift_idx = _clothes_model(b, rng_clothes, coords)

    chunk = 24
    for z0 in range(0, ez, chunk):
        z1 = min(ez, z0 + chunk)
        zs = slice(z0, z1)
        outside = np.sqrt(outer2[0][zs, None, None] + outer2[1][None, :, None]
                          + outer2[2][None, None, :])
        inner = np.minimum(np.maximum(np.maximum(qz[zs], qy), qx), 0)
        sdf = outside + inner - np.float32(radius)
        inside = sdf <= 0
        interior = sdf <= -wall
        b.interior[zs] = interior
        sub = b.vol[cbz + z0:cbz + z1, cby:cby + ey, cbx:cbx + ex]
        # Clothes: rows of a per-shift profile table, gathered per (z, x) column.
        clothes = clothes_lut[shift_idx[zs]].transpose(0, 2, 1)
        np.copyto(sub, clothes, where=interior)
        shell = inside & ~interior
        sub[shell] = shell_val
        seam = shell[:, seam_row, :]
        sub[:, seam_row, :][seam] = zip_pattern[zs][seam]

    inner_any = [np.nonzero(b.interior.any(axis=axes))[0] for axes in ((1, 2), (0, 2), (0, 1))]
    b.inner = _Box.of([a[0] + o for a, o in zip(inner_any, b.case.lo)],
                      [a[-1] + 1 + o for a, o in zip(inner_any, b.case.lo)])
    # Recorded but not added to b.occupied: the shell encloses everything, it is not an
    # obstacle for placement.
    case_base, case_ext = b.case.xyz()
    b.items.append(PlacedItem("case shell", "structure", case_base, case_ext, (1200, 4000)))


def _clothes_model(
    b: _Builder, rng: np.random.Generator, coords: list[np.ndarray]
) -> tuple[np.ndarray, np.ndarray]:
    """Folded clothes as layered garments displaced by smooth fold fields.

    Returns a table ``lut[shift_index, y]`` (int16) and ``shift_idx[z, x]`` so that the
    clothes value at (z, y, x) is ``lut[shift_idx[z, x], y]``: one row gather per column
    instead of a per-voxel computation. Two packing regions (left/right) get different
    garment stacks.
    """
    zc, yc, xc = coords
    sy = float(b.spacing[1])
    ny = yc.size
    max_shift = max(1, int(round(18.0 / sy)))
    n_shift = 2 * max_shift + 1
    fill = rng.uniform(0.7, 0.95)
    prof_len = ny + 2 * max_shift + 2

    def profile() -> np.ndarray:
        prof = np.zeros(prof_len, dtype=np.int16)
        h = 0
        limit = int(fill * ny)
        while h < limit:
            th = max(1, int(round(rng.uniform(6.0, 35.0) / sy)))
            dens = rng.uniform(60.0, 380.0)
            wobble = rng.uniform(0.85, 1.15, size=th)
            prof[h:min(limit, h + th)] = (dens * wobble)[: max(0, min(limit, h + th) - h)]
            h += th + int(rng.integers(0, 2))
        return prof

    # height above the interior bottom of each local row (row 0 is the top of the case)
    heights = (ny - 1 - np.arange(ny))[None, :]
    shifts = np.arange(n_shift)[:, None] - max_shift
    idx = np.clip(heights + shifts, 0, prof_len - 1)
    lut = np.concatenate([profile()[idx], profile()[idx]], axis=0)

    # fold displacement, in voxels, from a few smooth waves over (z, x) in mm
    z2, x2 = zc[:, None], xc[None, :]
    disp = np.zeros((zc.size, xc.size), dtype=np.float32)
    for _ in range(3):
        amp = rng.uniform(3.0, 12.0) / sy
        lam1, lam2 = rng.uniform(60.0, 260.0, size=2)
        ph1, ph2 = rng.uniform(0, 2 * np.pi, size=2)
        theta = rng.uniform(0, np.pi)
        disp += amp * np.sin(2 * np.pi * (x2 * np.cos(theta) + z2 * np.sin(theta)) / lam1 + ph1) \
            * np.cos(2 * np.pi * z2 / lam2 + ph2)
    shift = np.clip(np.rint(disp), -max_shift, max_shift).astype(np.intp) + max_shift
    split = rng.uniform(-100.0, 100.0) + 40.0 * np.sin(2 * np.pi * z2 / rng.uniform(150.0, 400.0))
    region = (x2 > split).astype(np.intp)
    return lut, shift + region * n_shift


def _add_items(b: _Builder, rng: np.random.Generator) -> None:
    """Everyday contents: trolley rails, a laptop, bottles, coins and keys."""
    _add_rails(b, rng)
    _add_laptop(b, rng)
    for i in range(int(rng.integers(1, 3))):
        _add_bottle(b, rng, f"water bottle {i + 1}")
    for i in range(int(rng.integers(3, 8))):
        _add_coin(b, rng, f"coin {i + 1}")
    for i in range(int(rng.integers(1, 3))):
        _add_key(b, rng, f"key {i + 1}")


def _add_rails(b: _Builder, rng: np.random.Generator) -> None:
    """Two aluminium trolley-handle tubes lying along x on the case bottom."""
    lo, hi = b.inner.lo, b.inner.hi
    length = b.vox(rng.uniform(0.65, 0.8) * CASE_MM_XYZ[0], 2)
    length = min(length, hi[2] - lo[2])
    x0 = lo[2] + (hi[2] - lo[2] - length) // 2
    rad = 10.0
    ny, nz = b.vox(2 * rad, 1), b.vox(2 * rad, 0)
    y0 = hi[1] - ny
    zmid = (lo[0] + hi[0]) // 2
    off = b.vox(80.0, 0)
    for name, zc in (("trolley rail 1", zmid - off), ("trolley rail 2", zmid + off)):
        z0 = max(lo[0], min(hi[0] - nz, zc - nz // 2))
        box = _Box((z0, y0, x0), (z0 + nz, y0 + ny, x0 + length))
        zz, yy, _ = b.local_mm(box)
        ry, rz = ny * b.spacing[1] / 2, nz * b.spacing[0] / 2
        rn = np.sqrt((yy / ry) ** 2 + (zz / rz) ** 2)
        thick = max(b.spacing[0] / rz, b.spacing[1] / ry, 1.5 / rad)
        tube = (rn <= 1.0) & (rn > 1.0 - thick)
        b.paint(box, np.broadcast_to(tube, box.ext), 3000)
        b.record(name, "metal", box, (3000, 3000))


def _add_laptop(b: _Builder, rng: np.random.Generator) -> None:
    """Laptop: aluminium chassis, battery block with cells, PCB with traces and chips."""
    w, d, t = rng.uniform(300, 350), rng.uniform(210, 240), rng.uniform(18, 24)
    swap = bool(rng.integers(0, 2))
    ext = (b.vox(w if swap else d, 0), b.vox(t, 1), b.vox(d if swap else w, 2))
    box = b.place(rng, ext, y_bias="bottom")
    if box is None:
        LOGGER.debug("no room for the laptop")
        return
    nz, ny, nx = box.ext
    val = np.full(box.ext, 350, dtype=np.int16)  # air, plastic and boards averaged
    if ny >= 3:
        val[:, 1, :] = 2500  # lid glass just under the top
        pcb = val[:, ny - 2, :]
        pcb[:] = 1850
        zi, xi = np.ogrid[:nz, :nx]
        pcb[((xi % 5) == 0) | ((zi % 7) == 0)] = 6000  # copper traces
        for _ in range(int(rng.integers(3, 7))):
            cz, cx = int(rng.integers(0, nz)), int(rng.integers(0, nx))
            pcb[cz:cz + 3, cx:cx + 3] = 2600
    # battery along the back edge (the long axis), with gaps between cells
    long_axis = 0 if swap else 2
    bz = slice(int(nz * 0.72), nz - 1) if long_axis == 2 else slice(1, nz - 1)
    bx = slice(1, nx - 1) if long_axis == 2 else slice(int(nx * 0.72), nx - 1)
    by = slice(max(1, ny // 3), max(2, ny - 1))
    battery = val[bz, by, bx]
    battery[:] = 2300
    cell = max(2, b.vox(18.0, long_axis))
    if long_axis == 2:
        battery[:, :, ::cell] = 600
    else:
        battery[::cell] = 600
    # chassis: the outer voxel layer on all six faces
    val[[0, -1], :, :] = 3200
    val[:, [0, -1], :] = 3200
    val[:, :, [0, -1]] = 3200
    b.paint(box, np.ones(box.ext, dtype=bool), val)
    b.record("laptop", "electronics", box, (350, 6000))


def _cylinder(b: _Builder, box: _Box, axis: int) -> tuple[np.ndarray, np.ndarray, float]:
    """Normalised radius (1 at the surface) of the elliptic cylinder filling ``box``
    along ``axis``; also the axial coordinate in mm and one voxel as a radius fraction."""
    grids = b.local_mm(box)
    others = [a for a in range(3) if a != axis]
    radii = [box.ext[a] * b.spacing[a] / 2.0 for a in others]
    rn = np.sqrt(sum((grids[a] / r) ** 2 for a, r in zip(others, radii)))
    one_voxel = max(b.spacing[a] / r for a, r in zip(others, radii))
    return rn, grids[axis], float(one_voxel)


def _add_bottle(b: _Builder, rng: np.random.Generator, name: str) -> None:
    """PET bottle lying down, partly filled: liquid settles low (large y), air on top."""
    radius, length = rng.uniform(30.0, 40.0), rng.uniform(180.0, 250.0)
    axis = 2 if rng.integers(0, 2) else 0
    ext = [b.vox(2 * radius, 0), b.vox(2 * radius, 1), b.vox(2 * radius, 2)]
    ext[axis] = b.vox(length, axis)
    box = b.place(rng, ext)
    if box is None:
        return
    rn, along, one = _cylinder(b, box, axis)
    _, yy, _ = b.local_mm(box)
    neck = along > 0.3 * length  # the last fifth is a narrow neck and cap
    body = (rn <= 1.0) & ~neck
    wall = body & (rn > 1.0 - one)
    liquid_level = rng.uniform(-0.3, 1.0) * radius  # y grows downwards
    liquid = body & ~wall & (yy >= -liquid_level)
    cap = neck & (rn <= 0.4)
    dens = int(rng.uniform(1000, 1030))
    val = np.zeros(box.ext, dtype=np.int16)
    val[...] = np.where(liquid, dens, 0)
    val[wall] = 1300
    val[cap] = 900
    b.paint(box, body | cap, val)
    b.record(name, "liquid", box, (900, 1300))


def _add_coin(b: _Builder, rng: np.random.Generator, name: str) -> None:
    """A coin: a flat disc of copper/nickel alloy lying in the x-z plane."""
    r = rng.uniform(8.0, 13.0)
    box = b.place(rng, (b.vox(2 * r, 0), b.vox(2.0, 1), b.vox(2 * r, 2)))
    if box is None:
        return
    rn, _, _ = _cylinder(b, box, 1)
    dens = int(rng.uniform(8000, 9500))
    b.paint(box, np.broadcast_to(rn <= 1.0, box.ext), dens)
    b.record(name, "metal", box, (dens, dens))


def _add_key(b: _Builder, rng: np.random.Generator, name: str) -> None:
    """A brass key: round bow with a hole and a notched blade, flat in the x-z plane."""
    length, bow = rng.uniform(50.0, 65.0), rng.uniform(11.0, 14.0)
    along_x = bool(rng.integers(0, 2))
    ext = (b.vox(2 * bow if along_x else length, 0), b.vox(2.5, 1),
           b.vox(length if along_x else 2 * bow, 2))
    box = b.place(rng, ext)
    if box is None:
        return
    zz, _, xx = b.local_mm(box)
    u, v = (xx, zz) if along_x else (zz, xx)  # u along the key, v across
    u = u + np.float32(length / 2)  # 0 at the bow end
    bow_d = np.sqrt((u - bow) ** 2 + v ** 2)
    bow_mask = (bow_d <= bow) & (bow_d > 0.35 * bow)
    notches = (np.floor(u / 4.0) % 2) == 0
    blade = (u > 1.6 * bow) & (np.abs(v) <= np.where(notches, 4.0, 2.5))
    mask = np.broadcast_to(bow_mask | blade, box.ext)
    b.paint(box, mask, 8400)
    b.record(name, "metal", box, (8400, 8400))


def _add_confusers(b: _Builder, rng: np.random.Generator) -> None:
    """Harmless dense objects that fool a naive threshold detector.

    Each is either outside THREAT_DENSITY_RANGE (book just below it, mug and shank above)
    or in the band but one voxel thin (PVC folder).
    """
    _add_book(b, rng)
    _add_shoe(b, rng)
    _add_shampoo(b, rng)
    _add_mug(b, rng)
    _add_folder(b, rng)


def _add_book(b: _Builder, rng: np.random.Generator) -> None:
    """Hardback book: dense covers (1350) and page stack striated 1100-1250."""
    w, d, t = rng.uniform(200, 250), rng.uniform(140, 180), rng.uniform(25, 40)
    box = b.place(rng, (b.vox(d, 0), b.vox(t, 1), b.vox(w, 2)))
    if box is None:
        return
    ny = box.ext[1]
    rows = np.where(np.arange(ny) % 2 == 0, 1100, 1250).astype(np.int16)
    val = np.broadcast_to(rows[None, :, None], box.ext).copy()
    if ny >= 3:
        val[:, [0, -1], :] = 1350
    b.paint(box, np.ones(box.ext, dtype=bool), val)
    b.record("book", "confuser", box, (1100, 1350))


def _add_shoe(b: _Builder, rng: np.random.Generator) -> None:
    """Shoe lying on its sole: rubber sole (1250) with tread, thin leather upper (1100),
    a one-voxel steel shank (7800) inside the sole."""
    length, width, height = rng.uniform(250, 290), rng.uniform(90, 110), rng.uniform(80, 110)
    along_x = bool(rng.integers(0, 2))
    ext = (b.vox(width if along_x else length, 0), b.vox(height, 1),
           b.vox(length if along_x else width, 2))
    box = b.place(rng, ext, tries=200)
    if box is None:
        return
    zz, yy, xx = b.local_mm(box)
    u, v = (xx, zz) if along_x else (zz, xx)
    half_h = box.ext[1] * b.spacing[1] / 2
    sole_t = max(float(b.spacing[1]), 25.0)
    footprint = (u / (length / 2)) ** 2 + (v / (width / 2)) ** 2 <= 1.0
    sole = footprint & (yy >= half_h - sole_t)
    tread = sole & (yy >= half_h - b.spacing[1]) & ((np.floor(u / 8.0) % 2) == 0)
    # upper: half ellipsoid shell over the sole
    en = np.sqrt((u / (length / 2)) ** 2 + (v / (width / 2)) ** 2
                 + ((yy - (half_h - sole_t)) / (2 * half_h - sole_t)) ** 2)
    one = float(max(b.spacing[2] / (length / 2), b.spacing[1] / (2 * half_h - sole_t)))
    upper = (en <= 1.0) & (en > 1.0 - one) & ~sole
    val = np.zeros(box.ext, dtype=np.int16)
    val[np.broadcast_to(upper, box.ext)] = 1100
    val[np.broadcast_to(sole, box.ext)] = 1250
    val[np.broadcast_to(tread, box.ext)] = 0
    mid_row = int(np.argmin(np.abs(yy.ravel() - (half_h - sole_t / 2))))
    shank = np.zeros(box.ext, dtype=bool)
    strip = np.broadcast_to((np.abs(u) <= 40) & (np.abs(v) <= 6), box.ext)
    shank[:, mid_row, :] = strip[:, mid_row, :]
    val[shank] = 7800
    b.paint(box, np.broadcast_to(upper | sole, box.ext) | shank, val)
    b.record("shoe", "confuser", box, (1100, 7800))


def _add_shampoo(b: _Builder, rng: np.random.Generator) -> None:
    """Shampoo in an oval HDPE bottle lying down: liquid 1030, wall 950."""
    axis = 0 if rng.integers(0, 2) else 2
    ext = [b.vox(rng.uniform(55, 70), 0), b.vox(rng.uniform(35, 45), 1),
           b.vox(rng.uniform(55, 70), 2)]
    ext[axis] = b.vox(rng.uniform(160, 200), axis)
    box = b.place(rng, ext)
    if box is None:
        return
    rn, _, one = _cylinder(b, box, axis)
    body = np.broadcast_to(rn <= 1.0, box.ext)
    val = np.where(rn > 1.0 - one, 950, 1030).astype(np.int16)
    b.paint(box, body, np.broadcast_to(val, box.ext))
    b.record("shampoo", "confuser", box, (950, 1030))


def _add_mug(b: _Builder, rng: np.random.Generator) -> None:
    """Upright ceramic mug (2300): a cylinder wall and base, empty inside."""
    r, h = rng.uniform(38, 45), rng.uniform(85, 100)
    box = b.place(rng, (b.vox(2 * r, 0), b.vox(h, 1), b.vox(2 * r, 2)))
    if box is None:
        return
    rn, yy, one = _cylinder(b, box, 1)
    wall_t = max(one, 5.0 / r)
    half_h = box.ext[1] * b.spacing[1] / 2
    base = yy >= half_h - max(float(b.spacing[1]), 6.0)
    mask = (rn <= 1.0) & ((rn > 1.0 - wall_t) | base)
    b.paint(box, np.broadcast_to(mask, box.ext), 2300)
    b.record("mug", "confuser", box, (2300, 2300))


def _add_folder(b: _Builder, rng: np.random.Generator) -> None:
    """PVC document folder: in the threat density band but a single voxel thin."""
    box = b.place(rng, (b.vox(rng.uniform(200, 230), 0), 1, b.vox(rng.uniform(290, 320), 2)))
    if box is None:
        return
    b.paint(box, np.ones(box.ext, dtype=bool), 1480)
    b.record("pvc folder", "confuser", box, (1480, 1480))


def _add_noise(vol: np.ndarray, rng: np.random.Generator) -> None:
    """Add reconstruction noise (sigma NOISE_SIGMA) to every voxel.

    Drawing 78 M normals for a 512x512x300 volume costs seconds, so one pool of a few
    slices' worth is drawn and each slice takes a window at a random offset.
    """
    nz, ny, nx = vol.shape
    per_slice = ny * nx
    pool = np.rint(rng.normal(0.0, NOISE_SIGMA, size=per_slice * 3 + 7919)).astype(np.int16)
    offsets = rng.integers(0, pool.size - per_slice, size=nz)
    for z in range(nz):
        o = int(offsets[z])
        vol[z] += pool[o:o + per_slice].reshape(ny, nx)


def _add_threats(b: _Builder, rng: np.random.Generator, count: int, held_apart: int | None = None) -> list[PlantedThreat]:
    """Plant ``count`` compact explosive-like blocks fully inside the bag interior.

    Each box is filled entirely with values inside THREAT_DENSITY_RANGE (nominal density,
    a gentle gradient and fine texture, clipped to the band), so the box is exact truth.
    Threats avoid each other always and other items when possible. With ``held_apart``
    (the bag's seed: it picks the first kind) they are of the HELD_APART_KINDS in turn.
    """
    kinds = list(HELD_APART_KINDS)
    planted: list[PlantedThreat] = []
    boxes: list[_Box] = []
    for tid in range(1, count + 1):
        kind = "" if held_apart is None else kinds[(held_apart + tid - 1) % len(kinds)]
        lo_band, hi_band = HELD_APART_KINDS.get(kind, THREAT_DENSITY_RANGE)
        box = None
        for attempt in range(6):
            shrink = 1.0 - 0.15 * attempt
            ext = (b.vox(rng.uniform(40, 150) * shrink, 0),
                   b.vox(rng.uniform(30, 100) * shrink, 1),
                   b.vox(rng.uniform(40, 150) * shrink, 2))
            if kind == "sheet":  # lying flat: thin along y
                ext = (b.vox(rng.uniform(100, 200), 0), b.vox(rng.uniform(2.0, 3.5), 1),
                       b.vox(rng.uniform(100, 200), 2))
            elif kind == "small":
                side = rng.uniform(12.0, 16.0)
                ext = (b.vox(side, 0), b.vox(side, 1), b.vox(side, 2))
            ext = tuple(max(1 if kind == "sheet" else 2, e) for e in ext)
            # first try to keep clear of items, then accept overlap (painted over them)
            avoid = b.occupied + boxes if attempt < 3 else boxes
            box = b.place(rng, ext, avoid=avoid, need_interior=True, tries=80)
            if box is not None:
                break
        if box is None:
            raise ValueError(f"cannot place {count} threats in this bag (placed {tid - 1})")
        nominal = float(rng.uniform(lo_band + 50, hi_band - 50))
        zz, yy, xx = b.local_mm(box)
        grad = rng.uniform(-0.1, 0.1, size=3)
        val = (nominal + grad[0] * zz + grad[1] * yy + grad[2] * xx
               + rng.normal(0.0, NOISE_SIGMA, size=box.ext))
        b.vol[box.slices] = np.clip(np.rint(val), lo_band, hi_band).astype(np.int16)
        boxes.append(box)
        base, ext_xyz = box.xyz()
        planted.append(PlantedThreat(tid, base, ext_xyz, "EXPLOSIVE",
                                     float(b.vol[box.slices].mean()), kind))
    return planted


def _add_honey(b: _Builder, rng: np.random.Generator) -> None:
    """Upright glass jar of honey: in the threat band and thick (a nuisance alarm)."""
    r, h = rng.uniform(35, 40), rng.uniform(90, 110)
    box = b.place(rng, (b.vox(2 * r, 0), b.vox(h, 1), b.vox(2 * r, 2)))
    if box is None:
        return
    rn, _, one = _cylinder(b, box, 1)
    honey = int(rng.uniform(1420, 1450))
    val = np.where(rn > 1.0 - one, 2500, honey).astype(np.int16)
    b.paint(box, np.broadcast_to(rn <= 1.0, box.ext), np.broadcast_to(val, box.ext))
    b.record("honey jar", "confuser", box, (honey, 2500))


# ---------------------------------------------------------------------------------------
# DICOM writing
# ---------------------------------------------------------------------------------------


def _uid(*parts: object) -> UID:
    """Deterministic UID under UID_ROOT from the given parts."""
    # '|' separators: generate_uid joins the sources without one, so ("ab","c") and
    # ("a","bc") would otherwise collide.
    return generate_uid(UID_ROOT, entropy_srcs=["|".join(str(p) for p in parts)])


def _fingerprint(bag: BagVolume) -> str:
    """Cheap content hash of a bag (geometry, threats, a strided voxel sample).

    Mixed into the UIDs so that two different bags written with the same (default) seed
    still get different UIDs, while rewriting the same bag reproduces them.
    """
    h = hashlib.blake2b(digest_size=12)
    h.update(repr((bag.voxels.shape, bag.spacing_mm, bag.origin_mm)).encode())
    h.update(repr([t.to_json() for t in bag.threats]).encode())
    h.update(np.ascontiguousarray(bag.voxels[::3, ::7, ::5]).tobytes())
    return h.hexdigest()


def _ds(value: float) -> str:
    """A float as a valid DS string (<= 16 characters)."""
    return format_number_as_ds(float(value))


def _resolve_ts(transfer_syntax: str | None) -> UID:
    """Validate the requested transfer syntax (UID or pydicom keyword)."""
    if transfer_syntax is None:
        return ExplicitVRLittleEndian
    named = getattr(pydicom.uid, str(transfer_syntax), None)  # e.g. "RLELossless"
    if isinstance(named, UID):
        ts = named
    elif all(part.isdigit() for part in str(transfer_syntax).split(".")):
        ts = UID(transfer_syntax)
    else:
        raise ValueError(f"unknown transfer syntax {transfer_syntax!r}")
    if ts in SUPPORTED_TRANSFER_SYNTAXES:
        if ts in _COMPRESSED and not get_encoder(ts).is_available:
            raise ValueError(f"no encoder available for {ts.name}: "
                             f"{get_encoder(ts).missing_dependencies}")
        return ts
    if ts in ("1.2.840.10008.1.2.4.70", "1.2.840.10008.1.2.4.57"):
        raise ValueError(
            f"{ts.name} cannot be written: pydicom has no JPEG Lossless encoder "
            "(pylibjpeg-libjpeg only decodes). Use RLE Lossless or JPEG 2000 Lossless."
        )
    raise ValueError(f"unsupported transfer syntax for writing: {transfer_syntax!r}")


def _default_when(seed: int) -> datetime:
    """Deterministic acquisition time for a seed (files are then byte-reproducible)."""
    return datetime(2025, 1, 6, 8, 0, 0) + timedelta(seconds=97 * seed)


# DICOS reuses DICOM tags with its own meaning (pydicom's dictionary names them otherwise):
DICOS_IMAGE_ORIGIN = 0x00080118  # CS: MACHINE / ... (DICOM: Mapping Resource UID)
DICOS_COORDINATE_SYSTEM = 0x00082108  # CS: RHS / LHS
DICOS_EFFECTIVE_ENERGY = 0x43000902  # FL, keV


def _ooi_keyword_ok() -> bool:
    return keyword_for_tag(0x40101042) == "OOIType"


def _base_dataset(
    *, sop_class: UID, sop_uid: UID, study_uid: UID, series_uid: UID, frame_uid: UID | None,
    patient_id: str, modality: str, series_number: int, series_description: str,
    when: datetime, dicos: bool, ts: UID,
) -> Dataset:
    """Patient/OOI, study, series, equipment and SOP common attributes plus file meta."""
    meta = FileMetaDataset()
    meta.FileMetaInformationVersion = b"\x00\x01"
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ts if ts not in _COMPRESSED else ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    meta.ImplementationVersionName = "STATION_SYNTH_1"

    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_uid
    date, time = when.strftime("%Y%m%d"), when.strftime("%H%M%S")
    ds.StudyDate = ds.SeriesDate = ds.AcquisitionDate = ds.ContentDate = date
    ds.StudyTime = ds.SeriesTime = ds.AcquisitionTime = ds.ContentTime = time
    ds.AccessionNumber = ""
    ds.Modality = modality
    ds.Manufacturer = MANUFACTURER
    ds.ManufacturerModelName = "synth"
    ds.InstitutionName = "Synthetic checkpoint"
    ds.StationName = "SYNTH01"
    ds.ReferringPhysicianName = ""
    ds.StudyDescription = "Synthetic baggage scan"
    ds.SeriesDescription = series_description
    ds.PatientName = f"SYNTH^{patient_id}"
    ds.PatientID = patient_id
    ds.TypeOfPatientID = "TEXT"
    ds.PatientBirthDate = ""
    ds.PatientSex = ""
    if dicos and _ooi_keyword_ok():
        ds.OOIType = "BAGGAGE"
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.StudyID = "1"
    ds.SeriesNumber = series_number
    if frame_uid is not None:
        ds.FrameOfReferenceUID = frame_uid
        ds.PositionReferenceIndicator = ""
    if dicos:
        _set_dicos_image_common(ds, when)
    return ds


def _set_dicos_image_common(ds: Dataset, when: datetime) -> None:
    """What the NEMA DICOS toolkit requires of every DICOS image beyond DICOM's modules:
    version, equipment and OOI identity (``station.core.dicos.site``), scan type, image
    origin and coordinate system, effective energy, acquisition context."""
    ds.InstanceCreationDate = when.strftime("%Y%m%d")
    ds.InstanceCreationTime = when.strftime("%H%M%S")
    set_dicos_common(ds, replace(SYNTH_SITE, calibration=when), when,
                     software_versions=[MANUFACTURER])
    ds.PatientSex = "U"
    ds.ScanType = "OPERATIONAL"
    ds.add_new(DICOS_IMAGE_ORIGIN, "CS", "MACHINE")
    ds.add_new(DICOS_COORDINATE_SYSTEM, "CS", "RHS")  # DICOM's patient axes, right-handed
    ds.add_new(DICOS_EFFECTIVE_ENERGY, "FL", 0.0)  # 0: not characterised (synthetic)
    ds.AcquisitionContextSequence = DicomSequence([])


def _set_pixels(ds: Dataset, arr: np.ndarray, ts: UID) -> None:
    """Attach uint16 pixels (frames, rows, cols) or (rows, cols), encoding if needed."""
    ds.SamplesPerPixel = 1
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    arr = np.ascontiguousarray(arr, dtype=np.uint16)
    if ts in _COMPRESSED:
        # pylibjpeg-rle is ~10x faster than pydicom's own RLE encoder, which pydicom
        # would pick first; '' lets pydicom choose for JPEG 2000 (openjpeg).
        plugin = "pylibjpeg" if ts == RLELossless and _has_plugin(ts, "pylibjpeg") else ""
        # generate_instance_uid=False: keep the deterministic SOP Instance UID.
        ds.compress(ts, arr, encoding_plugin=plugin, generate_instance_uid=False)
    else:
        ds.PixelData = arr.tobytes()
        ds.file_meta.TransferSyntaxUID = ts


def _has_plugin(ts: UID, name: str) -> bool:
    return name in get_encoder(ts).available_plugins


def _save(ds: Dataset, path: Path) -> Path:
    """Write a Part 10 file (preamble, validated file meta; the encoding follows the
    meta's transfer syntax). Written under a temporary name and renamed, so a folder
    watcher never picks up a half-written .dcm."""
    tmp = path.with_name(path.name + ".part")
    ds.save_as(tmp, enforce_file_format=True)
    tmp.replace(path)
    return path


def write_ct_series(
    bag: BagVolume,
    out_dir: Path | str,
    *,
    dicos: bool = False,
    seed: int = 0,
    patient_id: str | None = None,
    study_uid: str | None = None,
    series_uid: str | None = None,
    transfer_syntax: str | None = None,
    acquired_at: datetime | None = None,
) -> list[Path]:
    """Write ``bag`` as CT and return the written files (``truth.json`` not included).

    ``dicos=False``: classic CT Image Storage, one file per slice (``CT000001.dcm`` ...).
    ``dicos=True``: one DICOS CT multi-frame instance (``DICOS_CT.dcm``), Enhanced-CT
    style functional groups, OOIType BAGGAGE.
    Stored pixels are uint16 = MHU + 1000 (intercept -1000, slope 1, RescaleType MHU).
    UIDs are deterministic for (bag content, seed, patient_id) unless given;
    ``acquired_at`` defaults to a time derived from the seed (pass ``datetime.now()``
    for a live simulator).
    ``transfer_syntax``: Explicit VR LE (default), Implicit VR LE, Deflated, RLE Lossless
    or JPEG 2000 Lossless. JPEG Lossless (.70) is not writable with these libraries.
    """
    ts = _resolve_ts(transfer_syntax)
    if bag.voxels.dtype != np.int16 or bag.voxels.ndim != 3:
        raise ValueError("bag.voxels must be a 3-D int16 array")
    if int(bag.voxels.min()) < MHU_MIN:
        raise ValueError(f"voxels below {MHU_MIN} MHU cannot be stored with intercept "
                         f"{RESCALE_INTERCEPT}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    pid = patient_id or f"BAG-{seed:06d}"
    when = acquired_at or _default_when(seed)
    fp = _fingerprint(bag)
    study = UID(study_uid) if study_uid else _uid("study", pid, seed, fp)
    kind = "dicos-ct" if dicos else "ct"
    series = UID(series_uid) if series_uid else _uid("series", pid, seed, fp, kind)
    frame_uid = _uid("frame", pid, seed, fp)
    nz, ny, nx = bag.voxels.shape
    sz, sy, sx = bag.spacing_mm
    ox, oy, oz = bag.origin_mm
    # stored = MHU + 1000 as uint16. Done in uint16 arithmetic on a view: wrap-around makes
    # it exact for every MHU >= -1000, and it is one pass instead of two dtype casts.
    offset = np.uint16(-RESCALE_INTERCEPT)

    def stored(sel: Any) -> np.ndarray:
        return bag.voxels[sel].view(np.uint16) + offset

    # shows -500..2500 MHU: clothes dark, liquids and explosives mid-grey, metal white
    window = ("1000", "3000")
    common: dict[str, Any] = {
        "study_uid": study, "series_uid": series, "frame_uid": frame_uid, "patient_id": pid,
        "modality": "CT", "when": when, "dicos": dicos, "ts": ts,
    }
    paths: list[Path] = []
    uids: list[str] = []
    if not dicos:
        for k in range(nz):
            sop = _uid("instance", series, k)
            ds = _base_dataset(sop_class=CTImageStorage, sop_uid=sop, series_number=1,
                               series_description="Synthetic CT (MHU)", **common)
            ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
            ds.InstanceNumber = k + 1
            ds.AcquisitionNumber = 1
            ds.ImagePositionPatient = [_ds(ox), _ds(oy), _ds(oz + k * sz)]
            ds.ImageOrientationPatient = ["1", "0", "0", "0", "1", "0"]
            ds.SliceLocation = _ds(oz + k * sz)
            ds.SliceThickness = _ds(sz)
            ds.SpacingBetweenSlices = _ds(sz)
            ds.PixelSpacing = [_ds(sy), _ds(sx)]
            ds.PhotometricInterpretation = "MONOCHROME2"
            ds.Rows, ds.Columns = ny, nx
            ds.RescaleIntercept = str(RESCALE_INTERCEPT)
            ds.RescaleSlope = "1"
            ds.RescaleType = "MHU"
            ds.WindowCenter, ds.WindowWidth = window
            ds.KVP = "140"
            _set_pixels(ds, stored(k), ts)
            paths.append(_save(ds, out / f"CT{k + 1:06d}.dcm"))
            uids.append(str(sop))
    else:
        sop = _uid("instance", series, 0)
        ds = _base_dataset(sop_class=DICOSCTImageStorage, sop_uid=sop, series_number=1,
                           series_description="DICOS CT (MHU)", **common)
        ds.ImageType = ["ORIGINAL", "PRIMARY", "VOLUME", "NONE"]
        ds.InstanceNumber = 1
        ds.AcquisitionNumber = 1
        ds.AcquisitionDateTime = when.strftime("%Y%m%d%H%M%S")
        ds.ContentQualification = "PRODUCT"
        ds.BurnedInAnnotation = "NO"
        ds.PresentationLUTShape = "IDENTITY"
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows, ds.Columns = ny, nx
        ds.NumberOfFrames = nz
        # No Multi-frame Dimension module: the DICOS CT IOD does not use it, and the NEMA
        # toolkit refuses the Dimension Index Values of a DICOM Enhanced CT.
        ds.PixelPresentation = "MONOCHROME"
        ds.VolumetricProperties = "VOLUME"
        ds.VolumeBasedCalculationTechnique = "NONE"
        ds.AcquisitionDuration = 1.0

        shared = Dataset()
        pm = Dataset()
        pm.PixelSpacing = [_ds(sy), _ds(sx)]
        pm.SliceThickness = _ds(sz)
        pm.SpacingBetweenSlices = _ds(sz)
        shared.PixelMeasuresSequence = DicomSequence([pm])
        po = Dataset()
        po.ImageOrientationPatient = ["1", "0", "0", "0", "1", "0"]
        shared.PlaneOrientationSequence = DicomSequence([po])
        pvt = Dataset()
        pvt.RescaleIntercept = str(RESCALE_INTERCEPT)
        pvt.RescaleSlope = "1"
        pvt.RescaleType = "MHU"
        shared.PixelValueTransformationSequence = DicomSequence([pvt])
        voi = Dataset()
        voi.WindowCenter, voi.WindowWidth = window
        shared.FrameVOILUTSequence = DicomSequence([voi])
        ds.SharedFunctionalGroupsSequence = DicomSequence([shared])

        frames = []
        for k in range(nz):
            item = Dataset()
            pp = Dataset()
            pp.ImagePositionPatient = [_ds(ox), _ds(oy), _ds(oz + k * sz)]
            item.PlanePositionSequence = DicomSequence([pp])
            fc = Dataset()
            fc.FrameAcquisitionNumber = 1
            fc.StackID = "1"
            fc.InStackPositionNumber = k + 1
            item.FrameContentSequence = DicomSequence([fc])
            frames.append(item)
        ds.PerFrameFunctionalGroupsSequence = DicomSequence(frames)
        ds.KVP = "140"
        _set_pixels(ds, stored(slice(None)), ts)
        paths.append(_save(ds, out / "DICOS_CT.dcm"))
        uids.append(str(sop))

    _update_truth(out, bag, kind, {
        "sop_class_uid": str(DICOSCTImageStorage if dicos else CTImageStorage),
        "study_uid": str(study), "series_uid": str(series), "patient_id": pid,
        "transfer_syntax": str(ts), "files": [p.name for p in paths],
        "sop_instance_uids": uids,
    })
    LOGGER.info("wrote %d %s file(s) to %s", len(paths), kind, out)
    return paths


# Per-material attenuation model for DX: mass attenuation mu/rho(E) = c(E) + p(E) * Z^3,
# fitted to water (Z~7.4) and iron (Z=26) at ~50 keV (LOW) and ~100 keV (HIGH); it gives
# aluminium within ~10 % of tabulated values. Units cm^2/g.
_MASS_ATT = {"LOW": (0.186, 1.009e-4), "HIGH": (0.166, 1.17e-5)}


def _zeff_cubed(mhu: np.ndarray) -> np.ndarray:
    """Z_eff^3 from MHU: the volume stores density only, so the material class is read
    from density ranges (organic < 2000 <= light inorganic < 5000 <= metal)."""
    return np.where(mhu < 2000, 7.5 ** 3, np.where(mhu < 5000, 13.0 ** 3, 26.0 ** 3))


def _dx_attenuation_lut(energy: str) -> np.ndarray:
    """Linear attenuation (1/cm) for every MHU value from MHU_MIN to MHU_MAX."""
    mhu = np.arange(MHU_MIN, MHU_MAX + 1, dtype=np.float64)
    rho = np.maximum(mhu, 0.0) / 1000.0
    if energy == "SINGLE":
        c = (_MASS_ATT["LOW"][0] + _MASS_ATT["HIGH"][0]) / 2
        p = (_MASS_ATT["LOW"][1] + _MASS_ATT["HIGH"][1]) / 2
    else:
        c, p = _MASS_ATT[energy]
    return (rho * (c + p * _zeff_cubed(mhu))).astype(np.float32)


def _project(bag: BagVolume, energy: str, axis: str) -> np.ndarray:
    """Line integral ln(I0/I) through the bag; image rows = the other transverse axis,
    columns = z (belt direction, as a line-scan X-ray builds its image)."""
    lut = _dx_attenuation_lut(energy)
    ax = {"y": 1, "x": 2}[axis]
    step_cm = bag.spacing_mm[ax] / 10.0
    nz = bag.voxels.shape[0]
    rows = bag.voxels.shape[2 if ax == 1 else 1]
    out = np.empty((rows, nz), dtype=np.float64)
    for z0 in range(0, nz, 32):  # chunked: a float copy of a 512^2x300 volume is 300 MB
        mu = lut[bag.voxels[z0:z0 + 32].astype(np.int32) - MHU_MIN]
        out[:, z0:z0 + 32] = mu.sum(axis=ax, dtype=np.float64).T * step_cm
    return out


def write_dx(
    bag: BagVolume,
    out_dir: Path | str,
    *,
    dicos: bool = False,
    dual_energy: bool = False,
    axis: str = "y",
    seed: int = 0,
    patient_id: str | None = None,
    study_uid: str | None = None,
    series_uid: str | None = None,
    transfer_syntax: str | None = None,
    acquired_at: datetime | None = None,
) -> list[Path]:
    """Write a projection X-ray (DX) of ``bag`` and return the written files.

    The image is the log attenuation ``ln(I0/I)`` along ``axis`` ("y": top view, "x":
    side view) with Poisson photon noise (DX_PHOTONS unattenuated counts, so the
    "opaque" ceiling is ln(DX_PHOTONS) ~ 12.2), stored as uint16 = DX_SCALE * ln(I0/I).
    Rows are the transverse axis (x for the top view, y for the side view), columns
    are z (belt direction). PhotometricInterpretation is MONOCHROME1 so viewers show it
    the way security X-ray looks: white background, dense objects dark;
    PixelIntensityRelationship LOG with sign -1 says the same.

    ``dual_energy=True`` writes two instances in one series, ``*_HIGH.dcm`` and
    ``*_LOW.dcm``, told apart by ImageType[2] ("HIGH"/"LOW"), KVP (140/80) and
    ImageComments; LOW/HIGH is ~1.3 for organics and ~5 for iron-like metal, which is
    what a material-colour view needs. SOP class: DX For Presentation, or DICOS DX
    (501.2.1) with ``dicos``.
    """
    if axis not in ("y", "x"):
        raise ValueError("axis must be 'y' (top view) or 'x' (side view)")
    ts = _resolve_ts(transfer_syntax)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    pid = patient_id or f"BAG-{seed:06d}"
    when = acquired_at or _default_when(seed)
    fp = _fingerprint(bag)
    study = UID(study_uid) if study_uid else _uid("study", pid, seed, fp)
    kind = "dicos-dx" if dicos else "dx"
    series = (UID(series_uid) if series_uid
              else _uid("series", pid, seed, fp, kind, axis, dual_energy))
    sop_class = (DICOSDigitalXRayImageStorageForPresentation if dicos
                 else DigitalXRayImageStorageForPresentation)
    rng = np.random.default_rng([seed, 101])
    energies = ("HIGH", "LOW") if dual_energy else ("SINGLE",)
    prefix = "DICOS_DX" if dicos else "DX"
    sz = bag.spacing_mm[0]
    s_row = bag.spacing_mm[2] if axis == "y" else bag.spacing_mm[1]

    paths: list[Path] = []
    uids: list[str] = []
    for n, energy in enumerate(energies):
        line = _project(bag, energy, axis)
        counts = rng.poisson(DX_PHOTONS * np.exp(-line))
        measured = np.log(DX_PHOTONS / np.maximum(counts, 1))
        stored = np.clip(np.rint(measured * DX_SCALE), 0, 65535).astype(np.uint16)
        sop = _uid("instance", series, energy)
        ds = _base_dataset(sop_class=sop_class, sop_uid=sop, study_uid=study, series_uid=series,
                           frame_uid=None, patient_id=pid, modality="DX",
                           series_number=2 if axis == "y" else 3,
                           series_description=("DX dual energy" if dual_energy else "DX")
                           + (" top view" if axis == "y" else " side view"),
                           when=when, dicos=dicos, ts=ts)
        ds.ImageType = ["ORIGINAL", "PRIMARY", energy] if dual_energy else ["ORIGINAL", "PRIMARY"]
        ds.InstanceNumber = n + 1
        ds.PresentationIntentType = "FOR PRESENTATION"
        ds.ImageComments = f"{energy} ENERGY" if dual_energy else "SINGLE ENERGY"
        ds.KVP = _ds(DX_KVP[energy])
        ds.PatientOrientation = ""
        ds.BurnedInAnnotation = "NO"
        ds.ImageLaterality = "U"
        ds.PixelSpacing = [_ds(s_row), _ds(sz)]
        ds.ImagerPixelSpacing = [_ds(s_row), _ds(sz)]
        if dicos:
            # DICOS DX: detector, tube current, calibration of the spacing, and where the
            # image lies: columns advance along z (the belt), rows along x (top view) or
            # y (side view), from the volume's origin.
            ds.DetectorType = "DIRECT"
            ds.XRayTubeCurrentInuA = "1000"
            ds.PixelSpacingCalibrationDescription = "GEOMETRY"
            ds.LossyImageCompression = "00"
            ds.ImageOrientationPatient = ["0", "0", "1", "1", "0", "0"] if axis == "y" else \
                ["0", "0", "1", "0", "1", "0"]
            ds.ImagePositionPatient = [_ds(v) for v in bag.origin_mm]
        ds.PhotometricInterpretation = "MONOCHROME1"
        ds.PixelIntensityRelationship = "LOG"
        ds.PixelIntensityRelationshipSign = -1
        ds.RescaleIntercept = "0"
        ds.RescaleSlope = "1"
        ds.RescaleType = "US"
        ds.WindowCenter, ds.WindowWidth = "3000", "6000"
        ds.PresentationLUTShape = "INVERSE"  # MONOCHROME1: low values shown white
        ds.Rows, ds.Columns = stored.shape
        _set_pixels(ds, stored, ts)
        suffix = f"_{energy}" if dual_energy else ""
        paths.append(_save(ds, out / f"{prefix}{suffix}.dcm"))
        uids.append(str(sop))

    # Threat boxes in image coordinates: columns = z, rows = x (top) or y (side).
    dx_threats = []
    for t in bag.threats:
        (x, y, z), (ex, ey, ez) = t.base_xyz, t.extent_xyz
        row, erow = (x, ex) if axis == "y" else (y, ey)
        dx_threats.append({"id": t.id, "base_col_row": [z, row], "extent_col_row": [ez, erow],
                           "category": t.category})
    _update_truth(out, bag, kind, {
        "sop_class_uid": str(sop_class), "study_uid": str(study), "series_uid": str(series),
        "patient_id": pid, "transfer_syntax": str(ts), "files": [p.name for p in paths],
        "sop_instance_uids": uids, "axis": axis, "energies": list(energies),
        "pixel_value": f"{DX_SCALE:g} * ln(I0/I)", "threats_2d": dx_threats,
    })
    LOGGER.info("wrote %d %s file(s) to %s", len(paths), kind, out)
    return paths


def _update_truth(out: Path, bag: BagVolume, kind: str, series_info: dict[str, Any]) -> Path:
    """Write or merge ``truth.json``: geometry, threats, items, and one entry per series
    kind written into this directory (CT and DX of one bag can share a directory)."""
    path = out / "truth.json"
    truth: dict[str, Any] = {}
    if path.exists():
        try:
            truth = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            LOGGER.warning("replacing unreadable %s", path)
            truth = {}
        if not isinstance(truth, dict) or truth.get("volume") != bag.geometry_json():
            truth = {}  # a different bag was written here before: start over
    truth.update({
        "generator": "station.core.synth.bags",
        "format_version": 1,
        "volume": bag.geometry_json(),
        "threats": [t.to_json() for t in bag.threats],
        "items": [i.to_json() for i in bag.items],
    })
    truth.setdefault("series", {})[kind] = series_info
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(truth, indent=2), encoding="utf-8")
    tmp.replace(path)
    return path


def synth_main(
    kind: str,
    out: Path,
    *,
    dicos: bool,
    slices: int,
    size: int,
    threats: int,
    seed: int,
    dual_energy: bool = True,
) -> list[Path]:
    """Entry point for ``station synth {ct,dx}``: build a bag and write it to ``out``.

    ``kind`` "ct" writes a CT series (classic, or one DICOS instance with ``dicos``);
    "dx" writes a top-view projection, dual energy by default so the material-colour
    view has something to show. Returns the DICOM files; ``out/truth.json`` is written
    alongside.
    """
    if kind not in ("ct", "dx"):
        raise ValueError(f"unknown kind {kind!r}: expected 'ct' or 'dx'")
    bag = make_bag_volume(size=size, slices=slices, threats=threats, seed=seed)
    if kind == "ct":
        return write_ct_series(bag, out, dicos=dicos, seed=seed)
    return write_dx(bag, out, dicos=dicos, dual_energy=dual_energy, seed=seed)
