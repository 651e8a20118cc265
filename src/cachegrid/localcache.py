"""The owner's in-memory cache: versioned entries, bounded in count and in bytes.

Owns: the entries of the keys this node serves, LRU eviction, and byte accounting; and
``Entry``, the form a cached answer takes in memory.

Invariants:
- At most ``max_entries`` entries and ``max_bytes`` accounted bytes at any time; an entry
  larger than ``max_bytes`` on its own is not cached at all.
- An entry is immutable, and *is* the bytes a hit writes after the node's per-second prefix
  (status line, Date, per-node headers): its own headers, the blank line and the body,
  encoded once at insertion. Everything else about it (version, tombstone, body) is read
  back from those bytes, so an entry costs one bytes object and one slot of one ordered
  dict (bench/memory.py measures it; ``ENTRY_OVERHEAD`` keeps the byte limit honest).
- Eviction passes over pinned entries (``pinned``: keys with live read leases, whose
  holders serve them): they stay until written, flushed or unpinned. When only pinned
  entries could make room, the new entry is not cached (the bounds still hold).
- Synchronous and not thread-safe: the node calls it from its event loop only, and decides
  *what* may be cached (see node.py); this module only keeps it. No I/O.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NewType

from cachegrid.version import Version

# Per-entry memory beyond the entry's bytes and the key's characters: the two objects'
# headers and the entry's dict slot (and its place in the LRU order). Measured by
# bench/memory.py (100k small entries: resident memory / accounted bytes 0.96-1.0);
# keeps the byte limit honest.
ENTRY_OVERHEAD = 154

_ETAG = b'ETag: "'
_END_OF_HEAD = b"\r\n\r\n"


# An entry is a plain bytes object, not an instance of a class of its own: instances of a
# Python-defined class are tracked by the garbage collector (16 bytes more each, and every
# full collection walks them all); bytes are not. Its form:
# ``N\r\nETag: "<version>"\r\n\r\n<body>``, where N is the body's length (the hit prefix of
# http/wire.py ends with ``Content-Length: ``, so an entry starts with the value); or for a
# tombstone (deleted, or never written: a 404) just ``ETag: "<version>"\r\n``.
Entry = NewType("Entry", bytes)


def is_tombstone(entry: Entry) -> bool:
    return entry.endswith(b"\r\n")  # a body is a JSON object: it ends with "}"


def entry_version(entry: Entry) -> Version:
    epoch, _, seq = _etag_value(entry).partition(b".")
    return Version(int(epoch), int(seq))


def entry_etag(entry: Entry) -> str:
    return f'"{_etag_value(entry).decode()}"'


def entry_body(entry: Entry) -> bytes:
    """The JSON document a GET answers (empty for a tombstone)."""
    if is_tombstone(entry):
        return b""
    return entry[entry.index(_END_OF_HEAD) + len(_END_OF_HEAD) :]


def _etag_value(entry: Entry) -> bytes:
    start = entry.index(_ETAG) + len(_ETAG)
    return entry[start : entry.index(b'"', start)]


def accounted(key: str, entry: Entry) -> int:
    """The bytes an entry is accounted for: its own, its key's, and the fixed overhead."""
    return len(entry) + len(key) + ENTRY_OVERHEAD


# Pinned entries passed over in one insertion at most, before the new entry gives up.
MAX_PINNED_SKIPS = 8


def _never(key: str) -> bool:
    return False


class LocalCache:
    """Exact LRU over two plain dicts, for memory: an OrderedDict costs ~50 bytes more per
    entry. ``_young`` holds the entries used (read or written) since the last rotation,
    least recent first (a hit moves its entry to the end); ``_old`` holds the rest, in the
    order ``_order`` recorded when it was young. Least recent overall is the first key of
    ``_order`` still in ``_old``; when ``_old`` runs out, young becomes old. A hit of an
    old entry moves it to young, so it leaves ``_old`` and the order stays exact."""

    def __init__(self, max_entries: int, max_bytes: int,
                 pinned: Callable[[str], bool] = _never) -> None:  # fmt: skip
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.pinned = pinned
        self.evictions = 0
        self.bytes = 0  # accounted bytes of the entries held
        # str keys: a dict of str keys only stores no hashes (16 bytes a slot, not 24).
        self._young: dict[str, Entry] = {}
        self._old: dict[str, Entry] = {}
        # _old's keys, least recent first; each slot is cleared once passed, so the keys
        # evicted meanwhile are not kept alive. (A plain dict's own order cannot serve:
        # taking its first key scans every hole that earlier removals left.)
        self._order: list[str | None] = []
        self._next = 0  # the first slot of _order not yet passed

    def __repr__(self) -> str:
        return f"<LocalCache entries={len(self)} bytes={self.bytes}/{self.max_bytes}>"

    def __len__(self) -> int:
        return len(self._young) + len(self._old)

    def get(self, key: str) -> Entry | None:
        young = self._young
        entry = young.pop(key, None)
        if entry is None:
            entry = self._old.pop(key, None)
            if entry is None:
                return None
        young[key] = entry  # now the most recently used
        return entry

    def put(self, key: str, entry: Entry) -> None:
        self.evict(key)
        size = accounted(key, entry)
        if size > self.max_bytes:
            return  # too large to cache: reads of it go to the store
        kept: list[tuple[str, Entry]] = []  # pinned entries taken out, put back after
        try:
            while self._full_for(size, kept):
                oldest = self._pop_oldest() if len(kept) < MAX_PINNED_SKIPS else None
                if oldest is None:
                    return  # only pinned entries could make room: do not cache this one
                if self.pinned(oldest[0]):
                    kept.append(oldest)
                else:
                    self.evictions += 1
            self._young[key] = entry
            self.bytes += size
        finally:
            for pinned_key, pinned_entry in kept:  # oldest first: their order is kept
                self._young[pinned_key] = pinned_entry
                self.bytes += accounted(pinned_key, pinned_entry)

    def _pop_oldest(self) -> tuple[str, Entry] | None:
        """Take out the least recently used entry (None if there is none)."""
        order, old = self._order, self._old
        while True:
            if self._next == len(order):  # every key of _old passed: young becomes old
                if not self._young:
                    return None
                old = self._old = self._young
                self._young = {}
                order = self._order = list(old)
                self._next = 0
            key, order[self._next] = order[self._next], None
            self._next += 1
            entry = old.pop(key, None) if key is not None else None  # None: left _old
            if key is not None and entry is not None:
                self.bytes -= accounted(key, entry)
                return key, entry

    def _full_for(self, size: int, kept: list[tuple[str, Entry]]) -> bool:
        """No room for ``size`` more bytes yet, counting the pinned entries taken out to be
        put back."""
        entries = len(self) + len(kept)
        held = self.bytes + sum(accounted(k, e) for k, e in kept) + size
        return entries >= self.max_entries or held > self.max_bytes

    def evict(self, key: str) -> None:
        entry = self._young.pop(key, None)
        if entry is None:
            entry = self._old.pop(key, None)
        if entry is not None:
            self.bytes -= accounted(key, entry)

    def cached_keys(self) -> list[str]:
        """A copy of the cached keys, least recently used first (safe to evict while
        iterating over it)."""
        return [*self._old, *self._young]

    def clear(self) -> None:
        self._young, self._old, self._order, self._next = {}, {}, [], 0
        self.bytes = 0
