"""Linearizability under faults: histories of concurrent clients, checked (issue 5).

Each scenario runs 8 clients against a cluster of real processes (3 nodes, 3 Redis
replicas, etcd) while a fault plays out, heals, reads every key through every node, and
checks the whole history with the Wing-Gong-Lowe checker. Every scenario must have zero
violations, every key must be readable again at the end, and every scenario shows its
evidence (scenario.py): its fault's steps inside the workload, the effect the fault had,
enough definite ops, fills and store reads, and the availability the design promises.
Run with ``-s`` to print the report rows (docs/linearizability.md); set PROOF_TABLE=FILE to
append them there.
"""

import asyncio
import itertools
import os
import time

import pytest

from cachegrid.coord.etcd import Etcd
from cachegrid.ring import Member, Ring
from tests.integration.etcd_ops import clear_nospace, fill_past_quota
from tests.integration.faults import Abuser, Relays
from tests.integration.netns import Netns
from tests.integration.scenario import Events, ScenarioResult, run_scenario
from tests.processes import FaultyNode
from tests.proof import connect
from tests.proof.history import FAILED, OK, READ
from tests.proof.recorder import Recorder

TTL = 2
# A lost owner's keys wait for its lease (TTL, plus the margin) and one ring change.
TAKEOVER = TTL + 2.0
# When a node stops answering, every client may at once be waiting on it for its whole
# timeout: then nobody succeeds for that long, whatever the cluster does (seen in CI at
# 3.0 s). The design's bound is the per-key takeover (TAKEOVER), checked apart.
STUCK = Recorder.timeout + 1.0
pytestmark = pytest.mark.slow


def report(result: ScenarioResult) -> None:
    assert result.violations == [], "\n\n".join(result.violations[:3])
    for kind in ("store_write", "forward_get"):
        assert result.shared_batches.get(kind, 0) > 0, f"{kind}: no batch of 2+ keys was checked"
    # The store's read path ran inside the checked history, not only cache hits.
    result.require(result.fills >= 500 and result.store_reads >= 500,
                   f"{result.fills} fills, {result.store_reads} store reads")  # fmt: skip
    # Read leases were in play, also while the fault ran: copies served and checked, and
    # writes that had copies dropped first. (As a share of the reads answered: a count of
    # hits in a fixed time scales with the machine's speed, which moves 3x from day to day
    # on this shared one; the same code gave 350 to 950 in 8 s on a slow day. About a
    # third of reads reach a key's owner, which holds no copies of its own keys.)
    during = result.replica_hits_during_fault()
    waits = result.lease_waits
    reads = sum(op.kind == READ and op.outcome == OK for op in result.history)
    result.require(result.replica_hits >= max(200, 0.15 * reads) and during > 0
                   and waits["acked"] > 0,
                   f"{result.replica_hits} replica hits of {reads} reads answered "
                   f"({during} during the fault), {waits['acked']} writes waited for "
                   "holders' acks")  # fmt: skip
    print(f"\n{result.row()}")
    if path := os.environ.get("PROOF_TABLE"):
        with open(path, "a") as table:
            table.write(result.row() + "\n")


def lease_takeover(result: ScenarioResult, survivors: list[str], unserved: float = 0.5) -> None:
    """The lost owner's keys moved: some key went unanswered by the survivors for at least
    ``unserved`` seconds while its lease ran out (more than the 0.2 s between two probes),
    then another node served it within TAKEOVER. Measured by the prober (scenario.py), not
    by the clients: they may all sit on a paused node for their 3 s timeout, which says
    nothing of the cluster. A node cut off from etcd serves until its own deadline, so its
    keys go unanswered only from then until etcd expires its lease and another activates:
    ``unserved`` 0.3 s (one round of probes missed at least)."""
    gap = result.key_gap(survivors)
    result.require(unserved <= gap <= TAKEOVER,
                   f"its keys served elsewhere after {gap:.2f} s (≤ {TAKEOVER} s)")  # fmt: skip
    ring_moved(result, survivors[0], at_least=1)


