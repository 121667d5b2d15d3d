"""The DICOMweb client against a real Orthanc + DICOMweb plugin (see conftest.py):
search, metadata, raw frames single and batched, compressed frames, rendered fallback,
validation errors, a stopped server, and the frame cache."""

from __future__ import annotations

import time

import numpy as np
import pydicom
import pytest
import requests

from station.testing.orthanc import OrthancServer

from station.testing.ports import free_port
from station.core.remote.framecache import FrameCache
from station.net.dicomweb.client import (
    RAW_ACCEPT_ANY,
    AuthenticationFailed,
    BearerAuth,
    DicomWebClient,
    EmptyPart,
    FrameCountMismatch,
    FrameOutOfRange,
    NotFound,
    PixelDescription,
    RemoteUnavailable,
    ServerError,
    UnexpectedContentType,
    auth_for,
    decode_frame,
)
from tests.orthanc_fixtures import SIZE, SLICES

HTJ2K_LOSSLESS = "1.2.840.10008.1.2.4.201"  # Orthanc 1.10 cannot produce it


@pytest.fixture
def client(orthanc):
    c = DicomWebClient(orthanc.dicomweb_url, timeout=20)
    yield c
    c.close()


def source_frame(scan, k: int) -> bytes:
    """Stored pixel bytes of slice k (0-based) of an uncompressed scan."""
    if scan.multiframe:
        ds = pydicom.dcmread(scan.files[0])
        n = SIZE * SIZE * 2
        return bytes(ds.PixelData[k * n:(k + 1) * n])
    return bytes(pydicom.dcmread(scan.files[k]).PixelData)


def stored(scan, k: int) -> np.ndarray:
    return (scan.voxels[k].astype(np.int32) + 1000).astype(np.uint16)


# ----------------------------------------------------------------------------- QIDO-RS


def test_search_studies_by_patient_id_name_date_and_modality(client, scans):
    (found,) = client.search_studies(patient_id="BAG-RLE")
    assert found.StudyInstanceUID == scans["rle"].study_uid
    assert {ds.PatientID for ds in client.search_studies(patient_id="BAG-*")} >= {s.patient_id for s in scans.values()}
    named = client.search_studies(patient_name="*J2K*")
    assert [ds.StudyInstanceUID for ds in named] == [scans["j2k"].study_uid]
    march = client.search_studies(study_date=("20240301", "20240331"))
    assert {ds.StudyInstanceUID for ds in march} == {scans["classic"].study_uid, scans["dicos"].study_uid}
    assert [ds.StudyInstanceUID for ds in client.search_studies(study_date=scans["j2k"].study_date)] == [scans["j2k"].study_uid]
    assert len(client.search_studies(modality="CT")) >= len(scans)
    assert client.search_studies(modality="MR") == []
    assert client.search_studies(patient_id="NOBODY") == []


def test_search_series_within_and_across_studies(client, scans):
    scan = scans["dicos"]
    (series,) = client.search_series(scan.study_uid)
    assert series.SeriesInstanceUID == scan.series_uid and series.Modality == "CT"
    across = client.search_series(modality="CT", patient_id="BAG-CLASSIC")
    assert [s.SeriesInstanceUID for s in across] == [scans["classic"].series_uid]
    instances = client.search_instances(scans["classic"].study_uid, scans["classic"].series_uid)
    assert {ds.SOPInstanceUID for ds in instances} == set(scans["classic"].sop_uids)


def test_series_metadata_is_datasets_without_bulk_data(client, scans):
    scan = scans["classic"]
    metadata = client.series_metadata(scan.study_uid, scan.series_uid)
    assert {ds.SOPInstanceUID for ds in metadata} == set(scan.sop_uids)
    ds = metadata[0]
    assert (ds.Rows, ds.Columns, ds.RescaleIntercept) == (SIZE, SIZE, -1000)
    assert ds.get("PixelData") is None  # a BulkDataURI: not fetched with the metadata
    (multi,) = client.series_metadata(scans["dicos"].study_uid, scans["dicos"].series_uid)
    assert int(multi.NumberOfFrames) == SLICES and len(multi.PerFrameFunctionalGroupsSequence) == SLICES
    # Only what a viewer needs, when asked: the rest is never converted.
    (few,) = client.series_metadata(scans["dicos"].study_uid, scans["dicos"].series_uid,
                                    keywords=("Rows", "PerFrameFunctionalGroupsSequence"))
    assert set(few.dir()) == {"Rows", "PerFrameFunctionalGroupsSequence"} and few.Rows == SIZE
    assert few.PerFrameFunctionalGroupsSequence == multi.PerFrameFunctionalGroupsSequence
    with pytest.raises(ValueError, match="NoSuchKeyword"):
        client.series_metadata(scan.study_uid, scan.series_uid, keywords=("NoSuchKeyword",))


