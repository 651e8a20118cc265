"""``cachegrid up``: a whole local cluster on loopback, from real binaries.

Owns: the port layout of a local cluster, starting its processes in order, the
``<data-dir>/cluster.json`` manifest and ``<data-dir>/cachegrid.toml`` config it writes,
and stopping everything it started.

Invariants:
- cluster.json is written only once every process answers, and removed on shutdown, so
  its presence means "ready".
- Whatever happens (a process fails to start, SIGINT, SIGTERM), every process started is
  stopped before ``run`` returns.
"""

from __future__ import annotations

import secrets
import signal
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from cachegrid.config import EtcdConfig
from cachegrid.devcluster.secure import Secrets, private
from cachegrid.devcluster.servers import (
    EtcdServer,
    NodeProcess,
    RedisServer,
    ServerProcess,
    bindable,
    start_all,
)

ETCD_CLIENT_OFFSET, ETCD_PEER_OFFSET, REDIS_OFFSET, NODE_OFFSET = 0, 1, 10, 20
ETCD_PREFIX = EtcdConfig().prefix  # the nodes of a local cluster use the default


@dataclass
class LocalCluster:
    data_dir: Path
    etcd: list[EtcdServer]
    redis: list[RedisServer]
    nodes: list[NodeProcess]
    admin_token: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    secure: Secrets | None = None  # HTTPS and tokens (cachegrid up --secure)

    @classmethod
    def plan(
        cls, data_dir: Path, *, nodes: int, replicas: int, base_port: int, appendfsync: str,
        secure: bool = False,
    ) -> LocalCluster:  # fmt: skip
        """The cluster's processes on ports from ``base_port`` up; ValueError if one is taken.
        With ``secure``, a CA, certificates and tokens are made under ``<data_dir>/tls``."""
        data_dir = data_dir.resolve()
        made = Secrets.create(data_dir / "tls") if secure else None
        etcd = EtcdServer(
            data_dir / "etcd",
            "etcd0",
            base_port + ETCD_CLIENT_OFFSET,
            base_port + ETCD_PEER_OFFSET,
            secure=made,
        )
        redis = [
            RedisServer(
                data_dir / f"redis{i}", base_port + REDIS_OFFSET + i, appendfsync, secure=made
            )
            for i in range(replicas)
        ]
        config = data_dir / "cachegrid.toml"
        node_processes = [
            NodeProcess(
                data_dir / f"node{i}",
                f"node{i}",
                base_port + NODE_OFFSET + i,
                config,
                secure=made,
            )
            for i in range(nodes)
        ]
        ports = [etcd.client_port, etcd.peer_port, *(r.port for r in redis),
                 *(n.port for n in node_processes)]  # fmt: skip
        taken = [p for p in ports if not bindable(p)]
        if taken:
            raise ValueError(f"ports already in use: {taken}; choose another --base-port")
        return cls(data_dir, [etcd], redis, node_processes, secure=made)

    @property
    def processes(self) -> list[ServerProcess]:
        return [*self.etcd, *self.redis, *self.nodes]

    @property
    def manifest_path(self) -> Path:
        return self.data_dir / "cluster.json"

    def start(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.manifest_path.unlink(missing_ok=True)
        # Both hold tokens (the admin token; a secure cluster's every token): owner only.
        private(self.data_dir / "cachegrid.toml", self.config_toml().encode())
        self.start_processes()
        private(self.manifest_path, orjson.dumps(self.manifest(), option=orjson.OPT_INDENT_2))

    def start_processes(self) -> None:
        """etcd and the replicas, then the nodes (once there is a store to judge and an
        etcd to join); if anything fails to start, everything started is stopped."""
        try:
            start_all([*self.etcd, *self.redis])
            if self.secure is not None:  # etcd's RBAC: the nodes may touch their prefix only
                self.secure.etcd_rbac(self.etcd[0].url, ETCD_PREFIX)
            start_all(list(self.nodes), timeout=60)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        self.manifest_path.unlink(missing_ok=True)
        for process in reversed(self.processes):
            process.stop()

    def manifest(self) -> dict[str, Any]:
        """The contents of cluster.json (DESIGN.md §8)."""
        return {
            "nodes": [{"id": n.node_id, "url": n.url, "pid": n.pid} for n in self.nodes],
            "redis": [{"addr": r.endpoint, "pid": r.pid} for r in self.redis],
            "etcd": [{"url": e.url, "pid": e.pid} for e in self.etcd],
            "admin_token": self.admin_token,
            **({"ca": str(self.secure.ca), "tokens": self.secure.tokens} if self.secure else {}),
        }

    def config_toml(self, *, store: str = "", node: str = "") -> str:
        """A config file for this cluster, for nodes and tools pointed at it; ``store`` and
        ``node`` are more lines for those sections."""
        etcd = ", ".join(f'"{e.endpoint}"' for e in self.etcd)
        redis = ", ".join(f'"{r.endpoint}"' for r in self.redis)
        appendfsync = self.redis[0].appendfsync if self.redis else "everysec"
        return (
            f"# Written for the local cluster in {self.data_dir}.\n"
            f"[etcd]\nendpoints = [{etcd}]\n\n"
            f'[store]\nreplicas = [{redis}]\nappendfsync = "{appendfsync}"\n{store}\n'
            f'[node]\nadmin_token = "{self.admin_token}"\n{node}'
            + (f"\n{self.secure.config_toml()}" if self.secure else "")
        )

    def table(self) -> str:
        rows = [("etcd", e.url, e.pid) for e in self.etcd]
        rows += [(f"redis{i}", r.endpoint, r.pid) for i, r in enumerate(self.redis)]
        rows += [(n.node_id, n.url, n.pid) for n in self.nodes]
        lines = [f"{'process':<10} {'address':<28} pid"]
        lines += [f"{name:<10} {addr:<28} {pid}" for name, addr, pid in rows]
        return "\n".join(lines)


def run(cluster: LocalCluster) -> None:
    """Start ``cluster``, print it, and keep it up until SIGINT or SIGTERM; then stop it."""
    stop = threading.Event()
    previous = {
        signum: signal.signal(signum, lambda *_: stop.set())
        for signum in (signal.SIGINT, signal.SIGTERM)
    }
    try:
        cluster.start()
        print(cluster.table())
        print(f"cluster ready: {cluster.manifest_path} (Ctrl-C stops it)", flush=True)
        _watch(cluster, stop)
    finally:
        cluster.stop()
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        print("cluster stopped", flush=True)


def _watch(cluster: LocalCluster, stop: threading.Event) -> None:
    """Wait for a stop signal, reporting any process that dies on its own meanwhile."""
    reported: set[int] = set()
    while not stop.wait(0.5):
        for process in cluster.processes:
            if not process.running and id(process) not in reported:
                reported.add(id(process))
                print(f"warning: {process!r} exited; log: {process.log_path}", flush=True)
