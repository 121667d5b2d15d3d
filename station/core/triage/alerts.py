"""Alerts: what the alert panel lists, derived from the TDRs in the store.

Every machine TDR in the store (from a scanner's ATR, or written by the station's own
detector) contributes one alert per potential threat object it flags; a machine TDR that
says ALARM without any PTO contributes one scan-level alert. An alert is resolved once an
operator TDR referencing its machine TDR is in the store: decisions are TDRs too, so the
state survives restarts and travels with the scan. A *provisional* machine TDR (the
station's detector raising alerts while a scan still arrives, ``PROVISIONAL`` in its
algorithm parameters) is replaced by the next machine TDR of the same algorithm on that
scan: its unresolved alerts go, and the same boxes in the next TDR are not new. No Qt: the alert panel (ui) shows an
``AlertBook`` and asks it to record decisions.
"""

from __future__ import annotations

import logging
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from station.core.dicom.sopclasses import DICOS_TDR
from station.core.dicos import (
    DicosError,
    Pto,
    ScanRef,
    Tdr,
    read_tdr,
    write_operator_tdr,
)
from station.core.dicos.site import Site
from station.core.store.store import Store

LOGGER = logging.getLogger(__name__)

PROVISIONAL = "provisional"
"""First word of the algorithm parameter that marks a machine TDR as provisional."""

SEVERITY_RANK = {"HIGH_THREAT": 0, "THREAT": 1, "ANOMALY": 2, "UNKNOWN": 3, "NO_THREAT": 4}


@dataclass(frozen=True)
class Alert:
    """One alarm object (or a scan-level alarm) as the alert panel shows it."""

    key: str  # "<machine TDR UID>#<PTO id>" (or "#scan")
    tdr_uid: str
    study_uid: str
    series_uid: str | None  # the image series it marks, once known in the store
    patient_id: str
    pto_id: int | None
    severity: str  # HIGH_THREAT, THREAT, ANOMALY, UNKNOWN
    category: str
    probability: float | None
    source: str  # e.g. "ATR Vendor X 2.1" or "station detector density 1.0"
    from_station: bool
    raised_at: float  # seconds since the epoch
    base: tuple[float, float, float] | None  # voxel (x, y, z) of the marked image
    extent: tuple[float, float, float] | None

    @property
    def center(self) -> tuple[float, float, float] | None:
        if self.base is None or self.extent is None:
            return None
        return tuple(b + e / 2.0 for b, e in zip(self.base, self.extent))  # type: ignore[return-value]


def _source(tdr: Tdr) -> tuple[str, bool]:
    """Who raised it: ("<vendor> <version>", False) for a scanner's ATR, or
    ("station detector: <name> <version>", True) for the station's own detectors."""
    algorithm = tdr.algorithm
    if algorithm is None:
        return "scanner ATR", False
    text = " ".join(v for v in (algorithm.vendor, algorithm.version) if v)
    if algorithm.vendor.lower().startswith("station"):
        return f"station detector: {text}", True
    return text, False


def alerts_of(tdr: Tdr, series_uid: str | None, received_at: float,
              view_series: Callable[[Pto], str | None] | None = None) -> list[Alert]:
    """The alerts one machine TDR raises (none for a CLEAR machine TDR or an operator TDR):
    one per representation of each alarm PTO (a PTO seen in a CT and in a DX view raises
    one alert on each scan). ``view_series`` names the series a representation marks
    (from its referenced instances); ``series_uid`` stands in when it cannot."""
    if tdr.tdr_type != "MACHINE" or not tdr.is_alarm:
        return []
    source, from_station = _source(tdr)
    if is_provisional(tdr):
        source += " (scan still arriving)"
    raised = tdr.alarm_decision_time.timestamp() if tdr.alarm_decision_time else received_at
    alerts = []
    for pto in tdr.ptos:
        if pto.severity == "NO_THREAT":
            continue
        for n, view in enumerate(pto.representations):
            series = (view_series(view) if view_series is not None else None) or series_uid
            alerts.append(Alert(
                key=f"{tdr.sop_instance_uid}#{pto.id}" + (f".{n + 1}" if n else ""),
                tdr_uid=tdr.sop_instance_uid, study_uid=tdr.scan_study_uid,
                series_uid=series, patient_id=tdr.ooi_id, pto_id=pto.id, severity=pto.severity,
                category=pto.category, probability=pto.probability, source=source,
                from_station=from_station, raised_at=raised,
                base=tuple(view.base), extent=tuple(view.extent),  # type: ignore[arg-type]
            ))
    if not alerts:
        alerts.append(Alert(
            key=f"{tdr.sop_instance_uid}#scan", tdr_uid=tdr.sop_instance_uid, study_uid=tdr.scan_study_uid,
            series_uid=series_uid, patient_id=tdr.ooi_id, pto_id=None, severity="UNKNOWN", category="OTHER",
            probability=None, source=source, from_station=from_station, raised_at=raised, base=None, extent=None,
        ))
    return alerts


