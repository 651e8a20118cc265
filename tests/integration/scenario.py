"""The scenario runner of the linearizability tests, and the evidence each scenario shows.

A scenario records a history of concurrent clients while a fault plays out, then reads
every key through every surviving node and checks the whole history. A green check says
little unless the fault really bit, so the runner also keeps what a scenario needs to
show that it did:

- ``Events``: the fault's steps, timestamped on the clients' clock. Every step must fall
  inside the workload, and the last one early enough that recovery ran under load too.
- ``Sampler``: the nodes' gauges (ring epoch, lease slack, replicas trusted...) polled
  while the workload runs, so a scenario can require a lease lapse, a replica in doubt,
  keys moving.
- ``Prober``: every key read through every node every 0.2 s with a short timeout, apart
  from the clients, so a key's unavailability is measured by the cluster's answers alone
  (when a node stops answering, every client may sit on it for its whole timeout).
- ``ScenarioResult.require``: each scenario states its evidence as checked conditions with
  the measured numbers; they form the last column of docs/linearizability.md's table.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import re
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field

import aiohttp

from tests.proof import connect
from tests.proof.checker import check
from tests.proof.history import OK, UNKNOWN, Op
from tests.proof.recorder import Recorder

# Gauges the sampler keeps (unlabelled, one value per node).
SAMPLED = ("cachegrid_ring_epoch", "cachegrid_lease_slack_seconds",
           "cachegrid_store_replicas_trusted", "cachegrid_store_replicas_up",
           "cachegrid_store_repair_copies", "cachegrid_applied_revision")  # fmt: skip

# Recovery must be seen under load: the fault's last step this long before the end.
TAIL = 2.0


@dataclass
class Events:
    """The steps of a fault, on the monotonic clock the recorder uses."""

    marks: list[tuple[float, str]] = field(default_factory=list)

    def mark(self, what: str) -> None:
        self.marks.append((time.monotonic(), what))

    def at(self, what: str) -> float:
        """When the (first) step called ``what`` happened."""
        return next(t for t, name in self.marks if name == what)


@dataclass(frozen=True)
class Sample:
    at: float
    url: str
    values: dict[str, float]


class Sampler:
    """Polls every node's /metrics for the SAMPLED gauges while the workload runs (a node
    that does not answer in time leaves no sample)."""

    def __init__(self, urls: list[str], every: float = 0.2) -> None:
        self.urls = urls
        self.every = every
        self.samples: list[Sample] = []

    async def run(self, stop: asyncio.Event) -> None:
        timeout = aiohttp.ClientTimeout(total=0.5)
        async with connect.session(timeout=timeout) as http:
            while not stop.is_set():
                await asyncio.gather(*(self._sample(http, url) for url in self.urls))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), self.every)

    async def _sample(self, http: aiohttp.ClientSession, url: str) -> None:
        try:
            async with http.get(f"{url}/metrics") as response:
                page = await response.text()
        except (aiohttp.ClientError, TimeoutError):
            return
        values = {}
        for line in page.splitlines():
            name, _, value = line.partition(" ")
            if name in SAMPLED:
                values[name] = float(value)
        self.samples.append(Sample(time.monotonic(), url, values))

    def series(self, name: str, url: str | None = None) -> list[tuple[float, float]]:
        """(time, value) of one gauge, of one node or of all."""
        return [(s.at, s.values[name]) for s in self.samples
                if name in s.values and url in (None, s.url)]  # fmt: skip


class Prober:
    """Reads each key through each node every ``every`` seconds (``timeout`` each), and
    keeps when each probe ended and whether the node answered it (200 or 404)."""

    def __init__(self, urls: list[str], keys: list[str], every: float = 0.2,
                 timeout: float = 0.5) -> None:  # fmt: skip
        self.urls, self.keys, self.every, self.timeout = urls, keys, every, timeout
        self.probes: list[tuple[float, str, str, bool]] = []  # (ended, url, key, answered)

    async def run(self, stop: asyncio.Event) -> None:
        timeout = aiohttp.ClientTimeout(total=self.timeout)
        async with connect.session(timeout=timeout) as http:
            while not stop.is_set():
                await asyncio.gather(*(self._probe(http, url, key)
                                       for url in self.urls for key in self.keys))  # fmt: skip
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), self.every)

    async def _probe(self, http: aiohttp.ClientSession, url: str, key: str) -> None:
        try:
            async with http.get(f"{url}/v1/kv/{key}") as response:
                answered = response.status in (200, 404)
        except (aiohttp.ClientError, TimeoutError):
            answered = False
        self.probes.append((time.monotonic(), url, key, answered))

    def key_gap(self, urls: list[str]) -> float:
        """The longest time one key went without an answer through any of ``urls``."""
        gaps = [0.0]
        for key in self.keys:
            gaps.append(longest_gap(t for t, url, k, ok in self.probes
                                    if k == key and ok and url in urls))  # fmt: skip
        return max(gaps)


@dataclass
class ScenarioResult:
    name: str
    history: list[Op]  # the workload's ops (not the final reads)
    window: tuple[float, float]  # when the workload started and ended
    events: Events
    sampler: Sampler
    prober: Prober
    violations: list[str]
    shared_batches: dict[str, int]  # calls with more than one key, by kind (batching.py)
    fills: int  # store reads made to fill caches (after single-flight), surviving nodes
    store_reads: int  # quorum reads (batched), surviving nodes
    lease_waits: dict[str, int]  # writes that waited for holders, by outcome (acked, expired)
    withdrawn: int  # grants a holder refused: a drop record or ring change came first
    evidence: list[str] = field(default_factory=list)

    @property
    def outcomes(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for op in self.history:
            counts[op.outcome] = counts.get(op.outcome, 0) + 1
        return counts

    @property
    def replica_hits(self) -> int:
        """Reads answered from a read-lease copy, checked with the rest."""
        return sum(op.cache == "replica" and op.outcome == OK for op in self.history)

    def replica_hits_during_fault(self, after: float = 2.0) -> int:
        """Replica hits invoked from the fault's first step to ``after`` s past its last."""
        steps = [t for t, _ in self.events.marks]
        return sum(op.cache == "replica" and op.outcome == OK
                   and min(steps) <= op.invoked <= max(steps) + after
                   for op in self.history)  # fmt: skip

    @property
    def definite(self) -> int:
        return sum(op.outcome != UNKNOWN for op in self.history)

    @property
    def availability(self) -> float:
        """Share of ops with a definite answer."""
        return self.definite / max(len(self.history), 1)

    @property
    def longest_gap(self) -> float:
        """Longest time with no successful op at all, in seconds."""
        return longest_gap(op.completed for op in self.history if op.outcome == OK)

    def key_gap(self, urls: list[str]) -> float:
        """The longest time one key went unanswered by all of ``urls`` (the prober's reads):
        how long the keys of a lost owner waited before another node served them."""
        return self.prober.key_gap(urls)

    def ops(self, *, url: str | None = None, outcome: str | None = None,
            after: float = 0.0, before: float = float("inf")) -> list[Op]:  # fmt: skip
        """The ops sent to ``url`` with ``outcome``, invoked after ``after`` and completed
        before ``before``."""
        return [op for op in self.history if url in (None, op.url)
                and outcome in (None, op.outcome)
                and op.invoked >= after and op.completed <= before]  # fmt: skip

    def require(self, holds: bool, evidence: str) -> None:
        """One piece of evidence the scenario shows, with its measured numbers."""
        assert holds, f"{self.name}: not shown: {evidence}"
        self.evidence.append(evidence)

    def require_load(self, *, availability: float, longest_gap: float,
                     definite: int = 3000) -> None:  # fmt: skip
        """The fault played out while the workload ran, the workload was substantial, and
        the cluster stayed as available as the design promises for this fault."""
        start, end = self.window
        steps = [t for t, _ in self.events.marks]
        self.require(
            bool(steps) and min(steps) >= start and max(steps) <= end - TAIL,
            f"{len(steps)} fault steps within load ({min(steps) - start:.1f} to "
            f"{max(steps) - start:.1f} s of {end - start:.1f} s)",
        )
        self.require(self.definite >= definite, f"{self.definite} definite ops")
        self.require(self.availability >= availability,
                     f"availability {self.availability:.1%} ≥ {availability:.0%}")  # fmt: skip
        self.require(self.longest_gap <= longest_gap,
                     f"longest gap {self.longest_gap:.2f} s ≤ {longest_gap} s")  # fmt: skip

    def row(self) -> str:
        outcomes = self.outcomes
        cells = [self.name, len(self.history), outcomes.get("ok", 0),
                 outcomes.get("failed", 0), outcomes.get("unknown", 0),
                 f"{self.availability:.1%}", len(self.violations), f"{self.longest_gap:.2f} s",
                 self.replica_hits,
                 ", ".join(f"{c} {n}" for c, n in sorted(self.shared_batches.items())),
                 self.fills, self.store_reads, "; ".join(self.evidence)]  # fmt: skip
        return "| " + " | ".join(str(cell) for cell in cells) + " |"


