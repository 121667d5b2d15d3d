"""The ``station`` command: wires core, net and ui together. The only place logging is set up."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any

from station import __version__
from station.core.config import ConfigError, Settings, load_settings

LOGGER = logging.getLogger("station")


def _setup_logging(verbosity: int, default: int = logging.WARNING) -> None:
    level = default - 10 * verbosity
    logging.basicConfig(
        level=max(logging.DEBUG, level),
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def _settings(args: argparse.Namespace) -> Settings:
    settings = load_settings(Path(args.config) if getattr(args, "config", None) else None)
    if getattr(args, "store", None):
        settings.store.path = Path(args.store).expanduser()
    if getattr(args, "port", None) is not None:
        settings.receiver.port = args.port
    if getattr(args, "host", None):
        settings.receiver.host = args.host
    if getattr(args, "aet", None):
        settings.receiver.aet = args.aet
    if getattr(args, "mode", None):
        settings.ui.mode = args.mode
    return settings


# -- commands ------------------------------------------------------------------------------------


def cmd_gui(args: argparse.Namespace, *, simulator: bool = False) -> int:
    from station.app.gui import run_gui

    settings = _settings(args)
    return run_gui(settings, receiver=not args.no_receiver, simulator=simulator, operator=args.operator)


def cmd_demo(args: argparse.Namespace) -> int:
    # The demo opens straight onto arriving bags; a real shift signs in (station gui).
    if not args.operator:
        args.operator = "DEMO"
    return cmd_gui(args, simulator=True)


def cmd_serve(args: argparse.Namespace) -> int:
    if args.events_stdout:
        from station.core.priority import RECEIVER_NICE, lower_priority

        # The GUI's receiver yields the CPU to the GUI: on a two-core station eight
        # scanners kept it busy enough to stall the event loop for 100-400 ms. Nothing
        # waits on the GUI, so reception only slows when both compete. First thing, before
        # any import starts a thread (numpy's BLAS pool): Linux nice is per thread, and
        # new threads inherit it.
        lower_priority(RECEIVER_NICE)
    from station.core.events import EventBus, InstanceStored, ReceiverError
    from station.core.store.store import Store
    from station.net.dimse.receiver import Receiver, ReceiverStartError

    settings = _settings(args)
    events_out = None
    stop = threading.Event()
    if args.receiver_json:  # from the GUI's ReceiverProcess: its (validated) settings
        from station.app.receiver_process import receiver_settings_from_json

        settings.receiver = receiver_settings_from_json(args.receiver_json)
    if args.events_stdout:
        from station.app.receiver_process import EventPipeWriter, watch_parent

        events_out = EventPipeWriter(sys.stdout.buffer)
        # stdout is the event pipe now: a stray print (a hook script's) must not corrupt it.
        sys.stdout = sys.stderr
        watch_parent(stop)
    from station.app.host import prepare_services

    # Hooks and routing: read their sections and load the hook scripts before listening,
    # so a broken configuration or script stops us with its message (ConfigError: exit 2).
    services = prepare_services(settings)

    def on_signal(signum: int, _frame: Any) -> None:
        LOGGER.info("signal %d: stopping", signum)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    say = (lambda text: print(text, file=sys.stderr, flush=True)) if events_out else (
        lambda text: print(text, flush=True))
    store = Store(settings.store.path)
    bus = EventBus()

    def log_event(event: object) -> None:
        if isinstance(event, InstanceStored):
            LOGGER.debug("stored %s from %s", event.sop_instance_uid, event.source)
        elif isinstance(event, ReceiverError):
            LOGGER.warning("%s (%s): %s", event.calling_aet, event.peer, event.message)

    bus.subscribe(log_event)
    if events_out is not None:
        bus.subscribe(events_out)
    receiver = Receiver(store, bus, settings.receiver)
    try:
        receiver.start()
    except ReceiverStartError as exc:
        print(f"station serve: {exc}", file=sys.stderr)
        store.close()
        if events_out is not None:
            events_out.close()
        return 2
    from station.core.store.maintenance import StoreMaintenance

    def store_warning(message: str) -> None:  # shown in the GUI's receiver errors too
        bus.publish(ReceiverError(peer="store", calling_aet="-", message=message))

    maintenance = StoreMaintenance(store, settings.store, on_warning=store_warning)
    maintenance.start()
    detection = None
    if settings.detect.enabled:
        from station.core.detection.service import DetectionService

        detection = DetectionService(store, bus, quiet_s=settings.detect.quiet_time_s,
                                     site=settings.site.site())
        detection.start()
    services.start(store, bus, port=receiver.port)
    # Tests and scripts wait for this line; keep its shape.
    say(f"listening on {settings.receiver.host}:{receiver.port} as {receiver.aet} store {store.root}")
    try:
        while not stop.wait(0.5):
            if events_out is not None and events_out.broken.is_set():
                break  # nobody reads our events any more: the GUI is gone
    finally:
        services.stop()
        receiver.stop()
        if detection is not None:
            detection.stop()
        maintenance.stop()
        store.close()
        if events_out is not None:
            events_out.close()
        say(f"stopped after {receiver.instances_received} instances")
    return 0


def cmd_simulate(args: argparse.Namespace) -> int:
    from station.net.dimse.simulator import simulate_main

    settings = _settings(args)
    sim = settings.simulator
    for key in ("interval", "slices", "size", "threats", "dicos_every"):
        value = getattr(args, key)
        if value is not None:
            setattr(sim, "interval_s" if key == "interval" else key, value)
    return simulate_main(args.host, args.port, args.aec, sim)


def cmd_send(args: argparse.Namespace) -> int:
    from station.net.dimse.sender import SendError, send_files

    try:
        result = send_files(args.host, args.port, args.paths, calling_aet=args.aet, called_aet=args.aec)
    except SendError as exc:
        print(f"station send: {exc}", file=sys.stderr)
        return 2
    for path, why in result.failed:
        print(f"FAILED {path}: {why}", file=sys.stderr)
    print(f"sent {len(result.sent)} files, {len(result.failed)} failed, {result.seconds:.2f} s")
    return 0 if result.ok else 1


def cmd_synth(args: argparse.Namespace) -> int:
    from station.core.synth.bags import synth_main

    files = synth_main(args.kind, Path(args.out), dicos=args.dicos, slices=args.slices, size=args.size,
                       threats=args.threats, seed=args.seed)
    print(f"wrote {len(files)} files to {args.out}")
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    """station import: exit 0 unless a DICOM file could not be stored (files that are not
    DICOM at all, like the truth.json of `station synth`, are only reported as ignored)."""
    from station.core.store.store import Store, StoreFullError

    settings = _settings(args)
    with Store(settings.store.path) as store:
        try:
            result = store.import_paths(args.paths)
        except StoreFullError as exc:
            print(f"station import: {exc}", file=sys.stderr)
            return 2
    for path in result.ignored:
        print(f"ignored (not DICOM): {path}", file=sys.stderr)
    for message in result.errors:
        print(f"skipped {message}", file=sys.stderr)
    print(f"imported {len(result.stored)} instances, {len(result.errors)} skipped, "
          f"{len(result.ignored)} ignored (not DICOM)")
    return 0 if not result.errors else 1


def _parse_since(text: str) -> float:
    """--since: an ISO date/time ("2026-11-22", "2026-11-22T06:00") or hours back ("8h")."""
    import time
    from datetime import datetime

    text = text.strip()
    if text.endswith("h") and text[:-1].replace(".", "", 1).isdigit():
        return time.time() - float(text[:-1]) * 3600.0
    try:
        return datetime.fromisoformat(text).astimezone().timestamp()
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"--since: {text!r} is neither an ISO date/time nor '<hours>h'") from exc


def cmd_report(args: argparse.Namespace) -> int:
    """station report: one row per decided scan from the store's audit log (issue 7)."""
    from station.core.triage.audit import AUDIT_NAME, AuditError, AuditLog
    from station.core.triage.report import write_report

    settings = _settings(args)
    audit_path = Path(settings.store.path).expanduser() / AUDIT_NAME
    if not audit_path.exists():
        print(f"station report: no audit log at {audit_path}", file=sys.stderr)
        return 2
    try:
        with AuditLog(audit_path) as audit:
            decisions = audit.decisions(since=args.since)
    except AuditError as exc:
        print(f"station report: {exc}", file=sys.stderr)
        return 1
    out = write_report(decisions, args.out, args.format)
    print(f"{len(decisions)} decided scans -> {out}")
    return 0


