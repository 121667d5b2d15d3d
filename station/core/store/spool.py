"""Spool files: where a received dataset is written as it arrives, flushed durably
(fdatasync, or glibc's aio_fsync on its own I/O thread) before the store renames it
into place. Pure file I/O (no pynetdicom): the receiver's DIMSE layer writes into it
(station.net.dimse.pynetdicom_ext.spooling).
"""


from __future__ import annotations

import ctypes
import ctypes.util
import errno
import logging
import os
import secrets
import struct
import sys
import threading
import time
from pathlib import Path
from typing import Any


from station.core.store.store import HEADER_SCAN_BYTES


LOGGER = logging.getLogger(__name__)

# Start kernel writeback once this much is buffered, so the final fsync has little left.
WRITEBACK_CHUNK = 256 * 1024
_SYNC_FILE_RANGE_WRITE = 2


def _load_sync_file_range() -> Any:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        fn = libc.sync_file_range
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_longlong, ctypes.c_longlong, ctypes.c_uint]
    return fn


_sync_file_range = _load_sync_file_range()
_fdatasync = getattr(os, "fdatasync", os.fsync)


class _Aio:
    """glibc's POSIX AIO, for one thing: ``aio_fsync(O_DSYNC)``, an fdatasync run on glibc's
    own I/O thread while the caller goes on.

    A Python thread could not start the flush in time: it needs the GIL to call
    fdatasync, and the DUL thread holds it (running the handler's Python code) until it
    waits for that very flush. glibc's thread needs no GIL. ``struct aiocb`` is laid out
    here by hand (fd at 0, sigevent.sigev_notify at 44, 168 bytes), which is right for
    glibc on the 64-bit Linux ABIs listed; anywhere else this is None and the spool
    file is flushed with a plain fdatasync as before.
    """

    SIZE = 168
    NOTIFY_OFFSET = 44
    SIGEV_NONE = 1
    EINPROGRESS = errno.EINPROGRESS

    def __init__(self, libc: Any) -> None:
        self.fsync = libc.aio_fsync
        self.fsync.argtypes = [ctypes.c_int, ctypes.c_void_p]
        self.error = libc.aio_error
        self.error.argtypes = [ctypes.c_void_p]
        self.result = libc.aio_return
        self.result.argtypes = [ctypes.c_void_p]
        self.result.restype = ctypes.c_ssize_t
        self.suspend = libc.aio_suspend
        self.suspend.argtypes = [ctypes.POINTER(ctypes.c_void_p), ctypes.c_int, ctypes.c_void_p]

    def start(self, fd: int) -> Any:
        """Queue an fdatasync of ``fd``; the control block to wait on, or None if it was not queued."""
        cb = ctypes.create_string_buffer(self.SIZE)
        struct.pack_into("i", cb, 0, fd)
        struct.pack_into("i", cb, self.NOTIFY_OFFSET, self.SIGEV_NONE)
        return cb if self.fsync(os.O_DSYNC, cb) == 0 else None

    def wait(self, cb: Any, timeout: float) -> int | None:
        """Wait for a queued flush; 0 once it succeeded, its errno if it failed, None on time-out."""
        deadline = time.monotonic() + timeout
        pending = (ctypes.c_void_p * 1)(ctypes.addressof(cb))
        while True:
            err = self.error(cb)
            if err != self.EINPROGRESS:
                self.result(cb)  # frees glibc's record of the request
                return err
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            whole = int(left)
            timespec = struct.pack("ll", whole, int((left - whole) * 1e9))
            self.suspend(pending, 1, ctypes.c_char_p(timespec))  # EINTR or EAGAIN: look again


def _load_aio() -> _Aio | None:
    import platform

    if not sys.platform.startswith("linux") or platform.machine() not in ("x86_64", "aarch64") \
            or platform.libc_ver()[0] != "glibc" or ctypes.sizeof(ctypes.c_void_p) != 8:
        return None
    for name in (ctypes.util.find_library("c") or "libc.so.6", ctypes.util.find_library("rt")):
        if not name:
            continue
        try:
            return _Aio(ctypes.CDLL(name, use_errno=True))
        except (OSError, AttributeError):
            continue
    return None


_aio = _load_aio()
_SPOOL_OPEN_FLAGS = (os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
                     | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0))
# Longest the association thread waits for the DUL thread's flush of a spool file.
SYNC_WAIT_S = 60.0


