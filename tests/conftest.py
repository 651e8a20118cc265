"""Fixtures that run real redis-server and etcd processes on free loopback ports.

Every process started here is stopped at teardown, also when the test fails; and each
dies with the test process if that is killed (see cachegrid.devcluster.servers).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest

from cachegrid.devcluster.cluster import LocalCluster
from cachegrid.devcluster.secure import Secrets
from cachegrid.devcluster.servers import PortAllocator, start_all
from cachegrid.store import QuorumStore, Replica
from tests.integration.netns import Netns
from tests.processes import FaultyEtcd, FaultyNode, FaultyRedis, etcd_cluster

RedisFactory = Callable[..., list[FaultyRedis]]
EtcdFactory = Callable[[int], list[FaultyEtcd]]


@pytest.fixture(scope="session")
def ports() -> PortAllocator:
    return PortAllocator()


@pytest.fixture
def redis_servers(
    tmp_path: Path, ports: PortAllocator
) -> Iterator[Callable[..., list[FaultyRedis]]]:
    """Factory: ``redis_servers(n, appendfsync=...)`` -> n running redis-servers."""
    started: list[FaultyRedis] = []

    def make(count: int, appendfsync: str = "everysec") -> list[FaultyRedis]:
        servers = [
            FaultyRedis(tmp_path / f"redis{len(started) + i}", ports.take(), appendfsync)
            for i in range(count)
        ]
        started.extend(servers)
        start_all(list(servers))
        return servers

    try:
        yield make
    finally:
        for server in started:
            server.stop()


@pytest.fixture
async def quorum_store() -> AsyncIterator[Callable[..., QuorumStore]]:
    """Factory: ``await quorum_store(addrs, timeout=...)`` -> a started QuorumStore (its
    replicas judged and certified, as a node's is before it serves), closed at teardown."""
    stores: list[QuorumStore] = []

    async def make(addrs: list[str], timeout: float = 0.5, **options: object) -> QuorumStore:  # noqa: ASYNC109 (the store's setting)
        replicas = [Replica(addr, timeout=timeout) for addr in addrs]
        store = QuorumStore(replicas, timeout=timeout, **options)  # type: ignore[arg-type]
        stores.append(store)
        await store.start()
        return store

    yield make
    for store in stores:
        await store.close()


@pytest.fixture
def etcd_servers(
    tmp_path: Path, ports: PortAllocator
) -> Iterator[Callable[[int], list[FaultyEtcd]]]:
    """Factory: ``etcd_servers(size)`` -> a running etcd cluster of ``size`` members."""
    started: list[FaultyEtcd] = []

    def make(size: int = 1) -> list[FaultyEtcd]:
        members = etcd_cluster(tmp_path / f"etcd-cluster{len(started)}", ports, size)
        started.extend(members)
        start_all(list(members))
        return members

    try:
        yield make
    finally:
        for member in started:
            member.stop()


@dataclass
class Cluster(LocalCluster):
    """``cachegrid up``'s cluster, on ports from the test's allocator, with what tests add:
    per-node configs (relays in front of a service), node 0 in a network namespace."""

    config: Path = Path()
    admin_token: str = "test-admin-token"
    netns: Netns | None = None  # node 0's network namespace, if it has one

    @property
    def urls(self) -> list[str]:
        return [node.url for node in self.nodes]

    def stop(self) -> None:
        super().stop()
        if self.netns is not None:
            self.netns.destroy()


def start_cluster(
    base: Path,
    ports: PortAllocator,
    *,
    nodes: int = 3,
    replicas: int = 3,
    node_config: str = "",
    via: Callable[[int, str, str], str] | None = None,
    etcd_args: tuple[str, ...] = (),
    netns: Netns | None = None,
    secure: bool = False,
    security_config: str = "",
) -> Cluster:
    """Start a whole cluster; the caller stops it (``Cluster.stop``).

    ``via(node_index, service, endpoint)`` may give a node another address for a service
    (``"etcd"``, ``"redis0"``, ``"redis1"``...): a fault-injecting proxy in front of it.
    By default every node uses the endpoints themselves. With ``netns``, node 0 runs in
    that network namespace (created here, destroyed by ``Cluster.stop``) and reaches etcd,
    the replicas and the other nodes over its veth link, where they listen too.
    """
    also = (netns.outer,) if netns else ()
    made = Secrets.create(base / "tls") if secure else None  # HTTPS, TLS, tokens, ACL
    etcd = etcd_cluster(base / "etcd", ports, 1, etcd_args, secure=made)
    etcd[0].also_listen = also
    redis = [FaultyRedis(base / f"redis{i}", ports.take(), also_bind=also, secure=made)
             for i in range(replicas)]  # fmt: skip
    base.mkdir(parents=True, exist_ok=True)
    config = base / "cachegrid.toml"
    cluster = Cluster(base, etcd, redis, [], config=config, netns=netns, secure=made)
    if netns is not None:
        try:
            netns.create()
        except BaseException:
            netns.destroy()
            raise
        via = _through_netns(netns.outer, via)

    config.write_text(
        cluster.config_toml(
            store="timeout = 0.5\nmax_value_bytes = 65536\n",
            node="lease_ttl = 2\nlease_margin = 0.3\n" + node_config,
        )
    )
    if security_config:
        config.write_text(config.read_text() + security_config)

    configs = [config] * nodes
    if via is not None:
        for index in range(nodes):
            text = config.read_text()
            services = {"etcd": etcd[0], **{f"redis{j}": r for j, r in enumerate(redis)}}
            for service, server in services.items():
                routed = via(index, service, server.endpoint)
                text = text.replace(f'"{server.endpoint}"', f'"{routed}"')
            configs[index] = base / f"node{index}.toml"
            configs[index].write_text(text)

    def node(i: int) -> FaultyNode:
        if netns is None:
            return FaultyNode(base / f"node{i}", f"node{i}", ports.take(), configs[i],
                              secure=made)  # fmt: skip
        # The others listen where node 0 can forward to them: the host side of its link.
        host, wrapper = (netns.inner, netns.wrapper) if i == 0 else (netns.outer, ())
        return FaultyNode(base / f"node{i}", f"node{i}", ports.take(), configs[i],
                           host=host, wrapper=wrapper)  # fmt: skip

    cluster.nodes = [node(i) for i in range(nodes)]
    cluster.start_processes()
    return cluster


def _through_netns(
    outer: str, via: Callable[[int, str, str], str] | None
) -> Callable[[int, str, str], str]:
    """Node 0 (in the namespace) reaches every service at the host side of its link."""

    def route(index: int, service: str, endpoint: str) -> str:
        if index == 0:
            return endpoint.replace("127.0.0.1", outer)
        return via(index, service, endpoint) if via else endpoint

    return route


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    """An aiohttp client session for the test, fully closed afterwards."""
    async with aiohttp.ClientSession() as session:
        yield session
    # close() leaves transports to finish closing on the next loop turns; without this, the
    # loop may end first and a transport is collected later, in some other test, as an
    # "unclosed transport" ResourceWarning.
    await asyncio.sleep(0.01)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, ports: PortAllocator) -> Iterator[Cluster]:
    """One cluster shared by the tests of a module that do not break it."""
    running = start_cluster(tmp_path_factory.mktemp("cluster"), ports)
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture
def fresh_cluster(tmp_path: Path, ports: PortAllocator) -> Iterator[Callable[..., Cluster]]:
    """Factory of clusters for tests that break them; each stopped at teardown."""
    started: list[Cluster] = []

    def make(**options: object) -> Cluster:
        running = start_cluster(tmp_path / f"cluster{len(started)}", ports, **options)  # type: ignore[arg-type]
        started.append(running)
        return running

    try:
        yield make
    finally:
        for running in started:
            running.stop()
