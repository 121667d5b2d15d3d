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

The whole file is read once, by ``load_settings``, into the typed models below (msgspec
structs): every section of the file, including the ones features own (``[[remotes]]``,
``[[routing]]``, ``[hooks]``, ``[outbox]``; their modules document them and re-export
their models). An unknown section or key, a wrong type or a value out of range is a
ConfigError naming the file, the section and the key, so a typo never silently falls back
to a default. Pure core: no Qt, no networking.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import msgspec
import platformdirs

if TYPE_CHECKING:
    from station.core.dicos.site import Site

APP_NAME = "inspection-station"

REMOVED_SECTIONS: dict[str, str] = {
    "cache": "nothing reads it; the frame cache is --cache-dir of station fetch and the user cache dir",
}
"""Sections the file once had: a file that still has one gets an error saying so."""

AUTH_KINDS: tuple[str, ...] = ("none", "basic", "bearer")
"""How a DICOMweb remote authenticates: nothing, HTTP Basic, or an OAuth-style bearer token."""

DEFAULT_TIMEOUT_S: float = 30.0
DEFAULT_CALLING_AET: str = "STATION"


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


def is_ae_title(aet: str) -> bool:
    return 0 < len(aet) <= 16 and aet.isascii() and "\\" not in aet


class _Table(msgspec.Struct, forbid_unknown_fields=True):
    """A TOML table: keys not declared are refused. ``__post_init__`` raising ConfigError
    (a ValueError) reports a value out of range; on decoding msgspec adds where it is."""


# --------------------------------------------------------------------------- [receiver] [store] [ui] ...


class ReceiverSettings(_Table):
    aet: str = "STATION"
    host: str = "0.0.0.0"
    port: int = 11112
    max_associations: int = 16
    # At most this many simultaneous associations from one IP address; one scanner
    # rarely needs more than a few, and a misbehaving peer must not take every slot.
    max_associations_per_peer: int = 4
    # If not empty, only these calling AE titles may send; others are rejected at association.
    allowed_calling_aets: list[str] = msgspec.field(default_factory=list)
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

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"port {self.port} is not a TCP port")
        if not is_ae_title(self.aet):
            raise ConfigError(f"aet {self.aet!r} must be 1-16 ASCII characters")
        if self.max_associations < 1 or self.max_associations_per_peer < 1:
            raise ConfigError("max_associations and max_associations_per_peer must be at least 1")
        for aet in self.allowed_calling_aets:
            if not is_ae_title(aet):
                raise ConfigError(f"allowed_calling_aets: {aet!r} is not an AE title")
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ConfigError("tls_cert and tls_key go together")
        if self.tls_ca and not self.tls_cert:
            raise ConfigError("tls_ca needs tls_cert and tls_key")
        if 0 < self.max_pdu < 4096:
            raise ConfigError("max_pdu must be 0 (unlimited) or at least 4096")


class StoreSettings(_Table):
    path: Path = msgspec.field(default_factory=default_store_path)
    # Disk bounds, applied by the process that owns the store (station serve): least
    # recently used scans go first; pinned, pending, alarmed and recently opened never.
    quota_gb: float = 0.0  # 0 = no quota
    max_age_days: float = 0.0  # 0 = no age limit
    evict_interval_s: float = 60.0


class UiSettings(_Table):
    mode: str = "airport"  # "airport" (bag/OOI, MHU) or "clinic" (patient, HU)
    keymap: str = ""  # a keymap file overriding resources/keymap.toml ("": <config dir>/keymap.toml)
    undo_window_s: float = 10.0  # Ctrl+Z withdraws the last decision for this long
    alarms_first: bool = False  # triage queue order: alarmed scans first (else arrival order)

    def __post_init__(self) -> None:
        if self.mode not in {"airport", "clinic"}:
            raise ConfigError("mode must be 'airport' or 'clinic'")


class SimulatorSettings(_Table):
    interval_s: float = 6.0
    slices: int = 96
    size: int = 256
    threats: int = 1
    dicos_every: int = 3  # every n-th bag is sent as a DICOS multi-frame CT


class DetectSettings(_Table):
    enabled: bool = True  # run the built-in detector on every CT scan that arrives
    quiet_time_s: float = 2.0  # a classic series is complete after this long without a slice


