"""The frame cache: memory LRU by bytes, disk tier with TTL, keys, stale reads, recovery."""

from __future__ import annotations

import threading

import pytest

from station.core.remote.framecache import INDEX_NAME, FrameCache, canonical_url, frame_key

URL = "http://pacs.example:8042/dicom-web/studies/1/series/2/instances/3/frames/{}"
RAW = 'multipart/related; type="application/octet-stream"; transfer-syntax=*'
CT = "application/octet-stream; transfer-syntax=1.2.840.10008.1.2.1"


class FakeClock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_memory_only_hit_and_miss():
    cache = FrameCache(None)
    assert cache.get(URL.format(1), RAW) is None
    cache.put(URL.format(1), RAW, CT, b"abc")
    hit = cache.get(URL.format(1), RAW)
    assert hit is not None and hit.data == b"abc" and hit.content_type == CT and not hit.stale
    stats = cache.stats
    assert (stats.memory_hits, stats.misses, stats.memory_entries, stats.memory_bytes) == (1, 1, 1, 3)


def test_key_is_url_plus_accept():
    cache = FrameCache(None)
    cache.put(URL.format(1), RAW, CT, b"raw")
    assert cache.get(URL.format(1), "image/png") is None
    assert cache.get(URL.format(2), RAW) is None
    assert frame_key(URL.format(1), RAW) != frame_key(URL.format(1), "image/png")


def test_credentials_never_part_of_the_key_text():
    assert canonical_url("https://alice:secret@PACS.example:443/dw/frames/1#x") == "https://pacs.example:443/dw/frames/1"
    assert frame_key("https://alice:secret@pacs.example/dw/1", RAW) == frame_key("https://pacs.example/dw/1", RAW)


def test_memory_lru_is_bounded_by_bytes():
    cache = FrameCache(None, memory_bytes=250)
    for i in range(3):
        cache.put(URL.format(i), RAW, CT, bytes(100))
    assert cache.get(URL.format(0), RAW) is None  # oldest dropped
    assert cache.get(URL.format(1), RAW) is not None
    cache.put(URL.format(3), RAW, CT, bytes(100))  # 1 was used last: 2 goes
    assert cache.get(URL.format(2), RAW) is None
    assert cache.get(URL.format(1), RAW) is not None
    assert cache.stats.memory_bytes <= 250
    cache.put(URL.format(9), RAW, CT, bytes(1000))  # bigger than the budget: not kept
    assert cache.get(URL.format(9), RAW) is None


def test_disk_tier_survives_a_new_instance(tmp_path):
    with FrameCache(tmp_path / "c") as cache:
        cache.put_many([(URL.format(i), RAW, CT, bytes([i]) * 1000) for i in range(5)])
        assert cache.stats.disk_entries == 5 and cache.stats.disk_bytes == 5000
    with FrameCache(tmp_path / "c") as again:
        hit = again.get(URL.format(3), RAW)
        assert hit is not None and hit.data == bytes([3]) * 1000 and hit.content_type == CT
        assert again.stats.disk_hits == 1
        assert again.get(URL.format(3), RAW) is not None
        assert again.stats.memory_hits == 1  # promoted
        assert again.stats.disk_entries == 5


def test_ttl_expires_and_stale_read_still_serves(tmp_path):
    clock = FakeClock()
    cache = FrameCache(tmp_path / "c", ttl_s=100.0, clock=clock)
    cache.put(URL.format(1), RAW, CT, b"frame")
    clock.now += 99
    assert cache.contains(URL.format(1), RAW)
    clock.now += 2
    assert not cache.contains(URL.format(1), RAW)
    assert cache.get(URL.format(1), RAW) is None
    stale = cache.get(URL.format(1), RAW, allow_stale=True)
    assert stale is not None and stale.stale and stale.data == b"frame"
    cache.close()
    # From disk alone too (a restarted station working offline).
    again = FrameCache(tmp_path / "c", ttl_s=100.0, clock=clock)
    assert again.get(URL.format(1), RAW) is None
    assert again.get(URL.format(1), RAW, allow_stale=True).stale
    assert again.purge_expired() == 1
    assert again.get(URL.format(1), RAW, allow_stale=True) is None
    again.close()


def test_disk_tier_evicts_least_recently_used(tmp_path):
    clock = FakeClock()
    cache = FrameCache(tmp_path / "c", memory_bytes=0, disk_bytes=3000, clock=clock)
    for i in range(3):
        clock.now += 100
        cache.put(URL.format(i), RAW, CT, bytes(1000))
    clock.now += 100
    assert cache.get(URL.format(0), RAW) is not None  # touched: now the most recent
    clock.now += 100
    cache.put(URL.format(3), RAW, CT, bytes(1000))
    assert cache.stats.disk_bytes <= 3000
    assert cache.get(URL.format(1), RAW) is None  # least recently used went first
    assert cache.get(URL.format(0), RAW) is not None
    assert cache.get(URL.format(3), RAW) is not None
    blobs = [p for p in (tmp_path / "c" / "blobs").rglob("*") if p.is_file()]
    assert len(blobs) == cache.stats.disk_entries
    cache.close()


def test_missing_blob_is_a_miss_not_an_error(tmp_path):
    cache = FrameCache(tmp_path / "c", memory_bytes=0)
    cache.put(URL.format(1), RAW, CT, b"x" * 10)
    for p in (tmp_path / "c" / "blobs").rglob("*"):
        if p.is_file():
            p.unlink()
    assert cache.get(URL.format(1), RAW) is None
    assert cache.stats.disk_entries == 0
    cache.close()


def test_corrupt_index_is_set_aside(tmp_path):
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / INDEX_NAME).write_bytes(b"this is not sqlite" * 100)
    with FrameCache(tmp_path / "c") as cache:
        cache.put(URL.format(1), RAW, CT, b"ok")
        assert cache.get(URL.format(1), RAW).data == b"ok"
    assert list((tmp_path / "c").glob("index.corrupt-*"))


def test_clear_removes_files(tmp_path):
    with FrameCache(tmp_path / "c") as cache:
        cache.put_many([(URL.format(i), RAW, CT, b"x") for i in range(4)])
        cache.clear()
        assert cache.get(URL.format(1), RAW) is None
        assert cache.stats.disk_entries == 0
    assert not [p for p in (tmp_path / "c" / "blobs").rglob("*") if p.is_file()]


def test_concurrent_readers_and_writers(tmp_path):
    cache = FrameCache(tmp_path / "c", memory_bytes=20_000, disk_bytes=200_000)
    errors: list[BaseException] = []

    def work(seed: int) -> None:
        try:
            for i in range(60):
                url = URL.format((seed * 7 + i) % 40)
                cache.put(url, RAW, CT, bytes([i % 256]) * 900)
                hit = cache.get(URL.format((seed + i) % 40), RAW)
                assert hit is None or len(hit.data) == 900
        except BaseException as exc:  # collected for the main thread
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert cache.stats.disk_bytes <= 200_000
    cache.close()


def test_rejects_nonsense_budgets():
    with pytest.raises(ValueError):
        FrameCache(None, ttl_s=0)
