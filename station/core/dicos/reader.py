"""Reading TDRs (tolerant of vendor quirks, strict about what a viewer needs) and
``station inspect``."""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterable
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.datadict import keyword_for_tag, tag_for_keyword
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import UID
from pydicom.valuerep import DT

from station.core.dicom.files import expand_paths
from station.core.dicom.sopclasses import DICOS_SOP_CLASSES, DICOS_TDR, is_dicos

from station.core.dicos.model import (
    ALARM_DECISIONS,
    ASSESSMENT_FLAGS,
    Algorithm,
    DicosError,
    PTO_PROCESSING_END_TIME,
    PTO_PROCESSING_START_TIME,
    PTO_TOTAL_PROCESSING_TIME,
    Pto,
    ReferencedInstance,
    TDR_TYPES,
    Tdr,
    TdrError,
    _ABORT_REASON_ALIASES,
    _PRIVATE_CREATOR,
    _PRIVATE_DECISION,
    _PRIVATE_GROUP,
    _PRIVATE_NOTE,
    _TDR_TYPE_ALIASES,
    category_from_wire,
)

_STORAGE_CLASS_ROOT = "1.2.840.10008.5.1.4.1.1."  # every image/TDR storage SOP class

LOGGER = logging.getLogger(__name__)

# --------------------------------------------------------------------------- reading


class _Reader:
    """Typed access to a dataset that turns every problem into a TdrError naming the file."""

    def __init__(self, name: str) -> None:
        self.name = name

    def fail(self, problem: str) -> TdrError:
        return TdrError(f"{self.name}: {problem}")

    def raw(self, ds: Dataset, key: str | int, where: str) -> Any:
        """Value of ``key`` (keyword or tag) or None when absent/empty."""
        try:
            elem = _element(ds, key)
            if elem is None:
                return None
            value = elem.value
        except Exception as exc:  # conversion of a raw element with a bad value
            label = key if isinstance(key, str) else _tag_name(key)
            raise self.fail(f"{where}{label} cannot be decoded: {exc}") from exc
        if value is None or (isinstance(value, (str, bytes)) and value in ("", b"")):
            return None
        return value

    def text(self, ds: Dataset, key: str | int, where: str = "", default: str = "") -> str:
        value = self.raw(ds, key, where)
        if value is None:
            return default
        if isinstance(value, (list, tuple, MultiValue)):
            value = value[0] if len(value) else ""
        if isinstance(value, bytes):
            value = value.decode("ascii", "replace")
        return str(value).strip().strip("\x00")

    def texts(self, ds: Dataset, key: str | int, where: str = "") -> tuple[str, ...]:
        value = self.raw(ds, key, where)
        if value is None:
            return ()
        if isinstance(value, bytes):
            value = value.decode("ascii", "replace").split("\\")
        if isinstance(value, str):
            return (value.strip(),)
        return tuple(str(v).strip() for v in value)

    def floats(self, ds: Dataset, key: str | int, where: str, n: int | None = None,
               minimum: int = 1) -> tuple[float, ...] | None:
        value = self.raw(ds, key, where)
        if value is None:
            return None
        label = key if isinstance(key, str) else _tag_name(key)
        values = value if isinstance(value, (list, tuple, MultiValue)) else [value]
        try:
            out = tuple(float(v) for v in values)
        except (TypeError, ValueError):
            raise self.fail(f"{where}{label} is not numeric: {value!r}") from None
        if getattr(_element(ds, key), "VR", "") == "FL":
            # FL holds float32: give back the shortest decimal that is that float32
            # (0.8, not 0.800000011920929), as the writer meant it.
            out = tuple(float(str(np.float32(v))) for v in out)
        if not all(math.isfinite(v) for v in out):
            raise self.fail(f"{where}{label} has a non-finite value: {list(out)}")
        if n is not None and len(out) != n:
            raise self.fail(f"{where}{label} has {len(out)} value(s), expected {n}")
        if len(out) < minimum:
            raise self.fail(f"{where}{label} has {len(out)} value(s), expected at least {minimum}")
        return out

    def number(self, ds: Dataset, key: str | int, where: str) -> float | None:
        got = self.floats(ds, key, where, n=None)
        if got is None:
            return None
        return got[0]

    def integer(self, ds: Dataset, key: str | int, where: str) -> int | None:
        got = self.number(ds, key, where)
        if got is None:
            return None
        if not float(got).is_integer():
            raise self.fail(f"{where}{key} is not an integer: {got}")
        return int(got)

    def seq(self, ds: Dataset, key: str, where: str = "") -> list[Dataset]:
        """Items of sequence ``key`` ([] when absent); TdrError when it is not a sequence."""
        try:
            elem = _element(ds, key)
        except Exception as exc:
            raise self.fail(f"{where}{key} cannot be decoded: {exc}") from exc
        if elem is None:
            return []
        value = elem.value
        if isinstance(value, DicomSequence):
            return list(value)
        if value is None or (isinstance(value, (str, bytes)) and not value):
            return []
        raise self.fail(f"{where}{key} is not a sequence (VR {elem.VR})")

    def datetime(self, ds: Dataset, key: str | int, where: str = "") -> datetime | None:
        """A DT value, or None when absent or unparsable (logged: times are informative)."""
        text = self.text(ds, key, where)
        if not text:
            return None
        try:
            return DT(text)
        except Exception:
            LOGGER.warning("%s: %s%s has an unparsable date-time %r", self.name, where,
                           key if isinstance(key, str) else _tag_name(key), text)
            return None

    def referenced(self, items: Iterable[Dataset], where: str) -> tuple[ReferencedInstance, ...]:
        out = []
        for item in items:
            uid = self.text(item, "ReferencedSOPInstanceUID", where)
            if uid:
                out.append(ReferencedInstance(self.text(item, "ReferencedSOPClassUID", where), uid))
        return tuple(out)