# --------------------------------------------------------------------------- [[remotes]]


class RemoteSettings(_Table):
    """One ``[[remotes]]`` entry (see ``station.core.remote.remotes``). ``dicomweb`` empty
    means DIMSE only; ``aet`` empty means DICOMweb only. Secrets are resolved with
    ``secret()`` and never shown by ``repr``."""

    name: str
    dicomweb: str = ""
    auth: str = "none"
    username: str = ""
    password: str = ""
    password_env: str = ""
    token: str = ""
    token_env: str = ""
    ca_bundle: Path | None = None
    verify: bool = True
    timeout: float = DEFAULT_TIMEOUT_S
    aet: str = ""
    host: str = ""
    port: int = 0
    calling_aet: str = DEFAULT_CALLING_AET

    def __repr__(self) -> str:
        shown = ", ".join(f"{f}={getattr(self, f)!r}" for f in self.__struct_fields__ if f not in ("password", "token"))
        return f"RemoteSettings({shown})"

    def __post_init__(self) -> None:
        if not self.name.strip():
            raise ConfigError("name must not be empty")
        if not self.has_dicomweb and not (self.aet or self.host or self.port):
            raise ConfigError(f"remote {self.name!r} needs a dicomweb URL or aet/host/port")
        if self.dicomweb:
            parts = urlsplit(self.dicomweb)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ConfigError(f"remote {self.name!r}: dicomweb must be an http:// or https:// URL")
            if parts.username or parts.password:
                raise ConfigError(f"remote {self.name!r}: put credentials in username/password(_env), not in the URL")
        if self.auth not in AUTH_KINDS:
            raise ConfigError(f"remote {self.name!r}: auth must be one of {', '.join(AUTH_KINDS)}")
        if self.auth == "basic" and not self.username:
            raise ConfigError(f"remote {self.name!r}: auth = \"basic\" needs a username")
        if self.auth == "basic" and not (self.password or self.password_env):
            raise ConfigError(f"remote {self.name!r}: auth = \"basic\" needs password or password_env")
        if self.auth == "bearer" and not (self.token or self.token_env):
            raise ConfigError(f"remote {self.name!r}: auth = \"bearer\" needs token or token_env")
        if self.timeout <= 0:
            raise ConfigError(f"remote {self.name!r}: timeout must be positive")
        if self.aet or self.host or self.port:
            if not (self.aet and self.host and self.port):
                raise ConfigError(f"remote {self.name!r}: a DIMSE peer needs all of aet, host and port")
            if not (is_ae_title(self.aet) and self.aet.strip() == self.aet):
                raise ConfigError(f"remote {self.name!r}: aet must be 1-16 ASCII characters")
            if not 0 < self.port <= 65535:
                raise ConfigError(f"remote {self.name!r}: port {self.port} is not a TCP port")
        if not (is_ae_title(self.calling_aet) and self.calling_aet.strip() == self.calling_aet):
            raise ConfigError(f"remote {self.name!r}: calling_aet must be 1-16 ASCII characters")

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


# --------------------------------------------------------------------------- [[routing]]


class MatchSettings(_Table):
    """``match = { ... }`` of a routing rule: each key a string or a list of strings."""

    modality: str | list[str] | None = None
    sop_class: str | list[str] | None = None
    alarm: str | list[str] | None = None
    decision: str | list[str] | None = None


class RouteSettings(_Table):
    """One ``[[routing]]`` entry as written; ``station.net.routing.router.parse_routing``
    checks it against the remotes and makes it a ``RoutingRule``."""

    to: str | list[str] = msgspec.field(default_factory=list)
    match: MatchSettings = msgspec.field(default_factory=MatchSettings)
    via: str = ""
    name: str = ""


# --------------------------------------------------------------------------- [hooks] [outbox]


class HooksSettings(_Table):
    """The ``[hooks]`` section (see ``station.core.hooks.runner``). Read from a file,
    ``scripts`` are absolute paths (relative ones resolve against the file's folder)."""

    scripts: list[Path] = msgspec.field(default_factory=list)
    quiet_time_s: float = 2.0
    queue_size: int = 1000
    slow_call_s: float = 1.0
    stop_timeout_s: float = 5.0
    process_workers: int = 1
    options: dict[str, dict[str, Any]] = msgspec.field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.quiet_time_s <= 0 or self.slow_call_s <= 0 or self.stop_timeout_s < 0:
            raise ConfigError("quiet_time_s and slow_call_s must be positive, stop_timeout_s not negative")
        if self.queue_size < 1 or self.process_workers < 1:
            raise ConfigError("queue_size and process_workers must be at least 1")