def ring_moved(result: ScenarioResult, url: str, at_least: int) -> None:
    """The ring changed at least ``at_least`` times while the workload ran, as ``url`` saw."""
    epochs = [value for _, value in result.sampler.series("cachegrid_ring_epoch", url)]
    result.require(bool(epochs) and max(epochs) - min(epochs) >= at_least,
                   f"ring epoch {min(epochs):.0f} → {max(epochs):.0f}")  # fmt: skip


def served_again(result: ScenarioResult, url: str, after: float, who: str = "it") -> None:
    """The node that lost its lease serves again once healed (a new incarnation)."""
    ok = len(result.ops(url=url, outcome=OK, after=after))
    result.require(ok > 0, f"{ok} ok ops through {who} after healing")


class HeldKey:
    """A key outside the checked history that the node a fault hits holds a read-lease copy
    of when the fault strikes (kept hot through it until then); written through its owner
    right after, that write must wait the lease out (the node can acknowledge nothing):
    the fault bit the read leases. ``hold`` before the scenario, ``write`` in the fault."""

    def __init__(self, cluster, victim: int) -> None:
        self.cluster, self.victim = cluster, victim
        self.waited = 0.0
        self._reading: asyncio.Task[None] | None = None

    async def hold(self) -> None:
        """Pick a key the victim does not own, and read it through the victim (in the
        background, until ``write``) until a replica hit answers."""
        held = asyncio.Event()
        async with connect.session() as http:
            async with http.get(f"{self.cluster.urls[0]}/v1/ring") as response:
                ring = Ring.from_description(await response.json())
            victim = f"node{self.victim}"
            self.key = next(k for k in (f"held-{i}" for i in range(1000))
                            if ring.owner(k) != victim)  # fmt: skip
            self.owner = self.cluster.urls[int(ring.owner(self.key).removeprefix("node"))]
            async with http.put(f"{self.owner}/v1/kv/{self.key}", json={"value": 0}) as response:
                assert response.status == 200, await response.text()
        self._reading = asyncio.create_task(self._keep_hot(held))
        await asyncio.wait_for(held.wait(), 20)

    async def _keep_hot(self, held: asyncio.Event) -> None:
        url = f"{self.cluster.urls[self.victim]}/v1/kv/{self.key}"
        async with connect.session() as http:
            while True:
                async with http.get(url) as response:
                    if response.headers.get("X-Cache") == "replica":
                        held.set()
                await asyncio.sleep(0.005)

    async def write(self) -> None:
        """Stop reading; write the key through its owner (``waited``: how long it took)."""
        assert self._reading is not None
        self._reading.cancel()
        await asyncio.gather(self._reading, return_exceptions=True)
        started = time.monotonic()
        async with connect.session() as http, http.put(
            f"{self.owner}/v1/kv/{self.key}", json={"value": 1}
        ) as response:  # fmt: skip
            assert response.status == 200, await response.text()
        self.waited = time.monotonic() - started


def holder_waited_out(result: ScenarioResult, held: HeldKey) -> None:
    """The lost node held read-lease copies: a write had to wait for its lease to run out
    (it could acknowledge nothing), and no read went back in time meanwhile."""
    expired = result.lease_waits["expired"]
    result.require(expired > 0, f"{expired} writes waited out its read leases (one of "
                   f"a key it held: {held.waited:.2f} s)")  # fmt: skip


def lease_lapsed(result: ScenarioResult, url: str) -> None:
    slack = [value for _, value in result.sampler.series("cachegrid_lease_slack_seconds", url)]
    result.require(bool(slack) and min(slack) <= 0, "its lease lapsed (slack sampled ≤ 0)")


# Read leases on, for keys read 5 times a second through a node, however often written.
LEASES = "read_lease_threshold = 5\nread_lease_max_write_rate = 0\n"


async def start(fresh_cluster, **options):
    """A cluster whose caches hold one entry: each node owns about two of the 6 keys, so
    reads keep evicting each other and every scenario drives the store's read path (fills).
    Read leases are on: the read-mostly keys are copied to every node."""
    options.setdefault("node_config", "cache_max_entries = 1\n" + LEASES)
    return await asyncio.to_thread(fresh_cluster, **options)


