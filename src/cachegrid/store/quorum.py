"""A linearizable register per key, replicated over R independent Redis servers (ABD).

Owns: fan-out of every operation to the replicas, the majority rule, per-operation
deadlines, write-back on reads, read repair of stragglers, and the anti-entropy pass.
The background care of replicas (repair of those in doubt, catch-up of missed writes)
is upkeep.py's; this module tells it which writes each replica missed.

Invariants:
- A write is acknowledged only once a majority of replicas holds its version or a newer
  one. Any two majorities intersect, so every later read sees it.
- A read counts only answers of trusted replicas (trust.py): a replica that may have lost
  acknowledged data takes writes, but is no member of any read majority until repaired.
  With fewer than a majority trusted, reads fail (StoreUnavailable), never go back.
- A read returns the newest record among a majority, and only after a majority holds that
  record (write-back). So once a read has returned a version, no later read returns an
  older one, even if the write that produced it never completed.
- Every operation ends by its deadline whatever a minority of replicas does: it waits for
  the first majority only. Calls still running then finish in the background within
  their own per-call timeout, and are cancelled by ``close``.
- A failed write says whether it may have taken effect: ``StoreUnavailable`` only when no
  replica can have applied it, ``WriteIndeterminate`` otherwise.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from cachegrid.config import StoreConfig
from cachegrid.errors import (
    CachegridError,
    ReplicaError,
    StoreUnavailable,
    TooLarge,
    WriteIndeterminate,
)
from cachegrid.keys import DEFAULT_MAX_KEY_BYTES, check_key
from cachegrid.store.record import BatchRead, Record
from cachegrid.store.replica import Credentials, Replica, Reply
from cachegrid.store.trust import Trust
from cachegrid.store.upkeep import Upkeep, copy_newest
from cachegrid.store.writeback import Answer, Plan, decodable, plan_write_back, version_of
from cachegrid.version import ZERO, Version

T = TypeVar("T")


@dataclass
class RepairReport:
    keys_checked: int = 0
    copies_written: int = 0
    unreachable: list[str] = field(default_factory=list)


class QuorumStore:
    """The quorum register over ``replicas``. Safe for concurrent use from one event loop."""

    def __init__(
        self,
        replicas: Sequence[Replica],
        *,
        timeout: float,
        max_value_bytes: int = 1 << 20,
        max_key_bytes: int = DEFAULT_MAX_KEY_BYTES,
        clock: Callable[[], float] = time.monotonic,
        upkeep_interval: float = 0.25,
    ) -> None:
        if not replicas:
            raise ValueError("a store needs at least one replica")
        self.replicas = list(replicas)
        self.majority = len(self.replicas) // 2 + 1
        self.timeout = timeout
        self.max_value_bytes = max_value_bytes
        self.max_key_bytes = max_key_bytes
        self._clock = clock
        # Every replica call in flight, ours to cancel on close; a call removes itself.
        self._in_flight: set[asyncio.Task[Any]] = set()
        # Started by ``start`` or the first operation. Until a round of it has found a
        # majority trusted (a fresh or restarted cluster is reconciled first), a read that
        # finds too few trusted replicas waits for that, up to its timeout, and tries again.
        self.upkeep = Upkeep(self.replicas, self.majority, interval=upkeep_interval)

    def __repr__(self) -> str:
        up = sum(replica.is_up() for replica in self.replicas)
        trusted = sum(replica.trust is Trust.TRUSTED for replica in self.replicas)
        return (
            f"<QuorumStore replicas={len(self.replicas)} up={up} trusted={trusted} "
            f"majority={self.majority} in_flight={len(self._in_flight)}>"
        )

    async def start(self, wait: float = 10.0) -> None:
        """Judge every replica and repair what needs it, waiting at most ``wait`` seconds for a
        majority to be trusted (the first operation starts this too, without waiting)."""
        self.upkeep.start()
        await self.upkeep.first_round(wait)

    async def read(self, key: str) -> Record | None:
        """The latest record of ``key`` (None if never written). StoreUnavailable on failure."""
        result = await self.read_many([key])
        if key in result.errors:
            raise result.errors[key]
        return result.records[key]

    async def read_many(self, keys: Iterable[str]) -> BatchRead:
        """Read each key with one round per replica, then write back where a majority lags."""
        result = BatchRead()
        valid_keys = [key for key in dict.fromkeys(keys) if self._key_ok(key, result)]
        if not valid_keys:
            return result
        self.upkeep.start()
        await self._read_round(valid_keys, result)
        if result.errors and not self.upkeep.judged:
            # First use, without ``start``: the replicas are being judged right now.
            await self.upkeep.first_round(self.timeout)
            await self._read_round([key for key in valid_keys if key in result.errors], result)
        return result

    async def _read_round(self, keys: list[str], result: BatchRead) -> None:
        deadline = self._clock() + self.timeout
        answers, stragglers = await self._read_majority(keys, deadline)
        plan = plan_write_back(keys, answers, self.majority)
        for task, replica in stragglers.items():
            task.add_done_callback(self._repair_straggler(replica, keys, plan.latest))
        await self._write_back(plan, deadline)
        for key in keys:
            self._settle(key, plan, result)

    async def write(self, key: str, record: Record) -> Version:
        """Store ``record`` on a majority; the newest version a majority member then holds.

        That is ``record.version`` unless a replica already held a newer version.
        """
        (outcome,) = await self.write_many([(key, record)])
        if isinstance(outcome, CachegridError):
            raise outcome
        return outcome

    async def write_many(
        self, items: Sequence[tuple[str, Record]]
    ) -> list[Version | CachegridError]:
        """``write`` for each (key, record), with one round per replica: per item, the
        version ``write`` would return or the error it would raise."""
        outcomes: list[Version | CachegridError] = []
        valid: list[tuple[str, Record]] = []
        for key, record in items:
            problem = self._write_problem(key, record)
            outcomes.append(problem or ZERO)
            if problem is None:
                valid.append((key, record))
        if valid:
            results = iter(await self._write_majority(valid))
            outcomes = [o if isinstance(o, CachegridError) else next(results) for o in outcomes]
        return outcomes

    def _write_problem(self, key: str, record: Record) -> CachegridError | None:
        """Why ``record`` may not be written at all (checked before any replica sees it).
        A version out of range is a bug of the caller: ValueError, for the whole call."""
        record.version.check()
        try:
            check_key(key, self.max_key_bytes)
        except CachegridError as error:
            return error
        if len(record.value) > self.max_value_bytes:
            return TooLarge(
                f"value is {len(record.value)} bytes, the limit is {self.max_value_bytes}"
            )
        return None

    async def _write_majority(
        self, items: list[tuple[str, Record]]
    ) -> list[Version | CachegridError]:
        self.upkeep.start()
        deadline = self._clock() + self.timeout
        targets = self._targets()
        keys = [key for key, _ in items]
        for replica in self.replicas:
            if replica not in targets:
                self.upkeep.note_missed(replica, keys)
        tasks = {self._spawn(replica.write(items)): replica for replica in targets}
        for task, replica in tasks.items():
            task.add_done_callback(self._note_if_missed(replica, keys))
        acks: list[list[Version]] = []  # per replica that answered: a version per item
        failures: list[ReplicaError] = []

        def on_done(task: asyncio.Task[list[Version]]) -> None:
            error = task.exception()
            if error is None:
                acks.append(task.result())
            elif isinstance(error, ReplicaError):
                failures.append(error)
            else:
                raise error

        await self._until(tasks, deadline, on_done, lambda: len(acks) >= self.majority)
        if len(acks) >= self.majority:
            return [max(versions) for versions in zip(*acks, strict=True)]
        # Replicas left out by _targets were never sent the write: they do not count here.
        unanswered = len(tasks) - len(acks) - len(failures)
        error = self._write_failure(len(acks), failures, unanswered)
        return [error] * len(items)

    async def repair(self, batch: int = 256) -> RepairReport:
        """Anti-entropy: copy the newest record of every key to every replica that lags.

        Scans the whole keyspace of every reachable replica, so a key that only a minority
        holds (a write that was never acknowledged) is spread too, as a later read would.
        """
        report = RepairReport()
        for replica in self.replicas:
            cursor = 0
            while True:
                try:
                    cursor, keys = await replica.scan(cursor, batch)
                except ReplicaError:
                    report.unreachable.append(replica.addr)
                    break
                if keys:
                    await self._repair_keys(keys, report)
                if cursor == 0:
                    break
        return report

    def health(self) -> list[dict[str, object]]:
        now = self._clock()
        return [
            {
                "addr": r.addr,
                **r.health.snapshot(now),
                "trust": r.trust.value,
                "missed_writes": len(self.upkeep.backlogs[r]),
                "repair": self.upkeep.progress[r].snapshot(),
            }
            for r in self.replicas
        ]

    async def close(self) -> None:
        await self.upkeep.stop()
        for task in list(self._in_flight):
            task.cancel()
        await asyncio.gather(*self._in_flight, return_exceptions=True)
        await asyncio.gather(*(replica.close() for replica in self.replicas))

    # -- reads ------------------------------------------------------------------------

    def _key_ok(self, key: str, result: BatchRead) -> bool:
        try:
            check_key(key, self.max_key_bytes)
        except CachegridError as error:
            result.errors[key] = error
            return False
        return True

    async def _read_majority(
        self, keys: list[str], deadline: float
    ) -> tuple[dict[Replica, Answer], dict[asyncio.Task[Reply], Replica]]:
        """Trusted answers until each key has a majority of decodable replies, and the
        stragglers (replicas that did not give a trusted answer in time)."""
        tasks = {self._spawn(replica.read_reply(keys)): replica for replica in self._targets()}
        answers: dict[Replica, Answer] = {}
        useless = 0  # replies that failed or may not count: once too many, stop waiting

        def enough() -> bool:
            if len(tasks) - useless < self.majority:
                return True  # hopeless: a majority of trusted answers can no longer come
            return len(answers) >= self.majority and all(
                decodable(answers, i) >= self.majority for i in range(len(keys))
            )

        def on_done(task: asyncio.Task[Reply]) -> None:
            nonlocal useless
            if _succeeded(task) and task.result().trusted:
                answers[tasks[task]] = task.result().records
            else:
                useless += 1

        await self._until(tasks, deadline, on_done, enough)
        # Includes a task that finished after we stopped waiting: its answer is late too.
        stragglers = {task: replica for task, replica in tasks.items() if replica not in answers}
        return answers, stragglers

    async def _write_back(self, plan: Plan[Replica], deadline: float) -> None:
        """ABD phase two: bring lagging members of the read majority up to the latest."""
        if not plan.behind:
            return
        tasks = {self._spawn(replica.write(items)): items for replica, items in plan.behind.items()}

        def on_done(task: asyncio.Task[list[Version]]) -> None:
            if _succeeded(task):
                for key, _record in tasks[task]:
                    plan.holders[key] += 1

        await self._until(tasks, deadline, on_done, lambda: False)

    def _settle(self, key: str, plan: Plan[Replica], result: BatchRead) -> None:
        """Return a key's latest record only if a majority now holds it."""
        holders = plan.holders.get(key, 0)
        if holders >= self.majority:
            result.records[key] = plan.latest[key]
            result.errors.pop(key, None)
        else:
            result.errors[key] = self._short_of_majority(holders)

    def _repair_straggler(
        self, replica: Replica, keys: list[str], latest: dict[str, Record | None]
    ) -> Callable[[asyncio.Task[Reply]], None]:
        """Read repair: when a late answer shows stale copies, update them in the background."""

        def on_done(task: asyncio.Task[Reply]) -> None:
            if not _succeeded(task):
                return
            stale = [
                (key, record)
                for key, reply in zip(keys, task.result().records, strict=True)
                if (record := latest.get(key)) is not None and version_of(reply) < record.version
            ]
            if stale:
                self._spawn(replica.write(stale))

        return on_done

    # -- writes -----------------------------------------------------------------------

    def _note_if_missed(
        self, replica: Replica, keys: list[str]
    ) -> Callable[[asyncio.Task[list[Version]]], None]:
        """Tell upkeep when a write failed on ``replica``, however late: it lags there."""

        def on_done(task: asyncio.Task[list[Version]]) -> None:
            if task.cancelled() or task.exception() is not None:
                self.upkeep.note_missed(replica, keys)

        return on_done

    def _write_failure(
        self, acks: int, failures: list[ReplicaError], unanswered: int
    ) -> CachegridError:
        reasons = "; ".join(failure.message for failure in failures) or "no replica answered"
        summary = (
            f"{acks} of {len(self.replicas)} replicas acknowledged, "
            f"{self.majority} needed ({reasons})"
        )
        if not acks and unanswered == 0 and all(failure.definite for failure in failures):
            return StoreUnavailable(f"write not applied: {summary}")
        return WriteIndeterminate(f"write may or may not have taken effect: {summary}")

    # -- anti-entropy -----------------------------------------------------------------

    async def _repair_keys(self, keys: list[str], report: RepairReport) -> None:
        """Bring every reachable replica up to the newest record of each key in ``keys``."""
        copies, _failed = await copy_newest(keys, self.replicas, tolerate_failures=True)
        report.keys_checked += len(keys)
        report.copies_written += sum(copies.values())

    # -- plumbing ---------------------------------------------------------------------

    def _targets(self) -> list[Replica]:
        """Replicas worth asking: those up, or all of them if too few are up for a majority."""
        up = [replica for replica in self.replicas if replica.is_up()]
        return up if len(up) >= self.majority else self.replicas

    def _short_of_majority(self, count: int) -> StoreUnavailable:
        doubt = sum(replica.trust is Trust.IN_DOUBT for replica in self.replicas)
        waiting = f"; {doubt} in doubt, awaiting repair" if doubt else ""
        return StoreUnavailable(
            f"only {count} of {len(self.replicas)} replicas gave a trusted answer in time, "
            f"{self.majority} needed{waiting}"
        )

    def _spawn(self, call: Coroutine[Any, Any, T]) -> asyncio.Task[T]:
        """Run one replica call as a task that outlives the operation if it must."""
        task = asyncio.ensure_future(call)
        self._in_flight.add(task)
        task.add_done_callback(self._forget)
        return task

    def _forget(self, task: asyncio.Task[Any]) -> None:
        self._in_flight.discard(task)
        if not task.cancelled():
            task.exception()  # retrieved: a straggler's failure is expected, not news

    async def _until(
        self,
        tasks: Iterable[asyncio.Task[T]],
        deadline: float,
        on_done: Callable[[asyncio.Task[T]], None],
        enough: Callable[[], bool],
    ) -> None:
        """Hand each task to ``on_done`` as it finishes, until ``enough()``, all are done,
        or the deadline.

        Results are taken here rather than in done-callbacks: a task can be done before
        its callbacks have run, so a callback may not yet have seen it when we resume.
        """
        pending = set(tasks)
        while pending and not enough():
            remaining = deadline - self._clock()
            if remaining <= 0:
                return
            finished, pending = await asyncio.wait(
                pending, timeout=remaining, return_when=asyncio.FIRST_COMPLETED
            )
            for task in finished:
                on_done(task)


def _succeeded(task: asyncio.Task[Any]) -> bool:
    return not task.cancelled() and task.exception() is None


def open_store(config: StoreConfig, credentials: Credentials = Credentials()) -> QuorumStore:  # noqa: B008
    """A QuorumStore over the replicas ``config`` names (connections open lazily), reached
    with ``credentials`` (secure mode)."""
    replicas = [
        Replica(
            addr,
            timeout=config.timeout,
            max_in_flight=config.max_in_flight,
            cooldown=config.cooldown,
            credentials=credentials,
        )
        for addr in config.replicas
    ]
    return QuorumStore(
        replicas,
        timeout=config.timeout,
        max_value_bytes=config.max_value_bytes,
        max_key_bytes=config.max_key_bytes,
    )
