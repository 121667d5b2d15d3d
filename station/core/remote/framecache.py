"""The frame cache shared by every view of remote scans: bytes in memory, then on disk.

A remote frame (one part of a WADO-RS frames answer, or a rendered image) is kept as the
bytes the server sent, with their media type, under the key *URL plus Accept*: the same
frame asked for in another transfer syntax is another entry. Two tiers:

* memory: an LRU bounded by bytes (``memory_bytes``), so scrolling back through a scan
  the analyst just read never decodes from disk or asks the network;
* disk (optional): files under ``<directory>/blobs`` and an SQLite index
  (``<directory>/index.sqlite3``) with the media type, size, the time the frame was
  stored and last used. Entries live ``ttl_s`` seconds after they were stored; the
  directory is bounded by ``disk_bytes`` (least recently used first out).

Why hand-written instead of ``diskcache``: the cache is a product idea (two tiers, a
stale read for offline work, byte budgets per tier), it only stores ``bytes`` (no pickling
of values, so a file dropped in the cache directory can never execute code), and SQLite
plus plain files are in the standard library. Frames are files, not SQLite blobs,
because a 512x512x16-bit frame is 512 KiB and SQLite reads large blobs through chains
of overflow pages; a file read is one system call.

A hit never touches the network: this module has no networking at all (layer rule), the
DICOMweb client asks it first. ``get(..., allow_stale=True)`` also returns expired
entries: DICOM frames are immutable for a SOP Instance UID, so when the remote store is
down an expired frame is still the right frame ("work offline with what was pulled").

Times on disk are wall-clock seconds (``time.time``) because they must survive a
restart; only the in-process LRU order uses no clock at all.

Threads: every method may be called from any thread (fetch workers write, the GUI and
slicing workers read). The memory tier and the index each have a lock; file reads and
writes happen outside the locks. Several processes may share one directory (SQLite
WAL, files written to a temp name and renamed).
"""

from __future__ import annotations

import hashlib
import logging
import os
import sqlite3
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

LOGGER = logging.getLogger(__name__)

DEFAULT_MEMORY_BYTES: int = 512 * 1024 * 1024
"""Memory tier budget: a few 512x512x300 scans (150 MiB each as 16-bit)."""

DEFAULT_DISK_BYTES: int = 8 * 1024 * 1024 * 1024
"""Disk tier budget; the oldest-used frames go first when it is exceeded."""

DEFAULT_TTL_S: float = 7 * 24 * 3600.0
"""How long a frame on disk counts as fresh: a week of shifts."""

INDEX_NAME = "index.sqlite3"
_BLOBS = "blobs"
_TOUCH_EVERY_S = 60.0
"""A disk hit rewrites ``accessed_at`` at most this often per entry: LRU order on disk
needs minutes, not microseconds, and a write per hit would make hits cost a commit."""
_EVICT_TO = 0.9
"""After an overflow the disk tier is trimmed to this fraction of its budget, so the
next few puts do not each trigger another eviction pass."""

_SCHEMA = """
CREATE TABLE IF NOT EXISTS frames (
    key          TEXT PRIMARY KEY,
    url          TEXT NOT NULL,
    accept       TEXT NOT NULL,
    content_type TEXT NOT NULL,
    size         INTEGER NOT NULL,
    stored_at    REAL NOT NULL,
    accessed_at  REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS frames_accessed ON frames(accessed_at);
"""

Clock = Callable[[], float]


@dataclass(frozen=True)
class CachedFrame:
    """One cached frame: the bytes as received and their media type (with parameters,
    e.g. ``application/octet-stream; transfer-syntax=1.2.840.10008.1.2.1``).

    ``stale`` is true when the entry is older than the TTL and was returned only because
    the caller asked for stale entries (offline work)."""

    content_type: str
    data: bytes
    stored_at: float
    stale: bool = False


@dataclass(frozen=True)
class FrameCacheStats:
    """Counters since the cache was created, and the current size of each tier."""

    memory_hits: int
    disk_hits: int
    stale_hits: int
    misses: int
    puts: int
    memory_bytes: int
    memory_entries: int
    disk_bytes: int
    disk_entries: int

    @property
    def hits(self) -> int:
        return self.memory_hits + self.disk_hits


