"""Issue 15: every DICOS object the station writes is read by the NEMA DICOS toolkit
(``pydicos``) without an error, and reads back right; objects the toolkit writes are read
right by the station. Objects are made by the station's real code paths (synth writer,
``station detect``'s detect_main, the triage AlertBook), never hand-built."""

from __future__ import annotations

import copy
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pyDICOS import ALARM_DECISION, ASSESSMENT_FLAG, TDR_TYPE, THREAT_CATEGORY

from station.core.detection.detectors import detect_main
from station.core.dicom.sopclasses import DICOS_TDR
from station.core.dicos import read_tdr
from station.core.dicos.site import Site
from station.core.dicos.validate import validate_file
from station.core.imaging.volume import load_volume
from station.core.synth import bags as synth
from station.core.triage.alerts import AlertBook
from tests.dicos_toolkit import toolkit_ct, toolkit_dx, toolkit_read, toolkit_tdr

FLAGS = {"HIGH_THREAT": ASSESSMENT_FLAG.enumHighThreat, "THREAT": ASSESSMENT_FLAG.enumThreat,
         "NO_THREAT": ASSESSMENT_FLAG.enumNoThreat, "UNKNOWN": ASSESSMENT_FLAG.enumUnknown}


@pytest.fixture(scope="module")
def bag():
    return synth.make_bag_volume(size=96, slices=32, threats=2, seed=21)


@pytest.fixture(scope="module")
def dicos_ct(bag, tmp_path_factory) -> Path:
    (path,) = synth.write_ct_series(bag, tmp_path_factory.mktemp("ct"), dicos=True, seed=21)
    return path


@pytest.mark.parametrize("syntax", [None, "1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.5"],
                         ids=["explicit-le", "jpeg2000-lossless", "rle"])
def test_synth_dicos_ct_is_read_by_the_toolkit_with_its_pixels(bag, tmp_path, syntax):
    (path,) = synth.write_ct_series(bag, tmp_path, dicos=True, seed=21, transfer_syntax=syntax)
    (toolkit_voxels,) = toolkit_read("ct", path).get_data()
    stored = pydicom.dcmread(path).pixel_array
    assert toolkit_voxels.shape == bag.voxels.shape
    assert np.array_equal(toolkit_voxels, stored)
    # stored = MHU + 1000 (RescaleIntercept -1000): the toolkit sees the station's voxels
    assert np.array_equal(toolkit_voxels.astype(np.int32) - 1000, bag.voxels)


def test_synth_dicos_dx_is_read_by_the_toolkit_with_its_pixels(bag, tmp_path):
    paths = synth.write_dx(bag, tmp_path, dicos=True, dual_energy=True, seed=21)
    assert len(paths) == 2  # dual energy
    for path in paths:
        image = toolkit_read("dx", path).get_data()
        assert np.array_equal(image, pydicom.dcmread(path).pixel_array)
        assert image.shape == (bag.voxels.shape[2], bag.voxels.shape[0])  # rows x, columns z


