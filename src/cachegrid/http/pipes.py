"""The hit lane's forwards: GETs sent over persistent, pipelined HTTP/1.1 connections to
the other nodes.

Owns: a few connections to each peer, opened on first use and kept while used (closed after
``idle`` seconds without a request, before the peer's own idle timer would close one under
a request in flight); the requests written to each and not yet answered, in order; and
reading their answers with llhttp (httptools' response parser, fed every byte).

Only reads come here (``GET /v1/kv/<key>``, from the hit lane: http/lane.py, api.py): a
request lost with its connection is answered Unavailable (retrying is safe) and never sent
again.

Invariants:
- Answers are matched to requests by order alone (HTTP/1.1 pipelining). A connection that
  sends bytes that do not parse, an answer nobody asked for, an answer over ``max_answer``
  bytes, or that leaves its oldest request unanswered ``timeout`` seconds, is closed, and
  every request waiting on it fails (Unavailable).
- Every request ends exactly once: its ``finish`` is called with the answer or the error,
  never from inside llhttp's callbacks (the answers a read completes are ended once it is
  parsed), and a ``finish`` that raises is logged as the bug it is and ends no other.
- Requests given in one turn of the event loop to one peer share one connection and leave
  in one write (the peer's lane then reads and answers them together), up to ``depth``
  waiting on a connection; more go to the least busy connection that is not slow (its
  oldest request younger than ``slow`` seconds), or to a new one (at most ``per_peer``).
  Past that, ``ask`` refuses (False): the caller forwards the ordinary way (a batch, whose
  keys the owner serves concurrently). So an owner that answers slowly (its store is slow,
  a handoff) holds at most ``depth`` requests behind each slow one, and the rest take the
  other way: a peer answers pipelined requests one after the other.
- An answer's body over ``SMALL`` bytes is reserved in the node's byte budget as it
  arrives, and the reservation goes with the answer (``RawAnswer.held``: its receiver
  gives it back once the bytes are written on); one the budget refuses is read to its end
  and dropped (the connection stays in step) and ends Overloaded.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections import deque
from collections.abc import Callable
from typing import cast

import httptools

from cachegrid import requestids
from cachegrid.budget import ByteBudget, Reservation
from cachegrid.errors import CachegridError, Unavailable
from cachegrid.headers import HOPS_HEADER
from cachegrid.http.peers import PASSED_BACK

log = logging.getLogger(__name__)

# Response headers passed back from the owner to the client (http/peers.py's, and the id
# the owner made for the request, if it needed one), lowered as llhttp's names are here.
_PASSED_BACK = frozenset(name.lower().encode() for name in (*PASSED_BACK, requestids.HEADER))
# The hop header of every request sent here: each is a first forward.
HOPS = HOPS_HEADER.encode() + b": 1\r\n"
# Answer bodies up to this size are not reserved in the byte budget: what many of them
# hold together is bounded by ``depth`` and ``per_peer``.
SMALL = 4096


class RawAnswer:
    """A peer's answer: status, the passed-back header lines (``Name: value\\r\\n``, as
    received), the ``X-Cache`` value, the body, and the budget it holds if it is big
    (``held``: close it once the body is written on). (A plain class: one is made per
    forward, and a frozen dataclass's ``__init__`` costs several times more.)"""

    __slots__ = ("body", "cache", "headers", "held", "status")

    def __init__(self, status: int, headers: bytes, cache: bytes, body: bytes,
                 held: Reservation | None = None) -> None:  # fmt: skip
        self.status, self.headers, self.cache, self.body = status, headers, cache, body
        self.held = held

    def __repr__(self) -> str:
        return f"<RawAnswer {self.status} {len(self.body)} bytes>"


# What a request's asker is given: the answer, or why there is none.
Finish = Callable[[RawAnswer | CachegridError], None]


class _Asked:
    __slots__ = ("deadline", "finish", "held")

    def __init__(self, finish: Finish, deadline: float) -> None:
        self.finish, self.deadline = finish, deadline
        self.held: Reservation | None = None

    def end(self, outcome: RawAnswer | CachegridError) -> None:
        if self.held is not None:
            self.held.close()
        try:
            self.finish(outcome)
        except Exception:
            log.exception("bug: a forwarded GET's answer could not be passed on")


class Pipe(asyncio.Protocol):
    """One connection to a peer: requests written in order, answers read in order."""

    def __init__(self, peers: Pipes, addr: str, head_end: bytes) -> None:
        self._peers, self.addr = peers, addr
        self._head_end = head_end  # a request's head after its key: the same for each
        self._loop = asyncio.get_running_loop()
        self._transport: asyncio.Transport | None = None
        self._parser = httptools.HttpResponseParser(self)
        self.waiting: deque[_Asked] = deque()  # written (or to be) and not answered
        self._answered: list[tuple[_Asked, RawAnswer | CachegridError]] = []  # in this read
        self._closing = False  # the last answer said Connection: close
        self.connecting: asyncio.Task[None] | None = None
        self._unsent: list[bytes] = []
        self.closed = False
        self.last_used = self._loop.time()
        self._timer: asyncio.TimerHandle | None = None
        # The answer being read.
        self._headers: list[bytes] = []
        self._cache = b""
        self._body: list[bytes] = []
        self._size = 0
        # Why its body is read and dropped (the budget refused it), if it is.
        self._dropped: CachegridError | None = None

    def __repr__(self) -> str:
        return f"<Pipe {self.addr} waiting={len(self.waiting)} closed={self.closed}>"

    # -- sending ----------------------------------------------------------------------

    def takes_more(self, now: float) -> bool:
        """True if a request may be written behind those waiting: fewer than ``depth``, and
        the oldest not slow."""
        waiting, peers = self.waiting, self._peers
        return len(waiting) < peers.depth and (
            not waiting or now - waiting[0].deadline + peers.timeout < peers.slow
        )

    def send(self, key: bytes, finish: Finish) -> None:
        """``GET /v1/kv/<key>``, written with the others of this turn."""
        if not self._unsent and self._transport is not None:
            self._loop.call_soon(self._flush)
        self._unsent.append(b"GET /v1/kv/" + key + self._head_end)
        self.last_used = now = self._loop.time()
        asked = _Asked(finish, now + self._peers.timeout)
        self.waiting.append(asked)
        if self._timer is None:
            self._timer = self._loop.call_at(asked.deadline, self._check_deadline)

    def _flush(self) -> None:
        if self._unsent and self._transport is not None and not self.closed:
            unsent, self._unsent = self._unsent, []
            self._transport.write(unsent[0] if len(unsent) == 1 else b"".join(unsent))

    def _check_deadline(self) -> None:
        self._timer = None
        if not self.waiting:
            return
        oldest = self.waiting[0].deadline
        if oldest <= self._loop.time():
            self.fail(Unavailable(f"owner {self.addr} failed: TimeoutError"))
        else:
            self._timer = self._loop.call_at(oldest, self._check_deadline)

    # -- the connection -----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)
        if self.closed:
            transport.close()
        else:
            self._flush()

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        self.fail(Unavailable(f"owner {self.addr} failed: the connection was closed"))

    def data_received(self, data: bytes) -> None:
        if self.closed:
            return
        try:
            self._parser.feed_data(data)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade) as error:
            # (a callback's own error is the context of llhttp's)
            cause = error.__context__
            self.fail(
                cause
                if isinstance(cause, CachegridError)
                else Unavailable(f"owner {self.addr} sent a malformed answer: {error}")
            )
        finally:
            answered, self._answered = self._answered, []
            for asked, outcome in answered:
                asked.end(outcome)
            if self._closing and not self.closed:
                self.fail(Unavailable(f"owner {self.addr} closed the connection"))

    def fail(self, error: CachegridError) -> None:
        """Close the connection; every request waiting on it ends with ``error``."""
        self.closed = True
        self._peers.forget(self)
        if self.connecting is not None:
            self.connecting.cancel()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._transport is not None:
            self._transport.close()
        waiting, self.waiting = self.waiting, deque()
        for asked in waiting:
            asked.end(error)

    # -- llhttp callbacks -----------------------------------------------------------------

    def on_message_begin(self) -> None:
        if self._closing:
            raise Unavailable(f"owner {self.addr} answered after Connection: close")
        self._headers, self._cache, self._body, self._size = [], b"", [], 0
        self._dropped = None

    def on_header(self, name: bytes, value: bytes) -> None:
        lowered = name.lower()
        if lowered in _PASSED_BACK:
            self._headers.append(name + b": " + value + b"\r\n")
            if lowered == b"x-cache":
                self._cache = value

    def on_body(self, body: bytes) -> None:
        self._size += len(body)
        if self._size > self._peers.max_answer:
            raise Unavailable(f"owner {self.addr} sent an answer over {self._peers.max_answer}"
                              " bytes")  # fmt: skip
        if self._dropped is not None:
            return
        if self._size > SMALL and self.waiting:
            asked = self.waiting[0]
            try:
                if asked.held is None:
                    asked.held = self._peers.budget.reservation()
                    asked.held.need(self._size - len(body), answer=False)
                asked.held.need(len(body), answer=False)
            except CachegridError as refused:
                self._dropped, self._body = refused, []
                return
        self._body.append(body)

    def on_message_complete(self) -> None:
        if not self.waiting:
            raise Unavailable(f"owner {self.addr} sent an answer nobody asked for")
        asked = self.waiting.popleft()
        if self._dropped is not None:
            self._answered.append((asked, self._dropped))
        else:
            body = self._body[0] if len(self._body) == 1 else b"".join(self._body)
            status = self._parser.get_status_code()
            answer = RawAnswer(status, b"".join(self._headers), self._cache, body, asked.held)
            asked.held = None  # (the answer holds it now)
            self._answered.append((asked, answer))
        # The requests behind it end once this read is parsed (not inside llhttp).
        self._closing = not self._parser.should_keep_alive()


