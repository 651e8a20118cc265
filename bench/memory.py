"""Bytes per cached entry, measured, against the bytes the cache accounts for.

Fills a LocalCache with 1M small entries (a 20-byte key, a ~40-byte JSON value), measures
the memory it really takes (tracemalloc), then keeps inserting past a byte limit to show
the limit holds.

    .venv/bin/python bench/memory.py [--entries 1000000]
"""

from __future__ import annotations

import argparse
import tracemalloc

from cachegrid.localcache import LocalCache
from cachegrid.serving.entry import make_entry
from cachegrid.store import Record
from cachegrid.version import Version


def main(entries: int) -> None:
    value = b'{"owner":"team-a","tier":3,"active":true}'
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    cache = LocalCache(max_entries=entries, max_bytes=1 << 40)
    for i in range(entries):
        key = f"user:{i:010d}:meta"
        cache.put(key, make_entry(key, Record(Version(7, i), False, value)))
    used = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    print(f"{entries:,} entries: {used / entries:.0f} bytes each in memory, "
          f"{cache.bytes / entries:.0f} accounted (ratio {used / cache.bytes:.2f})")  # fmt: skip

    limit = 64 << 20
    bounded = LocalCache(max_entries=10**9, max_bytes=limit)
    peak = 0
    for i in range(entries):
        key = f"user:{i:010d}:meta"
        bounded.put(key, make_entry(key, Record(Version(7, i), False, value)))
        peak = max(peak, bounded.bytes)
    print(f"byte limit {limit >> 20} MiB: peak accounted {peak / (1 << 20):.1f} MiB, "
          f"{len(bounded):,} entries kept, {bounded.evictions:,} evicted")  # fmt: skip


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=1_000_000)
    main(parser.parse_args().entries)