async def admin(cluster, path: str, body: dict) -> None:
    async with connect.session() as http, http.post(
        f"{cluster.urls[0]}{path}", json=body,
        headers={"Authorization": f"Bearer {cluster.admin_token}"},
    ) as response:  # fmt: skip
        assert response.status == 200, await response.text()


async def admin_status(cluster, url: str) -> dict:
    async with connect.session() as http, http.get(
        f"{url}/admin/status", headers={"Authorization": f"Bearer {cluster.admin_token}"},
    ) as response:  # fmt: skip
        assert response.status == 200, await response.text()
        return await response.json()


async def test_no_faults(fresh_cluster) -> None:
    await no_faults(await start(fresh_cluster), "no faults")


async def test_no_faults_in_secure_mode(fresh_cluster) -> None:
    """The same over HTTPS, with a write token, the store over TLS with its ACL user and
    etcd over TLS with client certificates (cachegrid up --secure)."""
    cluster = await start(fresh_cluster, secure=True)
    with connect.secured(str(cluster.secure.ca), cluster.secure.tokens["write"]):
        await no_faults(cluster, "no faults, secure mode", duration=12.0)


async def no_faults(cluster, name: str, duration: float = 8.0) -> None:
    async def steady(events: Events) -> None:
        events.mark("nothing")

    result = await run_scenario(name, cluster.urls, steady, duration=duration)
    result.require_load(availability=1.0, longest_gap=0.5)
    result.require(result.outcomes.get(FAILED, 0) == 0, "no op failed")
    # Writes raced renewals: grants that arrived after a drop record were refused.
    result.require(result.withdrawn > 0, f"{result.withdrawn} grants withdrawn by a write")
    report(result)


async def test_kill_9_a_node(fresh_cluster) -> None:
    await kill_9_a_node(await start(fresh_cluster), "kill -9 a node")


async def test_kill_9_a_node_in_secure_mode(fresh_cluster) -> None:
    cluster = await start(fresh_cluster, secure=True)
    with connect.secured(str(cluster.secure.ca), cluster.secure.tokens["write"]):
        # TLS costs CPU: the same evidence takes longer to gather on this 2-core machine.
        await kill_9_a_node(cluster, "kill -9 a node, secure mode", duration=12.0)


async def kill_9_a_node(cluster, name: str, duration: float = 8.0) -> None:
    held = HeldKey(cluster, 2)
    await held.hold()

    async def fault(events: Events) -> None:
        cluster.nodes[2].kill()
        events.mark("kill -9 node2")
        await held.write()

    survivors = cluster.urls[:2]
    result = await run_scenario(name, cluster.urls, fault, final_urls=survivors,
                                duration=duration)  # fmt: skip
    result.require_load(availability=0.99, longest_gap=1.0)
    lease_takeover(result, survivors)
    holder_waited_out(result, held)
    # Its copies of others' keys were waited out; others' copies of its own keys lived on
    # until their leases ended, and were answered (and checked) after it died.
    dead = result.events.at("kill -9 node2")
    ring = Ring([Member(f"node{i}", "") for i in range(3)])
    orphans = [op for op in result.ops(outcome=OK, after=dead, before=dead + 1.0)
               if op.cache == "replica" and ring.owner(op.key) == "node2"]  # fmt: skip
    result.require(len(orphans) > 0, f"{len(orphans)} replica hits of its keys in the "
                   "second after it died")  # fmt: skip
    refused = result.ops(
        url=cluster.urls[2], outcome=FAILED, after=result.events.at("kill -9 node2")
    )
    result.require(len(refused) > 0 and not result.ops(
        url=cluster.urls[2], outcome=OK, after=result.events.at("kill -9 node2") + 0.1),
        f"the dead node answered nothing ({len(refused)} refused)")  # fmt: skip
    report(result)