class Pipes:
    """The pipelined connections to every peer, and the requests sent on them."""

    def __init__(self, *, timeout: float, budget: ByteBudget, max_answer: int,
                 tls: ssl.SSLContext | None = None, peer_token: str = "",
                 per_peer: int = 8, depth: int = 8, idle: float = 10.0) -> None:  # fmt: skip
        self.timeout, self.budget, self.max_answer = timeout, budget, max_answer
        self.tls = tls
        self.per_peer, self.depth, self.idle = per_peer, depth, idle
        # A connection whose oldest request waited this long takes no more for now.
        self.slow = min(0.1, timeout / 10)
        self._closed = False
        self._authorization = (b"Authorization: Bearer " + peer_token.encode() + b"\r\n"
                               if peer_token else b"")  # fmt: skip
        self._pipes: dict[str, list[Pipe]] = {}
        self._filling: dict[str, Pipe] = {}  # the connection each peer's requests go to this turn
        self._connecting: set[asyncio.Task[None]] = set()
        self._sweeper: asyncio.TimerHandle | None = None

    def __repr__(self) -> str:
        return f"<Pipes peers={len(self._pipes)} open={self.open}>"

    @property
    def open(self) -> int:
        """Connections open or being opened, to all peers."""
        return sum(map(len, self._pipes.values()))

    def ask(self, addr: str, key: bytes, finish: Finish) -> bool:
        """Send ``GET /v1/kv/<key>`` to the node at ``addr`` (``key`` as in a request
        line), one hop; ``finish`` is given its answer or failure. False (nothing sent) if
        every connection to the peer already has ``depth`` requests waiting."""
        pipe = self._pipe_for(addr) if not self._closed else None
        if pipe is None:
            return False
        pipe.send(key, finish)
        return True

    def _pipe_for(self, addr: str) -> Pipe | None:
        filling = self._filling.get(addr)
        if filling is not None and not filling.closed and len(filling.waiting) < self.depth:
            return filling  # (the others of this turn's requests to the peer are on it)
        pipes = self._pipes.get(addr)
        if pipes is None:
            pipes = self._pipes[addr] = []
        now = asyncio.get_running_loop().time()
        chosen = min((p for p in pipes if p.takes_more(now)), key=lambda p: len(p.waiting),
                     default=None)  # fmt: skip
        if (chosen is None or chosen.waiting) and len(pipes) < self.per_peer:
            chosen = self._open(addr)
            pipes.append(chosen)
        elif chosen is None:
            return None
        if not self._filling:
            asyncio.get_running_loop().call_soon(self._filling.clear)
        self._filling[addr] = chosen
        return chosen

    def _open(self, addr: str) -> Pipe:
        head_end = (b" HTTP/1.1\r\nHost: " + addr.encode() + b"\r\n" + HOPS
                    + self._authorization + b"\r\n")  # fmt: skip
        pipe = Pipe(self, addr, head_end)
        task = pipe.connecting = asyncio.ensure_future(self._connect(pipe))
        self._connecting.add(task)
        task.add_done_callback(self._connecting.discard)
        if self._sweeper is None:
            self._sweeper = asyncio.get_running_loop().call_later(self.idle / 2, self._sweep)
        return pipe

    async def _connect(self, pipe: Pipe) -> None:
        host, _, port = pipe.addr.rpartition(":")
        loop = asyncio.get_running_loop()
        failed: CachegridError | None = None
        try:
            async with asyncio.timeout(self.timeout):
                await loop.create_connection(lambda: pipe, host.strip("[]"), int(port),
                                             ssl=self.tls)  # fmt: skip
        except (OSError, TimeoutError, ValueError) as error:  # (TLS refusals are OSErrors)
            failed = Unavailable(f"owner {pipe.addr} unreachable: {error}")
        except Exception as error:
            log.exception("bug: connecting to %s failed", pipe.addr)
            failed = Unavailable(f"owner {pipe.addr} unreachable: {type(error).__name__}")
        pipe.connecting = None  # (done: not to be cancelled by the failure below)
        if failed is not None:
            pipe.fail(failed)

    def forget(self, pipe: Pipe) -> None:
        """A closed connection: no new requests go to it."""
        pipes = self._pipes.get(pipe.addr)
        if pipes is not None and pipe in pipes:
            pipes.remove(pipe)
            if not pipes:
                del self._pipes[pipe.addr]
        if self._filling.get(pipe.addr) is pipe:
            del self._filling[pipe.addr]

    def _sweep(self) -> None:
        """Close the connections unused for ``idle`` seconds (looked at every ``idle / 2``:
        none stays unused 1.5 x ``idle``, and peers close theirs after their idle timeout,
        at least twice ``idle``)."""
        now = asyncio.get_running_loop().time()
        for pipes in list(self._pipes.values()):
            for pipe in list(pipes):
                if not pipe.waiting and now - pipe.last_used >= self.idle:
                    pipe.fail(Unavailable("closed: idle"))
        self._sweeper = None
        if self._pipes:
            self._sweeper = asyncio.get_running_loop().call_later(self.idle / 2, self._sweep)

    async def close(self) -> None:
        """Fail every request waiting, close every connection; ``ask`` refuses from now."""
        self._closed = True
        for task in list(self._connecting):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for pipes in list(self._pipes.values()):
            for pipe in list(pipes):
                pipe.fail(Unavailable("the node is stopping"))
        if self._sweeper is not None:
            self._sweeper.cancel()
