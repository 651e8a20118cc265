"""The node's read/write interleavings against a real store (no HTTP, no etcd).

Ownership is a stand-in for coordination that always grants it: these tests are about the
node's own bookkeeping (fills, writes, the cache), not about handoff.
"""

import asyncio

from cachegrid.localcache import LocalCache
from cachegrid.node import Node
from cachegrid.ring import Member, Ring
from cachegrid.store import QuorumStore, Replica


class AlwaysOwner:
    """An OwnerView for a single node that owns every key, with a fixed write epoch."""

    ring = Ring([Member("solo", "127.0.0.1:1")], epoch=1)
    write_epoch = 1

    def can_serve(self, key: str) -> bool:
        return True

    def lease_alive(self) -> bool:
        return True

    async def wait_active(self, key: str, hold: float) -> bool:
        return True


async def test_reads_racing_writes_never_fail_and_never_go_back(redis_servers) -> None:
    """Fills detached by writes overlap fills started after them; none may trip over
    another's bookkeeping, and a read that starts after a write completed sees it."""
    servers = redis_servers(3)
    store = QuorumStore([Replica(s.endpoint, timeout=2) for s in servers], timeout=2)
    node = Node("solo", AlwaysOwner(), store, LocalCache(10, 10_000), stale_check_every=0)
    for round_ in range(150):
        node.flush()  # every read below starts as a miss
        written = await asyncio.gather(
            node.get("k"), node.put("k", b"%d" % round_), node.get("k"), node.get("k")
        )
        entry, _ = await node.get("k")
        assert entry.version == written[1], f"round {round_}: read older than a completed write"
    assert node._fills == {}
    await store.close()


class LateReads:
    """A real store whose next read answers late: it reads now, but returns 50 ms later,
    as a slow replica round trip would. Only the read it is armed for is delayed."""

    def __init__(self, store: QuorumStore) -> None:
        self.store = store
        self.armed = False

    async def read(self, key):
        return await self._late(self.store.read(key))

    async def read_many(self, keys):  # the node's fills read in batches
        return await self._late(self.store.read_many(keys))

    async def _late(self, call):
        result = await call
        if self.armed:
            self.armed = False
            await asyncio.sleep(0.05)
        return result

    async def write(self, key, record):
        return await self.store.write(key, record)

    async def write_many(self, items):
        return await self.store.write_many(items)


async def test_a_fill_that_overlaps_a_write_never_caches_the_older_value(redis_servers) -> None:
    """A fill that starts while a write is under way reads the old value; it must not put it
    in the cache after the write completed (the next hit, or a CAS, would see the past)."""
    servers = redis_servers(3)
    store = QuorumStore([Replica(s.endpoint, timeout=2) for s in servers], timeout=2)
    late = LateReads(store)
    node = Node("solo", AlwaysOwner(), late, LocalCache(10, 10_000), stale_check_every=0)
    await node.put("k", b"1")
    for _ in range(20):
        node.flush()
        write = asyncio.create_task(node.put("k", b"2"))  # starts first: reads, then writes
        await asyncio.sleep(0)
        late.armed = True
        reader = asyncio.create_task(node.get("k"))  # its fill answers after the write
        version = await write
        await reader
        entry, _ = await node.get("k")
        assert entry.version == version, "the cache went back to an older version"
        late.armed = False
    await store.close()


async def test_a_fill_overlapping_a_write_is_not_cached_even_after_the_write_was_evicted(
    redis_servers,
) -> None:
    """The write's own entry guards the cache only while it stays there: once it is evicted,
    a slow fill that read the old value must still not cache it (the write invalidated it)."""
    servers = redis_servers(3)
    store = QuorumStore([Replica(s.endpoint, timeout=2) for s in servers], timeout=2)
    late = LateReads(store)
    node = Node("solo", AlwaysOwner(), late, LocalCache(1, 10_000), stale_check_every=0)
    await node.put("k", b"1")
    node.flush()
    late.armed = True
    reader = asyncio.create_task(node.get("k"))  # a miss: its fill reads "1", answers late
    await asyncio.sleep(0.02)
    version = await node.put("k", b"2")
    await node.put("other", b"0")  # a cache of one entry: "k" is evicted
    old, _ = await reader
    assert old.body.endswith(b',"value":1,"version":"1.1"}')  # concurrent: the old value is fine
    entry, _ = await node.get("k")
    assert entry.version == version, "a fill that overlapped the write cached the old value"
    await store.close()