async def test_sigstop_a_node_past_its_lease(fresh_cluster) -> None:
    cluster = await start(fresh_cluster)

    held = HeldKey(cluster, 1)
    await held.hold()

    async def fault(events: Events) -> None:
        cluster.nodes[1].pause()
        events.mark("SIGSTOP node1")
        await held.write()  # waits out the paused holder's lease
        await asyncio.sleep(TTL + 1.5 - held.waited)
        cluster.nodes[1].resume()
        events.mark("SIGCONT node1")

    result = await run_scenario("SIGSTOP a node past its lease", cluster.urls, fault)
    result.require_load(availability=0.99, longest_gap=STUCK)
    lease_takeover(result, [cluster.urls[0], cluster.urls[2]])
    holder_waited_out(result, held)
    served_again(result, cluster.urls[1], result.events.at("SIGCONT node1"))
    report(result)


async def test_kill_a_replica_and_restart_it_empty(fresh_cluster) -> None:
    cluster = await start(fresh_cluster)

    async def fault(events: Events) -> None:
        cluster.redis[1].kill()
        events.mark("kill replica 1")
        await asyncio.sleep(1.0)
        cluster.redis[1].wipe()
        await asyncio.to_thread(cluster.redis[1].start)
        events.mark("replica 1 restarted empty")

    result = await run_scenario("replica killed, restarted empty", cluster.urls, fault)
    # A majority of replicas stays up throughout: the store never stops.
    result.require_load(availability=0.99, longest_gap=1.0)
    up = [value for _, value in result.sampler.series("cachegrid_store_replicas_up")]
    result.require(min(up) < 3, f"the replica counted down (up fell to {min(up):.0f})")
    copies = [max(v for _, v in result.sampler.series("cachegrid_store_repair_copies", url))
              for url in cluster.urls]  # fmt: skip
    result.require(sum(copies) > 0, f"{sum(copies):.0f} records copied to repair it")
    statuses = [await admin_status(cluster, url) for url in cluster.urls]
    back = [all(r["trust"] == "trusted" for r in s["replicas"]) for s in statuses]
    result.require(all(back), "every replica trusted again at the end")
    report(result)


async def test_restart_etcd(fresh_cluster) -> None:
    cluster = await start(fresh_cluster)

    async def fault(events: Events) -> None:
        await asyncio.to_thread(cluster.etcd[0].stop)
        events.mark("etcd stopped")
        await asyncio.sleep(0.5)
        await asyncio.to_thread(cluster.etcd[0].start)
        events.mark("etcd started")

    result = await run_scenario("etcd restarted", cluster.urls, fault)
    # No etcd round trip is on the data path. But a stop, the pause and a start can
    # outlast TTL - margin since the last keep-alive (a loaded machine: seen in CI), and
    # then leases lapse as designed: keys move, writes in flight at the deadline are 504.
    result.require_load(availability=0.99, longest_gap=STUCK)
    down, up = result.events.at("etcd stopped"), result.events.at("etcd started")
    writes = [op for op in result.ops(outcome=OK, after=down, before=up) if op.kind != "read"]
    result.require(len(writes) > 0, f"{len(writes)} writes acked while etcd was down")
    report(result)


async def test_rebalance_and_drain_under_load(fresh_cluster) -> None:
    cluster = await start(fresh_cluster)

    async def fault(events: Events) -> None:
        await admin(cluster, "/admin/rebalance", {"weights": {"node0": 3}})
        events.mark("rebalanced")
        await admin(cluster, "/admin/drain", {"node": "node2"})
        events.mark("node2 drained")

    result = await run_scenario("rebalance, then drain", cluster.urls, fault)
    result.require_load(availability=0.99, longest_gap=1.0)
    ring = (await admin_status(cluster, cluster.urls[0]))["weights"]
    result.require(ring.get("node0") == 3 and ring.get("node2", 0) == 0,
                   f"weights at the end {ring}")  # fmt: skip
    epochs = [v for _, v in result.sampler.series("cachegrid_ring_epoch", cluster.urls[0])]
    result.require(
        max(epochs) - min(epochs) >= 2, f"ring epoch {min(epochs):.0f} → {max(epochs):.0f}"
    )
    report(result)


