"""A cache entry built from a stored record, with its answer encoded once.

Owns: ``make_entry`` — the entry's own HTTP headers (Content-Length's value, ETag) and the
JSON body of a 200 GET, as one bytes object built when the entry is cached, so that a hit
only writes bytes (http/wire.py's prefix adds the status line, the per-node headers and the
name of Content-Length).

Invariants:
- The body is exactly ``{"key": ..., "value": ..., "version": "..."}``, after the headers
  that depend on the entry alone and the blank line that ends them.
- A tombstone (deleted, or never written) has no body: it answers 404; its entry is only
  its ETag line (localcache.py's ``Entry`` reads both forms back).
"""

from __future__ import annotations

import orjson

from cachegrid.localcache import Entry
from cachegrid.store.record import Record
from cachegrid.version import ZERO


def make_entry(key: str, record: Record | None) -> Entry:
    """The cache entry for a stored record (None: never written)."""
    if record is None or record.tombstone:
        version = record.version if record else ZERO
        return Entry(b'ETag: "%s"\r\n' % str(version).encode())
    text = str(record.version).encode()
    body = b"".join(
        (b'{"key":', orjson.dumps(key), b',"value":', record.value,
         b',"version":"', text, b'"}')
    )  # fmt: skip
    return Entry(b'%d\r\nETag: "%s"\r\n\r\n%s' % (len(body), text, body))
