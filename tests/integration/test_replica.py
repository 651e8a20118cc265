"""One replica against a real redis-server: set-if-newer, error mapping, script reload."""

import asyncio
import itertools
import random

import pytest
import redis.asyncio as aioredis

from cachegrid.errors import ReplicaCorrupt, ReplicaError
from cachegrid.store import Record, Replica
from cachegrid.version import Version


def rec(epoch: int, seq: int, value: bytes = b"1") -> Record:
    return Record(Version(epoch, seq), False, value)


async def test_set_if_newer_never_lets_an_older_version_win(redis_servers) -> None:
    """Concurrent writers of shuffled versions: the stored version only ever rises."""
    (server,) = redis_servers(1)
    writers = [Replica(server.endpoint, timeout=5) for _ in range(8)]
    observer = Replica(server.endpoint, timeout=5)
    versions = [Version(e, s) for e in range(1, 9) for s in range(40)]
    random.Random(7).shuffle(versions)
    observed: list[Version] = []
    stop = asyncio.Event()

    async def write(replica: Replica, mine: list[Version]) -> None:
        for version in mine:
            (stored,) = await replica.write([("k", rec(*version, str(version).encode()))])
            assert stored >= version

    async def observe() -> None:
        while not stop.is_set():
            (record,) = await observer.read(["k"])
            if isinstance(record, Record):
                observed.append(record.version)
            await asyncio.sleep(0)

    watcher = asyncio.create_task(observe())
    await asyncio.gather(*(write(w, versions[i::8]) for i, w in enumerate(writers)))
    stop.set()
    await watcher
    (final,) = await observer.read(["k"])
    assert observed, "the observer saw no state"
    assert all(a <= b for a, b in itertools.pairwise(observed))
    assert isinstance(final, Record)
    assert final.version == max(versions)
    assert final.value == str(max(versions)).encode()  # value and version moved together
    for replica in [*writers, observer]:
        await replica.close()


async def test_equal_or_older_write_is_ignored_and_reports_the_stored_version(redis_servers):
    (server,) = redis_servers(1)
    replica = Replica(server.endpoint, timeout=2)
    assert await replica.write([("k", rec(5, 5, b"new"))]) == [Version(5, 5)]
    assert await replica.write([("k", rec(5, 4, b"old")), ("k", rec(5, 5, b"dup"))]) == [
        Version(5, 5),
        Version(5, 5),
    ]
    assert await replica.read(["k"]) == [rec(5, 5, b"new")]
    await replica.close()


async def test_script_is_reloaded_and_data_kept_across_a_restart(redis_servers) -> None:
    """After a restart the script cache is empty; records come back from the AOF."""
    (server,) = redis_servers(1)
    replica = Replica(server.endpoint, timeout=2)
    await replica.write([("k", rec(1, 1, b"before"))])
    server.stop()
    server.start()
    assert await replica.read(["k"]) == [rec(1, 1, b"before")]
    await replica.write([("k", rec(1, 2, b"after"))])
    assert await replica.read(["k"]) == [rec(1, 2, b"after")]
    await replica.close()


async def test_corrupt_record_is_reported_and_a_newer_write_repairs_it(redis_servers) -> None:
    (server,) = redis_servers(1)
    raw = aioredis.Redis(host="127.0.0.1", port=server.port)
    await raw.hset("cg:k", mapping={"e": "zz", "s": "1", "t": "0", "v": "x"})
    replica = Replica(server.endpoint, timeout=2)
    (reply,) = await replica.read(["k"])
    assert isinstance(reply, ReplicaCorrupt)
    assert replica.health.corrupt == 1
    await replica.write([("k", rec(1, 1))])
    assert await replica.read(["k"]) == [rec(1, 1)]
    await replica.close()
    await raw.aclose()


async def test_unreachable_replica_fails_definitely_and_opens_its_breaker(ports) -> None:
    replica = Replica(f"127.0.0.1:{ports.take()}", timeout=1, cooldown=30)
    for _ in range(Replica.failure_threshold):
        with pytest.raises(ReplicaError) as failure:
            await replica.read(["k"])
        assert failure.value.definite, failure.value.message
    assert not replica.is_up()
    assert replica.health.snapshot(0)["errors"] == Replica.failure_threshold
    await replica.close()


async def test_a_batch_is_one_script_call_and_a_failure_midway_is_not_definite(
    redis_servers,
) -> None:
    """Redis keeps what a script wrote before it failed, so a batch that fails on a later
    key may have applied earlier ones: never 'definitely not applied' unless it had one."""
    (server,) = redis_servers(1)
    raw = aioredis.Redis(host="127.0.0.1", port=server.port)
    await raw.set("cg:wrong-type", "a string, not a hash")  # HMGET on it fails
    replica = Replica(server.endpoint, timeout=2)
    batch = [(f"b{i}", rec(1, i)) for i in range(50)]
    assert await replica.write(batch) == [Version(1, i) for i in range(50)]
    assert await replica.read([key for key, _ in batch]) == [r for _, r in batch]
    with pytest.raises(ReplicaError) as failure:
        await replica.write([("first", rec(1, 1)), ("wrong-type", rec(1, 1))])
    assert not failure.value.definite
    assert await replica.read(["first"]) == [rec(1, 1)]  # applied, though the call failed
    with pytest.raises(ReplicaError) as failure:
        await replica.write([("wrong-type", rec(1, 1))])
    assert failure.value.definite  # one item, refused: it did not apply
    await replica.close()
    await raw.aclose()