async def test_rolling_restart_of_every_node(fresh_cluster) -> None:
    cluster = await start(fresh_cluster)

    async def fault(events: Events) -> None:
        for index, node in enumerate(cluster.nodes):
            await asyncio.to_thread(node.stop)
            events.mark(f"node{index} stopped")
            await asyncio.to_thread(node.start, 20)
            events.mark(f"node{index} ready")

    result = await run_scenario("rolling restart", cluster.urls, fault, duration=14.0)
    result.require_load(availability=0.99, longest_gap=1.0)
    for index, url in enumerate(cluster.urls):
        ready = result.events.at(f"node{index} ready")
        served_again(result, url, ready, who=f"node{index}")
    report(result)


async def test_a_node_cut_off_from_etcd_but_not_from_the_store(fresh_cluster) -> None:
    relays = Relays(
        asyncio.get_running_loop(), lambda node, service: (node, service) == (0, "etcd")
    )
    cluster = await start(fresh_cluster, via=relays.route)
    to_etcd = relays.by[(0, "etcd")]

    held = HeldKey(cluster, 0)
    await held.hold()

    async def fault(events: Events) -> None:
        to_etcd.partition()
        events.mark("node0 cut off from etcd")
        await held.write()
        await asyncio.sleep(TTL + 2 - held.waited)
        to_etcd.heal()
        events.mark("healed")

    try:
        result = await run_scenario("node cut off from etcd", cluster.urls, fault)
        result.require_load(availability=0.99, longest_gap=STUCK)
        lease_lapsed(result, cluster.urls[0])
        lease_takeover(result, cluster.urls[1:], unserved=0.3)
        holder_waited_out(result, held)
        served_again(result, cluster.urls[0], result.events.at("healed"))
        report(result)
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

    async def fault(events: Events) -> None:
        for phase in range(6):
            shift = phase % 3
            cut(shift)
            events.mark(f"phase {phase}")
            for _ in range(6):  # each flush makes the next read of every key a fill
                await admin(cluster, "/admin/flush", {"all": True})
                await asyncio.sleep(0.1)
            weights = {f"node{i}": 3 if i == shift else 1 for i in range(3)}
            await admin(cluster, "/admin/rebalance", {"weights": weights})
        for proxy in relays.by.values():
            proxy.heal()
        events.mark("healed")

    try:
        result = await run_scenario(
            "each node cut off from another replica", cluster.urls, fault, duration=14.0
        )
        result.require_load(availability=0.99, longest_gap=1.0)
        # Every node kept serving, through its own majority, in every phase.
        marks = [t for t, _ in result.events.marks]
        served = min(len(result.ops(url=url, outcome=OK, after=a, before=b))
                     for a, b in itertools.pairwise(marks) for url in cluster.urls)  # fmt: skip
        result.require(served > 0, f"every node served ≥ {served} ops in every phase")
        up = [v for _, v in result.sampler.series("cachegrid_store_replicas_up")]
        result.require(min(up) < 3, f"replicas up fell to {min(up):.0f} at a node")
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
    duplicate = FaultyNode(cluster.config.parent / "duplicate", "node1", ports.take(),
                            cluster.config)  # fmt: skip

    async def fault(events: Events) -> None:
        duplicate.spawn()
        events.mark("duplicate started")
        await asyncio.sleep(2.5)
        await asyncio.to_thread(duplicate.stop)
        duplicate.spawn()
        events.mark("duplicate restarted")
        await asyncio.sleep(1.5)
        cluster.nodes[1].kill()
        events.mark("original killed")
        await asyncio.to_thread(duplicate.wait_ready, 20)
        events.mark("duplicate ready")

    urls = [*cluster.urls, duplicate.url]
    final = [cluster.urls[0], cluster.urls[2], duplicate.url]
    try:
        result = await run_scenario("duplicate node id", urls, fault, duration=12.0,
                                    final_urls=final)  # fmt: skip
        result.require_load(availability=0.99, longest_gap=1.0)
        killed = result.events.at("original killed")
        early = result.ops(url=duplicate.url, before=killed)
        result.require(
            bool(early) and not [op for op in early if op.outcome == OK],
            f"the duplicate served none of {len(early)} ops while the original lived",
        )
        ready = result.events.at("duplicate ready")
        result.require(ready - killed <= 10.0,
                       f"the duplicate took the id over {ready - killed:.1f} s after")  # fmt: skip
        served_again(result, duplicate.url, ready, who="the duplicate")
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
    cluster = await start(fresh_cluster, node_config="cache_max_entries = 50\n" + LEASES)

    async def cycle(events: Events, laggard: int, victim: int, holder: int) -> None:
        cluster.redis[laggard].pause()
        events.mark(f"replica {laggard} frozen")
        await asyncio.sleep(1.5)
        cluster.redis[victim].kill()
        cluster.redis[victim].wipe()
        await asyncio.to_thread(cluster.redis[victim].start)
        events.mark(f"replica {victim} restarted empty")
        await asyncio.sleep(0.5)
        # The only replica that holds every write of the freeze pauses as the laggard
        # thaws: for a second {laggard, victim} answer alone. Flushes send reads to them.
        cluster.redis[holder].pause()
        cluster.redis[laggard].resume()
        events.mark(f"replica {holder} frozen, {laggard} thawed")
        for _ in range(4):
            await admin(cluster, "/admin/flush", {"all": True})
            await asyncio.sleep(0.25)
        cluster.redis[holder].resume()
        events.mark(f"replica {holder} thawed")
        for _ in range(3):
            await admin(cluster, "/admin/flush", {"all": True})
            await asyncio.sleep(0.3)

    async def fault(events: Events) -> None:
        await cycle(events, laggard=0, victim=1, holder=2)
        await asyncio.sleep(1.0)  # the store repairs replica 1 by itself meanwhile
        await cycle(events, laggard=2, victim=0, holder=1)

    keys = [f"dur-{i:03d}" for i in range(300)]
    result = await run_scenario("replicas wiped while another lags, 300 keys", cluster.urls,
                                fault, duration=14.0, keys=keys)  # fmt: skip
    # While the holder is frozen and the other two are in doubt, reads wait for repair.
    result.require_load(availability=0.99, longest_gap=2.0)
    trusted = [v for _, v in result.sampler.series("cachegrid_store_replicas_trusted")]
    result.require(
        min(trusted) <= 2, f"a wiped replica in doubt (trusted fell to {min(trusted):.0f})"
    )
    copies = sum(max((v for _, v in result.sampler.series("cachegrid_store_repair_copies", url)),
                     default=0) for url in cluster.urls)  # fmt: skip
    result.require(copies >= 100, f"{copies:.0f} records copied by repair")
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

    async def fault(events: Events) -> None:
        await asyncio.to_thread(cluster.netns.cut, ports)  # type: ignore[union-attr]
        events.mark("node0 partitioned")
        await asyncio.sleep(TTL + 2)
        await asyncio.to_thread(cluster.netns.heal)  # type: ignore[union-attr]
        events.mark("healed")

    result = await run_scenario("node partitioned (netns) from etcd and a replica",
                                cluster.urls, fault, duration=10.0)  # fmt: skip
    result.require_load(availability=0.99, longest_gap=STUCK)
    lease_lapsed(result, cluster.urls[0])
    lease_takeover(result, cluster.urls[1:], unserved=0.3)
    served_again(result, cluster.urls[0], result.events.at("healed"))
    report(result)


