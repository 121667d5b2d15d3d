"""``station --self-test``: passes on a working installation, names what is broken otherwise.

The self-test runs as a real command (a fresh process, as IT staff and CI run it), with a
home of its own so the developer's settings never leak in.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from station.app.selftest import encode_jpeg_lossless

ROOT = Path(__file__).resolve().parents[1]


def _run(tmp_path: Path, *args: str, code: str | None = None) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, QT_QPA_PLATFORM="offscreen", HOME=str(tmp_path),
               XDG_CONFIG_HOME=str(tmp_path / "config"), XDG_DATA_HOME=str(tmp_path / "data"))
    command = [sys.executable, "-c", code, *args] if code else [sys.executable, "-m", "station", *args]
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=90,
                          stdin=subprocess.DEVNULL)


def test_self_test_passes(tmp_path):
    out = _run(tmp_path, "--self-test")
    assert out.returncode == 0, out.stdout + out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].startswith("Inspection Station ") and "self-test" in lines[0]
    for name in ("settings", "decoders", "receiver", "viewer"):
        assert any(line.startswith(f"ok    {name} ") for line in lines), out.stdout
    assert "RLE, JPEG 2000, JPEG baseline, JPEG lossless, JPEG-LS decoded" in out.stdout
    assert "9 instances" in out.stdout and "all indexed" in out.stdout
    assert "24 slices of a synthetic bag shown and painted" in out.stdout and "platform offscreen" in out.stdout
    assert lines[-1].startswith("self-test passed: 4 checks in ")
    assert not list(tmp_path.glob("data/**/*.dcm")), "the self-test must not touch the user's store"


def test_broken_pieces_fail_with_the_reason(tmp_path):
    """A frozen build that lost a decoder plugin and a settings file with a typo: exit 1,
    each failing check named with its reason, the other checks still run."""
    config = tmp_path / "station.toml"
    config.write_text("[receiver]\nprot = 104\n")
    # What a frozen build that lost GDCM looks like to pydicom.
    code = ("import sys; from pydicom.pixels import get_decoder; from pydicom.uid import JPEGLosslessSV1;"
            "get_decoder(JPEGLosslessSV1).remove_plugin('gdcm');"
            "from station.app.cli import main; raise SystemExit(main(sys.argv[1:]))")
    out = _run(tmp_path, "--config", str(config), "--self-test", code=code)
    assert out.returncode == 1, out.stdout + out.stderr
    lines = out.stdout.splitlines()
    settings_line = next(line for line in lines if line.startswith("FAIL  settings "))
    assert "prot" in settings_line
    decoders_line = next(line for line in lines if line.startswith("FAIL  decoders "))
    assert "JPEG lossless: no gdcm decoder" in decoders_line
    assert any(line.startswith("ok    receiver ") for line in lines), out.stdout
    assert any(line.startswith("ok    viewer ") for line in lines), out.stdout
    assert lines[-1].startswith("self-test FAILED: settings, decoders (2 of 4 checks")


@pytest.mark.parametrize("shape", [(1, 1), (3, 17), (40, 33)])
def test_jpeg_lossless_writer_round_trips(shape, tmp_path):
    """The self-test's JPEG Lossless writer makes codestreams GDCM (the decoder the
    station ships for JPEG) decodes exactly, including the largest jumps a predictor can
    see."""
    rng = np.random.default_rng(sum(shape))
    image = rng.integers(0, 65536, shape, dtype=np.uint16)
    image.flat[: min(4, image.size)] = [65535, 0, 32768, 1][: min(4, image.size)]
    decoded = _gdcm_decode(encode_jpeg_lossless(image), shape, tmp_path)
    assert decoded.dtype == np.uint16 and np.array_equal(decoded, image)


def test_another_pynetdicom_fails_the_receiver_check_naming_both_versions(tmp_path):
    code = ("import sys, pynetdicom; pynetdicom.__version__ = '3.0.3';"
            "from station.app.cli import main; raise SystemExit(main(sys.argv[1:]))")
    out = _run(tmp_path, "--self-test", code=code)
    assert out.returncode == 1, out.stdout + out.stderr
    lines = out.stdout.splitlines()
    receiver_line = next(line for line in lines if line.startswith("FAIL  receiver "))
    assert "pynetdicom 3.0.3 is installed" in receiver_line and "pynetdicom==3.0.4" in receiver_line
    assert lines[-1].startswith("self-test FAILED: receiver (1 of 4 checks")


def _gdcm_decode(codestream: bytes, shape, tmp_path: Path) -> np.ndarray:
    """One JPEG Lossless codestream in a DICOM file, decoded by pydicom's GDCM plugin."""
    import pydicom
    from pydicom.uid import JPEGLosslessSV1

    from station.app.selftest import _encapsulated, _image_dataset

    ds = _encapsulated(_image_dataset(np.zeros(shape, np.uint16), 16), codestream, JPEGLosslessSV1)
    ds.save_as(tmp_path / "jpeg.dcm", enforce_file_format=True)
    return np.asarray(pydicom.pixels.pixel_array(str(tmp_path / "jpeg.dcm"), decoding_plugin="gdcm"))
