"""Caches for query results, and the policy that keeps the on-disk store in bounds.

Three independent pieces, all plain core (no Qt, no sockets), testable with a fake clock:

``ObjectTree``
    An in-memory, expiring tree of DICOM objects: object of inspection (patient) ->
    study -> series -> instance, each node keyed by its UID (the patient by PatientID).
    It holds what searchers told us (the local index, or later a remote QIDO-RS store),
    for ``ttl_s`` seconds (default ten minutes, ``DEFAULT_TTL_S``).
``QueryCache``
    Serves a repeated query, or a study looked up "at depth", from the tree when the
    tree can vouch for the answer; otherwise calls the searcher and remembers the answer.
``plan_eviction``
    Which scans to delete from the on-disk store for a size quota and an age limit.
    A pure function over plain ``StoredScan`` records; the store applies the plan.

Expiry, precisely
-----------------
A node's *own data* is (a) its attribute mapping (the DICOM attributes of its level,
e.g. StudyDate for a study, Modality for a series) and (b) the claim that its list of
children is complete. Own data is set or refreshed by an ``add`` whose record carries
the node (``attributes`` not ``None``) and lives while ``now < added_at + ttl_s``; the
completeness claim lives ``ttl_s`` after the last *complete* listing, and only while the
node's attributes live. A node's UID, level, parent link and children are *structure*,
not own data.

When own data expires it is dropped: ``CachedNode.attributes`` becomes ``None`` and
``complete`` false. A node whose own data is gone but which still has children stays in
the tree as a bare container, so its children remain reachable by reference and through
it; once it has no children either it is removed, and so on up the tree (an expired
branch disappears as a whole). Removing a child (expiry, ``discard``, a newer complete
listing without it, a move) withdraws the parent's completeness claim, because the list
the claim was about has changed.

Expiry is applied under the lock at the start of every public call, with the clock read
then, so no call ever observes expired data.
"""

from __future__ import annotations

import enum
import heapq
import itertools
import logging
import math
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Literal

from pydicom.datadict import dictionary_VR, keyword_for_tag, tag_for_keyword

LOGGER = logging.getLogger(__name__)

DEFAULT_TTL_S = 600.0
"""How long remote query results stay valid: ten minutes."""

Clock = Callable[[], float]
"""Returns seconds. Only differences matter, so ``time.monotonic`` (the default) is right:
wall-clock jumps (NTP, daylight saving) must not expire or resurrect a whole cache."""


class Level(enum.IntEnum):
    """The levels of the object tree, shallow to deep; also the depth of a study lookup."""

    PATIENT = 0
    STUDY = 1
    SERIES = 2
    INSTANCE = 3


# DICOM's QueryRetrieveLevel names the instance level IMAGE.
_QUERY_RETRIEVE_LEVEL = {Level.STUDY: "STUDY", Level.SERIES: "SERIES", Level.INSTANCE: "IMAGE"}


# --------------------------------------------------------------------------------- records


def _freeze(attributes: Mapping[str, object] | None) -> Mapping[str, object] | None:
    # Records are shared between the tree, cached responses and every reader thread;
    # a read-only copy means no consumer can change what another one sees.
    return None if attributes is None else MappingProxyType(dict(attributes))


def _check_uid(uid: object, what: str, *, allow_empty: bool = False) -> None:
    if not isinstance(uid, str) or (not uid and not allow_empty):
        raise ValueError(f"{what} needs a non-empty string UID, got {uid!r}")


@dataclass(frozen=True, slots=True)
class InstanceRecord:
    """One instance as a searcher reports it. ``attributes=None``: a reference without data."""

    uid: str
    attributes: Mapping[str, object] | None = field(default_factory=dict)

    def __post_init__(self) -> None:
        _check_uid(self.uid, "an instance")
        object.__setattr__(self, "attributes", _freeze(self.attributes))


