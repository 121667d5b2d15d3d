"""``station volume``: geometry from the data, not from file names or order."""

from __future__ import annotations

import json
import random
import subprocess
import sys

import numpy as np
import pydicom

from tests.dicom_factory import make_ct_files


def test_shuffled_descending_series_with_rescale(tmp_path):
    files = make_ct_files(tmp_path / "raw", n=9, size=8, z0=40.0, dz=-2.5)
    names = [f"IMG{n:03d}.dcm" for n in random.Random(4).sample(range(100), len(files))]
    folder = tmp_path / "series"
    folder.mkdir()
    for k, (f, name) in enumerate(zip(files, names)):
        ds = pydicom.dcmread(f)
        ds.RescaleSlope = 2
        ds.RescaleIntercept = -1024
        ds.InstanceNumber = 100 - k * 7 % 13  # deliberately unrelated to position
        ds.save_as(folder / name, enforce_file_format=True)
    # A second series in the same folder must not be mixed in, but must be pickable.
    other = make_ct_files(folder / "other", n=3, size=8)
    out = subprocess.run([sys.executable, "-m", "station", "volume", str(folder), "--json"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "--series" in out.stderr
    series_uid = pydicom.dcmread(files[0]).SeriesInstanceUID
    out = subprocess.run([sys.executable, "-m", "station", "volume", str(folder), "--series", series_uid,
                          "--npy", str(tmp_path / "v.npy"), "--json"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    info = json.loads(out.stdout)
    assert info["shape"] == [9, 8, 8]
    assert np.allclose(info["spacing_mm"], [2.5, 0.5, 0.5])
    assert np.allclose(info["origin_mm"], [0.0, 0.0, 40.0 - 8 * 2.5])
    volume = np.load(tmp_path / "v.npy")
    # File k sits at z = 40 - 2.5 k with value 10 k: ascending z means k = 8 .. 0.
    expected = np.array([2 * 10 * k - 1024 for k in range(8, -1, -1)], dtype=np.float32)
    np.testing.assert_array_equal(volume[:, 0, 0], expected)
    assert other  # the distractor series exists