def test_machine_tdr_from_station_detect_reads_back_right(bag, dicos_ct, tmp_path):
    out = tmp_path / "machine.dcm"
    result = detect_main([dicos_ct], tdr_out=out)
    ours = read_tdr(out)
    assert len(ours.ptos) >= 2 and result["alarm_decision"] == "ALARM"

    tdr = toolkit_read("tdr", out)
    data = tdr.get_data()
    assert data["TDRType"] == TDR_TYPE.enumMachine
    assert data["AlarmDecision"] == ALARM_DECISION.enumAlarm
    assert data["OOIID"] == ours.ooi_id == pydicom.dcmread(dicos_ct).PatientID
    assert tdr.GetScanInstanceUID().Get() == pydicom.dcmread(dicos_ct).StudyInstanceUID
    assert tdr.GetOOIIDAssigningAuthority().Get() == "SYNTH"  # the scan's, not the station's
    assert len(data["PTOs"]) == len(ours.ptos)
    for theirs, mine in zip(sorted(data["PTOs"], key=lambda p: p["ID"]), ours.ptos):
        assert theirs["ID"] == mine.id
        assert (theirs["Base"]["x"], theirs["Base"]["y"], theirs["Base"]["z"]) == mine.base
        assert (theirs["Extent"]["x"], theirs["Extent"]["y"], theirs["Extent"]["z"]) == mine.extent
        assert theirs["Assessment"]["flag"] == FLAGS[mine.flag]
        assert theirs["Assessment"]["category"] == getattr(THREAT_CATEGORY, "enum" + mine.category.title())
        if mine.bitmap is not None:
            assert np.array_equal(theirs["Bitmap"].astype(bool), mine.mask())
    # every planted threat is inside one of the boxes the toolkit read
    for threat in bag.threats:
        cx, cy, cz = threat.center_xyz
        assert any(p["Base"]["x"] <= cx < p["Base"]["x"] + p["Extent"]["x"]
                   and p["Base"]["z"] <= cz < p["Base"]["z"] + p["Extent"]["z"] for p in data["PTOs"])


@pytest.mark.parametrize(("decision", "alarm", "flag"), [
    ("CLEAR", ALARM_DECISION.enumClear, ASSESSMENT_FLAG.enumNoThreat),
    ("SUSPECT", ALARM_DECISION.enumAlarm, ASSESSMENT_FLAG.enumUnknown),
    ("THREAT", ALARM_DECISION.enumAlarm, ASSESSMENT_FLAG.enumThreat),
])
def test_operator_tdr_from_a_triage_decision_reads_back_right(dicos_ct, store, tmp_path, decision,
                                                              alarm, flag):
    scan = store.import_file(dicos_ct)
    detect_main([dicos_ct], tdr_out=tmp_path / "machine.dcm")
    machine = store.import_file(tmp_path / "machine.dcm")
    book = AlertBook(store)
    book.load()
    (written,) = book.record_decision(scan.series_uid, decision, "analyst-7")
    (row,) = [r for r in store.instances_of_class(DICOS_TDR) if r.sop_instance_uid == written]
    path = store.path_of(row) if hasattr(store, "path_of") else Path(row.path)

    tdr = toolkit_read("tdr", path)
    data = tdr.get_data()
    assert data["TDRType"] == TDR_TYPE.enumOperator
    assert data["AlarmDecision"] == alarm
    assert {p["Assessment"]["flag"] for p in data["PTOs"]} == {flag}
    ours = read_tdr(path)
    assert len(data["PTOs"]) == len(ours.ptos) == len(read_tdr(Path(machine.path)).ptos)
    assert [(p["Base"]["x"], p["Base"]["y"], p["Base"]["z"]) for p in data["PTOs"]] == \
        [p.base for p in ours.ptos]
    assert data["OOIID"] == ours.ooi_id and ours.operator_decision == decision
    # The toolkit's Python binding cannot return the operator (DcsPersonName is not
    # exported): the station reads it, and the macro the toolkit checked holds it.
    assert ours.operator_id == "analyst-7"
    assert [r.sop_instance_uid for r in ours.referenced_tdrs] == [machine.sop_instance_uid]
    person = pydicom.dcmread(path).OperatorIdentificationSequence[0]
    assert person.PersonIdentificationCodeSequence[0].CodeValue == "analyst-7"
    assert person.InstitutionName == Site().institution_name


def test_a_tdr_for_a_vendor_scan_keeps_the_vendor_identifiers(tmp_path):
    rng = np.random.default_rng(5)
    voxels = rng.integers(900, 1100, (16, 48, 40)).astype(np.uint16)
    voxels[5:9, 10:20, 10:18] = 2700  # a dense block, as the detector's explosive band
    scan = toolkit_ct(tmp_path / "vendor_ct.dcs", voxels)
    vendor = pydicom.dcmread(scan)
    out = tmp_path / "machine.dcm"
    detect_main([scan], tdr_out=out)
    toolkit_read("tdr", out)  # accepted
    ds = pydicom.dcmread(out)
    for kw in ("PatientID", "IssuerOfPatientID", "StudyID", "StudyInstanceUID", "FrameOfReferenceUID",
               "TypeOfPatientID"):
        assert ds.get(kw) == vendor.get(kw), kw
    assert ds.ReferencedSeriesSequence[0].SeriesInstanceUID == vendor.SeriesInstanceUID


