"""Replicas that come back having forgotten: no acknowledged write may be lost (issue 10).

ABD alone tolerates crashes, not amnesia: a replica restarted empty (or restarted at all,
with ``appendfsync everysec``) can form a read majority with a replica that lags and
answer from the past. These tests run the fault sequences that lost 10-22% of the
acknowledged writes before the trust rule (store/trust.py), over hundreds of distinct
keys so that read repair of a small hot set cannot hide a loss.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

import pytest

from cachegrid.errors import StoreUnavailable
from cachegrid.store import QuorumStore, Record, Replica
from cachegrid.store.trust import Trust
from cachegrid.version import Version
from tests.processes import FaultyRedis

pytestmark = pytest.mark.slow

KEYS = [f"meta/{i:04d}" for i in range(400)]


def record(seq: int, key: str) -> Record:
    return Record(Version(1, seq), False, b'"%s@%d"' % (key.encode(), seq))


async def write_all(
    store: QuorumStore, seq: int, acked: dict[str, Record], pause: float = 0.0,
    keys: list[str] = KEYS,
) -> None:  # fmt: skip
    """Write each of ``keys`` at ``seq``, in batches ``pause`` apart; remember what was
    acknowledged."""
    for start in range(0, len(keys), 10):
        items = [(key, record(seq, key)) for key in keys[start : start + 10]]
        for (key, rec), outcome in zip(items, await store.write_many(items), strict=True):
            if outcome == rec.version:
                acked[key] = rec
        await asyncio.sleep(pause)


async def write_while_paused(
    store: QuorumStore, laggard: FaultyRedis, seq: int, acked: dict[str, Record],
    keys: list[str] = KEYS,
) -> None:  # fmt: skip
    """Write ``keys``, in 2 s or more, while ``laggard`` is frozen. Its first calls time out,
    its breaker opens, and the writes after that skip it: it lags for real (the bytes of
    the first ones wait in its socket and land when it thaws)."""
    laggard.pause()
    try:
        await write_all(store, seq, acked, pause=2.0 / (len(keys) / 10), keys=keys)
        await asyncio.sleep(0.6)  # past the replica timeout: its calls were abandoned
    finally:
        laggard.resume()


async def wipe(server: FaultyRedis) -> None:
    """Crash a replica and bring it back empty: it forgot everything it acknowledged."""
    server.kill()
    server.wipe()
    await asyncio.to_thread(server.start)


async def until_certified(store: QuorumStore, index: int, since: float, wait: float = 20) -> None:
    """Until the store's upkeep has repaired and vouched for replica ``index`` again."""
    deadline = time.monotonic() + wait
    replica = store.replicas[index]
    while time.monotonic() < deadline:
        progress = store.upkeep.progress[replica]
        certified = progress.state == "certified" and progress.finished >= since
        if certified and replica.trust is Trust.TRUSTED:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"replica {index} not certified: {store.upkeep.progress[replica]}")


async def lost_writes(servers: list[FaultyRedis], acked: dict[str, Record]) -> list[str]:
    """Read every key through a store that has never seen these replicas (a node started
    afresh, or one whose cache was flushed): what no longer reads as acknowledged."""
    store = QuorumStore([Replica(s.endpoint, timeout=1) for s in servers], timeout=1)
    try:
        await store.start()
        result = await store.read_many(list(acked))
        assert result.errors == {}, list(result.errors.values())[:3]
        return [key for key, rec in acked.items() if result.records[key] != rec]
    finally:
        await store.close()


