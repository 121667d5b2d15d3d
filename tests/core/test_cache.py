"""Tests for station.core.remote.querycache: expiring object tree, query cache, eviction policy.

Every time-dependent rule runs on a fake clock; nothing sleeps.
"""

from __future__ import annotations

import random
import sys
import threading
from collections.abc import Iterator

import pytest

from station.core.remote.querycache import (
    DEFAULT_TTL_S,
    EvictionReason,
    InstanceRecord,
    Level,
    ObjectTree,
    QueryCache,
    SeriesRecord,
    StoredScan,
    StudyRecord,
    normalise_query,
    plan_eviction,
    references,
)

TTL = 600.0


class FakeClock:
    """A settable clock; the tree reads it from any thread."""

    def __init__(self, t: float = 1_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def tree(clock: FakeClock) -> ObjectTree:
    return ObjectTree(TTL, clock=clock)


def study(
    uid: str = "1.1",
    series: dict[str, list[str]] | None = None,
    *,
    complete: bool = False,
    series_complete: bool = False,
    patient: str = "BAG-1",
    attrs: dict[str, object] | None = None,
    data: bool = True,
) -> StudyRecord:
    """A study record; ``series`` maps series UIDs to instance UIDs."""
    return StudyRecord(
        uid,
        attributes=(attrs if attrs is not None else {"StudyDescription": f"study {uid}"}) if data else None,
        series=[
            SeriesRecord(s, {"Modality": "CT"}, [InstanceRecord(i, {"InstanceNumber": n}) for n, i in enumerate(insts)],
                         complete=series_complete)
            for s, insts in (series or {}).items()
        ],
        complete=complete,
        patient_id=patient,
        patient_attributes={"PatientName": "ROLLER^BLUE"},
    )


# ------------------------------------------------------------------------------ tree


def test_default_ttl_is_ten_minutes() -> None:
    assert DEFAULT_TTL_S == 600.0
    assert ObjectTree().ttl_s == 600.0


def test_retrieve_by_study_series_and_instance_reference(tree: ObjectTree) -> None:
    tree.add(study("1.1", {"1.1.1": ["1.1.1.1", "1.1.1.2"]}))
    s = tree.study("1.1")
    assert s is not None and s.attributes == {"StudyDescription": "study 1.1"} and s.parent_uid == "BAG-1"
    assert [c.uid for c in s.children] == ["1.1.1"]
    se = tree.series("1.1.1")
    assert se is not None and se.parent_uid == "1.1" and {c.uid for c in se.children} == {"1.1.1.1", "1.1.1.2"}
    inst = tree.instance("1.1.1.2")
    assert inst is not None and inst.attributes == {"InstanceNumber": 1} and inst.parent_uid == "1.1.1"
    p = tree.patient("BAG-1")
    assert p is not None and p.attributes == {"PatientName": "ROLLER^BLUE"}
    assert tree.study("nope") is None and tree.series("1.1") is None  # levels do not mix
    assert len(tree) == 5


def test_objects_expire_after_ttl_and_leaves_are_pruned(tree: ObjectTree, clock: FakeClock) -> None:
    tree.add(study("1.1", {"1.1.1": ["1.1.1.1"]}))
    clock.advance(TTL - 0.001)
    assert tree.instance("1.1.1.1") is not None and tree.instance("1.1.1.1").attributes is not None
    clock.advance(0.001)  # live while now < added + ttl
    assert tree.instance("1.1.1.1") is None
    assert tree.series("1.1.1") is None and tree.study("1.1") is None and tree.patient("BAG-1") is None
    assert len(tree) == 0


def test_expired_leaf_is_pruned_while_refreshed_siblings_stay(tree: ObjectTree, clock: FakeClock) -> None:
    tree.add(study("1.1", {"1.1.1": ["a", "b"]}))
    clock.advance(300)
    # A series-level answer refreshes instance "a" only; the study is just a reference.
    tree.add(StudyRecord("1.1", None, [SeriesRecord("1.1.1", {}, [InstanceRecord("a", {"InstanceNumber": 0})])]))
    clock.advance(300)
    assert tree.instance("b") is None, "expired leaf must be pruned"
    assert tree.instance("a") is not None
    assert {c.uid for c in tree.series("1.1.1").children} == {"a"}


def test_parent_data_dropped_but_children_stay_reachable(tree: ObjectTree, clock: FakeClock) -> None:
    tree.add(study("1.1", {"1.1.1": ["a"], "1.1.2": ["b"]}, complete=True))
    clock.advance(300)
    # Refresh series 1.1.1 and its instance through a reference to the study (no study data).
    tree.add(StudyRecord("1.1", None, [SeriesRecord("1.1.1", {"Modality": "CT"}, [InstanceRecord("a", {})])],
                         patient_id="BAG-1"))
    clock.advance(300)
    s = tree.study("1.1")
    assert s is not None, "a study with live children must stay reachable"
    assert s.attributes is None and s.expires_at is None, "its own data (attributes) must be dropped"
    assert s.complete is False, "the completeness claim is own data and goes with it"
    assert not s.has_depth(Level.STUDY)
    assert [c.uid for c in s.children] == ["1.1.1"], "the expired sibling series is pruned"
    assert tree.series("1.1.1").attributes == {"Modality": "CT"} and tree.series("1.1.1").parent_uid == "1.1"
    assert tree.instance("a") is not None
    assert tree.patient("BAG-1") is not None and tree.patient("BAG-1").attributes is None
    clock.advance(300)  # now the refreshed branch expires too: the whole branch goes
    assert len(tree) == 0


def test_refresh_after_expiry_does_not_resurrect_old_attributes(tree: ObjectTree, clock: FakeClock) -> None:
    tree.add(study("1.1", attrs={"StudyDescription": "old", "StudyDate": "20240101"}))
    tree.add(study("1.1", attrs={"StudyDescription": "newer"}))  # live: merged
    assert tree.study("1.1").attributes == {"StudyDescription": "newer", "StudyDate": "20240101"}
    tree.add(StudyRecord("1.1", None, [SeriesRecord("x", {})]))  # keeps the study as a container
    clock.advance(TTL)
    tree.add(StudyRecord("1.1", None, [SeriesRecord("x", {})]))
    assert tree.study("1.1").attributes is None
    tree.add(study("1.1", attrs={"StudyDescription": "fresh"}))
    assert tree.study("1.1").attributes == {"StudyDescription": "fresh"}


def test_refresh_extends_life(tree: ObjectTree, clock: FakeClock) -> None:
    tree.add(study("1.1", {"1.1.1": ["a"]}))
    clock.advance(500)
    tree.add(study("1.1", {"1.1.1": ["a"]}))
    clock.advance(500)
    assert tree.instance("a") is not None and tree.study("1.1").attributes is not None
    clock.advance(100)
    assert len(tree) == 0


def test_pruning_removes_empty_expired_branches_only(tree: ObjectTree, clock: FakeClock) -> None:
    tree.add(study("1.1", {"1.1.1": ["a"]}, patient="P"))
    clock.advance(200)
    tree.add(study("2.1", {"2.1.1": ["b"]}, patient="P"))
    clock.advance(400)
    # Branch 1.1 is entirely expired and gone; patient P still has study 2.1.
    assert tree.study("1.1") is None and tree.series("1.1.1") is None and tree.instance("a") is None
    assert [c.uid for c in tree.patient("P").children] == ["2.1"]
    assert len(tree) == 4
    clock.advance(200)
    assert len(tree) == 0


def test_reference_only_record_without_children_leaves_nothing(tree: ObjectTree) -> None:
    tree.add(StudyRecord("9.9", None, [SeriesRecord("9.9.1", None)]))
    assert len(tree) == 0


def test_complete_listing_drops_children_it_does_not_name(tree: ObjectTree) -> None:
    tree.add(study("1.1", {"s1": ["a"], "s2": ["b"]}, complete=True))
    tree.add(study("1.1", {"s1": ["a"]}, complete=True))
    assert [c.uid for c in tree.study("1.1").children] == ["s1"]
    assert tree.series("s2") is None and tree.instance("b") is None


def test_partial_listing_with_unknown_child_withdraws_completeness(tree: ObjectTree) -> None:
    tree.add(study("1.1", {"s1": ["a"]}, complete=True, series_complete=True))
    assert tree.study("1.1").has_depth(Level.INSTANCE)
    tree.add(study("1.1", {"s1": ["a"]}))  # nothing new: the claim stands
    assert tree.study("1.1").has_depth(Level.INSTANCE)
    tree.add(study("1.1", {"s2": []}))  # a series the complete listing did not have
    assert not tree.study("1.1").complete
    assert {c.uid for c in tree.study("1.1").children} == {"s1", "s2"}


def test_completeness_claim_expires_ttl_after_the_complete_listing(tree: ObjectTree, clock: FakeClock) -> None:
    tree.add(study("1.1", {"s1": ["a"]}, complete=True, series_complete=True))
    clock.advance(500)
    tree.add(study("1.1", {"s1": ["a"]}))  # refreshes every object, claims nothing
    clock.advance(100)
    s = tree.study("1.1")
    assert s.attributes is not None and s.child("s1").attributes is not None
    assert not s.complete and not s.has_depth(Level.SERIES)


def test_discard_removes_subtree_and_withdraws_parent_claim(tree: ObjectTree) -> None:
    tree.add(study("1.1", {"s1": ["a", "b"]}, complete=True, series_complete=True))
    assert tree.discard(Level.INSTANCE, "b")
    assert tree.instance("b") is None
    assert tree.study("1.1").has_depth(Level.SERIES)
    assert not tree.study("1.1").has_depth(Level.INSTANCE)
    assert tree.discard(Level.STUDY, "1.1") and not tree.discard(Level.STUDY, "1.1")
    assert tree.series("s1") is None and tree.instance("a") is None
    assert tree.patient("BAG-1").children == () and len(tree) == 1, "the patient has data of its own"
    tree.add(StudyRecord("2.1", {}, patient_id="BARE"))  # no patient attributes: a bare container
    assert tree.discard(Level.STUDY, "2.1")
    assert tree.patient("BARE") is None, "a container left without children is pruned"


def test_reference_only_records_never_attach_to_a_pruned_parent(tree: ObjectTree) -> None:
    # The first series is reference-only with nothing under it; the second has data.
    tree.add(StudyRecord("1.1", None, [SeriesRecord("s1", None), SeriesRecord("s2", {}, [InstanceRecord("i", None)])]))
    assert tree.study("1.1") is not None and [c.uid for c in tree.study("1.1").children] == ["s2"]
    assert tree.series("s2").children == () and tree.instance("i") is None
    assert len(tree) == 3


def test_study_moves_to_corrected_patient(tree: ObjectTree) -> None:
    tree.add(StudyRecord("1.1", {}, patient_id="WRONG"))
    tree.add(StudyRecord("1.1", {}, patient_id="RIGHT"))
    assert tree.study("1.1").parent_uid == "RIGHT"
    assert tree.patient("WRONG") is None


def test_snapshots_and_records_are_read_only(tree: ObjectTree) -> None:
    attrs = {"StudyDescription": "x"}
    record = study("1.1", attrs=attrs)
    attrs["StudyDescription"] = "changed by the caller"
    tree.add(record)
    s = tree.study("1.1")
    assert s.attributes["StudyDescription"] == "x"
    with pytest.raises(TypeError):
        s.attributes["StudyDescription"] = "y"  # type: ignore[index]
    with pytest.raises(TypeError):
        record.attributes["StudyDescription"] = "y"  # type: ignore[index]


def test_records_validate() -> None:
    with pytest.raises(ValueError):
        StudyRecord("")
    with pytest.raises(ValueError):
        StudyRecord("1.1", None, complete=True)
    with pytest.raises(ValueError):
        ObjectTree(0)
    with pytest.raises(TypeError):
        ObjectTree().add({"uid": "1.1"})  # type: ignore[arg-type]


def test_references_are_the_objects_whose_data_a_response_carries() -> None:
    refs = references([
        StudyRecord("1.1", None, [SeriesRecord("s1", {}, [InstanceRecord("a"), InstanceRecord("b", None)])],
                    patient_id="P", patient_attributes={"PatientName": "X"}),
    ])
    assert refs == ((Level.PATIENT, "P"), (Level.SERIES, "s1"), (Level.INSTANCE, "a"))


# ----------------------------------------------------- tree: concurrency and random model


def _walk_ok(node, parent_uid, seen: set) -> None:  # type: ignore[no-untyped-def]
    assert node.parent_uid == parent_uid
    assert (node.level, node.uid) not in seen, "an object appears twice in one snapshot"
    seen.add((node.level, node.uid))
    for c in node.children:
        assert c.level == node.level + 1
        _walk_ok(c, node.uid, seen)


@pytest.fixture
def fast_switching() -> Iterator[None]:
    # Switch threads as often as possible so that interleavings actually happen.
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    yield
    sys.setswitchinterval(old)


def test_concurrent_adds_and_reads_do_not_corrupt_the_tree(fast_switching: None) -> None:
    clock = FakeClock()
    tree = ObjectTree(TTL, clock=clock)
    n_writers, studies_each = 4, 60
    errors: list[BaseException] = []
    done = threading.Event()

    def writer(w: int) -> None:
        rng = random.Random(w)
        try:
            for k in range(studies_each):
                uid = f"{w}.{k}"
                # Every study is added twice, in parts, by the same writer; other writers
                # hammer the same patients, so parents are shared between threads.
                tree.add(study(uid, {f"{uid}.1": [f"{uid}.1.{i}" for i in range(3)]}, patient=f"P{k % 5}"))
                tree.add(StudyRecord(uid, None, [SeriesRecord(f"{uid}.2", {}, [InstanceRecord(f"{uid}.2.0")])],
                                     patient_id=f"P{k % 5}"))
                if rng.random() < 0.2:
                    tree.discard(Level.STUDY, f"{w}.{rng.randrange(k + 1)}")
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            errors.append(exc)

    def reader() -> None:
        try:
            while not done.is_set():
                for p in range(5):
                    node = tree.patient(f"P{p}")
                    if node is not None:
                        _walk_ok(node, None, set())
                len(tree)
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(w,), name=f"writer-{w}") for w in range(n_writers)]
    readers = [threading.Thread(target=reader, name=f"reader-{r}") for r in range(2)]
    for t in readers + threads:
        t.start()
    for t in threads:
        t.join()
    done.set()
    for t in readers:
        t.join()
    assert not errors, errors

    # Whatever was discarded, everything left must be whole and consistent.
    count = 0
    for p in range(5):
        node = tree.patient(f"P{p}")
        if node is None:
            continue
        seen: set = set()
        _walk_ok(node, None, seen)
        count += len(seen)
        for s in node.children:
            assert {c.uid for c in s.children} == {f"{s.uid}.1", f"{s.uid}.2"}
            assert len(s.child(f"{s.uid}.1").children) == 3
            assert tree.study(s.uid) is not None and tree.series(f"{s.uid}.2").parent_uid == s.uid
    assert count == len(tree)
    clock.advance(TTL)
    assert len(tree) == 0, "nothing may be left behind once everything has expired"


