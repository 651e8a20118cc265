"""Fixtures that run real redis-server and etcd processes on free loopback ports.

Every process started here is stopped at teardown, also when the test fails; and each
dies with the test process if that is killed (see cachegrid.servers).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest

from cachegrid.servers import EtcdServer, PortAllocator, RedisServer, etcd_cluster, start_all
from cachegrid.store import QuorumStore, Replica

RedisFactory = Callable[..., list[RedisServer]]
EtcdFactory = Callable[[int], list[EtcdServer]]


@pytest.fixture(scope="session")
def ports() -> PortAllocator:
    return PortAllocator()


@pytest.fixture
def redis_servers(
    tmp_path: Path, ports: PortAllocator
) -> Iterator[Callable[..., list[RedisServer]]]:
    """Factory: ``redis_servers(n, appendfsync=...)`` -> n running redis-servers."""
    started: list[RedisServer] = []

    def make(count: int, appendfsync: str = "everysec") -> list[RedisServer]:
        servers = [
            RedisServer(tmp_path / f"redis{len(started) + i}", ports.take(), appendfsync)
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
    """Factory: ``quorum_store(addrs, timeout=...)`` -> a QuorumStore closed at teardown."""
    stores: list[QuorumStore] = []

    def make(addrs: list[str], timeout: float = 0.5, **options: object) -> QuorumStore:
        replicas = [Replica(addr, timeout=timeout) for addr in addrs]
        store = QuorumStore(replicas, timeout=timeout, **options)  # type: ignore[arg-type]
        stores.append(store)
        return store

    yield make
    for store in stores:
        await store.close()


@pytest.fixture
def etcd_servers(
    tmp_path: Path, ports: PortAllocator
) -> Iterator[Callable[[int], list[EtcdServer]]]:
    """Factory: ``etcd_servers(size)`` -> a running etcd cluster of ``size`` members."""
    started: list[EtcdServer] = []

    def make(size: int = 1) -> list[EtcdServer]:
        members = etcd_cluster(tmp_path / f"etcd-cluster{len(started)}", ports, size)
        started.extend(members)
        start_all(list(members))
        return members

    try:
        yield make
    finally:
        for member in started:
            member.stop()
