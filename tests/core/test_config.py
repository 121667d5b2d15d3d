"""Settings: defaults without a file, typed values from TOML, clear errors for mistakes."""

from __future__ import annotations

from pathlib import Path

import pytest

from station.core.config import ConfigError, load_settings


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "station.toml"
    path.write_text(text)
    return path


def test_defaults_work_without_a_file(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    settings = load_settings()
    assert settings.receiver.port == 11112
    assert settings.receiver.aet == "STATION"
    assert settings.receiver.allowed_calling_aets == []
    assert settings.source is None


def test_values_are_read_and_typed(tmp_path):
    settings = load_settings(write(tmp_path, """
[receiver]
aet = "LANE3"
port = 4242
network_timeout = 12
allowed_calling_aets = ["CT_A", "CT_B"]
max_associations_per_peer = 2
[store]
path = "~/scans"
[ui]
mode = "clinic"
[[remotes]]
name = "pacs"
"""))
    assert settings.receiver.aet == "LANE3"
    assert settings.receiver.network_timeout == 12.0
    assert settings.receiver.allowed_calling_aets == ["CT_A", "CT_B"]
    assert settings.store.path == Path("~/scans").expanduser()
    assert settings.ui.mode == "clinic"


@pytest.mark.parametrize(("text", "message"), [
    ("[receiver]\nprot = 1\n", "unknown key 'prot' in [receiver]"),
    ("[reciever]\n", "unknown section [reciever]"),
    ("[receiver]\nport = 'x'\n", "port must be of type int"),
    ("[receiver]\nport = 70000\n", "not a TCP port"),
    ("[receiver]\naet = 'THIS AE TITLE IS FAR TOO LONG'\n", "1-16 ASCII"),
    ("[receiver]\nallowed_calling_aets = ['OK', '']\n", "is not an AE title"),
    ("[receiver]\ntls_cert = 'a.pem'\n", "tls_cert and tls_key go together"),
    ("[receiver]\nmax_pdu = 100\n", "at least 4096"),
    ("[ui]\nmode = 'hospital'\n", "'airport' or 'clinic'"),
    ("this is not toml", "cannot read configuration"),
])
def test_mistakes_are_clear_errors_naming_the_file(tmp_path, text, message):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    assert message in str(info.value)
    assert str(path) in str(info.value)


def test_an_explicit_file_that_is_missing_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_settings(tmp_path / "nope.toml")