def test_expiry_racing_with_adds_leaves_no_orphans(fast_switching: None) -> None:
    clock = FakeClock()
    tree = ObjectTree(10.0, clock=clock)
    stop = threading.Event()
    errors: list[BaseException] = []

    def ticker() -> None:
        while not stop.is_set():
            clock.advance(0.5)

    def writer(w: int) -> None:
        try:
            for k in range(150):
                tree.add(study(f"{w}.{k % 7}", {f"{w}.{k % 7}.{k % 3}": [f"{w}.{k % 7}.{k % 3}.{k % 4}"]},
                               patient=f"P{k % 2}"))
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    tick = threading.Thread(target=ticker, name="ticker")
    writers = [threading.Thread(target=writer, args=(w,), name=f"writer-{w}") for w in range(3)]
    tick.start()
    for t in writers:
        t.start()
    for t in writers:
        t.join()
    stop.set()
    tick.join()
    assert not errors, errors
    clock.advance(10.0)
    assert len(tree) == 0


class _Model:
    """A direct, slow restatement of the tree's rules: the oracle for random operations."""

    PARENT_OF_STUDY = {f"st{i}": f"P{i % 2}" for i in range(4)}

    def __init__(self, ttl: float) -> None:
        self.ttl = ttl
        self.data: dict[tuple[Level, str], tuple[dict, float]] = {}
        self.present: set[tuple[Level, str]] = set()
        self.complete_until: dict[tuple[Level, str], float] = {}

    @staticmethod
    def parent(key: tuple[Level, str]) -> tuple[Level, str] | None:
        level, uid = key
        if level == Level.PATIENT:
            return None
        if level == Level.STUDY:
            return (Level.PATIENT, _Model.PARENT_OF_STUDY[uid])
        return (Level(level - 1), uid.rsplit(".", 1)[0])

    def children(self, key: tuple[Level, str]) -> list[tuple[Level, str]]:
        return [k for k in self.present if self.parent(k) == key]

    def _remove(self, key: tuple[Level, str]) -> None:
        for child in self.children(key):
            self._remove(child)
        self.present.discard(key)
        self.data.pop(key, None)
        self.complete_until.pop(key, None)
        parent = self.parent(key)
        if parent is not None:
            self.complete_until[parent] = -1.0

    def sweep(self, now: float) -> None:
        for key, (_, exp) in list(self.data.items()):
            if exp <= now:
                del self.data[key]
                self.complete_until[key] = -1.0
        changed = True
        while changed:
            changed = False
            for key in list(self.present):
                if key in self.present and key not in self.data and not self.children(key):
                    self._remove(key)
                    changed = True

    def upsert(self, key: tuple[Level, str], attrs: dict | None, now: float) -> None:
        self.present.add(key)
        if attrs is not None:
            old = self.data.get(key)
            self.data[key] = ({**old[0], **attrs} if old else dict(attrs), now + self.ttl)

    def listing(self, key: tuple[Level, str], listed: list[str], complete: bool, now: float) -> None:
        level = Level(key[0] + 1)
        existing = {k[1] for k in self.children(key)}
        if complete:
            for uid in existing - set(listed):
                self._remove((level, uid))
            self.complete_until[key] = now + self.ttl
        elif set(listed) - existing:
            self.complete_until[key] = -1.0

    def add(self, record: StudyRecord, now: float) -> None:
        skey = (Level.STUDY, record.uid)
        self.upsert((Level.PATIENT, record.patient_id), record.patient_attributes, now)
        self.upsert(skey, record.attributes, now)
        self.listing(skey, [s.uid for s in record.series], record.complete, now)
        for s in record.series:
            sekey = (Level.SERIES, s.uid)
            self.upsert(sekey, s.attributes, now)
            self.listing(sekey, [i.uid for i in s.instances], s.complete, now)
            for i in s.instances:
                self.upsert((Level.INSTANCE, i.uid), i.attributes, now)
        self.sweep(now)  # reference-only nodes left without children go at once


