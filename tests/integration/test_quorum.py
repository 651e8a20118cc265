"""The quorum register over real redis-servers: majority, write-back, faults, repair."""

import asyncio
import contextlib
import time
from collections.abc import Callable

import pytest

from cachegrid.errors import BadRequest, StoreUnavailable, TooLarge, WriteIndeterminate
from cachegrid.store import QuorumStore, Record, Replica
from cachegrid.version import Version
from tests.processes import FaultyRedis


def rec(seq: int, value: bytes | None = None, epoch: int = 1) -> Record:
    return Record(Version(epoch, seq), False, value if value is not None else b"%d" % seq)


async def copies(servers: list[FaultyRedis], key: str) -> list[Record | None]:
    """What each replica holds for ``key``, read directly, bypassing the quorum."""
    result = []
    for server in servers:
        replica = Replica(server.endpoint, timeout=2)
        (reply,) = await replica.read([key])
        await replica.close()
        result.append(reply)
    return result


async def test_write_then_read_delete_and_batch(redis_servers, quorum_store) -> None:
    servers = redis_servers(3)
    store = await quorum_store([s.endpoint for s in servers])
    assert await store.read("missing") is None
    assert await store.write("a", rec(1, b'"x"')) == Version(1, 1)
    assert await store.write("b", rec(1, b"[1]")) == Version(1, 1)
    assert await store.write("a", Record.tombstone_at(Version(1, 2))) == Version(1, 2)
    batch = await store.read_many(["a", "b", "missing", "b"])
    assert batch.errors == {}
    assert batch.records == {
        "a": Record.tombstone_at(Version(1, 2)),
        "b": rec(1, b"[1]"),
        "missing": None,
    }
    assert await copies(servers, "b") == [rec(1, b"[1]")] * 3


async def test_write_many_reports_each_item_as_write_would(redis_servers, quorum_store) -> None:
    servers = redis_servers(3)
    store = await quorum_store([s.endpoint for s in servers], max_value_bytes=100)
    await store.write("newer", rec(9))
    outcomes = await store.write_many(
        [("a", rec(1)), ("big", rec(1, b"x" * 101)), ("", rec(1)), ("newer", rec(2))]
    )
    assert outcomes[0] == Version(1, 1)
    assert isinstance(outcomes[1], TooLarge)
    assert isinstance(outcomes[2], BadRequest)
    assert outcomes[3] == Version(1, 9)  # the store already held a newer version
    assert await copies(servers, "a") == [rec(1)] * 3
    assert await copies(servers, "big") == [None] * 3  # refused before any replica
    servers[1].kill()
    servers[2].kill()
    failed = await store.write_many([("a", rec(2)), ("b", rec(2))])
    assert all(isinstance(outcome, WriteIndeterminate) for outcome in failed)


async def test_a_write_older_than_the_stored_version_reports_the_newer_one(
    redis_servers, quorum_store
) -> None:
    store = await quorum_store([s.endpoint for s in redis_servers(3)])
    await store.write("k", rec(5))
    assert await store.write("k", rec(3)) == Version(1, 5)
    assert await store.read("k") == rec(5)


FAULTS: dict[str, Callable[[FaultyRedis], None]] = {
    "killed": lambda server: server.kill(),
    "paused": lambda server: server.pause(),
    "restarted_empty": lambda server: (server.kill(), server.wipe(), server.start()),
}


@pytest.mark.parametrize("fault", FAULTS)
@pytest.mark.parametrize("victim", [0, 1, 2])
async def test_acknowledged_writes_survive_any_minority_fault(
    redis_servers, quorum_store, fault, victim
) -> None:
    servers = redis_servers(3)
    store = await quorum_store([s.endpoint for s in servers], timeout=0.5)
    keys = [f"k{i}" for i in range(20)]
    for key in keys:
        await store.write(key, rec(1, key.encode()))
    FAULTS[fault](servers[victim])
    for key in keys:
        assert await store.read(key) == rec(1, key.encode())
    for key in keys:  # and the store still takes writes
        await store.write(key, rec(2, key.encode() + b"'"))
    batch = await store.read_many(keys)
    assert batch.errors == {}
    assert batch.records == {key: rec(2, key.encode() + b"'") for key in keys}
    servers[victim].resume()


async def test_a_paused_replica_never_delays_an_answer_to_its_deadline(
    redis_servers, quorum_store
) -> None:
    """With one of three paused, every operation finishes before the deadline: none waits
    for the paused replica."""
    servers = redis_servers(3)
    timeout = 2.0
    store = await quorum_store([s.endpoint for s in servers], timeout=timeout)
    servers[1].pause()
    slowest = 0.0
    for i in range(30):
        started = time.monotonic()
        await store.write("k", rec(i + 1))
        assert await store.read("k") == rec(i + 1)
        slowest = max(slowest, time.monotonic() - started)
    # Waiting for the paused replica would take the whole timeout; a busy machine may add
    # hundreds of milliseconds to an answer, never the timeout.
    assert slowest < timeout - 0.5, f"an operation waited {slowest:.2f}s on the paused replica"
    servers[1].resume()


