"""Writing machine and operator TDRs that the NEMA DICOS toolkit accepts."""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, UID, ExplicitVRLittleEndian, generate_uid

from station.core.dicom.sopclasses import DICOS_TDR

from station.core.dicos.site import DEFAULT_SITE, Site, set_dicos_common
from station.core.dicos.model import (
    ABORT_REASONS,
    ASSESSMENT_FLAGS,
    Algorithm,
    IMAGE_SCALE_REPRESENTATION,
    DicosError,
    MANUFACTURER,
    OPERATOR_DECISIONS,
    PTO_PROCESSING_END_TIME,
    PTO_PROCESSING_START_TIME,
    PTO_TOTAL_PROCESSING_TIME,
    Pto,
    STATION_ALGORITHM,
    ScanRef,
    SupportsToPto,
    Tdr,
    _PRIVATE_CREATOR,
    _PRIVATE_DECISION,
    _PRIVATE_GROUP,
    _PRIVATE_NOTE,
    _STUDY_REFERENCE_CLASS,
    category_to_wire,
)
from station.core.dicos import zmap
from station.core.dicos.reader import _Reader, read_tdr, tdr_from_dataset

# Local coding scheme of the station's operator IDs (DICOM "99" private schemes).
OPERATOR_CODING_SCHEME = "99ISTATION"