def _random_record(rng: random.Random) -> StudyRecord:
    st = f"st{rng.randrange(4)}"

    def attrs() -> dict | None:
        return None if rng.random() < 0.3 else {rng.choice("abc"): rng.randrange(3)}

    series = []
    for se in rng.sample(range(3), rng.randrange(4)):
        instances = [InstanceRecord(f"{st}.{se}.{i}", attrs()) for i in rng.sample(range(3), rng.randrange(4))]
        se_attrs = attrs()
        series.append(SeriesRecord(f"{st}.{se}", se_attrs, instances,
                                   complete=se_attrs is not None and rng.random() < 0.3))
    st_attrs = attrs()
    return StudyRecord(st, st_attrs, series, complete=st_attrs is not None and rng.random() < 0.3,
                       patient_id=_Model.PARENT_OF_STUDY[st], patient_attributes=attrs())


def test_random_operations_match_a_reference_model() -> None:
    rng = random.Random(20240505)
    clock = FakeClock(0.0)
    ttl = 10.0
    tree = ObjectTree(ttl, clock=clock)
    model = _Model(ttl)
    universe = [(Level.PATIENT, f"P{i}") for i in range(2)] + [
        (level, uid)
        for st in range(4)
        for level, uid in [(Level.STUDY, f"st{st}")]
        + [(Level.SERIES, f"st{st}.{se}") for se in range(3)]
        + [(Level.INSTANCE, f"st{st}.{se}.{i}") for se in range(3) for i in range(3)]
    ]
    getters = {Level.PATIENT: tree.patient, Level.STUDY: tree.study, Level.SERIES: tree.series,
               Level.INSTANCE: tree.instance}
    for step in range(1500):
        op = rng.random()
        if op < 0.55:
            record = _random_record(rng)
            tree.add(record)
            model.sweep(clock.t)
            model.add(record, clock.t)
        elif op < 0.6:
            key = rng.choice(universe)
            model.sweep(clock.t)
            expected = key in model.present
            assert tree.discard(*key) == expected
            if expected:
                model._remove(key)
                model.sweep(clock.t)
        else:
            clock.advance(rng.choice([0.5, 1.0, 2.5, 4.0]))
        model.sweep(clock.t)
        for key in universe:
            node = getters[key[0]](key[1])
            if key not in model.present:
                assert node is None, (step, key)
                continue
            assert node is not None, (step, key)
            expected_data = model.data.get(key)
            assert node.attributes == (expected_data[0] if expected_data else None), (step, key)
            assert {c.uid for c in node.children} == {k[1] for k in model.children(key)}, (step, key)
            assert node.complete == (model.complete_until.get(key, -1.0) > clock.t), (step, key)
        assert len(tree) == len(model.present), step


