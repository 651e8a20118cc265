"""The local cache keeps its bounds in entries and bytes, and evicts least recently used."""

from cachegrid.localcache import ENTRY_OVERHEAD, LocalCache
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
    assert cache.bytes == sum(cache.get(k).size for k in cache.cached_keys())


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
    assert cache.bytes == entry("k", size=10).size
    assert cache.get("k").version == Version(1, 2)


def test_the_accounted_size_covers_body_key_and_overhead() -> None:
    e = entry("key", size=10)
    assert e.size == len(e.body) + len(e.head) + len("key") + ENTRY_OVERHEAD
    assert e.body == b'{"key":"key","value":"xxxxxxxxxx","version":"1.1"}'


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
