"""Benchmarks: ``station bench WHAT --json``. Each prints one JSON object on its last line
with the figure, the peer it was measured against in the same run, and the ratio."""

from __future__ import annotations

import argparse
import json
import sys


def run_bench(what: str, *, json_output: bool, args: argparse.Namespace) -> int:
    if what == "receive":
        from station.bench.receive import bench_receive

        result = bench_receive(slices=args.slices, size=args.size, repeat=args.repeat)
    elif what == "detect":
        from station.bench.detect import bench_detect

        result = bench_detect()
    elif what == "reliability":
        from station.bench.reliability import bench_reliability

        result = bench_reliability(seconds=args.seconds)
    elif what == "view":
        from station.bench.view import bench_view

        result = bench_view(slices=args.slices, size=args.size, rounds=args.repeat)
    elif what == "frames":
        from station.bench.frames import bench_frames

        result = bench_frames(slices=args.slices, size=args.size, repeat=args.repeat)
    elif what == "browser":
        from station.bench.browser import bench_browser

        result = bench_browser(scans=getattr(args, "scans", 10_000), repeat=args.repeat)
    else:  # argparse restricts the choices; this guards direct callers
        raise ValueError(f"unknown benchmark {what!r}")
    if json_output:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            print(f"{key:>28}: {value}")
    return 0 if result.get("complete", True) else 1


def main() -> int:  # pragma: no cover - convenience for python -m station.bench
    from station.app.cli import main as cli_main

    return cli_main(["bench", *sys.argv[1:]])
