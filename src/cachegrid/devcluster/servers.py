"""Real server processes on loopback: redis-server, etcd and cache nodes, for ``cachegrid up``,
the benchmarks and the tests (which add faults: tests/processes.py).

Owns: how to start, probe, restart and stop a local redis-server, etcd or cachegrid node
process, and how to pick free loopback ports for them.

Invariants:
- Every process listens on 127.0.0.1 only, in its own data directory, logging to a file.
- A started process dies with the process that started it (PR_SET_PDEATHSIG, set by
  util-linux's ``setpriv`` so that no Python runs between fork and exec: with gRPC threads
  alive in the parent, that can crash the child), so an interrupted test run or a killed
  ``cachegrid up`` leaves nothing running.
- ``stop`` is idempotent and always reaps the child: SIGTERM, then SIGKILL after a grace.
- Ports are below the kernel's ephemeral range (32768+), where client sockets cannot
  take them, and no allocator hands out the same port twice.
"""

from __future__ import annotations

import os
import random
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from cachegrid.devcluster.secure import STORE_USER, Secrets

# Prefix of every command: the kernel kills the server if the process that started it dies.
_DIE_WITH_PARENT = ["setpriv", "--pdeathsig", "KILL", "--"]


class PortAllocator:
    """Hands out distinct free TCP ports on 127.0.0.1 from [low, high)."""

    def __init__(self, low: int = 20000, high: int = 32000, seed: int | None = None) -> None:
        self._low, self._high = low, high
        self._given: set[int] = set()
        self._random = random.Random(seed)

    def take(self) -> int:
        for _ in range(1000):
            port = self._random.randrange(self._low, self._high)
            if port not in self._given and bindable(port):
                self._given.add(port)
                return port
        raise RuntimeError(f"no free port in [{self._low}, {self._high})")


