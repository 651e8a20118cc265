"""Read leases against real nodes, etcd and Redis (DESIGN.md §3b, issue 11).

A hot key read through a node that does not own it gets a copy there, answered with
``X-Cache: replica`` and no forward; a write at the owner has every copy dropped before it
creates the new version (the holder acknowledges the drop record it applied from the
watch stream), so a read at the holder after the write's 200 never sees the old value; a
holder that cannot acknowledge (paused) delays the write by at most the lease's term.
"""

from __future__ import annotations

import asyncio
import time

import aiohttp
import pytest

from tests.conftest import Cluster
from tests.integration.faults import Relays

# Low threshold, so a handful of reads make a key hot; the term of the defaults.
LEASES = "read_lease_threshold = 5\nread_lease_ttl = 1.0\nread_lease_margin = 0.1\n"


async def owner_and_other(http: aiohttp.ClientSession, cluster: Cluster, key: str,
                          ) -> tuple[str, str]:  # fmt: skip
    """(owner URL, a non-owner URL) of ``key``."""
    async with http.get(f"{cluster.urls[0]}/v1/kv/{key}") as response:
        owner_id = response.headers["X-Cachegrid-Node"]
    by_id = {f"node{i}": url for i, url in enumerate(cluster.urls)}
    owner = by_id[owner_id]
    return owner, next(url for url in cluster.urls if url != owner)


async def read(http: aiohttp.ClientSession, url: str, key: str) -> tuple[int, dict, dict]:
    async with http.get(f"{url}/v1/kv/{key}") as response:
        return response.status, dict(response.headers), await response.json()


async def until_replica(http: aiohttp.ClientSession, url: str, key: str,
                        within: float = 5.0) -> dict:  # fmt: skip
    """Read ``key`` through ``url`` until a replica hit answers; its headers."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        status, headers, _ = await read(http, url, key)
        assert status == 200
        if headers.get("X-Cache") == "replica":
            return headers
        await asyncio.sleep(0.01)
    raise AssertionError(f"no replica hit for {key} through {url} in {within} s")


async def put(http: aiohttp.ClientSession, url: str, key: str, value: object) -> dict:
    async with http.put(f"{url}/v1/kv/{key}", json={"value": value}) as response:
        assert response.status == 200, await response.text()
        return await response.json()


async def metric(http: aiohttp.ClientSession, url: str, series: str) -> float:
    async with http.get(f"{url}/metrics") as response:
        page = await response.text()
    return sum(float(line.split()[-1]) for line in page.splitlines()
               if line.startswith(series + " "))  # fmt: skip


@pytest.fixture
async def leased(fresh_cluster) -> Cluster:
    return await asyncio.to_thread(fresh_cluster, node_config=LEASES)


async def test_a_hot_key_is_served_from_a_copy_at_a_non_owner(leased, http) -> None:
    key = "hot-1"
    owner, other = await owner_and_other(http, leased, key)
    await put(http, owner, key, {"n": 1})
    headers = await until_replica(http, other, key)
    owner_id = (await read(http, owner, key))[1]["X-Cachegrid-Node"]
    assert headers["X-Cachegrid-Node"] == owner_id
    assert headers["X-Cachegrid-Replica"] != owner_id
    forwarded = await metric(http, other, "cachegrid_forwarded_total")
    for _ in range(50):
        status, headers, body = await read(http, other, key)
        assert (status, body["value"]) == (200, {"n": 1})
    # Renewals aside (one forward per half term), the 50 reads forwarded nothing.
    assert await metric(http, other, "cachegrid_forwarded_total") - forwarded <= 3
    assert await metric(http, other, "cachegrid_replica_hits_total") >= 45
    async with http.post(f"{other}/v1/kv:batchGet", json={"keys": [key], "detail": True}) as r:
        item = (await r.json())["items"][0]
    assert (item["cache"], item["node"], item["value"]) == ("replica", owner_id, {"n": 1})


async def test_after_a_write_no_holder_serves_the_old_value(leased, http) -> None:
    """The write's 200 comes only after every holder dropped its copy: every read at every
    node that starts after it sees the new value (fails if the writer does not revoke)."""
    key = "hot-2"
    owner, _ = await owner_and_other(http, leased, key)
    others = [url for url in leased.urls if url != owner]
    await put(http, owner, key, 0)
    for n in range(1, 21):
        for url in others:
            await until_replica(http, url, key)
        await put(http, owner, key, n)
        for url in others:
            status, headers, body = await read(http, url, key)
            assert (status, body["value"]) == (200, n), (n, url, headers)
    acked = 'cachegrid_invalidation_wait_seconds_count{outcome="acked"}'
    assert await metric(http, owner, acked) >= 20


async def test_a_paused_holder_delays_writes_by_at_most_the_term(leased, http) -> None:
    key = "hot-3"
    owner, _ = await owner_and_other(http, leased, key)
    index = next(i for i, url in enumerate(leased.urls) if url != owner)
    holder = leased.urls[index]
    await put(http, owner, key, "a")
    await until_replica(http, holder, key)
    leased.nodes[index].pause()
    try:
        started = time.monotonic()
        await put(http, owner, key, "b")
        waited = time.monotonic() - started
    finally:
        leased.nodes[index].resume()
    assert 0.2 < waited < 1.0 + 0.1 + 0.5, waited  # waited out, within term + margin
    expired = 'cachegrid_invalidation_wait_seconds_count{outcome="expired"}'
    assert await metric(http, owner, expired) >= 1
    # The resumed holder's copy ended by its own clock: it never answers "a" again.
    status, _, body = await read(http, holder, key)
    assert (status, body["value"]) == (200, "b")


async def test_a_lease_field_from_a_client_is_refused(leased, http) -> None:
    body = {"keys": ["k"], "detail": True, "lease": {"holder": "x", "inc": "y", "keys": ["k"]}}
    async with http.post(f"{leased.urls[0]}/v1/kv:batchGet", json=body) as response:
        assert response.status == 400
        assert "peers" in (await response.json())["error"]["message"]


async def test_a_holder_cut_off_from_etcd_is_waited_out(fresh_cluster, http) -> None:
    """A holder that cannot see drop records (its link to etcd is black-holed) still answers
    clients; the write waits until its lease has run out, so no read at the holder after
    the write's 200 returns the old value (fails if the writer does not wait)."""
    relays = Relays(
        asyncio.get_running_loop(), lambda node, service: (node, service) == (0, "etcd")
    )
    cluster = await asyncio.to_thread(fresh_cluster, node_config=LEASES, via=relays.route)
    try:
        holder = cluster.urls[0]
        for i in range(100):
            key = f"cut-{i}"
            owner, _ = await owner_and_other(http, cluster, key)
            if owner != holder:
                break
        await put(http, owner, key, "old")
        await until_replica(http, holder, key)
        relays.by[(0, "etcd")].partition()
        started = time.monotonic()
        await put(http, owner, key, "new")
        waited = time.monotonic() - started
        status, headers, body = await read(http, holder, key)
        assert status != 200 or body["value"] == "new", (waited, headers)
        assert waited > 0.1, waited  # the holder's row was waited out, not acknowledged
    finally:
        await relays.close()