def canonical_url(url: str) -> str:
    """The URL as used in keys: without user:password (never stored) or fragment."""
    parts = urlsplit(url)
    netloc = parts.hostname or ""
    if ":" in netloc:  # an IPv6 literal
        netloc = f"[{netloc}]"
    if parts.port is not None:
        netloc = f"{netloc}:{parts.port}"
    return urlunsplit((parts.scheme.lower(), netloc.lower(), parts.path, parts.query, ""))


def frame_key(url: str, accept: str) -> str:
    """Cache key of a frame: a digest of the canonical URL and the Accept header value
    (the same frame in another transfer syntax or rendered is another entry)."""
    text = f"{accept.strip()}\n{canonical_url(url)}"
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class FrameCache:
    """Memory LRU plus optional disk cache of remote frames, keyed by URL plus Accept.

    ``directory=None`` keeps the memory tier only (tests, ``--no-cache`` runs that still
    want scrolling back to be free). ``clock`` returns wall-clock seconds and exists for
    tests of the TTL.
    """

    def __init__(
        self,
        directory: str | os.PathLike[str] | None = None,
        *,
        memory_bytes: int = DEFAULT_MEMORY_BYTES,
        disk_bytes: int = DEFAULT_DISK_BYTES,
        ttl_s: float = DEFAULT_TTL_S,
        clock: Clock = time.time,
    ) -> None:
        if memory_bytes < 0 or disk_bytes < 0 or ttl_s <= 0:
            raise ValueError("cache budgets must be >= 0 and the TTL > 0")
        self.memory_budget = memory_bytes
        self.disk_budget = disk_bytes
        self.ttl_s = ttl_s
        self._clock = clock
        self._mem_lock = threading.Lock()
        self._memory: OrderedDict[str, CachedFrame] = OrderedDict()
        self._memory_bytes = 0
        self._counts = {"memory_hits": 0, "disk_hits": 0, "stale_hits": 0, "misses": 0, "puts": 0}
        self._db_lock = threading.Lock()
        self._db: sqlite3.Connection | None = None
        self._disk_bytes = 0
        self._disk_entries = 0
        self.directory = Path(directory) if directory is not None else None
        if self.directory is not None:
            self._open_disk(self.directory)

    # ----------------------------------------------------------------- public

    def get(self, url: str, accept: str, *, allow_stale: bool = False) -> CachedFrame | None:
        """The cached frame for (url, accept), or None. Fresh entries only unless
        ``allow_stale``. A disk hit is promoted to the memory tier. Any thread."""
        key = frame_key(url, accept)
        now = self._clock()
        with self._mem_lock:
            hit = self._memory.get(key)
            if hit is not None:
                fresh = now < hit.stored_at + self.ttl_s
                if fresh or allow_stale:
                    self._memory.move_to_end(key)
                    self._counts["memory_hits" if fresh else "stale_hits"] += 1
                    return hit if fresh else _stale(hit)
        frame = self._disk_get(key, now, allow_stale)
        with self._mem_lock:
            if frame is None:
                self._counts["misses"] += 1
                return None
            self._counts["stale_hits" if frame.stale else "disk_hits"] += 1
            if not frame.stale:
                self._memory_put_locked(key, frame)
        return frame

    def contains(self, url: str, accept: str) -> bool:
        """Whether a fresh entry exists (no counters touched, no promotion)."""
        key = frame_key(url, accept)
        now = self._clock()
        with self._mem_lock:
            hit = self._memory.get(key)
            if hit is not None and now < hit.stored_at + self.ttl_s:
                return True
        if self._db is None:
            return False
        with self._db_lock:
            row = self._db.execute("SELECT stored_at FROM frames WHERE key = ?", (key,)).fetchone()
        return row is not None and now < row[0] + self.ttl_s

    def put(self, url: str, accept: str, content_type: str, data: bytes) -> None:
        """Store one frame in both tiers. Any thread."""
        self.put_many([(url, accept, content_type, data)])

    def put_many(self, entries: Iterable[tuple[str, str, str, bytes]]) -> None:
        """Store several frames (url, accept, content_type, data) with one index commit:
        a batch of 32 frames costs one SQLite transaction, not 32. Any thread."""
        now = self._clock()
        rows = []
        for url, accept, content_type, data in entries:
            key = frame_key(url, accept)
            frame = CachedFrame(content_type, bytes(data), now)
            with self._mem_lock:
                self._counts["puts"] += 1
                self._memory_put_locked(key, frame)
            rows.append((key, canonical_url(url), accept, content_type, frame.data))
        if self._db is not None and rows:
            self._disk_put(rows, now)

    def clear(self) -> None:
        """Drop every entry of both tiers (files included)."""
        with self._mem_lock:
            self._memory.clear()
            self._memory_bytes = 0
        if self._db is None:
            return
        with self._db_lock:
            keys = [r[0] for r in self._db.execute("SELECT key FROM frames")]
            self._db.execute("DELETE FROM frames")
            self._db.commit()
            self._disk_bytes = self._disk_entries = 0
        for key in keys:
            self._unlink(key)

    def purge_expired(self) -> int:
        """Delete expired entries from disk now (they are otherwise kept for offline
        reads until space is needed); return how many. Any thread."""
        if self._db is None:
            return 0
        cutoff = self._clock() - self.ttl_s
        with self._db_lock:
            rows = self._db.execute("SELECT key, size FROM frames WHERE stored_at <= ?", (cutoff,)).fetchall()
            self._delete_rows_locked(rows)
        for key, _ in rows:
            self._unlink(key)
        return len(rows)

    @property
    def stats(self) -> FrameCacheStats:
        with self._mem_lock:
            counts = dict(self._counts)
            mem_bytes, mem_entries = self._memory_bytes, len(self._memory)
        with self._db_lock:
            disk_bytes, disk_entries = self._disk_bytes, self._disk_entries
        return FrameCacheStats(
            memory_bytes=mem_bytes, memory_entries=mem_entries, disk_bytes=disk_bytes,
            disk_entries=disk_entries, **counts,
        )

    def close(self) -> None:
        """Close the index; the memory tier stays readable. Idempotent."""
        with self._db_lock:
            if self._db is not None:
                self._db.close()
                self._db = None

    def __enter__(self) -> FrameCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ----------------------------------------------------------------- memory tier

    def _memory_put_locked(self, key: str, frame: CachedFrame) -> None:
        size = len(frame.data)
        if size > self.memory_budget:
            return
        old = self._memory.pop(key, None)
        if old is not None:
            self._memory_bytes -= len(old.data)
        self._memory[key] = frame
        self._memory_bytes += size
        while self._memory_bytes > self.memory_budget:
            _, dropped = self._memory.popitem(last=False)
            self._memory_bytes -= len(dropped.data)

    # ----------------------------------------------------------------- disk tier

    def _open_disk(self, directory: Path) -> None:
        (directory / _BLOBS).mkdir(parents=True, exist_ok=True)
        path = directory / INDEX_NAME
        try:
            self._db = self._connect(path)
        except sqlite3.DatabaseError as exc:
            # A cache is disposable: a corrupt index is set aside, never fatal.
            LOGGER.warning("frame cache index %s unusable (%s); starting a new one", path, exc)
            path.rename(path.with_suffix(f".corrupt-{uuid.uuid4().hex[:8]}"))
            self._db = self._connect(path)
        row = self._db.execute("SELECT COALESCE(SUM(size), 0), COUNT(*) FROM frames").fetchone()
        self._disk_bytes, self._disk_entries = int(row[0]), int(row[1])

    @staticmethod
    def _connect(path: Path) -> sqlite3.Connection:
        db = sqlite3.connect(path, timeout=10.0, check_same_thread=False, isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        # Losing the last commits in a power cut only costs re-fetching a few frames.
        db.execute("PRAGMA synchronous=OFF")
        db.executescript(_SCHEMA)
        return db

    def _blob_path(self, key: str) -> Path:
        assert self.directory is not None
        return self.directory / _BLOBS / key[:2] / key

    def _disk_get(self, key: str, now: float, allow_stale: bool) -> CachedFrame | None:
        if self._db is None:
            return None
        with self._db_lock:
            if self._db is None:
                return None
            row = self._db.execute(
                "SELECT content_type, size, stored_at, accessed_at FROM frames WHERE key = ?", (key,)
            ).fetchone()
        if row is None:
            return None
        content_type, size, stored_at, accessed_at = row
        stale = now >= stored_at + self.ttl_s
        if stale and not allow_stale:
            return None
        try:
            data = self._blob_path(key).read_bytes()
        except OSError:
            data = None
        if data is None or len(data) != size:
            # Evicted by another process between the lookup and the read, or damaged.
            self._forget(key)
            return None
        if now - accessed_at > _TOUCH_EVERY_S:
            with self._db_lock:
                if self._db is not None:
                    self._db.execute("UPDATE frames SET accessed_at = ? WHERE key = ?", (now, key))
        return CachedFrame(content_type, data, stored_at, stale)

    def _disk_put(self, rows: list[tuple[str, str, str, str, bytes]], now: float) -> None:
        written = []
        for key, url, accept, content_type, data in rows:
            path = self._blob_path(key)
            tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
            try:
                path.parent.mkdir(exist_ok=True)
                tmp.write_bytes(data)
                os.replace(tmp, path)
            except OSError as exc:
                # A full or read-only cache disk degrades to the memory tier, never fails a fetch.
                LOGGER.warning("frame cache: cannot write %s: %s", path, exc)
                tmp.unlink(missing_ok=True)
                continue
            written.append((key, url, accept, content_type, len(data), now, now))
        if not written:
            return
        with self._db_lock:
            if self._db is None:
                return
            db = self._db
            db.execute("BEGIN IMMEDIATE")
            try:
                for row in written:
                    old = db.execute("SELECT size FROM frames WHERE key = ?", (row[0],)).fetchone()
                    if old is not None:
                        self._disk_bytes -= int(old[0])
                        self._disk_entries -= 1
                    db.execute("INSERT OR REPLACE INTO frames VALUES (?, ?, ?, ?, ?, ?, ?)", row)
                    self._disk_bytes += row[4]
                    self._disk_entries += 1
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
            victims = self._evict_locked() if self._disk_bytes > self.disk_budget else []
        for key in victims:
            self._unlink(key)

    def _evict_locked(self) -> list[str]:
        """Choose and delete index rows until the disk tier is under budget; the caller
        unlinks the files after releasing the lock."""
        assert self._db is not None
        target = int(self.disk_budget * _EVICT_TO)
        victims: list[tuple[str, int]] = []
        excess = self._disk_bytes - target
        for key, size in self._db.execute("SELECT key, size FROM frames ORDER BY accessed_at, stored_at"):
            if excess <= 0:
                break
            victims.append((key, size))
            excess -= size
        self._delete_rows_locked(victims)
        LOGGER.debug("frame cache: evicted %d frames", len(victims))
        return [k for k, _ in victims]

    def _delete_rows_locked(self, rows: list[tuple[str, int]]) -> None:
        assert self._db is not None
        if not rows:
            return
        self._db.executemany("DELETE FROM frames WHERE key = ?", [(k,) for k, _ in rows])
        self._disk_bytes -= sum(int(s) for _, s in rows)
        self._disk_entries -= len(rows)

    def _forget(self, key: str) -> None:
        with self._db_lock:
            if self._db is None:
                return
            row = self._db.execute("SELECT size FROM frames WHERE key = ?", (key,)).fetchone()
            if row is not None:
                self._delete_rows_locked([(key, int(row[0]))])
        self._unlink(key)

    def _unlink(self, key: str) -> None:
        try:
            self._blob_path(key).unlink(missing_ok=True)
        except OSError as exc:
            LOGGER.debug("frame cache: cannot remove %s: %s", key, exc)


def _stale(frame: CachedFrame) -> CachedFrame:
    return CachedFrame(frame.content_type, frame.data, frame.stored_at, stale=True)


__all__ = [
    "DEFAULT_DISK_BYTES",
    "DEFAULT_MEMORY_BYTES",
    "DEFAULT_TTL_S",
    "CachedFrame",
    "FrameCache",
    "FrameCacheStats",
    "canonical_url",
    "frame_key",
]