def hook_script_name(path: Path) -> str:
    """The name a hook script goes by (its options table, its module, its log lines)."""
    return re.sub(r"\W", "_", path.stem)


class OutboxSettings(_Table):
    """The ``[outbox]`` section (see ``station.core.routing.outbox``)."""

    path: str = ""
    retry_min_s: float = 1.0
    retry_max_s: float = 15.0
    keep_days: float = 7.0
    stowrs_batch_mb: float = 64.0

    def __post_init__(self) -> None:
        if not 0 < self.retry_min_s <= self.retry_max_s:
            raise ConfigError("needs 0 < retry_min_s <= retry_max_s")
        if self.keep_days <= 0 or self.stowrs_batch_mb <= 0:
            raise ConfigError("keep_days and stowrs_batch_mb must be positive")


class SiteSettings(_Table):
    """``[site]``: who writes the station's DICOS objects (General Equipment and OOI
    identity in every TDR; see station.core.dicos.site). The defaults give valid objects;
    a site sets its own before go-live."""

    institution_name: str = "Inspection Station"
    institution_address: str = "not configured"
    station_name: str = ""  # "": this machine's host name (16 characters at most)
    device_serial_number: str = "UNSET"
    ooi_id_assigning_authority: str = "INSPECTION STATION"  # when the scan names none
    calibration: datetime | None = None  # last calibration; none: the time of writing

    def __post_init__(self) -> None:
        if len(self.station_name) > 16:
            raise ConfigError("station_name holds 16 characters at most (DICOM SH)")
        for key in ("institution_name", "device_serial_number", "ooi_id_assigning_authority"):
            if len(getattr(self, key)) > 64:
                raise ConfigError(f"{key} holds 64 characters at most (DICOM LO)")

    def site(self) -> Site:
        # Imported here: the settings are read first thing by `station serve`, before it
        # lowers its priority, and the DICOS package brings numpy (whose BLAS pool starts
        # threads at import, at the old priority).
        from station.core.dicos.site import Site

        return Site(institution_name=self.institution_name, institution_address=self.institution_address,
                    station_name=self.station_name, device_serial_number=self.device_serial_number,
                    ooi_id_assigning_authority=self.ooi_id_assigning_authority,
                    calibration=self.calibration)


# --------------------------------------------------------------------------- the file


class Settings(_Table):
    receiver: ReceiverSettings = msgspec.field(default_factory=ReceiverSettings)
    store: StoreSettings = msgspec.field(default_factory=StoreSettings)
    ui: UiSettings = msgspec.field(default_factory=UiSettings)
    simulator: SimulatorSettings = msgspec.field(default_factory=SimulatorSettings)
    detect: DetectSettings = msgspec.field(default_factory=DetectSettings)
    remotes: list[RemoteSettings] = msgspec.field(default_factory=list)
    routing: list[RouteSettings] = msgspec.field(default_factory=list)
    hooks: HooksSettings = msgspec.field(default_factory=HooksSettings)
    outbox: OutboxSettings = msgspec.field(default_factory=OutboxSettings)
    site: SiteSettings = msgspec.field(default_factory=SiteSettings)
    source: Path | None = None  # the file these settings came from, if any (not a key of the file)

    def __post_init__(self) -> None:
        names = [r.name for r in self.remotes]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ConfigError(f"[[remotes]] {', '.join(map(repr, twice))} defined twice")


def _path_hook(kind: type, value: Any) -> Any:
    if kind is Path:
        if isinstance(value, Path):
            return value
        if isinstance(value, str):
            return Path(value).expanduser()
        raise TypeError("must be a path string")
    raise NotImplementedError(kind)


_ERROR = re.compile(r"(?P<message>.*?)(?: - at `(?P<path>\$[^`]*)`)?$", re.S)
_PATH_PART = re.compile(r"\.([^.\[]+)|\[(\d+)\]|\[([^\]]*)\]")