async def test_five_replicas_tolerate_two_down_but_not_three(redis_servers, quorum_store) -> None:
    servers = redis_servers(5)
    store = await quorum_store([s.endpoint for s in servers], timeout=0.5)
    await store.write("k", rec(1))
    servers[0].kill()
    servers[3].pause()
    assert await store.read("k") == rec(1)
    await store.write("k", rec(2))
    assert await store.read("k") == rec(2)
    servers[4].kill()
    with pytest.raises(StoreUnavailable):
        await store.read("k")
    servers[3].resume()


async def test_write_back_keeps_successive_reads_from_going_new_then_old(
    redis_servers, quorum_store
) -> None:
    """A write that reached one replica only: once a read returns it, every later read does.

    Replica 0 alone holds v2. The first read sees {0, 1} (2 is down, so no late read repair
    can reach it) and returns v2; the second sees {1, 2} (0 is paused). Without write-back
    to 1, the second read would return v1. (The replicas fsync every write, so replica 2,
    restarted from its AOF, is still trusted: with ``everysec`` it would be in doubt.)
    """
    servers = redis_servers(3, appendfsync="always")
    store = await quorum_store([s.endpoint for s in servers], timeout=0.5)
    await store.write("k", rec(1))
    lone = Replica(servers[0].endpoint, timeout=2)
    await lone.write([("k", rec(2))])
    await lone.close()
    servers[2].stop()
    assert await store.read("k") == rec(2)
    servers[2].start()  # back with v1, from its AOF
    assert await copies(servers[2:], "k") == [rec(1)]
    servers[0].pause()
    assert await store.read("k") == rec(2)
    servers[0].resume()


async def test_reads_are_never_new_then_old_under_concurrent_writes_and_a_crash(
    redis_servers, quorum_store
) -> None:
    """Real-time order: a read that starts after another read ended, or after a write was
    acknowledged, never returns an older version than that one."""
    servers = redis_servers(3)
    store = await quorum_store([s.endpoint for s in servers], timeout=0.5)
    reads: list[tuple[float, float, Version]] = []
    acked: list[tuple[float, Version]] = []  # (acknowledged at, version)
    await store.write("k", rec(0))

    async def writer() -> None:
        for seq in range(1, 150):
            with contextlib.suppress(StoreUnavailable, WriteIndeterminate):
                acked.append((time.monotonic(), await store.write("k", rec(seq))))
            if seq == 60:
                servers[2].kill()

    async def reader() -> None:
        for _ in range(150):
            started = time.monotonic()
            record = await store.read("k")
            assert record is not None
            reads.append((started, time.monotonic(), record.version))

    await asyncio.gather(writer(), *(reader() for _ in range(4)))
    assert len(acked) > 100, "too few writes were acknowledged to check anything"
    ended = [(end, version) for _start, end, version in reads] + acked
    newest_ended: list[tuple[float, Version]] = []  # (end time, max version ended by then)
    best = Version(0, 0)
    for end, version in sorted(ended):
        best = max(best, version)
        newest_ended.append((end, best))
    for start, _end, version in reads:
        before = [v for end, v in newest_ended if end < start]
        if before:
            assert version >= before[-1], f"read at {start} saw {version} after {before[-1]}"


async def test_anti_entropy_converges_every_replica_including_tombstones(
    redis_servers, quorum_store
) -> None:
    servers = redis_servers(3)
    # The store's own upkeep would repair the wiped replica too: give it one round only
    # (at the first write), so that what is measured is the admin pass.
    store = await quorum_store([s.endpoint for s in servers], timeout=0.5, upkeep_interval=3600)
    for i in range(300):
        await store.write(f"k{i}", rec(1))
    servers[2].kill()
    for i in range(0, 300, 3):
        await store.write(f"k{i}", Record.tombstone_at(Version(1, 2)))
    for i in range(1, 300, 3):
        await store.write(f"k{i}", rec(3))
    servers[2].wipe()
    servers[2].start()
    report = await store.repair(batch=50)
    assert report.unreachable == []
    assert report.copies_written == 300  # every key, to the one empty replica
    for i in range(300):
        held = await copies(servers, f"k{i}")
        assert held[0] == held[1] == held[2] is not None, f"k{i}: {held}"
    assert (await copies(servers, "k0"))[2] == Record.tombstone_at(Version(1, 2))
    again = await store.repair(batch=50)
    assert again.copies_written == 0


