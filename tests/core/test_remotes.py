"""``[[remotes]]`` settings: typed, validated, secrets from the environment, never shown."""

from __future__ import annotations

from pathlib import Path

import pytest

from station.core.config import ConfigError, load_settings, settings_from_data
from station.core.remote.remotes import RemoteSettings, find_remote


def parse_remotes(entries):
    return settings_from_data({"remotes": entries}).remotes

TOML = """
[receiver]
aet = "STATION"

[[remotes]]
name = "archive"
dicomweb = "https://pacs.example/dicom-web/"
auth = "bearer"
token_env = "TEST_ARCHIVE_TOKEN"
ca_bundle = "/etc/station/ca.pem"
timeout = 12
aet = "ARCHIVE"
host = "pacs.example"
port = 11112

[[remotes]]
name = "clinic"
dicomweb = "http://10.0.0.5:8042/dicom-web"
auth = "basic"
username = "station"
password = "hunter2"
"""


def test_load_from_the_settings_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    path = tmp_path / "station.toml"
    path.write_text(TOML)
    remotes = load_settings(path).remotes
    assert [r.name for r in remotes] == ["archive", "clinic"]
    archive = find_remote(remotes, "archive")
    assert archive.ca_bundle == Path("/etc/station/ca.pem")
    assert archive.timeout == 12.0 and archive.has_dimse and archive.has_dicomweb
    monkeypatch.setenv("TEST_ARCHIVE_TOKEN", "tok-123")
    assert archive.secret() == "tok-123"
    assert find_remote(remotes, "clinic").secret() == "hunter2"


def test_secrets_never_in_repr():
    remote = RemoteSettings(name="x", dicomweb="http://a/dw", auth="basic", username="u", password="hunter2")
    assert "hunter2" not in repr(remote)
    token = RemoteSettings(name="y", dicomweb="http://a/dw", auth="bearer", token="tok-secret")
    assert "tok-secret" not in repr(token)


def test_missing_environment_variable_is_named(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("NO_SUCH_TOKEN_VAR", raising=False)
    remote = parse_remotes([{"name": "a", "dicomweb": "http://h/dw", "auth": "bearer", "token_env": "NO_SUCH_TOKEN_VAR"}])[0]
    with pytest.raises(ConfigError, match="NO_SUCH_TOKEN_VAR"):
        remote.secret()


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"dicomweb": "http://h/dw"}, "name is required"),
        ({"name": "a", "dicomweb": "ftp://h/dw"}, "http"),
        ({"name": "a", "dicomweb": "http://u:p@h/dw"}, "credentials"),
        ({"name": "a", "dicomweb": "http://h/dw", "auth": "kerberos"}, "auth must be"),
        ({"name": "a", "dicomweb": "http://h/dw", "auth": "basic", "password": "p"}, "username"),
        ({"name": "a", "dicomweb": "http://h/dw", "auth": "bearer"}, "token"),
        ({"name": "a", "aet": "X", "host": "h"}, "aet, host and port"),
        ({"name": "a", "aet": "X" * 17, "host": "h", "port": 104}, "aet"),
        ({"name": "a", "aet": "X", "host": "h", "port": 70000}, "TCP port"),
        ({"name": "a", "dicomweb": "http://h/dw", "colour": "red"}, "unknown key"),
        ({"name": "a", "dicomweb": "http://h/dw", "timeout": "soon"}, "timeout"),
        ({"name": "a"}, "needs a dicomweb URL"),
    ],
)
def test_invalid_entries(entry, message):
    with pytest.raises(ConfigError, match=message):
        parse_remotes([entry])


def test_wrongly_typed_secret_is_not_echoed():
    with pytest.raises(ConfigError) as info:
        parse_remotes([{"name": "a", "dicomweb": "http://h/dw", "auth": "basic", "username": "u", "password": 12345678}])
    assert "12345678" not in str(info.value)


def test_duplicate_names_and_unknown_remote():
    with pytest.raises(ConfigError, match="twice"):
        parse_remotes([{"name": "a", "dicomweb": "http://h/dw"}, {"name": "a", "dicomweb": "http://h/dw"}])
    with pytest.raises(ConfigError, match="no remote named"):
        find_remote([], "a")


def test_no_default_file_means_no_remotes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    monkeypatch.setenv("HOME", str(tmp_path))
    assert load_settings().remotes == []
    with pytest.raises(ConfigError, match="not found"):
        load_settings(tmp_path / "missing.toml")
