"""Typed station settings, read from one TOML file; defaults work with no file at all.

The file is looked up at ``--config FILE`` or else ``<user config dir>/station.toml``
(platformdirs). Command-line options override file values (see ``station.app.cli``).

Example::

    [receiver]
    aet = "STATION"
    host = "0.0.0.0"
    port = 11112
    max_associations = 16

    [store]
    path = "/var/lib/station/store"

    [ui]
    mode = "airport"   # or "clinic"
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import platformdirs

APP_NAME = "inspection-station"


class ConfigError(ValueError):
    """The configuration file cannot be used; the message names the file and the key."""


def default_store_path() -> Path:
    """The store used when neither the file nor the command line names one."""
    return Path(platformdirs.user_data_dir(APP_NAME)) / "store"


def default_frame_cache_dir() -> Path:
    """Where frames and answers pulled from remote stores are cached between runs."""
    return Path(platformdirs.user_cache_dir(APP_NAME)) / "frames"


def default_config_path() -> Path:
    return Path(platformdirs.user_config_dir(APP_NAME)) / "station.toml"


@dataclass
class ReceiverSettings:
    aet: str = "STATION"
    host: str = "0.0.0.0"
    port: int = 11112
    max_associations: int = 16
    # At most this many simultaneous associations from one IP address; one scanner
    # rarely needs more than a few, and a misbehaving peer must not take every slot.
    max_associations_per_peer: int = 4
    # If not empty, only these calling AE titles may send; others are rejected at association.
    allowed_calling_aets: list[str] = field(default_factory=list)
    # DICOM TLS: certificate and key (PEM) enable TLS; a CA bundle also requires and
    # verifies client certificates.
    tls_cert: str = ""
    tls_key: str = ""
    tls_ca: str = ""
    # Accept storage SOP classes pynetdicom does not know (vendor DICOS sub-classes,
    # private classes). Verification and known storage classes are always accepted.
    accept_unknown_sop_classes: bool = True
    # Seconds a silent association may hold a slot before it is aborted.
    network_timeout: float = 30.0
    # Seconds to wait for a peer's association request or release answer: a connection
    # that sends nothing useful holds a slot no longer than this.
    acse_timeout: float = 5.0
    # Maximum PDU we offer (bytes). Large PDUs cost far fewer round trips than the 16 KB
    # default; a peer sending more than this is aborted, so memory per association is
    # bounded even against hostile length fields.
    max_pdu: int = 4 * 1024 * 1024


@dataclass
class StoreSettings:
    path: Path = field(default_factory=default_store_path)
    # Disk bounds, applied by the process that owns the store (station serve): least
    # recently used scans go first; pinned, pending, alarmed and recently opened never.
    quota_gb: float = 0.0  # 0 = no quota
    max_age_days: float = 0.0  # 0 = no age limit
    evict_interval_s: float = 60.0


@dataclass
class UiSettings:
    mode: str = "airport"  # "airport" (bag/OOI, MHU) or "clinic" (patient, HU)
    keymap: str = ""  # a keymap file overriding resources/keymap.toml ("": <config dir>/keymap.toml)
    undo_window_s: float = 10.0  # Ctrl+Z withdraws the last decision for this long
    alarms_first: bool = False  # triage queue order: alarmed scans first (else arrival order)


@dataclass
class SimulatorSettings:
    interval_s: float = 6.0
    slices: int = 96
    size: int = 256
    threats: int = 1
    dicos_every: int = 3  # every n-th bag is sent as a DICOS multi-frame CT


@dataclass
class DetectSettings:
    enabled: bool = True  # run the built-in detector on every CT scan that arrives
    quiet_time_s: float = 2.0  # a classic series is complete after this long without a slice


@dataclass
class Settings:
    receiver: ReceiverSettings = field(default_factory=ReceiverSettings)
    store: StoreSettings = field(default_factory=StoreSettings)
    ui: UiSettings = field(default_factory=UiSettings)
    simulator: SimulatorSettings = field(default_factory=SimulatorSettings)
    detect: DetectSettings = field(default_factory=DetectSettings)
    source: Path | None = None  # the file these settings came from, if any


def table_array(entries: Any, section: str, origin: str | os.PathLike[str],
                keys: Iterable[str]) -> list[tuple[str, Mapping[str, Any]]]:
    """The tables of a ``[[section]]`` array (as ``tomllib`` returns it), each with its
    place for error messages ("FILE: [[section]] #N"). ConfigError when the section is
    not an array of tables, an entry is not a table, or it has a key not in ``keys``
    (a typo must never fall back to a default)."""
    if not isinstance(entries, list):
        raise ConfigError(f"{origin}: {section} must be an array of tables ([[{section}]])")
    allowed = set(keys)
    tables = []
    for i, entry in enumerate(entries, 1):
        where = f"{origin}: [[{section}]] #{i}"
        if not isinstance(entry, Mapping):
            raise ConfigError(f"{where} must be a table")
        unknown = sorted(set(entry) - allowed)
        if unknown:
            raise ConfigError(f"{where}: unknown key(s) {', '.join(map(repr, unknown))}")
        tables.append((where, entry))
    return tables


def coerce_setting(kind: type, value: Any, where: str, *, echo: bool = True) -> Any:
    """A TOML value checked against (and converted to) the type of the setting it sets.

    `where` names the file, section and key for the error message. ``echo=False`` keeps
    the value out of the message (it may be a secret typed under the wrong key).
    """
    if kind is Path or issubclass(kind, Path):
        if not isinstance(value, str):
            raise ConfigError(f"{where} must be a path string")
        return Path(value).expanduser()
    if kind is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where} must be true or false")
        return value
    if kind is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if kind is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if kind is str and isinstance(value, str):
        return value
    if kind is list and isinstance(value, list) and all(isinstance(v, str) for v in value):
        return list(value)
    got = f", got {value!r}" if echo else ""
    raise ConfigError(f"{where} must be of type {kind.__name__}{got}")


def _coerce(section: str, key: str, value: Any, target: Any, origin: Path) -> Any:
    return coerce_setting(Path if isinstance(target, Path) else type(target), value, f"{origin}: [{section}] {key}")


def load_settings(path: Path | None = None) -> Settings:
    """Read settings from `path` (or the default location, if it exists).

    Unknown sections or keys are errors, so a typo never silently falls back to a default.
    """
    settings = Settings()
    explicit = path is not None
    path = Path(path) if path is not None else default_config_path()
    if not path.exists():
        if explicit:
            raise ConfigError(f"{path}: configuration file not found")
        return settings
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read configuration: {exc}") from exc
    sections = {f.name for f in dataclasses.fields(Settings) if f.name != "source"}
    for section, values in data.items():
        if section not in sections:
            # Later features (remotes, routing, hooks, outbox) own their own sections.
            if section in {"remotes", "routing", "hooks", "cache", "outbox"}:
                continue
            raise ConfigError(f"{path}: unknown section [{section}]")
        if not isinstance(values, dict):
            raise ConfigError(f"{path}: [{section}] must be a table")
        target = getattr(settings, section)
        known = {f.name for f in dataclasses.fields(target)}
        for key, value in values.items():
            if key not in known:
                raise ConfigError(f"{path}: unknown key {key!r} in [{section}]")
            setattr(target, key, _coerce(section, key, value, getattr(target, key), path))
    _validate(settings, path)
    settings.source = path
    return settings


def _validate(settings: Settings, origin: Path) -> None:
    r = settings.receiver
    if not 0 <= r.port <= 65535:
        raise ConfigError(f"{origin}: [receiver] port {r.port} is not a TCP port")
    if not r.aet or len(r.aet) > 16 or not r.aet.isascii() or "\\" in r.aet:
        raise ConfigError(f"{origin}: [receiver] aet {r.aet!r} must be 1-16 ASCII characters")
    if r.max_associations < 1 or r.max_associations_per_peer < 1:
        raise ConfigError(f"{origin}: [receiver] max_associations and max_associations_per_peer must be at least 1")
    for aet in r.allowed_calling_aets:
        if not aet or len(aet) > 16 or not aet.isascii() or "\\" in aet:
            raise ConfigError(f"{origin}: [receiver] allowed_calling_aets: {aet!r} is not an AE title")
    if bool(r.tls_cert) != bool(r.tls_key):
        raise ConfigError(f"{origin}: [receiver] tls_cert and tls_key go together")
    if r.tls_ca and not r.tls_cert:
        raise ConfigError(f"{origin}: [receiver] tls_ca needs tls_cert and tls_key")
    if 0 < r.max_pdu < 4096:
        raise ConfigError(f"{origin}: [receiver] max_pdu must be 0 (unlimited) or at least 4096")
    if settings.ui.mode not in {"airport", "clinic"}:
        raise ConfigError(f"{origin}: [ui] mode must be 'airport' or 'clinic'")
