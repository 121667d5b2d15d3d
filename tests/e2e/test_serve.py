"""``station serve`` as a separate process, fed by the real dcmtk storescu."""

from __future__ import annotations

import json
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pydicom
import pytest

from station.core.synth import bags as synth
from station.core.imaging.volume import load_volume


def start_serve(store: Path, port: int, *, preexec=None) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-m", "station", "serve", "--store", str(store), "--port", str(port),
         "--host", "127.0.0.1", "--aet", "STATION"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=preexec,
    )
    line = proc.stdout.readline()
    assert line.startswith("listening on 127.0.0.1:"), line + proc.stderr.read()
    return proc


def stop_serve(proc: subprocess.Popen) -> tuple[int, str, str]:
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=30)
    return proc.returncode, out, err


def store_ls(store: Path) -> list[dict]:
    out = subprocess.run([sys.executable, "-m", "station", "store", "ls", "--store", str(store), "--json"],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def storescu(env, port: int, folder: Path) -> subprocess.CompletedProcess:
    return subprocess.run(["storescu", "-v", "-R", "+sd", "-aec", "STATION", "127.0.0.1", str(port), str(folder)],
                          capture_output=True, text=True, env=env, timeout=120)


@pytest.mark.parametrize("dicos", [False, True], ids=["classic-ct", "dicos-ct"])
def test_bag_sent_by_storescu_is_stored_whole_and_in_order(tmp_path, free_port, dcmtk_env, dicos):
    bag = synth.make_bag_volume(size=64, slices=24, threats=1, seed=3)
    synth.write_ct_series(bag, tmp_path / "bag", dicos=dicos)
    (tmp_path / "bag" / "truth.json").unlink()  # storescu +sd would try to send it
    proc = start_serve(tmp_path / "store", free_port)
    try:
        out = storescu(dcmtk_env, free_port, tmp_path / "bag")
        assert out.returncode == 0, out.stderr
        # The station's detector examines the scan once it is complete and stores a TDR.
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and not any(
                r["modality"] == "TDR" for r in store_ls(tmp_path / "store")):
            time.sleep(0.25)
    finally:
        code, stdout, stderr = stop_serve(proc)
    assert code == 0
    assert "stopped after" in stdout
    listing = store_ls(tmp_path / "store")
    (series,) = [r for r in listing if r["modality"] == "CT"]
    reports = [r for r in listing if r["modality"] == "TDR"]
    assert len(reports) == 1, f"the detector stored {len(reports)} TDRs; receiver log:\n{stderr[-3000:]}"
    (report,) = reports
    assert report["study_uid"] == series["study_uid"]
    (tdr_file,) = [p for p in (tmp_path / "store" / "objects").rglob("*.dcm")
                   if pydicom.dcmread(p, stop_before_pixels=True).Modality == "TDR"]
    from station.core.dicos import read_tdr

    tdr = read_tdr(tdr_file)
    assert tdr.tdr_type == "MACHINE" and tdr.alarm_decision == "ALARM"
    (pto,) = tdr.ptos
    (threat,) = bag.threats
    assert [round(v) for v in pto.base] == list(threat.base_xyz)
    assert series["instances"] == (1 if dicos else 24)
    assert series["modality"] == "CT"
    assert series["sop_class_uid"] == ("1.2.840.10008.5.1.4.1.1.501.1" if dicos else "1.2.840.10008.5.1.4.1.1.2")
    for key in ("study_uid", "series_uid", "bytes"):
        assert series[key]
    stored = sorted((tmp_path / "store" / "objects").rglob("*.dcm"))
    volume = load_volume(stored)
    assert volume.shape == bag.voxels.shape
    np.testing.assert_array_equal(volume.array(), bag.voxels.astype(np.float32))


def test_full_disk_gets_out_of_resources_status_and_nothing_is_lost(tmp_path, free_port, dcmtk_env):
    """A kernel file-size limit on the receiver stands in for a full disk or quota."""
    bag = synth.make_bag_volume(size=512, slices=8, seed=4)  # 512 KB slices
    synth.write_ct_series(bag, tmp_path / "bag")
    (tmp_path / "bag" / "truth.json").unlink(missing_ok=True)

    def limit_file_size():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (256 * 1024, 256 * 1024))  # the index fits, a slice does not

    proc = start_serve(tmp_path / "store", free_port, preexec=limit_file_size)
    try:
        out = storescu(dcmtk_env, free_port, tmp_path / "bag")
    finally:
        code, _, err = stop_serve(proc)
    assert code == 0
    assert out.returncode != 0
    # dcmtk names status 0xA700 "Refused: OutOfResources".
    assert "refused: outofresources" in out.stderr.lower(), out.stderr
    assert "success" not in out.stderr.lower()
    assert "is full" in err
    assert store_ls(tmp_path / "store") == []
    assert not list((tmp_path / "store" / "tmp").iterdir())


