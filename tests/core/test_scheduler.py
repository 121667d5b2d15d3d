"""Scheduler: periodic and delayed tasks on one thread, isolation of failing tasks, clean stop."""

from __future__ import annotations

import threading
import time

from station.core.scheduler import Scheduler


def test_periodic_and_delayed_tasks_run_and_a_failing_task_keeps_its_schedule(caplog):
    s = Scheduler("test-scheduler")
    ticks: list[float] = []
    once = threading.Event()
    threads: set[str] = set()

    def tick() -> None:
        threads.add(threading.current_thread().name)
        ticks.append(time.monotonic())

    def boom() -> None:
        raise RuntimeError("broken chore")

    s.every(0.05, tick, name="tick")
    bad = s.every(0.05, boom, name="boom")
    s.later(0.1, once.set)
    s.start()
    try:
        assert once.wait(5)
        deadline = time.monotonic() + 5
        while (len(ticks) < 5 or bad.runs < 3) and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        s.stop()
    assert len(ticks) >= 5 and bad.runs >= 3 and bad.failures == bad.runs
    assert threads == {"test-scheduler"}
    assert "scheduled task boom failed" in caplog.text
    assert not s.is_running
    n = len(ticks)
    time.sleep(0.15)
    assert len(ticks) == n  # nothing runs after stop


def test_cancel_and_stop_while_a_task_runs():
    s = Scheduler()
    runs = []
    task = s.every(0.02, lambda: runs.append(1))
    started, release = threading.Event(), threading.Event()

    def slow() -> None:
        started.set()
        release.wait(5)

    s.later(0.0, slow)
    s.start()
    assert started.wait(5)
    task.cancel()
    threading.Timer(0.1, release.set).start()
    s.stop(timeout=5)  # waits for the running task, then the thread is gone
    assert not s.is_running
    assert len(runs) <= 1
