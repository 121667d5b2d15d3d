"""station.core.imaging.material: material classes from CT density and from dual-energy X-ray."""

from __future__ import annotations

import numpy as np
import pydicom

from station.core.synth import bags as synth
from station.core.imaging.material import (
    BACKGROUND,
    INORGANIC,
    METAL,
    OPAQUE,
    ORGANIC,
    classify_density,
    classify_dual_energy,
    ct_bands,
    dual_energy_pair,
)


def test_density_classes_in_mhu_and_hu():
    mhu = np.array([0, 300, 1000, 1550, 2500, 3000, 8500, 25000, np.nan], dtype=np.float32)
    assert classify_density(mhu, "MHU").tolist() == [
        BACKGROUND, BACKGROUND, ORGANIC, ORGANIC, INORGANIC, INORGANIC, METAL, OPAQUE, BACKGROUND]
    # The same materials in HU (air -1000, water 0) land in the same classes.
    assert classify_density(mhu - 1000, "HU").tolist() == classify_density(mhu, "MHU").tolist()
    assert ct_bands("HU")[0] == ct_bands("MHU")[0] - 1000


def test_dual_energy_classes_from_the_ratio_not_the_thickness():
    # log attenuation x1000: organic ratio 1.34 at two thicknesses, aluminium 2.1, iron 5.3.
    high = np.array([[500, 3000, 800, 900, 40, 11500]], dtype=np.float32)
    low = np.array([[670, 4020, 1700, 4770, 60, 12200]], dtype=np.float32)
    classes = classify_dual_energy(high, low, smooth_sigma=0)
    assert classes.tolist() == [[ORGANIC, ORGANIC, INORGANIC, METAL, BACKGROUND, OPAQUE]]


def test_dual_energy_pair_of_a_synthetic_scan_colours_water_organic_and_coins_metal(tmp_path):
    bag = synth.make_bag_volume(size=256, slices=96, threats=0, seed=3)
    paths = synth.write_dx(bag, tmp_path, dual_energy=True, seed=3)
    pair = dual_energy_pair(paths)
    assert pair is not None
    high, low = (pydicom.dcmread(paths[i]).pixel_array.astype(np.float32) for i in pair)
    assert high.mean() < low.mean()  # the high-energy image is the less attenuated one
    classes = classify_dual_energy(high, low)
    counts = {"water": np.zeros(5, int), "coin": np.zeros(5, int)}
    for item in bag.items:
        kind = item.name.split()[0]
        if kind in counts:
            x, _, z = item.base_xyz
            ex, _, ez = item.extent_xyz
            # Top view: image rows are x, columns z (see synth.write_dx).
            counts[kind] += np.bincount(classes[x:x + ex, z:z + ez].ravel(), minlength=5)
    water, coins = counts["water"] / counts["water"].sum(), counts["coin"] / counts["coin"].sum()
    assert water[ORGANIC] > 0.9, water
    # A coin seen through clothes and the case is "mixed" at its rim: most of it is metal.
    assert coins[METAL] > 0.5 and coins[ORGANIC] < 0.05, coins
    assert dual_energy_pair(paths[:1]) is None
