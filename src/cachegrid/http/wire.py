"""Pre-encoded HTTP/1.1 answers for cache hits: the bytes a hit writes, built once per entry.

Owns: the exact wire form of a 200 GET answer, and writing it straight to the connection;
and the wire form of the answers the hit lane passes back from an owner (``encode``).
aiohttp's ``web.Response`` builds a header multidict, formats and serializes it for every
answer; on a hit that costs more than everything else the node does (bench/harness.py), so
the fixed parts are encoded ahead: the status line and per-node headers once a second (the
Date changes); each entry's own headers (ETag, Content-Length) are encoded once, when it
is cached (serving/entry.py).

Invariants:
- What is written is a complete HTTP/1.1 response with the same headers the ordinary path
  sends (Content-Type, ETag, X-Cache, X-Cachegrid-Node, Content-Length, plus Date).
- Only for HTTP/1.1 keep-alive requests (``usable``): anything else (HTTP/1.0, Connection:
  close) takes the ordinary ``web.Response`` path, which knows those rules.
- Back-pressure holds: past the transport's high-water mark, the answer waits for the
  buffer to drain, as aiohttp's own writer does, so a client that pipelines requests
  without reading cannot make the node buffer without bound.
- ``EncodedResponse`` is not a ``web.StreamResponse``: it has only what aiohttp's request
  handler uses when no access log is configured, which is how app.py runs the node.
"""

from __future__ import annotations

import time
from email.utils import formatdate
from http import HTTPStatus

from aiohttp import web
from aiohttp.http import HttpVersion11

from cachegrid import requestids

# Above this many bytes waiting in the transport, a hit awaits the drain.
HIGH_WATER = 64 * 1024


# Status lines by status.
_STATUS_LINES = {status.value: f"HTTP/1.1 {status.value} {status.phrase}\r\n".encode()
                 for status in HTTPStatus}  # fmt: skip


class DateLine:
    """The ``Date`` header line, re-encoded when the second changes."""

    __slots__ = ("_line", "_second")

    def __init__(self) -> None:
        self._second, self._line = -1, b""

    def current(self) -> bytes:
        now = int(time.time())
        if now != self._second:
            self._line = b"Date: " + formatdate(now, usegmt=True).encode() + b"\r\n"
            self._second = now
        return self._line


def encode(status: int, date: bytes, headers: bytes, body: bytes) -> bytes:
    """A whole HTTP/1.1 keep-alive answer: ``headers`` are complete lines (CRLF each);
    Content-Length is added."""
    line = _STATUS_LINES.get(status) or b"HTTP/1.1 %d Unknown\r\n" % status
    return b"%s%s%sContent-Length: %d\r\n\r\n%s" % (line, date, headers, len(body), body)


class HitPrefix:
    """The status line and the headers that are the same for every hit of this node
    (``X-Cache`` is ``hit``, ``miss`` or ``replica``; a replica hit also names the node
    that answered from its copy), re-encoded when the second (the Date) changes."""

    def __init__(self, node_id: str, cache: str, replica: str = "") -> None:
        extra = f"X-Cachegrid-Replica: {replica}\r\n" if replica else ""
        self._fixed = (
            f"X-Cache: {cache}\r\nX-Cachegrid-Node: {node_id}\r\n{extra}"
            # The last header's name: every entry starts with its value (localcache.py).
            "Content-Type: application/json\r\nContent-Length: "
        ).encode()
        self._second = -1
        self._bytes = b""

    def current(self) -> bytes:
        now = int(time.time())
        if now != self._second:
            date = formatdate(now, usegmt=True).encode()
            self._bytes = b"HTTP/1.1 200 OK\r\nDate: " + date + b"\r\n" + self._fixed
            self._second = now
        return self._bytes


def usable(request: web.BaseRequest) -> bool:
    """True if the request may be answered with pre-encoded bytes (which include a body:
    never for HEAD; nor for a request that sent an ``X-Request-Id``, which its answer
    echoes)."""
    return (
        request.version == HttpVersion11 and request.keep_alive and request.method == "GET"
        and requestids.known() is None  # (a hit makes none: only a sent one is known)
    )  # fmt: skip


class EncodedResponse:
    """An answer already encoded: what aiohttp's request handler needs of a response
    (``prepare``, ``write_eof``, ``keep_alive``), and what the API's metrics read."""

    __slots__ = ("_data", "cache")
    status = 200
    keep_alive = True  # only built for keep-alive requests (see ``usable``)

    def __init__(self, data: bytes, cache: str) -> None:
        self._data = data
        self.cache = cache

    async def prepare(self, request: web.BaseRequest) -> None:
        transport = request.transport
        if transport is None:
            raise ConnectionResetError("the client went away before its answer")
        transport.write(self._data)
        if transport.get_write_buffer_size() > HIGH_WATER:
            await request.writer.drain()

    async def write_eof(self) -> None:
        """Nothing: the answer was written whole by ``prepare``."""
