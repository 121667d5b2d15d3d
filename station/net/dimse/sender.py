"""C-STORE sender: many files over one association (``station send``, the simulator).

Files are sent as they are on disk (pynetdicom's chunked send), never decoded, in the
transfer syntax they were written in.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import pydicom
from pydicom.errors import InvalidDicomError
from pynetdicom import AE, _config
from pynetdicom.presentation import build_context

from station.core.dicom.files import expand_paths
from station.net.dimse.pynetdicom_ext import reactor
from station.net.dimse.sopclasses import register_dicos_sop_classes

LOGGER = logging.getLogger(__name__)

MAX_CONTEXTS = 128  # the DICOM upper layer limit for one association


class SendError(RuntimeError):
    """The association could not be established at all; the message names the peer."""


@dataclass
class SendResult:
    """What happened to each file of one ``send_files`` call."""

    sent: list[Path] = field(default_factory=list)
    failed: list[tuple[Path, str]] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.failed


def _sop_and_syntax(path: Path) -> tuple[str, str]:
    ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["SOPClassUID"])
    sop_class = str(ds.file_meta.get("MediaStorageSOPClassUID", "") or ds.get("SOPClassUID", ""))
    syntax = str(ds.file_meta.get("TransferSyntaxUID", ""))
    if not sop_class or not syntax:
        raise ValueError("no SOP class or transfer syntax in its file meta")
    return sop_class, syntax


def send_files(
    host: str,
    port: int,
    paths: Iterable[str | os.PathLike[str]],
    *,
    calling_aet: str = "STATION",
    called_aet: str = "ANY-SCP",
    timeout: float = 30.0,
) -> SendResult:
    """Send every file over one association; return per-file results.

    Runs on the caller's thread and blocks until done. Raises SendError if the peer
    cannot be reached or rejects the association; a file the peer refuses is recorded in
    ``failed`` with its status and the rest are still sent.
    """
    try:
        reactor.install()
    except reactor.UnsupportedPynetdicomError as exc:
        raise SendError(str(exc)) from exc
    register_dicos_sop_classes()
    # Send files as they are on disk instead of decoding and re-encoding them.
    _config.STORE_SEND_CHUNKED_DATASET = True
    _config.LOG_HANDLER_LEVEL = "none"
    result = SendResult()
    started = time.perf_counter()
    files: list[tuple[Path, str, str]] = []
    for path in expand_paths(paths):
        try:
            sop_class, syntax = _sop_and_syntax(path)
        except (InvalidDicomError, OSError, ValueError, AttributeError) as exc:
            result.failed.append((path, f"not sendable: {exc}"))
            continue
        files.append((path, sop_class, syntax))
    if not files:
        result.seconds = time.perf_counter() - started
        return result
    pairs = sorted({(s, t) for _, s, t in files})
    if len(pairs) > MAX_CONTEXTS:
        raise SendError(f"{len(pairs)} distinct SOP class/transfer syntax pairs; at most {MAX_CONTEXTS} per association")
    ae = AE(ae_title=calling_aet)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
    ae.connection_timeout = timeout
    ae.requested_contexts = [build_context(s, [t]) for s, t in pairs]
    assoc = ae.associate(host, port, ae_title=called_aet)
    if not assoc.is_established:
        why = "rejected" if assoc.is_rejected else "aborted" if assoc.is_aborted else "could not connect"
        raise SendError(f"association with {called_aet} at {host}:{port} {why}")
    try:
        for path, _, _ in files:
            if not assoc.is_established:
                result.failed.append((path, "association ended"))
                continue
            try:
                status = assoc.send_c_store(path)
            except (ValueError, AttributeError, OSError, RuntimeError) as exc:
                result.failed.append((path, str(exc)))
                continue
            code = int(status.get("Status", -1)) if status is not None else -1
            if status is None or "Status" not in status:
                result.failed.append((path, "no response (timeout or abort)"))
            elif code in (0x0000, 0xB000, 0xB006, 0xB007):
                result.sent.append(path)
            else:
                comment = status.get("ErrorComment", "")
                result.failed.append((path, f"status 0x{code:04X} {comment}".strip()))
    finally:
        if assoc.is_established:
            assoc.release()
    result.seconds = time.perf_counter() - started
    for path, why in result.failed:
        LOGGER.warning("send to %s:%d failed for %s: %s", host, port, path, why)
    return result