def bindable(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


class ServerProcess:
    """A child server process with a data directory and a log file."""

    name = "server"

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.log_path = data_dir.parent / f"{data_dir.name}.log"
        self._popen: subprocess.Popen[bytes] | None = None

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<{type(self).__name__} {self.endpoint} pid={self.pid} {state}>"

    @property
    def endpoint(self) -> str:
        raise NotImplementedError

    def argv(self) -> list[str]:
        raise NotImplementedError

    def is_ready(self) -> bool:
        raise NotImplementedError

    @property
    def pid(self) -> int | None:
        return self._popen.pid if self._popen else None

    @property
    def running(self) -> bool:
        return self._popen is not None and self._popen.poll() is None

    def start(self, timeout: float = 20.0) -> None:
        """Start the process and wait until it answers; RuntimeError with its log if not."""
        self.spawn()
        self.wait_ready(timeout)

    def spawn(self) -> None:
        """Start the process without waiting for it to answer."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self._popen = subprocess.Popen(
                [*_DIE_WITH_PARENT, *self.argv()],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.running:
                raise RuntimeError(f"{self.name} exited at start; log:\n{self.log_tail()}")
            if self.is_ready():
                return
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"{self.name} not ready after {timeout}s; log:\n{self.log_tail()}")

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self, grace: float = 5.0) -> None:
        """SIGTERM, then SIGKILL after ``grace`` seconds; always reaps. Idempotent."""
        if self._popen is None:
            return
        if self._popen.poll() is None:
            self._signal(signal.SIGCONT)  # a paused process cannot handle SIGTERM
            self._popen.terminate()
            try:
                self._popen.wait(grace)
            except subprocess.TimeoutExpired:
                self._popen.kill()
                self._popen.wait()
        self._popen = None

    def _signal(self, signum: int) -> None:
        if self._popen is not None and self._popen.poll() is None:
            os.kill(self._popen.pid, signum)


class RedisServer(ServerProcess):
    """A redis-server with AOF on, as every store replica runs (DESIGN.md §5)."""

    name = "redis-server"

    def __init__(
        self, data_dir: Path, port: int, appendfsync: str = "everysec",
        also_bind: tuple[str, ...] = (), secure: Secrets | None = None,
    ) -> None:  # fmt: skip
        super().__init__(data_dir)
        self.port = port
        self.appendfsync = appendfsync
        self.also_bind = also_bind  # addresses to listen on besides 127.0.0.1
        # Secure mode: TLS only (client certificates required) and the ACL's users.
        self.secure = secure

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"

    def argv(self) -> list[str]:
        return [
            "redis-server",
            "--bind", "127.0.0.1", *self.also_bind,
            *self._listen_args(),
            "--dir", str(self.data_dir),
            "--appendonly", "yes",
            "--appendfsync", self.appendfsync,
            "--save", "",
            "--daemonize", "no",
            "--protected-mode", "no",
        ]  # fmt: skip

    def _listen_args(self) -> list[str]:
        if self.secure is None:
            return ["--port", str(self.port)]
        made = self.secure
        return ["--port", "0", "--tls-port", str(self.port), "--tls-cert-file", str(made.cert),
                "--tls-key-file", str(made.key), "--tls-ca-cert-file", str(made.ca),
                "--tls-auth-clients", "yes", "--aclfile", str(made.acl_file)]  # fmt: skip

    def is_ready(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as raw:
                if self.secure is None:
                    return _pong(raw, b"")
                made = self.secure
                context = ssl.create_default_context(cafile=str(made.ca))
                context.load_cert_chain(str(made.cert), str(made.key))
                with context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
                    auth = b"AUTH %s %s\r\n" % (STORE_USER.encode(), made.store_password.encode())
                    return _pong(tls, auth)
        except OSError:
            return False


def _pong(conn: socket.socket, before: bytes) -> bool:
    """True if the server answers PING (after ``before``, an AUTH) with PONG."""
    conn.sendall(before + b"PING\r\n")
    answer = b""
    while answer.count(b"\r\n") < (2 if before else 1):
        received = conn.recv(64)
        if not received:
            return False
        answer += received
    return answer.endswith(b"+PONG\r\n")


class EtcdServer(ServerProcess):
    """One etcd member; ``initial_cluster`` lists every member as name=peer-url."""

    name = "etcd"

    def __init__(
        self,
        data_dir: Path,
        member_name: str,
        client_port: int,
        peer_port: int,
        initial_cluster: str | None = None,
        extra_args: tuple[str, ...] = (),
        secure: Secrets | None = None,
    ) -> None:
        super().__init__(data_dir)
        self.secure = secure  # secure mode: clients over TLS, with a client certificate
        self.member_name = member_name
        self.client_port = client_port
        self.peer_port = peer_port
        self.initial_cluster = initial_cluster or f"{member_name}={self.peer_url}"
        self.extra_args = extra_args  # more etcd flags (e.g. a small --quota-backend-bytes)
        self.also_listen: tuple[str, ...] = ()  # client addresses besides 127.0.0.1

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.client_port}"

    @property
    def url(self) -> str:
        return f"{self._scheme}://127.0.0.1:{self.client_port}"

    @property
    def _scheme(self) -> str:
        return "https" if self.secure else "http"

    @property
    def peer_url(self) -> str:
        return f"http://127.0.0.1:{self.peer_port}"

    def argv(self) -> list[str]:
        return [
            "etcd",
            "--name", self.member_name,
            "--data-dir", str(self.data_dir),
            "--listen-client-urls", ",".join(
                [self.url,
                 *(f"{self._scheme}://{host}:{self.client_port}" for host in self.also_listen)]
            ),
            "--advertise-client-urls", self.url,
            "--listen-peer-urls", self.peer_url,
            "--initial-advertise-peer-urls", self.peer_url,
            "--initial-cluster", self.initial_cluster,
            "--initial-cluster-state", "new",
            "--initial-cluster-token", "cachegrid",
            # History is bounded: every node acks each second, and an etcd that reaches
            # its space quota refuses every write (NOSPACE). Revision mode compacts every
            # 5 minutes to (current - retention); nodes re-snapshot if they were behind.
            "--auto-compaction-mode", "revision",
            "--auto-compaction-retention", "10000",
            "--heartbeat-interval", "50",
            "--election-timeout", "500",
            "--log-level", "warn",
            *self._tls_args(),
            *self.extra_args,
        ]  # fmt: skip

    def _tls_args(self) -> list[str]:
        if self.secure is None:
            return []
        made = self.secure
        return ["--cert-file", str(made.cert), "--key-file", str(made.key),
                "--trusted-ca-file", str(made.ca), "--client-cert-auth"]  # fmt: skip

    def is_ready(self) -> bool:
        context = None
        if self.secure is not None:
            context = ssl.create_default_context(cafile=str(self.secure.ca))
            context.load_cert_chain(str(self.secure.cert), str(self.secure.key))
        try:
            with urllib.request.urlopen(f"{self.url}/health", timeout=0.5,
                                        context=context) as response:  # fmt: skip
                return b'"health":"true"' in response.read()
        except OSError:
            return False


def start_all(servers: list[ServerProcess], timeout: float = 20.0) -> None:
    """Start every server, then wait for all (an etcd member alone cannot become ready)."""
    try:
        for server in servers:
            server.spawn()
        for server in servers:
            server.wait_ready(timeout)
    except BaseException:
        for server in servers:
            server.stop()
        raise


class NodeProcess(ServerProcess):
    """A cachegrid node (``cachegrid node``), ready once its /readyz answers 200."""

    name = "cachegrid-node"

    def __init__(
        self, data_dir: Path, node_id: str, port: int, config: Path, *,
        host: str = "127.0.0.1", wrapper: tuple[str, ...] = (), secure: Secrets | None = None,
    ) -> None:  # fmt: skip
        super().__init__(data_dir)
        self.node_id = node_id
        self.port = port
        self.config = config
        self.host = host
        self.wrapper = wrapper  # a command the node runs under (e.g. ip netns exec NS)
        self.secure = secure  # the node serves HTTPS (cachegrid up --secure)

    @property
    def endpoint(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def url(self) -> str:
        return f"{'https' if self.secure else 'http'}://{self.endpoint}"

    def argv(self) -> list[str]:
        return [*self.wrapper, sys.executable, "-m", "cachegrid", "node",
                "--config", str(self.config), "--id", self.node_id,
                "--listen", self.endpoint]  # fmt: skip

    def is_ready(self) -> bool:
        try:
            context = None
            if self.secure is not None:  # with the certificate, for nodes that ask for one
                context = ssl.create_default_context(cafile=str(self.secure.ca))
                context.load_cert_chain(str(self.secure.cert), str(self.secure.key))
            with urllib.request.urlopen(f"{self.url}/readyz", timeout=0.5,
                                        context=context) as response:  # fmt: skip
                return bool(response.status == 200)
        except OSError:
            return False