def is_provisional(tdr: Tdr) -> bool:
    """A machine TDR raised while its scan was still arriving (a later one replaces it)."""
    return tdr.algorithm is not None and any(p.lower().startswith(PROVISIONAL) for p in tdr.algorithm.parameters)


class AlertBook:
    """Every alert in the store and which are resolved. GUI thread (or any single thread).

    ``add_tdr`` is called for each TDR instance as it is stored (from ``InstanceStored``);
    ``load`` reads them all at start. ``record_decision`` writes an operator TDR into the
    store and resolves the machine TDRs of that scan.
    """

    def __init__(self, store: Store, *, site: Site | None = None) -> None:
        self.store = store
        self.site = site  # who signs the operator TDRs ([site] settings)
        self._lock = threading.Lock()
        self._alerts: dict[str, Alert] = {}
        self._machine: dict[str, Tdr] = {}  # machine TDR UID -> TDR
        self._operator: dict[str, Tdr] = {}  # operator TDR UID -> TDR
        self._resolved: dict[str, str] = {}  # machine TDR UID -> operator decision
        self._provisional: dict[tuple[str, str], str] = {}  # (scan, algorithm) -> provisional TDR UID
        self.errors: list[str] = []

    # -- reading -------------------------------------------------------------------------------

    def load(self) -> int:
        """Read every TDR in the store; return how many alerts there are."""
        for row in self.store.instances_of_class(DICOS_TDR):
            self.add_tdr(row.path, received_at=row.received_at)
        return len(self._alerts)

    def add_tdr(self, path: str | Path, *, received_at: float | None = None) -> list[Alert]:
        """Take in one stored TDR; return the new alerts it raised (resolutions apply too)."""
        try:
            tdr = read_tdr(path)
        except DicosError as exc:
            # A malformed TDR is named and skipped: it must not affect anything else.
            LOGGER.error("%s", exc)
            self.errors.append(str(exc))
            return []
        with self._lock:
            if tdr.tdr_type == "OPERATOR":
                self._operator[tdr.sop_instance_uid] = tdr
                for ref in tdr.referenced_tdrs:
                    self._resolved[ref.sop_instance_uid] = tdr.operator_decision or "CLEAR"
                return []
            if tdr.tdr_type != "MACHINE":
                return []
            self._machine[tdr.sop_instance_uid] = tdr
        series = self._series_for(tdr)
        new = alerts_of(tdr, series, received_at or time.time(), self._view_series)
        scan = (series or tdr.scan_study_uid, str(tdr.algorithm or ""))
        with self._lock:
            replaced = self._provisional.pop(scan, None)
            seen: set[tuple[object, ...]] = set()
            if replaced is not None and replaced not in self._resolved:
                for key in [k for k, a in self._alerts.items() if a.tdr_uid == replaced]:
                    old = self._alerts.pop(key)
                    seen.add((old.severity, old.base, old.extent))
            if is_provisional(tdr):
                self._provisional[scan] = tdr.sop_instance_uid
            fresh = [a for a in new if a.key not in self._alerts and (a.severity, a.base, a.extent) not in seen]
            for alert in new:
                self._alerts[alert.key] = alert
        return fresh

    def _view_series(self, view: Pto) -> str | None:
        """The stored series holding the instances one PTO representation references."""
        for ref in view.referenced_instances:
            series = self.store.series_of_instance(ref.sop_instance_uid)
            if series:
                return series
        return None

    def _series_for(self, tdr: Tdr) -> str | None:
        """The image series a TDR marks: from its PTOs' referenced instances, else its study."""
        for pto in tdr.ptos:
            ref = pto.referenced_instance
            if ref is not None:
                series = self.store.series_of_instance(ref.sop_instance_uid)
                if series:
                    return series
        for ref in tdr.referenced_instances:
            series = self.store.series_of_instance(ref.sop_instance_uid)
            if series:
                return series
        images = [r for r in self.store.series_list()
                  if r.study_uid == tdr.scan_study_uid and r.modality not in ("TDR", "SR", "PR")]
        return images[0].series_uid if images else None

    def reports_by_scan(self) -> dict[str, set[str]]:
        """Image series UID -> the stored series of every TDR about it: its machine TDRs and
        the operator TDRs on them (or on the scan itself). What eviction keeps or removes
        together with the scan."""
        with self._lock:
            machines, operators = list(self._machine.values()), list(self._operator.values())
        scan_of: dict[str, str] = {}  # TDR instance UID -> image series
        for tdr in machines:
            series = self._series_for(tdr)
            if series:
                scan_of[tdr.sop_instance_uid] = series
        for tdr in operators:
            series = next((scan_of[r.sop_instance_uid] for r in tdr.referenced_tdrs
                           if r.sop_instance_uid in scan_of), None) or self._series_for(tdr)
            if series:
                scan_of[tdr.sop_instance_uid] = series
        out: dict[str, set[str]] = {}
        for tdr_uid, series in scan_of.items():
            own = self.store.series_of_instance(tdr_uid)
            if own and own != series:
                out.setdefault(series, set()).add(own)
        return out

    def refresh_series(self) -> None:
        """Attach alerts whose scan arrived after their TDR."""
        with self._lock:
            unattached = [a for a in self._alerts.values() if a.series_uid is None]
        series_now: dict[str, str | None] = {}  # alert key -> its series, once per TDR
        for tdr_uid in dict.fromkeys(a.tdr_uid for a in unattached):
            tdr = self._machine.get(tdr_uid)
            if tdr is not None:
                series_now.update((a.key, a.series_uid) for a in alerts_of(
                    tdr, self._series_for(tdr), 0.0, self._view_series))
        for alert in unattached:
            series = series_now.get(alert.key)
            if series:
                with self._lock:
                    self._alerts[alert.key] = _replace_series(alert, series)

    def alerts(self) -> list[Alert]:
        """All alerts: unresolved first, then by severity, newest first."""
        with self._lock:
            items = list(self._alerts.values())
        return sorted(items, key=lambda a: (self.is_resolved(a), SEVERITY_RANK.get(a.severity, 9), -a.raised_at))

    def for_series(self, series_uid: str) -> list[Alert]:
        return [a for a in self.alerts() if a.series_uid == series_uid]

    def is_resolved(self, alert: Alert) -> bool:
        return alert.tdr_uid in self._resolved

    def decision_for(self, alert: Alert) -> str | None:
        return self._resolved.get(alert.tdr_uid)

    def unresolved(self) -> list[Alert]:
        return [a for a in self.alerts() if not self.is_resolved(a)]

    def atr_verdict(self, series_uid: str) -> str | None:
        """What the machine TDRs of a scan say: ALARM if any alarms, CLEAR if all clear,
        None when no machine TDR of it is known (triage: what Enter accepts)."""
        with self._lock:
            if any(a.series_uid == series_uid for a in self._alerts.values()):
                return "ALARM"
            machines = list(self._machine.values())
        for tdr in machines:
            if tdr.alarm_decision == "CLEAR" and self._series_for(tdr) == series_uid:
                return "CLEAR"
        return None

    def has_machine_tdr(self, series_uid: str) -> bool:
        with self._lock:
            return any(a.series_uid == series_uid for a in self._alerts.values())

    def reopen(self, series_uid: str) -> None:
        """An undone decision: the scan's alarms are unresolved again (the operator TDRs
        already written stay in the store; the next decision writes new ones)."""
        with self._lock:
            for alert in self._alerts.values():
                if alert.series_uid == series_uid:
                    self._resolved.pop(alert.tdr_uid, None)

    # -- deciding -------------------------------------------------------------------------------

    def record_decision(self, series_uid: str, decision: str, operator: str, *,
                        pto_marks: dict[int, str] | None = None, note: str = "",
                        drawn: Sequence[Pto] = (), scan: ScanRef | None = None) -> list[str]:
        """Write an operator TDR for every unresolved machine TDR of the scan; store them.

        ``drawn``: boxes the analyst marked (threats the machine missed); they go into the
        first operator TDR, or, when the scan has no machine TDR, into an operator TDR of
        their own about ``scan`` (required then). Returns the stored operator TDRs' SOP
        instance UIDs. Raises ValueError for a bad decision or operator, StoreError if the
        store refuses.
        """
        with self._lock:
            targets = sorted({a.tdr_uid for a in self._alerts.values()
                              if a.series_uid == series_uid and a.tdr_uid not in self._resolved})
        if drawn and not targets:
            if scan is None:
                raise ValueError("a marked box on a scan without machine TDR needs the scan")
            return [self._write_operator(None, decision, operator, pto_marks, note, drawn, scan)]
        written: list[str] = []
        for n, tdr_uid in enumerate(targets):
            machine = self._machine[tdr_uid]
            written.append(self._write_operator(machine, decision, operator, pto_marks, note,
                                                drawn if n == 0 else (), scan))
            with self._lock:
                self._resolved[tdr_uid] = decision.upper()
        return written

    def _write_operator(self, machine: Tdr | None, decision: str, operator: str,
                        pto_marks: dict[int, str] | None, note: str, drawn: Sequence[Pto],
                        scan: ScanRef | None) -> str:
        with tempfile.TemporaryDirectory(prefix="station-decision-") as tmp:
            out = Path(tmp) / "operator_tdr.dcm"
            tdr = write_operator_tdr(machine, decision, operator, out, pto_marks=pto_marks,
                                     note=note, site=self.site, drawn=drawn, scan=scan)
            self.store.ingest([out.read_bytes()], source=f"operator {operator}")
        return tdr.sop_instance_uid


def _replace_series(alert: Alert, series_uid: str) -> Alert:
    from dataclasses import replace

    return replace(alert, series_uid=series_uid)
