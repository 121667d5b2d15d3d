"""DIMSE access to archives without DICOMweb: C-FIND, C-GET and C-MOVE (Study Root).

* ``find_studies`` / ``find_series`` / ``find_instances``: C-FIND at STUDY, SERIES and
  IMAGE level, answers as pydicom Datasets;
* ``get_series``: C-GET of one series over one association; the archive sends the
  instances back on the same association (no port of ours needs to be reachable), each
  written as a Part 10 file to ``out_dir`` as it arrives (``on_instance`` is told);
* ``move_series``: C-MOVE of one series to a named AE (the station's own receiver, or
  any node the archive knows: the archive must have that AE declared).

One association per call, released at the end. The pynetdicom threads of that
association end with it, so nothing outlives a call.

Threads: each call blocks the calling thread (never the GUI thread). C-GET's storage
handler runs on pynetdicom's association thread and only writes a file.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGLosslessSV1,
    JPEGLSLossless,
    RLELossless,
)
from pynetdicom import AE, _config, build_role, evt
from pynetdicom.sop_class import (
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
)

from station.core.remote.remotes import RemoteSettings
from station.net.dimse.pynetdicom_ext import reactor
from station.net.dimse.sopclasses import register_dicos_sop_classes

LOGGER = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S: float = 30.0

GET_TRANSFER_SYNTAXES: tuple[str, ...] = (
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    RLELossless,
    JPEGLosslessSV1,
    JPEG2000Lossless,
    JPEGLSLossless,
    JPEGBaseline8Bit,
    JPEG2000,
    DeflatedExplicitVRLittleEndian,
)
"""What we accept for C-GET sub-operations: the stored syntax is kept when offered (no
transcoding on the archive), and pydicom decodes all of these."""

MAX_STORAGE_CONTEXTS: int = 120
"""Presentation contexts for storage sub-operations (128 per association, minus the
query/retrieve ones)."""

_STATUS_SUCCESS = 0x0000
_PENDING = frozenset({0xFF00, 0xFF01})
_UID_RE = re.compile(r"^[0-9.]{1,64}$")


class DimseError(RuntimeError):
    """A DIMSE operation failed; the message names the peer (AE title, host:port)."""


@dataclass
class RetrieveResult:
    """What one C-GET or C-MOVE did. ``completed``/``failed``/``warning`` are the
    archive's sub-operation counts; ``files`` the instances written (C-GET only)."""

    completed: int = 0
    failed: int = 0
    warning: int = 0
    status: int = -1
    files: list[Path] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.status in (_STATUS_SUCCESS, 0xB000) and self.failed == 0