async def test_etcd_compacted_under_load_then_out_of_space_and_cleared(fresh_cluster) -> None:
    """etcd's history is compacted to its newest revision three times under load (every
    watch from before must re-snapshot), then etcd fills past its 16 MiB quota (NOSPACE:
    acks fail) and an operator clears it. No node may wedge: every key is read through
    every node at the end, and the history is checked."""
    cluster = await start(fresh_cluster, etcd_args=("--quota-backend-bytes", str(16 << 20)))
    endpoint = cluster.etcd[0].endpoint
    etcd = Etcd([endpoint])
    compacted: list[int] = []

    async def fault(events: Events) -> None:
        for _ in range(3):
            revision, _ = await etcd.get(b"/cachegrid/")
            await etcd.compact(revision)
            compacted.append(revision)
            events.mark(f"compacted at {revision}")
            await admin(cluster, "/admin/flush", {"all": True})  # a record after the compaction
            await asyncio.sleep(0.7)
        written = await fill_past_quota(etcd)
        events.mark("NOSPACE")
        await asyncio.sleep(2.0)
        await clear_nospace(etcd, endpoint, written)
        events.mark("cleared")

    try:
        result = await run_scenario("etcd compacted, then out of space and cleared",
                                    cluster.urls, fault, duration=12.0)  # fmt: skip
        # Neither compaction nor a full etcd touches the data path.
        result.require_load(availability=1.0, longest_gap=0.5)
        # Every node applied records from after the last compaction (it re-snapshotted).
        applied = [max(v for _, v in result.sampler.series("cachegrid_applied_revision", url))
                   for url in cluster.urls]  # fmt: skip
        result.require(
            min(applied) > compacted[-1],
            f"every node applied past revision {compacted[-1]} ({min(applied):.0f})",
        )
        report(result)
    finally:
        await etcd.close()


