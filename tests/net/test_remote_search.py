"""Searching a real Orthanc through the query cache (QIDO-RS), and offline answers."""

from __future__ import annotations

import pytest

from station.testing.orthanc import OrthancServer
from station.core.remote.framecache import FrameCache
from station.net.dicomweb.client import DicomWebClient, RemoteUnavailable
from station.net.remote.search import DicomWebSearcher, RemoteSearch, SearchTerms, queries_for


def test_queries_for_a_search_box():
    assert queries_for(SearchTerms()) == [{}]
    word = queries_for(SearchTerms(words=("Bag-12", "ignored"), modalities=("dx", "CT"),
                                   date_from="2026-11-01", date_to="2026-11-22"))
    assert word == [
        {"Modality": "CT\\DX", "StudyDate": "20261101-20261122", "PatientID": "*Bag-12*"},
        {"Modality": "CT\\DX", "StudyDate": "20261101-20261122", "PatientName": "*Bag-12*"},
    ]
    assert queries_for(SearchTerms(date_from="2026-11-02", date_to="2026-11-02")) == [{"StudyDate": "20261102"}]
    assert queries_for(SearchTerms(date_from=None, date_to="2026-11-02")) == [{"StudyDate": "-20261102"}]
    assert queries_for(SearchTerms(words=("**",))) == [{}]  # wildcards alone: no filter


def test_searcher_refuses_keys_it_cannot_send(orthanc):
    with DicomWebClient(orthanc.dicomweb_url) as client:
        with pytest.raises(ValueError, match="BodyPartExamined"):
            DicomWebSearcher(client)({"BodyPartExamined": "CHEST"})


def test_search_by_id_name_date_and_modality(orthanc, scans):
    with DicomWebClient(orthanc.dicomweb_url) as client:
        search = RemoteSearch("archive", client)
        everything = search.search(SearchTerms())
        assert {s.series_uid for s in scans.values()} <= {h.series_uid for h in everything}
        # A word matches the ID or (case-insensitively, in Orthanc) the name.
        hits = search.search(SearchTerms(words=("bag-dicos",)))
        assert [h.series_uid for h in hits] == [scans["dicos"].series_uid]
        hit = hits[0]
        assert (hit.remote, hit.study_uid, hit.patient_id, hit.modality) == (
            "archive", scans["dicos"].study_uid, "BAG-DICOS", "CT")
        assert hit.instances == 1 and hit.study_date == scans["dicos"].study_date
        by_id = search.search(SearchTerms(words=("BAG-J2K",)))
        assert [h.series_uid for h in by_id] == [scans["j2k"].series_uid]
        assert by_id[0].instances == len(scans["j2k"].files)
        march = search.search(SearchTerms(date_from="2024-03-01", date_to="2024-03-31"))
        assert {h.series_uid for h in march} == {scans["classic"].series_uid, scans["dicos"].series_uid}
        assert search.search(SearchTerms(modalities=("MR",))) == []
        assert [h.study_date for h in everything] == sorted((h.study_date for h in everything), reverse=True)


def test_a_repeated_search_is_served_by_the_query_cache(orthanc, scans):
    with DicomWebClient(orthanc.dicomweb_url) as client:
        search = RemoteSearch("archive", client)
        first = search.search(SearchTerms(words=("BAG-RLE",)))
        asked = client.stats.requests
        again = search.search(SearchTerms(words=("BAG-RLE",)))
        assert again == first and client.stats.requests == asked
        assert search.cache.stats().query_hits == 2  # ID query and name query
        search.search(SearchTerms(words=("BAG-CLASSIC",)))
        assert client.stats.requests == asked + 2


def test_json_answers_survive_a_dead_store(scans, tmp_path):
    """Searches and series metadata seen before are answered from the disk cache once
    the store is gone, flagged offline; anything never seen fails with RemoteUnavailable."""
    scan = scans["classic"]
    server = OrthancServer(tmp_path / "orthanc-offline").start()
    cache = FrameCache(tmp_path / "cache")
    try:
        server.upload(list(scan.files))
        with DicomWebClient(server.dicomweb_url, cache=cache, timeout=5) as c:
            online = RemoteSearch("archive", c).search(SearchTerms(words=("BAG-CLASSIC",)))
            metadata = c.series_metadata(scan.study_uid, scan.series_uid)
            assert not c.offline and online
    finally:
        server.stop()
    with DicomWebClient(server.dicomweb_url, cache=cache, timeout=5) as c:
        search = RemoteSearch("archive", c)
        assert search.search(SearchTerms(words=("BAG-CLASSIC",))) == online
        assert search.offline and c.stats.offline_answers == 2
        again = c.series_metadata(scan.study_uid, scan.series_uid)
        assert [d.SOPInstanceUID for d in again] == [d.SOPInstanceUID for d in metadata]
        with pytest.raises(RemoteUnavailable, match="unreachable"):
            search.search(SearchTerms(words=("never-asked",)))
    with DicomWebClient(server.dicomweb_url, timeout=5) as no_cache:
        with pytest.raises(RemoteUnavailable):
            no_cache.series_metadata(scan.study_uid, scan.series_uid)
        assert no_cache.offline
    cache.close()