def cmd_store_ls(args: argparse.Namespace) -> int:
    from station.core.store.store import Store

    settings = _settings(args)
    if not Path(settings.store.path).exists():
        print(f"station store ls: no store at {settings.store.path}", file=sys.stderr)
        return 2
    with Store(settings.store.path) as store:
        rows = store.series_list()
    if args.json:
        print(json.dumps([
            {
                "patient_id": r.patient_id, "patient_name": r.patient_name, "study_uid": r.study_uid,
                "study_date": r.study_date, "series_uid": r.series_uid, "series_number": r.series_number,
                "modality": r.modality, "sop_class_uid": r.sop_class_uid, "description": r.description,
                "instances": r.instances, "frames": r.frames, "bytes": r.bytes,
                "first_received": r.first_received, "last_received": r.last_received,
            }
            for r in rows
        ], indent=1))
    else:
        for r in rows:
            print(f"{r.patient_id:<16} {r.modality:<6} {r.instances:>5} inst {r.frames:>6} fr "
                  f"{r.bytes / 1e6:9.1f} MB  {r.series_uid}")
    return 0


def cmd_store_rebuild(args: argparse.Namespace) -> int:
    from station.core.store.store import Store

    settings = _settings(args)
    with Store(settings.store.path) as store:
        count = store.rebuild_index()
    print(f"rebuilt index: {count} instances")
    return 0


