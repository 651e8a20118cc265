"""The hit lane's forwards: GETs sent over persistent, pipelined HTTP/1.1 connections to
the other nodes.

Owns: a few connections to each peer, opened on first use and kept while used (closed after
``idle`` seconds without a request, before the peer's own idle timer would close one under
a request in flight); the requests written to each and not yet answered, in order; and
cutting their answers out of the bytes received, each exactly as the owner sent it.

Only reads come here (``GET /v1/kv/<key>``, from the hit lane: http/forwards.py): a request
lost with its connection is answered Unavailable (retrying is safe) and never sent again.

Invariants:
- Answers are matched to requests by order alone (HTTP/1.1 pipelining). A connection that
  sends bytes that do not parse, an answer nobody asked for, an answer over ``max_answer``
  bytes or not framed by Content-Length, or that leaves its oldest request unanswered
  ``timeout`` seconds, is closed, and every request waiting on it fails (Unavailable).
- Framing is llhttp's (httptools' response parser, fed every byte, with no callback per
  header: an answer's head is passed on whole, not taken apart). An answer is the bytes
  from its status line (checked to start where the one before ended) to the end of its
  head (the first empty line) and its body (as long as llhttp counted it): so each is
  handed on byte for byte as received, and a cut that did not land on an answer's start
  fails the connection rather than pass on a wrong answer.
- Every request ends exactly once: its asker is told the answer or the error, never from
  inside llhttp's callbacks (the answers a read completes are handed on once it is
  parsed), and an asker that raises is logged as the bug it is and ends no other.
- Requests given in one turn of the event loop to one peer share one connection and leave
  in one write (the peer's lane then reads and answers them together), up to ``depth``
  waiting on a connection; more go to the least busy connection that is not slow (its
  oldest request younger than ``slow`` seconds), or to a new one (at most ``per_peer``).
  Past that, ``ask`` refuses (False): the caller forwards the ordinary way (a batch, whose
  keys the owner serves concurrently). So an owner that answers slowly (its store is slow,
  a handoff) holds at most ``depth`` requests behind each slow one, and the rest take the
  other way: a peer answers pipelined requests one after the other.
- An answer's body over ``SMALL`` bytes is reserved in the node's byte budget as it
  arrives, and the reservation goes with the answer (its receiver gives it back once the
  bytes are written on); one the budget refuses is read to its end without being kept
  (the connection stays in step) and ends Overloaded.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections import deque
from typing import Protocol, cast

import httptools

from cachegrid.budget import ByteBudget, Reservation
from cachegrid.errors import CachegridError, Unavailable
from cachegrid.headers import HOPS_HEADER

log = logging.getLogger(__name__)

# The hop header of every request sent here: each is a first forward.
HOPS = HOPS_HEADER.encode() + b": 1\r\n"
# Answer bodies up to this size are not reserved in the byte budget: what many of them
# hold together is bounded by ``depth`` and ``per_peer``.
SMALL = 4096
# An answer's head longer than this fails the connection (llhttp sets no bound).
MAX_HEAD = 65536
# How every answer starts: the status line of HTTP/1.1 (what the requests are).
_STATUS_START = b"HTTP/1.1 "


class Asker(Protocol):
    """Waits for one GET's answer (http/forwards.py's ``Forward``): told it once, by
    ``answered`` or ``failed``, never from inside llhttp's callbacks."""

    deadline: float  # (the pipe's to set: when the request times out)

    def answered(self, status: int, message: bytes, keep_alive: bool,
                 held: Reservation | None) -> None:  # fmt: skip
        """The owner's answer: its status, the whole message (head and body) exactly as
        received, whether it kept the connection open, and the budget it holds (if big:
        the receiver's to close once the bytes are written on)."""

    def failed(self, error: CachegridError) -> None:
        """No answer: the connection failed (Unavailable) or the budget refused it."""


# One answer completed by a read: (status, body size, keep-alive, budget it holds, or the
# error it ends with if the budget refused it).
_Completed = tuple[int, int, bool, Reservation | None, CachegridError | None]


