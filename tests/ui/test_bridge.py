"""EventBridge: events from receiver threads arrive on the GUI thread, coalesced."""

from __future__ import annotations

import threading
import time

from PySide6.QtCore import QThread

from station.core.events import (
    AssociationClosed,
    AssociationOpened,
    InstanceStored,
    ReceiverError,
    ReceiverState,
)


def stored(i: int, series: str = "1.2.3") -> InstanceStored:
    return InstanceStored(
        patient_id="BAG", study_uid="1.2", series_uid=series, sop_instance_uid=f"1.2.3.{i}",
        sop_class_uid="1.2.840.10008.5.1.4.1.1.2", modality="CT", path=f"/tmp/{i}.dcm",
        number_of_frames=1, instance_number=i, nbytes=1000, source="SCANNER@127.0.0.1:4000",
    )


class Recorder:
    """Counts emissions and records the thread each one arrived on."""

    def __init__(self, bridge):
        self.instances: list[list[InstanceStored]] = []
        self.series: list[set[str]] = []
        self.other: list[object] = []
        self.threads: set[object] = set()
        bridge.instancesStored.connect(self._on_instances)
        bridge.seriesChanged.connect(self._on_series)
        bridge.receiverEvent.connect(self._on_other)

    def _on_instances(self, batch):
        self.threads.add(QThread.currentThread())
        self.instances.append(batch)

    def _on_series(self, uids):
        self.threads.add(QThread.currentThread())
        self.series.append(uids)

    def _on_other(self, event):
        self.threads.add(QThread.currentThread())
        self.other.append(event)

    @property
    def emissions(self) -> int:
        return len(self.instances) + len(self.series) + len(self.other)

    @property
    def n_instances(self) -> int:
        return sum(len(b) for b in self.instances)


def publish_from_thread(bus, events, pace_s: float = 0.0) -> threading.Thread:
    def run():
        for e in events:
            bus.publish(e)
            if pace_s:
                time.sleep(pace_s)

    t = threading.Thread(target=run, name="fake-association")
    t.start()
    return t


def test_burst_of_300_costs_a_handful_of_emissions(qtbot, bus, bridge):
    rec = Recorder(bridge)
    events = [stored(i, series=f"1.2.3.{i % 2}") for i in range(300)]
    t = publish_from_thread(bus, events)
    t.join()
    qtbot.waitUntil(lambda: rec.n_instances == 300, timeout=3000)
    qtbot.wait(120)  # nothing more may trickle in
    assert rec.n_instances == 300
    # All in order, nothing duplicated.
    assert [e.sop_instance_uid for b in rec.instances for e in b] == [e.sop_instance_uid for e in events]
    assert set().union(*rec.series) == {"1.2.3.0", "1.2.3.1"}
    assert len(rec.instances) <= 3, len(rec.instances)
    assert rec.emissions <= 6
    assert rec.threads == {QThread.currentThread()}  # delivered on the GUI thread


def test_burst_spread_over_a_second_is_bounded_by_the_interval(qtbot, bus, bridge):
    rec = Recorder(bridge)
    start = time.monotonic()
    t = publish_from_thread(bus, [stored(i) for i in range(300)], pace_s=1 / 300)
    qtbot.waitUntil(lambda: not t.is_alive() and rec.n_instances == 300, timeout=5000)
    t.join()
    elapsed = time.monotonic() - start
    # At most one flush per 50 ms interval (plus the immediate first one).
    assert len(rec.instances) <= elapsed / 0.05 + 2, (len(rec.instances), elapsed)
    assert len(rec.instances) >= 2  # it did deliver while the burst was still running


def test_first_event_after_quiet_spell_is_delivered_promptly(qtbot, bus, bridge):
    rec = Recorder(bridge)
    t0 = time.monotonic()
    t = publish_from_thread(bus, [stored(1)])
    qtbot.waitUntil(lambda: rec.n_instances == 1, timeout=1000)
    t.join()
    assert time.monotonic() - t0 < 0.5


def test_receiver_events_pass_through_in_order(qtbot, bus, bridge):
    rec = Recorder(bridge)
    events = [
        ReceiverState(True, "STATION", "127.0.0.1", 11112),
        AssociationOpened("127.0.0.1:5000", "", 1),
        stored(1),
        ReceiverError("127.0.0.1:5000", "SCANNER", "disk full", 0xA700),
        AssociationClosed("127.0.0.1:5000", "SCANNER", 0, "released"),
    ]
    publish_from_thread(bus, events).join()
    qtbot.waitUntil(lambda: len(rec.other) == 4 and rec.n_instances == 1, timeout=2000)
    assert [type(e).__name__ for e in rec.other] == [
        "ReceiverState", "AssociationOpened", "ReceiverError", "AssociationClosed",
    ]


def test_close_unsubscribes_and_drops_pending(qtbot, bus, bridge):
    rec = Recorder(bridge)
    bus.publish(stored(1))  # buffered, wake-up posted but not yet processed
    bridge.close()
    bus.publish(stored(2))
    qtbot.wait(100)
    assert rec.emissions == 0
    assert bus._subscribers == ()
    bridge.close()  # twice is fine
