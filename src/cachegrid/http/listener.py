"""The node's listening socket, with a bound on open connections.

Owns: accepting connections for the aiohttp server (instead of aiohttp's ``TCPSite``), and
refusing those past ``max_connections``: each gets a complete JSON 503 answer with
``Retry-After`` and ``Connection: close``, and is closed at once, so a flood of connections
can neither exhaust the process's file descriptors nor starve the connections it has. Each
connection served runs aiohttp's protocol with the hit lane (http/lane.py) in front of it.

Invariants:
- At most ``max_connections`` connections are served at once (counted as aiohttp's server
  counts them: from ``connection_made`` until the handler is gone); a refused connection
  costs one small write and is never read.
- Stalled connections are closed by aiohttp's keep-alive timer, which app.py sets to
  ``node.idle_timeout``: it closes a connection that has not completed a request head within
  that time of its start or of its last answer. This module only counts those closes.
- Accepting past the process's descriptor limit (EMFILE) is the event loop's: it drops the
  connection it cannot accept and goes on serving those it has, silently under uvloop. So
  the listener raises the soft limit toward the hard one at start, and checks once a second
  how close the process is to it, with a rate-limited warning when near.
- The lane's answers obey the same rules as aiohttp's: written only while aiohttp is idle,
  each one restarting the idle timer, and past the transport's high-water mark the
  connection is read no further until the client has read them (back-pressure).
- While answers the lane took are pending (forwards, http/pipes.py), nothing else of the
  connection is parsed or answered: its later bytes wait (reading paused past the
  high-water mark), and a graceful stop waits for the pending answers before closing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import resource
import ssl
from typing import Any, cast

import orjson
from aiohttp import web
from aiohttp.http_exceptions import LineTooLong
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest

from cachegrid.errors import BadRequest, CachegridError, HeaderTooLarge, Unavailable
from cachegrid.headers import JSON
from cachegrid.http.framework import error_body
from cachegrid.http.lane import Answer, HitSource, Lane, Pending
from cachegrid.http.wire import HIGH_WATER
from cachegrid.logs import Throttle
from cachegrid.metrics import Count, Metrics

log = logging.getLogger(__name__)

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


def _handler_class(timed_out: Count, hits: HitSource | None) -> type[RequestHandler]:
    """aiohttp's connection protocol, with the hit lane (http/lane.py) in front of its
    parser when ``hits`` is given; counting the connections its keep-alive timer closes
    (aiohttp has no hook for it: this wraps its private timer callback, which force-closes
    an idle connection; tests/integration/test_connection_limits.py checks the count), and
    answering a request it cannot parse in JSON (tests/integration/test_api.py)."""

    class DataHandler(RequestHandler):
        __slots__ = ("_fed", "_lane", "_lane_held", "_lane_reserved", "_lane_waiting")

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._lane = Lane(hits) if hits is not None else None
            self._lane_held = False  # reading paused by the lane, for its answers to drain
            # aiohttp has been given bytes of this connection: until then it has no request
            # (its connection task may not even have run yet: the first request of a new
            # connection arrives before it does), and the lane may answer whatever it waits.
            self._fed = False
            self._lane_waiting: _Waiting | None = None  # a take with answers pending
            # The budget forwarded answers hold while the client has not read them.
            self._lane_reserved: list[Pending] = []

        def data_received(self, data: bytes) -> None:
            if (waiting := self._lane_waiting) is not None:
                waiting.later(data)  # behind answers still pending: in order, after them
                return
            lane = self._lane
            if lane is None or not data or self._force_close or self._close:
                self._fed = True
                super().data_received(data)  # (aiohttp reparses what it holds on b"")
                return
            # aiohttp has had nothing yet, or waits for a request and has none queued: no
            # answer of its own is being made or written, so the lane's cannot overtake or
            # cut into one.
            waiter = self._waiter
            if lane.open and (not self._fed or (waiter is not None and not waiter.done()
                                                and not self._messages)):  # fmt: skip
                answers, taken = lane.take(data, HIGH_WATER)
                if lane.pending:  # (the idle timer waits for them: _process_keepalive)
                    _Waiting(self, answers, lane.pending, data[taken:])  # (our _lane_waiting)
                    return
                if answers and (transport := self.transport) is not None:
                    # (none pending: all are bytes; no typing.cast on the hot path, a call)
                    one = answers[0] if len(answers) == 1 else b"".join(answers)  # type: ignore[arg-type]
                    transport.write(one)  # type: ignore[arg-type]
                    self._answered()
                if taken == len(data):
                    return
                data = data[taken:]
            else:
                lane.follow(data)
            self._fed = True
            super().data_received(data)

        def lane_ready(self, answers: list[Answer], rest: bytes, later: list[bytes] | None) -> None:
            """The pending answers of a take are ready: write them all, in order, and keep
            the budget their bytes hold until the client has read them (below the
            high-water mark: a client that does not read holds its share of the node's
            budget); then the bytes that waited behind them go on (``rest`` to aiohttp:
            the lane has followed it already; ``later``, received since, as any read: a
            client that does not read gets at most one more take, of at most 16 forwards,
            before reading stops)."""
            self._lane_waiting = None
            transport = self.transport
            try:
                if transport is None:
                    return  # the client went away meanwhile
                transport.write(_bytes_of(answers))
                self._answered()
            finally:  # (written, or the client is gone)
                for answer in answers:
                    if not isinstance(answer, bytes) and answer.held is not None:
                        if self._paused and self.transport is not None:
                            self._lane_reserved.append(answer)
                        else:
                            answer.release()
            if rest:
                self._fed = True
                super().data_received(rest)
            if later:
                self.data_received(later[0] if len(later) == 1 else b"".join(later))

        async def shutdown(self, timeout: float | None = 15.0) -> None:  # noqa: ASYNC109 (aiohttp's)
            """A graceful stop: the lane's pending answers first (each ends within the
            forward timeout), then aiohttp's own drain."""
            if (waiting := self._lane_waiting) is not None:
                await asyncio.wait([waiting.settled()], timeout=timeout)
            await super().shutdown(timeout)

        def _answered(self) -> None:
            # An answer is activity: the idle timer (node.idle_timeout) runs from it, as
            # from aiohttp's own answers.
            self._next_keepalive_close_time = self._loop.time() + self._keepalive_timeout
            if self._paused and not self._lane_held:
                # Past the transport's high-water mark: read no more requests until the
                # client has read the answers (back-pressure, as aiohttp's drain).
                self._lane_held = True
                self._pause_transport_reading()

        def connection_lost(self, exc: BaseException | None) -> None:
            reserved, self._lane_reserved = self._lane_reserved, []
            for answer in reserved:
                answer.release()
            super().connection_lost(exc)

        def resume_writing(self) -> None:
            super().resume_writing()
            reserved, self._lane_reserved = self._lane_reserved, []
            for answer in reserved:
                answer.release()
            if self._lane_held:
                self._lane_held = False
                if not self._buffer_paused and not self._reading_paused:
                    self._resume_transport_reading()

        def _process_keepalive(self) -> None:
            if self._lane_waiting is not None and not self._force_close:
                # The lane's answers are pending (forwards): not idle; look again later.
                close_time = self._loop.time() + self._keepalive_timeout
                self._next_keepalive_close_time = close_time
                self._keepalive_handle = self._loop.call_at(close_time, self._process_keepalive)
                return
            closing = self._force_close
            super()._process_keepalive()
            if self._force_close and not closing:
                timed_out.inc()

        def handle_error(self, request: BaseRequest, status: int = 500,
                         exc: BaseException | None = None,
                         message: str | None = None) -> web.StreamResponse:  # fmt: skip
            """A request aiohttp could not parse (a head too large, a malformed line) or a
            handler timeout: the contract's JSON error, not aiohttp's plain text, and no
            traceback logged (a malformed request is the client's, not a bug)."""
            if request.writer.output_size > 0:  # an answer was begun: nothing more to say
                raise ConnectionError("the answer was begun; the connection is closed")
            error = unparsed_error(status, message or "malformed request", exc)
            answer = web.Response(status=error.status, body=error_body(error),
                                  content_type=JSON)  # fmt: skip
            answer.force_close()
            return answer

    return DataHandler


