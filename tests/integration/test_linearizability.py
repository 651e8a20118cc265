"""Linearizability under faults: histories of concurrent clients, checked (issue 5).

Each scenario runs 8 clients against a cluster of real processes (3 nodes, 3 Redis
replicas, etcd) for 8 s while a fault plays out, heals, reads every key through every node,
and checks the whole history with the Wing-Gong-Lowe checker. Every scenario must have zero
violations, and every key must be readable again at the end. Run with ``-s`` to print the
report rows (docs/linearizability.md); set PROOF_TABLE=FILE to append them there.
"""

import asyncio
import os

import aiohttp
import pytest

from cachegrid.coord.etcd import Etcd
from cachegrid.servers import NodeProcess
from tests.integration.etcd_ops import clear_nospace, fill_past_quota
from tests.integration.faults import Relays, ScenarioResult, run_scenario
from tests.integration.netns import Netns

TTL = 2
pytestmark = pytest.mark.slow


def report(result: ScenarioResult) -> None:
    print(f"\n{result.row()}")
    if path := os.environ.get("PROOF_TABLE"):
        with open(path, "a") as table:
            table.write(result.row() + "\n")
    assert result.violations == [], "\n\n".join(result.violations[:3])
    assert result.outcomes.get("ok", 0) > 100, result.outcomes
    for kind in ("store_write", "forward_get"):
        assert result.shared_batches.get(kind, 0) > 0, f"{kind}: no batch of 2+ keys was checked"
    # The store's read path ran inside the checked history, not only cache hits.
    assert result.fills >= 500, f"only {result.fills} fills: the store's read path went unchecked"


async def start(fresh_cluster, **options):
    """A cluster whose caches hold one entry: each node owns about two of the 6 keys, so
    reads keep evicting each other and every scenario drives the store's read path (fills)."""
    options.setdefault("node_config", "cache_max_entries = 1\n")
    return await asyncio.to_thread(fresh_cluster, **options)


async def admin(cluster, path: str, body: dict) -> None:
    async with aiohttp.ClientSession() as http, http.post(
        f"{cluster.urls[0]}{path}", json=body,
        headers={"Authorization": f"Bearer {cluster.admin_token}"},
    ) as response:  # fmt: skip
        assert response.status == 200, await response.text()


async def test_no_faults(fresh_cluster) -> None:
    cluster = await start(fresh_cluster)

    async def nothing() -> None:
        return None

    report(await run_scenario("no faults", cluster.urls, nothing))


async def test_kill_9_a_node(fresh_cluster) -> None:
    cluster = await start(fresh_cluster)

    async def fault() -> None:
        cluster.nodes[2].kill()

    report(await run_scenario("kill -9 a node", cluster.urls, fault, final_urls=cluster.urls[:2]))


async def test_sigstop_a_node_past_its_lease(fresh_cluster) -> None:
    cluster = await start(fresh_cluster)

    async def fault() -> None:
        cluster.nodes[1].pause()
        await asyncio.sleep(TTL + 1.5)
        cluster.nodes[1].resume()

    report(await run_scenario("SIGSTOP a node past its lease", cluster.urls, fault))


async def test_kill_a_replica_and_restart_it_empty(fresh_cluster) -> None:
    cluster = await start(fresh_cluster)

    async def fault() -> None:
        cluster.redis[1].kill()
        await asyncio.sleep(1.0)
        cluster.redis[1].wipe()
        await asyncio.to_thread(cluster.redis[1].start)

    report(await run_scenario("replica killed, restarted empty", cluster.urls, fault))


async def test_restart_etcd(fresh_cluster) -> None:
    cluster = await start(fresh_cluster)

    async def fault() -> None:
        await asyncio.to_thread(cluster.etcd[0].stop)
        await asyncio.sleep(0.5)
        await asyncio.to_thread(cluster.etcd[0].start)

    report(await run_scenario("etcd restarted", cluster.urls, fault))


async def test_rebalance_and_drain_under_load(fresh_cluster) -> None:
    cluster = await start(fresh_cluster)

    async def fault() -> None:
        await admin(cluster, "/admin/rebalance", {"weights": {"node0": 3}})
        await admin(cluster, "/admin/drain", {"node": "node2"})

    report(await run_scenario("rebalance, then drain", cluster.urls, fault))