def test_toolkit_objects_are_read_by_the_station(tmp_path):
    rng = np.random.default_rng(9)
    voxels = rng.integers(0, 4000, (12, 40, 36)).astype(np.uint16)
    ct = toolkit_ct(tmp_path / "ct.dcs", voxels, spacing=(0.8, 0.9, 2.5), position=(-10.0, 5.0, 40.0))
    volume = load_volume([ct])
    assert volume.shape == voxels.shape
    assert np.array_equal(np.asarray(volume.array()), voxels.astype(np.asarray(volume.array()).dtype))
    assert volume.spacing_mm == pytest.approx((2.5, 0.9, 0.8))
    assert volume.origin_mm == pytest.approx((-10.0, 5.0, 40.0))

    image = rng.integers(0, 4000, (30, 50)).astype(np.uint16)
    dx = toolkit_dx(tmp_path / "dx.dcs", image)
    values, slope, intercept = load_volume([dx]).stored_slice(0)
    assert np.array_equal(values, image) and (slope, intercept) == (1.0, 0.0)

    boxes = [((2, 3, 1), (5, 6, 4)), ((20, 11, 5), (3, 3, 3)), ((30, 30, 9), (4, 5, 2))]
    tdr = read_tdr(toolkit_tdr(tmp_path / "tdr.dcs", ct, boxes,
                               flags={2: ASSESSMENT_FLAG.enumHighThreat}))
    assert tdr.tdr_type == "MACHINE" and tdr.alarm_decision == "ALARM"
    assert [(p.base, p.extent) for p in tdr.ptos] == [
        (tuple(map(float, b)), tuple(map(float, e))) for b, e in boxes]
    assert [p.flag for p in tdr.ptos] == ["THREAT", "HIGH_THREAT", "THREAT"]
    assert {p.category for p in tdr.ptos} == {"EXPLOSIVE"}
    assert [p.mass_g for p in tdr.ptos] == [250.0, 500.0, 750.0]
    assert tdr.scan_study_uid == pydicom.dcmread(ct).StudyInstanceUID


def test_validate_reports_what_the_toolkit_refuses(dicos_ct, tmp_path):
    assert validate_file(dicos_ct)["valid"] is True
    broken = tmp_path / "broken.dcm"
    ds = pydicom.dcmread(dicos_ct)
    del ds.ScanType
    ds.save_as(broken)
    report = validate_file(broken)
    assert report["valid"] is False
    assert report["errors"] == ["Missing required attribute Scan Type [CS (4010, 1048)]"]
    del ds.DICOSVersion
    ds.save_as(tmp_path / "old.dcm")
    assert any("Unsupported DICOS version" in e for e in validate_file(tmp_path / "old.dcm")["errors"])

    run = subprocess.run([sys.executable, "-m", "station", "inspect", "--validate", str(dicos_ct),
                          str(broken)], capture_output=True, text=True, timeout=120)
    assert run.returncode == 1, run.stderr
    assert f"{dicos_ct}: valid" in run.stdout and f"{broken}: REFUSED" in run.stdout
    assert "Missing required attribute Scan Type" in run.stdout

    notes = tmp_path / "notes"
    notes.mkdir()
    shutil.copy(dicos_ct, notes / "scan.dcm")
    (notes / "README").write_text("not DICOM")
    run = subprocess.run([sys.executable, "-m", "station", "inspect", "--validate", "--json",
                          str(notes)], capture_output=True, text=True, timeout=120)
    assert run.returncode == 1  # the README is refused as not DICOM, the scan is valid
    assert '"valid": true' in run.stdout and "not a DICOM file" in run.stdout


