"""Background care of the replicas: repair of replicas in doubt, catch-up of lagging ones.

Owns: the loop that, every ``interval``, (1) probes replicas not known to be trusted,
(2) repairs and certifies replicas in doubt as trust.py plans it, and (3) copies to each
replica the records of writes it missed (``Backlog``), so lag does not pile up across
faults. Progress is kept per replica for status pages and metrics.

Invariants:
- A replica is certified only after every key held by each of its sources was read from
  all the sources and the replica, and the newest copy written to the replica; and only
  if the sources answered throughout (a failure aborts the repair; it is tried again).
- In ``REPAIR`` mode the sources are the trusted replicas, at least a majority; in
  ``RECONCILE`` mode every reachable replica, at least a majority, including every trusted
  replica. A target is certified only if every source answered throughout (the target
  never counts as its own source).
- A backlog is bounded; one that overflows turns into a full scan of that replica.
- Copying the newest record never moves a replica backwards (set-if-newer), so repairs
  running at once, on several nodes, are safe; a lock on the replica only saves work.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from cachegrid.errors import ReplicaError
from cachegrid.store.replica import Replica, Reply
from cachegrid.store.trust import Mode, Trust, plan
from cachegrid.store.writeback import plan_write_back

log = logging.getLogger(__name__)

SCAN_BATCH = 256
LOCK_SECONDS = 30.0


class Backlog:
    """The keys whose writes one replica missed, bounded; past the bound, ``overflowed``."""

    def __init__(self, limit: int = 65536) -> None:
        self.limit = limit
        self.keys: dict[str, None] = {}  # insertion-ordered set
        self.overflowed = False

    def __len__(self) -> int:
        return len(self.keys)

    def add(self, keys: Sequence[str]) -> None:
        for key in keys:
            if len(self.keys) >= self.limit and key not in self.keys:
                self.overflowed = True
                return
            self.keys[key] = None

    def take(self, count: int) -> list[str]:
        taken = list(self.keys)[:count]
        for key in taken:
            del self.keys[key]
        return taken


@dataclass
class Progress:
    """The last repair of one replica, as status pages show it."""

    state: str = "idle"  # idle | repairing | certified | failed
    mode: str = ""
    keys_checked: int = 0
    copies_written: int = 0
    started: float = 0.0  # time.time()
    finished: float = 0.0
    error: str = ""

    def snapshot(self) -> dict[str, object]:
        return {
            "state": self.state,
            "mode": self.mode,
            "keys_checked": self.keys_checked,
            "copies_written": self.copies_written,
            "started": self.started or None,
            "finished": self.finished or None,
            "error": self.error,
        }


class Upkeep:
    """Runs in the background of one QuorumStore. One event loop."""

    def __init__(
        self,
        replicas: Sequence[Replica],
        majority: int,
        *,
        interval: float = 0.25,
        probe_timeout: float = 0.5,
        catch_up_batch: int = 512,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.replicas = list(replicas)
        self.majority = majority
        self.interval = interval
        self.probe_timeout = probe_timeout
        self.catch_up_batch = catch_up_batch
        self.backlogs = {replica: Backlog() for replica in self.replicas}
        self.progress = {replica: Progress() for replica in self.replicas}
        self.copies_written = 0  # by repairs and catch-up, in all
        self._clock = clock
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._judged = asyncio.Event()  # set once a round ends with a majority trusted
        self._probes: set[asyncio.Task[Reply]] = set()  # outliving a round: cancelled on stop

    def __repr__(self) -> str:
        trusts = ",".join(replica.trust.value for replica in self.replicas)
        lag = sum(len(backlog) for backlog in self.backlogs.values())
        return f"<Upkeep trust={trusts} backlog={lag}>"

    @property
    def judged(self) -> bool:
        """True once a round has ended with a majority of replicas trusted."""
        return self._judged.is_set()

    def start(self) -> None:
        """Start the loop if it is not running. Cheap: called by every store operation."""
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="store-upkeep")

    async def first_round(self, wait: float) -> None:
        """Wait until a round has ended with a majority trusted, at most ``wait`` seconds."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(wait):
                await self._judged.wait()

    async def stop(self) -> None:
        """Stop the loop and every probe. Cancels again until they end: a cancellation
        that lands as a replica call times out can be absorbed by the timeout (and by
        redis-py), and the loop would go on."""
        self._stopping = True
        tasks = [*self._probes, *([self._task] if self._task else [])]
        while not all(task.done() for task in tasks):
            for task in tasks:
                task.cancel()
            await asyncio.wait(tasks, timeout=0.1)
        await asyncio.gather(*tasks, return_exceptions=True)
        self._task = None

    def note_missed(self, replica: Replica, keys: Sequence[str]) -> None:
        """A write of ``keys`` did not (certainly) reach ``replica``."""
        self.backlogs[replica].add(keys)

    async def _run(self) -> None:
        while not self._stopping:
            try:
                await self.round()
            except Exception:  # a bug here must not end the care of the replicas
                log.exception("store upkeep round failed")
            if sum(r.trust is Trust.TRUSTED for r in self.replicas) >= self.majority:
                self._judged.set()
            await asyncio.sleep(self.interval)

    async def round(self) -> None:
        """One pass: probe, repair what is in doubt, catch up what lags."""
        reachable = await self._probe()
        decided = plan([replica.trust for replica in self.replicas], self.majority)
        if decided.mode in (Mode.REPAIR, Mode.RECONCILE):
            targets = [self.replicas[i] for i in decided.targets]
            await self._recover(decided.mode, [t for t in targets if t in reachable], reachable)
        for replica in reachable:
            if replica.trust is Trust.TRUSTED:
                await self._catch_up(replica, reachable)

    async def _probe(self) -> list[Replica]:
        """Ask every replica what it says of itself; those that answered in time (a paused
        replica must not hold the round, and with it the first reads, to its timeout)."""
        probes = {asyncio.create_task(r.read_reply([])): r for r in self.replicas}
        self._probes.update(probes)
        for task in probes:
            task.add_done_callback(self._probe_done)
        await asyncio.wait(probes, timeout=self.probe_timeout)
        return [r for task, r in probes.items() if task.done() and not _failed(task)]

    def _probe_done(self, task: asyncio.Task[Reply]) -> None:
        self._probes.discard(task)
        _failed(task)  # retrieved: an unreachable replica is expected here

    async def _recover(self, mode: Mode, targets: list[Replica], reachable: list[Replica]) -> None:
        """Bring ``targets`` up to date with their sources, then vouch for them.

        REPAIR reads from the trusted replicas, a majority of them. RECONCILE reads from
        every reachable replica, a majority, and only once every trusted replica is among
        them: a trusted replica that is merely unreachable (paused, cut off) may hold the
        only copy of acknowledged writes, so reconciling without it would lose them.
        """
        trusted = [r for r in self.replicas if r.trust is Trust.TRUSTED]
        if mode is Mode.REPAIR:
            sources = [r for r in trusted if r in reachable]
        else:
            sources = reachable if all(r in reachable for r in trusted) else []
        if len(sources) < self.majority or not targets:
            return  # wait for more replicas to answer
        token = os.urandom(8).hex().encode()
        locked = [t for t in targets if await _try(t.lock_repair(token, LOCK_SECONDS))]
        if not locked:
            return  # another node is repairing them
        run_ids = {target: target.identity.run_id for target in locked}
        try:
            await self._repair(mode, locked, sources, run_ids)
        finally:
            for target in locked:
                await _try(target.unlock_repair(token))

    async def _repair(
        self, mode: Mode, targets: list[Replica], sources: list[Replica],
        run_ids: dict[Replica, bytes],
    ) -> None:  # fmt: skip
        everyone = list({**dict.fromkeys(sources), **dict.fromkeys(targets)})
        for target in targets:
            self.progress[target] = Progress("repairing", mode.value, started=self._clock())
            log.warning("store replica %s in doubt: %s from %s", target.addr, mode.value,
                        ", ".join(source.addr for source in sources),
                        extra={"event": "repair_started", "replica": target.addr,
                               "mode": mode.value})  # fmt: skip
        for replica in list(everyone):
            if replica in everyone:
                await self._copy_all_keys_of(replica, everyone, targets)
        # Those that answered throughout: ``_copy_all_keys_of`` drops any that failed.
        held = all(source in everyone for source in sources)
        for target in targets:
            await self._certify(target, run_ids[target], held and target in everyone)

    async def _certify(self, target: Replica, run_id: bytes, answered: bool) -> None:
        """Vouch for ``target`` if it and every one of its sources answered throughout.

        Not "a majority of those involved": the target itself must not count, or a target
        and one lagging source would certify each other (found by the proof, session 3).
        """
        if not answered:
            self._finish(target, "failed", "a source or the replica failed during the repair")
            return
        try:
            certified = await target.certify(run_id)
        except ReplicaError as error:
            self._finish(target, "failed", error.message)
            return
        if certified:
            self._finish(target, "certified", "")
        else:
            self._finish(target, "failed", "the replica restarted during the repair")

    def _finish(self, target: Replica, state: str, error: str) -> None:
        progress = self.progress[target]
        progress.state, progress.error, progress.finished = state, error, self._clock()
        log.warning("store replica %s: repair %s (%d keys checked, %d copies written)%s",
                    target.addr, state, progress.keys_checked, progress.copies_written,
                    f": {error}" if error else "",
                    extra={"event": "repair_finished", "replica": target.addr, "state": state,
                           "keys_checked": progress.keys_checked,
                           "copies_written": progress.copies_written})  # fmt: skip

    async def _copy_all_keys_of(
        self, replica: Replica, everyone: list[Replica], targets: list[Replica]
    ) -> None:
        """Scan ``replica``'s keys; bring each to its newest copy on all of ``everyone``.

        A replica that fails is dropped from ``everyone``: what the others hold is still
        read in full, and the caller decides whether enough of them are left."""
        cursor = 0
        while True:
            try:
                cursor, keys = await replica.scan(cursor, SCAN_BATCH)
            except ReplicaError:
                everyone.remove(replica)
                return
            if keys:
                copies, failed = await copy_newest(keys, everyone, tolerate_failures=True)
                for target in targets:
                    self.progress[target].keys_checked += len(keys)
                    self.progress[target].copies_written += copies.get(target, 0)
                self.copies_written += sum(copies.values())
                everyone[:] = [r for r in everyone if r not in failed]
                if replica in failed:
                    return
            if cursor == 0:
                return

    async def _catch_up(self, replica: Replica, reachable: list[Replica]) -> None:
        """Copy to ``replica`` the newest records of the writes it missed."""
        backlog = self.backlogs[replica]
        if backlog.overflowed:
            backlog.overflowed = False
            backlog.keys.clear()
            everyone = [replica, *(r for r in reachable if r is not replica)]
            for source in list(everyone):
                if source in everyone:
                    await self._copy_all_keys_of(source, everyone, [])
            backlog.overflowed = replica not in everyone  # failed: try again later
            return
        keys = backlog.take(self.catch_up_batch)
        if not keys:
            return
        copies, failed = await copy_newest(keys, reachable, tolerate_failures=True)
        self.copies_written += sum(copies.values())
        if replica in failed:
            backlog.add(keys)