def cmd_volume(args: argparse.Namespace) -> int:
    import numpy as np

    from station.core.imaging.volume import VolumeError, group_series, load_volume

    try:
        groups = group_series(args.paths)
        if args.series:
            groups = {k: v for k, v in groups.items() if k.split("#")[0] == args.series}
        if len(groups) != 1:
            names = ", ".join(sorted(groups)) or "none"
            print(f"station volume: need exactly one image series, found {len(groups)} ({names}); "
                  "use --series UID", file=sys.stderr)
            return 2
        (paths,) = groups.values()
        volume = load_volume(paths)
        data = volume.array()
    except VolumeError as exc:
        print(f"station volume: {exc}", file=sys.stderr)
        return 2
    if args.npy:
        np.save(args.npy, data)
    info = {
        "series_uid": volume.series_uid,
        "shape": list(data.shape),
        "spacing_mm": [float(v) for v in volume.spacing_mm],
        "origin_mm": [float(v) for v in volume.origin_mm],
        "direction": np.asarray(volume.direction, dtype=float).tolist(),
        "rescale_type": volume.rescale_type,
        "modality": volume.modality,
        "min": float(data.min()) if data.size else None,
        "max": float(data.max()) if data.size else None,
        "npy": str(args.npy) if args.npy else None,
    }
    print(json.dumps(info) if args.json else "\n".join(f"{k}: {v}" for k, v in info.items()))
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    if args.validate:
        return _validate(args)
    from station.core.dicos import inspect_main

    results = inspect_main(args.paths)
    if args.json:
        print(json.dumps(results, indent=1))
    else:
        for r in results:
            print(json.dumps(r))
    for r in results:
        if "error" in r:
            print(f"station inspect: {r.get('path')}: {r['error']}", file=sys.stderr)
    return 1 if any("error" in r for r in results) else 0