# ----------------------------------------------------------------------- query cache


class Searcher:
    """A fake searcher over a fixed catalogue; records the queries it was asked."""

    def __init__(self, catalogue: dict[str, StudyRecord] | None = None) -> None:
        self.catalogue = catalogue or {}
        self.calls: list[dict[str, str]] = []
        self.fail = False

    def __call__(self, query):  # type: ignore[no-untyped-def]
        self.calls.append(dict(query))
        if self.fail:
            raise ConnectionError("remote down")
        level = query.get("QueryRetrieveLevel", "STUDY")
        uid = query.get("StudyInstanceUID")
        out = []
        for s in self.catalogue.values():
            if uid is not None and s.uid != uid:
                continue
            if "ModalitiesInStudy" in query and s.attributes.get("ModalitiesInStudy") != query["ModalitiesInStudy"]:
                continue
            if level == "STUDY":
                out.append(StudyRecord(s.uid, s.attributes, patient_id=s.patient_id))
            elif level == "SERIES":
                out.append(StudyRecord(s.uid, s.attributes, [SeriesRecord(se.uid, se.attributes) for se in s.series],
                                       complete=uid is not None, patient_id=s.patient_id))
            else:
                out.append(StudyRecord(
                    s.uid, s.attributes,
                    [SeriesRecord(se.uid, se.attributes, se.instances, complete=uid is not None) for se in s.series],
                    complete=uid is not None, patient_id=s.patient_id))
        return out