async def test_rolling_restart_of_every_node(fresh_cluster) -> None:
    cluster = await start(fresh_cluster)

    async def fault() -> None:
        for node in cluster.nodes:
            await asyncio.to_thread(node.stop)
            await asyncio.to_thread(node.start, 60)

    report(await run_scenario("rolling restart", cluster.urls, fault, duration=12.0))


async def test_a_node_cut_off_from_etcd_but_not_from_the_store(fresh_cluster) -> None:
    relays = Relays(
        asyncio.get_running_loop(), lambda node, service: (node, service) == (0, "etcd")
    )
    cluster = await start(fresh_cluster, via=relays.route)
    to_etcd = relays.by[(0, "etcd")]

    async def fault() -> None:
        to_etcd.partition()
        await asyncio.sleep(TTL + 2)
        to_etcd.heal()

    try:
        report(await run_scenario("node cut off from etcd", cluster.urls, fault))
    finally:
        await relays.close()


async def test_each_node_cut_off_from_a_different_replica(fresh_cluster) -> None:
    """Every node keeps a majority of the store, but not the same majority, and the
    majorities shift: node i loses replica i + shift, for shift 0, 1, 2, twice, then all heal.
    Caches are flushed and keys change owners meanwhile, so reads go to the store through
    different majorities; only intersection and write-back keep them linearizable."""
    relays = Relays(asyncio.get_running_loop(), lambda node, service: service != "etcd")
    cluster = await start(fresh_cluster, via=relays.route)

    def cut(shift: int) -> None:
        """Node i loses replica i + shift; every other relay is healed, which also resets
        its connections (clients reconnect), as a flapping network would."""
        for (node, service), proxy in relays.by.items():
            if service == f"redis{(node + shift) % 3}":
                proxy.partition()
            else:
                proxy.heal()

    async def fault() -> None:
        for phase in range(6):
            shift = phase % 3
            cut(shift)
            for _ in range(10):  # each flush makes the next read of every key a fill
                await admin(cluster, "/admin/flush", {"all": True})
                await asyncio.sleep(0.1)
            weights = {f"node{i}": 3 if i == shift else 1 for i in range(3)}
            await admin(cluster, "/admin/rebalance", {"weights": weights})
        for proxy in relays.by.values():
            proxy.heal()

    try:
        result = await run_scenario(
            "each node cut off from another replica", cluster.urls, fault, duration=14.0
        )
        report(result)
        # Flushes make fills: this scenario must also check fills that shared a store read.
        assert result.shared_batches.get("store_read", 0) > 0, result.shared_batches
    finally:
        await relays.close()


async def test_a_second_process_with_a_live_node_id_never_serves(fresh_cluster, ports) -> None:
    """A replacement started before the old process died (same id, same config, another
    port): while the original holds the id the duplicate serves nothing; it is stopped and
    started again; then the original is killed, and the duplicate takes the id over once
    the original's lease is gone. Clients send to every URL throughout."""
    cluster = await start(fresh_cluster)
    duplicate = NodeProcess(cluster.config.parent / "duplicate", "node1", ports.take(),
                            cluster.config)  # fmt: skip

    async def fault() -> None:
        duplicate.spawn()
        await asyncio.sleep(2.5)
        await asyncio.to_thread(duplicate.stop)
        duplicate.spawn()
        await asyncio.sleep(1.5)
        cluster.nodes[1].kill()
        await asyncio.to_thread(duplicate.wait_ready, 20)

    urls = [*cluster.urls, duplicate.url]
    final = [cluster.urls[0], cluster.urls[2], duplicate.url]
    try:
        result = await run_scenario("duplicate node id", urls, fault, duration=10.0,
                                    final_urls=final)  # fmt: skip
        report(result)
    finally:
        await asyncio.to_thread(duplicate.stop)


