"""cachegrid.Client against real clusters: direct routing, ring refresh, safe retries."""

import asyncio
import re
import time

import pytest

from cachegrid.client import Client
from cachegrid.errors import Indeterminate, NotFound, Unavailable, VersionMismatch

KEYS = ["plain", "a/b", "with space", "q?x#y", "100%", "ünï", "x" * 1000]


async def forwarded_total(http, cluster) -> float:
    """Requests the nodes forwarded to an owner, summed over every node."""
    total = 0.0
    for url in cluster.urls:
        async with http.get(f"{url}/metrics") as response:
            text = await response.text()
        match = re.search(r"^cachegrid_forwarded_total (\S+)$", text, re.M)
        total += float(match.group(1)) if match else 0.0
    return total


async def test_round_trips_of_awkward_keys_go_straight_to_the_owner(cluster, http) -> None:
    before = await forwarded_total(http, cluster)
    async with Client(cluster.urls) as client:
        for key in KEYS:
            version = await client.put(key, {"key": key})
            item = await client.get(key)
            assert item is not None
            assert (item.key, item.value, item.version) == (key, {"key": key}, version)
        batch = await client.batch_get([*KEYS, "never-written"])
        assert {k: v.value if v else None for k, v in batch.items()} == {
            **{key: {"key": key} for key in KEYS}, "never-written": None,
        }  # fmt: skip
        await client.delete(KEYS[0])
        assert await client.get(KEYS[0]) is None
        with pytest.raises(NotFound):
            await client.delete(KEYS[0])
    assert await forwarded_total(http, cluster) == before  # nothing needed forwarding


async def test_conditional_writes_through_the_client(cluster) -> None:
    async with Client(cluster.urls) as client:
        first = await client.put("client-cas", 1, if_absent=True)
        with pytest.raises(VersionMismatch):
            await client.put("client-cas", 2, if_absent=True)
        second = await client.put("client-cas", 3, if_match=first)
        with pytest.raises(VersionMismatch):
            await client.put("client-cas", 4, if_match=first)
        await client.delete("client-cas", if_match=second)


@pytest.mark.slow
async def test_the_client_follows_a_ring_change(fresh_cluster, http) -> None:
    cluster = fresh_cluster()
    async with Client(cluster.urls) as client:
        keys = [f"follow-{i}" for i in range(40)]
        for key in keys:
            await client.put(key, key)
        old_epoch = client.ring.epoch
        async with http.post(
            f"{cluster.urls[0]}/admin/drain",
            json={"node": "node1"},
            headers={"Authorization": f"Bearer {cluster.admin_token}"},
        ) as r:
            assert r.status == 200
        for key in keys:  # the first requests may be forwarded; each tells the client
            assert (await client.get(key)).value == key
        assert client.ring.epoch != old_epoch
        assert "node1" not in {client.ring.owner(k) for k in keys}
        settled = await forwarded_total(http, cluster)
        for key in keys:
            assert (await client.get(key)).value == key
        assert await forwarded_total(http, cluster) == settled  # direct again


@pytest.mark.slow
async def test_a_crashed_owner_is_retried_then_replaced(fresh_cluster) -> None:
    cluster = fresh_cluster()
    async with Client(cluster.urls, attempts=2) as client:
        await client.put("seed", 0)
        key = next(k for k in (f"crash-{i}" for i in range(200)) if client.ring.owner(k) == "node2")
        await client.put(key, "kept")
        cluster.nodes[2].kill()
        # On the pooled connection the node's death shows as a disconnect: the client cannot
        # know its request did not arrive, so it must say indeterminate, not "not applied".
        with pytest.raises(Indeterminate):
            await client.put(key, "during the outage")
        with pytest.raises(Unavailable):  # a new connection is refused: certainly not applied
            await client.put(key, "during the outage, again")
        deadline = time.monotonic() + 15
        while True:
            try:
                item = await client.get(key)
                break
            except Unavailable:
                assert time.monotonic() < deadline, "the key was never served again"
                await asyncio.sleep(0.2)
        assert item is not None
        assert item.value == "kept"