class _Waiting:
    """The answers of one take while some are pending, and the bytes behind them."""

    __slots__ = ("_answers", "_handler", "_later", "_left", "_paused", "_rest", "_settled")

    def __init__(self, handler: Any, answers: list[Answer], pending: int, rest: bytes) -> None:
        """Made the handler's ``_lane_waiting`` before listening: an answer ready already
        (or on listening) ends the wait at once, which clears it."""
        self._handler, self._answers, self._left, self._rest = handler, answers, pending, rest
        self._later: list[bytes] | None = None
        self._paused = False
        self._settled: asyncio.Future[None] | None = None
        handler._lane_waiting = self
        if len(answers) == 1 and not isinstance(only := answers[0], bytes):
            only.listen(self._ready)  # (most often: one forward)
            return
        for answer in answers:
            if not isinstance(answer, bytes):
                answer.listen(self._ready)

    def later(self, data: bytes) -> None:
        """Bytes received meanwhile: kept, and past the high-water mark, no more read."""
        if self._later is None:
            self._later = []
        self._later.append(data)
        if not self._paused and sum(map(len, self._later)) > HIGH_WATER:
            self._paused = True
            self._handler._pause_transport_reading()

    def _ready(self) -> None:
        self._left -= 1
        if self._left:
            return
        handler = self._handler
        if self._paused and not (handler._lane_held or handler._buffer_paused
                                 or handler._reading_paused):  # fmt: skip
            handler._resume_transport_reading()
        try:
            handler.lane_ready(self._answers, self._rest, self._later)
        finally:
            if self._settled is not None and not self._settled.done():
                self._settled.set_result(None)

    def settled(self) -> asyncio.Future[None]:
        """Done once every pending answer is ready and written."""
        if self._settled is None:
            self._settled = asyncio.get_running_loop().create_future()
        return self._settled