def test_unknown_series_is_not_found(client, scans):
    with pytest.raises(NotFound) as info:
        client.series_metadata(scans["dicos"].study_uid, "1.2.3.4.5.6")
    assert "1.2.3.4.5.6" in str(info.value) and info.value.status == 404


# ----------------------------------------------------------------------------- frames


def test_raw_single_frame_equals_the_source_bytes(client, scans):
    for name in ("classic", "dicos"):
        scan = scans[name]
        k = 3
        sop = scan.sop_uids[k] if not scan.multiframe else scan.sop_uids[0]
        number = 1 if not scan.multiframe else k + 1
        (frame,) = client.retrieve_frames(scan.study_uid, scan.series_uid, sop, [number])
        assert frame.data == source_frame(scan, k)
        assert frame.media_type == "application/octet-stream" and frame.transfer_syntax == "1.2.840.10008.1.2.1"
        assert not frame.rendered and not frame.from_cache
        pixel = PixelDescription(rows=SIZE, columns=SIZE, bits_stored=16)
        np.testing.assert_array_equal(decode_frame(frame, pixel), stored(scan, k))


def test_contiguous_frames_are_one_request(client, scans):
    scan = scans["dicos"]
    before = client.stats
    frames = client.retrieve_frames(scan.study_uid, scan.series_uid, scan.sop_uids[0], [3, 4, 5, 6, 7],
                                    number_of_frames=SLICES)
    used = client.stats.minus(before)
    assert used.requests == 1 and used.frames_from_network == 5
    assert [f.number for f in frames] == [3, 4, 5, 6, 7]
    for f in frames:
        assert f.data == source_frame(scan, f.number - 1)


def test_scattered_runs_go_in_parallel_one_request_each(client, scans):
    scan = scans["dicos"]
    before = client.stats
    frames = client.retrieve_frames(scan.study_uid, scan.series_uid, scan.sop_uids[0], [9, 1, 2, 5, 6, 10])
    assert client.stats.minus(before).requests == 3  # runs 1-2, 5-6, 9-10
    assert [f.number for f in frames] == [9, 1, 2, 5, 6, 10]  # the order asked
    for f in frames:
        assert f.data == source_frame(scan, f.number - 1)


def test_long_runs_are_split(orthanc, scans):
    scan = scans["dicos"]
    with DicomWebClient(orthanc.dicomweb_url, max_frames_per_request=4) as c:
        frames = c.retrieve_frames(scan.study_uid, scan.series_uid, scan.sop_uids[0], range(1, SLICES + 1))
        assert c.stats.requests == 3  # 4 + 4 + 2
    assert [f.data for f in frames] == [source_frame(scan, k) for k in range(SLICES)]