def test_serve_refuses_a_busy_port_clearly(tmp_path, free_port):
    first = start_serve(tmp_path / "a", free_port)
    try:
        second = subprocess.run(
            [sys.executable, "-m", "station", "serve", "--store", str(tmp_path / "b"), "--port", str(free_port),
             "--host", "127.0.0.1"], capture_output=True, text=True, timeout=60)
    finally:
        stop_serve(first)
    assert second.returncode == 2
    assert f"cannot listen on 127.0.0.1:{free_port}" in second.stderr


def test_send_import_and_ls_commands(tmp_path, free_port):
    files = synth.write_ct_series(synth.make_bag_volume(size=32, slices=8, seed=5), tmp_path / "bag")
    dcm = [f for f in files if f.suffix == ".dcm"]
    proc = start_serve(tmp_path / "store", free_port)
    try:
        sent = subprocess.run([sys.executable, "-m", "station", "send", "127.0.0.1", str(free_port), *map(str, dcm),
                               "--aec", "STATION"], capture_output=True, text=True, timeout=120)
    finally:
        stop_serve(proc)
    assert sent.returncode == 0, sent.stderr
    assert "sent 8 files, 0 failed" in sent.stdout
    assert store_ls(tmp_path / "store")[0]["instances"] == 8

    # A DICOM file (preamble and "DICM") that cannot be stored is an error and named.
    (tmp_path / "junk.dcm").write_bytes(b"\0" * 128 + b"DICM" + b"junk")
    imported = subprocess.run([sys.executable, "-m", "station", "import", "--store", str(tmp_path / "other"),
                               str(tmp_path / "bag"), str(tmp_path / "junk.dcm")],
                              capture_output=True, text=True, timeout=120)
    assert imported.returncode == 1  # one bad file: reported, the rest imported
    assert "junk.dcm" in imported.stderr
    assert "imported 8 instances" in imported.stdout
    ds = pydicom.dcmread(dcm[0])
    (row,) = store_ls(tmp_path / "other")
    assert row["series_uid"] == ds.SeriesInstanceUID
    assert row["patient_id"] == ds.PatientID


def test_importing_a_synth_folder_ignores_what_is_not_dicom(tmp_path):
    out = tmp_path / "synth"
    made = subprocess.run([sys.executable, "-m", "station", "synth", "ct", "--out", str(out),
                           "--slices", "8", "--size", "32", "--seed", "3"], capture_output=True, text=True, timeout=120)
    assert made.returncode == 0, made.stderr
    assert (out / "truth.json").is_file()
    (out / "README").write_text("Synthetic bag, seed 3.\n")  # as a site would leave one
    imported = subprocess.run([sys.executable, "-m", "station", "import", "--store", str(tmp_path / "store"), str(out)],
                              capture_output=True, text=True, timeout=120)
    assert imported.returncode == 0, imported.stderr
    assert f"ignored (not DICOM): {out / 'truth.json'}" in imported.stderr
    assert f"ignored (not DICOM): {out / 'README'}" in imported.stderr
    assert "skipped" not in imported.stderr
    assert "imported 8 instances, 0 skipped, 2 ignored (not DICOM)" in imported.stdout
    (row,) = store_ls(tmp_path / "store")
    assert row["instances"] == 8
    # A DICOM file there that cannot be stored still makes the import fail, naming it.
    first = sorted(out.glob("*.dcm"))[0]
    (out / "cut.dcm").write_bytes(first.read_bytes()[:300])
    again = subprocess.run([sys.executable, "-m", "station", "import", "--store", str(tmp_path / "store"), str(out)],
                           capture_output=True, text=True, timeout=120)
    assert again.returncode == 1
    assert f"skipped {out / 'cut.dcm'}" in again.stderr
    assert "1 skipped, 2 ignored (not DICOM)" in again.stdout