def catalogue() -> dict[str, StudyRecord]:
    def one(uid: str, modality: str) -> StudyRecord:
        return StudyRecord(
            uid, {"ModalitiesInStudy": modality},
            [SeriesRecord(f"{uid}.{n}", {"Modality": modality}, [InstanceRecord(f"{uid}.{n}.{i}") for i in range(2)])
             for n in range(2)],
            patient_id=f"P-{uid}",
        )

    return {"1": one("1", "CT"), "2": one("2", "CT"), "3": one("3", "DX")}


@pytest.fixture
def searcher() -> Searcher:
    return Searcher(catalogue())


def test_same_query_is_served_from_cache(tree: ObjectTree, searcher: Searcher) -> None:
    qc = QueryCache(searcher, tree)
    first = qc.search({"ModalitiesInStudy": "CT"})
    assert [s.uid for s in first] == ["1", "2"]
    assert qc.search({"ModalitiesInStudy": "CT"}) is first
    assert len(searcher.calls) == 1
    assert tree.study("1") is not None, "a searched response's objects are added to the tree"
    stats = qc.stats()
    assert (stats.query_hits, stats.query_misses, stats.hits, stats.misses) == (1, 1, 1, 1)


def test_miss_when_one_referenced_object_expired(tree: ObjectTree, clock: FakeClock, searcher: Searcher) -> None:
    qc = QueryCache(searcher, tree, max_response_age_s=None)  # isolate the object rule
    qc.search({"ModalitiesInStudy": "CT"})  # references studies 1 and 2
    clock.advance(300)
    tree.add(StudyRecord("1", {}))  # study 1 refreshed by some other answer; 2 is not
    clock.advance(299)
    qc.search({"ModalitiesInStudy": "CT"})
    assert len(searcher.calls) == 1
    clock.advance(1)  # study 2 has expired, study 1 has not
    assert qc.cached({"ModalitiesInStudy": "CT"}) is None
    qc.search({"ModalitiesInStudy": "CT"})
    assert len(searcher.calls) == 2
    assert qc.stats().query_misses == 2


