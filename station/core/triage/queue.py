"""The triage queue: which scan an analyst decides next. No Qt.

A *pending* scan is an image series (not a TDR, SR...) with no recorded decision. The
queue lists them in arrival order (``alarms_first``: scans with an unresolved alarm
first, each group in arrival order). ``next()`` moves to the pending scan after the
current one (wrapping), ``previous()`` walks back through the scans shown before (decided
ones included, so an analyst can look again at what they just decided), ``decided()``
drops the current scan and moves on at once. Also here: what "accept the ATR" means.
Called from the GUI thread only.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass

LOGGER = logging.getLogger(__name__)

#: Modalities that carry no pixels: never triaged on their own.
NON_IMAGE_MODALITIES = frozenset({"TDR", "SR", "PR", "KO", "DOC", "REG", "RTSTRUCT", "RTPLAN", "AU", "ECG"})


def atr_decision(atr_verdict: str | None) -> str | None:
    """The operator decision that "accepts the ATR" (Enter).

    ATR ALARM -> SUSPECT: the analyst confirms the alarm and the bag goes to a level-3
    manual search; THREAT (escalation) is only ever the analyst's own call (key 3).
    ATR CLEAR -> CLEAR. No ATR verdict yet (no machine TDR) -> None: nothing to accept.
    """
    if atr_verdict == "ALARM":
        return "SUSPECT"
    if atr_verdict == "CLEAR":
        return "CLEAR"
    return None


@dataclass(frozen=True)
class ScanInfo:
    """What the queue needs to know of one scan."""

    series_uid: str
    arrived_at: float
    alarm: bool = False
    decided: bool = False
    modality: str = "CT"


class TriageQueue:
    """Pending scans in order, the current one, and the history of scans shown."""

    def __init__(self, *, alarms_first: bool = False) -> None:
        self.alarms_first = alarms_first
        self._scans: dict[str, ScanInfo] = {}
        self.current: str | None = None
        self._history: list[str] = []

    def update(self, scans: Iterable[ScanInfo]) -> None:
        """Replace what the queue knows (all scans in the store, decided or not)."""
        self._scans = {s.series_uid: s for s in scans if s.modality.upper() not in NON_IMAGE_MODALITIES}

    def set_alarms_first(self, on: bool) -> None:
        self.alarms_first = on

    def pending(self) -> list[str]:
        items = [s for s in self._scans.values() if not s.decided]
        if self.alarms_first:
            items.sort(key=lambda s: (not s.alarm, s.arrived_at, s.series_uid))
        else:
            items.sort(key=lambda s: (s.arrived_at, s.series_uid))
        return [s.series_uid for s in items]

    def show(self, series_uid: str) -> None:
        """The scan now on screen (chosen by the queue or by hand)."""
        if self.current == series_uid:
            return
        if self.current is not None:
            self._history.append(self.current)
        self.current = series_uid

    def next(self) -> str | None:
        """Move to the pending scan after the current one (or the first); None if none."""
        order = self.pending()
        if not order:
            return None
        if self.current in order:
            uid = order[(order.index(self.current) + 1) % len(order)]
            if uid == self.current:
                return uid
        else:
            uid = order[0]
        self.show(uid)
        return uid

    def previous(self) -> str | None:
        """Go back to the scan shown before the current one; None at the start."""
        while self._history:
            uid = self._history.pop()
            if uid in self._scans and uid != self.current:
                self.current = uid
                return uid
        return None

    def decided(self, series_uid: str) -> str | None:
        """Mark a scan decided and move to the next pending one (None: queue empty)."""
        info = self._scans.get(series_uid)
        if info is not None:
            self._scans[series_uid] = ScanInfo(info.series_uid, info.arrived_at, info.alarm, True, info.modality)
        order = self.pending()
        if not order:
            return None
        # the pending scan that came after the decided one in the order, else the first
        later = [u for u in order if self._after(u, series_uid)]
        uid = later[0] if later else order[0]
        self.show(uid)
        return uid

    def reopen(self, series_uid: str) -> None:
        """An undo: the scan is pending again."""
        info = self._scans.get(series_uid)
        if info is not None:
            self._scans[series_uid] = ScanInfo(info.series_uid, info.arrived_at, info.alarm, False, info.modality)

    def _after(self, uid: str, ref: str) -> bool:
        a, r = self._scans.get(uid), self._scans.get(ref)
        if a is None or r is None:
            return False
        if self.alarms_first:
            return (not a.alarm, a.arrived_at, a.series_uid) > (not r.alarm, r.arrived_at, r.series_uid)
        return (a.arrived_at, a.series_uid) > (r.arrived_at, r.series_uid)
