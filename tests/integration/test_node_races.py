"""The node's read/write interleavings against a real store (no HTTP, no etcd).

Ownership is a stand-in for coordination (it always grants it, or the test moves it away and
back as two ring changes would): these tests are about the node's own bookkeeping (fills,
writes, the cache). Races are made deterministic by gates in a store wrapper around a real
store: a held read or write waits until the test releases it.
"""

import asyncio

from cachegrid.localcache import LocalCache, entry_body, entry_version
from cachegrid.ring import Member, Ring
from cachegrid.serving.owner import Node
from cachegrid.store import QuorumStore, Record, Replica
from cachegrid.version import Version


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


class HeldReads:
    """A real store whose reads, once armed, read at once but answer only when released:
    a slow replica round trip held open, deterministically, across ring changes."""

    def __init__(self, store: QuorumStore) -> None:
        self.store = store
        self.gate: asyncio.Event | None = None
        self.reading = asyncio.Event()  # set once an armed read has read

    async def read(self, key):
        return await self.store.read(key)

    async def read_many(self, keys):
        result = await self.store.read_many(keys)
        if self.gate is not None:
            gate, self.gate = self.gate, None
            self.reading.set()
            await gate.wait()
        return result

    async def write(self, key, record):
        return await self.store.write(key, record)

    async def write_many(self, items):
        return await self.store.write_many(items)


class HeldWrites(HeldReads):
    """A real store whose next write, once armed, is held after it reached the replicas."""

    def __init__(self, store: QuorumStore) -> None:
        super().__init__(store)
        self.write_gate: asyncio.Event | None = None
        self.writing = asyncio.Event()

    async def write_many(self, items):
        result = await self.store.write_many(items)
        if self.write_gate is not None:
            gate, self.write_gate = self.write_gate, None
            self.writing.set()
            await gate.wait()
        return result


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
        assert entry_version(entry) == written[1], (
            f"round {round_}: read older than a completed write"
        )
    assert node._fills == {}
    await store.close()


async def test_a_fill_that_overlaps_a_write_never_caches_the_older_value(redis_servers) -> None:
    """A fill reads the old value and is held there (an explicit gate, not a timing guess);
    a write then runs and completes; only then does the fill end. It must not put the old
    value in the cache (the next hit, or a CAS, would see the past)."""
    servers = redis_servers(3)
    store = QuorumStore([Replica(s.endpoint, timeout=2) for s in servers], timeout=2)
    held = HeldReads(store)
    node = Node("solo", AlwaysOwner(), held, LocalCache(10, 10_000), stale_check_every=0)
    await node.put("k", b"1")
    for _ in range(5):
        node.flush()
        gate = held.gate = asyncio.Event()
        held.reading.clear()
        reader = asyncio.create_task(node.get("k"))
        await held.reading.wait()  # the fill has read the old value, and waits
        version = await node.put("k", b"2")  # the whole write, inside the fill
        gate.set()
        await reader  # concurrent with the write: either value is a fine answer
        entry, hit = await node.get("k")
        assert (entry_version(entry), hit) == (version, True), (
            "the cache went back to an older version"
        )
    await store.close()


async def test_a_fill_overlapping_a_write_is_not_cached_even_after_the_write_was_evicted(
    redis_servers,
) -> None:
    """The write's own entry guards the cache only while it stays there: once it is evicted,
    a slow fill that read the old value must still not cache it (the write invalidated it)."""
    servers = redis_servers(3)
    store = QuorumStore([Replica(s.endpoint, timeout=2) for s in servers], timeout=2)
    held = HeldReads(store)
    node = Node("solo", AlwaysOwner(), held, LocalCache(1, 10_000), stale_check_every=0)
    await node.put("k", b"1")
    node.flush()
    gate = held.gate = asyncio.Event()
    reader = asyncio.create_task(node.get("k"))  # a miss: its fill reads "1", and is held
    await held.reading.wait()
    version = await node.put("k", b"2")
    await node.put("other", b"0")  # a cache of one entry: "k" is evicted
    gate.set()
    old, _ = await reader
    assert entry_body(old).endswith(
        b',"value":1,"version":"1.1"}'
    )  # concurrent: the old value is fine
    entry, _ = await node.get("k")
    assert entry_version(entry) == version, "a fill that overlapped the write cached the old value"
    await store.close()


class MovableOwner(AlwaysOwner):
    """An OwnerView whose ownership of every key the test moves away and back, as two
    ring changes would; each activation has its own write epoch."""

    def __init__(self) -> None:
        self.serving = True
        self.write_epoch = 1

    def can_serve(self, key: str) -> bool:
        return self.serving


async def test_a_fill_from_before_a_handoff_answers_no_reader_after_the_key_came_back(
    redis_servers,
) -> None:
    """A fill reads v1 and is held. The key moves away (release), another owner writes v2,
    the key comes back (a new activation). A reader arriving now must see v2: it may not
    join the old fill, and the old fill may neither answer it nor cache v1."""
    servers = redis_servers(3)
    store = QuorumStore([Replica(s.endpoint, timeout=2) for s in servers], timeout=2)
    held = HeldReads(store)
    owner = MovableOwner()
    node = Node("solo", owner, held, LocalCache(10, 10_000), stale_check_every=0)
    await node.put("k", b"1")
    node.flush()
    gate = held.gate = asyncio.Event()
    early = asyncio.create_task(node.get("k"))  # its fill reads v1, then is held
    await held.reading.wait()
    owner.serving = False  # ring change 1: the key moves away
    await node.release(drop_all=False)
    newer = Record(Version(2, 1), False, b"2")  # the other owner's write, acknowledged
    assert await store.write("k", newer) == newer.version
    owner.serving, owner.write_epoch = True, 3  # ring change 2: back, a new activation
    late, _ = await asyncio.wait_for(node.get("k"), 5)
    assert entry_version(late) == newer.version, "a reader after the write saw the older fill"
    gate.set()
    await early  # whatever it answers, it was concurrent with the write
    entry, _ = await node.get("k")
    assert entry_version(entry) == newer.version, "the old fill cached v1 after the key came back"
    await store.close()


async def test_a_fill_that_runs_inside_a_write_inserts_nothing(redis_servers) -> None:
    """A fill that begins after a write started and completes before it ended may answer
    its reader (they are concurrent), but must not put what it read in the cache: only
    the write decides what the cache holds once it ends."""
    servers = redis_servers(3)
    store = QuorumStore([Replica(s.endpoint, timeout=2) for s in servers], timeout=2)
    held = HeldWrites(store)
    node = Node("solo", AlwaysOwner(), held, LocalCache(10, 10_000), stale_check_every=0)
    await node.put("k", b"1")
    node.flush()
    gate = held.write_gate = asyncio.Event()
    write = asyncio.create_task(node.put("k", b"2"))
    await held.writing.wait()  # the write is in the store, not yet acknowledged
    await node.get("k")  # a whole fill inside the write
    assert node.cache.get("k") is None, "a fill inside a write cached what it read"
    gate.set()
    version = await write
    entry, hit = await node.get("k")
    assert (entry_version(entry), hit) == (version, True)
    await store.close()
