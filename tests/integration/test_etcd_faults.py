"""etcd faults that must not wedge a node: out of space (NOSPACE), then cleared (issue 10).

A node that stays in the ring but can never serve again is as bad as a crash that nobody
notices: its keys answer 503 until someone restarts it. These tests break etcd in the ways
operators meet and require every node to serve its own keys again, without restarts.
"""

from __future__ import annotations

import asyncio
import time

import orjson
import pytest

from cachegrid.coord.etcd import Etcd
from cachegrid.ring import Ring
from tests.integration.etcd_ops import clear_nospace, fill_past_quota

pytestmark = pytest.mark.slow


async def request(http, method, url, **options):
    async with http.request(method, url, **options) as response:
        return response.status, response.headers, await response.read()


async def owned_keys(http, cluster) -> dict[str, str]:
    """One key owned by each node under the current ring: node id -> key."""
    _, _, body = await request(http, "GET", f"{cluster.urls[0]}/v1/ring")
    ring = Ring.from_description(orjson.loads(body))
    keys: dict[str, str] = {}
    for i in range(1000):
        keys.setdefault(ring.owner(f"ns-{i}"), f"ns-{i}")
    return keys


async def every_node_serves_its_own_keys(http, cluster, wait: float) -> list[str]:
    """Until each node that owns keys answers a GET of one as its owner; the nodes
    that never did within ``wait`` seconds."""
    keys = await owned_keys(http, cluster)
    pending = {node.node_id: node.url for node in cluster.nodes if node.node_id in keys}
    deadline = time.monotonic() + wait
    while pending and time.monotonic() < deadline:
        for node_id, url in list(pending.items()):
            status, headers, _ = await request(http, "GET", f"{url}/v1/kv/{keys[node_id]}")
            if status in (200, 404) and headers.get("X-Cachegrid-Node") == node_id:
                del pending[node_id]
        await asyncio.sleep(0.2)
    return sorted(pending)


async def test_etcd_out_of_space_then_cleared_leaves_no_node_wedged(fresh_cluster, http) -> None:
    """etcd (quota 16 MiB) fills up: acks and every other write to etcd fail with NOSPACE
    for seconds, while keep-alives still succeed. The data path goes on (it needs no etcd
    write). Once an operator clears the alarm, every node serves its own keys and a drain
    completes, with no restart. Before the fix the ack loop died of the first NOSPACE
    error and its node answered 503 for its keys until restarted."""
    cluster = await asyncio.to_thread(
        fresh_cluster, etcd_args=("--quota-backend-bytes", str(16 << 20))
    )
    endpoint = cluster.etcd[0].endpoint
    etcd = Etcd([endpoint])
    try:
        assert await every_node_serves_its_own_keys(http, cluster, wait=10) == []
        written = await fill_past_quota(etcd)
        await asyncio.sleep(3)  # several ack and probe rounds meet NOSPACE
        status, _, _ = await request(
            http, "PUT", f"{cluster.urls[0]}/v1/kv/during-nospace",
            json={"value": 1},
        )  # fmt: skip
        assert status == 200, "the data path needs no etcd write"
        await clear_nospace(etcd, endpoint, written)
        assert await every_node_serves_its_own_keys(http, cluster, wait=15) == []
        status, _, body = await request(
            http, "POST", f"{cluster.urls[0]}/admin/drain", json={"node": "node2"},
            headers={"Authorization": f"Bearer {cluster.admin_token}"},
        )  # fmt: skip
        assert status == 200, body
        assert await every_node_serves_its_own_keys(http, cluster, wait=15) == []
    finally:
        await etcd.close()
