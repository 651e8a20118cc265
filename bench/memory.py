"""Bytes per cached entry, measured in real process memory, against the bytes the cache
accounts for (issue 13: at most 350 for a small entry; the byte limit must bound memory).

For each value size, a fresh process fills a LocalCache with 100k entries (a 20-byte key, a
JSON value), each key made as a request would make it, and measures the growth of its
resident memory (RSS, /proc/self/statm) and, apart, what tracemalloc sees; then one keeps
inserting past a byte limit to show the limit holds.

    .venv/bin/python bench/memory.py [--entries 100000]
"""

from __future__ import annotations

import argparse
import gc
import os
import subprocess
import sys
import tracemalloc

from cachegrid.localcache import LocalCache
from cachegrid.serving.entry import make_entry
from cachegrid.store import Record
from cachegrid.version import Version

VALUES = {
    "~40 B value": b'{"owner":"team-a","tier":3,"active":true}',
    "~100 B value": (b'{"owner":"team-a","tier":3,"active":true,"region":"eu-west-1",'
                     b'"tags":["alpha","beta"],"n":12345}'),
}  # fmt: skip
TARGET = 350  # bytes per small entry in real memory (issue 13)


def rss() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def fill(cache: LocalCache, entries: int, value: bytes) -> None:
    for i in range(entries):
        key = f"user:{i:010d}:meta"
        cache.put(key, make_entry(key, Record(Version(7, 10**6 + i), False, value)))


def per_entry(entries: int, value: bytes) -> tuple[float, float, float]:
    """Bytes per entry: RSS growth, tracemalloc growth, accounted."""
    gc.collect()
    before = rss()
    cache = LocalCache(max_entries=entries, max_bytes=1 << 40)
    fill(cache, entries, value)
    gc.collect()
    grown = rss() - before
    del cache
    gc.collect()
    tracemalloc.start()
    traced_before = tracemalloc.get_traced_memory()[0]
    cache = LocalCache(max_entries=entries, max_bytes=1 << 40)
    fill(cache, entries, value)
    traced = tracemalloc.get_traced_memory()[0] - traced_before
    tracemalloc.stop()
    return grown / entries, traced / entries, cache.bytes / entries


def measure(entries: int, name: str) -> None:
    value = VALUES[name]
    real, traced, accounted = per_entry(entries, value)
    verdict = "met" if real <= TARGET else "MISSED"
    print(f"{entries:,} entries, 20 B key, {name} ({len(value)} B): {real:.0f} bytes each "
              f"in RSS (<= {TARGET}: {verdict}), {traced:.0f} traced, {accounted:.0f} accounted "
              f"(RSS / accounted {real / accounted:.2f})")  # fmt: skip


def main(entries: int) -> None:
    for name in VALUES:  # each in a process of its own: RSS does not shrink on free
        subprocess.run([sys.executable, __file__, "--entries", str(entries), "--value", name],
                       check=True)  # fmt: skip
    limit = 64 << 20
    bounded = LocalCache(max_entries=10**9, max_bytes=limit)
    peak = 0
    for i in range(entries * 4):
        key = f"user:{i:010d}:meta"
        bounded.put(key, make_entry(key, Record(Version(7, i), False, VALUES["~100 B value"])))
        peak = max(peak, bounded.bytes)
    print(f"byte limit {limit >> 20} MiB: peak accounted {peak / (1 << 20):.1f} MiB, "
          f"{len(bounded):,} entries kept, {bounded.evictions:,} evicted")  # fmt: skip


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=100_000)
    parser.add_argument("--value", choices=list(VALUES), help="measure this one only")
    arguments = parser.parse_args()
    if arguments.value:
        measure(arguments.entries, arguments.value)
    else:
        main(arguments.entries)