async def test_rebalances_while_fills_are_in_flight(fresh_cluster) -> None:
    """Small caches and flushes make most reads fills; rebalances move keys away and back
    while they are in flight (a fill of one activation must answer no reader of the next)."""
    cluster = await start(fresh_cluster, node_config="cache_max_entries = 50\n" + LEASES)

    async def fault(events: Events) -> None:
        for step in range(6):
            await admin(cluster, "/admin/flush", {"all": True})
            weights = {f"node{i}": 3 if i == step % 3 else 1 for i in range(3)}
            await admin(cluster, "/admin/rebalance", {"weights": weights})
            events.mark(f"rebalance {step}")

    keys = [f"reb-{i:03d}" for i in range(100)]
    # (12 s: its fills run nearest the report's 500, a count in fixed time that moves with
    # this machine's speed; 498 in 10 s in one CI run, 526 to 625 in four runs after)
    result = await run_scenario("rebalances while fills are in flight", cluster.urls, fault,
                                duration=12.0, keys=keys)  # fmt: skip
    result.require_load(availability=0.99, longest_gap=1.0)
    epochs = [v for _, v in result.sampler.series("cachegrid_ring_epoch", cluster.urls[0])]
    result.require(
        max(epochs) - min(epochs) >= 6, f"ring epoch {min(epochs):.0f} → {max(epochs):.0f}"
    )
    report(result)
    assert result.shared_batches.get("store_read", 0) > 100, result.shared_batches


async def test_an_abusive_client_beside_the_workload(fresh_cluster) -> None:
    """Stalled half-requests on every node and big batchGets in a loop, beside the
    workload: the limits of issue 17 hold them off (the stalled connections are closed
    after the idle timeout, a batch answer over the cap gets 413, batches past the byte
    budget 429), and the workload stays linearizable and available."""
    limits = "idle_timeout = 2.0\nmax_bytes_in_flight = 16777216\nmax_batch_bytes = 4194304\n"
    cluster = await start(fresh_cluster, node_config="cache_max_entries = 1\n" + LEASES + limits)
    big = [f"big-{i}" for i in range(80)]  # 4.8 MB in all: over the 4 MiB answer cap
    async with connect.session() as http:
        for key in big:
            async with http.put(f"{cluster.urls[0]}/v1/kv/{key}",
                                json={"value": "x" * 60_000}) as response:  # fmt: skip
                assert response.status == 200, await response.text()
    abuser = Abuser(cluster.urls, big, concurrent=6)

    async def fault(events: Events) -> None:
        events.mark("abuse starts")
        await abuser.run(seconds=3.0, idle_timeout=2.0)
        events.mark("abuse ends")

    result = await run_scenario("an abusive client beside the workload", cluster.urls, fault)
    result.require_load(availability=0.99, longest_gap=1.0)
    result.require(abuser.closed == abuser.stalled,
                   f"{abuser.closed} of {abuser.stalled} stalled connections closed")  # fmt: skip
    refused = abuser.statuses.get(429, 0) + abuser.statuses.get(413, 0)
    result.require(abuser.statuses.get(413, 0) > 0 and abuser.statuses.get(500, 0) == 0,
                   f"big batchGets: {abuser.statuses} (refused: {refused})")  # fmt: skip
    report(result)
