"""A cache node's coordination alone, as a process, for fault tests of invariant S1.

Runs a Coordinator and logs its serving decision as JSON lines, on every change and every
20 ms: {"t": the lease clock's time (cachegrid.clock), "deadline": local lease deadline,
"active": indices of the sample keys for which ``Coordinator.can_serve`` is true,
"incarnation": ...}. That clock (CLOCK_BOOTTIME) is shared by all processes on the
machine, so the logs of several agents can be compared in time.
SIGTERM stops it gracefully.

    python -m tests.agents.coord_agent --etcd H:P[,H:P] --node-id n1 --log FILE
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
from typing import BinaryIO

import orjson

from cachegrid.clock import now
from cachegrid.coord.coordinator import Coordinator, CoordSettings
from cachegrid.coord.etcd import Etcd


def sample_keys(count: int) -> list[str]:
    return [f"sample-{i}" for i in range(count)]


async def main(args: argparse.Namespace, log: BinaryIO) -> None:
    keys = sample_keys(args.keys)
    etcd = Etcd(args.etcd.split(","), timeout=1.0)
    settings = CoordSettings(
        node_id=args.node_id, addr=f"127.0.0.1:{args.port}", prefix=args.prefix,
        lease_ttl=args.ttl, lease_margin=args.margin,
    )  # fmt: skip
    coordinator: Coordinator

    def record() -> None:
        # The node's real decision (``can_serve``: lease, deadline, health, ownership), not
        # a copy of it; the deadline only bounds how long that decision can last unseen
        # (a paused agent logs nothing, and serves nothing past it either).
        session = coordinator.session
        active = [i for i, key in enumerate(keys) if coordinator.can_serve(key)]
        deadline = session.deadline if session is not None and coordinator.lease_alive() else 0
        entry = {"t": now(), "deadline": deadline, "active": active,
                 "incarnation": coordinator.incarnation}  # fmt: skip
        log.write(orjson.dumps(entry) + b"\n")

    coordinator = Coordinator(etcd, settings, on_change=record)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await coordinator.start()
    record()
    while not stop.is_set():
        record()
        await asyncio.sleep(0.02)
    await coordinator.stop()
    record()
    await etcd.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--etcd", required=True)
    parser.add_argument("--node-id", required=True)
    parser.add_argument("--log", required=True)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--prefix", default="/cachegrid")
    parser.add_argument("--ttl", type=int, default=2)
    parser.add_argument("--margin", type=float, default=0.3)
    parser.add_argument("--keys", type=int, default=256)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    arguments = parser.parse_args()
    with open(arguments.log, "ab", buffering=0) as log_file:
        asyncio.run(main(arguments, log_file))
