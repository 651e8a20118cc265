"""Quorum store throughput and latency, as ratios to plain redis-py on the same machine.

Starts 3 replicas plus one baseline redis-server on loopback (AOF everysec), and 3 more
replicas with `appendfsync always`, then in one run measures, at concurrency 1 and 32:
quorum read, quorum write (everysec and always), and plain redis-py GET and SET against the
single baseline server. Prints a table; ratios first.

    .venv/bin/python bench/store_bench.py [--seconds 3] [--value-bytes 100]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import redis.asyncio as aioredis

from cachegrid.devcluster.servers import PortAllocator, RedisServer, start_all
from cachegrid.store import QuorumStore, Record, Replica
from cachegrid.version import Version

KEYS = 1000


async def measure(
    op: Callable[[int], Awaitable[object]], concurrency: int, seconds: float
) -> tuple[float, list[float]]:
    """Run ``op`` from ``concurrency`` loops for ``seconds``: (ops/s, latencies in s)."""
    latencies: list[float] = []
    stop_at = time.perf_counter() + seconds

    async def loop(worker: int) -> None:
        i = worker
        while time.perf_counter() < stop_at:
            started = time.perf_counter()
            await op(i % KEYS)
            latencies.append(time.perf_counter() - started)
            i += concurrency

    started = time.perf_counter()
    await asyncio.gather(*(loop(w) for w in range(concurrency)))
    return len(latencies) / (time.perf_counter() - started), latencies


def pct(latencies: list[float], q: float) -> float:
    return statistics.quantiles(latencies, n=1000)[int(q * 10) - 1] * 1000


async def main(seconds: float, value_bytes: int) -> None:
    ports = PortAllocator()
    with tempfile.TemporaryDirectory() as tmp:
        servers = [RedisServer(Path(tmp) / f"r{i}", ports.take()) for i in range(4)]
        servers += [RedisServer(Path(tmp) / f"a{i}", ports.take(), "always") for i in range(3)]
        start_all(list(servers))
        try:
            await run(servers, seconds, value_bytes)
        finally:
            for server in servers:
                server.stop()


async def run(servers: list[RedisServer], seconds: float, value_bytes: int) -> None:
    store = QuorumStore([Replica(s.endpoint, timeout=2) for s in servers[:3]], timeout=2)
    fsynced = QuorumStore([Replica(s.endpoint, timeout=2) for s in servers[4:]], timeout=2)
    plain = aioredis.Redis(host="127.0.0.1", port=servers[3].port, max_connections=64)
    value = b'"' + b"x" * (value_bytes - 2) + b'"'
    seq = iter(range(1, 1 << 60))
    for key in range(KEYS):  # preload so reads hit real records
        await store.write(f"k{key}", Record(Version(1, next(seq)), False, value))
        await plain.set(f"k{key}", value)

    scenarios: dict[str, Callable[[int], Awaitable[object]]] = {
        "quorum read": lambda k: store.read(f"k{k}"),
        "quorum write": lambda k: store.write(f"k{k}", Record(Version(1, next(seq)), False, value)),
        "write always": lambda k: fsynced.write(
            f"k{k}", Record(Version(1, next(seq)), False, value)
        ),
        "plain GET": lambda k: plain.get(f"k{k}"),
        "plain SET": lambda k: plain.set(f"k{k}", value),
    }
    results: dict[tuple[str, int], tuple[float, list[float]]] = {}
    for concurrency in (1, 32):
        for name, op in scenarios.items():
            results[name, concurrency] = await measure(op, concurrency, seconds)

    print(f"3 replicas + 1 baseline redis-server, {value_bytes}-byte values, {seconds}s each")
    print(f"{'scenario':<14}{'conc':>5}{'ratio':>9}{'ops/s':>10}{'p50 ms':>9}{'p99 ms':>9}")
    baseline = {
        "quorum read": "plain GET",
        "quorum write": "plain SET",
        "write always": "plain SET",
    }
    for (name, concurrency), (rate, latencies) in results.items():
        base = baseline.get(name)
        ratio = f"{rate / results[base, concurrency][0]:.2f}x" if base else "1.00x"
        print(
            f"{name:<14}{concurrency:>5}{ratio:>9}{rate:>10.0f}"
            f"{pct(latencies, 50):>9.3f}{pct(latencies, 99):>9.3f}"
        )
    print("ratio: quorum throughput / plain redis-py throughput at the same concurrency")
    for concurrency in (1, 32):
        always = results["write always", concurrency][0] / results["quorum write", concurrency][0]
        print(f"appendfsync always / everysec, quorum write, conc {concurrency}: {always:.2f}x")
    await store.close()
    await fsynced.close()
    await plain.aclose()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--value-bytes", type=int, default=100)
    args = parser.parse_args()
    asyncio.run(main(args.seconds, args.value_bytes))