async def test_a_wiped_replica_and_a_lagging_one_never_form_a_read_majority(
    redis_servers, quorum_store
) -> None:
    """The outside report, replayed: writes acknowledged while replica 0 was frozen (so
    replica 0 lags), then replica 1 is wiped. {0, 1} is a majority that misses them: while
    replica 2, the only one to hold them all, is frozen too, reads must fail, not answer
    from {0, 1}; once it thaws, the store repairs replica 1 by itself and loses nothing."""
    servers = redis_servers(3)
    store = await quorum_store([s.endpoint for s in servers])
    acked: dict[str, Record] = {}
    await write_all(store, 1, acked)
    await write_while_paused(store, servers[0], 2, acked)
    await store.close()  # its backlog of missed writes dies with it, as a node's would
    await wipe(servers[1])
    reader = QuorumStore([Replica(s.endpoint, timeout=0.3) for s in servers], timeout=0.3)
    servers[2].pause()
    try:
        await reader.start(wait=1.0)
        wrong = []
        for key in KEYS[:100]:
            with contextlib.suppress(StoreUnavailable):
                if (found := await reader.read(key)) != acked[key]:
                    wrong.append((key, found))
        assert wrong == [], f"{len(wrong)} reads went back: {wrong[:3]}"
    finally:
        servers[2].resume()
        await reader.close()
    assert await lost_writes(servers, acked) == []


async def test_acknowledged_writes_survive_a_sequence_of_wipes_and_lags(
    redis_servers, quorum_store
) -> None:
    """One replica in doubt at a time, another lagging before each wipe, and no manual
    repair: the store repairs each wiped replica by itself, and loses nothing. Each step
    rewrites only a quarter of the keys, so the others survive only by repairs (three
    wipes of three different replicas: without repair, the first quarter would be gone)."""
    servers = redis_servers(3)
    store = await quorum_store([s.endpoint for s in servers])
    acked: dict[str, Record] = {}
    await write_all(store, 1, acked)
    for step, (laggard, victim) in enumerate([(0, 1), (1, 2), (2, 0), (0, 2)]):
        written = KEYS[step * 100 : (step + 1) * 100]
        await write_while_paused(store, servers[laggard], 2 + step, acked, written)
        wiped_at = time.time()
        await wipe(servers[victim])
        # Reads go on meanwhile, from the trusted majority, and see every acknowledged write.
        result = await store.read_many(written[:20])
        assert {k: result.records.get(k) for k in written[:20]} == {
            k: acked[k] for k in written[:20]
        }
        await until_certified(store, victim, since=wiped_at)
    assert await lost_writes(servers, acked) == []
    deadline = time.monotonic() + 20
    while any(store.upkeep.backlogs.values()) and time.monotonic() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.1)  # polls another component's state: no event to wait on
    await store.close()
    # The lag did not pile up: once caught up, every replica holds every latest record.
    for server in servers:
        alone = Replica(server.endpoint, timeout=1)
        records = await alone.read(list(acked))
        await alone.close()
        assert records == list(acked.values()), f"{server.endpoint} still lags"


async def test_with_fewer_than_a_majority_trusted_reads_fail_rather_than_go_back(
    redis_servers, quorum_store
) -> None:
    """Replica 2 restarted (everysec: it may have lost its last second) while replica 0 is
    frozen: only replica 1 is trusted. A read must answer 503, not what {1, 2} hold."""
    servers = redis_servers(3)
    store = await quorum_store([s.endpoint for s in servers])
    acked: dict[str, Record] = {}
    await write_all(store, 1, acked)
    servers[0].pause()
    restarted_at = time.time()
    try:
        await asyncio.to_thread(servers[2].stop)
        await asyncio.to_thread(servers[2].start)
        with pytest.raises(StoreUnavailable, match="in doubt"):
            await store.read(KEYS[0])
    finally:
        servers[0].resume()
    await until_certified(store, 2, since=restarted_at)
    assert await store.read(KEYS[0]) == acked[KEYS[0]]


async def test_a_whole_store_restart_is_reconciled_and_trusted_again(
    redis_servers, quorum_store
) -> None:
    """Every replica restarted (no majority can be repaired from a trusted one): the store
    reconciles them and serves again, with every write acknowledged before the restart."""
    servers = redis_servers(3)
    store = await quorum_store([s.endpoint for s in servers])
    acked: dict[str, Record] = {}
    await write_all(store, 1, acked)
    await store.close()
    for server in servers:
        await asyncio.to_thread(server.stop)  # a clean shutdown: the AOF is complete
        await asyncio.to_thread(server.start)
    assert await lost_writes(servers, acked) == []
