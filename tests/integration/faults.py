"""Fault injection for the linearizability tests: TCP relays that black-hole a link, and an
abusive client."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

import aiohttp


class TcpProxy:
    """A TCP relay on loopback that can black-hole traffic: a network partition between one
    node and etcd, while that node still reaches everything else."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.cut = False
        self._server: asyncio.Server | None = None
        self._pipes: set[asyncio.Task[None]] = set()

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        return int(self._server.sockets[0].getsockname()[1])

    def partition(self) -> None:
        """From now on, bytes in either direction are dropped and new connections hang."""
        self.cut = True

    def heal(self) -> None:
        """Drop the black-holed connections (clients reconnect) and relay again."""
        self.cut = False
        for pipe in list(self._pipes):
            pipe.cancel()

    async def close(self) -> None:
        self.heal()
        if self._server is not None:
            self._server.close()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._pipes.add(task)
        upstream_writer: asyncio.StreamWriter | None = None
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(*self.target)
            await asyncio.gather(self._pump(reader, upstream_writer),
                                 self._pump(upstream_reader, writer))  # fmt: skip
        except (OSError, asyncio.CancelledError):
            pass
        finally:
            self._pipes.discard(task)
            writer.close()
            # Cancelled before the pumps started, they never closed it.
            if upstream_writer is not None:
                upstream_writer.close()

    async def _pump(self, source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        try:
            while data := await source.read(65536):
                if self.cut:
                    continue  # black hole: the peer sees silence, not a reset
                sink.write(data)
                await sink.drain()
        finally:
            with contextlib.suppress(Exception):
                sink.close()


class Relays:
    """The TcpProxy relays a cluster is started through (``start_cluster(via=...)``).

    ``route`` is called from the thread that starts the cluster; the relays run on the
    test's event loop, where ``loop`` is.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, wanted: Callable[[int, str], bool]):
        self.loop = loop
        self.wanted = wanted  # (node index, service) -> whether to relay that connection
        self.by: dict[tuple[int, str], TcpProxy] = {}

    def route(self, node: int, service: str, endpoint: str) -> str:
        if not self.wanted(node, service):
            return endpoint
        host, _, port = endpoint.rpartition(":")
        proxy = TcpProxy(host, int(port))
        listening = asyncio.run_coroutine_threadsafe(proxy.start(), self.loop).result(10)
        self.by[(node, service)] = proxy
        return f"127.0.0.1:{listening}"

    async def close(self) -> None:
        for proxy in self.by.values():
            await proxy.close()


class Abuser:
    """A careless or hostile client beside the workload (issue 17): connections that send
    half a request line and stall, and big batchGets sent concurrently in a loop (odd
    loops ask every key, even loops half of them). Counts what it saw: stalled connections
    the nodes closed, batches answered and refused."""

    def __init__(self, urls: list[str], keys: list[str], stalled: int = 150,
                 concurrent: int = 12) -> None:  # fmt: skip
        self.urls, self.keys = urls, keys
        self.stalled, self.concurrent = stalled, concurrent
        self.closed = 0
        self.statuses: dict[int, int] = {}

    async def run(self, seconds: float, idle_timeout: float) -> None:
        """Abuse for ``seconds``; then wait until the stalled connections should have been
        closed (``idle_timeout`` after they stalled) and count those that were."""
        connections = [await self._stall(self.urls[i % len(self.urls)])
                       for i in range(self.stalled)]  # fmt: skip
        stop_at = asyncio.get_running_loop().time() + seconds
        async with aiohttp.ClientSession() as http:
            await asyncio.gather(*(self._batches(http, stop_at, n)
                                   for n in range(self.concurrent)))  # fmt: skip
        self.closed = sum(await asyncio.gather(
            *(self._closed(reader, idle_timeout + 1.0) for reader, _ in connections)))  # fmt: skip
        for _, writer in connections:
            writer.close()

    async def _stall(self, url: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        host, _, port = url.removeprefix("http://").rpartition(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(b"GET /v1/kv/lin-0 HT")
        return reader, writer

    async def _closed(self, reader: asyncio.StreamReader, within: float) -> bool:
        with contextlib.suppress(TimeoutError, ConnectionError):
            async with asyncio.timeout(within):
                while await reader.read(4096):
                    pass
                return True
        return False

    async def _batches(self, http: aiohttp.ClientSession, stop_at: float, n: int) -> None:
        loop = asyncio.get_running_loop()
        while loop.time() < stop_at:
            url = self.urls[n % len(self.urls)]
            keys = self.keys if n % 2 else self.keys[: len(self.keys) // 2]
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                async with http.post(f"{url}/v1/kv:batchGet", json={"keys": keys}) as response:
                    await response.read()
                    self.statuses[response.status] = self.statuses.get(response.status, 0) + 1
