"""Where pynetdicom writes a received dataset: straight into a spool file of the store
(``station.core.store.spool``), with the file meta encoded by hand. Patched into
pynetdicom by ``reactor.install``."""


from __future__ import annotations

import logging
import os
import re
import struct
import tempfile
import threading
from typing import Any

import pynetdicom
from pynetdicom import dimse_messages as _dimse_messages



from station.core.store.spool import SpoolFile
from station.net.dimse.pynetdicom_ext.cstore import _ui

LOGGER = logging.getLogger(__name__)

# -- spooling received datasets -----------------------------------------------------------------

# The DUL thread of an association learns where to spool from its AE (set by the receiver).
_spool = threading.local()
SPOOL_DIR_ATTRIBUTE = "_station_spool_dir"

_AET_UNSAFE = re.compile(r"[^\x20-\x5b\x5d-\x7e]")  # printable ASCII except backslash


def safe_aet(text: str) -> str:
    """A peer's AE title made safe to write into a file's meta (ASCII, no backslash, 16 chars)."""
    return _AET_UNSAFE.sub("_", text.strip())[:16]


_original_create_file_meta = _dimse_messages.create_file_meta
_original_write_file_meta_info = _dimse_messages.write_file_meta_info


def _explicit_le(group_element: int, vr: bytes, value: bytes) -> bytes:
    """One explicit VR little endian element with a 16-bit length (OB: reserved + 32-bit)."""
    head = struct.pack("<HH", group_element >> 16, group_element & 0xFFFF) + vr
    if vr == b"OB":
        return head + b"\x00\x00" + struct.pack("<L", len(value)) + value
    return head + struct.pack("<H", len(value)) + value


def encode_file_meta(sop_class_uid: str, sop_instance_uid: str, transfer_syntax: str,
                     source_aet: str = "") -> bytes:
    """The File Meta Information group pynetdicom writes for a received dataset.

    Byte for byte what ``pydicom.filewriter.write_file_meta_info`` writes for pynetdicom's
    ``create_file_meta`` (plus Source AE Title if given), without building a pydicom
    dataset, which cost about 0.3 ms per instance (tests/net/test_reactor.py compares).
    Raises UnicodeEncodeError for values that are not ASCII (the caller lets pydicom
    handle those).
    """
    def text(value: str) -> bytes:
        raw = value.encode("ascii")
        return raw + b" " if len(raw) % 2 else raw

    body = b"".join((
        _explicit_le(0x00020001, b"OB", b"\x00\x01"),
        _explicit_le(0x00020002, b"UI", _ui(sop_class_uid)),
        _explicit_le(0x00020003, b"UI", _ui(sop_instance_uid)),
        _explicit_le(0x00020010, b"UI", _ui(transfer_syntax)),
        _explicit_le(0x00020012, b"UI", _ui(pynetdicom.PYNETDICOM_IMPLEMENTATION_UID)),
        _explicit_le(0x00020013, b"SH", text(pynetdicom.PYNETDICOM_IMPLEMENTATION_VERSION)),
        _explicit_le(0x00020016, b"AE", text(source_aet)) if source_aet else b"",
    ))
    return _explicit_le(0x00020000, b"UL", struct.pack("<L", len(body))) + body


class _EncodedFileMeta:
    """Stands in for the FileMetaDataset pynetdicom passes on to write_file_meta_info."""

    __slots__ = ("encoded",)

    def __init__(self, encoded: bytes) -> None:
        self.encoded = encoded


def _create_file_meta(*, sop_class_uid: str, sop_instance_uid: str, transfer_syntax: str) -> Any:
    """pynetdicom's file meta for a spooled dataset, plus the sender's AE title (as Part 10 intends)."""
    assoc = getattr(_spool, "assoc", None)
    spooling = assoc is not None and getattr(_spool, "directory", None) is not None
    aet = safe_aet(str(assoc.requestor.ae_title or "")) if spooling else ""
    if spooling:
        try:
            return _EncodedFileMeta(encode_file_meta(sop_class_uid, sop_instance_uid, transfer_syntax, aet))
        except UnicodeEncodeError:
            pass  # a hostile UID: pydicom's writer decides what becomes of it
    meta = _original_create_file_meta(
        sop_class_uid=sop_class_uid, sop_instance_uid=sop_instance_uid, transfer_syntax=transfer_syntax)
    if aet:
        meta.SourceApplicationEntityTitle = aet
    return meta


def _write_file_meta_info(fp: Any, file_meta: Any, enforce_standard: bool = True) -> None:
    if isinstance(file_meta, _EncodedFileMeta):
        fp.write(file_meta.encoded)
        return
    _original_write_file_meta_info(fp, file_meta, enforce_standard)


def _named_temporary_file(*args: Any, **kwargs: Any) -> Any:
    """Stand-in for the NamedTemporaryFile pynetdicom's chunked C-STORE receive opens."""
    directory = getattr(_spool, "directory", None)
    if directory is None:
        return tempfile.NamedTemporaryFile(*args, **kwargs)
    _spool.wanted = True
    ready, _spool.ready = getattr(_spool, "ready", None), None
    return ready if ready is not None else SpoolFile(directory)


def _prepare_spool_file() -> None:
    """Create the spool file for the association's next C-STORE now (DUL thread).

    Creating a file right after the previous instance's fsyncs costs about a tenth to a
    quarter of a millisecond (the journal is busy), on the path between the sender's
    request and our answer. Done once a message is complete, it overlaps with that
    message's handler on the association thread, or, when the DUL thread served it
    itself, with the sender's turnaround after our answer. An unused one is removed when
    the association ends, or with the other leftovers of a crash when the store is next
    opened.
    """
    _spool.wanted = False
    try:
        _spool.ready = SpoolFile(_spool.directory)
    except OSError as exc:  # no inode or descriptor left: the next C-STORE meets it itself
        LOGGER.debug("cannot prepare a spool file: %s", exc)


def _discard_ready_spool_file() -> None:
    ready, _spool.ready = getattr(_spool, "ready", None), None
    if ready is not None:
        ready.close()
        try:
            os.unlink(ready.name)
        except OSError as exc:
            LOGGER.warning("cannot remove unused spool file %s: %s", ready.name, exc)


