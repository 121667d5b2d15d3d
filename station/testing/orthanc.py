"""A private Orthanc with the DICOMweb plugin (Debian packages orthanc, orthanc-dicomweb)
on 127.0.0.1, for the tests (tests/orthanc_fixtures.py) and the benchmarks."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import requests

from station.testing.ports import free_port

ORTHANC_EXECUTABLES: tuple[str, ...] = ("Orthanc", "/usr/sbin/Orthanc")
DICOMWEB_PLUGIN: Path = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
DICOMWEB_ROOT = "/dicom-web/"


def orthanc_executable() -> str | None:
    """Path of the Orthanc binary, or None when it (or its DICOMweb plugin) is missing."""
    for name in ORTHANC_EXECUTABLES:
        found = shutil.which(name) or (name if os.path.isfile(name) and os.access(name, os.X_OK) else None)
        if found and DICOMWEB_PLUGIN.is_file():
            return found
    return None


class OrthancServer:
    """A private Orthanc with the DICOMweb plugin on 127.0.0.1: own storage in
    ``workdir``, ephemeral HTTP and DICOM ports. ``start`` returns when GET /system
    answers; ``stop`` terminates and waits. For tests and benchmarks."""

    def __init__(self, workdir: str | os.PathLike[str], *, aet: str = "ORTHANC", config: dict[str, Any] | None = None) -> None:
        exe = orthanc_executable()
        if exe is None:
            raise RuntimeError("Orthanc or its DICOMweb plugin is not installed (Debian packages "
                               "orthanc, orthanc-dicomweb: packaging/system-deps.sh)")
        self.executable = exe
        self.workdir = Path(workdir)
        self.aet = aet
        self.http_port = free_port()
        self.dicom_port = free_port()
        self.extra_config = dict(config or {})
        self.process: subprocess.Popen[bytes] | None = None
        self._http = requests.Session()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def dicomweb_url(self) -> str:
        return f"{self.url}{DICOMWEB_ROOT.rstrip('/')}"

    @property
    def log_path(self) -> Path:
        return self.workdir / "orthanc.log"

    def config(self) -> dict[str, Any]:
        storage = self.workdir / "storage"
        cfg: dict[str, Any] = {
            "Name": "station-test",
            "StorageDirectory": str(storage),
            "IndexDirectory": str(storage),
            "HttpPort": self.http_port,
            "DicomPort": self.dicom_port,
            "DicomAet": self.aet,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "HttpCompressionEnabled": False,
            "KeepAlive": True,
            "Plugins": [str(DICOMWEB_PLUGIN)],
            "DicomWeb": {"Enable": True, "Root": DICOMWEB_ROOT, "EnableWado": False},
            # Our own AEs are declared with PUT /modalities; queries and retrieves from
            # them are allowed, as a site would configure its reading stations.
            "DicomAlwaysAllowFind": True,
            "DicomAlwaysAllowGet": True,
            "DicomAlwaysAllowMove": True,
            "DicomCheckModalityHost": False,
            "UnknownSopClassAccepted": True,
            "DicomScuTimeout": 10,
            "StableAge": 1,
        }
        cfg.update(self.extra_config)
        return cfg

    def start(self, timeout: float = 30.0) -> OrthancServer:
        self.workdir.mkdir(parents=True, exist_ok=True)
        cfg_path = self.workdir / "orthanc.json"
        cfg_path.write_text(json.dumps(self.config(), indent=1))
        log = open(self.log_path, "wb")
        try:
            self.process = subprocess.Popen([self.executable, str(cfg_path)], stdout=log, stderr=subprocess.STDOUT,
                                            cwd=self.workdir)
        finally:
            log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"Orthanc exited with {self.process.returncode}: {self.log_tail()}")
            try:
                # Any HTTP answer means it is serving (401 when authentication is on).
                if requests.get(f"{self.url}/system", timeout=1.0).status_code < 500:
                    return self
            except requests.RequestException:
                pass
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"Orthanc did not answer within {timeout} s: {self.log_tail()}")

    def stop(self) -> None:
        self._http.close()
        proc, self.process = self.process, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)

    def __enter__(self) -> OrthancServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def log_tail(self, n: int = 2000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-n:]
        except OSError:
            return "(no log)"

    def upload(self, paths: list[Path] | list[str]) -> list[str]:
        """POST each file to /instances; return the Orthanc instance IDs."""
        ids = []
        for path in paths:
            with open(path, "rb") as fp:
                r = self._http.post(f"{self.url}/instances", data=fp, timeout=120)
            r.raise_for_status()
            ids.append(r.json()["ID"])
        return ids

    def add_modality(self, name: str, aet: str, host: str, port: int) -> None:
        """Declare a DICOM peer (needed for C-MOVE destinations and to allow C-GET)."""
        r = self._http.put(f"{self.url}/modalities/{name}",
                           json={"AET": aet, "Host": host, "Port": port, "AllowGet": True,
                                 "AllowFind": True, "AllowMove": True, "AllowStore": True, "AllowEcho": True},
                           timeout=10)
        r.raise_for_status()
