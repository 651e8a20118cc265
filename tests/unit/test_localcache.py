"""The local cache keeps its bounds in entries and bytes, and evicts least recently used."""

import gc
import random
import tracemalloc

import pytest

from cachegrid.localcache import (
    ENTRY_OVERHEAD,
    LocalCache,
    accounted,
    entry_body,
    entry_etag,
    entry_version,
    is_tombstone,
)
from cachegrid.serving.entry import make_entry
from cachegrid.store import Record
from cachegrid.version import Version


def entry(key: str, size: int = 10, seq: int = 1):
    return make_entry(key, Record(Version(1, seq), False, b'"' + b"x" * size + b'"'))


def test_the_entry_bound_evicts_the_least_recently_used() -> None:
    cache = LocalCache(max_entries=3, max_bytes=10**6)
    for key in "abc":
        cache.put(key, entry(key))
    cache.get("a")  # a is now the most recently used
    cache.put("d", entry("d"))
    assert sorted(cache.cached_keys()) == ["a", "c", "d"]
    assert cache.evictions == 1


def test_the_byte_bound_holds_whatever_is_inserted() -> None:
    cache = LocalCache(max_entries=10**6, max_bytes=50_000)
    for i in range(2_000):
        cache.put(f"k{i}", entry(f"k{i}", size=i % 700))
        assert cache.bytes <= 50_000
    assert len(cache) < 2_000
    assert cache.bytes == sum(accounted(k, cache.get(k)) for k in cache.cached_keys())


def test_an_entry_larger_than_the_whole_cache_is_not_cached() -> None:
    cache = LocalCache(max_entries=10, max_bytes=1_000)
    cache.put("small", entry("small"))
    cache.put("huge", entry("huge", size=5_000))
    assert cache.get("huge") is None
    assert cache.get("small") is not None


def test_replacing_an_entry_keeps_the_accounting_exact() -> None:
    cache = LocalCache(max_entries=10, max_bytes=10_000)
    cache.put("k", entry("k", size=100, seq=1))
    cache.put("k", entry("k", size=10, seq=2))
    assert len(cache) == 1
    assert cache.bytes == accounted("k", entry("k", size=10))
    assert entry_version(cache.get("k")) == Version(1, 2)


def test_the_accounted_size_covers_body_key_and_overhead() -> None:
    e = entry("key", size=10)
    assert accounted("key", e) == len(e) + len("key") + ENTRY_OVERHEAD
    assert entry_body(e) == b'{"key":"key","value":"xxxxxxxxxx","version":"1.1"}'
    assert e == b'50\r\nETag: "1.1"\r\n\r\n' + entry_body(e)
    assert (entry_version(e), entry_etag(e), is_tombstone(e)) == (Version(1, 1), '"1.1"', False)
    assert type(e) is bytes  # plain bytes: no garbage-collector header, never walked by it
    assert not gc.is_tracked(e)


def test_a_tombstone_is_its_etag_line_only() -> None:
    gone = make_entry("key", Record(Version(3, 9), True, b""))
    assert gone == b'ETag: "3.9"\r\n'
    assert (entry_version(gone), is_tombstone(gone), entry_body(gone)) == (Version(3, 9), True,
                                                                            b"")  # fmt: skip
    assert entry_version(make_entry("never", None)) == Version(0, 0)


def test_eviction_passes_over_pinned_entries_and_keeps_the_bounds() -> None:
    """Entries with live read leases stay (their holders serve them); when only they could
    make room, the new entry is not cached, and the count and byte bounds still hold."""
    pinned = {"a"}
    cache = LocalCache(max_entries=2, max_bytes=10**6, pinned=pinned.__contains__)
    for key in ("a", "b", "c"):
        cache.put(key, entry(key))
    assert cache.get("a") is not None
    assert cache.get("b") is None
    assert len(cache) == 2
    pinned.add("c")
    cache.put("d", entry("d"))
    assert cache.get("d") is None
    assert {k for k in ("a", "c") if cache.get(k)} == {"a", "c"}
    pinned.clear()
    cache.put("d", entry("d"))
    assert cache.get("d") is not None
    assert len(cache) == 2


def test_eviction_is_exactly_least_recently_used_across_generations() -> None:
    """Two dicts stand for one LRU order (localcache.py): whatever the mix of hits, writes
    and evictions, the key evicted is the one a reference LRU list would evict."""
    rng = random.Random(7)
    cache = LocalCache(max_entries=20, max_bytes=10**9)
    reference: list[str] = []  # least recent first
    held = {}  # key -> its entry, as put
    for step in range(5_000):
        key = f"k{rng.randrange(40)}"
        if rng.random() < 0.5:
            if cache.get(key) is not None:
                reference.remove(key)
                reference.append(key)
            else:
                assert key not in reference, step
        elif rng.random() < 0.1:
            cache.evict(key)
            if key in reference:
                reference.remove(key)
        else:
            held[key] = entry(key, seq=step + 1)
            cache.put(key, held[key])
            if key in reference:
                reference.remove(key)
            elif len(reference) == 20:
                reference.pop(0)
            reference.append(key)
        assert cache.cached_keys() == reference, step
        assert cache.bytes == sum(accounted(k, held[k]) for k in reference)


@pytest.mark.parametrize("value_bytes", [40, 100, 1000])
def test_the_accounted_bytes_are_the_memory_really_taken(value_bytes: int) -> None:
    """The byte limit bounds real memory: what tracemalloc sees a cache of 20k entries
    take (keys made as requests make them) is at most 10% above what the cache accounts,
    and not far below. (A dict's table grows in powers of two, so an entry's share of it
    moves between ~35 and ~70 bytes with the count: the overhead is set near the top.)"""
    value = b'"' + b"v" * (value_bytes - 2) + b'"'
    cache = LocalCache(max_entries=10**6, max_bytes=10**9)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i in range(20_000):
            key = f"user:{i:010d}:meta"
            cache.put(key, make_entry(key, Record(Version(7, 10**6 + i), False, value)))
        taken = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert 0.8 <= taken / cache.bytes <= 1.1, taken / cache.bytes