def _element(ds: Dataset, key: str | int) -> Any:
    """The data element for a keyword or tag, or None when absent (converting a raw
    element may raise on bad values)."""
    tag = tag_for_keyword(key) if isinstance(key, str) else key
    if tag is None:
        raise KeyError(f"unknown keyword {key}")
    return ds[tag] if tag in ds else None


def _tag_name(tag: int) -> str:
    kw = keyword_for_tag(tag)
    return kw or f"({tag >> 16:04X},{tag & 0xFFFF:04X})"


def _open_dataset(path: Path, *, stop_before_pixels: bool = False) -> Dataset:
    """dcmread with every failure as DicosError naming the file; detects truncation.

    pydicom stops quietly at the end of a truncated file (the last elements just go
    missing or come back short), so the declared lengths of the top-level elements are
    checked against the file size before any value is used.
    """
    try:
        with open(path, "rb") as fp:
            size = os.fstat(fp.fileno()).st_size
            ds = pydicom.dcmread(fp, stop_before_pixels=stop_before_pixels)
    except FileNotFoundError as exc:
        raise DicosError(f"{path}: no such file") from exc
    except OSError as exc:
        raise DicosError(f"{path}: cannot read: {exc}") from exc
    except InvalidDicomError as exc:
        raise DicosError(f"{path}: not a DICOM file ({exc})") from exc
    except Exception as exc:  # pydicom's failures on malformed input are not enumerable
        raise DicosError(f"{path}: malformed or truncated DICOM file: {exc!r}") from exc
    end: int | None = 0  # where the last element ends (None: undefined length)
    for elem in ds.elements():
        tell = getattr(elem, "value_tell", None)
        length = getattr(elem, "length", None)
        if tell is None or length is None or length == 0xFFFFFFFF:
            end = None
            continue
        if tell + length > size:
            raise DicosError(
                f"{path}: truncated file: {_tag_name(int(elem.tag))} needs {length} bytes at "
                f"offset {tell}, the file ends at {size}"
            )
        end = tell + length
    if end and not stop_before_pixels and end < size:
        # pydicom stops without a word when the file ends inside an element's header.
        raise DicosError(f"{path}: truncated file: {size - end} bytes after the last complete "
                         f"element cannot be read")
    return ds


