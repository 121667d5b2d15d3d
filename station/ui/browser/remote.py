"""Remote stores in the GUI: searching them for the cache browser, and showing a remote
series in the viewer while its frames arrive.

``RemoteStores`` holds, for every configured ``[[remotes]]`` entry with a DICOMweb URL,
one ``DicomWebClient`` (all sharing one ``FrameCache``: memory plus the user's cache
directory) and one ``RemoteSearch`` (QIDO-RS through a ``QueryCache``). It runs the
network work on its own small thread pool and reports with queued signals:

* ``search(terms)`` asks every remote; ``searchFinished(generation, hits,
  errors)`` carries the merged hits and one message per remote that failed (a dead
  archive is a line in the browser, never an exception);
* ``open_series(remote, study, series)`` fetches the series metadata (WADO-RS), builds
  the layout and an empty ``FrameVolume``, and emits ``seriesOpened(ticket, volume,
  label)`` at once; then ``RemoteSeries`` pulls the frames, the visible slice first and
  its neighbours outward (``set_current`` moves that front as the analyst scrolls). Each
  arrived frame goes into the volume on the worker thread; ``framesArrived(ticket)`` is
  emitted once per burst, and ``take_arrived`` hands over the indices (coalesced, like
  the bridge). ``progress(ticket, PullProgress)`` reports counts;
* ``close_series()`` cancels the pull (the analyst moved to another scan): its workers
  stop at their next chunk and are joined off the GUI thread.

Archives without DICOMweb (``[[remotes]]`` with only aet/host/port) are searched with
C-FIND; opening one of their series retrieves it whole with C-GET into the local store
(``attach_store``) and reports ``seriesRetrieved(ticket, series_uid, stored, errors)``,
after which it is a local scan; ``retrieving(ticket, instances)`` counts on the way.

Offline: when the archive does not answer, metadata and searches seen before come from
the cache on disk (the client's JSON fallback), the slices pulled before are filled from
the frame cache, and nothing more is asked for; the viewer says "offline".

A ticket numbers each open; signals about an older ticket are ignored by the receiver.
GUI thread for every public method; callbacks from fetch threads only touch the volume
(thread-safe) and emit signals.
"""

from __future__ import annotations

import logging
import tempfile
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from PySide6.QtCore import QObject, Signal

from station.core.config import ConfigError, default_frame_cache_dir
from station.core.remote.framecache import FrameCache
from station.core.remote.remotes import RemoteSettings
from station.core.imaging.volume import FrameVolume, VolumeError
from station.core.store.store import Store, StoreError
from station.net.dicomweb.client import DicomWebClient, DicomWebError
from station.net.dimse.scu import DimseError, DimseRemote
from station.net.remote.search import RemoteHit, RemoteSearch, SearchTerms
from station.net.remote.series import LAYOUT_KEYWORDS, FrameArrived, PullProgress, RemoteSeries, SeriesLayout

LOGGER = logging.getLogger(__name__)

#: Memory tier of the GUI's frame cache: two or three open-and-closed scans.
MEMORY_BYTES = 384 * 1024 * 1024