@dataclass(frozen=True, slots=True)
class SeriesRecord:
    """One series as a searcher reports it, with the instances it knows of.

    ``complete=True`` claims that ``instances`` lists every instance of the series; only a
    searcher that asked for all of them (no filter, no limit hit) may claim it. A complete
    listing also removes cached instances it does not name. ``attributes=None`` makes the
    record a reference that places instances under the series without refreshing its data.
    """

    uid: str
    attributes: Mapping[str, object] | None = field(default_factory=dict)
    instances: Sequence[InstanceRecord] = ()
    complete: bool = False

    def __post_init__(self) -> None:
        _check_uid(self.uid, "a series")
        object.__setattr__(self, "attributes", _freeze(self.attributes))
        object.__setattr__(self, "instances", tuple(self.instances))
        if self.complete and self.attributes is None:
            raise ValueError(f"series {self.uid}: a complete listing must carry the series' attributes")


@dataclass(frozen=True, slots=True)
class StudyRecord:
    """One study as a searcher reports it: the unit that is added to the tree.

    ``series``, ``complete`` and ``attributes=None`` work as in ``SeriesRecord``.
    ``patient_id`` places the study under its patient / object of inspection ("" when
    unknown); ``patient_attributes`` is the patient's own data, ``None`` (the default) to
    leave the patient node's data alone.
    """

    uid: str
    attributes: Mapping[str, object] | None = field(default_factory=dict)
    series: Sequence[SeriesRecord] = ()
    complete: bool = False
    patient_id: str = ""
    patient_attributes: Mapping[str, object] | None = None

    def __post_init__(self) -> None:
        _check_uid(self.uid, "a study")
        _check_uid(self.patient_id, "a patient", allow_empty=True)
        object.__setattr__(self, "attributes", _freeze(self.attributes))
        object.__setattr__(self, "patient_attributes", _freeze(self.patient_attributes))
        object.__setattr__(self, "series", tuple(self.series))
        if self.complete and self.attributes is None:
            raise ValueError(f"study {self.uid}: a complete listing must carry the study's attributes")


def references(records: Iterable[StudyRecord]) -> tuple[tuple[Level, str], ...]:
    """The objects whose data the records carry (reference-only records excluded)."""
    refs: list[tuple[Level, str]] = []
    for study in records:
        if study.patient_attributes is not None:
            refs.append((Level.PATIENT, study.patient_id))
        if study.attributes is not None:
            refs.append((Level.STUDY, study.uid))
        for series in study.series:
            if series.attributes is not None:
                refs.append((Level.SERIES, series.uid))
            refs.extend((Level.INSTANCE, i.uid) for i in series.instances if i.attributes is not None)
    return tuple(dict.fromkeys(refs))


# ------------------------------------------------------------------------------ the tree


@dataclass(frozen=True, slots=True)
class CachedNode:
    """An immutable snapshot of one node and its subtree, safe to hand to any thread.

    ``attributes`` is ``None`` when the node's own data has expired (it is then only a
    container for children that have not). ``complete`` says the children listed are all
    the node has. ``expires_at`` is on the tree's clock (``None`` for a bare container).
    """

    level: Level
    uid: str
    parent_uid: str | None
    attributes: Mapping[str, object] | None
    expires_at: float | None
    complete: bool
    children: tuple[CachedNode, ...]

    def child(self, uid: str) -> CachedNode | None:
        for c in self.children:
            if c.uid == uid:
                return c
        return None

    def has_depth(self, depth: Level) -> bool:
        """True if this snapshot holds live data for itself and every descendant down to
        ``depth``, with a complete child listing at every level above it."""
        if self.attributes is None:
            return False
        if depth <= self.level:
            return True
        return self.complete and all(c.has_depth(depth) for c in self.children)


class _Node:
    """Mutable tree node; only touched with ``ObjectTree._lock`` held."""

    __slots__ = ("level", "uid", "parent", "children", "attributes", "expires_at",
                 "complete_until", "scheduled", "removed")

    def __init__(self, level: Level, uid: str, parent: _Node | None) -> None:
        self.level = level
        self.uid = uid
        self.parent = parent
        self.children: dict[str, _Node] = {}
        self.attributes: Mapping[str, object] | None = None
        self.expires_at = -math.inf
        self.complete_until = -math.inf
        self.scheduled = False  # has an entry in the expiry heap
        self.removed = False


