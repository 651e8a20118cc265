"""cachegrid's hot GET against Redis's own GET, per core, in one run (issue 13).

A one-node cluster serves 500 hot keys with ~100-byte values; the node is pinned to core 1
and loaded from core 0 by wrk (1 thread, 32 keep-alive connections). Then a fresh
redis-server (no persistence) is pinned to core 1 in its turn, filled with the same keys
and value bytes, and loaded from core 0 by redis-benchmark (32 connections, no
pipelining). Prints both rates and their ratio (issue 13's target: >= 0.5x).

    .venv/bin/python bench/vs_redis.py [--seconds 5]
"""

from __future__ import annotations

import argparse
import re
import subprocess
import time

from cachegrid.devcluster.cluster import LocalCluster
from cachegrid.devcluster.servers import PortAllocator
from harness import http, started, wrk

KEYS = 500
VALUE = "x" * 94  # a JSON string of 96 bytes
CONNECTIONS = 32
NODE_CORE, LOAD_CORE = "1", "0"


def pin(pid: int, core: str) -> None:
    subprocess.run(["taskset", "-a", "-p", "-c", core, str(pid)], check=True,
                   capture_output=True)  # fmt: skip


def pin_cluster(cluster: LocalCluster) -> None:
    """Every node on the node core; the store and etcd, idle on hits, on the load core."""
    for node in cluster.nodes:
        assert node.pid is not None
        pin(node.pid, NODE_CORE)
    for server in [*cluster.redis, *cluster.etcd]:
        assert server.pid is not None
        pin(server.pid, LOAD_CORE)


def cachegrid_rate(seconds: float) -> float:
    with started(1) as cluster:
        node = cluster.nodes[0]
        for i in range(KEYS):
            http("PUT", f"{node.url}/v1/kv/key:{i}", {"value": VALUE})
        pin_cluster(cluster)
        paths = [f"/v1/kv/key:{i}" for i in range(KEYS)]
        wrk(node.url, paths, 1, CONNECTIONS)  # warm
        return wrk(node.url, paths, seconds, CONNECTIONS, pinned_to=LOAD_CORE).rps


def redis_rate(seconds: float) -> float:
    port = PortAllocator().take()
    server = subprocess.Popen(
        ["taskset", "-c", NODE_CORE, "redis-server", "--port", str(port), "--save", "",
         "--appendonly", "no", "--bind", "127.0.0.1"], stdout=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        time.sleep(0.5)
        fill = ["redis-cli", "-p", str(port)]
        for i in range(KEYS):
            subprocess.run([*fill, "SET", f"key:{i}", f'"{VALUE}"'], check=True,
                           capture_output=True)  # fmt: skip
        requests = int(seconds * 60_000)
        out = subprocess.run(
            ["taskset", "-c", LOAD_CORE, "redis-benchmark", "-p", str(port), "-t", "get",
             "-c", str(CONNECTIONS), "-n", str(requests), "-r", str(KEYS), "-q"],
            capture_output=True, text=True, check=True,
        ).stdout  # fmt: skip
        return float(re.findall(r"GET: ([\d.]+) requests per second", out)[-1])
    finally:
        server.terminate()
        server.wait()


def main(seconds: float) -> None:
    ours = cachegrid_rate(seconds)
    theirs = redis_rate(seconds)
    print(f"hot GET, node pinned to core {NODE_CORE}, wrk on core {LOAD_CORE}: {ours:,.0f}/s")
    print(f"redis GET, redis-server pinned to core {NODE_CORE}, redis-benchmark on core "
          f"{LOAD_CORE}: {theirs:,.0f}/s")  # fmt: skip
    verdict = "met" if ours / theirs >= 0.5 else "MISSED"
    print(f"cachegrid / redis: {ours / theirs:.2f}x  (>= 0.5x: {verdict})")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    main(parser.parse_args().seconds)
