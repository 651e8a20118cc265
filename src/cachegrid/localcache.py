"""The owner's in-memory cache: versioned entries, bounded in count and in bytes.

Owns: the entries of the keys this node serves, LRU eviction, and byte accounting.

Invariants:
- At most ``max_entries`` entries and ``max_bytes`` accounted bytes at any time; an entry
  larger than ``max_bytes`` on its own is not cached at all.
- An entry is immutable, and carries the exact body and headers a hit returns, encoded
  once at insertion, so a hit only joins them to the node's per-second prefix.
- Eviction passes over pinned entries (``pinned``: keys with live read leases, whose
  holders serve them): they stay until written, flushed or unpinned. When only pinned
  entries could make room, the new entry is not cached (the bounds still hold).
- Synchronous and not thread-safe: the node calls it from its event loop only, and decides
  *what* may be cached (see node.py); this module only keeps it. No I/O.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import cachetools

from cachegrid.version import Version

# Per-entry memory beyond the body and the key's characters: the Entry, its Version and
# ETag, the key object, and cachetools' bookkeeping (its dicts and LRU order). Measured by
# bench/memory.py (1M small entries: 618 bytes each in memory); keeps the byte limit honest.
ENTRY_OVERHEAD = 456


@dataclass(frozen=True, slots=True)
class Entry:
    version: Version
    tombstone: bool
    body: bytes  # the JSON document a GET answers; empty for a tombstone
    head: bytes  # the entry's own HTTP headers, pre-encoded (http/wire.py); b"" if tombstone
    size: int  # accounted bytes: body, head, key and ENTRY_OVERHEAD

    @property
    def etag(self) -> str:
        """'"<version>"', derived (not stored: it would cost every entry a string)."""
        return f'"{self.version}"'


def _size(entry: Entry) -> int:
    return entry.size


# Pinned entries passed over in one insertion at most, before the new entry gives up.
MAX_PINNED_SKIPS = 8


def _never(key: str) -> bool:
    return False


class LocalCache:
    def __init__(self, max_entries: int, max_bytes: int,
                 pinned: Callable[[str], bool] = _never) -> None:  # fmt: skip
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.pinned = pinned
        self.evictions = 0
        self._lru: cachetools.LRUCache[str, Entry] = cachetools.LRUCache(
            maxsize=max_bytes, getsizeof=_size
        )

    def __repr__(self) -> str:
        return f"<LocalCache entries={len(self)} bytes={self.bytes}/{self.max_bytes}>"

    def __len__(self) -> int:
        return len(self._lru)

    @property
    def bytes(self) -> int:
        return int(self._lru.currsize)

    def get(self, key: str) -> Entry | None:
        return self._lru.get(key)

    def put(self, key: str, entry: Entry) -> None:
        self._lru.pop(key, None)
        if entry.size > self.max_bytes:
            return  # too large to cache: reads of it go to the store
        kept: list[tuple[str, Entry]] = []  # pinned entries taken out, put back after
        try:
            while self._full_for(entry, kept):
                if not self._lru or len(kept) >= MAX_PINNED_SKIPS:
                    return  # only pinned entries could make room: do not cache this one
                oldest, evicted = self._lru.popitem()
                if self.pinned(oldest):
                    kept.append((oldest, evicted))
                else:
                    self.evictions += 1
            self._lru[key] = entry
        finally:
            for pinned_key, pinned_entry in kept:  # oldest first: their order is kept
                self._lru[pinned_key] = pinned_entry

    def _full_for(self, entry: Entry, kept: list[tuple[str, Entry]]) -> bool:
        """No room for ``entry`` yet, counting the pinned entries taken out to be put back."""
        entries = len(self._lru) + len(kept)
        size = self.bytes + sum(e.size for _, e in kept) + entry.size
        return entries >= self.max_entries or size > self.max_bytes

    def evict(self, key: str) -> None:
        self._lru.pop(key, None)

    def cached_keys(self) -> list[str]:
        """A copy of the cached keys (safe to evict while iterating over it)."""
        return list(self._lru.keys())

    def clear(self) -> None:
        self._lru.clear()