class Pipe(asyncio.Protocol):
    """One connection to a peer: requests written in order, answers read in order."""

    def __init__(self, peers: Pipes, addr: str, head_end: bytes) -> None:
        self._peers, self.addr = peers, addr
        self._head_end = head_end  # a request's head after its key: the same for each
        self._loop = asyncio.get_running_loop()
        self._transport: asyncio.Transport | None = None
        self._parser = httptools.HttpResponseParser(self)
        self.waiting: deque[Asker] = deque()  # written (or to be) and not answered
        self._completed: list[_Completed] = []  # by the read being parsed
        self._closing = False  # the last answer said Connection: close
        self.connecting: asyncio.Task[None] | None = None
        self._unsent: list[bytes] = []
        self.closed = False
        self.last_used = self._loop.time()
        self._timer: asyncio.TimerHandle | None = None
        # The answer being parsed: its body's size so far, the budget it holds, and why
        # its bytes are not kept (the budget refused them), if they are not.
        self._size = 0
        self._held: Reservation | None = None
        self._dropped: CachegridError | None = None
        # The answer under way at the end of the last read: its bytes received so far
        # (none kept once dropped), how many, and its head's size once complete (0: not).
        self._part: list[bytes] = []
        self._part_size = 0
        self._head_size = 0

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

    def send(self, key: bytes, asker: Asker) -> None:
        """``GET /v1/kv/<key>``, written with the others of this turn."""
        if not self._unsent and self._transport is not None:
            self._loop.call_soon(self._flush)
        self._unsent.append(b"GET /v1/kv/" + key + self._head_end)
        self.last_used = now = self._loop.time()
        asker.deadline = now + self._peers.timeout
        self.waiting.append(asker)
        if self._timer is None:
            self._timer = self._loop.call_at(asker.deadline, self._check_deadline)

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
        failure: CachegridError | None = None
        try:
            self._parser.feed_data(data)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade) as error:
            # (a callback's own error is the context of llhttp's)
            cause = error.__context__
            failure = cause if isinstance(cause, CachegridError) else Unavailable(
                f"owner {self.addr} sent a malformed answer: {error}")  # fmt: skip
        completed, self._completed = self._completed, []
        cut: list[bytes | None] = []
        try:
            pos = self._cut(data, completed, cut)
            if failure is None and pos < len(data):
                self._keep(data, pos)
        except Unavailable as misframed:
            failure = misframed
        for _status, _size, _alive, held, _dropped in completed[len(cut) :]:
            if held is not None:  # (not handed on: its asker fails below)
                held.close()
        if failure is not None or self._closing:
            # No new request may come here from the answers' receivers (a client's next
            # pipelined GET): it would fail with this connection.
            self.closed = True
            self._peers.forget(self)
        # (all taken off the queue first: an asker's callback may ask again, or close)
        askers = [self.waiting.popleft() for _ in cut]
        for asker, (status, _size, keep_alive, held, dropped), message in zip(  # noqa: B905
                askers, completed, cut):  # (cut may be shorter)  # fmt: skip
            try:
                if message is not None:
                    asker.answered(status, message, keep_alive, held)
                else:
                    asker.failed(dropped or Unavailable(f"owner {self.addr}: no answer"))
            except Exception:
                log.exception("bug: a forwarded GET's answer could not be passed on")
        if failure is not None:
            self.fail(failure)
        elif self._closing:
            self.fail(Unavailable(f"owner {self.addr} closed the connection"))

    def _cut(self, data: bytes, completed: list[_Completed], cut: list[bytes | None]) -> int:
        """Cut each answer ``completed`` in ``data`` (the first may have begun in an
        earlier read) into ``cut``: its bytes, or None if dropped; where the last ended.
        Unavailable if an answer does not start where the one before ended."""
        pos = 0
        for _status, size, _alive, _held, dropped in completed:
            if self._part_size:  # began in an earlier read
                head = self._head_size or self._head_of(data)
                if not head:
                    raise Unavailable(f"owner {self.addr} sent an answer out of step")
                end = head + size - self._part_size
                message = None if dropped else b"".join([*self._part, data[:end]])
                self._part, self._part_size, self._head_size = [], 0, 0
                if message is not None and not message.startswith(_STATUS_START):
                    raise Unavailable(f"owner {self.addr} sent an answer out of step")
            else:
                head_end = data.find(b"\r\n\r\n", pos) + 4
                if head_end < 4 or not data.startswith(_STATUS_START, pos):
                    raise Unavailable(f"owner {self.addr} sent an answer out of step")
                end = head_end + size
                message = None if dropped else data[pos:end]
            cut.append(message)
            pos = end
        return pos

    def _head_of(self, data: bytes = b"") -> int:
        """The size of the head of the answer under way, from its bytes kept so far and
        ``data``; 0 if its end is not in them."""
        head = (b"".join(self._part) + data).find(b"\r\n\r\n") + 4
        return head if head >= 4 else 0

    def _keep(self, data: bytes, pos: int) -> None:
        """``data[pos:]``: the start, or more, of the answer under way."""
        rest = data[pos:] if pos else data
        if not self._part_size and not (rest.startswith(_STATUS_START)
                                        or _STATUS_START.startswith(rest)):  # fmt: skip
            raise Unavailable(f"owner {self.addr} sent an answer out of step")
        if self._dropped is None or not self._head_size:
            self._part.append(rest)
        self._part_size += len(rest)
        if not self._head_size:
            self._head_size = self._head_of()
            if not self._head_size and self._part_size > MAX_HEAD:
                raise Unavailable(f"owner {self.addr} sent an answer head over {MAX_HEAD} bytes")
        if self._dropped is not None and self._head_size:
            self._part = []  # (refused by the budget: not kept)

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
        if self._held is not None:
            self._held.close()
            self._held = None
        self._part = []
        waiting, self.waiting = self.waiting, deque()
        for asker in waiting:
            try:
                asker.failed(error)
            except Exception:
                log.exception("bug: a forwarded GET's failure could not be passed on")

    # -- llhttp callbacks (httptools calls only those the protocol has: none per header,
    # none at an answer's start, whose fields the one before reset) ---------------------

    def on_chunk_header(self) -> None:
        raise Unavailable(f"owner {self.addr} sent a chunked answer (not passed on)")

    def on_body(self, body: bytes) -> None:
        self._size += len(body)
        if self._size > self._peers.max_answer:
            raise Unavailable(f"owner {self.addr} sent an answer over {self._peers.max_answer}"
                              " bytes")  # fmt: skip
        if self._size > SMALL and self._dropped is None:
            try:
                if self._held is None:
                    self._held = self._peers.budget.reservation()
                    self._held.need(self._size - len(body), answer=False)
                self._held.need(len(body), answer=False)
            except CachegridError as refused:
                # (its bytes kept from earlier reads go once this read is cut: ``_keep``)
                self._dropped = refused
                if self._held is not None:
                    self._held.close()
                    self._held = None

    def on_message_complete(self) -> None:
        if self._closing:
            raise Unavailable(f"owner {self.addr} answered after Connection: close")
        if len(self._completed) >= len(self.waiting):
            raise Unavailable(f"owner {self.addr} sent an answer nobody asked for")
        status = self._parser.get_status_code()
        if status < 200:  # (llhttp counts it an answer: the rest would be one off)
            raise Unavailable(f"owner {self.addr} sent an interim answer ({status})")
        keep_alive = self._parser.should_keep_alive()
        self._completed.append((status, self._size, keep_alive, self._held, self._dropped))
        # (the answer holds its budget now; the next one starts afresh)
        self._size, self._held, self._dropped = 0, None, None
        # The requests behind it end once this read is parsed (not inside llhttp).
        self._closing = not keep_alive


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

    def ask(self, addr: str, key: bytes, asker: Asker) -> bool:
        """Send ``GET /v1/kv/<key>`` to the node at ``addr`` (``key`` as in a request
        line), one hop; ``asker`` is told its answer or failure. False (nothing sent) if
        every connection to the peer already has ``depth`` requests waiting."""
        pipe = self._filling.get(addr)
        if pipe is None or pipe.closed or len(pipe.waiting) >= self.depth:
            pipe = self._pipe_for(addr) if not self._closed else None
            if pipe is None:
                return False
        pipe.send(key, asker)
        return True

    def _pipe_for(self, addr: str) -> Pipe | None:
        """A connection for a request to ``addr`` other than the one this turn's requests
        to it went to (full, or none yet)."""
        pipes = self._pipes.get(addr)
        if pipes is None:
            pipes = self._pipes[addr] = []
        now = asyncio.get_running_loop().time()
        chosen, fewest = None, self.depth  # the least busy that takes more
        for pipe in pipes:
            waiting = len(pipe.waiting)
            if waiting < fewest and pipe.takes_more(now):
                chosen, fewest = pipe, waiting
                if not waiting:
                    break  # (none is less busy)
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
