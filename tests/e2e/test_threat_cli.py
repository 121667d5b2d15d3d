"""Threat commands end to end: detect a planted threat, write machine and operator TDRs, inspect them."""

from __future__ import annotations

import json
import subprocess
import sys

from station.core.synth import bags as synth


def station(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "station", *args], capture_output=True, text=True, timeout=180)


def test_detect_tdr_and_operator_decision(tmp_path):
    bag = synth.make_bag_volume(size=128, slices=48, threats=1, seed=31)
    synth.write_ct_series(bag, tmp_path / "bag", dicos=True)
    (tmp_path / "bag" / "truth.json").unlink()
    machine = tmp_path / "machine_tdr.dcm"

    out = station("detect", str(tmp_path / "bag"), "--tdr-out", str(machine), "--json")
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["alarm_decision"] == "ALARM"
    (threat,) = bag.threats
    assert len(result["alerts"]) == 1

    out = station("inspect", str(machine), "--json")
    assert out.returncode == 0, out.stderr
    (info,) = json.loads(out.stdout)
    assert info["sop_class_uid"] == "1.2.840.10008.5.1.4.1.1.501.3"
    assert info["tdr_type"] == "MACHINE"
    assert info["alarm_decision"] == "ALARM"
    (pto,) = info["ptos"]
    assert [round(v) for v in pto["base"]] == list(threat.base_xyz)
    assert [round(v) for v in pto["extent"]] == list(threat.extent_xyz)

    operator_tdr = tmp_path / "operator_tdr.dcm"
    out = station("tdr", "operator", "--machine-tdr", str(machine), "--decision", "clear",
                  "--operator", "OP-17", "--out", str(operator_tdr))
    assert out.returncode == 0, out.stderr
    summary = json.loads(out.stdout)
    assert summary["tdr_type"] == "OPERATOR"
    assert summary["alarm_decision"] == "CLEAR"
    assert info["sop_instance_uid"]
    assert summary["referenced_tdr"] == info["sop_instance_uid"]
    assert summary["study_uid"] == result["scan"]["study_uid"]

    out = station("inspect", str(tmp_path / "bag"), str(operator_tdr), "--json")
    assert out.returncode == 0, out.stderr
    image, report = json.loads(out.stdout)
    assert image["shape"] == [48, 128, 128]
    assert report["tdr_type"] == "OPERATOR"


def test_inspect_names_a_bad_file_and_still_reports_the_rest(tmp_path):
    synth.write_ct_series(synth.make_bag_volume(size=32, slices=8, seed=2), tmp_path / "ok", dicos=True)
    bad = tmp_path / "bad.dcm"
    bad.write_bytes(b"\x00" * 128 + b"DICM" + b"broken")
    out = station("inspect", str(tmp_path / "ok" / "DICOS_CT.dcm"), str(bad), "--json")
    assert out.returncode == 1
    good, broken = json.loads(out.stdout)
    assert good["shape"] == [8, 32, 32]
    assert "error" in broken and "bad.dcm" in out.stderr


def test_operator_decision_is_validated(tmp_path):
    out = station("tdr", "operator", "--machine-tdr", str(tmp_path / "none.dcm"), "--decision", "MAYBE",
                  "--operator", "x", "--out", str(tmp_path / "o.dcm"))
    assert out.returncode == 2
    assert "invalid choice" in out.stderr
