"""What the resource limits of issue 17 cost a hot GET, measured in one run.

Starts a real cluster (etcd, 3 Redis replicas, 2 nodes, read leases off so that a GET
through the other node is forwarded) and loads it with wrk: hot GETs at the owner and
through a non-owner, alternately with the node as built and with the nodes restarted with
the limits' code taken out (bench/unlimited/sitecustomize.py), five runs in all; the
ratio is the sum of the "with limits" rates over the sum of the "without" ones:

    .venv/bin/python bench/limits_cost.py [--seconds 5] [--connections 32]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from cachegrid.devcluster.cluster import LocalCluster
from harness import Result, leases_off, started, written_keys, wrk

VALUE = {"name": "hot", "payload": "x" * 64}
UNLIMITED = ("env", f"PYTHONPATH={Path(__file__).parent / 'unlimited'}")


def restart(cluster: LocalCluster, wrapper: tuple[str, ...]) -> None:
    for node in cluster.nodes:
        node.stop()
        node.wrapper = wrapper
        node.start(timeout=60)
    time.sleep(1.0)


def measure(cluster: LocalCluster, paths: list[str], seconds: float,
            connections: int) -> tuple[Result, Result]:  # fmt: skip
    owner, other = cluster.nodes[0].url, cluster.nodes[1].url
    for node in (owner, other):  # warm: fills, and connections to the owner
        wrk(node, paths, 1, connections)
    return wrk(owner, paths, seconds, connections), wrk(other, paths, seconds, connections)


def main(seconds: float, connections: int) -> None:
    with started(2) as cluster:
        leases_off(cluster)
        keys = written_keys(cluster.nodes[0], 500, VALUE, "hot-")
        paths = [f"/v1/kv/{k}" for k in keys]
        runs: dict[bool, list[tuple[Result, Result]]] = {True: [], False: []}
        for limited in (True, False, True, False, True):
            restart(cluster, () if limited else UNLIMITED)
            runs[limited].append(measure(cluster, paths, seconds, connections))
    print(f"\n{'run':<36}{'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'p99.9':>8}")
    for limited, name in ((True, "with limits"), (False, "without")):
        for at_owner, via in runs[limited]:
            print(f"{'hot GET at the owner, ' + name:<36}{at_owner.cells()}")
            print(f"{'  via a non-owner, ' + name:<36}{via.cells()}")
    print("\nwith limits / without (mean rates)")
    for index, name in ((0, "hot GET at the owner"), (1, "GET via a non-owner")):
        mean = {k: sum(r[index].rps for r in rs) / len(rs) for k, rs in runs.items()}
        print(f"  {name:<24}{mean[True] / mean[False]:6.3f}x")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--connections", type=int, default=32)
    arguments = parser.parse_args()
    main(arguments.seconds, arguments.connections)