def longest_gap(times: Iterable[float]) -> float:
    ordered = sorted(times)
    return max((b - a for a, b in itertools.pairwise(ordered)), default=0.0)


async def run_scenario(
    name: str,
    urls: list[str],
    fault: Callable[[Events], Awaitable[None]],
    *,
    duration: float = 8.0,
    final_urls: list[str] | None = None,
    seed: int = 0,
    keys: list[str] | None = None,
    readers: int = 12,
) -> ScenarioResult:
    """Record a history while ``fault`` runs (starting 1 s in), then read every key
    through every surviving node, and check it all. Six keys unless ``keys`` says, and two
    read-mostly keys that ``readers`` read through every node (read leases copy them)."""
    keys = keys or [f"lin-{i}" for i in range(6)]
    read_keys = [f"{keys[0]}-r{i}" for i in range(3)]
    recorder = Recorder(urls, keys, seed=seed, read_keys=read_keys, readers=readers)
    sampler, prober, stop_sampling = Sampler(urls), Prober(urls, keys[:8]), asyncio.Event()
    sampling = asyncio.gather(sampler.run(stop_sampling), prober.run(stop_sampling))
    start = time.monotonic()
    workload = asyncio.create_task(recorder.run(duration))
    await asyncio.sleep(1.0)
    events = Events()
    await fault(events)
    await workload
    end = time.monotonic()
    stop_sampling.set()
    await sampling
    final = Recorder(final_urls or urls, keys + read_keys, seed=seed)
    final._ids = 10**7  # distinct op ids
    unanswered = await final.read_all(deadline=time.monotonic() + 30)
    history = recorder.history + final.history
    violations = [v.explain() for v in check(history).violations]
    violations += [f"a 500 (a bug): {op.describe()}" for op in history if "HTTP 500" in op.note]
    violations += [f"{key} never readable through {url} after healing" for key, url in unanswered]
    survivors = final_urls or urls
    return ScenarioResult(
        name, recorder.history, (start, end), events, sampler, prober, violations,
        await shared_batches(survivors), await metric_sum(survivors, "cachegrid_fills_total"),
        await metric_sum(survivors, 'cachegrid_store_quorum_seconds_count{op="read"}'),
        {outcome: await metric_sum(
            survivors, f'cachegrid_invalidation_wait_seconds_count{{outcome="{outcome}"}}')
         for outcome in ("acked", "expired")},
        await metric_sum(survivors,
                         'cachegrid_read_lease_install_refused_total{reason="withdrawn"}'),
    )  # fmt: skip


async def metric_sum(urls: list[str], series: str) -> int:
    """The sum over these nodes of one series (a name, with its labels if it has any)."""
    total = 0.0
    async with connect.session() as http:
        for url in urls:
            async with http.get(f"{url}/metrics") as response:
                page = await response.text()
            total += sum(float(line.split()[-1]) for line in page.splitlines()
                         if line.startswith(f"{series} "))  # fmt: skip
    return int(total)


async def shared_batches(urls: list[str]) -> dict[str, int]:
    """How many batched calls of these nodes carried more than one key, by kind (store_read,
    store_write, forward_get), from their metrics: the checked history exercised a kind of
    batching only if its count is above 0."""
    totals: dict[str, int] = {}
    async with connect.session() as http:
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
