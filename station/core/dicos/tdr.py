"""DICOS Threat Detection Reports (TDR): read them, write them, and inspect DICOS/DICOM files.

A scanner's threat recognition (ATR) sends a *machine* TDR with its potential threat
objects (PTOs: a voxel box in the scan, an optional bitmap and polygon, and an assessment);
the station's own detector writes one too (``write_machine_tdr``); the analyst's decision
is recorded as an *operator* TDR that references the machine TDR it reviews
(``write_operator_tdr``). The attributes follow DICOS v03 as summarised in
``shared/DOMAIN.md``.

Reading is tolerant of what vendor toolkits write (an extra file-meta element (0002,0004)
"V03", unknown tags such as (0008,2108) and (4300,0902), UIDs with leading-zero
components, ImageScaleRepresentation written as FD instead of DS, "GROUND TRUTH" with a
space) and strict about what a viewer needs: a malformed TDR raises ``TdrError`` whose
message names the file and the problem ("x.dcm: PTO 2 has no ThreatROIBase"), never a bare
KeyError, and affects nothing but that file.

Conventions
-----------
* PTO boxes are voxel coordinates (x, y, z) of the referenced image: ``base`` is the first
  voxel, ``extent`` the number of voxels along each axis (as ``station.core.synth.bags`` and the
  detectors use them). For a classic one-file-per-slice CT, z is the slice index in the
  series sorted along its normal (``station.core.imaging.volume``), and each PTO references the
  slice instances its box spans.
* ThreatROIBitmap: one bit per voxel of the box, x fastest, then y, then z, least
  significant bit first (the DICOM convention for bit-packed data); ``Pto.mask()`` unpacks
  it to a (z, y, x) bool array.
* Mass in grams, Density in g/cm^3, VolumeOfPTO in cm^3 (ml), processing times in
  milliseconds. ImageScaleRepresentation is written as 1: one unit of the PTO coordinates
  is one image voxel.
* The per-PTO processing times (4010,1080) start (DT), (4010,1081) end (DT) and
  (4010,1082) total (FL, ms) are missing from pydicom's dictionary; they are added once at
  import (``register_dicos_dictionary``) under the keywords ``PTOProcessingStartTime``,
  ``PTOProcessingEndTime`` and ``PTOTotalProcessingTime``, with the VRs the DICOS
  toolkits use. The code addresses them by tag, so a future pydicom that names them
  differently changes nothing.
* The operator's decision word (CLEAR / SUSPECT / THREAT) and free-text note have no DICOS
  attribute; they go in a private block (group 0011, creator "INSPECTION STATION"), which
  other readers ignore. ``Tdr.operator_decision`` falls back to the flags when it is absent.

Threads: every function here is pure file or dataset work with no shared state (the
dictionary registration runs once at import), so any thread or worker process may call
them: the receiver's association threads (``read_tdr`` on an arriving TDR), detection
workers (``write_machine_tdr``), the GUI's background tasks (``write_operator_tdr``).
Never call them on the GUI thread for large files.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import pydicom
from pydicom.datadict import DicomDictionary, add_dict_entries, keyword_for_tag, tag_for_keyword
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.errors import InvalidDicomError
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, UID, ExplicitVRLittleEndian, generate_uid
from pydicom.valuerep import DT

from station.core.dicom.files import expand_paths
from station.core.dicom.sopclasses import DICOS_SOP_CLASSES, DICOS_TDR, is_dicos

LOGGER = logging.getLogger(__name__)

__all__ = [
    "ABILITY_ASSESSMENTS",
    "ABORT_REASONS",
    "ALARM_DECISIONS",
    "ASSESSMENT_FLAGS",
    "Algorithm",
    "DicosError",
    "OPERATOR_DECISIONS",
    "Pto",
    "ReferencedInstance",
    "STATION_ALGORITHM",
    "ScanRef",
    "SupportsToPto",
    "TDR_TYPES",
    "THREAT_CATEGORIES",
    "Tdr",
    "TdrError",
    "inspect_file",
    "inspect_main",
    "operator_tdr_main",
    "read_tdr",
    "register_dicos_dictionary",
    "scan_ref_from_volume",
    "tdr_from_dataset",
    "write_machine_tdr",
    "write_operator_tdr",
]

# --------------------------------------------------------------------------- vocabulary

TDR_TYPES = ("MACHINE", "OPERATOR", "GROUND_TRUTH", "AGGREGATE", "MOD_AGGREGATE")
ALARM_DECISIONS = ("ALARM", "CLEAR", "UNKNOWN")
ASSESSMENT_FLAGS = ("HIGH_THREAT", "THREAT", "NO_THREAT", "UNKNOWN")
THREAT_CATEGORIES = (
    "EXPLOSIVE", "PROHIBITED_ITEM", "CONTRABAND", "ANOMALY", "LAPTOP", "PHARMACEUTICAL", "OTHER",
)
ABILITY_ASSESSMENTS = ("NO_INTERFERENCE", "SHIELD")
ABORT_REASONS = (
    "NOT_REVIEWED", "OVERSIZE_BAG", "CLIPPED_BAG", "INCOMPLETE_SCAN", "FAILED_RECON", "TIMEOUT",
    "USER_INTERRUPT", "OUT_OF_BOUNDS", "UNKNOWN_DATA_TYPE",
)
OPERATOR_DECISIONS = ("CLEAR", "SUSPECT", "THREAT")
"""What an analyst decides for a bag; SUSPECT and THREAT are alarms (AlarmDecision ALARM)."""

# Spellings seen in other DICOS writers, mapped to the ones above.
_TDR_TYPE_ALIASES = {"GROUND TRUTH": "GROUND_TRUTH"}
_ABORT_REASON_ALIASES = {"UNKNOWN_DATATYPE": "UNKNOWN_DATA_TYPE"}

DICOS_VERSION = "V03"
MANUFACTURER = "Inspection Station"
# Referenced SOP class for items of ReferencedStudySequence: Detached Study Management
# (retired as a service, but still the conventional class of a reference to a study by
# its Study Instance UID).
_STUDY_REFERENCE_CLASS = "1.2.840.10008.3.1.2.3.1"

_PRIVATE_GROUP = 0x0011
_PRIVATE_CREATOR = "INSPECTION STATION"
_PRIVATE_DECISION = 0x01  # CS: CLEAR / SUSPECT / THREAT
_PRIVATE_NOTE = 0x02  # LT: the operator's free-text note

# Per-PTO processing times: not in pydicom's dictionary (see module docstring).
PTO_PROCESSING_START_TIME = 0x40101080
PTO_PROCESSING_END_TIME = 0x40101081
PTO_TOTAL_PROCESSING_TIME = 0x40101082
_EXTRA_DICTIONARY: dict[int, tuple[str, str, str, str, str]] = {
    PTO_PROCESSING_START_TIME: ("DT", "1", "PTO Processing Start Time", "", "PTOProcessingStartTime"),
    PTO_PROCESSING_END_TIME: ("DT", "1", "PTO Processing End Time", "", "PTOProcessingEndTime"),
    PTO_TOTAL_PROCESSING_TIME: ("FL", "1", "PTO Total Processing Time", "", "PTOTotalProcessingTime"),
}


def register_dicos_dictionary() -> None:
    """Add the DICOS tags pydicom lacks to its data dictionary; idempotent.

    Runs at import. Tags pydicom already knows (a newer release may add them) are left
    as pydicom defines them.
    """
    missing = {tag: entry for tag, entry in _EXTRA_DICTIONARY.items() if tag not in DicomDictionary}
    if missing:
        add_dict_entries(missing)


register_dicos_dictionary()


# --------------------------------------------------------------------------- errors


class DicosError(Exception):
    """A file cannot be read or inspected; the message names the file and the problem."""


class TdrError(DicosError, ValueError):
    """A malformed Threat Detection Report; the message names the file and the problem."""


# --------------------------------------------------------------------------- data model


@dataclass(frozen=True)
class ReferencedInstance:
    """A SOP instance referenced from a TDR (the CT/DX a PTO marks, or another TDR)."""

    sop_class_uid: str
    sop_instance_uid: str

    def to_json(self) -> dict[str, str]:
        return {"sop_class_uid": self.sop_class_uid, "sop_instance_uid": self.sop_instance_uid}


@dataclass(frozen=True)
class Algorithm:
    """ThreatDetectionAlgorithmAndVersion: who made the ATR, its version and parameters."""

    vendor: str
    version: str = ""
    parameters: tuple[str, ...] = ()

    def values(self) -> list[str]:
        """As written to the LO 1-n attribute: vendor, version, parameters..."""
        return [self.vendor, self.version, *self.parameters]

    def __str__(self) -> str:
        return " ".join(v for v in (self.vendor, self.version) if v)


STATION_ALGORITHM = Algorithm(MANUFACTURER, "operator review")
"""Written as the 'algorithm' of operator TDRs (the attribute is required in v03 readers)."""


@dataclass(frozen=True)
class Pto:
    """One potential threat object of a TDR.

    ``base``/``extent``: voxel box (x, y, z), see the module docstring. ``flag`` is the
    ATDAssessmentFlag (HIGH_THREAT, THREAT, NO_THREAT, UNKNOWN), ``category`` the
    ThreatCategory (EXPLOSIVE, ..., ANOMALY). ``polygon`` is a flat x, y, z list.
    ``referenced_pto_id`` is set in operator TDRs: the machine PTO this one reviews.
    """

    id: int
    base: tuple[float, float, float]
    extent: tuple[float, float, float]
    flag: str = "UNKNOWN"
    category: str = "OTHER"
    category_description: str = ""
    ability: str = "NO_INTERFERENCE"
    probability: float | None = None
    bitmap: bytes | None = None
    polygon: tuple[float, ...] | None = None
    referenced_instances: tuple[ReferencedInstance, ...] = ()
    center: tuple[float, float, float] | None = None
    mass_g: float | None = None
    density_g_cm3: float | None = None
    zeff: float | None = None
    volume_ml: float | None = None
    location_description: str = ""
    processing_start: datetime | None = None
    processing_end: datetime | None = None
    processing_ms: float | None = None
    referenced_pto_id: int | None = None

    @property
    def referenced_instance(self) -> ReferencedInstance | None:
        """The first referenced image instance (the one a multi-frame CT PTO marks)."""
        return self.referenced_instances[0] if self.referenced_instances else None

    @property
    def severity(self) -> str:
        """What an alert panel shows: HIGH_THREAT, THREAT, ANOMALY, NO_THREAT or UNKNOWN."""
        if self.flag in ("HIGH_THREAT", "THREAT", "NO_THREAT"):
            return self.flag
        return "ANOMALY" if self.category == "ANOMALY" else self.flag

    @property
    def box_int(self) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
        """(base, extent) rounded to whole voxels."""
        b = tuple(int(round(v)) for v in self.base)
        e = tuple(max(0, int(round(v))) for v in self.extent)
        return b, e  # type: ignore[return-value]

    def mask(self) -> np.ndarray | None:
        """The bitmap as a (z, y, x) bool array over the box, or None without a bitmap
        (or when its size does not match the box)."""
        if self.bitmap is None:
            return None
        _, (ex, ey, ez) = self.box_int
        n = ex * ey * ez
        bits = np.unpackbits(np.frombuffer(self.bitmap, dtype=np.uint8), bitorder="little")
        if n == 0 or bits.size < n or bits.size - n >= 16:  # one pad byte is allowed
            return None
        return bits[:n].astype(bool).reshape(ez, ey, ex)

    def to_json(self) -> dict[str, Any]:
        """The object ``station inspect --json`` prints for a PTO."""
        out: dict[str, Any] = {
            "id": self.id,
            "base": [_num(v) for v in self.base],
            "extent": [_num(v) for v in self.extent],
            "flag": self.flag,
            "category": self.category,
            "severity": self.severity,
            "probability": self.probability,
        }
        for key, value in (
            ("category_description", self.category_description),
            ("center", list(self.center) if self.center else None),
            ("mass_g", self.mass_g),
            ("density_g_cm3", self.density_g_cm3),
            ("volume_ml", self.volume_ml),
            ("zeff", self.zeff),
            ("location_description", self.location_description),
            ("referenced_pto_id", self.referenced_pto_id),
            ("polygon_points", len(self.polygon) // 3 if self.polygon else None),
            ("has_bitmap", True if self.bitmap is not None else None),
        ):
            if value not in (None, ""):
                out[key] = value
        if self.referenced_instances:
            out["referenced_instances"] = [r.to_json() for r in self.referenced_instances]
        return out


@runtime_checkable
class SupportsToPto(Protocol):
    """Anything a machine TDR can be written from (``station.core.detection.detectors.Detection``)."""

    def to_pto(self, pto_id: int) -> Pto: ...


@dataclass(frozen=True)
class Tdr:
    """A Threat Detection Report as the station uses it (see ``read_tdr``).

    ``study_uid`` is the TDR's own StudyInstanceUID (a scanner files its TDR in the scan's
    study); ``referenced_study_uids`` come from ReferencedStudySequence; ``scan_study_uid``
    picks the scan to attach the TDR to. ``referenced_series`` maps SeriesInstanceUID to
    referenced SOP instance UIDs (ReferencedSeriesSequence, when present);
    ``referenced_instances`` is every image instance referenced by the PTOs or that
    sequence. ``referenced_tdrs``: the TDRs an operator TDR reviews.
    """

    path: Path | None
    sop_instance_uid: str
    sop_class_uid: str
    tdr_type: str
    alarm_decision: str
    alarm_decision_time: datetime | None = None
    abort_flag: str = "SUCCESS"
    abort_reason: tuple[str, ...] = ()
    algorithm: Algorithm | None = None
    ooi_id: str = ""
    ooi_id_type: str = ""
    ooi_type: str = ""
    study_uid: str = ""
    series_uid: str = ""
    referenced_study_uids: tuple[str, ...] = ()
    referenced_series: dict[str, tuple[str, ...]] = field(default_factory=dict)
    referenced_instances: tuple[ReferencedInstance, ...] = ()
    referenced_tdrs: tuple[ReferencedInstance, ...] = ()
    operator_ids: tuple[str, ...] = ()
    number_of_total_objects: int | None = None
    number_of_alarm_objects: int | None = None
    total_processing_ms: float | None = None
    image_scale_representation: float | None = None
    dicos_version: str = ""
    additional_screening_performed: str = ""
    note: str = ""
    ptos: list[Pto] = field(default_factory=list)
    recorded_decision: str = ""

    @property
    def scan_study_uid(self) -> str:
        """The study (scan) this TDR belongs to: the referenced study, else its own."""
        return self.referenced_study_uids[0] if self.referenced_study_uids else self.study_uid

    @property
    def operator_id(self) -> str:
        return self.operator_ids[0] if self.operator_ids else ""

    @property
    def is_alarm(self) -> bool:
        return self.alarm_decision == "ALARM"

    @property
    def operator_decision(self) -> str | None:
        """CLEAR / SUSPECT / THREAT for operator TDRs (None otherwise). Written by this
        station in a private attribute; for other writers derived from the flags: CLEAR
        without alarm, THREAT if a PTO is flagged (HIGH_)THREAT, else SUSPECT."""
        if self.tdr_type != "OPERATOR":
            return None
        if self.recorded_decision in OPERATOR_DECISIONS:
            return self.recorded_decision
        if self.alarm_decision != "ALARM":
            return "CLEAR"
        return "THREAT" if any(p.flag in ("HIGH_THREAT", "THREAT") for p in self.ptos) else "SUSPECT"

    def pto(self, pto_id: int) -> Pto:
        """The PTO with this ID (KeyError if none)."""
        for p in self.ptos:
            if p.id == pto_id:
                return p
        raise KeyError(pto_id)

    def to_json(self) -> dict[str, Any]:
        """The TDR part of ``station inspect --json``."""
        out: dict[str, Any] = {
            "sop_instance_uid": self.sop_instance_uid,
            "tdr_type": self.tdr_type,
            "alarm_decision": self.alarm_decision,
            "alarm_decision_time": self.alarm_decision_time.isoformat() if self.alarm_decision_time else None,
            "abort_flag": self.abort_flag,
            "algorithm": (
                {"vendor": self.algorithm.vendor, "version": self.algorithm.version,
                 "parameters": list(self.algorithm.parameters)}
                if self.algorithm else None
            ),
            "ooi_id": self.ooi_id,
            "ooi_type": self.ooi_type,
            "study_uid": self.study_uid,
            "scan_study_uid": self.scan_study_uid,
            "number_of_total_objects": self.number_of_total_objects,
            "number_of_alarm_objects": self.number_of_alarm_objects,
            "total_processing_ms": self.total_processing_ms,
            "dicos_version": self.dicos_version,
            "ptos": [p.to_json() for p in self.ptos],
        }
        if self.abort_reason:
            out["abort_reason"] = list(self.abort_reason)
        if self.referenced_series:
            out["referenced_series"] = {k: len(v) for k, v in self.referenced_series.items()}
        if self.tdr_type == "OPERATOR":
            out["operator"] = self.operator_id
            out["decision"] = self.operator_decision
            out["referenced_tdrs"] = [r.sop_instance_uid for r in self.referenced_tdrs]
            if self.note:
                out["note"] = self.note
        return out


@dataclass(frozen=True)
class ScanRef:
    """The scan a machine TDR reports on: what its references and OOI attributes copy.

    ``slice_uids`` holds the SOP Instance UID of every z index of the volume (a multi-frame
    DICOS CT repeats its single UID), so a PTO can reference the instances its box spans.
    Build it with ``scan_ref_from_volume``.
    """

    study_uid: str
    series_uid: str = ""
    sop_class_uid: str = ""
    slice_uids: tuple[str, ...] = ()
    patient_id: str = ""
    patient_name: str = ""
    ooi_id_type: str = ""
    ooi_type: str = "BAGGAGE"
    frame_of_reference_uid: str = ""
    study_date: str = ""
    study_time: str = ""

    @property
    def instance_uids(self) -> tuple[str, ...]:
        """Distinct SOP instance UIDs in slice order."""
        return tuple(dict.fromkeys(self.slice_uids))

    def instances_for_z(self, z0: int, z1: int) -> tuple[ReferencedInstance, ...]:
        """Instances holding slices z0..z1 (inclusive, clipped to the volume)."""
        if not self.slice_uids:
            return ()
        lo = min(max(z0, 0), len(self.slice_uids) - 1)
        hi = min(max(z1, lo), len(self.slice_uids) - 1)
        uids = dict.fromkeys(self.slice_uids[lo:hi + 1])
        return tuple(ReferencedInstance(self.sop_class_uid, u) for u in uids)


# --------------------------------------------------------------------------- reading


def _num(v: float) -> float | int:
    """JSON-friendly number: whole floats as ints (boxes are usually whole voxels)."""
    f = float(v)
    return int(f) if f.is_integer() else round(f, 4)


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
    for elem in ds.elements():
        tell = getattr(elem, "value_tell", None)
        length = getattr(elem, "length", None)
        if tell is None or length is None or length == 0xFFFFFFFF:
            continue
        if tell + length > size:
            raise DicosError(
                f"{path}: truncated file: {_tag_name(int(elem.tag))} needs {length} bytes at "
                f"offset {tell}, the file ends at {size}"
            )
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
        study_uid=r.text(ds, "StudyInstanceUID"),
        series_uid=r.text(ds, "SeriesInstanceUID"),
        referenced_study_uids=tuple(
            x.sop_instance_uid for x in r.referenced(r.seq(ds, "ReferencedStudySequence"), "")
        ),
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
        if len(reps) > 1:
            LOGGER.info("%s: PTO %d has %d representations; using the first", r.name, pid, len(reps))
        rep = reps[0]
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

        assessments = r.seq(item, "ATDAssessmentSequence", where)
        a = assessments[0] if assessments else Dataset()
        flag = r.text(a, "ATDAssessmentFlag", where).upper() or "UNKNOWN"
        if flag not in ASSESSMENT_FLAGS:
            LOGGER.warning("%s: PTO %d: unknown ATDAssessmentFlag %r read as UNKNOWN", r.name, pid, flag)
            flag = "UNKNOWN"
        probability = r.number(a, "ATDAssessmentProbability", where)

        ref_ptos = r.seq(item, "ReferencedPTOSequence", where)
        ref_pto_id = r.integer(ref_ptos[0], "PotentialThreatObjectID", where) if ref_ptos else None

        ptos.append(Pto(
            id=pid,
            base=base,  # type: ignore[arg-type]
            extent=extent,  # type: ignore[arg-type]
            flag=flag,
            category=r.text(a, "ThreatCategory", where).upper() or "OTHER",
            category_description=r.text(a, "ThreatCategoryDescription", where),
            ability=r.text(a, "ATDAbilityAssessment", where).upper(),
            probability=probability,
            bitmap=bitmap,
            polygon=polygon,
            referenced_instances=r.referenced(r.seq(rep, "ReferencedInstanceSequence", where), where),
            center=r.floats(rep, "CenterOfPTO", where, n=3),  # type: ignore[arg-type]
            mass_g=r.number(rep, "Mass", where),
            density_g_cm3=r.number(rep, "Density", where),
            zeff=r.number(rep, "ZEffective", where),
            volume_ml=r.number(rep, "VolumeOfPTO", where),
            location_description=r.text(rep, "PTOLocationDescription", where),
            processing_start=r.datetime(item, PTO_PROCESSING_START_TIME, where),
            processing_end=r.datetime(item, PTO_PROCESSING_END_TIME, where),
            processing_ms=r.number(item, PTO_TOTAL_PROCESSING_TIME, where),
            referenced_pto_id=ref_pto_id,
        ))
    return ptos


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


# --------------------------------------------------------------------------- writing


def scan_ref_from_volume(volume: Any) -> ScanRef:
    """ScanRef for a ``station.core.imaging.volume.SeriesVolume`` (reads one header). Any thread."""
    slices = volume.slices
    if not slices:
        raise DicosError("the volume has no slices: nothing to reference")
    first = slices[0].path
    try:
        ds = pydicom.dcmread(first, stop_before_pixels=True, specific_tags=[
            "StudyInstanceUID", "SeriesInstanceUID", "SOPClassUID", "PatientID", "PatientName",
            "TypeOfPatientID", "OOIType", "FrameOfReferenceUID", "StudyDate", "StudyTime",
        ])
    except Exception as exc:
        raise DicosError(f"{first}: cannot read the scan header: {exc!r}") from exc
    r = _Reader(str(first))
    return ScanRef(
        study_uid=r.text(ds, "StudyInstanceUID"),
        series_uid=r.text(ds, "SeriesInstanceUID") or (volume.series_uid or ""),
        sop_class_uid=r.text(ds, "SOPClassUID") or volume.sop_class_uid,
        slice_uids=tuple(s.sop_instance_uid for s in slices),
        patient_id=r.text(ds, "PatientID"),
        patient_name=r.text(ds, "PatientName"),
        ooi_id_type=r.text(ds, "TypeOfPatientID"),
        ooi_type=r.text(ds, "OOIType") or "BAGGAGE",
        frame_of_reference_uid=r.text(ds, "FrameOfReferenceUID"),
        study_date=r.text(ds, "StudyDate"),
        study_time=r.text(ds, "StudyTime"),
    )


def _dt(when: datetime) -> str:
    """DICOM DT with microseconds and UTC offset (naive datetimes are taken as local)."""
    aware = when if when.tzinfo is not None else when.astimezone()
    return aware.strftime("%Y%m%d%H%M%S.%f%z")


def _new_dataset(sop_uid: str, now: datetime) -> Dataset:
    meta = FileMetaDataset()
    meta.FileMetaInformationVersion = b"\x00\x01"
    meta.MediaStorageSOPClassUID = UID(DICOS_TDR)
    meta.MediaStorageSOPInstanceUID = UID(sop_uid)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    meta.ImplementationVersionName = "INSPSTATION_1"
    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 192"  # operator names and notes may be any language
    ds.SOPClassUID = UID(DICOS_TDR)
    ds.SOPInstanceUID = UID(sop_uid)
    ds.InstanceCreationDate = now.strftime("%Y%m%d")
    ds.InstanceCreationTime = now.strftime("%H%M%S")
    ds.ContentDate = now.strftime("%Y%m%d")
    ds.ContentTime = now.strftime("%H%M%S")
    ds.Modality = "TDR"
    ds.Manufacturer = MANUFACTURER
    ds.ManufacturerModelName = "station"
    ds.InstanceNumber = 1
    return ds


def _set_ooi_and_scan(ds: Dataset, *, patient_id: str, patient_name: str, ooi_id_type: str,
                      ooi_type: str, study_uid: str, study_date: str, study_time: str,
                      frame_uid: str, now: datetime) -> None:
    ds.PatientID = patient_id
    ds.PatientName = patient_name
    ds.TypeOfPatientID = ooi_id_type or "TEXT"
    ds.OOIType = ooi_type or "BAGGAGE"
    ds.StudyInstanceUID = UID(study_uid)
    ds.StudyDate = study_date or now.strftime("%Y%m%d")
    ds.StudyTime = study_time or now.strftime("%H%M%S")
    ds.StudyID = ""
    ds.AccessionNumber = ""
    ds.ReferringPhysicianName = ""
    ds.ScanType = "OPERATIONAL"
    ref = Dataset()
    ref.ReferencedSOPClassUID = _STUDY_REFERENCE_CLASS
    ref.ReferencedSOPInstanceUID = UID(study_uid)
    ds.ReferencedStudySequence = DicomSequence([ref])
    if frame_uid:
        ds.FrameOfReferenceUID = UID(frame_uid)


def _set_tdr_module(ds: Dataset, *, tdr_type: str, alarm: str, decided_at: datetime,
                    abort_reason: str | None, algorithm: Algorithm, ptos: Sequence[Pto],
                    processing_ms: float) -> None:
    ds.TDRType = tdr_type
    ds.AlarmDecision = alarm
    ds.AlarmDecisionTime = _dt(decided_at)
    ds.AbortFlag = "ABORT" if abort_reason else "SUCCESS"
    if abort_reason:
        if abort_reason not in ABORT_REASONS:
            raise ValueError(f"unknown abort reason {abort_reason!r}: expected one of {ABORT_REASONS}")
        ds.AbortReason = abort_reason
    # LO values hold 64 characters; a longer vendor string must not make the file invalid.
    ds.ThreatDetectionAlgorithmAndVersion = [v[:64] for v in algorithm.values() if v] or [MANUFACTURER]
    ds.NumberOfTotalObjects = len(ptos)
    ds.NumberOfAlarmObjects = (
        sum(1 for p in ptos if p.flag != "NO_THREAT") if alarm == "ALARM" else 0
    )
    # v03 readers expect a positive time; sub-millisecond work still took some time.
    ds.TotalProcessingTime = max(float(processing_ms), 0.001)
    ds.ImageScaleRepresentation = "1"
    ds.AdditionalScreeningPerformed = "NO"
    ds.DICOSVersion = DICOS_VERSION
    ds.ThreatSequence = DicomSequence([_pto_item(p) for p in ptos])


def _pto_item(p: Pto) -> Dataset:
    if p.flag not in ASSESSMENT_FLAGS:
        raise ValueError(f"PTO {p.id}: flag {p.flag!r} is not one of {ASSESSMENT_FLAGS}")
    item = Dataset()
    item.PotentialThreatObjectID = int(p.id)
    rep = Dataset()
    if p.referenced_instances:
        refs = []
        for ref in p.referenced_instances:
            d = Dataset()
            d.ReferencedSOPClassUID = UID(ref.sop_class_uid)
            d.ReferencedSOPInstanceUID = UID(ref.sop_instance_uid)
            refs.append(d)
        rep.ReferencedInstanceSequence = DicomSequence(refs)
    roi = Dataset()
    roi.ThreatROIBase = [float(v) for v in p.base]
    roi.ThreatROIExtents = [float(v) for v in p.extent]
    if p.bitmap is not None:
        roi.ThreatROIBitmap = p.bitmap
    rep.ThreatROIVoxelSequence = DicomSequence([roi])
    if p.polygon:
        rep.BoundingPolygon = [float(v) for v in p.polygon]
    if p.center is not None:
        rep.CenterOfPTO = [float(v) for v in p.center]
    for kw, value in (("Mass", p.mass_g), ("Density", p.density_g_cm3), ("ZEffective", p.zeff),
                      ("VolumeOfPTO", p.volume_ml)):
        if value is not None:
            setattr(rep, kw, float(value))
    if p.location_description:
        rep.PTOLocationDescription = p.location_description
    item.PTORepresentationSequence = DicomSequence([rep])
    a = Dataset()
    a.ThreatCategory = p.category or "OTHER"
    if p.category_description:
        a.ThreatCategoryDescription = p.category_description
    a.ATDAbilityAssessment = p.ability or "NO_INTERFERENCE"
    a.ATDAssessmentFlag = p.flag
    if p.probability is not None:
        a.ATDAssessmentProbability = float(p.probability)
    item.ATDAssessmentSequence = DicomSequence([a])
    if p.processing_start is not None:
        item.add_new(PTO_PROCESSING_START_TIME, "DT", _dt(p.processing_start))
    if p.processing_end is not None:
        item.add_new(PTO_PROCESSING_END_TIME, "DT", _dt(p.processing_end))
    if p.processing_ms is not None:
        item.add_new(PTO_TOTAL_PROCESSING_TIME, "FL", float(p.processing_ms))
    return item


def _save(ds: Dataset, out: Path) -> None:
    """Write under a temporary name and rename, so a folder watcher or the store never
    sees a half-written TDR."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".part")
    try:
        ds.save_as(tmp, enforce_file_format=True)
        tmp.replace(out)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_machine_tdr(
    ptos: Sequence[Pto | SupportsToPto],
    out: str | os.PathLike[str],
    *,
    scan: ScanRef,
    algorithm: Algorithm,
    processing_ms: float,
    decided_at: datetime | None = None,
    abort_reason: str | None = None,
    sop_instance_uid: str | None = None,
    series_uid: str | None = None,
) -> Tdr:
    """Write a MACHINE TDR for detector results on ``scan`` and return it as read back.

    ``ptos``: ``Pto`` objects, or detector results with ``to_pto(id)`` (IDs 1..n in
    order). PTOs without referenced instances get the scan instances their box spans.
    AlarmDecision is ALARM when any PTO is not NO_THREAT (an ANOMALY counts: the analyst
    must look), else CLEAR; UNKNOWN when aborted. The TDR joins the scan's study
    (StudyInstanceUID, OOI ID) in a new series and references it through
    ReferencedStudySequence and ReferencedSeriesSequence. Detection worker or any
    non-GUI thread.
    """
    now = datetime.now().astimezone()
    decided_at = decided_at or now
    resolved: list[Pto] = []
    for i, p in enumerate(ptos, 1):
        pto = p if isinstance(p, Pto) else p.to_pto(i)
        if not pto.referenced_instances and scan.slice_uids:
            (_, _, z), (_, _, ez) = pto.base, pto.extent
            z0 = int(math.floor(z))
            pto = replace(pto, referenced_instances=scan.instances_for_z(
                z0, int(math.ceil(z + ez)) - 1))
        resolved.append(pto)
    ids = [p.id for p in resolved]
    if len(set(ids)) != len(ids):
        raise ValueError(f"duplicate PTO IDs: {ids}")
    if abort_reason:
        alarm = "UNKNOWN"
    else:
        alarm = "ALARM" if any(p.flag != "NO_THREAT" for p in resolved) else "CLEAR"

    sop_uid = sop_instance_uid or generate_uid()
    ds = _new_dataset(sop_uid, now)
    _set_ooi_and_scan(ds, patient_id=scan.patient_id, patient_name=scan.patient_name,
                      ooi_id_type=scan.ooi_id_type, ooi_type=scan.ooi_type,
                      study_uid=scan.study_uid, study_date=scan.study_date,
                      study_time=scan.study_time, frame_uid=scan.frame_of_reference_uid, now=now)
    ds.SeriesInstanceUID = UID(series_uid or generate_uid())
    ds.SeriesNumber = 900
    ds.SeriesDescription = f"Machine TDR ({algorithm})"[:64]
    ds.SeriesDate = now.strftime("%Y%m%d")
    ds.SeriesTime = now.strftime("%H%M%S")
    ds.SoftwareVersions = [v[:64] for v in (algorithm.vendor, algorithm.version) if v] or [MANUFACTURER]
    if scan.series_uid:
        series = Dataset()
        series.SeriesInstanceUID = UID(scan.series_uid)
        refs = []
        for uid in scan.instance_uids:
            d = Dataset()
            d.ReferencedSOPClassUID = UID(scan.sop_class_uid)
            d.ReferencedSOPInstanceUID = UID(uid)
            refs.append(d)
        if refs:
            series.ReferencedInstanceSequence = DicomSequence(refs)
        ds.ReferencedSeriesSequence = DicomSequence([series])
    _set_tdr_module(ds, tdr_type="MACHINE", alarm=alarm, decided_at=decided_at,
                    abort_reason=abort_reason, algorithm=algorithm, ptos=resolved,
                    processing_ms=processing_ms)
    out = Path(out)
    _save(ds, out)
    LOGGER.info("machine TDR %s: %s, %d PTO(s) -> %s", sop_uid, alarm, len(resolved), out)
    return tdr_from_dataset(ds, out)