class SpoolFile:
    """Where pynetdicom's chunked receive writes one C-STORE dataset (Part 10, with meta).

    It lives in the store's own temp folder, so the store can adopt it with a rename
    instead of a copy, and the kernel starts writing it to disk while the rest of the
    instance is still arriving, so the fsync before the acknowledgement has little left
    to do. A write error (disk full) is remembered rather than raised: raising on the DUL
    thread would abort the association, and the sender must get a status instead.
    """

    def __init__(self, directory: Path) -> None:
        # What mkstemp does (a new file only we can read), without its name generator and
        # path handling, which cost more than creating the file.
        while True:
            name = os.path.join(directory, f"tmp{secrets.token_hex(8)}.part")
            try:
                fd = os.open(name, _SPOOL_OPEN_FLAGS, 0o600)
                break
            except FileExistsError:
                continue
        self.name = name
        self._fd = fd
        self.file = self  # pynetdicom calls ``.file.flush()`` after each fragment
        self.error: OSError | None = None
        # The file's first bytes as written, for the store's header scan (no re-read).
        self.head = bytearray()
        self._written = 0
        self._flushed_to = 0
        # Set (before the message is queued) when the DUL thread will flush the file itself
        # once the message is complete; _synced is set when that flush has ended.
        self.sync_pending = False
        self._synced = threading.Event()
        # The control block of a flush started with start_flush (glibc's I/O thread).
        self._aio_cb: Any = None

    def write(self, data: bytes | bytearray | memoryview) -> int:
        if self.error is not None or self._fd < 0:
            return len(data)
        view = memoryview(data).cast("B")
        if len(self.head) < HEADER_SCAN_BYTES:
            self.head += view[:HEADER_SCAN_BYTES - len(self.head)]
        try:
            done = 0
            while done < len(view):
                done += os.write(self._fd, view[done:])
        except OSError as exc:
            self.error = exc
            return len(data)
        self._written += done
        if _sync_file_range is not None and self._written - self._flushed_to >= WRITEBACK_CHUNK:
            _sync_file_range(self._fd, self._flushed_to, self._written - self._flushed_to, _SYNC_FILE_RANGE_WRITE)
            self._flushed_to = self._written
        return done

    @property
    def size(self) -> int:
        """Bytes written so far (the whole file once its message is complete)."""
        return self._written

    def flush(self) -> None:
        return None

    def fileno(self) -> int:
        return self._fd

    def finish(self) -> None:
        """Flush the complete file to disk (DUL thread, right after queueing its message).

        The association thread meanwhile wakes up and reads the header; ``sync`` waits for
        this. A failure is remembered, like a write error.
        """
        try:
            if self.error is None and self._fd >= 0:
                try:
                    _fdatasync(self._fd)
                except OSError as exc:
                    self.error = exc
        finally:
            self._synced.set()

    def start_flush(self) -> None:
        """Start flushing the complete file in the background (DUL thread, served directly).

        The flush then runs while the DUL thread builds the event and reads the header, up
        to ``sync``, which waits for it: most of the fdatasync is off the critical path.
        Without POSIX AIO, ``sync`` flushes as before.
        """
        if _aio is not None and self.error is None and self._fd >= 0 and self._aio_cb is None:
            self._aio_cb = _aio.start(self._fd)

    def _wait_for_flush(self) -> None:
        """Wait for the flush start_flush began; remember its failure like a write error."""
        cb, self._aio_cb = self._aio_cb, None
        err = _aio.wait(cb, SYNC_WAIT_S)  # type: ignore[union-attr]  # cb only exists with _aio
        if err is None:
            self._aio_cb = cb  # still running: close must not free the descriptor under it
            raise OSError(errno.ETIMEDOUT, "the spool file was not flushed in time")
        if err and self.error is None:
            self.error = OSError(err, os.strerror(err))

    def sync(self) -> None:
        """Return once the file's data and size are on disk; raise the OSError if they cannot be.

        Called by the store (association thread) before it renames the file into place.
        fdatasync suffices: it also flushes the metadata needed to read the data back,
        such as the size of this new file; timestamps are not needed.
        """
        if self._aio_cb is not None:
            self._wait_for_flush()
        elif self.sync_pending:
            if not self._synced.wait(SYNC_WAIT_S):
                raise OSError(errno.ETIMEDOUT, "the spool file was not flushed in time")
        elif self.error is None:
            _fdatasync(self._fd)
        if self.error is not None:
            raise self.error

    def close(self) -> None:
        if self._aio_cb is not None:
            try:
                self._wait_for_flush()
            except OSError:
                LOGGER.error("spool file %s is still being flushed; leaving its descriptor open", self.name)
                return
        if self.sync_pending:
            self._synced.wait(SYNC_WAIT_S)  # never close the descriptor under a running flush
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