def test_send_to_nobody_fails_with_a_clear_message(tmp_path, free_port):
    files = synth.write_ct_series(synth.make_bag_volume(size=32, slices=8, seed=6), tmp_path / "bag")
    out = subprocess.run([sys.executable, "-m", "station", "send", "127.0.0.1", str(free_port),
                          str(files[0])], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert f"127.0.0.1:{free_port}" in out.stderr


def test_version_and_config_errors(tmp_path):
    out = subprocess.run([sys.executable, "-m", "station", "--version"], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.startswith("station ")
    bad = tmp_path / "bad.toml"
    bad.write_text("[receiver]\nprot = 104\n")
    out = subprocess.run([sys.executable, "-m", "station", "--config", str(bad), "store", "ls",
                          "--store", str(tmp_path)], capture_output=True, text=True)
    assert out.returncode == 2
    assert "unknown key 'prot' in [receiver]" in out.stderr
    out = subprocess.run([sys.executable, "-m", "station", "store", "ls", "--config", str(tmp_path / "none.toml"),
                          "--store", str(tmp_path)], capture_output=True, text=True)
    assert out.returncode == 2 and "not found" in out.stderr


def test_synth_command_writes_dicos_and_truth(tmp_path):
    out = subprocess.run([sys.executable, "-m", "station", "synth", "ct", "--out", str(tmp_path / "s"), "--dicos",
                          "--slices", "8", "--size", "32", "--threats", "1", "--seed", "2"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    dcm = list((tmp_path / "s").glob("*.dcm"))
    assert len(dcm) == 1
    ds = pydicom.dcmread(dcm[0], stop_before_pixels=True)
    assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.501.1"
    assert int(ds.NumberOfFrames) == 8
    truth = json.loads((tmp_path / "s" / "truth.json").read_text())
    assert "1" in json.dumps(truth)  # the planted threat is recorded


def test_a_threat_is_alerted_while_the_scan_arrives_through_storescu(tmp_path, free_port, dcmtk_env):
    """The receiver's own path: a provisional machine TDR is in the store before the rest
    of the scan is sent; once it is complete the final TDR holds what ``station detect``
    finds on the whole scan, in the same TDR series."""
    from station.core.dicos import read_tdr
    from station.core.triage.alerts import is_provisional

    bag = synth.make_bag_volume(size=64, slices=128, threats=2, seed=51)  # threats at z 23-34 and 75-90
    files = sorted(synth.write_ct_series(bag, tmp_path / "bag"))
    first, rest = tmp_path / "first", tmp_path / "rest"
    first.mkdir()
    rest.mkdir()
    for i, f in enumerate(files):
        f.rename((first if i < 64 else rest) / f.name)

    def tdr_files() -> list[Path]:
        return sorted((p for p in (tmp_path / "store" / "objects").rglob("*.dcm")
                       if pydicom.dcmread(p, stop_before_pixels=True).Modality == "TDR"),
                      key=lambda p: read_tdr(p).alarm_decision_time)

    def send(folder: Path) -> int:  # slice by slice from the bottom, as a scanner sends (+sd follows readdir)
        return subprocess.run(["storescu", "-R", "-aec", "STATION", "127.0.0.1", str(free_port),
                               *map(str, sorted(folder.iterdir()))], env=dcmtk_env, timeout=120).returncode

    proc = start_serve(tmp_path / "store", free_port)
    try:
        assert send(first) == 0
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and not tdr_files():
            time.sleep(0.25)
        early = tdr_files()
        assert send(rest) == 0
        while time.monotonic() < deadline and all(is_provisional(read_tdr(p)) for p in tdr_files()):
            time.sleep(0.25)
    finally:
        code, _, stderr = stop_serve(proc)
    assert code == 0
    assert len(early) == 1, f"no TDR while the scan arrived; receiver log:\n{stderr[-3000:]}"
    provisional = read_tdr(early[0])
    assert is_provisional(provisional) and len(provisional.ptos) == 1
    reports = [read_tdr(p) for p in tdr_files()]
    assert reports[0].sop_instance_uid == provisional.sop_instance_uid
    # Provisional ones (a step may see the second threat before the last slice), then one final.
    assert [is_provisional(t) for t in reports] == [True] * (len(reports) - 1) + [False], stderr[-3000:]
    final = reports[-1]
    assert {t.series_uid for t in reports} == {provisional.series_uid}
    whole = subprocess.run([sys.executable, "-m", "station", "detect", str(first), str(rest), "--json"],
                           capture_output=True, text=True, check=True)
    alerts = json.loads(whole.stdout)["alerts"]
    assert [(list(p.base), list(p.extent)) for p in final.ptos] == [
        ([float(v) for v in a["base"]], [float(v) for v in a["extent"]]) for a in alerts]
    assert len(alerts) == 2
