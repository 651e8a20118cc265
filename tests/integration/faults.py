"""Fault injection and the scenario runner of the linearizability tests."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import aiohttp

from cachegrid.proof.checker import check
from cachegrid.proof.history import OK, UNKNOWN
from cachegrid.proof.recorder import Recorder


class TcpProxy:
    """A TCP relay on loopback that can black-hole traffic: a network partition between one
    node and etcd, while that node still reaches everything else."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.cut = False
        self._server: asyncio.Server | None = None
        self._pipes: set[asyncio.Task[None]] = set()

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        return int(self._server.sockets[0].getsockname()[1])

    def partition(self) -> None:
        """From now on, bytes in either direction are dropped and new connections hang."""
        self.cut = True

    def heal(self) -> None:
        """Drop the black-holed connections (clients reconnect) and relay again."""
        self.cut = False
        for pipe in list(self._pipes):
            pipe.cancel()

    async def close(self) -> None:
        self.heal()
        if self._server is not None:
            self._server.close()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._pipes.add(task)
        upstream_writer: asyncio.StreamWriter | None = None
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(*self.target)
            await asyncio.gather(self._pump(reader, upstream_writer),
                                 self._pump(upstream_reader, writer))  # fmt: skip
        except (OSError, asyncio.CancelledError):
            pass
        finally:
            self._pipes.discard(task)
            writer.close()
            # Cancelled before the pumps started, they never closed it.
            if upstream_writer is not None:
                upstream_writer.close()

    async def _pump(self, source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        try:
            while data := await source.read(65536):
                if self.cut:
                    continue  # black hole: the peer sees silence, not a reset
                sink.write(data)
                await sink.drain()
        finally:
            with contextlib.suppress(Exception):
                sink.close()


class Relays:
    """The TcpProxy relays a cluster is started through (``start_cluster(via=...)``).

    ``route`` is called from the thread that starts the cluster; the relays run on the
    test's event loop, where ``loop`` is.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, wanted: Callable[[int, str], bool]):
        self.loop = loop
        self.wanted = wanted  # (node index, service) -> whether to relay that connection
        self.by: dict[tuple[int, str], TcpProxy] = {}

    def route(self, node: int, service: str, endpoint: str) -> str:
        if not self.wanted(node, service):
            return endpoint
        host, _, port = endpoint.rpartition(":")
        proxy = TcpProxy(host, int(port))
        listening = asyncio.run_coroutine_threadsafe(proxy.start(), self.loop).result(10)
        self.by[(node, service)] = proxy
        return f"127.0.0.1:{listening}"

    async def close(self) -> None:
        for proxy in self.by.values():
            await proxy.close()


@dataclass
class ScenarioResult:
    name: str
    ops: int
    outcomes: dict[str, int]
    availability: float  # share of ops with a definite answer
    longest_gap: float  # longest time with no successful op, in seconds
    violations: list[str]
    shared_batches: dict[str, int]  # calls with more than one key, by kind (batching.py)
    fills: int = 0  # store reads made to fill caches (after single-flight), surviving nodes

    def row(self) -> str:
        ok = self.outcomes.get("ok", 0)
        failed = self.outcomes.get("failed", 0)
        unknown = self.outcomes.get("unknown", 0)
        cells = [self.name, self.ops, ok, failed, unknown, f"{self.availability:.1%}",
                 len(self.violations), f"{self.longest_gap:.2f} s",
                 ", ".join(f"{c} {n}" for c, n in sorted(self.shared_batches.items())),
                 self.fills]  # fmt: skip
        return "| " + " | ".join(str(cell) for cell in cells) + " |"


async def run_scenario(
    name: str,
    urls: list[str],
    fault: Callable[[], Awaitable[None]],
    *,
    duration: float = 8.0,
    final_urls: list[str] | None = None,
    seed: int = 0,
    keys: list[str] | None = None,
) -> ScenarioResult:
    """Record a history while ``fault`` runs (starting 1 s in), then read every key
    through every surviving node, and check it all. Six keys unless ``keys`` says."""
    keys = keys or [f"lin-{i}" for i in range(6)]
    recorder = Recorder(urls, keys, seed=seed)
    workload = asyncio.create_task(recorder.run(duration))
    await asyncio.sleep(1.0)
    await fault()
    await workload
    final = Recorder(final_urls or urls, keys, seed=seed)
    final._ids = 10**7  # distinct op ids
    unanswered = await final.read_all(deadline=time.monotonic() + 30)
    history = recorder.history + final.history
    report = check(history)
    definite = [op for op in recorder.history if op.outcome != UNKNOWN]
    successes = sorted(op.completed for op in recorder.history if op.outcome == OK)
    gaps = [b - a for a, b in itertools.pairwise(successes)]
    outcomes: dict[str, int] = {}
    for op in recorder.history:
        outcomes[op.outcome] = outcomes.get(op.outcome, 0) + 1
    violations = [v.explain() for v in report.violations]
    violations += [f"a 500 (a bug): {op.describe()}" for op in history if "HTTP 500" in op.note]
    violations += [f"{key} never readable through {url} after healing" for key, url in unanswered]
    return ScenarioResult(
        name, len(recorder.history), outcomes,
        len(definite) / max(len(recorder.history), 1), max(gaps, default=0.0), violations,
        await shared_batches(final_urls or urls), await metric_sum(final_urls or urls,
                                                                    "cachegrid_fills_total"),
    )  # fmt: skip


async def metric_sum(urls: list[str], name: str) -> int:
    """The sum over these nodes of an unlabelled counter from their metrics."""
    total = 0.0
    async with aiohttp.ClientSession() as http:
        for url in urls:
            async with http.get(f"{url}/metrics") as response:
                page = await response.text()
            total += sum(float(line.split()[-1]) for line in page.splitlines()
                         if line.startswith(f"{name} "))  # fmt: skip
    return int(total)


async def shared_batches(urls: list[str]) -> dict[str, int]:
    """How many batched calls of these nodes carried more than one key, by kind (store_read,
    store_write, forward_get), from their metrics: the checked history exercised a kind of
    batching only if its count is above 0."""
    totals: dict[str, int] = {}
    async with aiohttp.ClientSession() as http:
        for url in urls:
            async with http.get(f"{url}/metrics") as response:
                page = await response.text()
            for line in page.splitlines():
                kind = re.search(r'call="(\w+)"', line)
                if kind is None or not line.startswith("cachegrid_batch_keys"):
                    continue
                count = int(float(line.split()[-1]))
                if line.startswith("cachegrid_batch_keys_count"):
                    totals[kind[1]] = totals.get(kind[1], 0) + count
                elif line.startswith("cachegrid_batch_keys_bucket") and 'le="1.0"' in line:
                    totals[kind[1]] = totals.get(kind[1], 0) - count
    return totals
