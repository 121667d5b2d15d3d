"""The local store: DICOM files on disk plus an SQLite index.

Hierarchy: object of inspection (patient) -> study (scan) -> series -> instance.

Durability contract, relied on by the receiver before it acknowledges a C-STORE:
``Store.ingest`` and ``Store.adopt`` return only after

1. the whole Part 10 file was written to a temp file in ``<root>/tmp`` (same filesystem),
2. the temp file was fsynced (for ``adopt``, possibly by the caller's ``sync``, which
   may flush it on another thread with fdatasync: data and size, not timestamps),
3. it was atomically renamed to its final name and the directory was fsynced,
4. the index row was committed (SQLite WAL).

Each step waits for the one before: a file is renamed only once its data is on disk, so
whatever name a crash leaves visible under ``objects/`` holds a complete file, and the
directory is fsynced per instance because only that makes the new name itself durable.

The files are the source of truth; the index is derived from them. SQLite runs with
``synchronous=NORMAL``: a commit survives a crash of the process (the test kills the
receiver with SIGKILL), and after an operating-system crash or power loss the last
commits may be missing from the index but never the files, which were fsynced. A store
that was not closed cleanly (``.dirty`` marker present) is therefore reconciled when it
is opened: files without an index row are indexed again, rows without a file dropped.
This saves one journal flush per instance (about a third of the durable-write cost).

If any step fails it raises ``StoreError`` (``StoreFullError`` for a full disk or quota)
and nothing half-written stays visible. Leftover temp files from a crash are removed when
the store is opened again: they were never acknowledged.

File names never come from peer-supplied text: every path component is a hash of a UID.

Thread safety: ``ingest`` may be called from many threads at once (file I/O runs in
parallel, index writes are serialised); reads use one connection per thread.
"""

from __future__ import annotations

import bisect
import errno
import hashlib
import io
import logging
import os
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import pydicom
from pydicom.errors import InvalidDicomError

from station.core.dicom import scan as dicomscan
from station.core.events import InstanceStored
from station.core.dicom.files import expand_paths

LOGGER = logging.getLogger(__name__)

INDEX_NAME = "index.sqlite3"
SCHEMA_VERSION = 1


