"""``station fetch`` end to end: a subprocess pulls a series from the real Orthanc."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pydicom
import pytest

from station.testing.ports import free_port
from tests.orthanc_fixtures import SLICES


def fetch(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "station", "fetch", *args],
                          capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("name", ["dicos", "classic"])
def test_fetch_writes_the_volume_and_instances_then_reuses_the_cache(orthanc, scans, tmp_path, name):
    scan = scans[name]
    common = ["--dicomweb", orthanc.dicomweb_url, "--study", scan.study_uid, "--series", scan.series_uid,
              "--cache-dir", str(tmp_path / "cache"), "--json"]
    out = fetch(*common, "--npy", str(tmp_path / "vol.npy"), "--out", str(tmp_path / "inst"))
    assert out.returncode == 0, out.stderr
    info = json.loads(out.stdout)
    volume = np.load(tmp_path / "vol.npy")
    assert volume.dtype == np.float32
    np.testing.assert_array_equal(volume, scan.voxels.astype(np.float32))
    assert info["shape"] == list(scan.voxels.shape) and info["complete"]
    assert info["frames_fetched"] == SLICES and info["cache_hits"] == 0
    assert info["spacing_mm"] == pytest.approx([44.0, 680 / 48, 680 / 48], rel=1e-4)
    assert info["bytes"] > volume.size * 2 and info["seconds"] > 0
    assert info["rescale_type"] == "MHU"
    written = sorted((tmp_path / "inst").iterdir())
    assert len(written) == len(scan.files) == len(info["instances_written"])
    got = {str(pydicom.dcmread(p).SOPInstanceUID): p for p in written}
    assert set(got) == set(scan.sop_uids)
    np.testing.assert_array_equal(pydicom.dcmread(got[scan.sop_uids[0]]).pixel_array,
                                  pydicom.dcmread(scan.files[0]).pixel_array)

    again = fetch(*common, "--npy", str(tmp_path / "vol2.npy"))
    assert again.returncode == 0, again.stderr
    info2 = json.loads(again.stdout)
    assert info2["cache_hits"] == SLICES and info2["frames_fetched"] == 0
    assert info2["requests"] == 1  # the metadata only: every frame came from the disk cache
    np.testing.assert_array_equal(np.load(tmp_path / "vol2.npy"), volume)


def test_fetch_with_a_configured_remote(orthanc, scans, tmp_path):
    scan = scans["rle"]
    config = tmp_path / "station.toml"
    config.write_text(f'[[remotes]]\nname = "archive"\ndicomweb = "{orthanc.dicomweb_url}"\ntimeout = 10\n')
    out = fetch("--config", str(config), "--remote", "archive", "--study", scan.study_uid, "--series",
                scan.series_uid, "--no-cache", "--npy", str(tmp_path / "v.npy"), "--json")
    assert out.returncode == 0, out.stderr
    np.testing.assert_array_equal(np.load(tmp_path / "v.npy"), scan.voxels.astype(np.float32))
    assert json.loads(out.stdout)["cache_dir"] is None


def test_fetch_from_a_dead_store_fails_fast_naming_it(tmp_path):
    port = free_port()
    out = fetch("--dicomweb", f"http://127.0.0.1:{port}/dicom-web", "--study", "1.2", "--series", "3.4",
                "--no-cache", "--timeout", "3", timeout=30)
    assert out.returncode == 2
    assert f"127.0.0.1:{port}" in out.stderr and "unreachable" in out.stderr
    bad = fetch("--study", "1.2", "--series", "3.4")
    assert bad.returncode == 2 and "--dicomweb" in bad.stderr
