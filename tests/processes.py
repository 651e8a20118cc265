"""Faults on real server processes, and etcd clusters of several members: test tooling on
top of cachegrid.devcluster.servers (the product never kills, freezes or wipes a server).

``FaultyRedis``, ``FaultyEtcd`` and ``FaultyNode`` are the servers with ``kill`` (SIGKILL:
a crash), ``pause``/``resume`` (SIGSTOP/SIGCONT: a process frozen, its sockets open) and
``wipe`` (its data directory deleted: it restarts empty).
"""

from __future__ import annotations

import shutil
import signal
from pathlib import Path

from cachegrid.devcluster.secure import Secrets
from cachegrid.devcluster.servers import (
    EtcdServer,
    NodeProcess,
    PortAllocator,
    RedisServer,
    ServerProcess,
)


class Faults(ServerProcess):
    def kill(self) -> None:
        """SIGKILL: a crash, with no chance to flush or clean up."""
        if self._popen is not None:
            self._popen.kill()
            self._popen.wait()
            self._popen = None

    def pause(self) -> None:
        self._signal(signal.SIGSTOP)

    def resume(self) -> None:
        self._signal(signal.SIGCONT)

    def wipe(self) -> None:
        """Delete the data directory (the process must be stopped): it restarts empty."""
        if self.running:
            raise RuntimeError(f"cannot wipe a running {self.name}")
        shutil.rmtree(self.data_dir, ignore_errors=True)


class FaultyRedis(Faults, RedisServer):
    pass


class FaultyEtcd(Faults, EtcdServer):
    pass


class FaultyNode(Faults, NodeProcess):
    pass


def etcd_cluster(
    base_dir: Path,
    ports: PortAllocator,
    size: int,
    extra_args: tuple[str, ...] = (),
    secure: Secrets | None = None,
) -> list[FaultyEtcd]:
    """``size`` etcd members forming one cluster, not yet started (clients over TLS with
    ``secure``)."""
    names = [f"etcd{i}" for i in range(size)]
    peer_ports = [ports.take() for _ in names]
    initial = ",".join(f"{n}=http://127.0.0.1:{p}" for n, p in zip(names, peer_ports, strict=True))
    return [
        FaultyEtcd(
            base_dir / name, name, ports.take(), peer_port, initial, extra_args, secure=secure
        )
        for name, peer_port in zip(names, peer_ports, strict=True)
    ]