def read_tdr(path: str | os.PathLike[str]) -> Tdr:
    """Read a DICOS TDR file. Raises TdrError (message: file and problem) when the file
    is unreadable, truncated, not a TDR, or malformed. Any thread."""
    path = Path(path)
    try:
        ds = _open_dataset(path)
    except TdrError:
        raise
    except DicosError as exc:
        raise TdrError(str(exc)) from exc
    return tdr_from_dataset(ds, path)


def _is_tdr_dataset(ds: Dataset) -> bool:
    try:
        sop_class = str(ds.get("SOPClassUID", "") or "")
        modality = str(ds.get("Modality", "") or "").upper()
    except Exception:
        return False
    return sop_class == DICOS_TDR or (modality == "TDR" and not sop_class)


def tdr_from_dataset(ds: Dataset, path: str | os.PathLike[str] | None = None) -> Tdr:
    """Build a ``Tdr`` from a dataset already in memory (e.g. a C-STORE dataset).
    Raises TdrError naming ``path`` (or "<dataset>") and the problem."""
    name = str(path) if path is not None else "<dataset>"
    r = _Reader(name)
    try:
        return _parse_tdr(ds, r, Path(path) if path is not None else None)
    except TdrError:
        raise
    except Exception as exc:  # anything unforeseen in a vendor file stays a TdrError
        raise r.fail(f"malformed TDR: {exc!r}") from exc