LOGGER = logging.getLogger(__name__)

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
            "IssuerOfPatientID", "StudyID",
        ])
    except Exception as exc:
        raise DicosError(f"{first}: cannot read the scan header: {exc!r}") from exc
    r = _Reader(str(first))
    return ScanRef(
        study_uid=r.text(ds, "StudyInstanceUID"),
        series_uid=r.text(ds, "SeriesInstanceUID") or (volume.series_uid or ""),
        sop_class_uid=r.text(ds, "SOPClassUID") or volume.sop_class_uid,
        slice_uids=tuple(s.sop_instance_uid for s in slices),
        slice_z=zmap.scan_z(slices),
        patient_id=r.text(ds, "PatientID"),
        patient_name=r.text(ds, "PatientName"),
        ooi_id_type=r.text(ds, "TypeOfPatientID"),
        ooi_type=r.text(ds, "OOIType") or "BAGGAGE",
        frame_of_reference_uid=r.text(ds, "FrameOfReferenceUID"),
        study_date=r.text(ds, "StudyDate"),
        study_time=r.text(ds, "StudyTime"),
        ooi_id_issuer=r.text(ds, "IssuerOfPatientID"),
        scan_id=r.text(ds, "StudyID"),
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


def _set_ooi_from_scan(ds: Dataset, scan: ScanRef, now: datetime) -> None:
    """``_set_ooi_and_scan`` with everything taken from ``scan``."""
    _set_ooi_and_scan(ds, patient_id=scan.patient_id, patient_name=scan.patient_name,
                      ooi_id_type=scan.ooi_id_type, ooi_type=scan.ooi_type,
                      study_uid=scan.study_uid, study_date=scan.study_date,
                      study_time=scan.study_time, frame_uid=scan.frame_of_reference_uid, now=now,
                      issuer=scan.ooi_id_issuer, scan_id=scan.scan_id)


def _set_ooi_and_scan(ds: Dataset, *, patient_id: str, patient_name: str, ooi_id_type: str,
                      ooi_type: str, study_uid: str, study_date: str, study_time: str,
                      frame_uid: str, now: datetime, issuer: str = "", scan_id: str = "") -> None:
    """OOI, scan (study) and frame of reference, copied from the scan: a TDR for a
    vendor's scan keeps the vendor's OOI ID, assigning authority, Scan ID and UIDs."""
    ds.PatientID = patient_id
    ds.PatientName = patient_name
    if issuer:
        ds.IssuerOfPatientID = issuer
    ds.PatientSex = "U"
    ds.TypeOfPatientID = ooi_id_type or "TEXT"
    ds.OOIType = ooi_type or "BAGGAGE"
    ds.StudyInstanceUID = UID(study_uid)
    ds.StudyDate = study_date or now.strftime("%Y%m%d")
    ds.StudyTime = study_time or now.strftime("%H%M%S")
    ds.StudyID = scan_id[:16]
    ds.AccessionNumber = ""
    ds.ReferringPhysicianName = ""
    ds.ScanType = "OPERATIONAL"
    ref = Dataset()
    ref.ReferencedSOPClassUID = _STUDY_REFERENCE_CLASS
    ref.ReferencedSOPInstanceUID = UID(study_uid)
    ds.ReferencedStudySequence = DicomSequence([ref])
    # The toolkit requires a frame of reference in every TDR: the scan's, else a new one.
    ds.FrameOfReferenceUID = UID(frame_uid or generate_uid())
    ds.PositionReferenceIndicator = ""


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
    # FD, as the DICOS toolkits write and read it (pydicom's dictionary says DS: a DS
    # "1" is read by the toolkit as a zero scale and the whole TDR is refused).
    ds.add_new(IMAGE_SCALE_REPRESENTATION, "FD", 1.0)
    ds.AdditionalScreeningPerformed = "NO"
    ds.ThreatSequence = DicomSequence([_pto_item(p) for p in ptos])


def _placed(pto: Pto, scan: ScanRef) -> Pto:
    """A PTO whose box is in the volume's geometric z, as written for ``scan``: referencing
    the instances its box spans (unless it names its own) and with its box in the scan's
    TDR z (frame numbers of a multi-frame scan, see ``zmap``)."""
    if not pto.referenced_instances and scan.slice_uids:
        z, ez = pto.base[2], pto.extent[2]
        pto = replace(pto, referenced_instances=scan.instances_for_z(
            int(math.floor(z)), int(math.ceil(z + ez)) - 1))
    return zmap.to_scan(pto, scan.slice_z) if scan.slice_z else pto


def _representation_item(p: Pto) -> Dataset:
    """One PTORepresentationSequence item: the box, bitmap, polygon, physics and
    references of one representation of a PTO."""
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
    return rep


def _pto_item(p: Pto) -> Dataset:
    if p.flag not in ASSESSMENT_FLAGS:
        raise ValueError(f"PTO {p.id}: flag {p.flag!r} is not one of {ASSESSMENT_FLAGS}")
    item = Dataset()
    item.PotentialThreatObjectID = int(p.id)
    item.PTORepresentationSequence = DicomSequence([_representation_item(v) for v in p.representations])
    a = Dataset()
    a.ThreatCategory = category_to_wire(p.category or "OTHER")
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


def _reference_scan_series(ds: Dataset, scan: ScanRef) -> None:
    """ReferencedSeriesSequence: the scan's series and every instance of it."""
    if not scan.series_uid:
        return
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


def _person_identification(operator: str, site: Site) -> Dataset:
    """Person Identification macro for the operator: the ID, then the ID's type (the
    toolkit wants both items), and the organization the operator works for."""
    person = Dataset()
    code = Dataset()
    code.CodeValue = operator[:16]
    code.CodingSchemeDesignator = OPERATOR_CODING_SCHEME
    code.CodeMeaning = operator[:64]
    kind = Dataset()
    kind.CodeValue = "OPERATOR_ID"
    kind.CodingSchemeDesignator = OPERATOR_CODING_SCHEME
    kind.CodeMeaning = "Station operator ID"
    person.PersonIdentificationCodeSequence = DicomSequence([code, kind])
    person.InstitutionName = site.institution_name[:64]
    return person


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
    site: Site | None = None,
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
        resolved.append(_placed(p if isinstance(p, Pto) else p.to_pto(i), scan))
    ids = [p.id for p in resolved]
    if len(set(ids)) != len(ids):
        raise ValueError(f"duplicate PTO IDs: {ids}")
    if abort_reason:
        alarm = "UNKNOWN"
    else:
        alarm = "ALARM" if any(p.flag != "NO_THREAT" for p in resolved) else "CLEAR"

    sop_uid = sop_instance_uid or generate_uid()
    ds = _new_dataset(sop_uid, now)
    _set_ooi_from_scan(ds, scan, now)
    ds.SeriesInstanceUID = UID(series_uid or generate_uid())
    ds.SeriesNumber = 900
    ds.SeriesDescription = f"Machine TDR ({algorithm})"[:64]
    ds.SeriesDate = now.strftime("%Y%m%d")
    ds.SeriesTime = now.strftime("%H%M%S")
    _reference_scan_series(ds, scan)
    _set_tdr_module(ds, tdr_type="MACHINE", alarm=alarm, decided_at=decided_at,
                    abort_reason=abort_reason, algorithm=algorithm, ptos=resolved,
                    processing_ms=processing_ms)
    set_dicos_common(ds, site or DEFAULT_SITE, now,
                     software_versions=[algorithm.vendor, algorithm.version])
    out = Path(out)
    _save(ds, out)
    LOGGER.info("machine TDR %s: %s, %d PTO(s) -> %s", sop_uid, alarm, len(resolved), out)
    return tdr_from_dataset(ds, out)


def write_operator_tdr(
    machine_tdr: Tdr | str | os.PathLike[str] | None,
    decision: str,
    operator: str,
    out: str | os.PathLike[str],
    *,
    pto_marks: Mapping[int, str] | None = None,
    note: str = "",
    review_ms: float | None = None,
    decided_at: datetime | None = None,
    sop_instance_uid: str | None = None,
    site: Site | None = None,
    drawn: Sequence[Pto] = (),
    scan: ScanRef | None = None,
) -> Tdr:
    """Write the OPERATOR TDR recording an analyst's ``decision`` on ``machine_tdr``.

    ``drawn``: boxes the analyst marked (a threat the machine missed), written as PTOs of
    the operator's own after the machine's (IDs continue; without ReferencedPTOSequence;
    flag THREAT, or HIGH_THREAT if given, under THREAT; UNKNOWN under SUSPECT: search there). ``machine_tdr`` may be None for a scan that had no
    machine TDR: then ``scan`` names the scan (OOI, study, series, instances) and the TDR
    references no machine TDR. CLEAR with a drawn box is a ValueError.

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
    if machine_tdr is None:
        if scan is None:
            raise ValueError("an operator TDR without a machine TDR needs the scan it is about")
        machine = None
    else:
        machine = machine_tdr if isinstance(machine_tdr, Tdr) else read_tdr(machine_tdr)
    machine_ptos = machine.ptos if machine is not None else []
    if drawn and decision == "CLEAR":
        raise ValueError("decision CLEAR contradicts a box the analyst marked as a threat")
    marks = {int(k): str(v).upper() for k, v in (pto_marks or {}).items()}
    known = {p.id for p in machine_ptos}
    unknown = sorted(set(marks) - known)
    if unknown:
        where = f"machine TDR {machine.sop_instance_uid}" if machine else "the scan (no machine TDR)"
        raise ValueError(f"no PTO with ID {unknown} in {where}")
    for pid, flag in marks.items():
        if flag not in ASSESSMENT_FLAGS:
            raise ValueError(f"PTO {pid}: mark {flag!r} is not one of {ASSESSMENT_FLAGS}")
        if decision == "CLEAR" and flag != "NO_THREAT":
            raise ValueError(f"decision CLEAR contradicts PTO {pid} marked {flag}")
        if decision == "SUSPECT" and flag in ("HIGH_THREAT", "THREAT"):
            raise ValueError(f"decision SUSPECT contradicts PTO {pid} marked {flag}: "
                             f"a PTO marked as a threat makes the decision THREAT")

    now = datetime.now().astimezone()
    decided_at = decided_at or now
    ptos: list[Pto] = []
    for p in machine_ptos:
        if p.id in marks:
            flag = marks[p.id]
        elif decision == "CLEAR":
            flag = "NO_THREAT"
        elif decision == "SUSPECT":
            flag = "UNKNOWN"
        else:
            flag = p.flag if p.flag in ("HIGH_THREAT", "THREAT") else "THREAT"
        ptos.append(replace(p, flag=flag, probability=None, referenced_pto_id=p.id))
    next_id = max((p.id for p in machine_ptos), default=0) + 1
    for i, p in enumerate(drawn):
        # SUSPECT: the box says where to search (UNKNOWN); THREAT: the threat itself.
        flag = "UNKNOWN" if decision == "SUSPECT" else (p.flag if p.flag in ("HIGH_THREAT", "THREAT") else "THREAT")
        placed = _placed(p, scan) if scan is not None else p
        ptos.append(replace(placed, id=next_id + i, flag=flag, probability=None,
                            referenced_pto_id=None))
    if decision == "THREAT" and ptos and not any(p.flag in ("HIGH_THREAT", "THREAT") for p in ptos):
        raise ValueError("decision THREAT needs at least one PTO marked THREAT or HIGH_THREAT")
    alarm = "CLEAR" if decision == "CLEAR" else "ALARM"
    if review_ms is None:
        review_ms = 0.0
        if machine is not None and machine.alarm_decision_time is not None:
            try:
                review_ms = max(0.0, (decided_at - machine.alarm_decision_time).total_seconds() * 1000)
            except TypeError:  # naive vs aware timestamps from a vendor file
                review_ms = 0.0

    sop_uid = sop_instance_uid or generate_uid()
    ds = _new_dataset(sop_uid, now)
    if machine is not None:
        study = machine.scan_study_uid or machine.study_uid
        if not study:
            raise ValueError(f"machine TDR {machine.sop_instance_uid} names no study to reference")
        _set_ooi_and_scan(ds, patient_id=machine.ooi_id, patient_name="", ooi_id_type=machine.ooi_id_type,
                          ooi_type=machine.ooi_type, study_uid=study, study_date="", study_time="",
                          frame_uid=machine.frame_of_reference_uid, now=now,
                          issuer=machine.ooi_id_issuer, scan_id=machine.scan_id)
    else:
        assert scan is not None
        _set_ooi_from_scan(ds, scan, now)
    ds.SeriesInstanceUID = generate_uid()
    ds.SeriesNumber = 901
    ds.SeriesDescription = f"Operator TDR ({decision})"
    ds.SeriesDate = now.strftime("%Y%m%d")
    ds.SeriesTime = now.strftime("%H%M%S")
    site = site or DEFAULT_SITE
    ds.OperatorsName = operator
    ds.OperatorIdentificationSequence = DicomSequence([_person_identification(operator, site)])
    ref_tdr = Dataset()
    if machine is None:
        _reference_scan_series(ds, scan)
    else:
        ref_tdr.ReferencedSOPClassUID = UID(machine.sop_class_uid or DICOS_TDR)
        ref_tdr.ReferencedSOPInstanceUID = UID(machine.sop_instance_uid)
        ds.ReferencedTDRInstanceSequence = DicomSequence([ref_tdr])
    if machine is not None and machine.referenced_series:
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
    # Every assessment carries its processing time (the toolkit requires it): the
    # analyst's review, from the machine's decision to this one.
    review_start = decided_at - timedelta(milliseconds=review_ms)
    ptos = [replace(p, processing_start=review_start, processing_end=decided_at,
                    processing_ms=review_ms) for p in ptos]
    _set_tdr_module(ds, tdr_type="OPERATOR", alarm=alarm, decided_at=decided_at, abort_reason=None,
                    algorithm=STATION_ALGORITHM, ptos=ptos, processing_ms=review_ms)
    set_dicos_common(ds, site, now, software_versions=[STATION_ALGORITHM.vendor,
                                                       STATION_ALGORITHM.version])
    for item, p in zip(ds.ThreatSequence, ptos):
        if p.referenced_pto_id is None or machine is None:
            continue  # the analyst's own box
        ref = Dataset()
        ref.PotentialThreatObjectID = int(p.id)
        ref.TDRType = machine.tdr_type or "MACHINE"
        ref.ReferencedTDRInstanceSequence = DicomSequence([ref_tdr])
        item.ReferencedPTOSequence = DicomSequence([ref])
    # The decision is in the standard attributes (AlarmDecision and the PTO flags, see
    # Tdr.operator_decision); only an alarm without PTOs needs the private word. The note
    # has no DICOS attribute.
    if note or (alarm == "ALARM" and not ptos):
        block = ds.private_block(_PRIVATE_GROUP, _PRIVATE_CREATOR, create=True)
        if alarm == "ALARM" and not ptos:
            block.add_new(_PRIVATE_DECISION, "CS", decision)
        if note:
            block.add_new(_PRIVATE_NOTE, "LT", note)
    out = Path(out)
    _save(ds, out)
    LOGGER.info("operator TDR %s by %s: %s on %s (%d drawn) -> %s", sop_uid, operator, decision,
                f"machine TDR {machine.sop_instance_uid}" if machine else f"scan {scan.study_uid}",
                len(drawn), out)
    return tdr_from_dataset(ds, out)


def operator_tdr_main(
    machine_tdr: str | os.PathLike[str], decision: str, operator: str, out: str | os.PathLike[str],
    *, site: Site | None = None,
) -> dict[str, Any]:
    """``station tdr operator --machine-tdr FILE --decision D --operator ID --out FILE``:
    write the operator TDR and return a summary (the CLI prints it as JSON). Raises
    TdrError for an unreadable machine TDR, ValueError for a bad decision/operator."""
    tdr = write_operator_tdr(machine_tdr, decision, operator, out, site=site)
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