class RemoteStores(QObject):
    """Every configured DICOMweb remote, for searching and viewing (see module doc)."""

    searchFinished = Signal(int, list, list)  # generation, [RemoteHit], [error text]
    seriesOpened = Signal(int, object, str)  # ticket, FrameVolume, label
    openFailed = Signal(int, str)  # ticket, message
    framesArrived = Signal(int)  # ticket; take_arrived() has the indices
    progress = Signal(int, object)  # ticket, PullProgress
    retrieving = Signal(int, int)  # ticket, instances retrieved so far (DIMSE)
    seriesRetrieved = Signal(int, str, int, list)  # ticket, series UID, instances stored, errors

    def __init__(self, remotes: Sequence[RemoteSettings], *, cache_dir: Path | None = None,
                 memory_bytes: int = MEMORY_BYTES, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.remotes = {r.name: r for r in remotes if r.has_dicomweb or r.has_dimse}
        web = any(r.has_dicomweb for r in self.remotes.values())
        self.cache = FrameCache(cache_dir, memory_bytes=memory_bytes) if web else None
        self.cache_dir = cache_dir
        self.errors: list[str] = []  # configuration problems (a missing secret), shown once
        self.store: Store | None = None  # where DIMSE retrieves go (attach_store)
        self._clients: dict[str, DicomWebClient] = {}
        self._dimse: dict[str, DimseRemote] = {}
        self._searches: dict[str, RemoteSearch] = {}
        for name, remote in self.remotes.items():
            try:
                if remote.has_dicomweb:
                    client = DicomWebClient.from_settings(remote, cache=self.cache)
                    self._clients[name] = client
                    self._searches[name] = RemoteSearch(name, client)
                else:
                    dimse = DimseRemote.from_settings(remote)
                    self._dimse[name] = dimse
                    self._searches[name] = RemoteSearch(name, dimse)
            except (ConfigError, ValueError) as exc:
                self.errors.append(f"remote {name!r}: {exc}")
        # Searches and opens; each open's own RemoteSeries has its fetch threads.
        self._pool = ThreadPoolExecutor(max_workers=max(2, len(self._clients) + 1),
                                        thread_name_prefix="remote-stores")
        self._lock = threading.Lock()
        self._search_generation = 0
        self._ticket = 0
        self._pull: RemoteSeries | None = None
        self._arrived: list[int] = []
        self._closed = False

    @classmethod
    def from_settings(cls, remotes: Sequence[RemoteSettings], cache_dir: Path | None = None,
                      parent: QObject | None = None) -> RemoteStores:
        """The GUI's remotes, caching in ``cache_dir`` (default: the user cache dir)."""
        return cls(remotes, cache_dir=cache_dir if cache_dir is not None else default_frame_cache_dir(),
                   parent=parent)

    # ----------------------------------------------------------------- state

    @property
    def names(self) -> list[str]:
        """Remotes that can be searched (a usable DICOMweb URL or DIMSE peer)."""
        return list(self._searches)

    def attach_store(self, store: Store) -> None:
        """The local store that series retrieved by C-GET are imported into."""
        self.store = store

    @property
    def ticket(self) -> int:
        """The number of the current open (signals with another ticket are stale)."""
        return self._ticket

    @property
    def pull(self) -> RemoteSeries | None:
        return self._pull

    def offline(self, remote: str) -> bool:
        client = self._clients.get(remote)
        return client is not None and client.offline

    # ----------------------------------------------------------------- search

    def search(self, terms: SearchTerms) -> int:
        """Search every remote (on a worker, one remote after the other); ``searchFinished``
        reports once with all answers. Returns the generation; only the newest matters."""
        self._search_generation += 1
        generation = self._search_generation
        if not self._searches or self._closed:
            self.searchFinished.emit(generation, [], list(self.errors))
            return generation
        self._pool.submit(self._search_job, generation, terms)
        return generation

    def _search_job(self, generation: int, terms: SearchTerms) -> None:
        hits: list[RemoteHit] = []
        errors: list[str] = []
        for name, searcher in self._searches.items():
            try:
                hits.extend(searcher.search(terms))
                if searcher.offline:
                    errors.append(f"{name}: offline, showing the last answer to this search")
            except (DicomWebError, DimseError, ValueError) as exc:
                errors.append(f"{name}: {exc}")
        if generation == self._search_generation and not self._closed:
            self.searchFinished.emit(generation, hits, errors)

    # ----------------------------------------------------------------- viewing

    def open_series(self, remote: str, study_uid: str, series_uid: str, *, label: str = "",
                    current: int | None = None) -> int:
        """Open a remote series (replacing the one open): metadata on a worker, then
        ``seriesOpened`` and the pull. Returns the ticket of this open."""
        self.close_series()
        ticket = self._ticket
        client = self._clients.get(remote)
        dimse = self._dimse.get(remote)
        if dimse is not None and self.store is not None:
            self._pool.submit(self._retrieve_job, ticket, remote, dimse, study_uid, series_uid)
            return ticket
        if client is None:
            self.openFailed.emit(ticket, f"no usable remote named {remote!r}")
            return ticket
        self._pool.submit(self._open_job, ticket, client, study_uid, series_uid, label or series_uid, current)
        return ticket

    def set_current(self, index: int) -> None:
        """The analyst looks at slice ``index``: fetch it and its neighbours next."""
        pull = self._pull
        if pull is not None:
            pull.set_current(index)

    def take_arrived(self) -> list[int]:
        """Indices of the slices that arrived since the last call (GUI thread)."""
        with self._lock:
            arrived, self._arrived = self._arrived, []
        return arrived

    def close_series(self) -> None:
        """Stop pulling the open series (threads are joined on a worker)."""
        with self._lock:
            self._ticket += 1
            pull, self._pull = self._pull, None
            self._arrived = []
        if pull is not None:
            pull.cancel()
            if not self._closed:
                self._pool.submit(pull.close)
            else:
                pull.close()

    def shutdown(self) -> None:
        """Cancel everything, join every thread, close the clients and the cache."""
        if self._closed:
            return
        self._closed = True
        self.close_series()
        self._pool.shutdown(wait=True, cancel_futures=True)
        with self._lock:
            pull, self._pull = self._pull, None
        if pull is not None:  # opened while shutting down
            pull.close()
        for client in self._clients.values():
            client.close()
        if self.cache is not None:
            self.cache.close()

    # ----------------------------------------------------------------- workers

    def _open_job(self, ticket: int, client: DicomWebClient, study: str, series: str, label: str,
                  current: int | None) -> None:
        try:
            metadata = client.series_metadata(study, series, keywords=LAYOUT_KEYWORDS)
            layout = SeriesLayout.from_metadata(metadata, study_uid=study, series_uid=series)
        except (DicomWebError, VolumeError) as exc:
            LOGGER.warning("cannot open remote series %s: %s", series, exc)
            if ticket == self._ticket:
                self.openFailed.emit(ticket, str(exc))
            return
        volume = layout.frame_volume()
        offline = client.offline
        pull = RemoteSeries(client, layout, on_frame=lambda e: self._on_frame(ticket, volume, e),
                            on_progress=lambda p: self._on_progress(ticket, p))
        with self._lock:
            if ticket != self._ticket or self._closed:
                return  # the analyst moved on while the metadata came
            if not offline:
                self._pull = pull
        self.seriesOpened.emit(ticket, volume, label)
        if offline:
            self._fill_from_cache(ticket, pull, volume)
            return
        pull.start(current)

    def _retrieve_job(self, ticket: int, name: str, dimse: DimseRemote, study: str, series: str) -> None:
        """C-GET a series whole into a scratch folder, import it into the store (the
        archive has no frames on demand), remove the scratch files."""
        store = self.store
        assert store is not None
        count = [0]

        def on_instance(_path: Path) -> None:
            count[0] += 1
            if ticket == self._ticket:
                self.retrieving.emit(ticket, count[0])

        stored, errors = 0, []
        with tempfile.TemporaryDirectory(prefix="station-cget-") as scratch:
            try:
                result = dimse.get_series(study, series, scratch, on_instance=on_instance)
            except DimseError as exc:
                LOGGER.warning("C-GET of %s from %s failed: %s", series, name, exc)
                if ticket == self._ticket:
                    self.openFailed.emit(ticket, str(exc))
                return
            for path in result.files:
                try:
                    store.import_file(path, source=f"remote:{name}")
                    stored += 1
                except StoreError as exc:
                    errors.append(str(exc))
        if ticket == self._ticket:
            self.seriesRetrieved.emit(ticket, series, stored, errors)

    def _fill_from_cache(self, ticket: int, pull: RemoteSeries, volume: FrameVolume) -> None:
        """Offline: show what was pulled before (stale entries too), ask for nothing."""
        for i in range(volume.n_slices):
            if ticket != self._ticket:
                return
            try:
                event = pull.cached_slice(i)
            except DicomWebError as exc:
                LOGGER.warning("cached slice %d unusable: %s", i, exc)
                continue
            if event is not None:
                self._on_frame(ticket, volume, event)
        n = volume.n_slices
        self._on_progress(ticket, PullProgress(total=n, done=volume.loaded, failed=n - volume.loaded,
                                               rendered=0, from_cache=volume.loaded, cancelled=False,
                                               finished=True, error="offline: the remote store does not answer"))

    def _on_frame(self, ticket: int, volume: FrameVolume, event: FrameArrived) -> None:
        """Fetch thread: keep the pixels, tell the GUI once per burst."""
        if ticket != self._ticket:
            return
        try:
            volume.put(event.index, event.array, rendered=event.rendered)
        except VolumeError as exc:
            LOGGER.warning("remote slice %d does not fit its series: %s", event.index, exc)
            return
        with self._lock:
            if ticket != self._ticket:
                return
            first = not self._arrived
            self._arrived.append(event.index)
        if first:
            self.framesArrived.emit(ticket)

    def _on_progress(self, ticket: int, progress: PullProgress) -> None:
        if ticket == self._ticket:
            self.progress.emit(ticket, progress)


def progress_text(remote: str, progress: PullProgress, *, offline: bool = False) -> str:
    """One line for the viewer's corner: where the pull stands."""
    if offline:
        return f"{remote} offline · {progress.done}/{progress.total} slices cached"
    text = f"{remote} · {progress.done}/{progress.total} slices"
    if progress.failed:
        text += f" · {progress.failed} failed"
    if progress.rendered:
        text += " · rendered (display values)"
    if progress.finished and progress.complete:
        text = f"{remote} · all {progress.total} slices"
    return text


__all__ = ["MEMORY_BYTES", "RemoteStores", "progress_text"]
