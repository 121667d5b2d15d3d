"""Hooks: scan completion, the runner's isolation and counters, the process pool, custom
detectors, the examples, and that a raising or sleeping hook never delays a scanner's
acknowledgements (real dcmtk storescu against ``station serve``)."""

from __future__ import annotations

import csv
import logging
import multiprocessing
import os
import re
import signal
import subprocess
import sys
import textwrap
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from station.core.detection import detectors as detect
from station.core.config import ConfigError, load_settings
from station.core.dicos import Algorithm, Pto, ScanRef, write_machine_tdr, write_operator_tdr
from station.core.events import EventBus, InstanceStored
from station.core.hooks.runner import (
    AlertRaised,
    DecisionRecorded,
    HookLoadError,
    HookRunner,
    HooksSettings,
    ScanCompleted,
    ScanTracker,
)
from station.core.dicom.sopclasses import DICOS_TDR
from station.core.store.store import Store
from tests.dicom_factory import make_ct_files

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples" / "hooks"


def _event(series: str = "SE1", sop: str = "I1", *, frames: int = 1, sop_class: str = "1.2.840.10008.5.1.4.1.1.2",
           modality: str = "CT", path: str = "") -> InstanceStored:
    return InstanceStored("P1", "ST1", series, sop, sop_class, modality, path, frames, 1, 100, "SCANNER@1.2.3.4:5")


