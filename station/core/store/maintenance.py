"""Keeping the store within its bounds: periodic eviction in the process that owns it.

Runs in ``station serve`` (also the GUI's receiver child), on its own scheduler thread.
What may never be evicted is decided here from the store itself, so it works whether or
not a GUI is open: scans with unresolved alarms (from the TDRs in the store, through
``AlertBook``), pinned and pending scans (``Store.stored_scans``), scans still receiving,
and scans opened in the last ``recently_opened_s`` (the GUI records every open with
``Store.touch``, so a scan on an analyst's screen is not deleted under them). Threat
detection reports are never evicted on their own.
"""

from __future__ import annotations

import logging
import time

from station.core.triage.alerts import AlertBook
from station.core.config import StoreSettings
from station.core.scheduler import Scheduler
from station.core.store.store import Store

LOGGER = logging.getLogger(__name__)

RECENTLY_OPENED_S = 15 * 60


class StoreMaintenance:
    """Evicts on a timer (``start``/``stop`` from the owner's thread; ``run_once`` anywhere)."""

    def __init__(self, store: Store, settings: StoreSettings, *, recently_opened_s: float = RECENTLY_OPENED_S,
                 clock=time.time) -> None:
        self.store = store
        self.settings = settings
        self.recently_opened_s = recently_opened_s
        self.clock = clock
        self.evicted_total = 0
        self._scheduler: Scheduler | None = None

    @property
    def enabled(self) -> bool:
        return self.settings.quota_gb > 0 or self.settings.max_age_days > 0

    def run_once(self) -> list[str]:
        """One eviction pass; returns the deleted series UIDs."""
        now = self.clock()
        book = AlertBook(self.store)
        book.load()
        alarmed = {a.series_uid for a in book.unresolved() if a.series_uid}
        recent = {uid for uid, (_pinned, access, _decision) in self.store.scan_states().items()
                  if access is not None and now - access < self.recently_opened_s}
        # Reports are kept: they are tiny, and evicting a machine TDR on its own would
        # silently drop the alarm of the scan it belongs to.
        reports = {r.series_uid for r in self.store.series_list() if r.modality.upper() == "TDR"}
        quota = int(self.settings.quota_gb * 1e9) if self.settings.quota_gb > 0 else None
        max_age = self.settings.max_age_days * 86400.0 if self.settings.max_age_days > 0 else None
        deleted = self.store.evict(quota, max_age, now, protected=recent | reports, alarmed=alarmed)
        self.evicted_total += len(deleted)
        if deleted:
            LOGGER.info("store maintenance: evicted %d scan(s)", len(deleted))
        return deleted

    def start(self) -> None:
        if not self.enabled or self._scheduler is not None:
            return
        self._scheduler = Scheduler("store-maintenance")
        self._scheduler.every(self.settings.evict_interval_s, self._safe_run, name="evict", first_in=5.0)
        self._scheduler.start()

    def _safe_run(self) -> None:
        try:
            self.run_once()
        except Exception:  # a failed pass is logged; the next one tries again
            LOGGER.exception("store maintenance pass failed")

    def stop(self) -> None:
        if self._scheduler is not None:
            self._scheduler.stop()
            self._scheduler = None
