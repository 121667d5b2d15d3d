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
#: scanners sending (``station bench reliability``), the GUI thread's stalls were mostly
#: time spent runnable but waiting for a CPU; this took its p99 stall from 42-72 ms to
#: 26-28 ms and its longest from 150-400 ms to 110-130 ms.
RECEIVER_NICE = 10


def lower_priority(increment: int = BACKGROUND_NICE) -> None:
    """Make this process background work: a pool initializer, or the first thing a child
    does (on Linux only the calling thread and threads it starts later are affected).
    A no-op where not permitted."""
    try:
        os.nice(increment)
    except (OSError, AttributeError):  # not permitted, or no nice() on this platform
        pass
