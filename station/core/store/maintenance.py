"""Keeping the store within its bounds: periodic eviction in the process that owns it.

Runs in ``station serve`` (also the GUI's receiver child), on its own scheduler thread.
What may never be evicted is decided here from the store itself, so it works whether or
not a GUI is open: scans with unresolved alarms (from the TDRs in the store, through
``AlertBook``), pinned and pending scans (``Store.stored_scans``), scans still receiving,
and scans opened in the last ``recently_opened_s`` (the GUI records every open with
``Store.touch``, so a scan on an analyst's screen is not deleted under them). Threat
detection reports go with their scan (``AlertBook.reports_by_scan``), never on their own;
protected scans count against the quota, and when they alone exceed it the store says so
loudly (``over_quota``) instead of silently growing.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from station.core.triage.alerts import AlertBook
from station.core.config import StoreSettings
from station.core.scheduler import Scheduler
from station.core.store.store import Store

LOGGER = logging.getLogger(__name__)

RECENTLY_OPENED_S = 15 * 60


class StoreMaintenance:
    """Evicts on a timer (``start``/``stop`` from the owner's thread; ``run_once`` anywhere)."""

    def __init__(self, store: Store, settings: StoreSettings, *, recently_opened_s: float = RECENTLY_OPENED_S,
                 clock=time.time, on_warning: Callable[[str], None] | None = None) -> None:
        self.store = store
        self.on_warning = on_warning  # told when protected scans alone exceed the quota
        self.over_quota: str | None = None  # the last such warning, None while within quota
        self._over_quota_for: tuple[int, int] | None = None  # (alarmed scans, their bytes) warned of
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
        unresolved = book.unresolved()
        alarmed = {a.series_uid for a in unresolved if a.series_uid}
        # An alarm whose scan has not arrived keeps its own TDR's series.
        alarmed |= {s for a in unresolved if not a.series_uid
                    for s in [self.store.series_of_instance(a.tdr_uid)] if s}
        recent = {uid for uid, (_pinned, access, _decision) in self.store.scan_states().items()
                  if access is not None and now - access < self.recently_opened_s}
        quota = int(self.settings.quota_gb * 1e9) if self.settings.quota_gb > 0 else None
        max_age = self.settings.max_age_days * 86400.0 if self.settings.max_age_days > 0 else None
        # A scan and its TDRs are one unit: evicting a machine TDR on its own would drop the
        # alarm of its scan, and keeping TDRs of evicted scans would grow the store forever.
        deleted = self.store.evict(quota, max_age, now, protected=recent, alarmed=alarmed,
                                   reports=book.reports_by_scan())
        self.evicted_total += len(deleted)
        if deleted:
            LOGGER.info("store maintenance: evicted %d series", len(deleted))
        self._check_quota(quota, alarmed)
        return deleted

    def _check_quota(self, quota: int | None, alarmed: set[str]) -> None:
        """Say loudly (an ERROR in the log and ``on_warning``, once per change) when what may
        not be evicted alone exceeds the quota: the store then grows past it."""
        rows = self.store.series_list() if quota is not None else []
        total = sum(r.bytes for r in rows)
        if quota is None or total <= quota:  # within bounds: a later excess is news again
            self.over_quota, self._over_quota_for = None, None
            return
        alarm_bytes = sum(r.bytes for r in rows if r.series_uid in alarmed)
        message = (f"store over its quota: {total / 1e9:.2f} GB kept, quota {quota / 1e9:.2f} GB; "
                   f"{len(alarmed)} scan(s) with unresolved alarms hold {alarm_bytes / 1e9:.2f} GB and "
                   "cannot be evicted (nor pinned, pending or open scans): resolve the alarms, unpin "
                   "scans or raise [store] quota_gb")
        changed = (len(alarmed), alarm_bytes) != self._over_quota_for
        self.over_quota, self._over_quota_for = message, (len(alarmed), alarm_bytes)
        if changed:
            LOGGER.error("%s", message)
            if self.on_warning is not None:
                self.on_warning(message)

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
