"""Lowering a worker process's CPU priority, in a module that imports nothing heavy.

A spawned pool worker imports its initializer's module before running it: keeping this
module light means the worker is already niced when it imports numpy, scipy and pydicom,
the most CPU-hungry part of its start.
"""

from __future__ import annotations

import os

BACKGROUND_NICE = 10

#: How much lower than the GUI its receiver child (``station serve --events-stdout``)
#: runs; the child's detection workers go ``BACKGROUND_NICE`` lower still. With eight
#: scanners sending, this took the GUI's p99 event-loop stall from ~45 ms to ~28 ms and
#: its longest from 150-400 ms to 110-130 ms (``station bench reliability``).
RECEIVER_NICE = 10


def lower_priority(increment: int = BACKGROUND_NICE) -> None:
    """Pool initializer: make this process background work (no-op where not permitted)."""
    try:
        os.nice(increment)
    except (OSError, AttributeError):  # not permitted, or no nice() on this platform
        pass