def test_hit_while_every_referenced_object_is_unexpired(tree: ObjectTree, clock: FakeClock, searcher: Searcher) -> None:
    qc = QueryCache(searcher, tree, max_response_age_s=None)
    qc.search({"ModalitiesInStudy": "CT"})
    clock.advance(300)
    tree.add(StudyRecord("1", {}), StudyRecord("2", {}))
    clock.advance(400)  # older than the TTL, but each object it names is fresh
    qc.search({"ModalitiesInStudy": "CT"})
    assert len(searcher.calls) == 1


def test_miss_when_a_referenced_object_was_discarded(tree: ObjectTree, searcher: Searcher) -> None:
    qc = QueryCache(searcher, tree)
    qc.search({"QueryRetrieveLevel": "SERIES", "ModalitiesInStudy": "DX"})
    tree.discard(Level.SERIES, "3.1")
    qc.search({"QueryRetrieveLevel": "SERIES", "ModalitiesInStudy": "DX"})
    assert len(searcher.calls) == 2


def test_responses_are_not_served_past_their_max_age(tree: ObjectTree, clock: FakeClock, searcher: Searcher) -> None:
    qc = QueryCache(searcher, tree)  # default: max age is the tree's TTL
    assert qc.search({"ModalitiesInStudy": "MR"}) == ()
    clock.advance(TTL - 1)
    qc.search({"ModalitiesInStudy": "MR"})
    assert len(searcher.calls) == 1
    clock.advance(1)  # an empty answer names no object that could expire; its age does
    qc.search({"ModalitiesInStudy": "MR"})
    assert len(searcher.calls) == 2


def test_searcher_receives_the_normalised_query(searcher: Searcher) -> None:
    qc = QueryCache(searcher)
    qc.search({" ModalitiesInStudy ": " ct", "PatientName": "  DOE^ JOHN ", "Empty": ""})
    assert searcher.calls == [{"ModalitiesInStudy": "CT", "PatientName": "DOE^ JOHN"}]


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ({"PatientID": "X", "Modality": "CT"}, {"Modality": "CT", "PatientID": "X"}),  # key order
        ({"Modality": "ct"}, {"Modality": "CT"}),  # code strings are upper case
        ({"ModalitiesInStudy": " CT "}, {"ModalitiesInStudy": "CT"}),
        ({"PatientName": "DOE^JOHN  SMITH "}, {"PatientName": "DOE^JOHN SMITH"}),  # whitespace runs
        ({"StudyDate": "20240101 - 20240131"}, {"StudyDate": "20240101-20240131"}),  # no spaces in dates
        ({"00080060": "CT"}, {"Modality": "CT"}),  # hex tag or keyword
        ({"ModalitiesInStudy": ["dx", "CT", "CT"]}, {"ModalitiesInStudy": "CT\\DX"}),  # a set of values
        ({"PatientID": "X", "AccessionNumber": ""}, {"PatientID": "X", "AccessionNumber": None}),
        ({"PatientID": "X", "AccessionNumber": "  "}, {"PatientID": "X"}),  # empty = no filter
        ({"limit": 10}, {"limit": "10"}),
    ],
)
def test_equivalent_queries_share_a_key(a: dict, b: dict) -> None:
    assert normalise_query(a) == normalise_query(b)


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ({"PatientName": "doe"}, {"PatientName": "DOE"}),  # names keep their case
        ({"Modality": "CT"}, {"Modality": "DX"}),
        ({"QueryRetrieveLevel": "STUDY", "PatientID": "X"}, {"QueryRetrieveLevel": "SERIES", "PatientID": "X"}),
        ({"limit": "10"}, {"Limit": "10"}),  # keys keep their case
    ],
)
def test_different_queries_have_different_keys(a: dict, b: dict) -> None:
    assert normalise_query(a) != normalise_query(b)


