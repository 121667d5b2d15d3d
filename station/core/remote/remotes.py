"""Remote stores (PACS / archives) the station can search and pull from: ``[[remotes]]``.

Read with the rest of the TOML file by ``station.core.config.load_settings`` (the model,
``RemoteSettings``, and its checks live there: ``settings.remotes``). One table per remote::

    [[remotes]]
    name = "archive"                                   # required, unique
    dicomweb = "https://pacs.example/dicom-web/"      # DICOMweb base URL (QIDO/WADO)
    auth = "bearer"                                    # "none" (default), "basic", "bearer"
    token_env = "ARCHIVE_TOKEN"                        # or token = "..." in the file
    ca_bundle = "/etc/station/archive-ca.pem"          # HTTPS: trust this CA bundle
    verify = true                                      # false only for a test archive
    timeout = 30.0                                     # seconds per network read
    aet = "ARCHIVE"                                    # optional DIMSE peer (C-FIND/C-GET/C-MOVE)
    host = "pacs.example"
    port = 11112

    [[remotes]]
    name = "clinic"
    dicomweb = "http://10.0.0.5:8042/dicom-web/"
    auth = "basic"
    username = "station"
    password_env = "CLINIC_PASSWORD"

The keys ``name``, ``aet``, ``host``, ``port`` and ``dicomweb`` are shared with the
routing feature (issue 8). A secret is taken from the file (``password`` / ``token``) or,
better, from the environment variable named by ``password_env`` / ``token_env``; it is
never part of ``repr`` and never logged. Unknown keys are errors, as in the main file.

Pure core: no networking, any thread.
"""

from __future__ import annotations

from collections.abc import Sequence

from station.core.config import AUTH_KINDS, DEFAULT_CALLING_AET, DEFAULT_TIMEOUT_S, ConfigError, RemoteSettings


def find_remote(remotes: Sequence[RemoteSettings], name: str) -> RemoteSettings:
    """The remote called ``name``; ConfigError listing the known names otherwise."""
    for remote in remotes:
        if remote.name == name:
            return remote
    known = ", ".join(r.name for r in remotes) or "none configured"
    raise ConfigError(f"no remote named {name!r} ({known})")


__all__ = [
    "AUTH_KINDS",
    "DEFAULT_CALLING_AET",
    "DEFAULT_TIMEOUT_S",
    "RemoteSettings",
    "find_remote",
]