class DimseRemote:
    """One archive reached by DIMSE: ``called_aet`` at ``host``:``port``; we call as
    ``calling_aet`` (the archive must know that AE for C-GET/C-MOVE)."""

    def __init__(self, host: str, port: int, called_aet: str, *, calling_aet: str = "STATION",
                 timeout: float = DEFAULT_TIMEOUT_S) -> None:
        self.host = host
        self.port = port
        self.called_aet = called_aet
        self.calling_aet = calling_aet
        self.timeout = timeout

    @classmethod
    def from_settings(cls, remote: RemoteSettings) -> DimseRemote:
        if not remote.has_dimse:
            raise ValueError(f"remote {remote.name!r} has no DIMSE peer (aet, host, port)")
        return cls(remote.host, remote.port, remote.aet, calling_aet=remote.calling_aet, timeout=remote.timeout)

    @property
    def peer(self) -> str:
        return f"{self.called_aet}@{self.host}:{self.port}"

    # ----------------------------------------------------------------- association

    def _ae(self) -> AE:
        try:
            reactor.install()
        except reactor.UnsupportedPynetdicomError as exc:
            raise DimseError(str(exc)) from exc
        register_dicos_sop_classes()
        _config.LOG_HANDLER_LEVEL = "none"
        ae = AE(ae_title=self.calling_aet)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = self.timeout
        ae.connection_timeout = min(self.timeout, 10.0)
        return ae

    def _associate(self, ae: AE, **kwargs: Any) -> Any:
        assoc = ae.associate(self.host, self.port, ae_title=self.called_aet, **kwargs)
        if not assoc.is_established:
            why = "rejected" if assoc.is_rejected else "aborted" if assoc.is_aborted else "could not connect"
            LOGGER.warning("DIMSE association with %s %s", self.peer, why)
            raise DimseError(f"association with {self.peer} {why}")
        return assoc

    # ----------------------------------------------------------------- C-FIND

    def _find(self, query: Dataset) -> list[Dataset]:
        ae = self._ae()
        ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
        assoc = self._associate(ae)
        found: list[Dataset] = []
        try:
            for status, identifier in assoc.send_c_find(query, StudyRootQueryRetrieveInformationModelFind):
                code = _status(status)
                if code in _PENDING:
                    if identifier is not None:
                        found.append(identifier)
                elif code == _STATUS_SUCCESS:
                    break
                else:
                    LOGGER.warning("C-FIND at %s failed: status 0x%04X", self.peer, code)
                    raise DimseError(f"C-FIND at {self.peer} failed: status 0x{code:04X}"
                                     if code >= 0 else f"C-FIND at {self.peer}: no answer (timeout or abort)")
        finally:
            if assoc.is_established:
                assoc.release()
        return found

    def find_studies(self, *, patient_id: str = "", patient_name: str = "", study_date: str = "",
                     modality: str = "", study_uid: str = "", accession_number: str = "") -> list[Dataset]:
        """C-FIND at STUDY level; empty arguments match anything (``*`` wildcards and
        ``YYYYMMDD-YYYYMMDD`` date ranges as in DICOM matching). Caller's thread."""
        q = Dataset()
        q.QueryRetrieveLevel = "STUDY"
        q.PatientID = patient_id
        q.PatientName = patient_name
        q.StudyDate = study_date
        q.StudyTime = ""
        q.StudyInstanceUID = study_uid
        q.AccessionNumber = accession_number
        q.StudyDescription = ""
        q.ModalitiesInStudy = modality
        q.NumberOfStudyRelatedInstances = ""
        return self._find(q)

    def find_series(self, study_uid: str, *, modality: str = "", series_uid: str = "") -> list[Dataset]:
        """C-FIND at SERIES level within one study. Caller's thread."""
        q = Dataset()
        q.QueryRetrieveLevel = "SERIES"
        q.StudyInstanceUID = study_uid
        q.SeriesInstanceUID = series_uid
        q.Modality = modality
        q.SeriesNumber = ""
        q.SeriesDescription = ""
        q.NumberOfSeriesRelatedInstances = ""
        return self._find(q)

    def find_instances(self, study_uid: str, series_uid: str) -> list[Dataset]:
        """C-FIND at IMAGE level: SOP Instance and SOP Class UIDs of a series."""
        q = Dataset()
        q.QueryRetrieveLevel = "IMAGE"
        q.StudyInstanceUID = study_uid
        q.SeriesInstanceUID = series_uid
        q.SOPInstanceUID = ""
        q.SOPClassUID = ""
        q.InstanceNumber = ""
        return self._find(q)

    # ----------------------------------------------------------------- C-GET

    def get_series(
        self,
        study_uid: str,
        series_uid: str,
        out_dir: str | os.PathLike[str],
        *,
        sop_classes: Sequence[str] | None = None,
        on_instance: Callable[[Path], None] | None = None,
    ) -> RetrieveResult:
        """C-GET one series into ``out_dir`` (one file per instance, named by SOP
        Instance UID). ``sop_classes`` are proposed for the storage sub-operations; by
        default they are found with an IMAGE-level C-FIND first. ``on_instance`` runs on
        the association thread after each file is written. Caller's thread."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        if sop_classes is None:
            sop_classes = sorted({str(ds.SOPClassUID) for ds in self.find_instances(study_uid, series_uid)
                                  if ds.get("SOPClassUID")})
            if not sop_classes:
                return RetrieveResult(status=_STATUS_SUCCESS)
        if len(sop_classes) > MAX_STORAGE_CONTEXTS:
            raise DimseError(f"{len(sop_classes)} SOP classes in one series: at most {MAX_STORAGE_CONTEXTS} per C-GET")
        result = RetrieveResult()
        lock = threading.Lock()

        def on_store(event: evt.Event) -> int:
            sop = str(event.request.AffectedSOPInstanceUID)
            path = out / _file_name(sop)
            try:
                _write_received(event, path)
            except OSError as exc:
                LOGGER.error("C-GET from %s: cannot write %s: %s", self.peer, path, exc)
                return 0xA700
            with lock:
                result.files.append(path)
            if on_instance is not None:
                try:
                    on_instance(path)
                except Exception:  # a consumer's bug must not fail the retrieve
                    LOGGER.exception("on_instance callback failed for %s", path)
            return _STATUS_SUCCESS

        ae = self._ae()
        ae.add_requested_context(StudyRootQueryRetrieveInformationModelGet)
        roles = []
        for uid in sop_classes:
            ae.add_requested_context(uid, list(GET_TRANSFER_SYNTAXES))
            roles.append(build_role(uid, scp_role=True))
        assoc = self._associate(ae, ext_neg=roles, evt_handlers=[(evt.EVT_C_STORE, on_store)])
        try:
            self._retrieve(assoc.send_c_get(_series_identifier(study_uid, series_uid),
                                            StudyRootQueryRetrieveInformationModelGet), result, "C-GET")
        finally:
            if assoc.is_established:
                assoc.release()
        return result

    # ----------------------------------------------------------------- C-MOVE

    def move_series(self, study_uid: str, series_uid: str, destination_aet: str) -> RetrieveResult:
        """C-MOVE one series to ``destination_aet`` (which the archive must know, e.g.
        the station's receiver). Returns when the archive reports completion."""
        ae = self._ae()
        ae.add_requested_context(StudyRootQueryRetrieveInformationModelMove)
        assoc = self._associate(ae)
        result = RetrieveResult()
        try:
            self._retrieve(assoc.send_c_move(_series_identifier(study_uid, series_uid), destination_aet,
                                             StudyRootQueryRetrieveInformationModelMove), result, "C-MOVE")
        finally:
            if assoc.is_established:
                assoc.release()
        return result

    def _retrieve(self, responses: Iterator[tuple[Dataset, Dataset | None]], result: RetrieveResult, what: str) -> None:
        for status, _identifier in responses:
            code = _status(status)
            for key, attr in (("completed", "NumberOfCompletedSuboperations"),
                              ("failed", "NumberOfFailedSuboperations"),
                              ("warning", "NumberOfWarningSuboperations")):
                if status is not None and attr in status:
                    setattr(result, key, int(status.get(attr) or 0))
            if code in _PENDING:
                continue
            result.status = code
            if code < 0:
                LOGGER.warning("%s at %s: no answer (timeout or abort)", what, self.peer)
                raise DimseError(f"{what} at {self.peer}: no answer (timeout or abort)")
            if code not in (_STATUS_SUCCESS, 0xB000):
                comment = status.get("ErrorComment", "") if status is not None else ""
                LOGGER.warning("%s at %s failed: status 0x%04X %s", what, self.peer, code, comment)
                raise DimseError(f"{what} at {self.peer} failed: status 0x{code:04X} {comment}".strip())
            break


def _status(status: Dataset | None) -> int:
    if status is None or "Status" not in status:
        return -1
    return int(status.Status)


def _series_identifier(study_uid: str, series_uid: str) -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = "SERIES"
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    return ds


def _file_name(sop: str) -> str:
    """Peer-supplied UIDs become file names only when they are plain UIDs."""
    if _UID_RE.match(sop):
        return f"{sop}.dcm"
    return f"{hashlib.sha256(sop.encode()).hexdigest()[:32]}.dcm"


def _write_received(event: evt.Event, path: Path) -> None:
    """Write one received instance as a Part 10 file without decoding it. pynetdicom
    either holds it in memory or, when another part of the process switched on chunked
    receiving (the station's receiver does), already wrote it to a file."""
    tmp = path.with_name(f".{path.name}.part")
    try:
        source = event.dataset_path
    except (AttributeError, ValueError):
        source = None
    if source is not None:
        shutil.copyfile(source, tmp)
    else:
        tmp.write_bytes(event.encoded_dataset(include_meta=True))
    os.replace(tmp, path)


__all__ = ["DimseError", "DimseRemote", "RetrieveResult"]