class ObjectTree:
    """The expiring patient -> study -> series -> instance tree (see the module docstring).

    Thread-safe: worker threads ``add`` search results while the GUI thread reads. One
    lock guards everything; each call holds it only for in-memory work (never for a
    search), and reads return immutable snapshots, so a reader never sees half an add.
    """

    def __init__(self, ttl_s: float = DEFAULT_TTL_S, *, clock: Clock = time.monotonic) -> None:
        if not ttl_s > 0:
            raise ValueError(f"ttl_s must be positive, got {ttl_s!r}")
        self._ttl = float(ttl_s)
        self._clock = clock
        self._lock = threading.Lock()
        self._index: dict[Level, dict[str, _Node]] = {level: {} for level in Level}
        # (time, sequence, node): at most one entry per node. A refresh does not push a new
        # entry; the old one is re-pushed at the new time when it comes due, which keeps
        # the heap no larger than the tree however often objects are refreshed.
        self._heap: list[tuple[float, int, _Node]] = []
        self._sequence = itertools.count()

    @property
    def ttl_s(self) -> float:
        return self._ttl

    def now(self) -> float:
        """The tree's clock, for callers that keep times comparable with ``expires_at``."""
        return self._clock()

    # -- writing -----------------------------------------------------------------------

    def add(self, *studies: StudyRecord) -> None:
        """Add or refresh studies with the children they carry, all at one instant.

        Called by worker threads with search results. Attributes merge into live data
        (a partial response does not erase what a fuller one said) and replace expired
        data; every carried node expires ``ttl_s`` from now.
        """
        for study in studies:
            if not isinstance(study, StudyRecord):
                raise TypeError(f"expected StudyRecord, got {type(study).__name__}")
        with self._lock:
            now = self._clock()
            self._sweep(now)
            for study in studies:
                self._add_study(study, now)

    def discard(self, level: Level, uid: str) -> bool:
        """Forget an object and everything under it (e.g. the scan was deleted). Any thread."""
        with self._lock:
            self._sweep(self._clock())
            node = self._index[level].get(uid)
            if node is None:
                return False
            self._remove(node)
            return True

    def clear(self) -> None:
        """Forget everything (e.g. the source was reconfigured). Any thread."""
        with self._lock:
            for nodes in self._index.values():
                for node in nodes.values():
                    node.removed = True
                nodes.clear()
            self._heap.clear()

    # -- reading -----------------------------------------------------------------------

    def patient(self, patient_id: str) -> CachedNode | None:
        return self._get(Level.PATIENT, patient_id)

    def study(self, study_uid: str) -> CachedNode | None:
        """The study and everything cached under it, or None. Any thread (GUI included)."""
        return self._get(Level.STUDY, study_uid)

    def series(self, series_uid: str) -> CachedNode | None:
        return self._get(Level.SERIES, series_uid)

    def instance(self, sop_instance_uid: str) -> CachedNode | None:
        return self._get(Level.INSTANCE, sop_instance_uid)

    def all_unexpired(self, refs: Iterable[tuple[Level, str]]) -> bool:
        """True if every referenced object is in the tree with its own data unexpired."""
        with self._lock:
            self._sweep(self._clock())
            for level, uid in refs:
                node = self._index[level].get(uid)
                if node is None or node.attributes is None:
                    return False
            return True

    def __len__(self) -> int:
        """Number of nodes, bare containers included."""
        with self._lock:
            self._sweep(self._clock())
            return sum(len(nodes) for nodes in self._index.values())

    # -- internals (lock held) -------------------------------------------------------------

    def _get(self, level: Level, uid: str) -> CachedNode | None:
        with self._lock:
            now = self._clock()
            self._sweep(now)
            node = self._index[level].get(uid)
            return None if node is None else self._snapshot(node, now)

    def _snapshot(self, node: _Node, now: float) -> CachedNode:
        return CachedNode(
            level=node.level,
            uid=node.uid,
            parent_uid=None if node.parent is None else node.parent.uid,
            attributes=node.attributes,
            expires_at=None if node.attributes is None else node.expires_at,
            complete=node.attributes is not None and node.complete_until > now,
            children=tuple(self._snapshot(c, now) for c in node.children.values()),
        )

    def _add_study(self, record: StudyRecord, now: float) -> None:
        patient = self._upsert(Level.PATIENT, record.patient_id, None, record.patient_attributes, now)
        study = self._upsert(Level.STUDY, record.uid, patient, record.attributes, now)
        self._list_children(study, [s.uid for s in record.series], record.complete, now)
        touched = []
        for series_record in record.series:
            series = self._upsert(Level.SERIES, series_record.uid, study, series_record.attributes, now)
            self._list_children(series, [i.uid for i in series_record.instances], series_record.complete, now)
            touched.extend(
                self._upsert(Level.INSTANCE, instance.uid, series, instance.attributes, now)
                for instance in series_record.instances
            )
            touched.append(series)
        touched.append(study)
        # Reference-only nodes that ended up with nothing under them hold nothing: prune
        # them, deepest first and only now, so a later series of this record is never
        # attached to a study pruned a moment before.
        for node in touched:
            self._prune_upwards(node)

    def _upsert(
        self, level: Level, uid: str, parent: _Node | None, attributes: Mapping[str, object] | None, now: float
    ) -> _Node:
        node = self._index[level].get(uid)
        if node is None:
            node = _Node(level, uid, parent)
            self._index[level][uid] = node
            if parent is not None:
                parent.children[uid] = node
        elif node.parent is not parent:
            # A corrected PatientID, or a peer reusing a UID elsewhere: the latest add wins.
            LOGGER.debug("moving %s %s to %s", level.name.lower(), uid, parent.uid if parent else None)
            old = node.parent
            if old is not None:
                del old.children[uid]
                old.complete_until = -math.inf
            node.parent = parent
            if parent is not None:
                parent.children[uid] = node
            if old is not None:
                self._prune_upwards(old)
        if attributes is not None:
            if node.attributes is None:  # new, or its data expired: never merge into stale data
                node.attributes = attributes
            elif attributes:
                node.attributes = MappingProxyType({**node.attributes, **attributes})
            node.expires_at = now + self._ttl
            self._schedule(node)
        return node

    def _list_children(self, node: _Node, listed: list[str], complete: bool, now: float) -> None:
        """Apply what a record says about ``node``'s children, before they are upserted."""
        if complete:
            keep = set(listed)
            for uid in [u for u in node.children if u not in keep]:
                LOGGER.debug("%s %s no longer lists %s; dropping it", node.level.name.lower(), node.uid, uid)
                self._remove(node.children[uid], prune_parent=False)
            node.complete_until = now + self._ttl
        elif any(uid not in node.children for uid in listed):
            # A child the complete listing did not have: that listing is out of date.
            node.complete_until = -math.inf

    def _schedule(self, node: _Node) -> None:
        if not node.scheduled and math.isfinite(node.expires_at):
            heapq.heappush(self._heap, (node.expires_at, next(self._sequence), node))
            node.scheduled = True

    def _sweep(self, now: float) -> None:
        """Drop own data that has expired by ``now`` and prune what is left empty."""
        heap = self._heap
        dropped = 0
        while heap and heap[0][0] <= now:
            _, _, node = heapq.heappop(heap)
            node.scheduled = False
            if node.removed or node.attributes is None:
                continue
            if node.expires_at > now:  # refreshed since it was scheduled
                self._schedule(node)
                continue
            node.attributes = None
            node.expires_at = -math.inf
            node.complete_until = -math.inf
            dropped += 1
            self._prune_upwards(node)
        if dropped:
            LOGGER.debug("expired own data of %d cached objects", dropped)

    def _prune_upwards(self, node: _Node | None) -> None:
        while node is not None and not node.removed and node.attributes is None and not node.children:
            parent = node.parent
            self._remove(node, prune_parent=False)
            node = parent

    def _remove(self, node: _Node, *, prune_parent: bool = True) -> None:
        """Remove ``node`` and its subtree; the parent's completeness claim is withdrawn."""
        stack = [node]
        while stack:
            n = stack.pop()
            n.removed = True
            del self._index[n.level][n.uid]
            stack.extend(n.children.values())
        parent = node.parent
        if parent is not None:
            del parent.children[node.uid]
            parent.complete_until = -math.inf
            if prune_parent:
                self._prune_upwards(parent)


