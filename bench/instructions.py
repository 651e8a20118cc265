"""Instructions per GET, counted by callgrind: the hit lane against the routes, and a GET
forwarded through a non-owner against a hit at the owner (issue 13).

Wall-clock rates move with this machine's noise; instruction counts do not. A two-node
cluster is started (read leases off), then nodes are restarted under ``valgrind
--tool=callgrind`` with instrumentation off: the owner with the hit lane (node.hit_lane,
the default), the owner without, then both nodes for GETs sent to the other one. Each
time, after a warm-up, callgrind counts a window of N keep-alive GETs of cached keys on one
connection, one at a time, and a window of the same length with no requests (the nodes' own
timers: lease keep-alive, watches); instructions per GET = (loaded - idle) / N, summed over
the nodes under callgrind. The hit and the GET through the other node are counted once
more with 8 clients sending at a time (rounds of one GET on each of 8 connections), as
under load: the forwards then share writes and reads between the nodes. (User space only:
bench/forward_cost.py measures CPU time, the kernel's share included.)

    .venv/bin/python bench/instructions.py [--requests 2000]
"""

from __future__ import annotations

import argparse
import re
import shutil
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from cachegrid.devcluster.servers import NodeProcess
from harness import reconfigured, started, written_keys

KEYS = 100
VALUE = "x" * 94  # ~100-byte values, as bench/vs_redis.py
BATCH = 8  # clients sending at once, for the batched measures


def instructions(out: Path) -> int:
    """The instructions of the last dump written to ``out``'s pattern."""
    dumps = sorted(out.parent.glob(out.name + "*"), key=lambda p: p.stat().st_mtime)
    text = dumps[-1].read_text(errors="replace")
    return int(re.findall(r"^(?:summary|totals): (\d+)", text, re.M)[-1])


def hits(host: str, port: int, keys: list[str], count: int, cached: bool = True,
         connections: int = 1) -> float:  # fmt: skip
    """``count`` GETs of ``keys`` in turn on ``connections`` keep-alive connections: in
    rounds of one GET on each, then each answer read (so with several, the node reads them
    in one turn, as under load); each a hit at the owner if ``cached``; seconds taken."""
    started = time.monotonic()
    conns = [socket.create_connection((host, port)) for _ in range(connections)]
    try:
        for first in range(0, count, connections):
            for i, conn in enumerate(conns):
                key = keys[(first + i) % len(keys)]
                conn.sendall(f"GET /v1/kv/{key} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            for conn in conns:
                answer = b""
                while not answer.endswith(b"}"):
                    answer += conn.recv(65536)
                assert b" 200 OK" in answer, answer[:200]
                assert b"X-Cache: hit" in answer or not cached, answer[:200]
    finally:
        for conn in conns:
            conn.close()
    return time.monotonic() - started


def window(nodes: list[NodeProcess], outs: list[Path], run: Callable[[], object]) -> int:
    """Instructions the ``nodes`` execute, together, while ``run()`` runs."""
    for node in nodes:
        callgrind(node, "--zero")
        callgrind(node, "--instr=on")
    run()
    for node in nodes:
        callgrind(node, "--instr=off")
        callgrind(node, "--dump")
    time.sleep(0.5)
    return sum(instructions(out) for out in outs)


def callgrind(node: NodeProcess, *options: str) -> None:
    assert node.pid is not None
    subprocess.run(["callgrind_control", *options, str(node.pid)], check=True,
                   capture_output=True)  # fmt: skip


def per_request(nodes: list[NodeProcess], target: NodeProcess, keys: list[str], lane: bool,
                requests: int, tmp: Path, name: str, connections: int = 1) -> float:  # fmt: skip
    """Instructions ``nodes`` execute per GET of ``keys`` sent to ``target`` on
    ``connections`` connections, each node restarted under callgrind (with the hit lane on
    or off)."""
    outs = [tmp / f"callgrind.{name}.{node.node_id}" for node in nodes]
    for node, out in zip(nodes, outs, strict=True):
        node.stop()
        node.wrapper = ("env", f"CACHEGRID_NODE_HIT_LANE={'true' if lane else 'false'}",
                        "valgrind", "--tool=callgrind", "--instr-atstart=no",
                        f"--callgrind-out-file={out}")  # fmt: skip
        node.start(timeout=240)
    try:
        host, port = "127.0.0.1", target.port
        hits(host, port, keys, len(keys) * 2, cached=False)  # warm: every key cached
        took = 0.0

        def load() -> None:
            nonlocal took
            took = hits(host, port, keys, requests, cached=False, connections=connections)

        loaded = window(nodes, outs, load)
        idle = window(nodes, outs, lambda: time.sleep(took))
        return (loaded - idle) / requests
    finally:
        for node in nodes:
            node.stop()
            node.wrapper = ()
            node.start(timeout=60)


def main(requests: int, keep: str) -> None:
    with started(2) as cluster:
        # Slow under valgrind: a longer lease, and no stale checks (store reads); no read
        # leases, so that a GET through the other node is forwarded every time.
        reconfigured(cluster, "lease_ttl = 20\nstale_check_every = 0\nread_lease_threshold = 0\n")
        owner, other = cluster.nodes
        keys = written_keys(owner, KEYS, VALUE)
        dumps = cluster.data_dir
        lane = per_request([owner], owner, keys, True, requests, dumps, "lane")
        routes = per_request([owner], owner, keys, False, requests, dumps, "routes")
        via = per_request([owner, other], other, keys, True, requests, dumps, "via")
        # Eight clients at a time: the non-owner's forwards share writes, the owner reads
        # them together (as under load; bench/forward_cost.py measures CPU time so).
        lane8 = per_request([owner], owner, keys, True, requests, dumps, "lane8", BATCH)
        via8 = per_request([owner, other], other, keys, True, requests, dumps, "via8", BATCH)
        if keep:  # the dumps, for callgrind_annotate
            for dump in dumps.glob("callgrind.*"):
                shutil.copy(dump, keep)
    print(f"instructions per hot GET at the owner, hit lane: {lane:,.0f}")
    print(f"instructions per hot GET at the owner, routes (node.hit_lane = false): {routes:,.0f}")
    print(f"  lane / routes: {lane / routes:.2f}x")
    print(f"instructions per GET through a non-owner (forwarded, both nodes): {via:,.0f}")
    print(f"  forwarded / hit at the owner: {via / lane:.2f}x")
    print(f"with {BATCH} clients at a time: a hit {lane8:,.0f}; through a non-owner {via8:,.0f}"
          f" (both nodes): {via8 / lane8:.2f}x")  # fmt: skip


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--keep", default="", help="a directory to copy callgrind's dumps to")
    arguments = parser.parse_args()
    main(arguments.requests, arguments.keep)
