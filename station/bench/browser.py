"""Cache browser benchmark (``station bench browser --json``).

A temporary store gets ``scans`` series rows (index only, no files: ``Store.add_index_rows``),
then, offscreen:

* ``open_ms``: from creating the browser (which reads the index in one query) until it is
  shown and its first rows are painted. Goal <= 1000.
* ``filter_ms``: from setting a search text (modality, alarm state, a date range and a word)
  until the table shows the result and has repainted. Goal <= 100. Median of ``repeat``.
"""

from __future__ import annotations

import logging
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

LOGGER = logging.getLogger(__name__)


def _rows(n: int) -> list[Any]:
    from station.core.store.store import SeriesRow

    mods = ("CT", "CT", "CT", "DX", "MR")
    base = time.time() - 30 * 86400
    out = []
    for k in range(n):
        day = 1 + k % 28
        out.append(SeriesRow(
            patient_id=f"BAG-{k:06d}", patient_name=f"Traveller^{k % 977}", study_uid=f"1.2.826.0.1.{k}",
            study_date=f"202611{day:02d}", study_time="120000", study_description="Checked baggage",
            series_uid=f"1.2.826.0.2.{k}", series_number=1, modality=mods[k % len(mods)], sop_class_uid="",
            description=f"Lane {k % 6} scan", instances=1 + k % 400, frames=1 + k % 400,
            bytes=(1 + k % 400) * 524_288, first_received=base + k * 60.0, last_received=base + k * 60.0 + 5,
        ))
    return out


def bench_browser(scans: int = 10_000, repeat: int = 5) -> dict[str, Any]:
    """Measure opening and filtering the browser over ``scans`` index rows (GUI thread)."""
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    from station.core.triage.alerts import AlertBook
    from station.core.store.store import Store
    from station.app.gui import make_app
    from station.ui.browser.browser import CacheBrowser

    app = make_app()
    with tempfile.TemporaryDirectory(prefix="station-bench-browser-") as tmp:
        store = Store(Path(tmp) / "store", durable=False)
        try:
            store.add_index_rows(_rows(scans))
            book = AlertBook(store)
            book.load()
            t0 = time.perf_counter()
            browser = CacheBrowser(store, book, thumbnails=True)
            browser.resize(1200, 800)
            browser.show()
            app.processEvents()
            browser.table.viewport().repaint()
            open_ms = (time.perf_counter() - t0) * 1000
            populated = browser.model.total()
            filters = ["mod:CT alarm:no 2026-11-01..2026-11-22 bag-00", "traveller^5", "", "mod:DX lane"]
            times = []
            for i in range(repeat * len(filters)):
                t1 = time.perf_counter()
                browser.set_filter(filters[i % len(filters)])
                app.processEvents()
                browser.table.viewport().repaint()
                times.append((time.perf_counter() - t1) * 1000)
            browser.set_filter(filters[0])
            matched = len(browser.model.entries())
            browser.shutdown()
            browser.close()
            browser.deleteLater()
            app.processEvents()
        finally:
            store.close()
    return {
        "scans": populated,
        "open_ms": round(open_ms, 1),
        "open_goal_ms": 1000,
        "filter_ms": round(statistics.median(times), 1),
        "filter_max_ms": round(max(times), 1),
        "filter_goal_ms": 100,
        "filter_matched": matched,
        "complete": populated == scans,
    }