def _validate(args: argparse.Namespace) -> int:
    """station inspect --validate: the NEMA DICOS toolkit's verdict on each file; exit 1
    when any file is refused, 2 when the toolkit is not installed."""
    from station.core.dicos.validate import ToolkitMissing, validate_main

    try:
        results = validate_main(args.paths)
    except ToolkitMissing as exc:
        print(f"station inspect: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(results, indent=1))
    for r in results:
        if not args.json:
            verdict = {True: "valid", False: "REFUSED", None: "not validated"}[r["valid"]]
            print(f"{r['path']}: {verdict} ({r.get('sop_class_name') or r.get('sop_class_uid') or '?'})")
            for e in r["errors"]:
                print(f"  error: {e}")
            for w in r["warnings"]:
                print(f"  warning: {w}")
    return 1 if any(r["valid"] is False for r in results) else 0


def cmd_detect(args: argparse.Namespace) -> int:
    from station.core.detection.detectors import DetectError, detect_main

    try:
        result = detect_main(args.paths, tdr_out=args.tdr_out, site=_settings(args).site.site())
    except DetectError as exc:
        print(f"station detect: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(result, indent=1))
    else:
        print(f"{result['alarm_decision']}: {len(result['alerts'])} alert(s)")
        for alert in result["alerts"]:
            print(f"  {alert}")
    return 0


def cmd_tdr_operator(args: argparse.Namespace) -> int:
    from station.core.dicos import DicosError, operator_tdr_main

    try:
        summary = operator_tdr_main(args.machine_tdr, args.decision, args.operator, args.out,
                                    site=_settings(args).site.site())
    except (DicosError, ValueError) as exc:
        print(f"station tdr operator: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(summary, indent=1))
    return 0


def cmd_fetch(args: argparse.Namespace) -> int:
    from station.net.remote.series import fetch_command

    return fetch_command(args)


def cmd_bench(args: argparse.Namespace) -> int:
    # The benchmarks are developer tools above the product (they start real peers from
    # station.testing): loaded by name, so the product's import graph never reaches them.
    import importlib

    try:
        bench = importlib.import_module("station.bench")
    except ImportError as exc:  # the frozen app ships without them
        print(f"station bench: the benchmarks are not part of this installation ({exc})", file=sys.stderr)
        return 2
    return bench.run_bench(args.what, json_output=args.json, args=args)


# -- parser -----------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", metavar="FILE", default=argparse.SUPPRESS,
                        help="TOML settings file (default: the user config dir's station.toml)")
    common.add_argument("-v", "--verbose", action="count", default=argparse.SUPPRESS, help="more logging")

    parser = argparse.ArgumentParser(prog="station", description="Inspection Station analyst workstation",
                                     parents=[common])
    parser.add_argument("--version", action="version", version=f"station {__version__}")
    parser.add_argument("--self-test", action="store_true",
                        help="check this installation (pixel decoders, receiver on loopback, the GUI offscreen) "
                             "and exit 0, or 1 with the reason")
    sub = parser.add_subparsers(dest="command")

    def gui_options(p: argparse.ArgumentParser) -> None:
        p.add_argument("--store", metavar="DIR")
        p.add_argument("--port", type=int)
        p.add_argument("--host")
        p.add_argument("--aet")
        p.add_argument("--mode", choices=["airport", "clinic"])
        p.add_argument("--no-receiver", action="store_true", help="do not listen for scanners")
        p.add_argument("--operator", metavar="ID")

    p = sub.add_parser("gui", parents=[common], help="the station (default)")
    gui_options(p)
    p.set_defaults(func=cmd_gui)
    p = sub.add_parser("demo", parents=[common], help="the station plus a built-in simulated scanner")
    gui_options(p)
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("serve", parents=[common], help="headless receiver")
    p.add_argument("--store", metavar="DIR", required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--host")
    p.add_argument("--aet")
    # Internal, used by the GUI's ReceiverProcess: events on stdout, settings as JSON.
    p.add_argument("--events-stdout", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--receiver-json", help=argparse.SUPPRESS)
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("simulate", parents=[common], help="play a CT scanner sending synthetic bags")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--aec", default="STATION", help="the receiver's AE title")
    p.add_argument("--interval", type=float, help="seconds between bags")
    p.add_argument("--slices", type=int)
    p.add_argument("--size", type=int)
    p.add_argument("--threats", type=int)
    p.add_argument("--dicos-every", type=int, dest="dicos_every")
    p.set_defaults(func=cmd_simulate)

    p = sub.add_parser("send", parents=[common], help="C-STORE files to a DICOM peer (one association)")
    p.add_argument("host")
    p.add_argument("port", type=int)
    p.add_argument("paths", nargs="+", metavar="PATH")
    p.add_argument("--aet", default="STATION", help="our (calling) AE title")
    p.add_argument("--aec", default="ANY-SCP", help="the peer's (called) AE title")
    p.set_defaults(func=cmd_send)

    p = sub.add_parser("synth", parents=[common], help="write synthetic bag scans")
    p.add_argument("kind", choices=["ct", "dx"])
    p.add_argument("--out", required=True, metavar="DIR")
    p.add_argument("--dicos", action="store_true", help="DICOS (one multi-frame CT instance)")
    p.add_argument("--slices", type=int, default=96)
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--threats", type=int, default=0)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_synth)

    p = sub.add_parser("import", parents=[common], help="files or folders into the store, as if received")
    p.add_argument("--store", metavar="DIR")
    p.add_argument("paths", nargs="+", metavar="PATH")
    p.set_defaults(func=cmd_import)

    p = sub.add_parser("store", parents=[common], help="inspect or repair the local store")
    store_sub = p.add_subparsers(dest="store_command", required=True)
    q = store_sub.add_parser("ls", parents=[common], help="one line (or JSON object) per series")
    q.add_argument("--store", metavar="DIR")
    q.add_argument("--json", action="store_true")
    q.set_defaults(func=cmd_store_ls)
    q = store_sub.add_parser("rebuild", parents=[common], help="rebuild the index from the files")
    q.add_argument("--store", metavar="DIR")
    q.set_defaults(func=cmd_store_rebuild)

    p = sub.add_parser("report", parents=[common], help="shift report from the audit log: one row per decided scan")
    p.add_argument("--store", metavar="DIR")
    p.add_argument("--format", choices=["csv", "xlsx"], default="csv")
    p.add_argument("--out", required=True, metavar="FILE")
    p.add_argument("--since", type=_parse_since, metavar="WHEN", help="ISO date/time, or hours back ('8h')")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("volume", parents=[common], help="assemble a series into a volume (rescaled, sorted)")
    p.add_argument("paths", nargs="+", metavar="PATH")
    p.add_argument("--npy", metavar="OUT.npy", help="write the volume (z, y, x), modality rescale applied")
    p.add_argument("--series", metavar="UID", help="pick one series when the paths hold several")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_volume)

    p = sub.add_parser("inspect", parents=[common], help="what a DICOM/DICOS file holds (images, TDRs)")
    p.add_argument("paths", nargs="+", metavar="FILE")
    p.add_argument("--json", action="store_true")
    p.add_argument("--validate", action="store_true",
                   help="check DICOS objects with the NEMA DICOS toolkit's reader (pydicos)")
    p.set_defaults(func=cmd_inspect)

    p = sub.add_parser("detect", parents=[common], help="run the built-in threat detector on a CT scan")
    p.add_argument("paths", nargs="+", metavar="PATH")
    p.add_argument("--tdr-out", metavar="FILE", help="write the machine TDR here")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_detect)

    p = sub.add_parser("tdr", parents=[common], help="threat detection reports")
    tdr_sub = p.add_subparsers(dest="tdr_command", required=True)
    q = tdr_sub.add_parser("operator", parents=[common], help="write the operator TDR for a decision")
    q.add_argument("--machine-tdr", required=True, metavar="FILE")
    q.add_argument("--decision", required=True, type=str.upper, choices=["CLEAR", "SUSPECT", "THREAT"])
    q.add_argument("--operator", required=True, metavar="ID")
    q.add_argument("--out", required=True, metavar="FILE")
    q.set_defaults(func=cmd_tdr_operator)

    p = sub.add_parser("fetch", parents=[common], help="pull a remote series over DICOMweb (frames on demand, cached)")
    p.add_argument("--dicomweb", metavar="URL", help="DICOMweb base URL (or --remote NAME from [[remotes]])")
    p.add_argument("--remote", metavar="NAME", help="a configured remote (auth, CA bundle, timeout)")
    p.add_argument("--study", required=True, metavar="UID")
    p.add_argument("--series", required=True, metavar="UID")
    p.add_argument("--npy", metavar="OUT.npy", help="write the volume (z, y, x), rescale applied, ascending")
    p.add_argument("--out", metavar="DIR", help="write the stored instances (WADO-RS) to DIR")
    p.add_argument("--auth", choices=["none", "basic", "bearer"], default="none")
    p.add_argument("--user", default="", help="user name for --auth basic")
    p.add_argument("--password-env", default="", metavar="VAR", help="environment variable holding the password")
    p.add_argument("--token-env", default="", metavar="VAR", help="environment variable holding the bearer token")
    p.add_argument("--ca-bundle", metavar="FILE", help="CA bundle for HTTPS")
    p.add_argument("--timeout", type=float, default=30.0)
    p.add_argument("--workers", type=int, default=2, help="concurrent requests")
    p.add_argument("--cache-dir", metavar="DIR", help="frame cache (default: the user cache dir)")
    p.add_argument("--no-cache", action="store_true", help="memory cache only")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_fetch)

    p = sub.add_parser("bench", parents=[common], help="benchmarks (JSON with the peer and the ratio)")
    p.add_argument("what", choices=["receive", "detect", "reliability", "view", "frames", "browser"])
    p.add_argument("--json", action="store_true")
    p.add_argument("--slices", type=int, default=300)
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--seconds", type=float, default=120.0, help="reliability: length of the load part")
    p.add_argument("--scans", type=int, default=10_000, help="browser: scans in the index")
    p.set_defaults(func=cmd_bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    import multiprocessing

    multiprocessing.freeze_support()  # spawned detector workers in a frozen build
    parser = build_parser()
    args = parser.parse_args(argv)
    verbose = getattr(args, "verbose", 0) or 0
    if args.self_test:
        from station.app.selftest import run_self_test

        _setup_logging(verbose)
        return run_self_test(config=getattr(args, "config", None))
    command = args.command or "gui"
    _setup_logging(verbose, logging.INFO if command in ("serve", "gui", "demo", "simulate") else logging.WARNING)
    if args.command is None:
        args = parser.parse_args(["gui", *(argv if argv is not None else sys.argv[1:])])
    try:
        return int(args.func(args) or 0)
    except ConfigError as exc:
        print(f"station: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