def _script(folder: Path, name: str, body: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.py"
    path.write_text(textwrap.dedent(body))
    return path


def _wait(predicate, timeout: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


# --------------------------------------------------------------------------- scan completion


def test_tracker_completes_after_quiet_time_at_once_for_multiframe_and_reports():
    now = [100.0]
    tracker = ScanTracker(2.0, clock=lambda: now[0])
    tracker.add(_event("A", "a1"))
    now[0] += 1.5
    tracker.add(_event("A", "a2"))  # the quiet time starts again
    tracker.add(_event("M", "m1", frames=300))  # all frames are in the one instance
    tracker.add(_event("T", "t1", sop_class=DICOS_TDR, modality="TDR"))
    due = {s.key: s for s in tracker.pop_due()}
    assert set(due) == {"M", "t1"}
    assert due["M"].reason == "frames" and due["M"].frames == 300
    assert due["t1"].is_report and due["t1"].reason == "report"
    now[0] += 1.9
    assert tracker.pop_due() == []
    now[0] += 0.2
    (a,) = tracker.pop_due()
    assert (a.key, a.instances, a.reason) == ("A", 2, "quiet")
    assert tracker.open_scans == 0
    tracker.add(_event("A", "a3"))  # a late instance opens the scan again
    assert tracker.open_scans == 1


def test_hooks_settings_resolve_scripts_and_reject_mistakes(tmp_path):
    _script(tmp_path / "hooks", "one", "def register(api):\n    pass\n")
    config = tmp_path / "station.toml"
    config.write_text('[hooks]\nscripts = ["hooks/one.py"]\nquiet_time_s = 0.5\n[hooks.options.one]\nx = 1\n')
    settings = load_settings(config)
    hs = settings.hooks
    assert settings.source == config
    assert hs.scripts == [(tmp_path / "hooks" / "one.py").resolve()]
    assert hs.quiet_time_s == 0.5 and hs.options == {"one": {"x": 1}}
    for text, message in [
        ('[hooks]\nscripts = ["missing.py"]\n', "not found"),
        ('[hooks]\nquiet = 1\n', "unknown key 'quiet'"),
        ('[hooks]\nqueue_size = 0\n', "at least 1"),
        ('[hooks]\nscripts = ["hooks/one.py"]\n[hooks.options.other]\nx = 1\n', "no such script"),
    ]:
        config.write_text(text)
        with pytest.raises(ConfigError, match=message):
            load_settings(config)


def test_a_broken_script_stops_the_start_with_its_name(tmp_path):
    cases = {
        "no_register": "x = 1\n",
        "bad_syntax": "def register(api)\n",
        "raises": "def register(api):\n    raise RuntimeError('boom')\n",
        "bad_hook": "def register(api):\n    api.on('instance_was_stored', print)\n",
    }
    for name, body in cases.items():
        runner = HookRunner(HooksSettings(scripts=[_script(tmp_path, name, body)]))
        with pytest.raises(HookLoadError, match=name):
            runner.load()
        runner.stop()
        assert f"station_hook_{name}" not in sys.modules


# --------------------------------------------------------------------------- runner


def test_raising_and_sleeping_hooks_are_isolated_counted_and_logged(tmp_path, caplog):
    release = threading.Event()
    sys.modules["_hook_test_gate"] = type(sys)("_hook_test_gate")
    sys.modules["_hook_test_gate"].release = release  # type: ignore[attr-defined]
    scripts = [
        _script(tmp_path, "raiser", """
            def register(api):
                @api.instance_did_store
                def fail(event):
                    raise ValueError("bad hook " + event.sop_instance_uid)
        """),
        _script(tmp_path, "sleeper", """
            import _hook_test_gate
            def register(api):
                @api.instance_did_store
                def sleep(event):
                    _hook_test_gate.release.wait(30)
        """),
        _script(tmp_path, "counter", """
            seen = []
            def register(api):
                api.on("instance_did_store", lambda event: seen.append(event.sop_instance_uid))
        """),
    ]
    runner = HookRunner(HooksSettings(scripts=scripts, queue_size=5, slow_call_s=0.2, stop_timeout_s=5))
    runner.load()
    runner.start()
    try:
        caplog.set_level(logging.WARNING, logger="station.core.hooks.runner")
        counter = sys.modules["station_hook_counter"]
        submit_s = 0.0
        for i in range(20):
            started = time.perf_counter()
            runner.submit(_event(sop=f"I{i}"))
            submit_s = max(submit_s, time.perf_counter() - started)
            # The others keep up while the sleeper sleeps: it holds nobody back.
            _wait(lambda: len(counter.seen) == i + 1 and runner.counters()["scripts"]["raiser"]["calls"] == i + 1,
                  what="the other hooks")
        assert counter.seen == [f"I{i}" for i in range(20)]
        # The sleeper's queue (5 waiting) is full: the rest was dropped, not waited for.
        c = runner.counters()["scripts"]
        assert c["raiser"]["failures"] == 20
        assert c["sleeper"]["calls"] == 0 and c["sleeper"]["dropped"] == 20 - 1 - 5
        assert c["sleeper"]["busy_s"] > 0
        assert submit_s < 0.05
        errors = [r for r in caplog.records if r.levelno == logging.ERROR]
        assert errors and all("'raiser'" in r.getMessage() for r in errors)
        assert len(errors) == 5  # tracebacks for the first few only: no log flood
        assert "bad hook I0" in caplog.text
        assert any("'sleeper' is behind" in r.getMessage() for r in caplog.records)
    finally:
        release.set()
        runner.stop()
        del sys.modules["_hook_test_gate"]
    total = runner.counters()["total"]
    assert total["failures"] == 20 and total["slow"] >= 1 and total["dropped"] == 14
    assert "station_hook_counter" not in sys.modules


def test_stop_delivers_station_will_stop_and_does_not_hang_on_a_stuck_hook(tmp_path, caplog):
    release = threading.Event()
    sys.modules["_hook_test_gate2"] = type(sys)("_hook_test_gate2")
    sys.modules["_hook_test_gate2"].release = release  # type: ignore[attr-defined]
    out = tmp_path / "stopped.txt"
    scripts = [
        _script(tmp_path, "polite", f"""
            def register(api):
                @api.station_will_stop
                def bye(event):
                    with open({str(out)!r}, "w") as fp:
                        fp.write(event.reason)
        """),
        _script(tmp_path, "stuck", """
            import _hook_test_gate2
            def register(api):
                @api.station_will_stop
                def hang(event):
                    _hook_test_gate2.release.wait(30)
        """),
    ]
    runner = HookRunner(HooksSettings(scripts=scripts, stop_timeout_s=0.5))
    runner.load()
    runner.start()
    started = time.monotonic()
    runner.stop("test")
    assert time.monotonic() - started < 3
    assert out.read_text() == "test"
    assert "'stuck' did not finish" in caplog.text
    release.set()  # let the abandoned worker end before the thread-leak check
    del sys.modules["_hook_test_gate2"]


def _square_and_pid(x: int) -> tuple[int, int]:
    return x * x, os.getpid()


def test_run_in_process_uses_a_spawned_worker_that_can_import_the_script(tmp_path):
    script = _script(tmp_path, "heavy", """
        import os
        API = None
        def crunch(n):
            return sum(i * i for i in range(n)), os.getpid()
        def register(api):
            global API
            API = api
    """)
    runner = HookRunner(HooksSettings(scripts=[script]))
    runner.load()
    runner.start()
    try:
        module = sys.modules["station_hook_heavy"]
        # A function defined in the script itself: the worker imports the script by path.
        value, pid = module.API.run_in_process(module.crunch, 1000).result(60)
        assert value == sum(i * i for i in range(1000)) and pid != os.getpid()
    finally:
        runner.stop()


def test_a_detector_from_a_script_runs_in_a_spawned_detection_pool(tmp_path):
    runner = HookRunner(HooksSettings(scripts=[EXAMPLES / "toy_detector.py"],
                                      options={"toy_detector": {"threshold_mhu": 2000.0}}))
    runner.load()
    try:
        det = detect.get_detector("toy-dense-spot")
        assert det.parameters() == ["threshold_mhu=2000.0", "min_voxels=8"]
        volume = np.zeros((10, 12, 14), dtype=np.float32)
        volume[2:4, 3:6, 4:8] = 3000.0
        with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
            run = detect.run_detectors_in_pool(pool, volume, spacing_mm=(1.0, 1.0, 1.0), detector_list=[det]).result(60)
        (result,) = run.results
        assert not result.error
        (found,) = result.detections
        assert found.base_xyz == (4, 3, 2) and found.extent_xyz == (4, 3, 2) and found.flag == "ANOMALY"
    finally:
        runner.stop()
    assert "toy-dense-spot" not in [d.name for d in detect.detectors()]


# --------------------------------------------------------------------------- through the services


def _tdr_pair(folder: Path, ct: list[Path], *, alarm: bool, decision: str) -> tuple[Path, Path]:
    """A machine TDR for the CT files (ALARM with one PTO, or CLEAR) and an operator TDR."""
    import pydicom

    first = pydicom.dcmread(ct[0], stop_before_pixels=True)
    scan = ScanRef(study_uid=str(first.StudyInstanceUID), series_uid=str(first.SeriesInstanceUID),
                   sop_class_uid=str(first.SOPClassUID),
                   slice_uids=tuple(str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in ct),
                   patient_id=str(first.PatientID))
    ptos = [Pto(id=1, base=(1.0, 1.0, 0.0), extent=(3.0, 3.0, 2.0), flag="THREAT", category="EXPLOSIVE")] if alarm else []
    folder.mkdir(parents=True, exist_ok=True)
    machine = folder / "machine.dcm"
    write_machine_tdr(ptos, machine, scan=scan, algorithm=Algorithm("TestATR", "1.0", ()), processing_ms=5.0)
    operator = folder / "operator.dcm"
    write_operator_tdr(machine, decision, "op7", operator)
    return machine, operator


def test_examples_through_the_services_alerts_decisions_and_gui_stored_reports(tmp_path):
    """decisions_csv writes a line per decision, whether the operator TDR was received or
    stored by another process (the GUI ingests decisions into the shared store itself)."""
    from station.app.host import start_services

    csv_path = tmp_path / "out" / "decisions.csv"
    seen = _script(tmp_path / "hooks", "seen", """
        events = []
        def register(api):
            for hook in ("scan_did_complete", "alert_did_raise", "decision_did_record", "station_did_start"):
                api.on(hook, events.append)
    """)
    config = tmp_path / "station.toml"
    config.write_text(textwrap.dedent(f"""
        [hooks]
        scripts = [{str(EXAMPLES / 'decisions_csv.py')!r}, "hooks/seen.py"]
        quiet_time_s = 0.3
        [hooks.options.decisions_csv]
        path = {str(csv_path)!r}
    """))
    assert seen.exists()
    settings = load_settings(config)
    settings.store.path = tmp_path / "store"
    bus = EventBus()
    store = Store(settings.store.path, durable=False)
    services = start_services(settings, store, bus)
    try:
        ct = make_ct_files(tmp_path / "ct", 4, patient_id="BAG-HOOK")
        machine, operator = _tdr_pair(tmp_path / "tdr", ct, alarm=True, decision="THREAT")
        for path in [*ct, machine]:
            bus.publish(store.import_file(path))
        # The analyst's decision, stored the way the GUI does: no event on this bus.
        store.ingest([operator.read_bytes()], source="operator op7")
        _wait(lambda: csv_path.exists() and len(csv_path.read_text().splitlines()) == 2, what="the CSV line")
        events = sys.modules["station_hook_seen"].events
        _wait(lambda: len(events) >= 4, what="hook events")
    finally:
        services.stop()
        store.close()
    kinds = [type(e).__name__ for e in events]
    assert kinds[0] == "StationStarted"
    assert sorted(kinds[1:]) == ["AlertRaised", "DecisionRecorded", "ScanCompleted"]
    scan = next(e for e in events if isinstance(e, ScanCompleted))
    assert scan.instances == 4 and scan.patient_id == "BAG-HOOK" and scan.reason == "quiet"
    assert len(scan.paths) == 4 and all(Path(p).is_file() for p in scan.paths)
    alert = next(e for e in events if isinstance(e, AlertRaised))
    assert alert.categories == ("EXPLOSIVE",) and alert.ptos == 1 and alert.study_uid == scan.study_uid
    decision = next(e for e in events if isinstance(e, DecisionRecorded))
    assert (decision.decision, decision.operator, decision.source) == ("THREAT", "op7", "operator op7")
    with csv_path.open() as fp:
        (row,) = list(csv.DictReader(fp))
    assert (row["ooi_id"], row["decision"], row["operator"], row["alarm_decision"]) == (
        "BAG-HOOK", "THREAT", "op7", "ALARM")


# --------------------------------------------------------------------------- acknowledgements


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


def _stop(proc: subprocess.Popen) -> str:
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    return err


def _storescu(env: dict, port: int, files: list[Path]) -> tuple[subprocess.CompletedProcess, float]:
    started = time.perf_counter()
    out = subprocess.run(["storescu", "-R", "-aec", "STATION", "127.0.0.1", str(port), *map(str, files)],
                         capture_output=True, text=True, env=env, timeout=60)
    return out, time.perf_counter() - started


@pytest.mark.dcmtk
def test_a_raising_and_a_sleeping_hook_do_not_delay_acknowledgements(tmp_path, free_port, dcmtk_env):
    marks = tmp_path / "marks"
    marks.mkdir()
    _script(tmp_path / "hooks", "raiser", """
        def register(api):
            @api.instance_did_store
            def fail(event):
                raise RuntimeError("this hook always fails")
    """)
    # Sleeps in its first call until the test releases it (at most 60 s).
    _script(tmp_path / "hooks", "sleeper", f"""
        import os, time
        MARKS = {str(marks)!r}
        def register(api):
            @api.instance_did_store
            def sleep(event):
                if os.path.exists(os.path.join(MARKS, "started")):
                    return
                open(os.path.join(MARKS, "started"), "w").close()
                deadline = time.monotonic() + 60
                while not os.path.exists(os.path.join(MARKS, "release")) and time.monotonic() < deadline:
                    time.sleep(0.05)
                open(os.path.join(MARKS, "finished"), "w").close()
    """)
    with_hooks = tmp_path / "hooks.toml"
    with_hooks.write_text('[hooks]\nscripts = ["hooks/raiser.py", "hooks/sleeper.py"]\nslow_call_s = 0.5\n'
                          'stop_timeout_s = 2.0\n[detect]\nenabled = false\n')
    without = tmp_path / "plain.toml"
    without.write_text("[detect]\nenabled = false\n")
    files = make_ct_files(tmp_path / "ct", 30, size=64, patient_id="BAG-ACK")

    proc = _serve(tmp_path / "store-plain", free_port, without)
    try:
        plain, plain_s = _storescu(dcmtk_env, free_port, files)
    finally:
        _stop(proc)
    assert plain.returncode == 0, plain.stderr

    proc = _serve(tmp_path / "store-hooks", free_port, with_hooks)
    try:
        hooked, hooked_s = _storescu(dcmtk_env, free_port, files)
        # Every C-STORE was acknowledged while the sleeping hook still sleeps.
        assert hooked.returncode == 0, hooked.stderr
        assert (marks / "started").exists() and not (marks / "finished").exists()
    finally:
        (marks / "release").touch()
        err = _stop(proc)
    print(f"storescu 30 slices: {plain_s:.2f} s without hooks, {hooked_s:.2f} s with a raising and a sleeping hook")
    assert "hook script 'raiser': instance_did_store fail raised" in err
    assert "RuntimeError: this hook always fails" in err
    assert re.search(r"hooks: 60 calls, 30 failures, \d+ slow, 0 dropped", err), err[-2000:]
    assert (marks / "finished").exists()


def test_station_serve_refuses_to_start_with_a_broken_hook_script(tmp_path, free_port):
    _script(tmp_path / "hooks", "broken", "def setup(api):\n    pass\n")
    config = tmp_path / "station.toml"
    config.write_text('[hooks]\nscripts = ["hooks/broken.py"]\n')
    out = subprocess.run(
        [sys.executable, "-m", "station", "--config", str(config), "serve", "--store", str(tmp_path / "store"),
         "--port", str(free_port), "--host", "127.0.0.1"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert "broken.py defines no register(api) function" in out.stderr
    assert "listening" not in out.stdout