@pytest.mark.parametrize(("name", "media_type"), [("rle", "image/dicom-rle"), ("j2k", "image/jp2")])
def test_compressed_frames_decode_to_the_voxels(client, scans, name, media_type):
    scan = scans[name]
    metadata = client.series_metadata(scan.study_uid, scan.series_uid)
    pixel = PixelDescription.from_dataset(metadata[0])
    for k in (0, SLICES // 2, SLICES - 1):
        sop, number = (scan.sop_uids[0], k + 1) if scan.multiframe else (scan.sop_uids[k], 1)
        (frame,) = client.retrieve_frames(scan.study_uid, scan.series_uid, sop, [number])
        assert frame.media_type == media_type and frame.transfer_syntax == scan.transfer_syntax
        np.testing.assert_array_equal(decode_frame(frame, pixel), stored(scan, k))


def test_rendered_fallback_when_raw_frames_are_refused(orthanc, scans):
    """Raw frames 'not offered': the station asks for a transfer syntax Orthanc 1.10
    cannot produce (HTJ2K), Orthanc answers 400, and the client falls back to rendered
    PNG frames, marks them rendered and remembers the instance."""
    scan = scans["dicos"]
    sop = scan.sop_uids[0]
    with DicomWebClient(orthanc.dicomweb_url, transfer_syntax=HTJ2K_LOSSLESS) as c:
        frames = c.retrieve_frames(scan.study_uid, scan.series_uid, sop, [2, 3])
        assert all(f.rendered and f.media_type == "image/png" and f.transfer_syntax == "" for f in frames)
        assert "HTTP 400" in c.rendered_reason(sop)
        image = decode_frame(frames[0], PixelDescription(rows=SIZE, columns=SIZE))
        assert image.shape == (SIZE, SIZE) and image.dtype == np.uint8 and image.max() > image.min()
        requests_before = c.stats.requests
        c.retrieve_frames(scan.study_uid, scan.series_uid, sop, [5])
        assert c.stats.requests == requests_before + 1  # rendered straight away now
        assert c.stats.rendered_frames == 3
    with DicomWebClient(orthanc.dicomweb_url, transfer_syntax=HTJ2K_LOSSLESS, rendered_fallback=False) as c:
        with pytest.raises(ServerError) as info:
            c.retrieve_frames(scan.study_uid, scan.series_uid, sop, [2])
        assert info.value.status == 400 and "/frames/2" in str(info.value)


def test_no_fallback_when_rendered_fails_too(orthanc, scans):
    """JPEG 2000 demanded as uncompressed: this Orthanc has no J2K codec, so it can
    neither transcode (500) nor render: the raw error is reported, not hidden."""
    scan = scans["j2k"]
    with DicomWebClient(orthanc.dicomweb_url, transfer_syntax="1.2.840.10008.1.2.1") as c:
        with pytest.raises(ServerError) as info:
            c.retrieve_frames(scan.study_uid, scan.series_uid, scan.sop_uids[0], [1])
        assert info.value.status == 500
        assert c.rendered_reason(scan.sop_uids[0]) is None


def test_wrong_frame_numbers(client, scans):
    scan = scans["dicos"]
    before = client.stats.requests
    with pytest.raises(FrameOutOfRange, match=r"frame 11 out of range 1\.\.10"):
        client.retrieve_frames(scan.study_uid, scan.series_uid, scan.sop_uids[0], [10, 11], number_of_frames=SLICES)
    with pytest.raises(FrameOutOfRange):
        client.retrieve_frames(scan.study_uid, scan.series_uid, scan.sop_uids[0], [0])
    assert client.stats.requests == before  # caught before asking
    # Without NumberOfFrames the server says so, and the answer is mapped.
    with pytest.raises(FrameOutOfRange) as info:
        client.retrieve_frames(scan.study_uid, scan.series_uid, scan.sop_uids[0], [SLICES + 5])
    assert "HTTP 400" in str(info.value) and f"/frames/{SLICES + 5}" in info.value.url


# ----------------------------------------------------------------------------- validation


def multipart(parts: list[tuple[str, bytes]], boundary: str = "b0undary") -> tuple[str, bytes]:
    body = b"".join(
        b"--" + boundary.encode() + b"\r\nContent-Type: " + ct.encode() + b"\r\n\r\n" + data + b"\r\n"
        for ct, data in parts
    ) + b"--" + boundary.encode() + b"--\r\n"
    return f'multipart/related; type="application/octet-stream"; boundary={boundary}', body


@pytest.mark.parametrize(
    ("parts", "error"),
    [
        ([("application/octet-stream; transfer-syntax=1.2.840.10008.1.2.1", b"x" * 8)], FrameCountMismatch),
        ([("application/octet-stream; transfer-syntax=1.2.840.10008.1.2.1", b"x" * 8), ("text/html", b"<p>hi</p>")],
         UnexpectedContentType),
        ([("application/octet-stream; transfer-syntax=1.2.840.10008.1.2.1", b"x" * 8),
          ("application/octet-stream; transfer-syntax=1.2.840.10008.1.2.1", b"")], EmptyPart),
        ([("application/octet-stream; transfer-syntax=1.2.840.10008.1.2.1", b"x"),
          ("image/jls; transfer-syntax=9.9.9.9", b"x")], UnexpectedContentType),
    ],
)
def test_answers_are_validated(orthanc, monkeypatch, parts, error):
    """A test double for the HTTP answer only: Orthanc never sends such answers."""
    with DicomWebClient(orthanc.dicomweb_url) as c:
        content_type, body = multipart(parts)
        monkeypatch.setattr(c, "_get", lambda url, accept, **kw: (200, content_type, body))
        with pytest.raises(error) as info:
            c.retrieve_frames("1.2", "3.4", "5.6", [1, 2])
        assert "/frames/1,2" in str(info.value)


def test_specific_syntax_must_be_honoured(orthanc, monkeypatch):
    with DicomWebClient(orthanc.dicomweb_url, transfer_syntax="1.2.840.10008.1.2.1") as c:
        content_type, body = multipart([("image/dicom-rle; transfer-syntax=1.2.840.10008.1.2.5", b"rle")])
        monkeypatch.setattr(c, "_get", lambda url, accept, **kw: (200, content_type, body))
        with pytest.raises(UnexpectedContentType, match="1.2.840.10008.1.2.5"):
            c.retrieve_frames("1.2", "3.4", "5.6", [1])


def test_a_single_part_answer_that_is_not_multipart(orthanc, monkeypatch):
    with DicomWebClient(orthanc.dicomweb_url) as c:
        monkeypatch.setattr(c, "_get", lambda url, accept, **kw: (200, "application/octet-stream", b"raw"))
        with pytest.raises(UnexpectedContentType, match="multipart/related"):
            c.retrieve_frames("1.2", "3.4", "5.6", [1])


# ----------------------------------------------------------------------------- cache, dead store


def test_second_fetch_is_served_by_the_cache(orthanc, scans, tmp_path):
    scan = scans["dicos"]
    with FrameCache(tmp_path / "cache") as cache, DicomWebClient(orthanc.dicomweb_url, cache=cache) as c:
        first = c.retrieve_frames(scan.study_uid, scan.series_uid, scan.sop_uids[0], [1, 2, 3])
        requests_after_first = c.stats.requests
        again = c.retrieve_frames(scan.study_uid, scan.series_uid, scan.sop_uids[0], [1, 2, 3])
        assert c.stats.requests == requests_after_first
        assert all(f.from_cache for f in again) and [f.data for f in again] == [f.data for f in first]
        assert c.stats.frames_from_cache == 3
        # A run partly cached asks only for the rest.
        c.retrieve_frames(scan.study_uid, scan.series_uid, scan.sop_uids[0], [2, 3, 4, 5])
        assert c.stats.requests == requests_after_first + 1
    assert cache.stats.memory_hits >= 5


def test_stopped_server_unavailable_quickly_and_cache_still_serves(scans, tmp_path):
    """A second Orthanc is stopped mid-session: cached frames are still read (no network
    at all), anything else fails fast with RemoteUnavailable naming the URL."""
    scan = scans["dicos"]
    server = OrthancServer(tmp_path / "orthanc2").start()
    cache = FrameCache(tmp_path / "cache")
    try:
        server.upload(list(scan.files))
        with DicomWebClient(server.dicomweb_url, cache=cache, timeout=5) as c:
            cached = c.retrieve_frames(scan.study_uid, scan.series_uid, scan.sop_uids[0], [1, 2])
    finally:
        server.stop()
    with DicomWebClient(server.dicomweb_url, cache=cache, timeout=5) as c:
        again = c.retrieve_frames(scan.study_uid, scan.series_uid, scan.sop_uids[0], [1, 2])
        assert [f.data for f in again] == [f.data for f in cached] and c.stats.requests == 0
        started = time.monotonic()
        with pytest.raises(RemoteUnavailable) as info:
            c.retrieve_frames(scan.study_uid, scan.series_uid, scan.sop_uids[0], [3])
        assert time.monotonic() - started < 3.0
        assert f"127.0.0.1:{server.http_port}" in str(info.value) and "/frames/3" in info.value.url
        with pytest.raises(RemoteUnavailable):
            c.search_studies(patient_id="BAG-DICOS")
    cache.close()


def test_nothing_listening_is_unavailable():
    with DicomWebClient(f"http://127.0.0.1:{free_port()}/dicom-web", timeout=2) as c:
        started = time.monotonic()
        with pytest.raises(RemoteUnavailable):
            c.series_metadata("1.2", "3.4")
        assert time.monotonic() - started < 2.0


# ----------------------------------------------------------------------------- auth


def test_basic_auth_against_orthanc_and_no_credential_in_errors(scans, tmp_path):
    users = {"analyst": "s3cret-pass"}
    server = OrthancServer(tmp_path / "orthanc-auth",
                           config={"AuthenticationEnabled": True, "RegisteredUsers": users}).start()
    try:
        with DicomWebClient(server.dicomweb_url, auth=auth_for("basic", "analyst", "s3cret-pass")) as c:
            assert c.search_studies() == []
        with DicomWebClient(server.dicomweb_url, auth=auth_for("basic", "analyst", "wrong-pass")) as c:
            with pytest.raises(AuthenticationFailed) as info:
                c.search_studies()
            assert info.value.status == 401
            assert "wrong-pass" not in str(info.value) and "analyst" not in str(info.value)
    finally:
        server.stop()


def test_bearer_token_header_and_redaction():
    prepared = requests.Request("GET", "http://h/dw", auth=BearerAuth("tok-xyz")).prepare()
    assert prepared.headers["Authorization"] == "Bearer tok-xyz"
    assert "tok-xyz" not in repr(BearerAuth("tok-xyz"))
    with pytest.raises(ValueError, match="credentials"):
        DicomWebClient("http://user:pw@h/dw")


def test_https_ca_bundle_is_passed_to_requests(tmp_path):
    from station.core.remote.remotes import RemoteSettings

    bundle = tmp_path / "ca.pem"
    bundle.write_text("not used")
    remote = RemoteSettings(name="r", dicomweb="https://h/dw", ca_bundle=bundle, timeout=7)
    c = DicomWebClient.from_settings(remote)
    try:
        session = c._session()
        assert session.verify == str(bundle)
        assert c._timeout[1] == 7
    finally:
        c.close()


def test_accept_value_for_frames():
    assert RAW_ACCEPT_ANY == 'multipart/related; type="application/octet-stream"; transfer-syntax=*'