def _readable(exc: msgspec.ValidationError, origin: str | os.PathLike[str]) -> ConfigError:
    """msgspec's "Expected `int`, got `str` - at `$.receiver.port`" as "FILE: [receiver]
    port must be of type int, got str". Never echoes a value (it may be a secret)."""
    found = _ERROR.match(str(exc))
    assert found is not None
    message = found["message"]
    parts = [name or (int(index) if index else key) for name, index, key in _PATH_PART.findall(found["path"] or "$")]
    section, rest = "", parts  # "[receiver]" or "[[remotes]] #2", then the key within it
    if parts:
        if len(parts) > 1 and isinstance(parts[1], int):
            section, rest = f"[[{parts[0]}]] #{parts[1] + 1}", parts[2:]
        else:
            section, rest = f"[{parts[0]}]", parts[1:]
    where = f"{origin}: {section}" if section else f"{origin}"
    key = "".join(f" item {p + 1}" if isinstance(p, int) else f".{'*' if p == '...' else p}" for p in rest).lstrip(".")
    if unknown := re.fullmatch(r"Object contains unknown field `(.*)`", message):
        if not section:
            return ConfigError(f"{origin}: unknown section [{unknown[1]}]")
        if not key:
            return ConfigError(f"{origin}: unknown key {unknown[1]!r} in {section}")
        return ConfigError(f"{where}: unknown {key} key {unknown[1]!r}")
    if missing := re.fullmatch(r"Object missing required field `(.*)`", message):
        return ConfigError(f"{where}: {f'{key}.' if key else ''}{missing[1]} is required")
    if expected := re.fullmatch(r"Expected `(.*)`, got `(.*)`", message):
        wanted = {"object": "a table", "array": "an array"}.get(expected[1])
        subject = f"{where} {key}" if key else (where if section else f"{origin}: the file")
        if wanted:
            return ConfigError(f"{subject} must be {wanted}, got {expected[2]}")
        return ConfigError(f"{subject} must be of type {expected[1]}, got {expected[2]}")
    return ConfigError(f"{where}{f' {key}' if key else ''}: {message}")


def settings_from_data(data: Mapping[str, Any], origin: str | os.PathLike[str] = "<settings>",
                       base_dir: Path | None = None) -> Settings:
    """Typed, checked settings from a parsed TOML document (``tomllib``'s dict); relative
    hook scripts resolve against ``base_dir``. ConfigError names ``origin`` and the key."""
    for section, why in REMOVED_SECTIONS.items():
        if section in data:
            raise ConfigError(f"{origin}: the [{section}] section was removed ({why}): delete it")
    if "source" in data:
        raise ConfigError(f"{origin}: unknown section [source]")
    try:
        settings = msgspec.convert(data, Settings, dec_hook=_path_hook)
    except msgspec.ValidationError as exc:
        raise _readable(exc, origin) from None
    _resolve_hooks(settings.hooks, origin, base_dir)
    return settings


def _resolve_hooks(hooks: HooksSettings, origin: str | os.PathLike[str], base_dir: Path | None) -> None:
    hooks.scripts = [(base_dir / p if base_dir is not None and not p.is_absolute() else p).resolve()
                     for p in hooks.scripts]
    for script in hooks.scripts:
        if not script.is_file():
            raise ConfigError(f"{origin}: [hooks] script {script} not found")
    names = [hook_script_name(p) for p in hooks.scripts]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ConfigError(f"{origin}: [hooks] two scripts are called {', '.join(twice)}: rename one")
    unknown = sorted(set(hooks.options) - set(names))
    if unknown:
        raise ConfigError(f"{origin}: [hooks.options] {', '.join(unknown)}: no such script in [hooks] scripts")


def load_settings(path: Path | None = None) -> Settings:
    """Read settings from `path` (or the default location, if it exists): the one read of
    the file. Unknown sections or keys are errors, so a typo never falls back to a default."""
    explicit = path is not None
    path = Path(path) if path is not None else default_config_path()
    if not path.exists():
        if explicit:
            raise ConfigError(f"{path}: configuration file not found")
        return Settings()
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read configuration: {exc}") from exc
    settings = settings_from_data(data, path, path.parent)
    settings.source = path
    return settings
