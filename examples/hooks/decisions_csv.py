"""Export one CSV line per analyst decision (operator TDR), for a shift report or an
audit spreadsheet.

Configuration::

    [hooks]
    scripts = ["decisions_csv.py"]

    [hooks.options.decisions_csv]
    path = "/var/lib/station/decisions.csv"   # default: decisions.csv in the working folder

Columns: time (ISO 8601, local), OOI/patient ID, study UID, decision (CLEAR, SUSPECT,
THREAT), operator, machine alarm decision, operator TDR UID. A header is written when the
file is new. The callback runs on this script's own worker thread, so appending to a
file on a slow network share never delays the station.
"""

from __future__ import annotations

import csv
from datetime import datetime
from pathlib import Path

COLUMNS = ["time", "ooi_id", "study_uid", "decision", "operator", "alarm_decision", "tdr_uid"]


def register(api):
    path = Path(api.options.get("path", "decisions.csv")).expanduser()

    @api.decision_did_record
    def export(decision):
        new = not path.exists() or path.stat().st_size == 0
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a", newline="", encoding="utf-8") as fp:
            writer = csv.writer(fp)
            if new:
                writer.writerow(COLUMNS)
            writer.writerow([
                datetime.fromtimestamp(decision.at).astimezone().isoformat(timespec="seconds"),
                decision.patient_id, decision.study_uid, decision.decision, decision.operator,
                decision.alarm_decision, decision.tdr_sop_instance_uid,
            ])
