"""DICOS Threat Detection Reports: vocabulary, errors and the data model (see the
package docstring for the conventions)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
from pydicom.datadict import DicomDictionary, add_dict_entries


LOGGER = logging.getLogger(__name__)

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
# ThreatCategory on the wire: DICOS V03 spells a prohibited item "PI" (the NEMA toolkit reads
# "PROHIBITED_ITEM" as an unknown category); V02/V02A wrote "PROHIBITED ITEM", and V03's
# sub-categories ("SHARPS PI", "WEAPONS PI", ...) and "WEAPON" are prohibited items too.
_CATEGORY_ON_WIRE = {"PROHIBITED_ITEM": "PI"}


def category_to_wire(category: str) -> str:
    """The (4010,1012) ThreatCategory value the toolkit reads for a model category."""
    return _CATEGORY_ON_WIRE.get(category, category)


def category_from_wire(value: str) -> str:
    """The model category (one of THREAT_CATEGORIES when known) for a ThreatCategory value."""
    value = value.strip().upper()
    if value == "PHARMACEUTICAL PI":
        return "PHARMACEUTICAL"
    if value in ("PI", "PROHIBITED ITEM", "WEAPON") or value.endswith(" PI"):
        return "PROHIBITED_ITEM"
    return value or "OTHER"

DICOS_VERSION = "V03"
"""DICOS version written in (0002,0004) and (4010,103A); the toolkit reads V02, V02A and V03."""
IMAGE_SCALE_REPRESENTATION = 0x40101075  # (4010,1075), written as FD (see writer)
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
    The fields above are the first PTORepresentationSequence item; ``more_representations``
    holds the others (see ``representations``).
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
    more_representations: tuple[Pto, ...] = ()

    @property
    def representations(self) -> tuple[Pto, ...]:
        """Every PTORepresentationSequence item, this one's own first: the same object as
        seen in each scan it marks (its geometry, bitmap, physics and references; the
        assessment is the PTO's)."""
        return (replace(self, more_representations=()), *self.more_representations)

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
    ooi_id_issuer: str = ""
    scan_id: str = ""
    study_uid: str = ""
    series_uid: str = ""
    frame_of_reference_uid: str = ""
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
        """CLEAR / SUSPECT / THREAT for operator TDRs (None otherwise), from the standard
        attributes, as any DICOS reader sees it: CLEAR without alarm, THREAT if a PTO is
        flagged (HIGH_)THREAT, else SUSPECT (the PTOs are UNKNOWN: search the bag). Only an
        alarm with no PTO at all cannot say which; there the station's private attribute
        decides (written only in that case), else SUSPECT."""
        if self.tdr_type != "OPERATOR":
            return None
        if self.alarm_decision != "ALARM":
            return "CLEAR"
        if any(p.flag in ("HIGH_THREAT", "THREAT") for p in self.ptos):
            return "THREAT"
        if not self.ptos and self.recorded_decision in OPERATOR_DECISIONS:
            return self.recorded_decision
        return "SUSPECT"

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
    DICOS CT repeats its single UID), so a PTO can reference the instances its box spans;
    ``slice_z`` the TDR z of every z index (``zmap.scan_z``: frame numbers of a multi-frame
    scan), so a box found in the volume is written where other readers look for it.
    Build it with ``scan_ref_from_volume``.
    """

    study_uid: str
    series_uid: str = ""
    sop_class_uid: str = ""
    slice_uids: tuple[str, ...] = ()
    slice_z: tuple[int, ...] = ()
    patient_id: str = ""
    patient_name: str = ""
    ooi_id_type: str = ""
    ooi_type: str = "BAGGAGE"
    frame_of_reference_uid: str = ""
    study_date: str = ""
    study_time: str = ""
    ooi_id_issuer: str = ""
    scan_id: str = ""

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




def _num(v: float) -> float | int:
    """JSON-friendly number: whole floats as ints (boxes are usually whole voxels)."""
    f = float(v)
    return int(f) if f.is_integer() else round(f, 4)