async def test_admin_status_shows_leases_and_flush_drops_copies_everywhere(leased, http) -> None:
    key = "hot-admin"
    owner, other = await owner_and_other(http, leased, key)
    await put(http, owner, key, 1)
    await until_replica(http, other, key)
    auth = {"Authorization": f"Bearer {leased.admin_token}"}
    async with http.get(f"{owner}/admin/status?scope=cluster", headers=auth) as response:
        nodes = (await response.json())["nodes"]
    by_url = {f"node{i}": url for i, url in enumerate(leased.urls)}
    held = {by_url[n]: s["read_leases"]["held"] for n, s in nodes.items()}
    granted = {by_url[n]: s["read_leases"]["granted"] for n, s in nodes.items()}
    assert held[other] >= 1
    assert granted[owner] >= 1
    async with http.post(f"{owner}/admin/flush", json={"keys": [key]}, headers=auth) as response:
        result = await response.json()
    assert sum(n["copies_dropped"] for n in result["nodes"].values()) >= 1, result
    status, headers, _ = await read(http, other, key)
    assert status == 200
    assert headers["X-Cache"] != "replica"


async def test_a_key_written_often_is_not_leased(leased, http) -> None:
    """Past read_lease_max_write_rate (10 writes/s by default) the owner refuses leases on
    the key, and says why in a metric: each write would pay an etcd round for nothing."""
    key = "busy-1"
    owner, other = await owner_and_other(http, leased, key)
    refused = 'cachegrid_read_lease_refused_total{reason="written_often"}'
    before = await metric(http, owner, refused)
    for n in range(40):
        await put(http, owner, key, n)
    for _ in range(100):
        status, headers, _ = await read(http, other, key)
        assert status == 200
        assert headers["X-Cache"] != "replica"
    assert await metric(http, owner, refused) > before
