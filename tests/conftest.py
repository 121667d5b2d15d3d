"""Fixtures shared by every test: real peers (dcmtk), ports, stores, thread-leak checks."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

from tests.dicom_factory import make_ct_files  # noqa: E402  (re-exported for tests)
from tests.orthanc_fixtures import orthanc, scans  # noqa: E402  (a real Orthanc for net and ui tests)

__all__ = ["make_ct_files", "orthanc", "scans"]


@pytest.fixture(autouse=True)
def no_thread_left_behind() -> Iterator[None]:
    """Fail a test that leaves a Python thread running (every thread needs a shutdown path)."""
    before = set(threading.enumerate())
    yield
    deadline = time.monotonic() + 5.0
    while True:
        extra = [t for t in threading.enumerate() if t not in before and t.is_alive()]
        if not extra or time.monotonic() > deadline:
            break
        time.sleep(0.02)
    assert not extra, f"threads left running: {[t.name for t in extra]}"


@pytest.fixture
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def dcmtk_env() -> dict[str, str]:
    """Environment for dcmtk tools; skips (or fails in CI) when dcmtk is not installed."""
    missing = [t for t in ("storescu", "echoscu", "storescp") if shutil.which(t) is None]
    if missing:
        message = f"dcmtk tools missing: {missing} (install Debian package dcmtk: make system-deps)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    # Without TCP_NODELAY dcmtk stalls ~40 ms per image on loopback (Nagle/delayed ACK).
    return dict(os.environ, TCP_NODELAY="1")


@pytest.fixture
def store(tmp_path: Path):
    from station.core.store.store import Store

    s = Store(tmp_path / "store")
    yield s
    s.close()


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Path:
    """A throw-away CA with a server and a client certificate (openssl)."""
    d = tmp_path_factory.mktemp("pki")
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.crt",
             "-days", "2", "-subj", "/CN=Test CA", cwd=d)
    for name in ("server", "client"):
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr",
                 "-subj", f"/CN={'localhost' if name == 'server' else 'scanner'}", cwd=d)
        (d / f"{name}.ext").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
                 "-out", f"{name}.crt", "-days", "2", "-extfile", f"{name}.ext", cwd=d)
    return d
