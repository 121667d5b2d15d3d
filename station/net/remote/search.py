"""Searching remote stores (QIDO-RS) through the query cache, for the cache browser.

``DicomWebSearcher`` is a ``station.core.remote.querycache`` searcher: it turns a normalised query
(DICOM keywords, as ``normalise_query`` makes them) into one QIDO-RS series search and
the answer into ``StudyRecord``s, so ``QueryCache`` can serve a repeated search (typing,
deleting, retyping) from memory for its TTL without asking the archive again.

``DimseSearcher`` does the same for an archive without DICOMweb: a STUDY-level C-FIND,
then a SERIES-level C-FIND per study found (``station.net.dimse.scu``).

``RemoteSearch`` is what a browser holds per configured remote: ``search(terms)`` runs
the queries a search box means (a word matches an ID *or* a name, which QIDO cannot say
in one query: two queries, answers merged) and returns flat ``RemoteHit`` rows.

When the archive is down, the DICOMweb client answers a query it has seen before from
the frame cache on disk (``DicomWebClient._get_json``), so the last results of a search
stay usable offline; ``offline`` says so.

Threads: ``search`` does network I/O: call it from a worker. Thread-safe (the client and
the query cache are).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from pydicom.dataset import Dataset

from station.core.remote.querycache import QueryCache, SeriesRecord, StudyRecord
from station.net.dicomweb.client import DicomWebClient
from station.net.dimse.scu import DimseRemote

LOGGER = logging.getLogger(__name__)

SEARCH_LIMIT: int = 200
"""Series asked for per query: a search box shows the newest few hundred, not an archive."""

SERIES_FIELDS: tuple[str, ...] = (
    "PatientID", "PatientName", "StudyDate", "StudyDescription", "StudyInstanceUID",
    "SeriesDescription", "SeriesDate", "Modality", "NumberOfSeriesRelatedInstances",
)
"""Attributes asked for with every series found (``includefield``)."""

_QUERY_KEYS: frozenset[str] = frozenset({
    "PatientID", "PatientName", "StudyDate", "Modality", "ModalitiesInStudy", "StudyInstanceUID",
    "SeriesInstanceUID", "AccessionNumber", "limit",
})
_STUDY_KEYS = ("StudyDate", "StudyDescription", "AccessionNumber")
_SERIES_KEYS = ("Modality", "SeriesDescription", "SeriesDate", "NumberOfSeriesRelatedInstances")


def _text(ds: Dataset, keyword: str) -> str:
    value = ds.get(keyword)
    if value is None:
        return ""
    if keyword == "PatientName":
        return str(value).replace("^", " ").strip()
    return str(value).strip()


def _search_params(query: Mapping[str, str], default_limit: int, what: str) -> tuple[dict[str, str], int]:
    """The filter keys of a normalised query (ModalitiesInStudy taken as Modality) and
    its limit; ValueError for a key the searchers cannot send."""
    params = dict(query)
    params.pop("QueryRetrieveLevel", None)
    unknown = sorted(set(params) - _QUERY_KEYS)
    if unknown:
        raise ValueError(f"cannot search {what} by {', '.join(unknown)}")
    if "ModalitiesInStudy" in params:
        params["Modality"] = params.pop("ModalitiesInStudy")
    return params, int(params.pop("limit", default_limit))


class DicomWebSearcher:
    """QueryCache searcher: a normalised query -> one QIDO-RS ``/series`` search.

    Keys it understands: PatientID, PatientName, StudyDate, Modality (ModalitiesInStudy
    is taken as Modality: the browser lists series), StudyInstanceUID, SeriesInstanceUID,
    AccessionNumber, ``limit``; ``QueryRetrieveLevel`` is accepted (answers are always at
    series depth). Multiple values (backslash-joined by ``normalise_query``) go out as
    QIDO's comma list. Other keys raise ValueError: a search must never silently widen.
    """

    def __init__(self, client: DicomWebClient, *, limit: int = SEARCH_LIMIT) -> None:
        self.client = client
        self.limit = limit

    def __call__(self, query: Mapping[str, str]) -> list[StudyRecord]:
        params, limit = _search_params(query, self.limit, "a DICOMweb store")
        study = params.pop("StudyInstanceUID", None)
        extra = {k: v.replace("\\", ",") for k, v in params.items()}
        found = self.client.search_series(study, limit=limit, include_fields=SERIES_FIELDS, extra=extra)
        # A study's listing is complete only for "every series of this study" (no other
        # filter, the limit not reached): only then may the cache answer study lookups.
        complete = study is not None and not extra and len(found) < limit
        return records_from_series(found, study_uid=study, complete=complete)


class DimseSearcher:
    """QueryCache searcher for a DIMSE archive: C-FIND studies, then their series.

    Same keys as ``DicomWebSearcher``; the study filter (ID, name, date, modality)
    goes to the STUDY level (modality as ModalitiesInStudy), the modality again to each
    SERIES-level query. At most ``limit`` studies are listed further (one association
    per study). ``DimseError`` propagates (the browser shows it).
    """

    def __init__(self, remote: DimseRemote, *, limit: int = 50) -> None:
        self.remote = remote
        self.limit = limit

    def __call__(self, query: Mapping[str, str]) -> list[StudyRecord]:
        params, limit = _search_params(query, self.limit, "a DIMSE archive")
        modality = params.get("Modality", "")
        studies = self.remote.find_studies(
            patient_id=params.get("PatientID", ""), patient_name=params.get("PatientName", ""),
            study_date=params.get("StudyDate", ""), modality=modality,
            study_uid=params.get("StudyInstanceUID", ""), accession_number=params.get("AccessionNumber", ""))
        studies.sort(key=lambda ds: _text(ds, "StudyDate"), reverse=True)
        series: list[Dataset] = []
        for study in studies[:limit]:
            uid = _text(study, "StudyInstanceUID")
            if not uid:
                continue
            one_modality = modality if "\\" not in modality else ""  # several: the study level filtered
            for found in self.remote.find_series(uid, modality=one_modality,
                                                 series_uid=params.get("SeriesInstanceUID", "")):
                for key in ("PatientID", "PatientName", "StudyDate", "StudyDescription", "StudyInstanceUID"):
                    if key not in found and key in study:
                        setattr(found, key, study.get(key))
                series.append(found)
        return records_from_series(series)


def records_from_series(datasets: Iterable[Dataset], *, study_uid: str | None = None,
                        complete: bool = False) -> list[StudyRecord]:
    """QIDO-RS series answers grouped into study records (series without UIDs skipped)."""
    studies: dict[str, tuple[Dataset, list[SeriesRecord]]] = {}
    for ds in datasets:
        series = _text(ds, "SeriesInstanceUID")
        study = _text(ds, "StudyInstanceUID") or (study_uid or "")
        if not series or not study:
            LOGGER.debug("QIDO answer without study/series UID skipped")
            continue
        entry = studies.setdefault(study, (ds, []))
        entry[1].append(SeriesRecord(series, {k: _text(ds, k) for k in _SERIES_KEYS}))
    out = []
    for uid, (first, series) in studies.items():
        out.append(StudyRecord(
            uid, {k: _text(first, k) for k in _STUDY_KEYS}, series,
            complete=complete and uid == study_uid, patient_id=_text(first, "PatientID"),
            patient_attributes={"PatientName": _text(first, "PatientName")},
        ))
    return out


@dataclass(frozen=True, slots=True)
class RemoteHit:
    """One series found on a remote, as a browser row needs it."""

    remote: str
    study_uid: str
    series_uid: str
    patient_id: str
    patient_name: str
    study_date: str  # YYYYMMDD as the archive has it
    description: str
    modality: str
    instances: int


@dataclass(frozen=True, slots=True)
class SearchTerms:
    """What a search box asks for, in archive terms. ``words`` keep their case (IDs may
    match case-sensitively); ``date_from``/``date_to`` are ISO dates or None."""

    words: tuple[str, ...] = ()
    modalities: tuple[str, ...] = ()
    date_from: str | None = None
    date_to: str | None = None


def _dicom_date(iso: str | None) -> str:
    return iso.replace("-", "") if iso else ""


def queries_for(terms: SearchTerms) -> list[dict[str, str]]:
    """The QIDO queries a search means. The first word matches ID or name (two queries:
    ``*word*`` wildcards); further words are left to the caller's own row filter, since
    one query cannot AND them across attributes. Dates and modalities go to each query."""
    base: dict[str, str] = {}
    if terms.modalities:
        base["Modality"] = "\\".join(sorted(m.upper() for m in terms.modalities))
    if terms.date_from or terms.date_to:
        base["StudyDate"] = f"{_dicom_date(terms.date_from)}-{_dicom_date(terms.date_to)}"
        if terms.date_from == terms.date_to:
            base["StudyDate"] = _dicom_date(terms.date_from)
    if not terms.words:
        return [base]
    word = terms.words[0].replace("*", "").replace("?", "")
    if not word:
        return [base]
    return [dict(base, PatientID=f"*{word}*"), dict(base, PatientName=f"*{word}*")]


class RemoteSearch:
    """Searches of one remote store, served through a ``QueryCache``: ``source`` is a
    ``DicomWebClient`` (QIDO-RS) or a ``DimseRemote`` (C-FIND)."""

    def __init__(self, name: str, source: DicomWebClient | DimseRemote, cache: QueryCache | None = None) -> None:
        self.name = name
        self.source = source
        searcher = DicomWebSearcher(source) if isinstance(source, DicomWebClient) else DimseSearcher(source)
        self.cache = cache if cache is not None else QueryCache(searcher)

    @property
    def offline(self) -> bool:
        """The store did not answer the last request (results came from the disk cache)."""
        return isinstance(self.source, DicomWebClient) and self.source.offline

    def search(self, terms: SearchTerms) -> list[RemoteHit]:
        """Series matching ``terms``, newest study first. Worker thread. Raises the
        client's ``DicomWebError`` when the store fails and nothing was cached."""
        hits: dict[str, RemoteHit] = {}
        for query in queries_for(terms):
            for study in self.cache.search(query):
                hits.update((h.series_uid, h) for h in self._hits(study))
        return sorted(hits.values(), key=lambda h: (h.study_date, h.patient_id), reverse=True)

    def _hits(self, study: StudyRecord) -> Sequence[RemoteHit]:
        attrs = study.attributes or {}
        patient = study.patient_attributes or {}
        out = []
        for series in study.series:
            s = series.attributes or {}
            try:
                count = int(str(s.get("NumberOfSeriesRelatedInstances", "") or 0))
            except ValueError:
                count = 0
            out.append(RemoteHit(
                remote=self.name, study_uid=study.uid, series_uid=series.uid, patient_id=study.patient_id,
                patient_name=str(patient.get("PatientName", "") or ""), study_date=str(attrs.get("StudyDate", "") or ""),
                description=str(s.get("SeriesDescription", "") or attrs.get("StudyDescription", "") or ""),
                modality=str(s.get("Modality", "") or ""), instances=count,
            ))
        return out


__all__ = [
    "DicomWebSearcher",
    "DimseSearcher",
    "RemoteHit",
    "RemoteSearch",
    "SEARCH_LIMIT",
    "SERIES_FIELDS",
    "SearchTerms",
    "queries_for",
    "records_from_series",
]