def _bytes_of(answers: list[Answer]) -> bytes:
    """The bytes of a take's answers, every one ready (most often a single forward's)."""
    if len(answers) == 1 and not isinstance(only := answers[0], bytes):
        return only.result or b""
    return b"".join([a if isinstance(a, bytes) else a.result or b"" for a in answers])


def unparsed_error(status: int, reason: str, exc: BaseException | None) -> CachegridError:
    """The error of a request aiohttp refused before any route ran: its status kept when it
    is a client error (a head too large is 431, RFC 6585), else 503 (a handler timeout)."""
    if isinstance(exc, LineTooLong):
        return HeaderTooLarge(f"request head too large: {reason[:160]}")
    if 400 <= status < 500:
        return BadRequest(f"malformed request: {reason[:160]}")
    return Unavailable(f"request not handled: {reason[:160]}")


# Descriptors the process keeps beyond its connections: the store's and etcd's
# connections, peers, logs, the event loop's own.
RESERVED_DESCRIPTORS = 256


def raise_descriptor_limit(max_connections: int) -> tuple[int, int]:
    """Raise the soft open-files limit toward the hard one, as far as ``max_connections``
    plus the reserve needs (as Go's runtime and nginx's worker_rlimit_nofile do); the
    (soft, hard) limits after."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = max_connections + RESERVED_DESCRIPTORS
    if soft != resource.RLIM_INFINITY and soft < wanted:
        raised = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (raised, hard))
            soft = raised
    return soft, hard


class DescriptorWatch:
    """Warns, rate-limited, while the process's open descriptors are near its limit: new
    connections are then dropped unseen by the event loop, and only this says why."""

    def __init__(self, headroom: int = 32, interval: float = 1.0) -> None:
        self.headroom, self.interval = headroom, interval
        self._throttle = Throttle()
        self._task: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        return f"<DescriptorWatch headroom={self.headroom}>"

    def check(self, now: float) -> None:
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        try:
            in_use = len(os.listdir("/proc/self/fd"))
        except OSError:  # no /proc (or out of descriptors to read it: then surely near)
            in_use = soft
        if soft == resource.RLIM_INFINITY or in_use < soft - self.headroom:
            return
        held = self._throttle.allow("descriptors", now)
        if held is not None:
            log.warning("open file descriptors near the limit (%d of %d): new connections "
                        "are dropped; raise the limit (ulimit -n) or lower "
                        "node.max_connections (%d like this held back)",
                        in_use, soft, held)  # fmt: skip

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self.interval)
            self.check(loop.time())

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="descriptor-watch")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


class Listener:
    def __init__(self, server: web.Server, max_connections: int, metrics: Metrics,
                 hits: HitSource | None = None) -> None:  # fmt: skip
        self._server_protocols = server
        self._handler = _handler_class(metrics.connections_timed_out, hits)
        self.max_connections = max_connections
        self._refused = metrics.connections_refused
        self._socket_server: asyncio.Server | None = None
        self._watch = DescriptorWatch()

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
        # As aiohttp's Server.__call__ does, with the handler class above.
        server = self._server_protocols
        return self._handler(server, loop=server._loop, **server._kwargs)

    async def start(self, host: str, port: int, tls: ssl.SSLContext | None = None) -> None:
        soft, hard = raise_descriptor_limit(self.max_connections)
        if soft - RESERVED_DESCRIPTORS < self.max_connections:
            log.warning("the open-files limit (%d, hard %d) is below node.max_connections "
                        "(%d) plus %d for the node's own use: connections past it are "
                        "dropped unanswered", soft, hard, self.max_connections,
                        RESERVED_DESCRIPTORS)  # fmt: skip
        loop = asyncio.get_running_loop()
        self._socket_server = await loop.create_server(self._protocol, host, port,
                                                       reuse_address=True, ssl=tls)  # fmt: skip
        self._watch.start()

    async def close(self) -> None:
        """Stop accepting (the connections open are aiohttp's to drain)."""
        await self._watch.stop()
        if self._socket_server is not None:
            self._socket_server.close()
