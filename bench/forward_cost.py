"""CPU per GET through a non-owner against CPU per hit at the owner, under load (issue 13).

A two-node cluster (read leases off, so that every GET sent to the non-owner is forwarded)
serves 500 keys of the first node, ~100-byte values. Both nodes are pinned to core 1, wrk
(1 thread, 32 keep-alive connections) to core 0. First the owner is loaded with GETs of
its keys (hits), then the other node with GETs of the same keys (each forwarded to the
owner over the hit lane's pipelined peer connections); each time the CPU the two node
processes used (user + system, from /proc: the kernel's socket work included) is divided
by the requests answered. The two are measured in turn, ``--rounds`` times of ``--seconds``
each (this machine's speed drifts by a third over minutes: each round's ratio compares runs
a second apart). Prints the rounds' median ratio (issue 13's target: < 2), and the ratio
of all rounds' CPU together.

    .venv/bin/python bench/forward_cost.py [--seconds 1] [--rounds 10]
"""

from __future__ import annotations

import argparse
import os
import statistics
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
                seconds: float) -> tuple[list[float], int]:  # fmt: skip
    """(CPU seconds each of ``nodes`` used while GETs of ``paths`` were sent to ``target``
    for ``seconds``, GETs answered)."""
    before = [cpu_seconds([node]) for node in nodes]
    result = wrk(target, paths, seconds, CONNECTIONS, pinned_to=LOAD_CORE)
    used = [cpu_seconds([node]) - start for node, start in zip(nodes, before, strict=True)]
    assert not result.errors, result
    return used, round(result.rps * round(seconds))


def main(seconds: float, rounds: int) -> None:
    ratios = []
    totals = {"hit": [0.0, 0], "forwarded": [0.0, 0]}
    with started(2) as cluster:
        leases_off(cluster)
        owner, other = cluster.nodes
        keys = written_keys(owner, KEYS, VALUE)
        pin_cluster(cluster)
        paths = [f"/v1/kv/{key}" for key in keys]
        for target in (owner, other):  # warm: connections, caches
            wrk(target.url, paths, 1, CONNECTIONS, pinned_to=LOAD_CORE)
        for _ in range(rounds):
            per_get = {}
            for name, target in (("hit", owner), ("forwarded", other)):
                used, requests = per_request(cluster.nodes, target.url, paths, seconds)
                totals[name][0] += sum(used)
                totals[name][1] += requests
                per_get[name] = sum(used) / requests * 1e6
                if name == "forwarded":
                    at_owner, at_other = (cpu / requests * 1e6 for cpu in used)
            ratios.append(per_get["forwarded"] / per_get["hit"])
            print(f"hit at the owner {per_get['hit']:.1f} µs of CPU per GET; through the other "
                  f"node {per_get['forwarded']:.1f} ({at_other:.1f} there, {at_owner:.1f} at "
                  f"the owner): {ratios[-1]:.2f}x")  # fmt: skip
    hit, forwarded = (cpu / requests * 1e6 for cpu, requests in totals.values())
    median = statistics.median(ratios)
    verdict = "met" if median < 2 else "MISSED"
    print(f"all rounds: hit {hit:.1f} µs, forwarded {forwarded:.1f} µs: {forwarded / hit:.2f}x")
    print(f"  forwarded / hit, median of {rounds} rounds: {median:.2f}x  (< 2x: {verdict})")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=1.0)
    parser.add_argument("--rounds", type=int, default=10)
    arguments = parser.parse_args()
    main(arguments.seconds, arguments.rounds)