def _parse_tdr(ds: Dataset, r: _Reader, path: Path | None) -> Tdr:
    sop_class = r.text(ds, "SOPClassUID")
    modality = r.text(ds, "Modality").upper()
    if sop_class != DICOS_TDR and not (modality == "TDR" and not sop_class):
        raise r.fail(
            f"not a DICOS TDR (SOP class {sop_class or 'missing'}, modality {modality or 'missing'})"
        )
    sop_uid = r.text(ds, "SOPInstanceUID")
    if not sop_uid:
        raise r.fail("no SOPInstanceUID")
    tdr_type = r.text(ds, "TDRType").upper()
    if not tdr_type:
        raise r.fail("no TDRType")
    tdr_type = _TDR_TYPE_ALIASES.get(tdr_type, tdr_type)
    if tdr_type not in TDR_TYPES:
        LOGGER.warning("%s: unknown TDRType %r kept as is", r.name, tdr_type)

    alarm = r.text(ds, "AlarmDecision").upper()
    if alarm not in ALARM_DECISIONS:
        if alarm:
            LOGGER.warning("%s: AlarmDecision %r is not ALARM/CLEAR/UNKNOWN; read as UNKNOWN",
                           r.name, alarm)
        alarm = "UNKNOWN"

    algo_values = r.texts(ds, "ThreatDetectionAlgorithmAndVersion")
    algorithm = None
    if algo_values:
        algorithm = Algorithm(algo_values[0], algo_values[1] if len(algo_values) > 1 else "",
                              tuple(algo_values[2:]))

    abort_flag = r.text(ds, "AbortFlag").upper() or "SUCCESS"
    abort_reason = tuple(_ABORT_REASON_ALIASES.get(v.upper(), v.upper())
                         for v in r.texts(ds, "AbortReason") if v)

    operator_ids: list[str] = []
    for item in r.seq(ds, "OperatorIdentificationSequence"):
        codes = r.seq(item, "PersonIdentificationCodeSequence", "OperatorIdentificationSequence: ")
        value = r.text(codes[0], "CodeValue") if codes else ""
        if value:
            operator_ids.append(value)
    if not operator_ids:
        operator_ids.extend(v for v in r.texts(ds, "OperatorsName") if v)

    referenced_series: dict[str, tuple[str, ...]] = {}
    series_instances: list[ReferencedInstance] = []
    for item in r.seq(ds, "ReferencedSeriesSequence"):
        refs = r.referenced(r.seq(item, "ReferencedInstanceSequence", "ReferencedSeriesSequence: "),
                            "ReferencedSeriesSequence: ")
        uid = r.text(item, "SeriesInstanceUID")
        if uid:
            referenced_series[uid] = tuple(x.sop_instance_uid for x in refs)
        series_instances.extend(refs)

    ptos = _parse_ptos(ds, r)
    # ReferencedStudySequence names the scan's study; the NEMA toolkit's writer puts the
    # scan *instance* there instead (its image SOP class and UID): that is a reference to
    # an image, and the TDR's own StudyInstanceUID then names the study.
    studies: list[str] = []
    for ref in r.referenced(r.seq(ds, "ReferencedStudySequence"), ""):
        if ref.sop_class_uid.startswith(_STORAGE_CLASS_ROOT):  # an image, not a study
            series_instances.append(ref)
        else:
            studies.append(ref.sop_instance_uid)
    instances = dict.fromkeys(series_instances)
    for p in ptos:
        instances.update(dict.fromkeys(p.referenced_instances))

    decision, note = "", ""
    try:
        block = ds.private_block(_PRIVATE_GROUP, _PRIVATE_CREATOR)
    except KeyError:
        block = None  # written by someone else: no private block
    if block is not None:
        if _PRIVATE_DECISION in block:
            decision = r.text(ds, block.get_tag(_PRIVATE_DECISION)).upper()
        if _PRIVATE_NOTE in block:
            note = r.text(ds, block.get_tag(_PRIVATE_NOTE))

    return Tdr(
        path=path,
        sop_instance_uid=sop_uid,
        sop_class_uid=sop_class or DICOS_TDR,
        tdr_type=tdr_type,
        alarm_decision=alarm,
        alarm_decision_time=r.datetime(ds, "AlarmDecisionTime"),
        abort_flag=abort_flag,
        abort_reason=abort_reason,
        algorithm=algorithm,
        ooi_id=r.text(ds, "PatientID"),
        ooi_id_type=r.text(ds, "TypeOfPatientID"),
        ooi_type=r.text(ds, "OOIType"),
        ooi_id_issuer=r.text(ds, "IssuerOfPatientID"),
        scan_id=r.text(ds, "StudyID"),
        study_uid=r.text(ds, "StudyInstanceUID"),
        series_uid=r.text(ds, "SeriesInstanceUID"),
        frame_of_reference_uid=r.text(ds, "FrameOfReferenceUID"),
        referenced_study_uids=tuple(studies),
        referenced_series=referenced_series,
        referenced_instances=tuple(instances),
        referenced_tdrs=r.referenced(r.seq(ds, "ReferencedTDRInstanceSequence"), ""),
        operator_ids=tuple(operator_ids),
        number_of_total_objects=r.integer(ds, "NumberOfTotalObjects", ""),
        number_of_alarm_objects=r.integer(ds, "NumberOfAlarmObjects", ""),
        total_processing_ms=r.number(ds, "TotalProcessingTime", ""),
        image_scale_representation=_scale(ds, r),
        dicos_version=r.text(ds, "DICOSVersion"),
        additional_screening_performed=r.text(ds, "AdditionalScreeningPerformed"),
        note=note,
        ptos=ptos,
        recorded_decision=decision,
    )


def _scale(ds: Dataset, r: _Reader) -> float | None:
    """ImageScaleRepresentation: DS in pydicom's dictionary, FD in some toolkits' files;
    in implicit VR files the FD bytes arrive as a DS string that does not parse."""
    try:
        return r.number(ds, "ImageScaleRepresentation", "")
    except TdrError:
        value = r.raw(ds, "ImageScaleRepresentation", "")
        raw = value.encode("latin-1") if isinstance(value, str) else value
        if isinstance(raw, bytes) and len(raw) == 8:
            return float(np.frombuffer(raw, dtype="<f8")[0])
        LOGGER.warning("%s: unreadable ImageScaleRepresentation %r ignored", r.name, value)
        return None


