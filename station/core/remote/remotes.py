"""Remote stores (PACS / archives) the station can search and pull from: ``[[remotes]]``.

Read from the same TOML file as ``station.core.config`` (which leaves the ``remotes``
section to this module). One table per remote::

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

import dataclasses
import os
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from station.core.config import ConfigError, coerce_setting, default_config_path, table_array

AUTH_KINDS: tuple[str, ...] = ("none", "basic", "bearer")
"""How a DICOMweb remote authenticates: nothing, HTTP Basic, or an OAuth-style bearer token."""

DEFAULT_TIMEOUT_S: float = 30.0
DEFAULT_CALLING_AET: str = "STATION"


@dataclass
class RemoteSettings:
    """One configured remote store. ``dicomweb`` empty means DIMSE only; ``aet`` empty
    means DICOMweb only. Secrets are resolved with ``secret()``."""

    name: str
    dicomweb: str = ""
    auth: str = "none"
    username: str = ""
    password: str = field(default="", repr=False)
    password_env: str = ""
    token: str = field(default="", repr=False)
    token_env: str = ""
    ca_bundle: Path | None = None
    verify: bool = True
    timeout: float = DEFAULT_TIMEOUT_S
    aet: str = ""
    host: str = ""
    port: int = 0
    calling_aet: str = DEFAULT_CALLING_AET

    @property
    def has_dicomweb(self) -> bool:
        return bool(self.dicomweb)

    @property
    def has_dimse(self) -> bool:
        return bool(self.aet and self.host and self.port)

    @property
    def tls_verify(self) -> bool | str:
        """What an HTTP client's ``verify`` should be: the CA bundle's path when one is
        configured (and checking is on), else True or False."""
        return str(self.ca_bundle) if (self.verify and self.ca_bundle) else self.verify

    def secret(self) -> str:
        """The password (basic) or token (bearer), from its environment variable when one
        is named, else from the file; "" for ``auth = "none"``. Raises ConfigError when
        the named variable is not set, naming the variable (never its value)."""
        if self.auth == "basic":
            value, env = self.password, self.password_env
        elif self.auth == "bearer":
            value, env = self.token, self.token_env
        else:
            return ""
        if env:
            found = os.environ.get(env)
            if found is None:
                raise ConfigError(f"remote {self.name!r}: environment variable {env} is not set")
            return found
        return value


_FIELD_TYPES: dict[str, type] = {
    "name": str, "dicomweb": str, "auth": str, "username": str, "password": str,
    "password_env": str, "token": str, "token_env": str, "ca_bundle": Path, "verify": bool,
    "timeout": float, "aet": str, "host": str, "port": int, "calling_aet": str,
}
assert set(_FIELD_TYPES) == {f.name for f in dataclasses.fields(RemoteSettings)}


def _coerce(where: str, key: str, value: Any) -> Any:
    # Never echo a value: it may be a secret typed into the wrong key.
    return coerce_setting(_FIELD_TYPES[key], value, f"{where}: {key}", echo=False)


def _valid_aet(aet: str) -> bool:
    return 0 < len(aet) <= 16 and aet.isascii() and "\\" not in aet and aet.strip() == aet


def validate_remote(remote: RemoteSettings, where: str) -> None:
    """Raise ConfigError when a remote cannot be used; ``where`` prefixes the message."""
    if not remote.name.strip():
        raise ConfigError(f"{where}: name must not be empty")
    if not remote.has_dicomweb and not (remote.aet or remote.host or remote.port):
        raise ConfigError(f"{where}: needs a dicomweb URL or aet/host/port")
    if remote.dicomweb:
        parts = urlsplit(remote.dicomweb)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError(f"{where}: dicomweb must be an http:// or https:// URL")
        if parts.username or parts.password:
            raise ConfigError(f"{where}: put credentials in username/password(_env), not in the URL")
    if remote.auth not in AUTH_KINDS:
        raise ConfigError(f"{where}: auth must be one of {', '.join(AUTH_KINDS)}")
    if remote.auth == "basic" and not remote.username:
        raise ConfigError(f"{where}: auth = \"basic\" needs a username")
    if remote.auth == "basic" and not (remote.password or remote.password_env):
        raise ConfigError(f"{where}: auth = \"basic\" needs password or password_env")
    if remote.auth == "bearer" and not (remote.token or remote.token_env):
        raise ConfigError(f"{where}: auth = \"bearer\" needs token or token_env")
    if remote.timeout <= 0:
        raise ConfigError(f"{where}: timeout must be positive")
    if remote.aet or remote.host or remote.port:
        if not (remote.aet and remote.host and remote.port):
            raise ConfigError(f"{where}: a DIMSE peer needs all of aet, host and port")
        if not _valid_aet(remote.aet):
            raise ConfigError(f"{where}: aet must be 1-16 ASCII characters")
        if not 0 < remote.port <= 65535:
            raise ConfigError(f"{where}: port {remote.port} is not a TCP port")
    if not _valid_aet(remote.calling_aet):
        raise ConfigError(f"{where}: calling_aet must be 1-16 ASCII characters")


def parse_remotes(entries: Sequence[Mapping[str, Any]], origin: str | os.PathLike[str] = "<remotes>") -> list[RemoteSettings]:
    """Typed remotes from the parsed ``[[remotes]]`` list (as ``tomllib`` returns it)."""
    remotes: list[RemoteSettings] = []
    names: set[str] = set()
    for where, entry in table_array(entries, "remotes", origin, _FIELD_TYPES):
        if "name" not in entry:
            raise ConfigError(f"{where}: name is required")
        values = {k: _coerce(where, k, v) for k, v in entry.items()}
        remote = RemoteSettings(**values)
        where = f"{origin}: remote {remote.name!r}"
        validate_remote(remote, where)
        if remote.name in names:
            raise ConfigError(f"{where}: defined twice")
        names.add(remote.name)
        remotes.append(remote)
    return remotes


def load_remotes(path: str | os.PathLike[str] | None = None) -> list[RemoteSettings]:
    """The ``[[remotes]]`` of the settings file (``path`` or the default location);
    an empty list when the default file does not exist or has no remotes."""
    explicit = path is not None
    file = Path(path) if path is not None else default_config_path()
    if not file.exists():
        if explicit:
            raise ConfigError(f"{file}: configuration file not found")
        return []
    try:
        data = tomllib.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{file}: cannot read configuration: {exc}") from exc
    return parse_remotes(data.get("remotes", []), file)


def find_remote(remotes: Sequence[RemoteSettings], name: str) -> RemoteSettings:
    """The remote called ``name``; ConfigError listing the known names otherwise."""
    for remote in remotes:
        if remote.name == name:
            return remote
    known = ", ".join(r.name for r in remotes) or "none configured"
    raise ConfigError(f"no remote named {name!r} ({known})")


__all__ = [
    "AUTH_KINDS",
    "DEFAULT_TIMEOUT_S",
    "RemoteSettings",
    "find_remote",
    "load_remotes",
    "parse_remotes",
    "validate_remote",
]
