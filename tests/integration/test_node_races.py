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
