"""Faults on real server processes, and etcd clusters of several members: test tooling on
top of cachegrid.devcluster.servers (the product never kills, freezes or wipes a server).

``FaultyRedis``, ``FaultyEtcd`` and ``FaultyNode`` are the servers with ``kill`` (SIGKILL:
a crash), ``pause``/``resume`` (SIGSTOP/SIGCONT: a process frozen, its sockets open) and
``wipe`` (its data directory deleted: it restarts empty).
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
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


def node_that_fails(config: str, tmp_path: Path, ports: PortAllocator) -> str:
    """Run ``cachegrid node`` with ``config`` (etcd and the replicas nowhere to be found,
    at 127.0.0.1:9, unless it says otherwise): it must exit 1 with a message and no
    traceback; what it wrote to stderr."""
    path = tmp_path / "cachegrid.toml"
    path.write_text('[etcd]\nendpoints = ["127.0.0.1:9"]\n'
                    '[store]\nreplicas = ["127.0.0.1:9"]\n' + config)  # fmt: skip
    done = subprocess.run(
        [sys.executable, "-m", "cachegrid", "node", "--config", str(path),
         "--listen", f"127.0.0.1:{ports.take()}"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 1, done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    return done.stderr


def schemathesis_finds_nothing(spec_url: str, authorization: str, *options: str) -> None:
    """Fuzz a live node against its OpenAPI description (bounded, fixed seed), with the
    server-error, status, content-type and response-schema checks; drain and rebalance
    are left out (they change the cluster under the rest; they have their own tests)."""
    command = [
        str(Path(sys.executable).parent / "schemathesis"), "run", spec_url,
        "-H", f"Authorization: {authorization}",
        "--checks", "not_a_server_error,status_code_conformance,content_type_conformance,"
                    "response_schema_conformance",
        "--seed", "1", "--workers", "2",
        "--exclude-path", "/admin/drain", "--exclude-path", "/admin/rebalance", *options,
    ]  # fmt: skip
    run = subprocess.run(command, capture_output=True, text=True, timeout=180)
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]
    assert "generated" in run.stdout, run.stdout[-2000:]