async def copy_newest(
    keys: list[str], replicas: list[Replica], *, tolerate_failures: bool = False
) -> tuple[dict[Replica, int], set[Replica]]:
    """Read ``keys`` from every one of ``replicas`` and write the newest record of each to
    those that lag: the copies written, per replica, and the replicas that failed.
    ReplicaError if any replica fails, unless ``tolerate_failures``."""
    reads = (replica.read(keys) for replica in replicas)
    answers = await asyncio.gather(*reads, return_exceptions=tolerate_failures)
    reached = {
        replica: answer
        for replica, answer in zip(replicas, answers, strict=True)
        if not isinstance(answer, BaseException)
    }
    behind = plan_write_back(keys, reached, majority=1).behind
    writes = (replica.write(items) for replica, items in behind.items())
    outcomes = await asyncio.gather(*writes, return_exceptions=tolerate_failures)
    failed = {replica for replica in replicas if replica not in reached}
    copies: dict[Replica, int] = {}
    for (replica, items), outcome in zip(behind.items(), outcomes, strict=True):
        if isinstance(outcome, BaseException):
            failed.add(replica)
        else:
            copies[replica] = len(items)
    return copies, failed


def _failed(task: asyncio.Task[Reply]) -> bool:
    return task.cancelled() or task.exception() is not None


async def _try(call: Awaitable[object]) -> bool:
    """Await ``call``; its truth, or False if the replica failed."""
    try:
        return bool(await call)
    except ReplicaError:
        return False
