"""A cache entry built from a stored record, with its answer encoded once.

Owns: ``make_entry`` — the JSON body of a 200 GET and the entry's own HTTP headers (ETag,
Content-Length), built when the entry is cached so that a hit only writes bytes
(http/wire.py adds the status line and the per-node headers).

Invariants:
- The body is exactly ``{"key": ..., "value": ..., "version": "..."}``; the head is the
  headers that depend on the entry alone, ending with the blank line.
- A tombstone (deleted, or never written) has no body: it answers 404.
- ``size`` counts the body, the head, the key and the fixed overhead, so that the cache's
  byte limit bounds real memory (localcache.py).
"""

from __future__ import annotations

import orjson

from cachegrid.localcache import ENTRY_OVERHEAD, Entry
from cachegrid.store.record import Record
from cachegrid.version import ZERO


def entry_head(etag: str, body_length: int) -> bytes:
    """An entry's own headers and the blank line that ends them; the body follows."""
    return b"ETag: %s\r\nContent-Length: %d\r\n\r\n" % (etag.encode(), body_length)


def make_entry(key: str, record: Record | None) -> Entry:
    """The cache entry for a stored record (None: never written)."""
    if record is None or record.tombstone:
        version = record.version if record else ZERO
        return Entry(version, True, b"", b"", len(key) + ENTRY_OVERHEAD)
    text = str(record.version)
    body = b"".join(
        (b'{"key":', orjson.dumps(key), b',"value":', record.value,
         b',"version":"', text.encode(), b'"}')
    )  # fmt: skip
    head = entry_head(f'"{text}"', len(body))
    size = len(body) + len(head) + len(key) + ENTRY_OVERHEAD
    return Entry(record.version, False, body, head, size)