def test_equivalent_queries_hit_the_same_entry(searcher: Searcher) -> None:
    qc = QueryCache(searcher)
    qc.search({"ModalitiesInStudy": "ct", "QueryRetrieveLevel": "study"})
    qc.search({"QueryRetrieveLevel": "STUDY ", "ModalitiesInStudy": "CT"})
    assert len(searcher.calls) == 1


def test_query_naming_an_attribute_twice_is_rejected() -> None:
    with pytest.raises(ValueError):
        normalise_query({"PatientID": "A", "00100020": "B"})
    with pytest.raises(TypeError):
        normalise_query({"PatientID": object()})


def test_searcher_failure_is_not_cached(searcher: Searcher) -> None:
    qc = QueryCache(searcher)
    searcher.fail = True
    with pytest.raises(ConnectionError):
        qc.search({"ModalitiesInStudy": "CT"})
    searcher.fail = False
    qc.search({"ModalitiesInStudy": "CT"})
    assert len(searcher.calls) == 2


def test_entries_are_bounded_least_recently_used_first(searcher: Searcher) -> None:
    qc = QueryCache(searcher, max_entries=2)
    for q in ("CT", "DX", "CT", "MR"):  # "DX" is the least recently used when "MR" arrives
        qc.search({"ModalitiesInStudy": q})
    assert qc.cached({"ModalitiesInStudy": "CT"}) is not None
    assert qc.cached({"ModalitiesInStudy": "MR"}) is not None
    assert qc.cached({"ModalitiesInStudy": "DX"}) is None


def test_cached_never_searches_and_invalidate_forgets(searcher: Searcher) -> None:
    qc = QueryCache(searcher)
    assert qc.cached({"ModalitiesInStudy": "CT"}) is None
    assert searcher.calls == []
    qc.search({"ModalitiesInStudy": "CT"})
    qc.invalidate()
    assert qc.cached({"ModalitiesInStudy": "CT"}) is None
    assert qc.tree.study("1") is not None


# --------------------------------------------------------------- study lookups at depth


def test_study_level_lookup_served_from_a_study_level_answer(searcher: Searcher) -> None:
    qc = QueryCache(searcher)
    qc.search({"ModalitiesInStudy": "CT"})
    node = qc.study("1", Level.STUDY)
    assert node is not None and node.attributes == {"ModalitiesInStudy": "CT"}
    assert len(searcher.calls) == 1 and qc.stats().study_hits == 1


def test_depth_lookup_searches_when_the_cached_study_is_too_shallow(searcher: Searcher) -> None:
    qc = QueryCache(searcher)
    qc.search({"ModalitiesInStudy": "CT"})  # studies only: no series known
    node = qc.study("1", Level.SERIES)
    assert searcher.calls[-1] == {"QueryRetrieveLevel": "SERIES", "StudyInstanceUID": "1"}
    assert node is not None and node.has_depth(Level.SERIES) and len(node.children) == 2
    assert qc.study("1", Level.SERIES) is not None
    assert len(searcher.calls) == 2, "now held at series depth: served from the tree"
    qc.study("1", Level.INSTANCE)
    assert searcher.calls[-1] == {"QueryRetrieveLevel": "IMAGE", "StudyInstanceUID": "1"}
    node = qc.study("1", Level.INSTANCE)
    assert len(searcher.calls) == 3
    assert node.has_depth(Level.INSTANCE) and all(len(se.children) == 2 for se in node.children)
    stats = qc.stats()
    assert (stats.study_hits, stats.study_misses) == (2, 2)


def test_partial_series_answer_does_not_satisfy_a_series_depth_lookup(searcher: Searcher) -> None:
    qc = QueryCache(searcher)
    # A filtered series-level search lists series but cannot claim they are all of them.
    qc.search({"QueryRetrieveLevel": "SERIES", "ModalitiesInStudy": "CT"})
    assert len(qc.tree.study("1").children) == 2
    qc.study("1", Level.SERIES)
    assert len(searcher.calls) == 2


def test_depth_lookup_misses_once_part_of_the_study_expired(
    tree: ObjectTree, clock: FakeClock, searcher: Searcher
) -> None:
    qc = QueryCache(searcher, tree)
    qc.study("1", Level.INSTANCE)
    clock.advance(300)
    tree.add(StudyRecord("1", {}, [SeriesRecord("1.0", {})]))  # refresh all but series 1.1
    clock.advance(300)
    assert tree.study("1").attributes is not None
    qc.study("1", Level.STUDY)
    assert len(searcher.calls) == 1
    qc.study("1", Level.SERIES)
    assert len(searcher.calls) == 2


def test_depth_lookup_of_unknown_study_returns_none(searcher: Searcher) -> None:
    qc = QueryCache(searcher)
    assert qc.study("404", Level.SERIES) is None
    with pytest.raises(ValueError):
        qc.study("1", Level.PATIENT)


# --------------------------------------------------------------------------- eviction