def _parse_ptos(ds: Dataset, r: _Reader) -> list[Pto]:
    ptos: list[Pto] = []
    seen: set[int] = set()
    for index, item in enumerate(r.seq(ds, "ThreatSequence"), 1):
        pid = r.integer(item, "PotentialThreatObjectID", f"ThreatSequence item {index}: ")
        if pid is None:
            LOGGER.warning("%s: ThreatSequence item %d has no PotentialThreatObjectID; using %d",
                           r.name, index, index)
            pid = index
        if pid in seen:
            raise r.fail(f"duplicate PTO ID {pid} (ThreatSequence item {index})")
        seen.add(pid)
        where = f"PTO {pid}: "
        reps = r.seq(item, "PTORepresentationSequence", where)
        if not reps:
            raise r.fail(f"PTO {pid} has no PTORepresentationSequence")
        views = [_parse_representation(rep, r, pid, where if n == 1 else f"PTO {pid} representation {n}: ")
                 for n, rep in enumerate(reps, 1)]

        assessments = r.seq(item, "ATDAssessmentSequence", where)
        a = assessments[0] if assessments else Dataset()
        flag = r.text(a, "ATDAssessmentFlag", where).upper() or "UNKNOWN"
        if flag not in ASSESSMENT_FLAGS:
            LOGGER.warning("%s: PTO %d: unknown ATDAssessmentFlag %r read as UNKNOWN", r.name, pid, flag)
            flag = "UNKNOWN"
        probability = r.number(a, "ATDAssessmentProbability", where)

        ref_ptos = r.seq(item, "ReferencedPTOSequence", where)
        ref_pto_id = r.integer(ref_ptos[0], "PotentialThreatObjectID", where) if ref_ptos else None

        pto = Pto(
            id=pid,
            flag=flag,
            category=category_from_wire(r.text(a, "ThreatCategory", where)),
            category_description=r.text(a, "ThreatCategoryDescription", where),
            ability=r.text(a, "ATDAbilityAssessment", where).upper(),
            probability=probability,
            **views[0],
            processing_start=r.datetime(item, PTO_PROCESSING_START_TIME, where),
            processing_end=r.datetime(item, PTO_PROCESSING_END_TIME, where),
            processing_ms=r.number(item, PTO_TOTAL_PROCESSING_TIME, where),
            referenced_pto_id=ref_pto_id,
        )
        ptos.append(replace(pto, more_representations=tuple(replace(pto, **v) for v in views[1:])))
    return ptos


def _parse_representation(rep: Dataset, r: _Reader, pid: int, where: str) -> dict[str, Any]:
    """The geometry and physics of one item of a PTO's PTORepresentationSequence, as Pto
    fields (a PTO may show the same object in several scans: a CT and a DX view)."""
    polygon = r.floats(rep, "BoundingPolygon", where, minimum=6)
    if polygon is not None and len(polygon) % 3:
        raise r.fail(f"PTO {pid}: BoundingPolygon has {len(polygon)} values, not x,y,z triples")
    voxels = r.seq(rep, "ThreatROIVoxelSequence", where)
    bitmap: bytes | None = None
    if voxels:
        roi = voxels[0]
        base = r.floats(roi, "ThreatROIBase", where, n=3)
        if base is None:
            raise r.fail(f"PTO {pid} has no ThreatROIBase")
        extent = r.floats(roi, "ThreatROIExtents", where, n=3)
        if extent is None:
            raise r.fail(f"PTO {pid} has no ThreatROIExtents")
        raw_bitmap = r.raw(roi, "ThreatROIBitmap", where)
        if raw_bitmap is not None:
            if not isinstance(raw_bitmap, (bytes, bytearray)):
                raise r.fail(f"PTO {pid}: ThreatROIBitmap is not binary data")
            bitmap = bytes(raw_bitmap)
            # OB values are padded to an even length: drop the pad byte when the
            # box says the bitmap is one byte shorter.
            needed = (math.prod(max(0, int(round(e))) for e in extent) + 7) // 8
            if len(bitmap) == needed + 1 and bitmap[-1] == 0:
                bitmap = bitmap[:-1]
    elif polygon is not None:
        # A 2-D (DX) PTO may carry only a polygon: its bounding box stands in.
        pts = np.asarray(polygon).reshape(-1, 3)
        lo, hi = pts.min(axis=0), pts.max(axis=0)
        base = tuple(float(v) for v in lo)
        extent = tuple(float(v) for v in (hi - lo + 1))
    else:
        raise r.fail(f"PTO {pid} has no ThreatROIBase")
    if any(e < 0 for e in extent):
        raise r.fail(f"PTO {pid}: negative ThreatROIExtents {list(extent)}")

    return {
        "base": base, "extent": extent, "bitmap": bitmap, "polygon": polygon,
        "referenced_instances": r.referenced(r.seq(rep, "ReferencedInstanceSequence", where), where),
        "center": r.floats(rep, "CenterOfPTO", where, n=3),
        "mass_g": r.number(rep, "Mass", where),
        "density_g_cm3": r.number(rep, "Density", where),
        "zeff": r.number(rep, "ZEffective", where),
        "volume_ml": r.number(rep, "VolumeOfPTO", where),
        "location_description": r.text(rep, "PTOLocationDescription", where),
    }