async def test_anti_entropy_reports_an_unreachable_replica(redis_servers, quorum_store) -> None:
    servers = redis_servers(3)
    store = await quorum_store([s.endpoint for s in servers], timeout=0.5)
    await store.write("k", rec(1))
    servers[1].kill()
    report = await store.repair()
    assert report.unreachable == [servers[1].endpoint]


async def test_write_failures_say_whether_the_write_may_have_happened(
    redis_servers, quorum_store
) -> None:
    servers = redis_servers(3)
    store = await quorum_store([s.endpoint for s in servers], timeout=0.5)
    servers[1].kill()
    servers[2].kill()
    with pytest.raises(WriteIndeterminate, match="1 of 3 replicas acknowledged"):
        await store.write("k", rec(1))  # replica 0 applied it
    servers[0].kill()
    # Replica 0 died between writes: the next write finds its pooled connection dead, and
    # a write on a dead connection may have executed before the death.
    with pytest.raises(WriteIndeterminate, match="0 of 3 replicas acknowledged"):
        await store.write("k", rec(2))
    # Now every replica refuses connections: nothing can have been applied.
    with pytest.raises(StoreUnavailable, match="write not applied"):
        await store.write("k", rec(3))
    with pytest.raises(StoreUnavailable):
        await store.read("k")


async def test_two_paused_replicas_fail_the_operation_by_its_deadline(
    redis_servers, quorum_store
) -> None:
    servers = redis_servers(3)
    timeout = 0.3
    store = await quorum_store([s.endpoint for s in servers], timeout=timeout)
    await store.write("k", rec(1))
    servers[0].pause()
    servers[1].pause()
    started = time.monotonic()
    with pytest.raises(WriteIndeterminate):
        await store.write("k", rec(2))
    with pytest.raises(StoreUnavailable):
        await store.read("k")
    # Two operations, each bounded by its deadline; the slack covers a noisy machine.
    assert time.monotonic() - started < 2 * timeout + 1.5
    servers[0].resume()
    servers[1].resume()


async def test_bad_input_is_refused_before_any_replica_is_touched(
    redis_servers, quorum_store
) -> None:
    servers = redis_servers(3)
    store = await quorum_store([s.endpoint for s in servers], max_value_bytes=100)
    with pytest.raises(TooLarge):
        await store.write("k", rec(1, b"x" * 101))
    with pytest.raises(BadRequest):
        await store.write("bad\nkey", rec(1))
    with pytest.raises(ValueError, match="out of range"):
        await store.write("k", Record(Version(2**60, 0), False, b"1"))
    assert await copies(servers, "k") == [None, None, None]
    batch = await store.read_many(["ok", ""])
    assert batch.records == {"ok": None}
    assert isinstance(batch.errors[""], BadRequest)


async def misbehaving_server(mode: str) -> asyncio.Server:
    """A TCP listener that is not Redis: it answers garbage, or hangs up at once."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if mode == "garbage":
            await reader.read(1)
            writer.write(b"\x00\x01not-resp\r\n")
            await writer.drain()
        writer.close()

    return await asyncio.start_server(handle, "127.0.0.1", 0)


@pytest.mark.parametrize("mode", ["garbage", "hangup"])
async def test_a_replica_speaking_garbage_is_outvoted_and_corrupts_nothing(
    redis_servers, quorum_store, mode
) -> None:
    servers = redis_servers(2)
    bad = await misbehaving_server(mode)
    bad_addr = f"127.0.0.1:{bad.sockets[0].getsockname()[1]}"
    store = await quorum_store([servers[0].endpoint, bad_addr, servers[1].endpoint])
    for seq in range(1, 6):
        await store.write("k", rec(seq))
        assert await store.read("k") == rec(seq)
    assert await copies(servers, "k") == [rec(5), rec(5)]
    assert store.health()[1]["errors"] >= 1
    bad.close()


async def test_two_garbage_replicas_give_a_clear_error(redis_servers, quorum_store) -> None:
    (server,) = redis_servers(1)
    bad = [await misbehaving_server("garbage") for _ in range(2)]
    addrs = [f"127.0.0.1:{b.sockets[0].getsockname()[1]}" for b in bad]
    store = await quorum_store([server.endpoint, *addrs])
    with pytest.raises(WriteIndeterminate, match="1 of 3 replicas acknowledged"):
        await store.write("k", rec(1))
    with pytest.raises(StoreUnavailable, match="2 needed"):
        await store.read("k")
    for b in bad:
        b.close()


def test_a_store_needs_replicas() -> None:
    with pytest.raises(ValueError, match="at least one"):
        QuorumStore([], timeout=1)
