"""The node's listening socket, with a bound on open connections.

Owns: accepting connections for the aiohttp server (instead of aiohttp's ``TCPSite``), and
refusing those past ``max_connections``: each gets a complete JSON 503 answer with
``Retry-After`` and ``Connection: close``, and is closed at once, so a flood of connections
can neither exhaust the process's file descriptors nor starve the connections it has.

Invariants:
- At most ``max_connections`` connections are served at once (counted as aiohttp's server
  counts them: from ``connection_made`` until the handler is gone); a refused connection
  costs one small write and is never read.
- Stalled connections are not this module's concern: aiohttp's keep-alive timer, which
  app.py sets to ``node.idle_timeout``, closes a connection that has not completed a request
  head within that time of its start or of its last answer.
- Accepting past the process's descriptor limit (EMFILE) is asyncio's: it logs once, stops
  accepting for a second and goes on serving the connections it has.
"""

from __future__ import annotations

import asyncio
from typing import cast

import orjson
from aiohttp import web

from cachegrid.errors import Unavailable
from cachegrid.metrics import Metrics

_MESSAGE = "too many open connections (node.max_connections)"
_BODY = orjson.dumps({"error": {"code": Unavailable.code, "message": _MESSAGE}})
REFUSAL = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
    b"Retry-After: 1\r\nConnection: close\r\nContent-Length: %d\r\n\r\n%s" % (len(_BODY), _BODY)
)


# Seconds a refused connection stays open for its answer to be read.
LINGER = 1.0


class _Refused(asyncio.Protocol):
    """A connection past the limit: answered once, then closed once the client has had
    time to read it. What the client sends is read and dropped meanwhile: closing a socket
    with unread data resets the connection, and the client would lose the answer."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses: typed by a cast only.
        stream = cast(asyncio.WriteTransport, transport)
        stream.write(REFUSAL)
        stream.write_eof()
        asyncio.get_running_loop().call_later(LINGER, transport.close)

    def data_received(self, data: bytes) -> None:
        """Dropped."""


class Listener:
    def __init__(self, server: web.Server, max_connections: int, metrics: Metrics) -> None:
        self._server_protocols = server
        self.max_connections = max_connections
        self._refused = metrics.connections_refused
        self._socket_server: asyncio.Server | None = None

    def __repr__(self) -> str:
        return f"<Listener open={self.open}/{self.max_connections}>"

    @property
    def open(self) -> int:
        """Connections served now. (aiohttp's ``connections`` copies its table into a
        list on every call; its length is read directly here, on every accept.)"""
        table = getattr(self._server_protocols, "_connections", None)
        return len(table) if table is not None else len(self._server_protocols.connections)

    def _protocol(self) -> asyncio.BaseProtocol:
        if self.open >= self.max_connections:
            self._refused.inc()
            return _Refused()
        return self._server_protocols()

    async def start(self, host: str, port: int) -> None:
        loop = asyncio.get_running_loop()
        self._socket_server = await loop.create_server(self._protocol, host, port,
                                                       reuse_address=True)  # fmt: skip

    async def close(self) -> None:
        """Stop accepting (the connections open are aiohttp's to drain)."""
        if self._socket_server is not None:
            self._socket_server.close()
