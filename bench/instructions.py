"""Instructions per hot GET, counted by callgrind: the hit lane against the routes (issue 13).

Wall-clock rates move with this machine's noise; instruction counts do not. A one-node
cluster is started, then the node is restarted under ``valgrind --tool=callgrind`` with
instrumentation off, once with the hit lane (node.hit_lane, the default) and once without.
Each time, after a warm-up, callgrind counts a window of N keep-alive GETs of cached keys
on one connection, and a window of the same length with no requests (the node's own timers:
lease keep-alive, watches); instructions per hit = (loaded - idle) / N.

    .venv/bin/python bench/instructions.py [--requests 2000]
"""

from __future__ import annotations

import argparse
import re
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from cachegrid.devcluster.cluster import LocalCluster
from cachegrid.devcluster.servers import PortAllocator
from harness import free_base, http

KEYS = 100
VALUE = "x" * 94  # ~100-byte values, as bench/vs_redis.py


def callgrind(pid: int, *options: str) -> None:
    subprocess.run(["callgrind_control", *options, str(pid)], check=True, capture_output=True)


def instructions(out: Path) -> int:
    """The instructions of the last dump written to ``out``'s pattern."""
    dumps = sorted(out.parent.glob(out.name + "*"), key=lambda p: p.stat().st_mtime)
    text = dumps[-1].read_text(errors="replace")
    return int(re.findall(r"^(?:summary|totals): (\d+)", text, re.M)[-1])


def hits(host: str, port: int, count: int, cached: bool = True) -> float:
    """``count`` GETs on one keep-alive connection, one at a time, each a hit if
    ``cached``; seconds taken."""
    started = time.monotonic()
    with socket.create_connection((host, port)) as conn:
        for i in range(count):
            conn.sendall(f"GET /v1/kv/key:{i % KEYS} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            answer = b""
            while not answer.endswith(b"}"):
                answer += conn.recv(65536)
            assert b" 200 OK" in answer, answer[:200]
            assert b"X-Cache: hit" in answer or not cached, answer[:200]
    return time.monotonic() - started


def window(pid: int, out: Path, run: object) -> int:
    """Instructions the node executes while ``run()`` runs."""
    callgrind(pid, "--zero")
    callgrind(pid, "--instr=on")
    run()  # type: ignore[operator]
    callgrind(pid, "--instr=off")
    callgrind(pid, "--dump")
    time.sleep(0.5)
    return instructions(out)


def per_hit(cluster: LocalCluster, lane: bool, requests: int, tmp: Path) -> float:
    node = cluster.nodes[0]
    out = tmp / f"callgrind.{'lane' if lane else 'routes'}"
    node.stop()
    node.wrapper = ("env", f"CACHEGRID_NODE_HIT_LANE={'true' if lane else 'false'}",
                    "valgrind", "--tool=callgrind", "--instr-atstart=no",
                    f"--callgrind-out-file={out}")  # fmt: skip
    node.start(timeout=240)
    try:
        assert node.pid is not None
        host, port = "127.0.0.1", node.port
        hits(host, port, KEYS * 2, cached=False)  # warm: every key cached
        took = 0.0

        def load() -> None:
            nonlocal took
            took = hits(host, port, requests)

        loaded = window(node.pid, out, load)
        idle = window(node.pid, out, lambda: time.sleep(took))
        return (loaded - idle) / requests
    finally:
        node.stop()
        node.wrapper = ()


def main(requests: int, keep: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        cluster = LocalCluster.plan(Path(tmp), nodes=1, replicas=3,
                                    base_port=free_base(PortAllocator()),
                                    appendfsync="everysec")  # fmt: skip
        config = cluster.data_dir / "cachegrid.toml"
        cluster.start()
        try:
            # Slow under valgrind: a longer lease, and no stale checks (store reads).
            config.write_text(config.read_text() + "lease_ttl = 20\nstale_check_every = 0\n")
            url = cluster.nodes[0].url
            for i in range(KEYS):
                http("PUT", f"{url}/v1/kv/key:{i}", {"value": VALUE})
            lane = per_hit(cluster, True, requests, Path(tmp))
            routes = per_hit(cluster, False, requests, Path(tmp))
        finally:
            cluster.stop()
            if keep:  # the dumps, for callgrind_annotate
                for dump in Path(tmp).glob("callgrind.*"):
                    shutil.copy(dump, keep)
    print(f"instructions per hot GET, hit lane: {lane:,.0f}")
    print(f"instructions per hot GET, routes (node.hit_lane = false): {routes:,.0f}")
    print(f"lane / routes: {lane / routes:.2f}x")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--keep", default="", help="a directory to copy callgrind's dumps to")
    arguments = parser.parse_args()
    main(arguments.requests, arguments.keep)