# --------------------------------------------------------------------------- inspection


def inspect_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Describe one DICOM/DICOS file for ``station inspect``: SOP class, modality, UIDs;
    for images ``shape`` [frames, rows, cols]; for TDRs the TDR summary and PTOs.

    Reads the header only (never pixel data). Raises DicosError (TdrError for a
    malformed TDR) naming the file. Any thread.
    """
    path = Path(path)
    ds = _open_dataset(path, stop_before_pixels=True)
    r = _Reader(str(path))
    meta = getattr(ds, "file_meta", None)
    sop_class = r.text(ds, "SOPClassUID") or (
        r.text(meta, "MediaStorageSOPClassUID") if meta is not None else "")
    if not sop_class:
        raise DicosError(f"{path}: not a DICOM object (no SOP Class UID)")
    out: dict[str, Any] = {
        "path": str(path),
        "sop_class_uid": sop_class,
        "sop_class_name": DICOS_SOP_CLASSES.get(sop_class) or (UID(sop_class).name if sop_class else ""),
        "modality": r.text(ds, "Modality"),
        "dicos": is_dicos(sop_class),
        "sop_instance_uid": r.text(ds, "SOPInstanceUID"),
        "study_uid": r.text(ds, "StudyInstanceUID"),
        "series_uid": r.text(ds, "SeriesInstanceUID"),
        "patient_id": r.text(ds, "PatientID"),
        "transfer_syntax_uid": r.text(meta, "TransferSyntaxUID") if meta is not None else "",
    }
    if _is_tdr_dataset(ds):
        out.update(tdr_from_dataset(ds, path).to_json())
        out["sop_class_uid"] = sop_class
        return out
    rows = r.integer(ds, "Rows", "")
    cols = r.integer(ds, "Columns", "")
    if rows is not None and cols is not None:
        frames = r.integer(ds, "NumberOfFrames", "") or 1
        out["shape"] = [frames, rows, cols]
        out["rescale_type"] = r.text(ds, "RescaleType")
    return out


def inspect_main(paths: Iterable[str | os.PathLike[str]]) -> list[dict[str, Any]]:
    """``station inspect FILE... --json``: one object per file (folders are searched
    recursively, in sorted order; JSON sidecars such as ``truth.json`` are skipped). A file that cannot be read gives
    ``{"path": ..., "error": "<file>: <problem>"}`` instead and does not stop the others;
    the CLI should exit non-zero when any object has an "error" key."""
    out: list[dict[str, Any]] = []
    for p in expand_paths(paths, skip_suffixes=(".json",)):
        try:
            out.append(inspect_file(p))
        except DicosError as exc:
            LOGGER.warning("%s", exc)
            out.append({"path": str(p), "error": str(exc)})
    return out


