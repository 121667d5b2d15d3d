"""The quick header scan gives the store exactly what pydicom gives it, or declines."""

from __future__ import annotations

import io
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from station.core.dicom import scan as dicomscan
from station.core.store.store import HEADER_SCAN_BYTES, _pydicom_header, _scanned_header
from tests.dicom_factory import make_ct_files


def _pydicom_or_none(raw: bytes):
    try:
        return _pydicom_header(io.BytesIO(raw))
    except Exception:  # noqa: BLE001 - pydicom refuses some test files; the scan must then too
        return None


def _save(ds: Dataset, *, implicit: bool = False) -> bytes:
    if implicit:
        ds.file_meta.TransferSyntaxUID = pydicom.uid.ImplicitVRLittleEndian
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def _ct(tmp_path: Path) -> Dataset:
    return pydicom.dcmread(make_ct_files(tmp_path, n=1)[0])


def test_every_pydicom_test_file_scans_like_pydicom_or_is_declined():
    scanned = 0
    # pydicom's own test files (the local ones: get_testdata_files would try to download).
    for name in sorted((Path(pydicom.__file__).parent / "data" / "test_files").rglob("*.dcm")):
        raw = Path(name).read_bytes()
        fast = _scanned_header(raw, complete=True)
        if fast is None:
            continue
        assert fast == _pydicom_or_none(raw), name
        scanned += 1
    assert scanned >= 30  # the common cases are not all declined


@pytest.mark.parametrize("implicit", [False, True])
def test_sequences_of_undefined_length_before_the_wanted_tags_are_skipped(tmp_path, implicit):
    ds = _ct(tmp_path)
    inner = Dataset()
    inner.CodeValue = "X"
    nested = Dataset()
    nested.ConceptCodeSequence = Sequence([inner])  # nested sequence
    ds.ReferencedImageSequence = Sequence([nested, Dataset()])  # (0008,1140), before series/study tags
    raw = _save(ds, implicit=implicit)
    fast = _scanned_header(raw, complete=True)
    assert fast is not None
    assert fast == _pydicom_header(io.BytesIO(raw))
    assert fast.rows == 16 and fast.instance_number == 1


@pytest.mark.parametrize(("charset", "name"), [
    (None, "Muller^Hans"), ("ISO_IR 100", "Müller^Hans"), ("ISO_IR 192", "Müller^Hans 山田"),
])
def test_names_decode_with_the_character_set(tmp_path, charset, name):
    ds = _ct(tmp_path)
    if charset:
        ds.SpecificCharacterSet = charset
    ds.PatientName = name
    ds.StudyDescription = name.replace("^", " ")
    raw = _save(ds)
    fast = _scanned_header(raw, complete=True)
    assert fast is not None and fast.patient_name == name
    assert fast == _pydicom_header(io.BytesIO(raw))


@pytest.mark.parametrize("change", ["multi_valued_id", "name_groups", "other_charset", "big_endian_rows"])
def test_what_the_scan_does_not_read_like_pydicom_is_declined(tmp_path, change):
    ds = _ct(tmp_path)
    if change == "multi_valued_id":
        ds.PatientID = ["A", "B"]
    elif change == "name_groups":
        ds.PatientName = "Yamada^Tarou=山田^太郎"
        ds.SpecificCharacterSet = "ISO_IR 192"
    elif change == "other_charset":
        ds.SpecificCharacterSet = "ISO_IR 144"
    else:
        ds.Rows = [16, 16]  # US with two values
    assert _scanned_header(_save(ds), complete=True) is None


def test_any_prefix_gives_the_same_header_or_declines(tmp_path):
    raw = _save(_ct(tmp_path))
    full = _pydicom_header(io.BytesIO(raw))
    answered = 0
    for cut in range(0, 1200, 7):
        fast = _scanned_header(raw[:cut], complete=False)
        if fast is not None:
            assert fast == full
            answered += 1
    assert answered > 0


def test_garbage_is_declined():
    for data in (b"", b"\x00" * 132, b"\x00" * 128 + b"DICM" + b"\xff" * 64, b"\x00" * 128 + b"DICM"):
        assert dicomscan.scan_part10(data, frozenset({0x00080018}), complete=True) is None


def test_store_ingest_and_adopt_use_the_scan_for_received_ct(store, tmp_path):
    from station.core.synth.bags import make_bag_volume, write_ct_series

    files = write_ct_series(make_bag_volume(size=64, slices=8, threats=0, seed=1), tmp_path / "ct")
    raw = files[0].read_bytes()
    assert len(raw) > 0 and _scanned_header(raw[:HEADER_SCAN_BYTES], complete=len(raw) <= HEADER_SCAN_BYTES)
    spooled = store.spool_dir() / "x.part"
    spooled.write_bytes(files[1].read_bytes())
    for event in (store.ingest([raw]), store.adopt(spooled)):
        assert event.modality == "CT" and Path(event.path).exists()