async def test_a_wiped_replica_while_another_lags_over_hundreds_of_keys(fresh_cluster) -> None:
    """Durability through the nodes: 300 keys and caches of 50 entries, so most reads go
    to the store. Replica 0 is frozen (it lags), replica 1 is killed and restarted empty
    meanwhile, then replica 0 thaws: {0, 1} is a majority that misses the writes of the
    freeze until the store has repaired replica 1 and caught replica 0 up — and replica 2,
    which holds them, is frozen for that second. Then the same with other roles. Every
    key is read through every node at the end: a lost acknowledged write is a violation."""
    cluster = await start(fresh_cluster, node_config="cache_max_entries = 50\n")

    async def cycle(laggard: int, victim: int, holder: int) -> None:
        cluster.redis[laggard].pause()
        await asyncio.sleep(1.5)
        cluster.redis[victim].kill()
        cluster.redis[victim].wipe()
        await asyncio.to_thread(cluster.redis[victim].start)
        await asyncio.sleep(0.5)
        # The only replica that holds every write of the freeze pauses as the laggard
        # thaws: for a second {laggard, victim} answer alone. Flushes send reads to them.
        cluster.redis[holder].pause()
        cluster.redis[laggard].resume()
        for _ in range(4):
            await admin(cluster, "/admin/flush", {"all": True})
            await asyncio.sleep(0.25)
        cluster.redis[holder].resume()
        for _ in range(3):
            await admin(cluster, "/admin/flush", {"all": True})
            await asyncio.sleep(0.3)

    async def fault() -> None:
        await cycle(laggard=0, victim=1, holder=2)
        await asyncio.sleep(1.0)  # the store repairs replica 1 by itself meanwhile
        await cycle(laggard=2, victim=0, holder=1)

    keys = [f"dur-{i:03d}" for i in range(300)]
    result = await run_scenario("replicas wiped while another lags, 300 keys", cluster.urls,
                                fault, duration=14.0, keys=keys)  # fmt: skip
    report(result)
    assert result.shared_batches.get("store_read", 0) > 100, result.shared_batches


async def test_a_node_partitioned_by_the_kernel_from_etcd_and_a_replica(fresh_cluster) -> None:
    """A real network partition: node0 runs in a network namespace of the test's own and
    reaches the host over a veth pair. The kernel drops what it sends to etcd and to
    replica 0 for TTL + 2 s, while clients (and the other nodes) still reach it; then the
    partition heals. node0 must stop serving at its local deadline, the others take its
    keys, and it comes back as a new incarnation."""
    cluster = await start(fresh_cluster, netns=Netns(0))
    assert cluster.netns is not None
    ports = [cluster.etcd[0].client_port, cluster.redis[0].port]

    async def fault() -> None:
        await asyncio.to_thread(cluster.netns.cut, ports)  # type: ignore[union-attr]
        await asyncio.sleep(TTL + 2)
        await asyncio.to_thread(cluster.netns.heal)  # type: ignore[union-attr]

    report(await run_scenario("node partitioned (netns) from etcd and a replica",
                              cluster.urls, fault, duration=10.0))  # fmt: skip


async def test_etcd_compacted_under_load_then_out_of_space_and_cleared(fresh_cluster) -> None:
    """etcd's history is compacted to its newest revision three times under load (every
    watch from before must re-snapshot), then etcd fills past its 16 MiB quota (NOSPACE:
    acks fail) and an operator clears it. No node may wedge: every key is read through
    every node at the end, and the history is checked."""
    cluster = await start(fresh_cluster, etcd_args=("--quota-backend-bytes", str(16 << 20)))
    endpoint = cluster.etcd[0].endpoint
    etcd = Etcd([endpoint])

    async def fault() -> None:
        for _ in range(3):
            revision, _ = await etcd.get(b"/cachegrid/")
            await etcd.compact(revision)
            await admin(cluster, "/admin/flush", {"all": True})  # a record after the compaction
            await asyncio.sleep(0.7)
        written = await fill_past_quota(etcd)
        await asyncio.sleep(2.0)
        await clear_nospace(etcd, endpoint, written)

    try:
        report(await run_scenario("etcd compacted, then out of space and cleared",
                                  cluster.urls, fault, duration=12.0))  # fmt: skip
    finally:
        await etcd.close()


async def test_rebalances_while_fills_are_in_flight(fresh_cluster) -> None:
    """Small caches and flushes make most reads fills; rebalances move keys away and back
    while they are in flight (a fill of one activation must answer no reader of the next)."""
    cluster = await start(fresh_cluster, node_config="cache_max_entries = 50\n")

    async def fault() -> None:
        for step in range(6):
            await admin(cluster, "/admin/flush", {"all": True})
            weights = {f"node{i}": 3 if i == step % 3 else 1 for i in range(3)}
            await admin(cluster, "/admin/rebalance", {"weights": weights})

    keys = [f"reb-{i:03d}" for i in range(100)]
    result = await run_scenario("rebalances while fills are in flight", cluster.urls, fault,
                                duration=10.0, keys=keys)  # fmt: skip
    report(result)
    assert result.shared_batches.get("store_read", 0) > 100, result.shared_batches
