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
dicomweb = "http://pacs.example/dicom-web"
timeout = 5
"""))
    assert settings.receiver.aet == "LANE3"
    assert settings.receiver.network_timeout == 12.0
    assert settings.receiver.allowed_calling_aets == ["CT_A", "CT_B"]
    assert settings.store.path == Path("~/scans").expanduser()
    assert settings.ui.mode == "clinic"
    assert [(r.name, r.timeout) for r in settings.remotes] == [("pacs", 5.0)]


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


@pytest.mark.parametrize(("text", "message"), [
    # unknown keys, at every depth, name the section (and the entry of an array of tables)
    ("[store]\npath = '/s'\nquota = 3\n", "unknown key 'quota' in [store]"),
    ("[[remotes]]\nname = 'a'\ndicomweb = 'http://h/dw'\n[[remotes]]\nname = 'b'\nurl = 'http://h/dw'\n",
     "unknown key 'url' in [[remotes]] #2"),
    ("[[remotes]]\nname = 'a'\ndicomweb = 'http://h/dw'\n[[routing]]\nto = 'a'\nmatch = { colour = 'red' }\n",
     "[[routing]] #1: unknown match key 'colour'"),
    ("[hooks]\nscript = ['a.py']\n", "unknown key 'script' in [hooks]"),
    # wrong types say which type was wanted and which was found, never the value
    ("[receiver]\naccept_unknown_sop_classes = 'yes'\n", "[receiver] accept_unknown_sop_classes must be of type bool, got str"),
    ("[store]\npath = 3\n", "[store] path: must be a path string"),
    ("[[remotes]]\nname = 'a'\ndicomweb = 'http://h/dw'\nport = '104'\n", "[[remotes]] #1 port must be of type int, got str"),
    ("[[remotes]]\nname = 'a'\ndicomweb = 'http://h/dw'\ntimeout = true\n", "[[remotes]] #1 timeout must be of type float, got bool"),
    ("receiver = 3\n", "[receiver] must be a table, got int"),
    ("[remotes]\nname = 'a'\n", "[remotes] must be an array, got object"),
    ("[outbox]\nkeep_days = '7'\n", "[outbox] keep_days must be of type float, got str"),
    # nested [[remotes]] entries: required keys, range checks, duplicates
    ("[[remotes]]\ndicomweb = 'http://h/dw'\n", "[[remotes]] #1: name is required"),
    ("[[remotes]]\nname = 'a'\naet = 'A'\nhost = 'h'\nport = 70000\n", "[[remotes]] #1: remote 'a': port 70000 is not a TCP port"),
    ("[[remotes]]\nname = 'a'\ndicomweb = 'http://h/dw'\n[[remotes]]\nname = 'a'\naet = 'A'\nhost = 'h'\nport = 104\n",
     "'a' defined twice"),
    ("[outbox]\nretry_min_s = 20\nretry_max_s = 10\n", "[outbox]: needs 0 < retry_min_s <= retry_max_s"),
    ("source = '/etc/other.toml'\n", "unknown section [source]"),
])
def test_the_one_read_refuses_unknown_keys_and_wrong_types_naming_section_and_key(tmp_path, text, message):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    assert str(info.value).startswith(f"{path}: ")
    assert message in str(info.value)


def test_a_secret_under_a_wrong_type_is_not_echoed(tmp_path):
    path = write(tmp_path, "[[remotes]]\nname = 'a'\ndicomweb = 'http://h/dw'\nauth = 'basic'\nusername = 'u'\n"
                           "password = 987654321\n")
    with pytest.raises(ConfigError, match="password must be of type str, got int") as info:
        load_settings(path)
    assert "987654321" not in str(info.value)


def test_the_removed_cache_section_is_named(tmp_path):
    path = write(tmp_path, "[receiver]\nport = 4242\n[cache]\nmemory_mb = 256\n")
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    assert f"{path}: the [cache] section was removed" in str(info.value)
    assert "delete it" in str(info.value)


def test_every_section_is_read_once_into_typed_models(tmp_path):
    (tmp_path / "hooks").mkdir()
    (tmp_path / "hooks" / "one.py").write_text("def register(api):\n    pass\n")
    settings = load_settings(write(tmp_path, """
[[remotes]]
name = "pacs"
aet = "PACS"
host = "pacs.example"
port = 104
ca_bundle = "~/ca.pem"
[[routing]]
to = ["pacs"]
match = { modality = "CT" }
[hooks]
scripts = ["hooks/one.py"]
queue_size = 10
[outbox]
retry_max_s = 30
"""))
    (remote,) = settings.remotes
    assert (remote.name, remote.port, remote.has_dimse) == ("pacs", 104, True)
    assert remote.ca_bundle == Path("~/ca.pem").expanduser()
    (route,) = settings.routing
    assert (route.to, route.match.modality) == (["pacs"], "CT")
    assert settings.hooks.scripts == [(tmp_path / "hooks" / "one.py").resolve()]
    assert settings.hooks.queue_size == 10
    assert settings.outbox.retry_max_s == 30.0 and isinstance(settings.outbox.retry_max_s, float)
