"""Routing against a real Orthanc: rules, DIMSE C-STORE and STOW-RS, alarm and decision
rules, the forward-alarms example, and a PACS that is down while scans arrive and the
station is killed and restarted (everything matching arrives once, nothing else does)."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pydicom
import pytest
import requests

from station.testing.orthanc import OrthancServer
from station.core.config import ConfigError, load_settings
from station.core.events import EventBus
from station.core.hooks.runner import ScanCompleted
from station.core.routing.outbox import OutboxReader
from station.core.remote.remotes import RemoteSettings
from station.core.store.store import Store
from station.core.synth.bags import make_bag_volume, write_ct_series
from station.net.routing.router import parse_routing
from station.app.host import start_services
from tests.core.test_hooks import _tdr_pair
from tests.dicom_factory import make_ct_files

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "hooks"
MR = "1.2.840.10008.5.1.4.1.1.4"


def _wait(predicate, timeout: float = 30.0, what: str = "condition", every: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(every)


def _sops(files: list[Path]) -> set[str]:
    return {str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in files}


def _mr_files(folder: Path, n: int, patient_id: str) -> list[Path]:
    """A small series that no CT rule may match (modality MR, MR Image Storage)."""
    files = make_ct_files(folder, n, patient_id=patient_id, sop_class=MR)
    for f in files:
        ds = pydicom.dcmread(f)
        ds.Modality = "MR"
        ds.save_as(f, enforce_file_format=True)
    return files


def _in_orthanc(server: OrthancServer, patient_id: str) -> set[str]:
    r = requests.post(f"{server.url}/tools/find", timeout=10,
                      json={"Level": "Instance", "Query": {"PatientID": patient_id}, "Expand": True})
    r.raise_for_status()
    return {i["MainDicomTags"]["SOPInstanceUID"] for i in r.json()}


def _config(tmp_path: Path, text: str):
    path = tmp_path / "station.toml"
    path.write_text(textwrap.dedent(text))
    settings = load_settings(path)
    settings.store.path = tmp_path / "store"
    return settings


def _arrive(store: Store, bus: EventBus, files: list[Path]) -> None:
    """As if a scanner sent them: stored, then announced on the bus."""
    for f in files:
        bus.publish(store.import_file(f))


def _jobs_by_key(reader: OutboxReader) -> dict[str, list]:
    out: dict[str, list] = {}
    for job in reader.jobs():
        out.setdefault(job.scan_key, []).append(job)
    return out


# --------------------------------------------------------------------------- rules


def test_rules_parse_validate_and_match():
    remotes = [RemoteSettings("pacs", aet="PACS", host="127.0.0.1", port=104),
               RemoteSettings("web", dicomweb="http://127.0.0.1:8042/dicom-web")]
    rules = parse_routing([
        {"match": {"modality": "ct"}, "to": "pacs"},
        {"match": {"sop_class": ["DICOSCTImageStorage", "1.2.840.10008.5.1.4.1.1.501.*"], "alarm": "ALARM"},
         "to": ["pacs", "web"], "name": "alarms"},
        {"match": {"decision": ["THREAT", "SUSPECT"]}, "to": "web", "via": "stowrs"},
        {"match": {"alarm": "NONE"}, "to": "pacs"},
    ], remotes)
    assert [r.name for r in rules] == ["rule 1", "alarms", "rule 3", "rule 4"]

    def scan(modality="CT", sop="1.2.840.10008.5.1.4.1.1.2", alarm="", decision=""):
        return ScanCompleted("k", "p", "st", "se", modality, (sop,), ("/x",), 1, 1, alarm=alarm, decision=decision)

    assert [r.matches(scan()) for r in rules] == [True, False, False, True]
    dicos = scan(sop="1.2.840.10008.5.1.4.1.1.501.1", alarm="ALARM", decision="SUSPECT")
    assert [r.matches(dicos) for r in rules] == [True, True, True, False]
    assert rules[1].matches(scan(modality="TDR", sop="1.2.840.10008.5.1.4.1.1.501.3", alarm="ALARM"))
    for entry, message in [
        ({"match": {"modality": "CT"}}, "to .* is required"),
        ({"to": "nowhere"}, "no remote named 'nowhere'"),
        ({"to": "web", "via": "dimse"}, "no aet/host/port"),
        ({"to": "pacs", "via": "stowrs"}, "no dicomweb URL"),
        ({"to": "pacs", "match": {"colour": "red"}}, "unknown match key 'colour'"),
        ({"to": "pacs", "match": {"alarm": "YES"}}, "must be among"),
        ({"to": "pacs", "match": {"sop_class": "NoSuchStorage"}}, "neither a UID"),
        ({"to": "pacs", "when": 1}, "unknown key"),
    ]:
        with pytest.raises(ConfigError, match=message):
            parse_routing([entry], remotes)


# --------------------------------------------------------------------------- DIMSE and STOW-RS


def test_dimse_route_sends_a_matching_scan_once_over_one_association_and_nothing_else(tmp_path, orthanc):
    settings = _config(tmp_path, f"""
        [[remotes]]
        name = "pacs"
        aet = "{orthanc.aet}"
        host = "127.0.0.1"
        port = {orthanc.dicom_port}

        [[routing]]
        match = {{ modality = "CT" }}
        to = "pacs"

        [hooks]
        quiet_time_s = 0.3
    """)
    ct = make_ct_files(tmp_path / "ct", 6, patient_id="RT-DIMSE-CT")
    mr = _mr_files(tmp_path / "mr", 3, "RT-DIMSE-MR")
    bus = EventBus()
    store = Store(settings.store.path, durable=False)
    services = start_services(settings, store, bus)
    reader = OutboxReader(store.root / "outbox.sqlite3")
    try:
        _arrive(store, bus, ct + mr)
        _wait(lambda: reader.counts()["sent"] == 1, what="the CT job")
        _arrive(store, bus, ct)  # the scanner sends the same scan again
        time.sleep(0.8)  # it completes again...
        jobs = reader.jobs()
    finally:
        reader.close()
        services.stop()
        store.close()
    assert _in_orthanc(orthanc, "RT-DIMSE-CT") == _sops(ct)
    assert _in_orthanc(orthanc, "RT-DIMSE-MR") == set()
    (job,) = jobs  # ...but is not sent twice
    assert (job.state, job.via, job.instances, job.sent_count, job.attempts) == ("sent", "dimse", 6, 1, 1)


def test_stowrs_route_sends_a_dicos_multiframe_scan(tmp_path, orthanc):
    settings = _config(tmp_path, f"""
        [[remotes]]
        name = "web"
        dicomweb = "{orthanc.dicomweb_url}"

        [[routing]]
        match = {{ sop_class = "DICOSCTImageStorage" }}
        to = "web"
        name = "DICOS to the archive"

        [outbox]
        stowrs_batch_mb = 0.01
    """)
    bag = make_bag_volume(size=32, slices=8, seed=5)
    dicos = write_ct_series(bag, tmp_path / "dicos", dicos=True, seed=5, patient_id="RT-STOW-DICOS")
    classic = write_ct_series(bag, tmp_path / "classic", seed=6, patient_id="RT-STOW-CLASSIC")[:3]
    bus = EventBus()
    store = Store(settings.store.path, durable=False)
    services = start_services(settings, store, bus)
    reader = OutboxReader(store.root / "outbox.sqlite3")
    try:
        _arrive(store, bus, dicos + classic)  # the multi-frame instance completes its scan at once
        _wait(lambda: reader.counts()["sent"] == 1, what="the STOW-RS job")
        (job,) = reader.jobs()
    finally:
        reader.close()
        services.stop()
        store.close()
    assert (job.via, job.reason, job.modality) == ("stowrs", "DICOS to the archive", "CT")
    assert _in_orthanc(orthanc, "RT-STOW-DICOS") == _sops(dicos)
    assert _in_orthanc(orthanc, "RT-STOW-CLASSIC") == set()


def test_stowrs_to_a_dead_url_fails_with_the_reason_and_backs_off(tmp_path, free_port):
    settings = _config(tmp_path, f"""
        [[remotes]]
        name = "gone"
        dicomweb = "http://127.0.0.1:{free_port}/dicom-web"
        timeout = 2.0

        [[routing]]
        to = "gone"

        [hooks]
        quiet_time_s = 0.2

        [outbox]
        retry_min_s = 0.2
        retry_max_s = 0.4
    """)
    bus = EventBus()
    store = Store(settings.store.path, durable=False)
    services = start_services(settings, store, bus)
    reader = OutboxReader(store.root / "outbox.sqlite3")
    try:
        _arrive(store, bus, make_ct_files(tmp_path / "ct", 2, patient_id="RT-GONE"))
        _wait(lambda: any(j.attempts >= 3 and j.state == "failing" for j in reader.jobs()), what="three attempts")
        (job,) = reader.jobs()
    finally:
        reader.close()
        services.stop()
        store.close()
    assert job.state == "failing" and "ConnectionError" in job.last_error and f":{free_port}/" in job.last_error
    assert job.next_attempt_at - job.updated_at <= 0.4 + 0.05


# --------------------------------------------------------------------------- alarms and decisions


def test_alarm_hook_and_decision_rule_forward_only_what_they_must(tmp_path, orthanc):
    """forward_alarms (the example) sends an alarmed bag's study to "pacs"; a rule sends
    bags the analyst called THREAT to "web" once the decision exists (after the images);
    a clear bag goes nowhere."""
    settings = _config(tmp_path, f"""
        [[remotes]]
        name = "pacs"
        aet = "{orthanc.aet}"
        host = "127.0.0.1"
        port = {orthanc.dicom_port}

        [[remotes]]
        name = "web"
        dicomweb = "{orthanc.dicomweb_url}"

        [[routing]]
        match = {{ decision = "THREAT" }}
        to = "web"

        [hooks]
        scripts = ["{EXAMPLES / 'forward_alarms.py'}"]
        quiet_time_s = 0.3

        [hooks.options.forward_alarms]
        to = "pacs"
    """)
    alarmed = make_ct_files(tmp_path / "a", 4, patient_id="RT-ALARM")
    a_machine, a_operator = _tdr_pair(tmp_path / "a-tdr", alarmed, alarm=True, decision="THREAT")
    clear = make_ct_files(tmp_path / "c", 4, patient_id="RT-CLEAR")
    c_machine, c_operator = _tdr_pair(tmp_path / "c-tdr", clear, alarm=False, decision="CLEAR")
    bus = EventBus()
    store = Store(settings.store.path, durable=False)
    services = start_services(settings, store, bus)
    reader = OutboxReader(store.root / "outbox.sqlite3")
    try:
        _arrive(store, bus, alarmed + clear + [c_machine])
        _arrive(store, bus, [a_machine])  # the ATR's report comes after the images
        _wait(lambda: reader.counts()["sent"] == 2, what="the alarmed bag's CT and TDR to pacs")
        # The analyst decides in the GUI, which stores the operator TDRs itself.
        for tdr in (a_operator, c_operator):
            store.ingest([tdr.read_bytes()], source="operator op7")
        _wait(lambda: reader.counts()["sent"] == 6 and not reader.counts()["pending"], what="the decision's jobs")
        time.sleep(0.5)
        jobs = reader.jobs()
    finally:
        reader.close()
        services.stop()
        store.close()
    by_remote: dict[str, set[str]] = {}
    for job in jobs:
        assert job.state == "sent" and job.sent_count == 1
        by_remote.setdefault(job.remote, set()).add(job.modality)
    assert {r: sorted(m) for r, m in by_remote.items()} == {"pacs": ["CT", "TDR"], "web": ["CT", "TDR"]}
    assert sorted(j.reason for j in jobs if j.remote == "pacs") == ["hook forward_alarms"] * 3
    assert _in_orthanc(orthanc, "RT-ALARM") == _sops(alarmed + [a_machine, a_operator])
    assert _in_orthanc(orthanc, "RT-CLEAR") == set()


# --------------------------------------------------------------------------- outage and restart


def _serve(store: Path, port: int, config: Path) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-m", "station", "--config", str(config), "serve", "--store", str(store),
         "--port", str(port), "--host", "127.0.0.1", "--aet", "STATION"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    if not line.startswith("listening on"):
        proc.kill()
        raise AssertionError(line + proc.communicate()[1])
    return proc


def _storescu(env: dict, port: int, files: list[Path]) -> None:
    out = subprocess.run(["storescu", "-R", "-aec", "STATION", "127.0.0.1", str(port), *map(str, files)],
                         capture_output=True, text=True, env=env, timeout=60)
    assert out.returncode == 0, out.stderr


@pytest.mark.dcmtk
def test_pacs_down_station_killed_and_restarted_then_pacs_up_everything_arrives_once(
        tmp_path, free_port, dcmtk_env, orthanc):
    pacs = OrthancServer(tmp_path / "pacs2", aet="PACS2")  # ports chosen, not started: down
    config = tmp_path / "station.toml"
    config.write_text(textwrap.dedent(f"""
        [[remotes]]
        name = "pacs2"
        aet = "PACS2"
        host = "127.0.0.1"
        port = {pacs.dicom_port}

        [[routing]]
        match = {{ modality = "CT" }}
        to = "pacs2"

        [hooks]
        quiet_time_s = 1.0

        [outbox]
        retry_min_s = 0.5
        retry_max_s = 2.0

        [detect]
        enabled = false
    """))
    store = tmp_path / "store"
    a = make_ct_files(tmp_path / "a", 8, size=32, patient_id="RS-A")
    b = write_ct_series(make_bag_volume(size=32, slices=8, seed=7), tmp_path / "b", dicos=True, seed=7,
                        patient_id="RS-B")
    x = _mr_files(tmp_path / "x", 3, "RS-X")
    c = make_ct_files(tmp_path / "c", 5, size=32, patient_id="RS-C")
    reader = OutboxReader(store / "outbox.sqlite3")
    first = _serve(store, free_port, config)
    try:
        for files in (a, b, x):
            _storescu(dcmtk_env, free_port, files)
        # One connection attempt per backoff period for the remote, and both jobs say why they wait.
        _wait(lambda: [j.state for j in reader.jobs()] == ["failing"] * 2 and sum(j.attempts for j in reader.jobs()) >= 2,
              what="two failing jobs while the PACS is down")
        failing = reader.jobs()
        _storescu(dcmtk_env, free_port, c)  # still within its quiet time when the station dies
    finally:
        first.send_signal(signal.SIGKILL)
        first.communicate(timeout=30)
    assert len(reader.jobs()) == 2
    assert all(f"association with PACS2 at 127.0.0.1:{pacs.dicom_port}" in j.last_error for j in failing), failing

    second = _serve(store, free_port, config)
    try:
        pacs.start()
        _wait(lambda: reader.counts()["sent"] == 3 and not reader.counts()["failing"] and not reader.counts()["pending"],
              timeout=40, what="every scan sent after the restart")
        time.sleep(1.0)  # nothing more is queued or sent
        jobs = reader.jobs()
        arrived = {pid: _in_orthanc(pacs, pid) for pid in ("RS-A", "RS-B", "RS-C", "RS-X")}
    finally:
        reader.close()
        second.send_signal(signal.SIGTERM)
        _, err = second.communicate(timeout=30)
        pacs.stop()
    assert second.returncode == 0, err
    assert "had not completed when the station last stopped" in err
    assert arrived == {"RS-A": _sops(a), "RS-B": _sops(b), "RS-C": _sops(c), "RS-X": set()}
    assert sorted((j.patient_id, j.part, j.instances, j.sent_count) for j in jobs) == [
        ("RS-A", 0, 8, 1), ("RS-B", 0, 1, 1), ("RS-C", 0, 5, 1)]
