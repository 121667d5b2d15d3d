"""Periodic and delayed tasks on one thread of their own, with a clean shutdown.

The station has a few small chores that must happen "every so often": deciding which
scans are complete (quiet time), waking the routing senders when a retry is due,
publishing hook counters for the GUI, and later pruning caches. Each would otherwise get
a thread with its own sleep loop and its own shutdown path; one scheduler keeps that to a
single thread that ``stop()`` ends.

Tasks run on the scheduler thread, one at a time, so they must be short (milliseconds):
anything that blocks (network sends, detection) belongs to a worker the task wakes up.
A task that raises is logged with its name and keeps its schedule; it never ends the
thread. Pure core: no Qt, no networking.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

LOGGER = logging.getLogger(__name__)

__all__ = ["Scheduler", "Task"]


@dataclass(order=True)
class Task:
    """One scheduled task; ``cancel()`` stops further runs. Returned by ``every``/``later``."""

    due: float
    seq: int
    name: str = field(compare=False)
    fn: Callable[[], object] = field(compare=False, repr=False)
    interval: float | None = field(compare=False, default=None)
    cancelled: bool = field(compare=False, default=False)
    runs: int = field(compare=False, default=0)
    failures: int = field(compare=False, default=0)

    def cancel(self) -> None:
        self.cancelled = True


class Scheduler:
    """Runs ``every(interval, fn)`` and ``later(delay, fn)`` tasks on its own thread.

    ``every``/``later``/``wake`` may be called from any thread (before or after ``start``);
    the task functions run on the scheduler thread. ``stop()`` lets the running task
    finish, runs nothing more and joins the thread. ``clock`` is injectable for tests.
    """

    def __init__(self, name: str = "scheduler", *, clock: Callable[[], float] = time.monotonic) -> None:
        self.name = name
        self._clock = clock
        self._heap: list[Task] = []
        self._seq = itertools.count()
        self._cond = threading.Condition()
        self._stopping = False
        self._thread: threading.Thread | None = None

    # -- any thread ----------------------------------------------------------------------

    def every(self, interval_s: float, fn: Callable[[], object], *, name: str = "", first_in: float | None = None) -> Task:
        """Run ``fn`` every ``interval_s`` seconds (first after ``first_in``, default one
        interval). A run that overruns delays the next one; runs are never stacked."""
        if interval_s <= 0:
            raise ValueError("interval_s must be positive")
        delay = interval_s if first_in is None else max(0.0, first_in)
        return self._add(Task(self._clock() + delay, next(self._seq), name or _name_of(fn), fn, interval_s))

    def later(self, delay_s: float, fn: Callable[[], object], *, name: str = "") -> Task:
        """Run ``fn`` once, ``delay_s`` seconds from now."""
        return self._add(Task(self._clock() + max(0.0, delay_s), next(self._seq), name or _name_of(fn), fn))

    def wake(self) -> None:
        """Re-check the schedule now (after a clock jump in tests, or a task made due)."""
        with self._cond:
            self._cond.notify_all()

    @property
    def is_running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        with self._cond:
            if self._thread is not None:
                return
            self._stopping = False
            self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Run nothing more; wait up to ``timeout`` for a running task, join the thread."""
        with self._cond:
            self._stopping = True
            self._heap.clear()
            self._cond.notify_all()
            thread, self._thread = self._thread, None
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
            if thread.is_alive():
                LOGGER.error("scheduler %s: a task is still running after %.0f s; leaving it", self.name, timeout)

    # -- internals -----------------------------------------------------------------------

    def _add(self, task: Task) -> Task:
        with self._cond:
            if not self._stopping:
                heapq.heappush(self._heap, task)
                self._cond.notify_all()
        return task

    def _run(self) -> None:
        """Scheduler thread: sleep until the earliest task is due, run it, reschedule it."""
        while True:
            with self._cond:
                while True:
                    if self._stopping:
                        return
                    while self._heap and self._heap[0].cancelled:
                        heapq.heappop(self._heap)
                    now = self._clock()
                    if self._heap and self._heap[0].due <= now:
                        task = heapq.heappop(self._heap)
                        break
                    # Capped wait: an injected test clock may jump without a wake().
                    wait = min(self._heap[0].due - now, 1.0) if self._heap else 1.0
                    self._cond.wait(max(wait, 0.001))
            started = self._clock()
            try:
                task.fn()
            except Exception:  # one broken chore must not end the others
                task.failures += 1
                LOGGER.exception("scheduled task %s failed", task.name)
            task.runs += 1
            if task.interval is not None and not task.cancelled:
                task.due = max(started + task.interval, self._clock())
                task.seq = next(self._seq)
                self._add(task)


def _name_of(fn: Callable[[], object]) -> str:
    return getattr(fn, "__qualname__", None) or repr(fn)
