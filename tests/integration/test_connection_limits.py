"""No flood of connections, careless or hostile, exhausts a node (issue 17): connections
that stall before completing a request head are closed after ``node.idle_timeout``, and
past ``node.max_connections`` a new connection gets a JSON 503 and is closed at once, while
the connections already open, and normal GETs, are served as before."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import subprocess
import time

import aiohttp
import orjson

from tests.conftest import Cluster

LIMITS = "idle_timeout = 1.0\nmax_connections = 30\n"


def address(cluster: Cluster) -> tuple[str, int]:
    host, _, port = cluster.urls[0].removeprefix("http://").rpartition(":")
    return host, int(port)


def connect(cluster: Cluster, first_bytes: bytes = b"") -> socket.socket:
    conn = socket.create_connection(address(cluster), timeout=5)
    if first_bytes:
        conn.sendall(first_bytes)
    return conn


def closed_by_peer(conn: socket.socket, within: float) -> bool:
    """True if the node closes ``conn`` within ``within`` seconds (reading what it sent)."""
    conn.settimeout(within)
    try:
        while conn.recv(4096):
            pass
        return True
    except TimeoutError:
        return False


async def metric(http: aiohttp.ClientSession, url: str, name: str) -> float:
    async with http.get(f"{url}/metrics") as response:
        page = await response.text()
    values = [line.split()[1] for line in page.splitlines() if line.startswith(f"{name} ")]
    assert values, f"{name} not in /metrics"
    return float(values[0])


async def test_stalled_half_requests_are_closed_and_do_not_slow_gets(fresh_cluster,
                                                                     http) -> None:  # fmt: skip
    cluster = await asyncio.to_thread(fresh_cluster, node_config=LIMITS)
    url = cluster.urls[0]
    async with http.put(f"{url}/v1/kv/k", json={"value": 1}) as response:
        assert response.status == 200
    stalled = [connect(cluster, b"GET /v1/kv/k HT") for _ in range(20)]
    idle = connect(cluster)  # sends nothing at all
    try:
        started = time.monotonic()
        for _ in range(20):
            async with http.get(f"{url}/v1/kv/k") as response:
                assert response.status == 200
        assert time.monotonic() - started < 1.0
        await asyncio.sleep(1.5)  # past the idle timeout
        assert await asyncio.to_thread(closed_by_peer, idle, 2.0)
        closed = [await asyncio.to_thread(closed_by_peer, c, 2.0) for c in stalled]
        assert all(closed), closed.count(False)
        timed_out = await metric(http, url, "cachegrid_connections_timed_out_total")
        assert timed_out >= len(stalled) + 1, timed_out
    finally:
        for conn in [*stalled, idle]:
            conn.close()


async def test_connections_past_the_limit_get_a_json_503_and_the_others_go_on(fresh_cluster
                                                                             ) -> None:  # fmt: skip
    # A long idle timeout here: the connection opened first must stay open meanwhile.
    limits = "idle_timeout = 30.0\nmax_connections = 30\n"
    cluster = await asyncio.to_thread(fresh_cluster, node_config=limits)
    established = connect(cluster)
    flood: list[socket.socket] = []
    try:
        for _ in range(40):  # 30 at most are served; the rest are answered and closed
            flood.append(connect(cluster))
        await asyncio.sleep(0.3)  # the answers are on their way
        refusals = []
        for conn in flood:
            conn.settimeout(0.05)
            try:
                data = conn.recv(4096)
            except TimeoutError:
                continue
            refusals.append(data)
        assert len(refusals) >= 10, len(refusals)
        for data in refusals:
            head, _, body = data.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 503"), head
            assert b"Retry-After: 1" in head
            assert orjson.loads(body)["error"]["code"] == "unavailable"
        # The connection opened before the flood is served as before.
        established.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert established.recv(4096).startswith(b"HTTP/1.1 200")
    finally:
        for conn in [established, *flood]:
            conn.close()


async def test_out_of_file_descriptors_the_node_serves_on_and_recovers(fresh_cluster) -> None:
    """EMFILE: a flood of connections past the process's open-files limit (set low on the
    running node, with max_connections above it) neither crashes the node nor stops it
    serving the connections it has; once the flood is gone it accepts again, and it did
    not log an error per refused accept; process_open_fds shows how close it came."""
    cluster = await asyncio.to_thread(fresh_cluster, node_config="idle_timeout = 30.0\n")
    node = cluster.nodes[0]
    established = connect(cluster)
    request = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
    established.sendall(request)
    assert established.recv(4096).startswith(b"HTTP/1.1 200")
    in_use = len(os.listdir(f"/proc/{node.pid}/fd"))
    limit = in_use + 20
    command = ["prlimit", f"--pid={node.pid}", f"--nofile={limit}:{limit}"]
    await asyncio.to_thread(subprocess.run, command, check=True)
    logged_before = node.log_path.read_bytes().count(b"\n")
    flood: list[socket.socket] = []
    try:
        for _ in range(100):
            with contextlib.suppress(OSError):
                flood.append(connect(cluster))
        await asyncio.sleep(1.0)
        assert len(os.listdir(f"/proc/{node.pid}/fd")) >= limit - 2  # it ran out
        established.sendall(request)  # the node keeps serving what it has
        assert established.recv(4096).startswith(b"HTTP/1.1 200")
    finally:
        for conn in flood:
            conn.close()
    await asyncio.sleep(2.5)  # the flood's descriptors are given back
    fresh = connect(cluster)
    try:
        fresh.sendall(request)
        fresh.settimeout(5)
        assert fresh.recv(4096).startswith(b"HTTP/1.1 200")
    finally:
        fresh.close()
        established.close()
    assert node.running
    logged = node.log_path.read_bytes().count(b"\n") - logged_before
    assert logged < 20, node.log_tail(30)
    # ... but it said, once in a while, why it dropped connections.
    assert b"open file descriptors near the limit" in node.log_path.read_bytes()
    async with aiohttp.ClientSession() as http, http.get(f"{cluster.urls[0]}/metrics") as got:
        page = await got.text()
    gauges = {line.split()[0]: float(line.split()[1]) for line in page.splitlines()
              if line.startswith(("process_open_fds ", "process_max_fds "))}  # fmt: skip
    assert gauges["process_max_fds"] == limit