def scan(uid: str, nbytes: int = 100, last_access: float = 0.0, received_at: float = 0.0, **flags: bool) -> StoredScan:
    return StoredScan(uid, nbytes, last_access, received_at, **flags)


def uids(plan) -> list[str]:  # type: ignore[no-untyped-def]
    return [e.scan.uid for e in plan]


def test_eviction_lru_first_until_under_quota() -> None:
    scans = [scan("new", last_access=30), scan("old", last_access=10), scan("mid", last_access=20)]
    plan = plan_eviction(scans, quota_bytes=150, max_age_s=None, now=100)
    assert uids(plan) == ["old", "mid"]
    assert all(e.reason is EvictionReason.QUOTA for e in plan)
    assert uids(plan_eviction(scans, quota_bytes=200, max_age_s=None, now=100)) == ["old"]
    assert plan_eviction(scans, quota_bytes=300, max_age_s=None, now=100) == []


def test_eviction_by_age_uses_received_time_regardless_of_access() -> None:
    scans = [scan("ancient", received_at=0, last_access=99), scan("edge", received_at=50),
             scan("young", received_at=60)]
    plan = plan_eviction(scans, quota_bytes=None, max_age_s=50, now=100)
    assert uids(plan) == ["ancient"], "older than the limit goes even if viewed just now; exactly at it stays"
    assert plan[0].reason is EvictionReason.AGE


@pytest.mark.parametrize("flag", ["pending_triage", "unresolved_alarms", "pinned", "in_use"])
def test_eviction_never_touches_protected_scans(flag: str) -> None:
    scans = [scan("protected", nbytes=1_000, last_access=0, received_at=0, **{flag: True}),
             scan("free", nbytes=10, last_access=5, received_at=0)]
    plan = plan_eviction(scans, quota_bytes=0, max_age_s=1, now=1_000)
    assert uids(plan) == ["free"]


def test_protected_bytes_count_against_the_quota() -> None:
    scans = [scan("pinned", nbytes=500, pinned=True), scan("a", last_access=1), scan("b", last_access=2)]
    assert uids(plan_eviction(scans, quota_bytes=650, max_age_s=None, now=10)) == ["a"]


def test_age_evictions_count_towards_the_quota() -> None:
    scans = [scan("old", nbytes=100, received_at=0, last_access=50), scan("lru", nbytes=100, received_at=80)]
    plan = plan_eviction(scans, quota_bytes=100, max_age_s=30, now=100)
    assert [(e.scan.uid, e.reason) for e in plan] == [("old", EvictionReason.AGE)]


def test_eviction_with_no_limits_or_bad_input() -> None:
    assert plan_eviction([scan("a")], quota_bytes=None, max_age_s=None, now=1e9) == []
    assert plan_eviction([], quota_bytes=0, max_age_s=0, now=0) == []
    with pytest.raises(ValueError):
        plan_eviction([scan("a"), scan("a")], quota_bytes=0, max_age_s=None, now=0)
    with pytest.raises(ValueError):
        plan_eviction([scan("a", nbytes=-1)], quota_bytes=0, max_age_s=None, now=0)


def test_eviction_properties_on_random_stores() -> None:
    rng = random.Random(7)
    for _ in range(300):
        now = 1_000.0
        scans = []
        for i in range(rng.randrange(0, 25)):
            received = rng.uniform(0, now)
            scans.append(StoredScan(
                f"s{i}", rng.randrange(0, 1_000), rng.uniform(received, now), received,
                pending_triage=rng.random() < 0.1, unresolved_alarms=rng.random() < 0.1,
                pinned=rng.random() < 0.1, in_use=rng.random() < 0.1,
            ))
        quota = rng.choice([None, 0, rng.randrange(0, 10_000)])
        max_age = rng.choice([None, rng.uniform(0, now)])
        plan = plan_eviction(scans, quota, max_age, now)
        evicted = {e.scan.uid for e in plan}
        assert len(evicted) == len(plan)
        assert not any(e.scan.protected for e in plan)
        free = [s for s in scans if not s.protected]
        if max_age is not None:
            assert {s.uid for s in free if now - s.received_at > max_age} <= evicted
            assert all(now - e.scan.received_at > max_age for e in plan if e.reason is EvictionReason.AGE)
        remaining = sum(s.nbytes for s in scans if s.uid not in evicted)
        quota_evictions = [e.scan for e in plan if e.reason is EvictionReason.QUOTA]
        if quota is None:
            assert not quota_evictions
            continue
        assert remaining <= quota or all(s.uid in evicted for s in free), "over quota while something could go"
        kept_free = [s for s in free if s.uid not in evicted]
        if quota_evictions:
            # LRU: nothing kept was used less recently than something evicted for space...
            assert max(s.last_access for s in quota_evictions) <= min((s.last_access for s in kept_free),
                                                                       default=float("inf"))
            # ...and no more was evicted than needed: without the last one it would not fit.
            assert remaining + quota_evictions[-1].nbytes > quota
