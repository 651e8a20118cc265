"""CPU per GET through a non-owner against CPU per hit at the owner, under load (issue 13).

A two-node cluster (read leases off, so that every GET sent to the non-owner is forwarded)
serves 500 keys of the first node, ~100-byte values. Both nodes are pinned to core 1, wrk
(1 thread, 32 keep-alive connections) to core 0. First the owner is loaded with GETs of
its keys (hits), then the other node with GETs of the same keys (each forwarded to the
owner over the hit lane's pipelined peer connections); each time the CPU the two node
processes used (user + system, from /proc: the kernel's socket work included) is divided
by the requests answered. Prints both, and their ratio (issue 13's target: < 2).

    .venv/bin/python bench/forward_cost.py [--seconds 5]
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from cachegrid.devcluster.servers import NodeProcess
from harness import leases_off, started, written_keys, wrk
from vs_redis import LOAD_CORE, pin_cluster

KEYS = 500
VALUE = "x" * 94
CONNECTIONS = 32


def cpu_seconds(nodes: list[NodeProcess]) -> float:
    """User + system CPU seconds the ``nodes`` have used so far."""
    total = 0
    for node in nodes:
        fields = Path(f"/proc/{node.pid}/stat").read_text().rpartition(")")[2].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15)
    return total / os.sysconf("SC_CLK_TCK")


def per_request(nodes: list[NodeProcess], target: str, paths: list[str],
                seconds: float) -> tuple[list[float], float]:  # fmt: skip
    """(CPU microseconds of each of ``nodes`` per GET of ``paths`` sent to ``target``,
    GETs/s)."""
    wrk(target, paths, 1, CONNECTIONS, pinned_to=LOAD_CORE)  # warm: connections, caches
    before = [cpu_seconds([node]) for node in nodes]
    result = wrk(target, paths, seconds, CONNECTIONS, pinned_to=LOAD_CORE)
    used = [cpu_seconds([node]) - start for node, start in zip(nodes, before, strict=True)]
    assert not result.errors, result
    requests = result.rps * round(seconds)
    return [cpu / requests * 1e6 for cpu in used], result.rps


def main(seconds: float) -> None:
    with started(2) as cluster:
        leases_off(cluster)
        owner, other = cluster.nodes
        keys = written_keys(owner, KEYS, VALUE)
        pin_cluster(cluster)
        paths = [f"/v1/kv/{key}" for key in keys]
        hits, hit_rate = per_request(cluster.nodes, owner.url, paths, seconds)
        forwards, forwarded_rate = per_request(cluster.nodes, other.url, paths, seconds)
    hit, forwarded = sum(hits), sum(forwards)
    print(f"hit at the owner: {hit:.1f} µs of CPU per GET ({hit_rate:,.0f} GETs/s)")
    print(f"through the other node: {forwarded:.1f} µs of CPU per GET, both nodes: "
          f"{forwards[1]:.1f} at the other node, {forwards[0]:.1f} at the owner "
          f"({forwarded_rate:,.0f} GETs/s)")  # fmt: skip
    verdict = "met" if forwarded < 2 * hit else "MISSED"
    print(f"  forwarded / hit: {forwarded / hit:.2f}x  (< 2x: {verdict})")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    main(parser.parse_args().seconds)
