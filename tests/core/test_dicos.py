"""Tests for station.core.dicos: TDR round trips, operator TDRs, vendor quirks, malformed
files, and ``station inspect``'s per-file objects."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pydicom
import pytest
from pydicom.datadict import dictionary_VR, keyword_for_tag
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import DICOSCTImageStorage, ImplicitVRLittleEndian

import station.core.dicos as dicos
from station.core.dicos import (
    Algorithm,
    Pto,
    ReferencedInstance,
    ScanRef,
    TdrError,
    inspect_file,
    inspect_main,
    operator_tdr_main,
    read_tdr,
    register_dicos_dictionary,
    scan_ref_from_volume,
    write_machine_tdr,
    write_operator_tdr,
)
from station.core.synth.bags import make_bag_volume, write_ct_series, write_dx
from station.core.imaging.volume import load_volume

TDR_CLASS = "1.2.840.10008.5.1.4.1.1.501.3"
T0 = datetime(2025, 3, 4, 10, 20, 30, 123000, tzinfo=timezone(timedelta(hours=1)))

SCAN = ScanRef(
    study_uid="1.2.826.0.1.3680043.8.498.100",
    series_uid="1.2.826.0.1.3680043.8.498.101",
    sop_class_uid=str(DICOSCTImageStorage),
    slice_uids=("1.2.826.0.1.3680043.8.498.102",) * 40,
    patient_id="BAG-000042",
    ooi_id_type="BARCODE",
    frame_of_reference_uid="1.2.826.0.1.3680043.8.498.103",
)
ALGO = Algorithm("Acme ATR", "7.1", ("mode=checked", "band=1400-1700"))


def _ptos() -> list[Pto]:
    ex, ey, ez = 4, 3, 2
    bitmap = bytes([0b10110101]) * ((ex * ey * ez + 7) // 8)
    return [
        Pto(id=1, base=(10, 20, 5), extent=(4, 3, 2), flag="HIGH_THREAT", category="EXPLOSIVE",
            category_description="sheet explosive", ability="NO_INTERFERENCE", probability=0.9,
            bitmap=bitmap, polygon=(10, 20, 5.5, 13, 20, 5.5, 13, 22, 5.5),
            center=(11.5, 21.0, 5.5), mass_g=812.5, density_g_cm3=1.55, zeff=7.2, volume_ml=524.0,
            location_description="bottom left", processing_start=T0,
            processing_end=T0 + timedelta(milliseconds=40), processing_ms=40.0),
        Pto(id=2, base=(30.5, 2, 17), extent=(8, 8, 8), flag="THREAT", category="PROHIBITED_ITEM",
            probability=0.55),
        Pto(id=3, base=(0, 0, 30), extent=(5, 5, 5), flag="UNKNOWN", category="ANOMALY",
            ability="SHIELD"),
    ]


@pytest.fixture
def machine(tmp_path: Path) -> Path:
    out = tmp_path / "machine.dcm"
    write_machine_tdr(_ptos(), out, scan=SCAN, algorithm=ALGO, processing_ms=123.5, decided_at=T0)
    return out


def _rewrite(src: Path, dst: Path, change, **save) -> Path:
    ds = pydicom.dcmread(src)
    change(ds)
    ds.save_as(dst, **save)
    return dst


# --------------------------------------------------------------------------- round trip


def test_machine_tdr_round_trips_every_pto_field(machine: Path):
    tdr = read_tdr(machine)
    assert tdr.tdr_type == "MACHINE"
    assert tdr.alarm_decision == "ALARM"
    assert tdr.alarm_decision_time == T0
    assert tdr.abort_flag == "SUCCESS" and tdr.abort_reason == ()
    assert tdr.algorithm == ALGO
    assert tdr.ooi_id == "BAG-000042" and tdr.ooi_id_type == "BARCODE" and tdr.ooi_type == "BAGGAGE"
    assert tdr.study_uid == SCAN.study_uid == tdr.scan_study_uid
    assert tdr.referenced_study_uids == (SCAN.study_uid,)
    assert tdr.referenced_series == {SCAN.series_uid: SCAN.instance_uids}
    assert tdr.number_of_total_objects == 3
    assert tdr.number_of_alarm_objects == 3
    assert tdr.total_processing_ms == pytest.approx(123.5)
    assert tdr.image_scale_representation == 1.0
    assert tdr.dicos_version == "V03"
    assert tdr.operator_decision is None

    written = _ptos()
    assert [p.id for p in tdr.ptos] == [1, 2, 3]
    for got, want in zip(tdr.ptos, written):
        assert got.base == tuple(float(v) for v in want.base)
        assert got.extent == tuple(float(v) for v in want.extent)
        assert (got.flag, got.category, got.category_description) == (
            want.flag, want.category, want.category_description)
        assert got.ability == want.ability
        assert got.probability == want.probability  # FL read back as the decimal written
        assert got.bitmap == want.bitmap
        assert got.polygon == (tuple(float(v) for v in want.polygon) if want.polygon else None)
        for name in ("center", "mass_g", "density_g_cm3", "zeff", "volume_ml", "processing_ms"):
            assert getattr(got, name) == getattr(want, name), name
        assert got.location_description == want.location_description
        assert got.processing_start == want.processing_start
        assert got.processing_end == want.processing_end
        # no referenced instance given: the writer references the scan's instance
        assert got.referenced_instance == ReferencedInstance(SCAN.sop_class_uid, SCAN.slice_uids[0])
    assert tdr.ptos[0].severity == "HIGH_THREAT"
    assert tdr.ptos[2].severity == "ANOMALY"
    mask = tdr.ptos[0].mask()
    assert mask is not None and mask.shape == (2, 3, 4)


def test_machine_tdr_has_the_dicos_v03_attributes(machine: Path):
    ds = pydicom.dcmread(machine)
    assert ds.file_meta.MediaStorageSOPClassUID == TDR_CLASS
    assert ds.SOPClassUID == TDR_CLASS
    assert ds.Modality == "TDR"
    for kw in ("SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID", "PatientID",
               "TypeOfPatientID", "OOIType", "TDRType", "AlarmDecision", "AlarmDecisionTime",
               "AbortFlag", "ThreatDetectionAlgorithmAndVersion", "NumberOfTotalObjects",
               "NumberOfAlarmObjects", "TotalProcessingTime", "ImageScaleRepresentation",
               "AdditionalScreeningPerformed", "DICOSVersion", "ReferencedStudySequence",
               "ThreatSequence", "FrameOfReferenceUID"):
        assert kw in ds, kw
    assert list(ds.ThreatDetectionAlgorithmAndVersion) == ["Acme ATR", "7.1", "mode=checked",
                                                           "band=1400-1700"]
    assert ds.ReferencedStudySequence[0].ReferencedSOPInstanceUID == SCAN.study_uid
    item = ds.ThreatSequence[0]
    for kw in ("PotentialThreatObjectID", "PTORepresentationSequence", "ATDAssessmentSequence"):
        assert kw in item, kw
    rep = item.PTORepresentationSequence[0]
    for kw in ("ReferencedInstanceSequence", "ThreatROIVoxelSequence", "BoundingPolygon",
               "CenterOfPTO", "Mass", "Density", "ZEffective", "VolumeOfPTO", "PTOLocationDescription"):
        assert kw in rep, kw
    roi = rep.ThreatROIVoxelSequence[0]
    for kw in ("ThreatROIBase", "ThreatROIExtents", "ThreatROIBitmap"):
        assert kw in roi, kw
    assessment = item.ATDAssessmentSequence[0]
    for kw in ("ThreatCategory", "ThreatCategoryDescription", "ATDAbilityAssessment",
               "ATDAssessmentFlag", "ATDAssessmentProbability"):
        assert kw in assessment, kw
    # per-PTO processing times, with the VRs registered for them
    assert [item[t].VR for t in (0x40101080, 0x40101081, 0x40101082)] == ["DT", "DT", "FL"]


def test_processing_time_tags_are_registered_once():
    register_dicos_dictionary()
    register_dicos_dictionary()
    assert keyword_for_tag(0x40101080) == "PTOProcessingStartTime"
    assert keyword_for_tag(0x40101081) == "PTOProcessingEndTime"
    assert keyword_for_tag(0x40101082) == "PTOTotalProcessingTime"
    assert dictionary_VR(0x40101082) == "FL"
    # tags pydicom knows are used by keyword
    assert keyword_for_tag(0x40101027) == "TDRType"


def test_implicit_vr_copy_reads_the_same(machine: Path, tmp_path: Path):
    """Implicit VR needs the dictionary: the registered processing times must decode."""
    def to_implicit(ds: Dataset) -> None:
        ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian

    copy = _rewrite(machine, tmp_path / "implicit.dcm", to_implicit, implicit_vr=True,
                    enforce_file_format=True)
    got, want = read_tdr(copy), read_tdr(machine)
    assert got.ptos == want.ptos
    assert got.ptos[0].processing_ms == 40.0


def test_clear_tdr_without_ptos(tmp_path: Path):
    tdr = write_machine_tdr([], tmp_path / "clear.dcm", scan=SCAN, algorithm=ALGO, processing_ms=5)
    again = read_tdr(tmp_path / "clear.dcm")
    assert tdr.alarm_decision == again.alarm_decision == "CLEAR"
    assert again.ptos == [] and again.number_of_total_objects == 0
    assert again.number_of_alarm_objects == 0


def test_aborted_tdr(tmp_path: Path):
    tdr = write_machine_tdr([], tmp_path / "abort.dcm", scan=SCAN, algorithm=ALGO,
                            processing_ms=5, abort_reason="CLIPPED_BAG")
    assert (tdr.abort_flag, tdr.abort_reason, tdr.alarm_decision) == ("ABORT", ("CLIPPED_BAG",), "UNKNOWN")
    with pytest.raises(ValueError):
        write_machine_tdr([], tmp_path / "x.dcm", scan=SCAN, algorithm=ALGO, processing_ms=5,
                          abort_reason="BORED")


def test_referenced_slices_of_a_classic_series(tmp_path: Path):
    scan = ScanRef(study_uid="1.2.3", series_uid="1.2.3.4", sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
                   slice_uids=tuple(f"1.2.3.4.{k + 1}" for k in range(10)))
    tdr = write_machine_tdr([Pto(id=1, base=(0, 0, 3), extent=(2, 2, 4), flag="THREAT")],
                            tmp_path / "m.dcm", scan=scan, algorithm=ALGO, processing_ms=1)
    assert [r.sop_instance_uid for r in tdr.ptos[0].referenced_instances] == [
        "1.2.3.4.4", "1.2.3.4.5", "1.2.3.4.6", "1.2.3.4.7"]
    assert tdr.referenced_series["1.2.3.4"] == scan.slice_uids


# --------------------------------------------------------------------------- operator


@pytest.mark.parametrize(
    ("decision", "alarm", "flags"),
    [
        ("CLEAR", "CLEAR", ["NO_THREAT", "NO_THREAT", "NO_THREAT"]),
        ("SUSPECT", "ALARM", ["UNKNOWN", "UNKNOWN", "UNKNOWN"]),
        ("THREAT", "ALARM", ["HIGH_THREAT", "THREAT", "THREAT"]),
    ],
)
def test_operator_tdr_references_machine_tdr_and_scan(machine: Path, tmp_path: Path, decision,
                                                      alarm, flags):
    mtdr = read_tdr(machine)
    out = tmp_path / "operator.dcm"
    written = write_operator_tdr(machine, decision, "analyst-7", out, note="checked twice")
    tdr = read_tdr(out)
    assert tdr == written
    assert tdr.tdr_type == "OPERATOR"
    assert tdr.alarm_decision == alarm
    assert tdr.operator_decision == decision
    assert tdr.operator_id == "analyst-7"
    assert tdr.note == "checked twice"
    assert tdr.sop_instance_uid != mtdr.sop_instance_uid
    assert tdr.referenced_tdrs == (ReferencedInstance(TDR_CLASS, mtdr.sop_instance_uid),)
    assert tdr.scan_study_uid == SCAN.study_uid == tdr.study_uid
    assert tdr.referenced_series == mtdr.referenced_series
    assert tdr.ooi_id == mtdr.ooi_id
    assert [p.flag for p in tdr.ptos] == flags
    assert [p.referenced_pto_id for p in tdr.ptos] == [1, 2, 3]
    assert [(p.base, p.extent) for p in tdr.ptos] == [(p.base, p.extent) for p in mtdr.ptos]
    assert tdr.number_of_alarm_objects == (0 if decision == "CLEAR" else 3)

    ds = pydicom.dcmread(out)
    person = ds.OperatorIdentificationSequence[0].PersonIdentificationCodeSequence[0]
    assert person.CodeValue == "analyst-7"
    assert ds.ReferencedTDRInstanceSequence[0].ReferencedSOPInstanceUID == mtdr.sop_instance_uid
    assert ds.ReferencedStudySequence[0].ReferencedSOPInstanceUID == SCAN.study_uid
    ref_pto = ds.ThreatSequence[0].ReferencedPTOSequence[0]
    assert ref_pto.PotentialThreatObjectID == 1
    assert ref_pto.ReferencedTDRInstanceSequence[0].ReferencedSOPInstanceUID == mtdr.sop_instance_uid
    for kw in ("ImageScaleRepresentation", "DICOSVersion", "AbortFlag", "NumberOfTotalObjects",
               "NumberOfAlarmObjects", "TotalProcessingTime", "AlarmDecisionTime"):
        assert kw in ds, kw


def test_operator_marks_per_pto(machine: Path, tmp_path: Path):
    tdr = write_operator_tdr(read_tdr(machine), "THREAT", "op1", tmp_path / "o.dcm",
                             pto_marks={1: "NO_THREAT", 3: "high_threat"}, review_ms=4200)
    assert [p.flag for p in tdr.ptos] == ["NO_THREAT", "THREAT", "HIGH_THREAT"]
    assert tdr.total_processing_ms == 4200
    assert tdr.number_of_alarm_objects == 2


@pytest.mark.parametrize(
    ("decision", "operator", "marks", "message"),
    [
        ("MAYBE", "op", None, "decision must be one of"),
        ("CLEAR", "op", {2: "THREAT"}, "contradicts PTO 2"),
        ("SUSPECT", "op", {9: "THREAT"}, r"no PTO with ID \[9\]"),
        ("THREAT", "op", {1: "DANGEROUS"}, "not one of"),
        ("THREAT", "  ", None, "operator ID is required"),
    ],
)
def test_operator_tdr_rejects_bad_input(machine: Path, tmp_path: Path, decision, operator, marks,
                                        message):
    out = tmp_path / "o.dcm"
    with pytest.raises(ValueError, match=message):
        write_operator_tdr(machine, decision, operator, out, pto_marks=marks)
    assert not out.exists()


def test_operator_tdr_main(machine: Path, tmp_path: Path):
    out = tmp_path / "sub" / "operator.dcm"
    summary = operator_tdr_main(machine, "suspect", "op-9", out)
    json.dumps(summary)
    assert summary["tdr_type"] == "OPERATOR" and summary["alarm_decision"] == "ALARM"
    assert summary["decision"] == "SUSPECT" and summary["operator"] == "op-9"
    assert summary["referenced_tdr"] == read_tdr(machine).sop_instance_uid
    assert read_tdr(out).sop_instance_uid == summary["sop_instance_uid"]


# --------------------------------------------------------------------------- vendor quirks


def test_vendor_toolkit_quirks_load(machine: Path, tmp_path: Path):
    """Extra file-meta element (0002,0004) "V03", unknown tags, leading-zero UIDs, an FD
    ImageScaleRepresentation, one-valued algorithm, 'GROUND TRUTH' spelling."""
    study = "1.2.840.0113654.02.1"
    sop = "1.2.840.0113654.02.1.0001"
    image = "1.2.840.0113654.02.1.0002.3"

    def quirks(ds: Dataset) -> None:
        ds.file_meta.add_new(0x00020004, "CS", "V03")
        ds.file_meta.MediaStorageSOPInstanceUID = sop
        ds.SOPInstanceUID = sop
        ds.StudyInstanceUID = study
        ds.ReferencedStudySequence[0].ReferencedSOPInstanceUID = study
        ds.add_new(0x00082108, "CS", "VENDOR")
        ds.add_new(0x43000902, "LO", "private-ish")
        del ds[0x40101075]
        ds.add_new(0x40101075, "FD", 1.0)
        ds.ThreatDetectionAlgorithmAndVersion = "ACME-ATR"
        ds.TDRType = "GROUND TRUTH"
        rep = ds.ThreatSequence[1].PTORepresentationSequence[0]
        rep.ReferencedInstanceSequence[0].ReferencedSOPInstanceUID = image
        rep.add_new(0x43000902, "LO", "unknown inside a sequence")

    quirky = _rewrite(machine, tmp_path / "vendor.dcm", quirks, enforce_file_format=True)
    assert pydicom.dcmread(quirky).file_meta[0x00020004].value == "V03"
    tdr = read_tdr(quirky)
    assert tdr.sop_instance_uid == sop
    assert tdr.scan_study_uid == study
    assert tdr.tdr_type == "GROUND_TRUTH"
    assert tdr.algorithm == Algorithm("ACME-ATR")
    assert tdr.image_scale_representation == 1.0
    assert tdr.ptos[1].referenced_instance.sop_instance_uid == image
    assert len(tdr.ptos) == 3
    [info] = inspect_main([quirky])
    assert "error" not in info and info["tdr_type"] == "GROUND_TRUTH"


def test_tdr_without_preamble_fields_but_modality_tdr_reads(machine: Path, tmp_path: Path):
    """Some writers leave SOPClassUID out of the dataset; Modality TDR still identifies it."""
    def drop_class(ds: Dataset) -> None:
        del ds.SOPClassUID

    tdr = read_tdr(_rewrite(machine, tmp_path / "noclass.dcm", drop_class))
    assert tdr.tdr_type == "MACHINE" and len(tdr.ptos) == 3


# --------------------------------------------------------------------------- malformed


def _drop_roi_base(ds: Dataset) -> None:
    del ds.ThreatSequence[1].PTORepresentationSequence[0].ThreatROIVoxelSequence[0].ThreatROIBase


def _two_value_base(ds: Dataset) -> None:
    ds.ThreatSequence[0].PTORepresentationSequence[0].ThreatROIVoxelSequence[0].ThreatROIBase = [1.0, 2.0]


def _text_base(ds: Dataset) -> None:
    roi = ds.ThreatSequence[0].PTORepresentationSequence[0].ThreatROIVoxelSequence[0]
    del roi.ThreatROIBase
    roi.add_new(0x40101004, "LO", "left corner")


def _threats_not_a_sequence(ds: Dataset) -> None:
    del ds.ThreatSequence
    ds.add_new(0x40101011, "LO", "none")


def _text_pto_id(ds: Dataset) -> None:
    item = ds.ThreatSequence[2]
    del item.PotentialThreatObjectID
    item.add_new(0x40101010, "LO", "three")


def _no_representation(ds: Dataset) -> None:
    del ds.ThreatSequence[0].PTORepresentationSequence


def _duplicate_ids(ds: Dataset) -> None:
    ds.ThreatSequence[1].PotentialThreatObjectID = 1


def _no_tdr_type(ds: Dataset) -> None:
    del ds.TDRType


def _bitmap_as_text(ds: Dataset) -> None:
    roi = ds.ThreatSequence[0].PTORepresentationSequence[0].ThreatROIVoxelSequence[0]
    del roi.ThreatROIBitmap
    roi.add_new(0x40101006, "LO", "ones")


def _negative_extent(ds: Dataset) -> None:
    ds.ThreatSequence[1].PTORepresentationSequence[0].ThreatROIVoxelSequence[0].ThreatROIExtents = [1, -2, 3]


def _not_a_tdr(ds: Dataset) -> None:
    ds.SOPClassUID = DICOSCTImageStorage
    ds.Modality = "CT"


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        (_drop_roi_base, "PTO 2 has no ThreatROIBase"),
        (_two_value_base, "PTO 1: ThreatROIBase has 2 value(s), expected 3"),
        (_text_base, "PTO 1: ThreatROIBase is not numeric"),
        (_threats_not_a_sequence, "ThreatSequence is not a sequence (VR LO)"),
        (_text_pto_id, "ThreatSequence item 3: PotentialThreatObjectID is not numeric"),
        (_no_representation, "PTO 1 has no PTORepresentationSequence"),
        (_duplicate_ids, "duplicate PTO ID 1"),
        (_no_tdr_type, "no TDRType"),
        (_bitmap_as_text, "PTO 1: ThreatROIBitmap is not binary data"),
        (_negative_extent, "PTO 2: negative ThreatROIExtents"),
        (_not_a_tdr, "not a DICOS TDR"),
    ],
)
def test_malformed_tdr_names_file_and_problem(machine: Path, tmp_path: Path, change, problem):
    bad = _rewrite(machine, tmp_path / "bad.dcm", change)
    with pytest.raises(TdrError) as err:
        read_tdr(bad)
    assert str(err.value).startswith(f"{bad}: ")
    assert problem in str(err.value)


def test_truncated_tdr(machine: Path, tmp_path: Path):
    data = machine.read_bytes()
    bad = tmp_path / "truncated.dcm"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(TdrError, match=rf"^{bad}: truncated file"):
        read_tdr(bad)
    # Wherever the file is cut, the result is a TdrError or (cut exactly between two
    # optional trailing elements) a TDR: never another exception.
    for cut in range(0, len(data), 29):
        bad.write_bytes(data[:cut])
        try:
            read_tdr(bad)
        except TdrError as exc:
            assert str(exc).startswith(f"{bad}: ")


def test_unreadable_files(tmp_path: Path):
    junk = tmp_path / "junk.dcm"
    junk.write_bytes(b"not dicom at all" * 20)
    with pytest.raises(TdrError, match=rf"^{junk}: not a DICOM file"):
        read_tdr(junk)
    missing = tmp_path / "missing.dcm"
    with pytest.raises(TdrError, match=rf"^{missing}: no such file"):
        read_tdr(missing)


def test_one_bad_file_does_not_stop_inspection(machine: Path, tmp_path: Path):
    bad = _rewrite(machine, tmp_path / "bad.dcm", _drop_roi_base)
    results = inspect_main([machine, bad])
    assert results[0]["tdr_type"] == "MACHINE"
    assert results[1] == {"path": str(bad), "error": f"{bad}: PTO 2 has no ThreatROIBase"}


# --------------------------------------------------------------------------- inspect


def test_inspect_tdr_object(machine: Path):
    info = inspect_file(machine)
    json.dumps(info)
    assert info["sop_class_uid"] == TDR_CLASS
    assert info["modality"] == "TDR"
    assert info["tdr_type"] == "MACHINE"
    assert info["alarm_decision"] == "ALARM"
    assert [(p["id"], p["base"], p["extent"], p["flag"], p["category"]) for p in info["ptos"]] == [
        (1, [10, 20, 5], [4, 3, 2], "HIGH_THREAT", "EXPLOSIVE"),
        (2, [30.5, 2, 17], [8, 8, 8], "THREAT", "PROHIBITED_ITEM"),
        (3, [0, 0, 30], [5, 5, 5], "UNKNOWN", "ANOMALY"),
    ]


def test_inspect_images(tmp_path: Path):
    bag = make_bag_volume(size=32, slices=8, threats=0, seed=3)
    write_ct_series(bag, tmp_path / "dicos", dicos=True, seed=3)
    write_ct_series(bag, tmp_path / "classic", dicos=False, seed=3)
    write_dx(bag, tmp_path / "dx", dicos=True, dual_energy=False, seed=3)
    results = inspect_main([tmp_path])
    by_dir: dict[str, list[dict]] = {}
    for r in results:
        assert "error" not in r, r
        by_dir.setdefault(Path(r["path"]).parent.name, []).append(r)
    [ct] = by_dir["dicos"]
    assert (ct["sop_class_uid"], ct["modality"], ct["shape"]) == (str(DICOSCTImageStorage), "CT", [8, 32, 32])
    assert ct["dicos"] is True
    assert len(by_dir["classic"]) == 8
    assert all(r["shape"] == [1, 32, 32] and r["modality"] == "CT" for r in by_dir["classic"])
    [dx] = by_dir["dx"]
    assert dx["modality"] == "DX" and dx["shape"][0] == 1 and dx["dicos"] is True


def test_scan_ref_from_a_dicos_volume(tmp_path: Path):
    bag = make_bag_volume(size=32, slices=8, threats=0, seed=4)
    [path] = write_ct_series(bag, tmp_path, dicos=True, seed=4)
    truth = json.loads((tmp_path / "truth.json").read_text())["series"]["dicos-ct"]
    scan = scan_ref_from_volume(load_volume(path))
    assert scan.study_uid == truth["study_uid"]
    assert scan.series_uid == truth["series_uid"]
    assert scan.instance_uids == tuple(truth["sop_instance_uids"])
    assert len(scan.slice_uids) == 8
    assert scan.patient_id == truth["patient_id"] and scan.ooi_type == "BAGGAGE"


def test_module_exports_exist():
    for name in dicos.__all__:
        assert hasattr(dicos, name), name


def test_sequence_helper_rejects_bad_reference_items(machine: Path, tmp_path: Path):
    """A referenced-instance item without a UID is skipped, not an error."""
    def blank(ds: Dataset) -> None:
        rep = ds.ThreatSequence[0].PTORepresentationSequence[0]
        rep.ReferencedInstanceSequence = Sequence([Dataset()])

    tdr = read_tdr(_rewrite(machine, tmp_path / "blank.dcm", blank))
    assert tdr.ptos[0].referenced_instances == ()