# -------------------------------------------------------------------------- query cache


_HEX_TAG = re.compile(r"[0-9A-Fa-f]{8}")
# Value representations in which whitespace never means anything (dates, times, UIDs,
# numbers): "20240101 - 20240131" and "20240101-20240131" are one date range.
_NO_SPACE_VRS = frozenset({"UI", "DA", "TM", "DT", "IS", "DS", "AS"})

NormalisedQuery = tuple[tuple[str, str], ...]
Searcher = Callable[[Mapping[str, str]], Iterable[StudyRecord]]
"""Runs a query and returns the matching studies, carrying children down to the query's
level. Called on the thread that called ``QueryCache.search``/``study`` (a worker), never
with a lock held. Receives the normalised query as a dict of strings."""


def _vr(key: str) -> str | None:
    tag = tag_for_keyword(key)
    if tag is None:
        return None
    try:
        return dictionary_VR(tag)
    except KeyError:
        return None


def _normalise_key(raw: object) -> str:
    key = str(raw).strip()
    if _HEX_TAG.fullmatch(key):
        key = keyword_for_tag(int(key, 16)) or key.upper()
    return key


def _normalise_value(key: str, value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        parts = ["true" if value else "false"]
    elif isinstance(value, (int, float)):
        parts = [str(value)]
    elif isinstance(value, str):
        parts = value.split("\\")
    elif isinstance(value, (list, tuple, set, frozenset)):
        parts = [p for item in value for p in ("" if item is None else str(item)).split("\\")]
    else:
        raise TypeError(f"query value for {key} must be text, a number or a list of them, not {type(value).__name__}")
    vr = _vr(key)
    cleaned = set()
    for part in parts:
        part = "".join(part.split()) if vr in _NO_SPACE_VRS else " ".join(part.split())
        if vr == "CS":
            part = part.upper()
        if part:
            cleaned.add(part)
    return "\\".join(sorted(cleaned))


def normalise_query(query: Mapping[str, object]) -> NormalisedQuery:
    """The cache key of a query: equal for queries that must return the same answer.

    Rules:

    - key order does not matter; keys are stripped of surrounding whitespace, and an
      8-digit hex tag ("00080060") becomes its keyword ("Modality"). Keyword case is kept
      (DICOM keywords are case-sensitive; "limit" and "Limit" stay different);
    - ``None``, "" and whitespace-only values are dropped: an empty match key is
      universal matching, i.e. no filter;
    - values become text; runs of whitespace collapse to one space and the ends are
      stripped; in dates, times, UIDs and numbers (VR DA, TM, DT, UI, IS, DS, AS) all
      whitespace goes;
    - code strings (VR CS: Modality, ModalitiesInStudy, QueryRetrieveLevel...) are upper
      case by definition, so "ct" is "CT". Other text keeps its case: a remote may match
      PatientName case-sensitively;
    - multiple values (a list, or DICOM's backslash-separated text) are a set: order and
      duplicates do not matter; they are joined with a backslash in sorted order.

    Raises ValueError if two keys name the same attribute (``PatientID`` and ``00100020``).
    """
    items: dict[str, str] = {}
    for raw_key, raw_value in query.items():
        key = _normalise_key(raw_key)
        value = _normalise_value(key, raw_value)
        if not value:
            continue
        if key in items:
            raise ValueError(f"query names {key} twice (as {raw_key!r} too)")
        items[key] = value
    return tuple(sorted(items.items()))


@dataclass(frozen=True, slots=True)
class CacheStats:
    """Counters for diagnostics: how often the cache answered (hits) or the searcher did."""

    query_hits: int = 0
    query_misses: int = 0
    study_hits: int = 0
    study_misses: int = 0

    @property
    def hits(self) -> int:
        return self.query_hits + self.study_hits

    @property
    def misses(self) -> int:
        return self.query_misses + self.study_misses


@dataclass(frozen=True, slots=True)
class _Entry:
    response: tuple[StudyRecord, ...]
    refs: tuple[tuple[Level, str], ...]
    asked_at: float


class QueryCache:
    """Answers queries from a tree of earlier answers when that is still truthful.

    A response to ``search(query)`` is served from the cache only if

    1. a query with the same ``normalise_query`` key was answered before,
    2. every object that response carried data for is still in the tree with unexpired
       own data (so a response naming one object that has expired, was discarded, or
       that a newer complete listing no longer names, is fetched again), and
    3. the response is younger than ``max_response_age_s`` (by default ``"ttl"``, the tree's TTL).

    Rule 3 exists because rule 2 cannot see objects that *should* be in a response: a
    study that arrived at the remote since, or any match at all for an empty response
    (which has no objects to expire and would otherwise be served forever). Pass
    ``max_response_age_s=None`` to rely on rule 2 alone.

    ``study(uid, depth)`` is served from the tree only if it holds the study with live
    data and complete child listings down to ``depth``; otherwise the searcher is asked
    for ``{"QueryRetrieveLevel": "STUDY"|"SERIES"|"IMAGE", "StudyInstanceUID": uid}`` and
    must answer with a listing marked ``complete`` down to that level.

    Thread-safe. ``search`` and ``study`` may call the searcher (network, disk), so call
    them from a worker; the GUI thread can use ``cached`` and ``tree.study`` +
    ``CachedNode.has_depth``, which never search. Two threads missing on the same query
    at once both search (no de-duplication); the later answer is kept.
    """

    def __init__(
        self,
        searcher: Searcher,
        tree: ObjectTree | None = None,
        *,
        max_entries: int = 256,
        max_response_age_s: float | Literal["ttl"] | None = "ttl",
    ) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self._searcher = searcher
        self.tree = tree if tree is not None else ObjectTree()
        self._max_entries = max_entries
        self._max_age = self.tree.ttl_s if max_response_age_s == "ttl" else max_response_age_s
        self._lock = threading.Lock()
        # Least recently used first; bounded, because most typed-in queries never recur.
        self._entries: OrderedDict[NormalisedQuery, _Entry] = OrderedDict()
        self._stats = CacheStats()

    def stats(self) -> CacheStats:
        with self._lock:
            return self._stats

    def invalidate(self) -> None:
        """Forget every cached response (the tree is kept). For when the source changed,
        e.g. new scans arrived in the local store. Any thread."""
        with self._lock:
            self._entries.clear()

    def cached(self, query: Mapping[str, object]) -> tuple[StudyRecord, ...] | None:
        """The cached response if it may be served, else None. Never searches; not counted."""
        return self._lookup(normalise_query(query))

    def search(self, query: Mapping[str, object]) -> tuple[StudyRecord, ...]:
        """The response to ``query``: cached if the rules allow, else from the searcher.

        Called on worker threads. Searcher errors propagate and nothing is cached.
        """
        key = normalise_query(query)
        response = self._lookup(key)
        if response is not None:
            self._count(query_hits=1)
            return response
        self._count(query_misses=1)
        asked_at = self.tree.now()
        response = self._run_searcher(key)
        self.tree.add(*response)
        entry = _Entry(response, references(response), asked_at)
        with self._lock:
            self._entries[key] = entry
            self._entries.move_to_end(key)
            while len(self._entries) > self._max_entries:
                self._entries.popitem(last=False)
        return response

    def study(self, study_uid: str, depth: Level = Level.STUDY) -> CachedNode | None:
        """One study with its children down to ``depth``; None if the searcher has no such study.

        Called on worker threads. If the searcher's answer was not marked complete down
        to ``depth``, the study is returned as the tree holds it (``has_depth`` is false).
        """
        if depth < Level.STUDY:
            raise ValueError("a study lookup goes at least to the study level")
        node = self.tree.study(study_uid)
        if node is not None and node.has_depth(depth):
            self._count(study_hits=1)
            return node
        self._count(study_misses=1)
        query = normalise_query({"QueryRetrieveLevel": _QUERY_RETRIEVE_LEVEL[depth], "StudyInstanceUID": study_uid})
        self.tree.add(*self._run_searcher(query))
        node = self.tree.study(study_uid)
        if node is not None and not node.has_depth(depth):
            LOGGER.debug("searcher did not list study %s completely down to %s", study_uid, depth.name)
        return node

    def _run_searcher(self, key: NormalisedQuery) -> tuple[StudyRecord, ...]:
        response = tuple(self._searcher(dict(key)))
        for record in response:
            if not isinstance(record, StudyRecord):
                raise TypeError(f"searcher returned {type(record).__name__}, expected StudyRecord")
        return response

    def _lookup(self, key: NormalisedQuery) -> tuple[StudyRecord, ...] | None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return None
            self._entries.move_to_end(key)
        # Checked outside our lock: the tree has its own, and the two are never nested.
        fresh = self._max_age is None or self.tree.now() < entry.asked_at + self._max_age
        if fresh and self.tree.all_unexpired(entry.refs):
            return entry.response
        with self._lock:
            if self._entries.get(key) is entry:
                del self._entries[key]
        return None

    def _count(self, **increments: int) -> None:
        with self._lock:
            s = self._stats
            self._stats = CacheStats(**{
                name: getattr(s, name) + increments.get(name, 0)
                for name in ("query_hits", "query_misses", "study_hits", "study_misses")
            })


# ----------------------------------------------------------------------------- eviction


@dataclass(frozen=True, slots=True)
class StoredScan:
    """What eviction needs to know about one scan (a series or study) in the store.

    Times are seconds on the same clock as ``now`` in ``plan_eviction``. ``in_use`` means
    being received or viewed right now.
    """

    uid: str
    nbytes: int
    last_access: float
    received_at: float
    pending_triage: bool = False
    unresolved_alarms: bool = False
    pinned: bool = False
    in_use: bool = False

    @property
    def protected(self) -> bool:
        """Never evicted: still work to do on it, the user wants it, or someone has it open."""
        return self.pending_triage or self.unresolved_alarms or self.pinned or self.in_use


class EvictionReason(enum.Enum):
    AGE = "age"      # received longer ago than the age limit
    QUOTA = "quota"  # least recently used while the store is over its quota


@dataclass(frozen=True, slots=True)
class Eviction:
    scan: StoredScan
    reason: EvictionReason


def plan_eviction(
    scans: Iterable[StoredScan], quota_bytes: int | None, max_age_s: float | None, now: float
) -> list[Eviction]:
    """The scans to delete, in the order to delete them. Pure: reads nothing, deletes nothing.

    1. Every unprotected scan received more than ``max_age_s`` before ``now`` (oldest
       first): the age limit is a retention rule, so recent viewing does not extend it.
    2. Then, while the bytes of all scans (protected ones included: they occupy the disk
       too) exceed ``quota_bytes``, unprotected scans in least-recently-used order (ties:
       earlier received first, then UID). It stops as soon as the total fits.

    Protected scans (pending triage, unresolved alarms, pinned, in use) are never
    returned, even if the quota cannot be met without them; that is logged. ``None``
    disables a limit. The plan is a snapshot: whoever applies it must re-check ``in_use``
    atomically with each deletion, since a scan may be opened after planning.
    """
    scans = list(scans)
    if quota_bytes is not None and quota_bytes < 0:
        raise ValueError("quota_bytes must not be negative")
    if max_age_s is not None and max_age_s < 0:
        raise ValueError("max_age_s must not be negative")
    seen: set[str] = set()
    for scan in scans:
        if scan.uid in seen:
            raise ValueError(f"scan {scan.uid} listed twice")  # its bytes would count twice
        if scan.nbytes < 0:
            raise ValueError(f"scan {scan.uid} has negative size")
        seen.add(scan.uid)

    total = sum(s.nbytes for s in scans)
    candidates = [s for s in scans if not s.protected]
    plan: list[Eviction] = []
    if max_age_s is not None:
        too_old = [s for s in candidates if now - s.received_at > max_age_s]
        too_old.sort(key=lambda s: (s.received_at, s.last_access, s.uid))
        plan.extend(Eviction(s, EvictionReason.AGE) for s in too_old)
        total -= sum(s.nbytes for s in too_old)
        planned = {s.uid for s in too_old}
        candidates = [s for s in candidates if s.uid not in planned]
    if quota_bytes is not None and total > quota_bytes:
        for scan in sorted(candidates, key=lambda s: (s.last_access, s.received_at, s.uid)):
            if total <= quota_bytes:
                break
            plan.append(Eviction(scan, EvictionReason.QUOTA))
            total -= scan.nbytes
        if total > quota_bytes:
            LOGGER.warning(
                "store stays over its quota (%d > %d bytes): the rest is protected "
                "(pending triage, unresolved alarms, pinned or in use)", total, quota_bytes,
            )
    return plan
