"""Colour maps of the slice viewers as 32-bit ARGB lookup tables (numpy only).

A window maps each value to a level 0-255; a table turns levels into colours.
``gray``, ``inverse`` and ``hot`` are one row of 256 colours. ``material`` is one row per
material class (``station.core.imaging.material``: background, organic, inorganic, metal,
opaque): the class picks the hue, the level picks the brightness. For CT the class comes
from density and the level from the window, so the analyst keeps window control over
brightness while colour says what the material is; for dual-energy X-ray the class comes
from the high/low ratio and the level from the high-energy image (thin = bright).
"""

from __future__ import annotations

import numpy as np

COLORMAPS = ("gray", "inverse", "hot", "material")
"""Cycled by the C key, in this order."""

COLORMAP_TITLES = {"gray": "Gray", "inverse": "Inverse", "hot": "Hot metal", "material": "Material"}

MATERIAL_RGB = {
    1: (255, 150, 30),   # organic: orange
    2: (70, 200, 80),    # inorganic / mixed / light metal: green
    3: (60, 120, 255),   # metal: blue
}
"""Hues of the security palette by material class (background and opaque are gray and
black). Chosen near the colours analysts know from dual-energy X-ray, slightly softened
so that large orange areas do not glare over a shift."""

_LEVELS = np.arange(256, dtype=np.float64) / 255.0


def pack_argb(r: np.ndarray, g: np.ndarray, b: np.ndarray) -> np.ndarray:
    """uint32 0xFFRRGGBB from channel arrays in 0..255."""
    r8, g8, b8 = (np.clip(np.rint(c), 0, 255).astype(np.uint32) for c in (r, g, b))
    return (np.uint32(0xFF000000) | (r8 << 16) | (g8 << 8) | b8).astype(np.uint32)


def gray_lut() -> np.ndarray:
    level = _LEVELS * 255
    return pack_argb(level, level, level)


def hot_lut() -> np.ndarray:
    """Black -> red -> yellow -> white ("hot metal"): more distinguishable steps than gray
    for faint density differences."""
    t = _LEVELS
    return pack_argb(np.clip(3 * t, 0, 1) * 255, np.clip(3 * t - 1, 0, 1) * 255, np.clip(3 * t - 2, 0, 1) * 255)


def material_lut(*, inverted: bool = False) -> np.ndarray:
    """(5, 256) table: row = material class, column = window level.

    Background rows are plain gray (air, cloth); hues get brighter with the level and
    turn slightly whiter near the top so the densest part of an object still shows
    structure; opaque is black. ``inverted`` (radiographs) makes low levels bright.
    """
    level = _LEVELS[::-1] if inverted else _LEVELS
    rows = np.empty((5, 256), dtype=np.uint32)
    # An inverted (radiograph) background is mostly empty belt: light gray rather than
    # white, which would glare at the analyst from half the screen for a whole shift.
    gray = level * (175 if inverted else 255)
    rows[0] = pack_argb(gray, gray, gray)
    brightness = 0.12 + 0.88 * np.clip(level / 0.8, 0, 1)
    whiten = np.clip((level - 0.8) / 0.2, 0, 1) * 0.45
    for cls, rgb in MATERIAL_RGB.items():
        channels = [c * brightness + (255 - c) * whiten for c in rgb]
        rows[cls] = pack_argb(*channels)
    rows[4] = np.uint32(0xFF000000)
    return rows


def lut_for(name: str, *, inverted_material: bool = False) -> np.ndarray:
    """The table of colour map ``name`` (see COLORMAPS)."""
    if name == "gray":
        return gray_lut()
    if name == "inverse":
        return gray_lut()[::-1].copy()
    if name == "hot":
        return hot_lut()
    if name == "material":
        return material_lut(inverted=inverted_material)
    raise ValueError(f"unknown colour map {name!r}")


def argb_to_rgb(value: int) -> tuple[int, int, int]:
    """(r, g, b) of one packed colour; for tests and readouts."""
    value = int(value)
    return (value >> 16) & 0xFF, (value >> 8) & 0xFF, value & 0xFF


__all__ = ["COLORMAPS", "COLORMAP_TITLES", "MATERIAL_RGB", "argb_to_rgb", "gray_lut", "hot_lut",
           "lut_for", "material_lut", "pack_argb"]