_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS patients (
    patient_id   TEXT PRIMARY KEY,
    patient_name TEXT NOT NULL DEFAULT ''
);
CREATE TABLE IF NOT EXISTS studies (
    study_uid      TEXT PRIMARY KEY,
    patient_id     TEXT NOT NULL REFERENCES patients(patient_id),
    study_date     TEXT NOT NULL DEFAULT '',
    study_time     TEXT NOT NULL DEFAULT '',
    accession      TEXT NOT NULL DEFAULT '',
    description    TEXT NOT NULL DEFAULT '',
    first_received REAL NOT NULL,
    last_received  REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS series (
    series_uid     TEXT PRIMARY KEY,
    study_uid      TEXT NOT NULL REFERENCES studies(study_uid),
    modality       TEXT NOT NULL DEFAULT '',
    sop_class_uid  TEXT NOT NULL DEFAULT '',
    series_number  INTEGER,
    description    TEXT NOT NULL DEFAULT '',
    instances      INTEGER NOT NULL DEFAULT 0,
    frames         INTEGER NOT NULL DEFAULT 0,
    bytes          INTEGER NOT NULL DEFAULT 0,
    first_received REAL NOT NULL,
    last_received  REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS series_by_study ON series(study_uid);
CREATE INDEX IF NOT EXISTS series_by_last ON series(last_received);
CREATE TABLE IF NOT EXISTS instances (
    sop_instance_uid TEXT PRIMARY KEY,
    series_uid       TEXT NOT NULL REFERENCES series(series_uid),
    sop_class_uid    TEXT NOT NULL,
    instance_number  INTEGER,
    frames           INTEGER NOT NULL DEFAULT 1,
    rows             INTEGER,
    columns          INTEGER,
    transfer_syntax  TEXT NOT NULL,
    path             TEXT NOT NULL,
    bytes            INTEGER NOT NULL,
    received_at      REAL NOT NULL,
    source           TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS instances_by_series ON instances(series_uid);
-- What the analyst did with a scan (pinned, last opened, decision). Not derived from the
-- files, so rebuild_index keeps it; no foreign key, for the same reason. Added without a
-- schema version bump: CREATE IF NOT EXISTS gives an older index the table on open.
CREATE TABLE IF NOT EXISTS scan_state (
    series_uid  TEXT PRIMARY KEY,
    pinned      INTEGER NOT NULL DEFAULT 0,
    last_access REAL,
    decision    TEXT NOT NULL DEFAULT ''
);
"""

#: A scan received less than this long ago and never opened counts as pending triage
#: and is never evicted (see ``Store.evict``).
PENDING_WINDOW_S = 30 * 60.0

#: A series that got an instance less than this long ago is taken to be still arriving:
#: ``delete_series`` refuses it and ``evict`` skips it.
RECEIVING_GRACE_S = 10.0


class StoreError(Exception):
    """An instance could not be stored; the message says why. Nothing was kept."""


class StoreFullError(StoreError):
    """The disk or quota is full (a sender should get 0xA700, out of resources)."""


class InvalidInstanceError(StoreError):
    """The data is not a DICOM instance the store can index (missing UIDs, not DICOM)."""


class NotDicomError(InvalidInstanceError):
    """The file is not DICOM at all: no preamble and "DICM", and not readable as a bare
    dataset with SOP Class and Instance UIDs (a README or a truth.json next to the images)."""


@dataclass(frozen=True, slots=True)
class ImportResult:
    """What ``Store.import_paths`` did: ``stored``; ``errors``, one message per DICOM file
    that could not be stored; ``ignored``, the files that are not DICOM at all."""

    stored: list[InstanceStored]
    errors: list[str]
    ignored: list[Path]


@dataclass(frozen=True, slots=True)
class SeriesRow:
    """One series as the scan list and ``station store ls`` show it."""

    patient_id: str
    patient_name: str
    study_uid: str
    study_date: str
    study_time: str
    study_description: str
    series_uid: str
    series_number: int | None
    modality: str
    sop_class_uid: str
    description: str
    instances: int
    frames: int
    bytes: int
    first_received: float
    last_received: float


@dataclass(frozen=True, slots=True)
class InstanceRow:
    sop_instance_uid: str
    series_uid: str
    sop_class_uid: str
    instance_number: int | None
    frames: int
    path: Path
    bytes: int
    transfer_syntax: str
    received_at: float = 0.0


def uid_token(uid: str) -> str:
    """A filesystem-safe, fixed-length name derived from a UID (or any peer text)."""
    return hashlib.blake2b(uid.encode("utf-8", "surrogateescape"), digest_size=12).hexdigest()


def _text(value: object) -> str:
    return "" if value is None else str(value).strip("\x00 ")


def _int_or_none(value: object) -> int | None:
    try:
        return int(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_all(fd: int, parts: Sequence[bytes | bytearray | memoryview]) -> int:
    """Write every part with as few syscalls (and no joined copy) as possible."""
    views = [memoryview(p).cast("B") for p in parts if len(p)]
    total = sum(len(v) for v in views)
    written = 0
    while views:
        n = os.writev(fd, views)
        written += n
        while views and n >= len(views[0]):
            n -= len(views[0])
            views.pop(0)
        if views and n:
            views[0] = views[0][n:]
    if written != total:
        raise OSError(errno.EIO, "short write")
    return written


class _ChainedReader(io.RawIOBase):
    """A read-only, seekable file over consecutive byte chunks, without joining them.

    pydicom reads the header through it and stops before the pixel data, so a 512 KB
    slice is never copied just to learn its UIDs.
    """

    def __init__(self, parts: Sequence[bytes | bytearray | memoryview]) -> None:
        super().__init__()
        self._parts = [memoryview(p).cast("B") for p in parts]
        self._starts: list[int] = []
        total = 0
        for part in self._parts:
            self._starts.append(total)
            total += len(part)
        self._size = total
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def readinto(self, buffer: Any) -> int:
        out = memoryview(buffer).cast("B")
        done = 0
        while done < len(out) and self._pos < self._size:
            index = bisect.bisect_right(self._starts, self._pos) - 1
            part = self._parts[index]
            offset = self._pos - self._starts[index]
            n = min(len(out) - done, len(part) - offset)
            out[done:done + n] = part[offset:offset + n]
            done += n
            self._pos += n
        return done


def _is_full(exc: OSError) -> bool:
    return exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


@dataclass(frozen=True, slots=True)
class _Header:
    sop_class_uid: str
    sop_instance_uid: str
    study_uid: str
    series_uid: str
    patient_id: str
    patient_name: str
    modality: str
    study_date: str
    study_time: str
    accession: str
    study_description: str
    series_description: str
    series_number: int | None
    instance_number: int | None
    frames: int
    rows: int | None
    columns: int | None
    transfer_syntax: str


def _raw_text(ds: pydicom.Dataset, tag: int) -> str:
    """The value of an ASCII-only element (UI, CS, DA, TM, IS) without pydicom's conversion.

    Converting through pydicom validates and wraps every value, which costs more than
    the rest of the header read; the index only needs the stripped text.
    """
    try:
        elem = ds.get_item(tag)
    except KeyError:
        return ""
    if elem is None:
        return ""
    value = elem.value
    if isinstance(value, (bytes, bytearray)):
        return value.decode("ascii", "replace").strip("\x00 ")
    return _text(value)


# Tags of the index header: (tag, how pydicom's value is read), see _scanned_header.
_ASCII, _TEXT, _PN, _US = range(4)
_HEADER_TAGS = {
    0x00080016: _ASCII, 0x00080018: _ASCII, 0x00080020: _ASCII, 0x00080030: _ASCII,
    0x00080050: _TEXT, 0x00080060: _ASCII, 0x00081030: _TEXT, 0x0008103E: _TEXT,
    0x00100010: _PN, 0x00100020: _TEXT, 0x0020000D: _ASCII, 0x0020000E: _ASCII,
    0x00200011: _ASCII, 0x00200013: _ASCII, 0x00280008: _ASCII, 0x00280010: _US, 0x00280011: _US,
}
_HEADER_TAG_SET = frozenset(_HEADER_TAGS)
# How much of a file the quick header scan looks at before giving up to pydicom.
HEADER_SCAN_BYTES = 64 * 1024


def _scanned_header(data: bytes | bytearray | memoryview, complete: bool) -> _Header | None:
    """The index header from the quick scan of a file's first bytes; None to ask pydicom.

    Gives exactly what ``_pydicom_header`` gives (tests/core/test_dicomscan.py compares
    them), in a tenth of the time.
    """
    scanned = dicomscan.scan_part10(data, _HEADER_TAG_SET, complete=complete)
    if scanned is None:
        return None
    meta, raw, codec = scanned
    values: dict[int, Any] = {}
    try:
        for tag, value in raw.items():
            how = _HEADER_TAGS[tag]
            if how == _ASCII:  # as _raw_text reads them
                values[tag] = value.decode("ascii", "replace").strip("\x00 ")
            elif how == _US:
                values[tag] = dicomscan.us(value)
            else:
                text = dicomscan.text(value, codec)
                if how == _PN and "=" in text:
                    return None  # several name groups: leave their rendering to pydicom
                values[tag] = text
    except (ValueError, UnicodeDecodeError):
        return None

    def meta_text(tag: int) -> str:
        return meta.get(tag, b"").decode("ascii", "replace").strip("\x00 ")

    return _Header(
        sop_class_uid=values.get(0x00080016) or meta_text(0x00020002),
        sop_instance_uid=values.get(0x00080018) or meta_text(0x00020003),
        study_uid=values.get(0x0020000D, ""),
        series_uid=values.get(0x0020000E, ""),
        patient_id=values.get(0x00100020, ""),
        patient_name=values.get(0x00100010, ""),
        modality=values.get(0x00080060, ""),
        study_date=values.get(0x00080020, ""),
        study_time=values.get(0x00080030, ""),
        accession=values.get(0x00080050, ""),
        study_description=values.get(0x00081030, ""),
        series_description=values.get(0x0008103E, ""),
        series_number=_int_or_none(values.get(0x00200011, "")),
        instance_number=_int_or_none(values.get(0x00200013, "")),
        frames=max(1, _int_or_none(values.get(0x00280008, "")) or 1),
        rows=values.get(0x00280010),
        columns=values.get(0x00280011),
        transfer_syntax=meta_text(0x00020010),
    )


def _pydicom_header(source: bytes | BinaryIO) -> _Header:
    """The index header as pydicom reads it, stopping before the pixels."""
    fp = io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else source
    ds = pydicom.dcmread(fp, stop_before_pixels=True, defer_size=4096)
    meta = ds.file_meta
    ts = _text(meta.get("TransferSyntaxUID", ""))
    sop_class = _raw_text(ds, 0x00080016) or _text(meta.get("MediaStorageSOPClassUID", ""))
    sop_inst = _raw_text(ds, 0x00080018) or _text(meta.get("MediaStorageSOPInstanceUID", ""))
    return _Header(
        sop_class_uid=sop_class,
        sop_instance_uid=sop_inst,
        study_uid=_raw_text(ds, 0x0020000D),
        series_uid=_raw_text(ds, 0x0020000E),
        patient_id=_text(ds.get("PatientID", "")),
        patient_name=_text(ds.get("PatientName", "")),
        modality=_raw_text(ds, 0x00080060),
        study_date=_raw_text(ds, 0x00080020),
        study_time=_raw_text(ds, 0x00080030),
        accession=_text(ds.get("AccessionNumber", "")),
        study_description=_text(ds.get("StudyDescription", "")),
        series_description=_text(ds.get("SeriesDescription", "")),
        series_number=_int_or_none(_raw_text(ds, 0x00200011)),
        instance_number=_int_or_none(_raw_text(ds, 0x00200013)),
        frames=max(1, _int_or_none(_raw_text(ds, 0x00280008)) or 1),
        rows=_int_or_none(ds.get("Rows")),
        columns=_int_or_none(ds.get("Columns")),
        transfer_syntax=ts,
    )


def _read_header(source: bytes | BinaryIO, origin: str, head: bytes | bytearray | memoryview | None = None,
                 complete: bool = False) -> _Header:
    """Parse the index attributes of a Part 10 file or byte string, stopping before the pixels.

    ``head``, if given, is the start of the same file (all of it when ``complete``):
    the quick scan tries it first, and pydicom reads ``source`` only if the scan is unsure.
    """
    header = _scanned_header(head, complete) if head is not None else None
    if header is None:
        try:
            header = _pydicom_header(source)
        except (InvalidDicomError, EOFError, ValueError, TypeError, KeyError, AttributeError, OSError) as exc:
            raise InvalidInstanceError(f"{origin}: not a readable DICOM instance: {exc}") from exc
    return _checked_header(header, origin)


def _checked_header(header: _Header, origin: str) -> _Header:
    """``header``, if it has what the index needs; InvalidInstanceError naming what is missing."""
    missing = [
        name
        for name, value in (
            ("SOPInstanceUID", header.sop_instance_uid),
            ("SOPClassUID", header.sop_class_uid),
            ("StudyInstanceUID", header.study_uid),
            ("SeriesInstanceUID", header.series_uid),
            ("TransferSyntaxUID", header.transfer_syntax),
        )
        if not value
    ]
    if missing:
        raise InvalidInstanceError(f"{origin}: missing {', '.join(missing)}")
    return header


def _head_of(parts: Sequence[bytes | bytearray | memoryview]) -> tuple[bytes | bytearray | memoryview, bool]:
    """The first ``HEADER_SCAN_BYTES`` (or more) of consecutive chunks, and whether that is all of them."""
    if len(parts) == 1:
        return parts[0], True
    head = bytearray()
    total = 0
    for part in parts:
        total += len(part)
        if len(head) < HEADER_SCAN_BYTES:
            head += memoryview(part).cast("B")[:HEADER_SCAN_BYTES - len(head)]
    return head, len(head) == total


def _read_file_header(f: BinaryIO, origin: str) -> tuple[_Header, int]:
    """The index header and size of an open Part 10 file."""
    size = os.fstat(f.fileno()).st_size
    head = os.pread(f.fileno(), HEADER_SCAN_BYTES, 0)
    return _read_header(f, origin, head, complete=len(head) == size), size


def _stored_event(header: _Header, final: Path, nbytes: int, source: str, received_at: float) -> InstanceStored:
    """What the receiver publishes once an instance is stored."""
    return InstanceStored(
        patient_id=header.patient_id,
        study_uid=header.study_uid,
        series_uid=header.series_uid,
        sop_instance_uid=header.sop_instance_uid,
        sop_class_uid=header.sop_class_uid,
        modality=header.modality,
        path=str(final),
        number_of_frames=header.frames,
        instance_number=header.instance_number,
        nbytes=nbytes,
        source=source,
        received_at=received_at,
    )


class Store:
    """Files plus index. Open with ``Store(root)``; close with ``close()``."""

    def __init__(self, root: str | os.PathLike[str], *, durable: bool = True, maintenance: bool = True) -> None:
        """Open (creating if needed) the store at `root`.

        With ``maintenance`` (the default) this process owns the store's upkeep: it
        removes unacknowledged temp files, reconciles after an unclean stop and rebuilds
        a lost index. A process that shares the store with its owner (the GUI while a
        receiver process runs) passes ``maintenance=False``: it must not delete the
        owner's in-flight spool files or take over its clean-shutdown marker.
        """
        self.root = Path(root).expanduser().resolve()
        self.objects_dir = self.root / "objects"
        self.tmp_dir = self.root / "tmp"
        self.index_path = self.root / INDEX_NAME
        # durable=False skips fsync; only for building throw-away test data quickly.
        self._durable = durable
        self._write_lock = threading.Lock()
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._connections_lock = threading.Lock()
        self._known_dirs: set[Path] = set()
        self._closed = False
        for d in (self.root, self.objects_dir, self.tmp_dir):
            d.mkdir(parents=True, exist_ok=True)
        self._maintenance = maintenance
        if maintenance:
            self._remove_stale_temp_files()
        needs_rebuild = maintenance and not self.index_path.exists() and any(self.objects_dir.iterdir())
        self._dirty_marker = self.root / ".dirty"
        was_dirty = maintenance and self._dirty_marker.exists()
        try:
            self._writer = self._connect()
            self._writer.executescript(_SCHEMA)
            self._check_schema()
        except sqlite3.OperationalError as exc:
            # Disk full, I/O error, locked: the index may be fine; never discard it for that.
            self.close()
            raise StoreError(f"cannot open index {self.index_path}: {exc}") from exc
        except sqlite3.DatabaseError as exc:
            LOGGER.error("index %s is unreadable (%s); moving it aside and rebuilding", self.index_path, exc)
            self._set_aside_index()
            self._writer = self._connect()
            self._writer.executescript(_SCHEMA)
            self._check_schema()
            needs_rebuild = True
        if needs_rebuild:
            self.rebuild_index()
        elif was_dirty:
            self.reconcile()
        if maintenance:
            self._dirty_marker.touch()
            if self._durable:
                _fsync_dir(self.root)

    # -- opening and closing -------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.index_path, timeout=30, check_same_thread=False, isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=" + ("NORMAL" if self._durable else "OFF"))
        conn.execute("PRAGMA foreign_keys=ON")
        with self._connections_lock:
            self._connections.append(conn)
        return conn

    def _check_schema(self) -> None:
        row = self._writer.execute("SELECT value FROM meta WHERE key='schema'").fetchone()
        if row is None:
            self._writer.execute("INSERT INTO meta(key, value) VALUES ('schema', ?)", (str(SCHEMA_VERSION),))
        elif int(row[0]) != SCHEMA_VERSION:
            raise sqlite3.DatabaseError(f"schema version {row[0]}, expected {SCHEMA_VERSION}")
        self._writer.execute("SELECT count(*) FROM instances").fetchone()

    def _set_aside_index(self) -> None:
        with self._connections_lock:
            for conn in self._connections:
                conn.close()
            self._connections.clear()
        stamp = time.strftime("%Y%m%d-%H%M%S")
        for suffix in ("", "-wal", "-shm"):
            p = Path(str(self.index_path) + suffix)
            if p.exists():
                p.replace(p.with_name(p.name + f".corrupt-{stamp}"))

    def _reader(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._connect()
            self._local.conn = conn
        return conn

    def close(self) -> None:
        """Close every index connection. Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        with self._connections_lock:
            for conn in self._connections:
                try:
                    conn.close()
                except sqlite3.Error:  # closing must not mask the reason we are closing
                    LOGGER.exception("closing index connection")
            self._connections.clear()
        if not self._maintenance:
            return
        try:
            self._dirty_marker.unlink(missing_ok=True)
        except OSError as exc:
            LOGGER.error("cannot clear %s: %s", self._dirty_marker, exc)

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _remove_stale_temp_files(self) -> None:
        for leftover in self.tmp_dir.iterdir():
            LOGGER.warning("removing unacknowledged temp file from an earlier run: %s", leftover.name)
            try:
                leftover.unlink()
            except OSError as exc:
                LOGGER.error("cannot remove %s: %s", leftover, exc)

    # -- writing ---------------------------------------------------------------------------

    def final_path(self, study_uid: str, series_uid: str, sop_instance_uid: str) -> Path:
        """Where an instance lives; every component is a hash, never peer text."""
        study = uid_token(study_uid)
        return self.objects_dir / study[:2] / study / uid_token(series_uid) / (uid_token(sop_instance_uid) + ".dcm")

    def ingest(self, parts: Sequence[bytes | bytearray | memoryview], *, source: str = "") -> InstanceStored:
        """Durably store one complete Part 10 file given as consecutive byte chunks.

        Called on receiver (association) threads and by imports. Returns the event to
        publish once the instance is safe; raises StoreError otherwise.
        """
        if self._closed:
            raise StoreError("store is closed")
        head, complete = _head_of(parts)
        header = _read_header(_ChainedReader(parts), source or "instance", head, complete)
        tmp = self.tmp_dir / f"{uuid.uuid4().hex}.part"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
            try:
                nbytes = _write_all(fd, parts)
                if self._durable:
                    os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as exc:
            self._discard(tmp)
            raise self._write_error(exc, tmp) from exc
        return self._commit(tmp, header, nbytes, source)

    def spool_dir(self) -> Path:
        """Where a receiver may write incoming files before handing them to ``adopt``."""
        return self.tmp_dir

    def adopt(self, spooled: str | os.PathLike[str], *, source: str = "",
              sync: Callable[[], None] | None = None,
              head: bytes | bytearray | memoryview | None = None, size: int | None = None) -> InstanceStored:
        """Durably store a complete Part 10 file already written into ``spool_dir()``.

        The file is fsynced and renamed into place (no copy). Called on receiver threads.
        ``sync``, if given, replaces the fsync: it must return only once the file's data
        and size are on disk, and raise OSError if they cannot be (the receiver's spool
        file may be flushed by another thread while the header is read here). ``head``
        and ``size``, if given, are the file's first ``HEADER_SCAN_BYTES`` (or all of it)
        and its size, as the caller wrote them: the header is then read from them rather
        than from the file (which is opened only if the quick scan is unsure). On any
        failure the spooled file is removed and StoreError raised.
        """
        spooled = Path(spooled)
        try:
            if self._closed:
                raise StoreError("store is closed")
            # spool_dir() hands out the resolved tmp_dir, so a plain comparison suffices
            # (resolving on every instance showed up in profiles).
            if spooled.parent != self.tmp_dir and spooled.parent.resolve() != self.tmp_dir:
                raise StoreError(f"{spooled} is not in the store's spool folder {self.tmp_dir}")
            try:
                header = None
                if head is not None and size is not None and (sync is not None or not self._durable):
                    header = _scanned_header(head, len(head) >= size)
                if header is not None:
                    header, nbytes = _checked_header(header, source or str(spooled)), size
                    if self._durable:
                        # The flush may still be running (see _commit_overlapped).
                        return self._commit_overlapped(spooled, header, nbytes, source, sync)  # type: ignore[arg-type]
                else:
                    with open(spooled, "rb") as f:
                        header, nbytes = _read_file_header(f, source or str(spooled))
                        if self._durable:
                            if sync is not None:
                                sync()
                            else:
                                os.fsync(f.fileno())
            except OSError as exc:
                raise self._write_error(exc, spooled) from exc
        except BaseException:
            self._discard(spooled)
            raise
        return self._commit(spooled, header, nbytes, source)

    def _discard(self, tmp: Path) -> None:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            LOGGER.exception("cannot remove temp file %s", tmp)

    def _write_error(self, exc: OSError, what: Path) -> StoreError:
        if _is_full(exc):
            return StoreFullError(f"store {self.root} is full: {exc.strerror}")
        return StoreError(f"cannot write {what.name}: {exc}")

    def _commit(self, tmp: Path, header: _Header, nbytes: int, source: str) -> InstanceStored:
        """Move a complete, fsynced temp file into place and index it; the last step before an ack."""
        final = self.final_path(header.study_uid, header.series_uid, header.sop_instance_uid)
        try:
            self._ensure_dir(final.parent)
            os.replace(tmp, final)
        except OSError as exc:
            self._discard(tmp)
            raise self._write_error(exc, final) from exc
        if self._durable:
            try:
                _fsync_dir(final.parent)
            except OSError as exc:
                self._unstore(final)
                raise self._write_error(exc, final) from exc
        received_at = time.time()
        try:
            replaced_path = self._index(header, final, nbytes, received_at, source)
        except sqlite3.Error as exc:
            # The file is complete but not indexed; without the row it was never stored.
            LOGGER.error("index write failed for %s: %s", header.sop_instance_uid, exc)
            final.unlink(missing_ok=True)
            if isinstance(exc, sqlite3.OperationalError) and "full" in str(exc).lower():
                raise StoreFullError(f"index {self.index_path} is full: {exc}") from exc
            raise StoreError(f"cannot index instance: {exc}") from exc
        if replaced_path is not None and replaced_path != final:
            replaced_path.unlink(missing_ok=True)
        return _stored_event(header, final, nbytes, source, received_at)

    def _commit_overlapped(self, tmp: Path, header: _Header, nbytes: int, source: str,
                           sync: Callable[[], None]) -> InstanceStored:
        """``_commit`` for a file whose flush ``sync`` waits for (it may be running now on
        another thread): the index rows are written, uncommitted, while it runs.

        Order: rows written in an open transaction -> data on disk (``sync``) -> rename ->
        directory fsync -> commit. Nothing is visible to readers before the commit, and
        the commit comes last as in ``_commit``, so a crash leaves at most a complete,
        durable file without a row (indexed again by the next ``reconcile``), never a row
        without its file. While another thread holds the index, the flush is waited for
        first and ``_commit`` runs, so that several associations' fsyncs still overlap
        rather than queue behind one transaction.
        """
        final = self.final_path(header.study_uid, header.series_uid, header.sop_instance_uid)
        rel = str(final.relative_to(self.root))
        if not self._write_lock.acquire(blocking=False):
            try:
                sync()
            except OSError as exc:
                self._discard(tmp)
                raise self._write_error(exc, tmp) from exc
            return self._commit(tmp, header, nbytes, source)
        c = self._writer
        renamed = False
        old: Any = None
        try:
            try:
                self._ensure_dir(final.parent)
                received_at = time.time()
                c.execute("BEGIN IMMEDIATE")
                try:
                    old = self._index_rows(c, header, rel, nbytes, received_at, source)
                except sqlite3.Error as exc:
                    raise self._index_error(header, exc) from exc
                sync()
                os.replace(tmp, final)
                renamed = True
                _fsync_dir(final.parent)
                try:
                    self._commit_index(c)
                except sqlite3.Error as exc:
                    raise self._index_error(header, exc) from exc
            except OSError as exc:
                raise self._write_error(exc, final if renamed else tmp) from exc
        except BaseException:
            if c.in_transaction:
                try:
                    c.execute("ROLLBACK")
                except sqlite3.Error:
                    LOGGER.exception("rolling back the index of %s", header.sop_instance_uid)
            if not renamed:
                self._discard(tmp)
            elif old is None or old[3] != rel:
                # Never acknowledged: it must not turn up at the next reconcile. A file that
                # replaced an indexed copy of the same instance stays (that row is valid).
                self._discard(final)
            raise
        finally:
            self._write_lock.release()
        replaced_path = (self.root / old[3]) if old is not None else None
        if replaced_path is not None and replaced_path != final:
            replaced_path.unlink(missing_ok=True)
        return _stored_event(header, final, nbytes, source, received_at)

    def _index_error(self, header: _Header, exc: sqlite3.Error) -> StoreError:
        LOGGER.error("index write failed for %s: %s", header.sop_instance_uid, exc)
        if isinstance(exc, sqlite3.OperationalError) and "full" in str(exc).lower():
            return StoreFullError(f"index {self.index_path} is full: {exc}")
        return StoreError(f"cannot index instance: {exc}")

    def _commit_index(self, c: sqlite3.Connection) -> None:
        """Commit the open index transaction: the instance is stored from here on."""
        c.execute("COMMIT")

    def _unstore(self, final: Path) -> None:
        """Take back a file renamed into place whose name could not be made durable.

        The sender is told it was not stored, so it must not turn up later (a reconcile
        indexes every file it finds). Unless it replaced an instance already indexed
        under that name: that row stays, and the file holds the same instance again.
        """
        rel = str(final.relative_to(self.root))
        try:
            with self._write_lock:
                indexed = self._writer.execute("SELECT 1 FROM instances WHERE path=?", (rel,)).fetchone()
        except sqlite3.Error:
            indexed = None
        if indexed is None:
            self._discard(final)

    def _ensure_dir(self, directory: Path) -> None:
        if directory in self._known_dirs:
            return
        missing: list[Path] = []
        probe = directory
        while not probe.exists():
            missing.append(probe)
            probe = probe.parent
        directory.mkdir(parents=True, exist_ok=True)
        if self._durable:
            # A new directory entry is only durable once its parent is fsynced.
            for created in reversed(missing):
                _fsync_dir(created.parent)
        self._known_dirs.add(directory)

    def _index(self, h: _Header, path: Path, nbytes: int, now: float, source: str) -> Path | None:
        """Insert or replace the instance row and roll up counts. Returns a replaced file."""
        rel = str(path.relative_to(self.root))
        with self._write_lock:
            c = self._writer
            c.execute("BEGIN IMMEDIATE")
            try:
                old = self._index_rows(c, h, rel, nbytes, now, source)
                self._commit_index(c)
            except BaseException:
                c.execute("ROLLBACK")
                raise
        return (self.root / old[3]) if old is not None else None

    @staticmethod
    def _index_rows(c: sqlite3.Connection, h: _Header, rel: str, nbytes: int, now: float, source: str) -> Any:
        """Write an instance's rows in the open transaction; the row it replaced, if any."""
        old = c.execute(
            "SELECT series_uid, frames, bytes, path FROM instances WHERE sop_instance_uid=?",
            (h.sop_instance_uid,),
        ).fetchone()
        c.execute(
            "INSERT INTO patients(patient_id, patient_name) VALUES (?, ?) "
            "ON CONFLICT(patient_id) DO UPDATE SET patient_name="
            "CASE WHEN excluded.patient_name != '' THEN excluded.patient_name ELSE patient_name END",
            (h.patient_id, h.patient_name),
        )
        c.execute(
            "INSERT INTO studies(study_uid, patient_id, study_date, study_time, accession, description,"
            " first_received, last_received) VALUES (?, ?, ?, ?, ?, ?, ?, ?) "
            "ON CONFLICT(study_uid) DO UPDATE SET last_received=excluded.last_received",
            (h.study_uid, h.patient_id, h.study_date, h.study_time, h.accession,
             h.study_description, now, now),
        )
        if old is not None:
            c.execute(
                "UPDATE series SET instances=instances-1, frames=frames-?, bytes=bytes-? WHERE series_uid=?",
                (old[1], old[2], old[0]),
            )
        # One statement creates the series or counts the instance into it.
        c.execute(
            "INSERT INTO series(series_uid, study_uid, modality, sop_class_uid, series_number,"
            " description, instances, frames, bytes, first_received, last_received)"
            " VALUES (?, ?, ?, ?, ?, ?, 1, ?, ?, ?, ?) "
            "ON CONFLICT(series_uid) DO UPDATE SET last_received=excluded.last_received,"
            " instances=instances+1, frames=frames+excluded.frames, bytes=bytes+excluded.bytes",
            (h.series_uid, h.study_uid, h.modality, h.sop_class_uid, h.series_number,
             h.series_description, h.frames, nbytes, now, now),
        )
        c.execute(
            "INSERT OR REPLACE INTO instances(sop_instance_uid, series_uid, sop_class_uid, instance_number,"
            " frames, rows, columns, transfer_syntax, path, bytes, received_at, source)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (h.sop_instance_uid, h.series_uid, h.sop_class_uid, h.instance_number, h.frames,
             h.rows, h.columns, h.transfer_syntax, rel, nbytes, now, source),
        )
        return old

    # -- importing and rebuilding -----------------------------------------------------------

    def import_file(self, path: str | os.PathLike[str], *, source: str = "import") -> InstanceStored:
        """Store a file from disk as if it had been received. Raises StoreError naming it."""
        path = Path(path)
        try:
            raw = path.read_bytes()
        except OSError as exc:
            raise StoreError(f"{path}: cannot read: {exc.strerror}") from exc
        if len(raw) < 132 or raw[128:132] != b"DICM":
            raw = _to_part10(raw, path)
        try:
            return self.ingest([raw], source=source)
        except InvalidInstanceError as exc:
            raise InvalidInstanceError(f"{path}: {str(exc).split(': ', 1)[-1]}") from exc

    def import_paths(self, paths: Iterable[str | os.PathLike[str]]) -> ImportResult:
        """Import files and folders (recursively). A DICOM file that cannot be stored is an
        error naming it; a file that is not DICOM at all is only ignored."""
        result = ImportResult([], [], [])
        for file in expand_paths(paths):
            try:
                result.stored.append(self.import_file(file))
            except StoreFullError:
                raise
            except NotDicomError:
                result.ignored.append(file)
            except StoreError as exc:
                result.errors.append(str(exc))
        return result

    def _index_file(self, file: Path, source: str) -> None:
        """Index a file already under ``objects/`` (header only; moved if misplaced)."""
        with open(file, "rb") as f:
            header, _ = _read_file_header(f, str(file))
            st = os.fstat(f.fileno())
        expected = self.final_path(header.study_uid, header.series_uid, header.sop_instance_uid)
        if expected != file:
            LOGGER.warning("%s belongs at %s; moving it", file, expected)
            self._ensure_dir(expected.parent)
            os.replace(file, expected)
        self._index(header, expected, st.st_size, st.st_mtime, source)

    def rebuild_index(self) -> int:
        """Re-create every index row from the files under ``objects/``; return the count."""
        with self._write_lock:
            self._writer.executescript(
                "DELETE FROM instances; DELETE FROM series; DELETE FROM studies; DELETE FROM patients;"
            )
        count = 0
        for file in sorted(self.objects_dir.rglob("*.dcm")):
            try:
                self._index_file(file, "rebuild")
                count += 1
            except (StoreError, OSError) as exc:
                LOGGER.error("rebuild: skipping %s: %s", file, exc)
        LOGGER.info("rebuilt index of %s: %d instances", self.root, count)
        return count

    def reconcile(self) -> tuple[int, int]:
        """Make index and files agree after an unclean stop; return (indexed, dropped)."""
        indexed_paths = {
            row[0] for row in self._writer.execute("SELECT path FROM instances").fetchall()
        }
        on_disk = {str(p.relative_to(self.root)) for p in self.objects_dir.rglob("*.dcm")}
        added = 0
        for rel in sorted(on_disk - indexed_paths):
            file = self.root / rel
            try:
                self._index_file(file, "recovered")
                added += 1
            except (StoreError, OSError) as exc:
                LOGGER.error("reconcile: cannot index %s: %s", file, exc)
        dropped = 0
        for rel in sorted(indexed_paths - on_disk):
            LOGGER.error("reconcile: index row without file %s; dropping the row", rel)
            with self._write_lock:
                row = self._writer.execute(
                    "SELECT sop_instance_uid, series_uid, frames, bytes FROM instances WHERE path=?", (rel,)
                ).fetchone()
                if row is None:
                    continue
                self._writer.execute("BEGIN IMMEDIATE")
                self._writer.execute("DELETE FROM instances WHERE sop_instance_uid=?", (row[0],))
                self._writer.execute(
                    "UPDATE series SET instances=instances-1, frames=frames-?, bytes=bytes-? WHERE series_uid=?",
                    (row[2], row[3], row[1]),
                )
                self._writer.execute("COMMIT")
            dropped += 1
        if added or dropped:
            LOGGER.warning("reconciled store %s: %d files indexed again, %d rows dropped", self.root, added, dropped)
        return added, dropped

    # -- reading ------------------------------------------------------------------------------

    def series_list(self) -> list[SeriesRow]:
        """Every series, newest activity first."""
        rows = self._reader().execute(
            "SELECT p.patient_id, p.patient_name, st.study_uid, st.study_date, st.study_time, st.description,"
            " se.series_uid, se.series_number, se.modality, se.sop_class_uid, se.description, se.instances,"
            " se.frames, se.bytes, se.first_received, se.last_received"
            " FROM series se JOIN studies st ON st.study_uid = se.study_uid"
            " JOIN patients p ON p.patient_id = st.patient_id"
            " ORDER BY se.last_received DESC"
        ).fetchall()
        return [SeriesRow(*row) for row in rows]

    def series(self, series_uid: str) -> SeriesRow | None:
        for row in self.series_list():
            if row.series_uid == series_uid:
                return row
        return None

    def instances(self, series_uid: str) -> list[InstanceRow]:
        """The instances of a series, in instance-number order (geometry sorting is the volume's job)."""
        rows = self._reader().execute(
            "SELECT sop_instance_uid, series_uid, sop_class_uid, instance_number, frames, path, bytes,"
            " transfer_syntax FROM instances WHERE series_uid=?"
            " ORDER BY instance_number IS NULL, instance_number, received_at",
            (series_uid,),
        ).fetchall()
        return [
            InstanceRow(r[0], r[1], r[2], r[3], r[4], self.root / r[5], r[6], r[7]) for r in rows
        ]

    def instances_of_class(self, sop_class_uid: str) -> list[InstanceRow]:
        """Every instance of one SOP class (e.g. all TDRs), oldest first."""
        rows = self._reader().execute(
            "SELECT sop_instance_uid, series_uid, sop_class_uid, instance_number, frames, path, bytes,"
            " transfer_syntax, received_at FROM instances WHERE sop_class_uid=? ORDER BY received_at",
            (sop_class_uid,),
        ).fetchall()
        return [InstanceRow(r[0], r[1], r[2], r[3], r[4], self.root / r[5], r[6], r[7], r[8]) for r in rows]

    def series_of_instance(self, sop_instance_uid: str) -> str | None:
        """The series an instance belongs to, if it is in the store."""
        row = self._reader().execute(
            "SELECT series_uid FROM instances WHERE sop_instance_uid=?", (sop_instance_uid,)).fetchone()
        return row[0] if row else None

    def count_instances(self) -> int:
        return int(self._reader().execute("SELECT count(*) FROM instances").fetchone()[0])

    # -- scan state, deletion, eviction and export (the cache browser's needs) ----------------

    def _set_state(self, series_uid: str, column: str, value: object) -> None:
        with self._write_lock:
            self._writer.execute(
                f"INSERT INTO scan_state(series_uid, {column}) VALUES (?, ?) "
                f"ON CONFLICT(series_uid) DO UPDATE SET {column}=excluded.{column}",
                (series_uid, value),
            )

    def pin(self, series_uid: str, pinned: bool = True) -> None:
        """Pin (never evict) or unpin a scan. Any thread."""
        self._set_state(series_uid, "pinned", 1 if pinned else 0)

    def touch(self, series_uid: str, now: float | None = None) -> None:
        """Record that a scan was opened now (LRU order for eviction; no longer pending). Any thread."""
        self._set_state(series_uid, "last_access", time.time() if now is None else float(now))

    def set_decision(self, series_uid: str, decision: str) -> None:
        """Remember the analyst's decision for a scan (CLEAR, SUSPECT, THREAT; "" for none)."""
        self._set_state(series_uid, "decision", decision.upper())

    def scan_states(self) -> dict[str, tuple[bool, float | None, str]]:
        """series UID -> (pinned, last access, decision) for every scan with any state."""
        rows = self._reader().execute("SELECT series_uid, pinned, last_access, decision FROM scan_state")
        return {r[0]: (bool(r[1]), r[2], r[3]) for r in rows}

    def browse_rows(self) -> list[tuple[Any, ...]]:
        """Every series with what the cache browser shows, in one query (fast for 10,000s).

        Columns: series_uid, patient_id, patient_name, study_uid, study_date, study
        description, modality, series description, instances, frames, bytes,
        first_received, last_received, pinned, last_access, decision, source.
        """
        return self._reader().execute(
            "SELECT se.series_uid, p.patient_id, p.patient_name, st.study_uid, st.study_date, st.description,"
            " se.modality, se.description, se.instances, se.frames, se.bytes, se.first_received,"
            " se.last_received, coalesce(ss.pinned, 0), ss.last_access, coalesce(ss.decision, ''),"
            " coalesce((SELECT i.source FROM instances i WHERE i.series_uid = se.series_uid LIMIT 1), '')"
            " FROM series se JOIN studies st ON st.study_uid = se.study_uid"
            " JOIN patients p ON p.patient_id = st.patient_id"
            " LEFT JOIN scan_state ss ON ss.series_uid = se.series_uid"
            " ORDER BY se.last_received DESC"
        ).fetchall()

    def delete_series(self, series_uid: str, *, in_use: bool = False, now: float | None = None) -> int:
        """Delete a scan's index rows and then its files; return how many files went.

        Refused (StoreError) when the caller says it is in use (open in a viewer) or when
        an instance arrived within ``RECEIVING_GRACE_S`` (it is probably still being
        received). The rows go first in one transaction, so a reader never finds a row
        without its file; only the files those rows named are removed, so an instance that
        arrives meanwhile (a new row and file) is never lost. Any thread.
        """
        if in_use:
            raise StoreError(f"series {series_uid} is in use")
        now = time.time() if now is None else now
        with self._write_lock:
            c = self._writer
            c.execute("BEGIN IMMEDIATE")
            try:
                row = c.execute("SELECT study_uid, last_received FROM series WHERE series_uid=?",
                                (series_uid,)).fetchone()
                if row is None:
                    c.execute("ROLLBACK")
                    return 0
                if now - row[1] < RECEIVING_GRACE_S:
                    raise StoreError(f"series {series_uid} is still being received")
                paths = [r[0] for r in c.execute("SELECT path FROM instances WHERE series_uid=?", (series_uid,))]
                c.execute("DELETE FROM instances WHERE series_uid=?", (series_uid,))
                c.execute("DELETE FROM series WHERE series_uid=?", (series_uid,))
                c.execute("DELETE FROM scan_state WHERE series_uid=?", (series_uid,))
                study_uid = row[0]
                if c.execute("SELECT 1 FROM series WHERE study_uid=? LIMIT 1", (study_uid,)).fetchone() is None:
                    pid = c.execute("SELECT patient_id FROM studies WHERE study_uid=?", (study_uid,)).fetchone()
                    c.execute("DELETE FROM studies WHERE study_uid=?", (study_uid,))
                    if pid is not None and c.execute(
                            "SELECT 1 FROM studies WHERE patient_id=? LIMIT 1", (pid[0],)).fetchone() is None:
                        c.execute("DELETE FROM patients WHERE patient_id=?", (pid[0],))
                c.execute("COMMIT")
            except BaseException:
                c.execute("ROLLBACK")
                raise
        removed = 0
        dirs: set[Path] = set()
        for rel in paths:
            file = self.root / rel
            try:
                file.unlink()
                removed += 1
            except FileNotFoundError:
                pass
            except OSError as exc:
                LOGGER.error("delete %s: cannot remove %s: %s", series_uid, file, exc)
            dirs.add(file.parent)
        for d in sorted(dirs, key=lambda p: len(p.parts), reverse=True):
            for level in (d, d.parent, d.parent.parent):  # series, study, study prefix
                if level == self.objects_dir:
                    break
                try:
                    level.rmdir()  # only if empty: something new may have arrived
                    self._known_dirs.discard(level)
                except OSError:
                    break
        LOGGER.info("deleted series %s (%d files)", series_uid, removed)
        return removed

    def stored_scans(self, now: float, *, in_use: Iterable[str] = (), alarmed: Iterable[str] = (),
                     pending_window_s: float = PENDING_WINDOW_S) -> list[Any]:
        """Every series as a ``cache.StoredScan`` for ``plan_eviction``.

        Pending triage (never evicted) means: no decision recorded, never opened, and
        received less than ``pending_window_s`` before ``now``. Unresolved alarms come
        from the caller (the GUI's ``AlertBook``), as does ``in_use`` (open in a viewer);
        a series still receiving (last instance within ``RECEIVING_GRACE_S``) counts as
        in use too. ``last_access`` is the last open, else the last instance received.
        """
        from station.core.remote.querycache import StoredScan

        in_use, alarmed = set(in_use), set(alarmed)
        scans = []
        for r in self.browse_rows():
            uid, nbytes, first, last, pinned, access, decision = r[0], r[10], r[11], r[12], r[13], r[14], r[15]
            pending = not decision and access is None and now - first < pending_window_s
            scans.append(StoredScan(
                uid=uid, nbytes=int(nbytes), last_access=access if access is not None else last,
                received_at=first, pending_triage=pending, unresolved_alarms=uid in alarmed,
                pinned=bool(pinned), in_use=uid in in_use or now - last < RECEIVING_GRACE_S,
            ))
        return scans

    def evict(self, quota_bytes: int | None, max_age_s: float | None, now: float | None = None,
              protected: Iterable[str] = (), *, alarmed: Iterable[str] = (),
              reports: Mapping[str, Iterable[str]] | None = None,
              pending_window_s: float = PENDING_WINDOW_S) -> list[str]:
        """Apply ``cache.plan_eviction``: delete scans over the age limit, then least recently
        used ones until the store fits ``quota_bytes``. Return the deleted series UIDs.

        ``protected``: series in use (open in a viewer, being exported); ``alarmed``:
        series with unresolved alarms. Pinned and pending scans (see ``stored_scans``)
        are never evicted. ``reports`` maps a scan to the series of its TDRs: they are
        planned as one unit with it (their bytes count with the scan's, and they go when
        it goes, after it), so no alarm outlives its scan and no scan loses its reports. Each deletion re-checks "still receiving" inside its own
        transaction, so a scan whose instances start arriving after planning survives.
        Called from a maintenance thread or the process that owns the store.
        """
        from station.core.remote.querycache import plan_eviction

        now = time.time() if now is None else now
        protected = set(protected)
        scans = self.stored_scans(now, in_use=protected, alarmed=alarmed, pending_window_s=pending_window_s)
        units, members = _eviction_units(scans, reports or {})
        deleted = []
        for item in plan_eviction(units, quota_bytes, max_age_s, now):
            uid = item.scan.uid
            try:
                self.delete_series(uid, in_use=uid in protected, now=now)
            except StoreError as exc:
                LOGGER.warning("evict: kept %s and its reports: %s", uid, exc)
                continue
            deleted.append(uid)
            for report in members.get(uid, ()):
                try:
                    self.delete_series(report, in_use=report in protected, now=now)
                    deleted.append(report)
                except StoreError as exc:  # arrived just now: the next pass takes it
                    LOGGER.warning("evict: kept report series %s of %s: %s", report, uid, exc)
            LOGGER.info("evicted series %s with %d report series (%s, %d bytes)", uid,
                        len(members.get(uid, ())), item.reason.value, item.scan.nbytes)
        return deleted

    def export_series(self, series_uid: str, dest: str | os.PathLike[str]) -> Path:
        """Copy a scan's files into folder ``dest`` (a subfolder per scan) or, if ``dest``
        ends in ``.zip``, into that zip archive (appended to if it exists). Returns the
        folder or archive written. Any thread (a worker for big scans).
        """
        import re
        import shutil
        import zipfile

        row = self.series(series_uid)
        if row is None:
            raise StoreError(f"no series {series_uid} in the store")
        # Names from peer text are only used after reducing them to a safe alphabet.
        label = re.sub(r"[^A-Za-z0-9._-]+", "_", row.patient_id or "scan")[:40].strip("._") or "scan"
        folder = f"{label}_{row.modality or 'XX'}_{uid_token(series_uid)[:8]}"
        files = self.instances(series_uid)
        dest = Path(dest)
        try:
            if dest.suffix.lower() == ".zip":
                dest.parent.mkdir(parents=True, exist_ok=True)
                with zipfile.ZipFile(dest, "a", compression=zipfile.ZIP_STORED) as zf:
                    for n, inst in enumerate(files, 1):
                        zf.write(inst.path, f"{folder}/IM{n:06d}.dcm")
                return dest
            out = dest / folder
            out.mkdir(parents=True, exist_ok=True)
            for n, inst in enumerate(files, 1):
                shutil.copyfile(inst.path, out / f"IM{n:06d}.dcm")
            return out
        except OSError as exc:
            raise StoreError(f"cannot export {series_uid} to {dest}: {exc}") from exc

    def add_index_rows(self, rows: Iterable[SeriesRow], *, source: str = "bench") -> int:
        """Index series without files, in one transaction: only for benchmarks and UI
        tests that need tens of thousands of scans quickly. Never used with real data
        (the rows have no instances, so ``reconcile`` leaves them and viewers show nothing).
        """
        count = 0
        with self._write_lock:
            c = self._writer
            c.execute("BEGIN IMMEDIATE")
            try:
                for r in rows:
                    c.execute("INSERT OR IGNORE INTO patients(patient_id, patient_name) VALUES (?, ?)",
                              (r.patient_id, r.patient_name))
                    c.execute(
                        "INSERT OR IGNORE INTO studies(study_uid, patient_id, study_date, study_time, accession,"
                        " description, first_received, last_received) VALUES (?, ?, ?, ?, '', ?, ?, ?)",
                        (r.study_uid, r.patient_id, r.study_date, r.study_time, r.study_description,
                         r.first_received, r.last_received))
                    c.execute(
                        "INSERT OR REPLACE INTO series(series_uid, study_uid, modality, sop_class_uid, series_number,"
                        " description, instances, frames, bytes, first_received, last_received)"
                        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        (r.series_uid, r.study_uid, r.modality, r.sop_class_uid, r.series_number, r.description,
                         r.instances, r.frames, r.bytes, r.first_received, r.last_received))
                    count += 1
                c.execute("COMMIT")
            except BaseException:
                c.execute("ROLLBACK")
                raise
        return count


def _to_part10(raw: bytes, origin: Path) -> bytes:
    """Give a bare dataset (no preamble or file meta) a proper Part 10 wrapper.
    NotDicomError when the bytes are not a dataset with SOP Class and Instance UIDs."""
    try:
        ds = pydicom.dcmread(io.BytesIO(raw), force=True)
        has_uids = "SOPInstanceUID" in ds and "SOPClassUID" in ds
    except Exception as exc:  # pydicom raises many types for garbage input
        raise NotDicomError(f"{origin}: not a DICOM file: {exc}") from exc
    if not has_uids:
        raise NotDicomError(f"{origin}: not a DICOM file (no SOP Class/Instance UID)")
    try:
        ds.ensure_file_meta()
        meta = ds.file_meta
        meta.MediaStorageSOPClassUID = ds.SOPClassUID
        meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        if "TransferSyntaxUID" not in meta:
            meta.TransferSyntaxUID = (
                pydicom.uid.ImplicitVRLittleEndian if ds.is_implicit_VR in (True, None)
                else pydicom.uid.ExplicitVRLittleEndian
            )
        out = io.BytesIO()
        ds.save_as(out, enforce_file_format=True)
        return out.getvalue()
    except Exception as exc:  # a dataset, but one pydicom cannot write back
        raise InvalidInstanceError(f"{origin}: a bare dataset that cannot be stored: {exc}") from exc


def _eviction_units(scans: list[Any], reports: Mapping[str, Iterable[str]]) -> tuple[list[Any], dict[str, list[str]]]:
    """Fold each scan's report series into one ``StoredScan`` unit (bytes summed, in use or
    protected if any member is); reports whose scan is not stored stay units of their own.
    Returns the units and, per scan, its report series."""
    from dataclasses import replace

    by_uid = {s.uid: s for s in scans}
    members = {scan: sorted(r for r in reps if r in by_uid and r != scan)
               for scan, reps in reports.items() if scan in by_uid}
    owned = {r for reps in members.values() for r in reps}
    units = []
    for s in scans:
        if s.uid in owned:
            continue
        parts = [by_uid[r] for r in members.get(s.uid, ())]
        if parts:
            s = replace(s, nbytes=s.nbytes + sum(p.nbytes for p in parts),
                        in_use=s.in_use or any(p.in_use for p in parts),
                        pinned=s.pinned or any(p.pinned for p in parts),
                        unresolved_alarms=s.unresolved_alarms or any(p.unresolved_alarms for p in parts))
        units.append(s)
    return units, members