def test_site_settings_sign_the_tdrs_the_station_writes(dicos_ct, tmp_path):
    config = tmp_path / "station.toml"
    config.write_text('[site]\ninstitution_name = "Terminal 2 South"\ninstitution_address = "Gate B"\n'
                      'station_name = "T2S-LANE4"\ndevice_serial_number = "SN-0042"\n'
                      'ooi_id_assigning_authority = "T2S"\ncalibration = 2026-11-30T07:15:00\n')
    machine, operator = tmp_path / "machine.dcm", tmp_path / "operator.dcm"
    for args in (["detect", str(dicos_ct), "--tdr-out", str(machine), "--json"],
                 ["tdr", "operator", "--machine-tdr", str(machine), "--decision", "THREAT",
                  "--operator", "op-3", "--out", str(operator)]):
        run = subprocess.run([sys.executable, "-m", "station", "--config", str(config), *args],
                             capture_output=True, text=True, timeout=120)
        assert run.returncode == 0, run.stderr
    for path in (machine, operator):
        toolkit_read("tdr", path)
        ds = pydicom.dcmread(path)
        assert (ds.InstitutionName, ds.InstitutionAddress, ds.StationName, ds.DeviceSerialNumber) == (
            "Terminal 2 South", "Gate B", "T2S-LANE4", "SN-0042")
        assert (ds.DateOfLastCalibration, ds.TimeOfLastCalibration) == ("20261130", "071500")
        assert ds.IssuerOfPatientID == "SYNTH"  # the scan named its own authority: kept
    person = pydicom.dcmread(operator).OperatorIdentificationSequence[0]
    assert person.InstitutionName == "Terminal 2 South"

    config.write_text('[site]\nstation_name = "A-NAME-LONGER-THAN-16"\n')
    run = subprocess.run([sys.executable, "-m", "station", "--config", str(config), "detect", str(dicos_ct)],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 2 and "[site]" in run.stderr and "station_name" in run.stderr


def test_an_analyst_marks_a_threat_the_machine_missed(dicos_ct, bag, store, tmp_path):
    """Operator TDRs with the analyst's own PTO box: next to the machine's PTOs, and for a
    scan that had no machine TDR at all; both read right by the toolkit."""
    from station.core.dicos import Pto, scan_ref_from_volume

    scan_row = store.import_file(dicos_ct)
    scan = scan_ref_from_volume(load_volume([dicos_ct]))
    box = Pto(id=0, base=(10.0, 12.0, 4.0), extent=(8.0, 6.0, 3.0), category="PROHIBITED_ITEM")
    book = AlertBook(store)
    book.load()
    (alone,) = book.record_decision(scan_row.series_uid, "THREAT", "analyst-2", drawn=[box], scan=scan)
    (row,) = [r for r in store.instances_of_class(DICOS_TDR) if r.sop_instance_uid == alone]
    data = toolkit_read("tdr", Path(row.path)).get_data()
    assert data["TDRType"] == TDR_TYPE.enumOperator and data["AlarmDecision"] == ALARM_DECISION.enumAlarm
    (pto,) = data["PTOs"]
    assert (pto["Base"]["x"], pto["Base"]["y"], pto["Base"]["z"]) == box.base
    assert (pto["Extent"]["x"], pto["Extent"]["y"], pto["Extent"]["z"]) == box.extent
    assert pto["Assessment"]["flag"] == ASSESSMENT_FLAG.enumThreat
    assert pto["Assessment"]["category"] == THREAT_CATEGORY.enumProhibitedItem
    ours = read_tdr(Path(row.path))
    assert ours.operator_decision == "THREAT" and ours.referenced_tdrs == ()
    assert ours.scan_study_uid == scan.study_uid and ours.ooi_id == scan.patient_id
    assert [r.sop_instance_uid for r in ours.ptos[0].referenced_instances] == list(scan.instance_uids)

    detect_main([dicos_ct], tdr_out=tmp_path / "machine.dcm")
    machine = read_tdr(store.import_file(tmp_path / "machine.dcm").path)
    book.load()
    (both,) = book.record_decision(scan_row.series_uid, "THREAT", "analyst-2", drawn=[box], scan=scan)
    (row,) = [r for r in store.instances_of_class(DICOS_TDR) if r.sop_instance_uid == both]
    data = toolkit_read("tdr", Path(row.path)).get_data()
    assert len(data["PTOs"]) == len(machine.ptos) + 1
    ours = read_tdr(Path(row.path))
    assert [p.id for p in ours.ptos] == [*(p.id for p in machine.ptos), max(p.id for p in machine.ptos) + 1]
    assert ours.ptos[-1].base == box.base and ours.ptos[-1].referenced_pto_id is None
    assert [p.referenced_pto_id for p in ours.ptos[:-1]] == [p.id for p in machine.ptos]
    with pytest.raises(ValueError, match="CLEAR contradicts a box"):
        book.record_decision(scan_row.series_uid, "CLEAR", "analyst-2", drawn=[box], scan=scan)


def test_a_pto_seen_in_a_ct_and_a_dx_raises_an_alert_on_each(store, tmp_path):
    """Every representation of a PTO reaches an alert: a toolkit TDR whose PTO also has a
    DX view (a second PTORepresentationSequence item referencing the DX) shows its box on
    both scans; the analyst's operator TDR keeps both views, and the toolkit reads it."""
    ct = toolkit_ct(tmp_path / "ct.dcs", np.full((8, 32, 32), 1000, np.uint16))
    dx = toolkit_dx(tmp_path / "dx.dcs", np.full((40, 50), 1000, np.uint16))
    tdr_path = toolkit_tdr(tmp_path / "tdr.dcs", ct, [((4, 5, 2), (6, 7, 3))])
    ds, dx_ds = pydicom.dcmread(tdr_path), pydicom.dcmread(dx)
    view = copy.deepcopy(ds.ThreatSequence[0].PTORepresentationSequence[0])
    ref = Dataset()
    ref.ReferencedSOPClassUID, ref.ReferencedSOPInstanceUID = dx_ds.SOPClassUID, dx_ds.SOPInstanceUID
    view.ReferencedInstanceSequence = [ref]
    roi = view.ThreatROIVoxelSequence[0]
    roi.ThreatROIBase, roi.ThreatROIExtents = [20.0, 10.0, 0.0], [9.0, 8.0, 1.0]
    roi.ThreatROIBitmap = np.packbits(np.ones(9 * 8, np.uint8), bitorder="little").tobytes()
    ds.ThreatSequence[0].PTORepresentationSequence.append(view)
    ds.save_as(tdr_path)
    toolkit_read("tdr", tdr_path)  # still a TDR the toolkit accepts
    for path in (ct, dx, tdr_path):
        store.import_file(path)
    book = AlertBook(store)
    book.load()
    (on_ct,) = book.for_series(pydicom.dcmread(ct).SeriesInstanceUID)
    (on_dx,) = book.for_series(dx_ds.SeriesInstanceUID)
    assert (on_ct.base, on_ct.extent) == ((4.0, 5.0, 2.0), (6.0, 7.0, 3.0))
    assert (on_dx.base, on_dx.extent) == ((20.0, 10.0, 0.0), (9.0, 8.0, 1.0))
    assert on_ct.pto_id == on_dx.pto_id == 1 and on_ct.key != on_dx.key

    (uid,) = book.record_decision(on_ct.series_uid, "THREAT", "analyst-1")
    assert book.is_resolved(on_dx)  # one decision on the PTO, whichever view it was taken on
    (row,) = [r for r in store.instances_of_class(DICOS_TDR) if r.sop_instance_uid == uid]
    (pto,) = read_tdr(Path(row.path)).ptos
    assert [(v.base, v.extent) for v in pto.representations] == [
        (on_ct.base, on_ct.extent), (on_dx.base, on_dx.extent)]
    assert pto.representations[1].referenced_instance.sop_instance_uid == dx_ds.SOPInstanceUID
    toolkit_read("tdr", Path(row.path))
