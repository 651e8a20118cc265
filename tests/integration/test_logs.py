"""What an on-call engineer reads (issue 14): every node logs JSON lines with the events
that matter (joining and leaving, each ring change with its epoch and wait, admin actions
with who asked), an optional access log, and a request id (``X-Request-Id``) that follows
a request through a forward into both nodes' logs, its answer and its error body."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import aiohttp

from cachegrid.devcluster.servers import PortAllocator
from tests.conftest import Cluster
from tests.processes import node_that_fails

ACCESS_LOG = "access_log = true\nread_lease_threshold = 0\n"


def lines(path: Path) -> list[dict[str, Any]]:
    """The node's log, each line parsed: every line must be one JSON object."""
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def events(path: Path, event: str) -> list[dict[str, Any]]:
    return [line for line in lines(path) if line.get("event") == event]


async def owner_and_other(http: aiohttp.ClientSession, cluster: Cluster,
                          key: str) -> tuple[int, int]:  # fmt: skip
    """Indexes of the key's owner and of another node (from a write's answer)."""
    async with http.put(f"{cluster.urls[0]}/v1/kv/{key}", json={"value": 1}) as response:
        assert response.status == 200
        owner = int(response.headers["X-Cachegrid-Node"].removeprefix("node"))
    return owner, (owner + 1) % len(cluster.nodes)


async def test_a_request_id_follows_a_forward_into_both_access_logs(fresh_cluster,
                                                                    http) -> None:  # fmt: skip
    cluster = await asyncio.to_thread(fresh_cluster, node_config=ACCESS_LOG)
    owner, other = await owner_and_other(http, cluster, "traced")
    url = cluster.urls[other]
    sent = {"X-Request-Id": "trace-4711"}
    async with http.get(f"{url}/v1/kv/traced", headers=sent) as response:
        assert response.status == 200
        assert response.headers["X-Request-Id"] == "trace-4711"
    async with http.put(f"{url}/v1/kv/traced", json={"value": 2}, headers=sent) as response:
        assert response.status == 200
        assert response.headers["X-Request-Id"] == "trace-4711"
    await asyncio.sleep(0.2)
    for index in (owner, other):  # the GET (batched to the owner) and the PUT, on both
        seen = [line for line in events(cluster.nodes[index].log_path, "access")
                if "trace-4711" in line.get("request_id", "").split(",")]  # fmt: skip
        assert {line["method"] for line in seen} >= {"PUT"}, (index, seen)
        assert len(seen) >= 2, (index, seen)
        assert all(line["node"] == f"node{index}" and line["status"] == 200 for line in seen)


async def test_errors_name_their_request(fresh_cluster, http) -> None:
    cluster = await asyncio.to_thread(fresh_cluster, node_config=ACCESS_LOG)
    owner, other = await owner_and_other(http, cluster, "present")
    for index in (owner, other):  # answered at the owner, and forwarded to it
        url = cluster.urls[index]
        async with http.get(f"{url}/v1/kv/absent-{index}") as response:
            assert response.status == 404
            made = response.headers["X-Request-Id"]
            assert (await response.json())["error"]["request_id"] == made
        async with http.get(f"{url}/v1/kv/absent-{index}",
                            headers={"X-Request-Id": "mine-1"}) as response:  # fmt: skip
            body = await response.json()
            assert body["error"]["request_id"] == "mine-1" == response.headers["X-Request-Id"]
    # An id a client smuggles log lines or huge values into is replaced, not used.
    for bad in ("x" * 65, "a\tb"):
        async with http.get(f"{cluster.urls[0]}/v1/kv/absent",
                            headers={"X-Request-Id": bad}) as response:  # fmt: skip
            replaced = (await response.json())["error"]["request_id"]
            assert replaced != bad
            assert len(replaced) == 16
    async with http.get(f"{cluster.urls[0]}/no/such/route") as response:
        assert response.status == 404
        assert (await response.json())["error"]["request_id"] == response.headers["X-Request-Id"]


async def test_the_node_logs_its_life_ring_changes_and_admin_actions(fresh_cluster,
                                                                     http) -> None:  # fmt: skip
    cluster = await asyncio.to_thread(fresh_cluster)
    node0 = cluster.nodes[0].log_path
    auth = {"Authorization": f"Bearer {cluster.admin_token}", "User-Agent": "oncall-test"}
    async with http.post(f"{cluster.urls[0]}/admin/drain", json={"node": "node2"},
                         headers=auth) as response:  # fmt: skip
        assert response.status == 200
    await asyncio.to_thread(cluster.nodes[2].stop)
    await asyncio.sleep(0.5)
    stopped = [line["event"] for line in lines(cluster.nodes[2].log_path) if "event" in line]
    assert stopped[-2:] == ["node_stopping", "node_stopped"], stopped
    await asyncio.to_thread(cluster.nodes[2].start)
    await asyncio.sleep(1.0)
    assert events(node0, "node_started")
    assert [line["member"] for line in events(node0, "member_left")] == ["node2"]
    changes = [(line["event"], line["member"]) for line in lines(node0)
               if line.get("event") in ("member_joined", "member_left")]  # fmt: skip
    assert changes[-2:] == [("member_left", "node2"), ("member_joined", "node2")], changes
    applied = events(node0, "ring_applied")
    assert applied
    assert all(isinstance(line["epoch"], int) for line in applied)
    assert [line["members"] for line in applied[-2:]] == [
        ["node0", "node1"],
        ["node0", "node1", "node2"],
    ]
    assert all(line["release_seconds"] >= 0 for line in applied)
    activated = events(node0, "ring_activated")
    assert activated
    assert all(line["wait_seconds"] >= 0 for line in activated)
    (drain,) = events(node0, "admin")
    assert drain["action"] == "drain"
    assert drain["status"] == 200
    assert drain["remote"] == "127.0.0.1"
    assert drain["user_agent"] == "oncall-test"
    assert "node2" in drain["body"]
    assert all({"time", "level", "logger", "message", "node"} <= set(line) for line in
               lines(node0))  # fmt: skip


def test_a_node_that_cannot_reach_etcd_says_so_without_a_traceback(
    tmp_path: Path, ports: PortAllocator
) -> None:
    said = node_that_fails("", tmp_path, ports)  # (tests/processes.py)
    assert "Error: etcd unreachable (etcd.endpoints: 127.0.0.1:9)" in said