def write_operator_tdr(
    machine_tdr: Tdr | str | os.PathLike[str],
    decision: str,
    operator: str,
    out: str | os.PathLike[str],
    *,
    pto_marks: Mapping[int, str] | None = None,
    note: str = "",
    review_ms: float | None = None,
    decided_at: datetime | None = None,
    sop_instance_uid: str | None = None,
) -> Tdr:
    """Write the OPERATOR TDR recording an analyst's ``decision`` on ``machine_tdr``.

    ``decision``: CLEAR (AlarmDecision CLEAR), SUSPECT or THREAT (both ALARM).
    ``pto_marks`` maps machine PTO IDs to the operator's flag (HIGH_THREAT, THREAT,
    NO_THREAT, UNKNOWN); unmarked PTOs get NO_THREAT under CLEAR, UNKNOWN under SUSPECT
    (unresolved: search the bag) and keep the machine's alarm flag under THREAT. A CLEAR
    decision with a PTO marked anything but NO_THREAT, or a mark for an unknown PTO, is a
    ValueError. Every PTO is copied with its geometry and references the machine PTO
    (ReferencedPTOSequence); the TDR references the machine TDR
    (ReferencedTDRInstanceSequence), the scan (ReferencedStudySequence, plus
    ReferencedSeriesSequence when the machine TDR had it) and the operator
    (OperatorIdentificationSequence). ``review_ms`` becomes TotalProcessingTime (default:
    time since the machine TDR's AlarmDecisionTime). Returns the TDR as written. Call
    from a background task, not the GUI thread.
    """
    decision = decision.upper()
    if decision not in OPERATOR_DECISIONS:
        raise ValueError(f"decision must be one of {OPERATOR_DECISIONS}, not {decision!r}")
    operator = operator.strip()
    if not operator:
        raise ValueError("an operator ID is required")
    machine = machine_tdr if isinstance(machine_tdr, Tdr) else read_tdr(machine_tdr)
    marks = {int(k): str(v).upper() for k, v in (pto_marks or {}).items()}
    known = {p.id for p in machine.ptos}
    unknown = sorted(set(marks) - known)
    if unknown:
        raise ValueError(f"no PTO with ID {unknown} in machine TDR {machine.sop_instance_uid}")
    for pid, flag in marks.items():
        if flag not in ASSESSMENT_FLAGS:
            raise ValueError(f"PTO {pid}: mark {flag!r} is not one of {ASSESSMENT_FLAGS}")
        if decision == "CLEAR" and flag != "NO_THREAT":
            raise ValueError(f"decision CLEAR contradicts PTO {pid} marked {flag}")

    now = datetime.now().astimezone()
    decided_at = decided_at or now
    ptos: list[Pto] = []
    for p in machine.ptos:
        if p.id in marks:
            flag = marks[p.id]
        elif decision == "CLEAR":
            flag = "NO_THREAT"
        elif decision == "SUSPECT":
            flag = "UNKNOWN"
        else:
            flag = p.flag if p.flag in ("HIGH_THREAT", "THREAT") else "THREAT"
        ptos.append(replace(p, flag=flag, probability=None, processing_start=None,
                             processing_end=None, processing_ms=None, referenced_pto_id=p.id))
    alarm = "CLEAR" if decision == "CLEAR" else "ALARM"
    if review_ms is None:
        review_ms = 0.0
        if machine.alarm_decision_time is not None:
            try:
                review_ms = max(0.0, (decided_at - machine.alarm_decision_time).total_seconds() * 1000)
            except TypeError:  # naive vs aware timestamps from a vendor file
                review_ms = 0.0

    sop_uid = sop_instance_uid or generate_uid()
    ds = _new_dataset(sop_uid, now)
    study = machine.scan_study_uid or machine.study_uid
    if not study:
        raise ValueError(f"machine TDR {machine.sop_instance_uid} names no study to reference")
    _set_ooi_and_scan(ds, patient_id=machine.ooi_id, patient_name="", ooi_id_type=machine.ooi_id_type,
                      ooi_type=machine.ooi_type, study_uid=study, study_date="", study_time="",
                      frame_uid="", now=now)
    ds.SeriesInstanceUID = generate_uid()
    ds.SeriesNumber = 901
    ds.SeriesDescription = f"Operator TDR ({decision})"
    ds.SeriesDate = now.strftime("%Y%m%d")
    ds.SeriesTime = now.strftime("%H%M%S")
    ds.OperatorsName = operator
    person = Dataset()
    code = Dataset()
    code.CodeValue = operator[:16]
    code.CodingSchemeDesignator = "99ISTATION"  # local scheme: the station's operator IDs
    code.CodeMeaning = operator[:64]
    person.PersonIdentificationCodeSequence = DicomSequence([code])
    ds.OperatorIdentificationSequence = DicomSequence([person])
    ref_tdr = Dataset()
    ref_tdr.ReferencedSOPClassUID = UID(machine.sop_class_uid or DICOS_TDR)
    ref_tdr.ReferencedSOPInstanceUID = UID(machine.sop_instance_uid)
    ds.ReferencedTDRInstanceSequence = DicomSequence([ref_tdr])
    if machine.referenced_series:
        series_items = []
        classes = {r.sop_instance_uid: r.sop_class_uid for r in machine.referenced_instances}
        for series_uid, uids in machine.referenced_series.items():
            s = Dataset()
            s.SeriesInstanceUID = UID(series_uid)
            refs = []
            for uid in uids:
                d = Dataset()
                d.ReferencedSOPClassUID = UID(classes.get(uid, ""))
                d.ReferencedSOPInstanceUID = UID(uid)
                refs.append(d)
            if refs:
                s.ReferencedInstanceSequence = DicomSequence(refs)
            series_items.append(s)
        ds.ReferencedSeriesSequence = DicomSequence(series_items)
    _set_tdr_module(ds, tdr_type="OPERATOR", alarm=alarm, decided_at=decided_at, abort_reason=None,
                    algorithm=STATION_ALGORITHM, ptos=ptos, processing_ms=review_ms)
    for item, p in zip(ds.ThreatSequence, ptos):
        ref = Dataset()
        ref.PotentialThreatObjectID = int(p.id)
        ref.TDRType = machine.tdr_type or "MACHINE"
        ref.ReferencedTDRInstanceSequence = DicomSequence([ref_tdr])
        item.ReferencedPTOSequence = DicomSequence([ref])
    block = ds.private_block(_PRIVATE_GROUP, _PRIVATE_CREATOR, create=True)
    block.add_new(_PRIVATE_DECISION, "CS", decision)
    if note:
        block.add_new(_PRIVATE_NOTE, "LT", note)
    out = Path(out)
    _save(ds, out)
    LOGGER.info("operator TDR %s by %s: %s on machine TDR %s -> %s", sop_uid, operator, decision,
                machine.sop_instance_uid, out)
    return tdr_from_dataset(ds, out)


def operator_tdr_main(
    machine_tdr: str | os.PathLike[str], decision: str, operator: str, out: str | os.PathLike[str]
) -> dict[str, Any]:
    """``station tdr operator --machine-tdr FILE --decision D --operator ID --out FILE``:
    write the operator TDR and return a summary (the CLI prints it as JSON). Raises
    TdrError for an unreadable machine TDR, ValueError for a bad decision/operator."""
    tdr = write_operator_tdr(machine_tdr, decision, operator, out)
    return {
        "path": str(out),
        "sop_instance_uid": tdr.sop_instance_uid,
        "tdr_type": tdr.tdr_type,
        "alarm_decision": tdr.alarm_decision,
        "decision": tdr.operator_decision,
        "operator": tdr.operator_id,
        "referenced_tdr": tdr.referenced_tdrs[0].sop_instance_uid if tdr.referenced_tdrs else None,
        "study_uid": tdr.scan_study_uid,
        "ptos": [{"id": p.id, "flag": p.flag, "category": p.category} for p in tdr.ptos],
    }
