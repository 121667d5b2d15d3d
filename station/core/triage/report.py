"""Shift reports from the audit log: ``station report`` (CSV or XLSX) and shift statistics.

One row per decided scan in decision order (its effective decision: undone ones are
left out). Statistics: scans per hour, decision time (median and all values), alarm rate
(share of decided scans the ATR alarmed on), agreement with the ATR (ALARM vs SUSPECT or
THREAT, CLEAR vs CLEAR, over scans that had an ATR verdict). No Qt. Any thread.
"""

from __future__ import annotations

import csv
import logging
import statistics
from datetime import datetime
from pathlib import Path

from station.core.triage.audit import Event

LOGGER = logging.getLogger(__name__)

COLUMNS = ("scan", "bag", "decision", "operator", "decided_at", "shown_at", "seconds_to_decision", "atr",
           "agrees_with_atr", "marks", "note")


def _iso(t: float | None) -> str:
    return datetime.fromtimestamp(t).astimezone().isoformat(timespec="seconds") if t is not None else ""


def agrees(e: Event) -> bool | None:
    """Did the analyst agree with the ATR? None when the ATR gave no verdict."""
    if e.atr == "ALARM":
        return e.decision in ("SUSPECT", "THREAT")
    if e.atr == "CLEAR":
        return e.decision == "CLEAR"
    return None


def rows(decisions: list[Event]) -> list[dict[str, object]]:
    out = []
    for e in decisions:
        agree = agrees(e)
        out.append({
            "scan": e.series_uid, "bag": e.patient_id, "decision": e.decision, "operator": e.operator,
            "decided_at": _iso(e.at), "shown_at": _iso(e.shown_at),
            "seconds_to_decision": round(e.seconds, 3) if e.seconds is not None else "",
            "atr": e.atr, "agrees_with_atr": "" if agree is None else ("yes" if agree else "no"),
            "marks": ";".join(f"{k}={v}" for k, v in sorted(e.marks.items())), "note": e.note,
        })
    return out


def shift_stats(decisions: list[Event]) -> dict[str, object]:
    """Scans per hour, decision times, alarm rate, ATR agreement, counts per decision."""
    n = len(decisions)
    times = [e.seconds for e in decisions if e.seconds is not None]
    span_h = (decisions[-1].at - decisions[0].at) / 3600.0 if n > 1 else 0.0
    with_atr = [e for e in decisions if e.atr in ("ALARM", "CLEAR")]
    agreed = [e for e in with_atr if agrees(e)]
    return {
        "scans": n,
        "by_decision": {d: sum(1 for e in decisions if e.decision == d) for d in ("CLEAR", "SUSPECT", "THREAT")},
        "operators": sorted({e.operator for e in decisions}),
        "first": _iso(decisions[0].at) if n else "",
        "last": _iso(decisions[-1].at) if n else "",
        # a shift shorter than a minute counts as one minute, so a burst does not read as 10 000/h
        "scans_per_hour": n / max(span_h, 1 / 60) if n else 0.0,
        "median_seconds": statistics.median(times) if times else None,
        "decision_seconds": times,
        "alarm_rate": sum(1 for e in decisions if e.atr == "ALARM") / n if n else 0.0,
        "atr_agreement": len(agreed) / len(with_atr) if with_atr else None,
    }


def write_csv(decisions: list[Event], out: str | Path) -> Path:
    out = Path(out)
    with out.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows(decisions))
    return out


def write_xlsx(decisions: list[Event], out: str | Path) -> Path:
    """Two sheets: Decisions (the rows) and Summary (the shift statistics)."""
    from openpyxl import Workbook

    out = Path(out)
    wb = Workbook()
    ws = wb.active
    ws.title = "Decisions"
    ws.append(list(COLUMNS))
    for r in rows(decisions):
        ws.append([r[c] for c in COLUMNS])
    ws.freeze_panes = "A2"
    s = wb.create_sheet("Summary")
    stats = shift_stats(decisions)
    s.append(["measure", "value"])
    median = stats["median_seconds"]
    agreement = stats["atr_agreement"]
    for name, value in (
        ("scans decided", stats["scans"]),
        *((f"{d} decisions", c) for d, c in stats["by_decision"].items()),  # type: ignore[union-attr]
        ("operators", ", ".join(stats["operators"])),  # type: ignore[arg-type]
        ("first decision", stats["first"]),
        ("last decision", stats["last"]),
        ("scans per hour", round(float(stats["scans_per_hour"]), 2)),  # type: ignore[arg-type]
        ("median seconds to decision", round(median, 2) if median is not None else ""),  # type: ignore[arg-type]
        ("alarm rate", round(float(stats["alarm_rate"]), 4)),  # type: ignore[arg-type]
        ("agreement with ATR", round(agreement, 4) if agreement is not None else ""),  # type: ignore[arg-type]
    ):
        s.append([name, value])
    wb.save(out)
    return out


def write_report(decisions: list[Event], out: str | Path, fmt: str) -> Path:
    if fmt == "csv":
        return write_csv(decisions, out)
    if fmt == "xlsx":
        return write_xlsx(decisions, out)
    raise ValueError(f"unknown report format {fmt!r}")
