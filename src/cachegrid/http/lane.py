"""The hit lane: cache hits answered straight from a connection's bytes, ahead of aiohttp.

Owns: finding, in the bytes a connection received, the leading requests that are plain
hits (or plain GETs another node owns, forwarded: http/pipes.py), and knowing from every
byte received whether the connection is between two requests.
It is sans-I/O (as httpcore keeps its state machine apart from its reads and writes): it
takes bytes and gives answers and the offset where aiohttp takes over; the connection's
protocol (http/listener.py) does the writing.

A plain hit request is a complete HTTP/1.1 keep-alive ``GET /v1/kv/<key>`` with no body,
no query, no percent-escape or dot segment in its path, a head of at most ``MAX_HEAD``
bytes and fewer than ``MAX_HEADERS`` fields, one Host, none of the headers that change its
answer (``If-Match``, ``If-None-Match``, ``X-Request-Id``, ``Expect``, ``Upgrade``, a
body's length or coding), no header aiohttp refuses twice repeated, and at most one
``Authorization`` of visible ASCII; whether it is a hit is the ``HitSource``'s to say
(http/api.py). aiohttp's route gives such a request the same bytes (its pre-encoded
answer, http/wire.py) and the same metrics; the lane only saves aiohttp's request objects,
routing and task around it. The source may also answer with a ``Pending`` answer, whose
bytes come later: a GET it forwarded to the key's owner.

Invariants:
- Order: the lane answers only while aiohttp has no request of the connection queued or in
  progress (``open`` and the protocol's idle check: aiohttp waits for a request with none
  queued, or has not been given a byte of the connection yet), and stops at the first
  request it does not answer: that request and every byte after it go to aiohttp, until
  aiohttp is idle and the connection is between requests again. The answers of one
  ``take`` are written together, in order, once the pending ones among them are ready;
  until then the connection's later bytes wait, aiohttp's too. So answers leave in the
  order asked.
- Framing: every byte the connection receives, answered here or not, is fed once to one
  llhttp parser (httptools), so ``open`` is true exactly between two requests (a body,
  chunked or not, and a partial head included). Bytes it cannot parse close the lane for
  the connection's life: aiohttp alone answers them (its JSON 400) and closes. One
  exception, for speed: a peer's forward in the exact form http/pipes.py writes it (a
  whole bodyless GET with Host, ``X-Cachegrid-Hops: 1`` and at most a bearer token, and
  nothing else), answered here, is matched by one pattern and not fed: llhttp would find
  one whole keep-alive request in it, and be between requests after it as before.
- Anything the lane is unsure of, it leaves to aiohttp: declining costs one parse.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from typing import Protocol

import httptools

log = logging.getLogger(__name__)


class Held(Protocol):
    """Bytes reserved in the node's budget (budget.py), given back by ``close``."""

    def close(self) -> None: ...


class Pending:
    """An answer whose bytes come later (a forward under way): set once with ``ready``,
    which tells the one listener, if any (no event loop hop: this is on every forward);
    ``held``: budget its bytes hold until ``release`` (once written on)."""

    __slots__ = ("_listener", "held", "result")

    def __init__(self) -> None:
        self.result: bytes | None = None
        self.held: Held | None = None
        self._listener: Callable[[], None] | None = None

    def __repr__(self) -> str:
        return f"<Pending ready={self.result is not None}>"

    def ready(self, answer: bytes, held: Held | None = None) -> None:
        self.result = answer
        if held is not None:
            self.held = held
        if self._listener is not None:
            self._listener()

    def release(self) -> None:
        if self.held is not None:
            self.held.close()
            self.held = None

    def listen(self, listener: Callable[[], None]) -> None:
        """Call ``listener`` once the answer is ready (at once if it is)."""
        self._listener = listener
        if self.result is not None:
            listener()


# An answer: its bytes, or bytes to come (a forward under way).
Answer = bytes | Pending
# (key, Authorization header or None, may forward) -> the whole encoded answer, or None:
# not the lane's. A request a peer forwarded (it has X-Cachegrid-Hops) may not be forwarded
# again here: the route counts its hops.
HitSource = Callable[[str, str | None, bool], Answer | None]
# What a pending answer counts against a take's byte budget: at most 16 forwards a read.
PENDING_BYTES = 4096

# The request line of a GET the lane may answer: HTTP/1.1, a key's path of visible ASCII
# without "%", "?", "#", not starting with "." (the group is the key). A key with a dot
# segment in it ("/.") is refused after: the route's answer for those is aiohttp's to give.
_GET_LINE = re.compile(rb"GET /v1/kv/([!\x22$&-\-/->@-~][!\x22$&->@-~]*) HTTP/1\.1\r\n")
# A peer's forward, as http/pipes.py writes it (no other header, nothing else spelled
# otherwise): the lane answers it without llhttp's callbacks (groups: key, Authorization).
_PEER_GET = re.compile(
    rb"GET /v1/kv/([!\x22$&-\-/->@-~][!\x22$&->@-~]*) HTTP/1\.1\r\nHost: [!-~]+\r\n"
    rb"X-Cachegrid-Hops: 1\r\n(?:Authorization: (Bearer [!-~]+)\r\n)?\r\n"
)
# No head longer than this is taken: aiohttp's per-line and per-field limits (8190 bytes,
# its 431) cannot be exceeded within it, so no head aiohttp refuses as too long is taken.
MAX_HEAD = 8190
MAX_HEADERS = 100  # aiohttp refuses more than 128
# Request headers that change a GET's answer or framing, or that aiohttp refuses (a 400:
# sec-websocket-key1): a request with one goes to aiohttp.
_DECLINED = frozenset({b"if-match", b"if-none-match", b"x-request-id", b"expect", b"upgrade",
                       b"content-length", b"transfer-encoding", b"sec-websocket-key1"})  # fmt: skip
# Headers aiohttp refuses twice in one request (a 400), each with a bit; a request that
# repeats one, or has no Host (HTTP/1.1 requires it), goes to aiohttp. Authorization too:
# the lane and the route must judge the same credential.
_SINGLE = {b"host": 1, b"user-agent": 2, b"content-type": 4, b"etag": 8, b"server": 16,
           b"max-forwards": 32, b"content-location": 64, b"content-range": 128,
           b"authorization": 256}  # fmt: skip
_HOST = 1
_AUTHORIZATION = 256
_HOPS = b"x-cachegrid-hops"
# An Authorization value the lane passes on: visible ASCII, spaces and tabs (others are
# decoded and trimmed differently by aiohttp: the route judges those).
_PLAIN_VALUE = re.compile(rb"[\x20-\x7e\t]*")


class Lane:
    """One connection's lane: an llhttp parser fed every byte, and the plain-hit test."""

    __slots__ = (
        "_answer",
        "_auth",
        "_begun",
        "_broken",
        "_done",
        "_fields",
        "_hopped",
        "_keep_alive",
        "_parser",
        "_peer",
        "_plain",
        "_seen",
        "open",
        "pending",
    )  # fmt: skip

    def __init__(self, answer: HitSource) -> None:
        self._answer = answer
        self._parser = httptools.HttpRequestParser(self)
        self._begun = self._done = 0  # requests begun and completed by the parser
        # True between two requests of a connection whose bytes all parsed (kept by the
        # callbacks, read on every read of the connection).
        self.open = True
        self._broken = False  # the bytes stopped parsing: aiohttp has the rest, for good
        self._auth: bytes | None = None
        self._plain = True  # no header seen so far keeps the request from the lane
        self._fields = 0
        self._seen = 0  # the bits (_SINGLE) of the headers seen once in this request
        self._hopped = False  # the request has X-Cachegrid-Hops: a peer forwarded it
        self._keep_alive = False  # the request just completed leaves the connection open
        self.pending = 0  # the answers of the last ``take`` that are ``Pending``
        # Every request so far was a peer's forward in http/pipes.py's form (looked for
        # only then: a client's connection pays for one look).
        self._peer = True

    def __repr__(self) -> str:
        return f"<Lane open={self.open} requests={self._done}>"

    # -- llhttp callbacks (httptools calls them by name) -----------------------------------

    def on_message_begin(self) -> None:
        self._begun += 1
        self.open = False
        self._auth, self._plain, self._fields, self._seen = None, True, 0, 0
        self._hopped = False

    def on_header(self, name: bytes, value: bytes) -> None:
        self._fields += 1
        lowered = name.lower()
        if lowered in _DECLINED:
            self._plain = False
        elif lowered == _HOPS:
            self._hopped = True
        elif bit := _SINGLE.get(lowered, 0):
            if self._seen & bit:
                self._plain = False  # twice
            self._seen |= bit
            if bit == _AUTHORIZATION:
                if _PLAIN_VALUE.fullmatch(value) is None:
                    self._plain = False
                self._auth = value

    def on_message_complete(self) -> None:
        self._done += 1
        self.open = True
        # (llhttp forgets it once this returns)
        self._keep_alive = self._parser.should_keep_alive()

    # -- the two ways bytes pass --------------------------------------------------------

    def take(self, data: bytes, budget: int) -> tuple[list[Answer], int]:
        """The answers of ``data``'s leading plain hits, and how many bytes of it they
        were; no more answers once they hold ``budget`` bytes (a client pipelining small
        requests for big answers cannot make one read cost more than that; a pending
        answer counts ``PENDING_BYTES``); ``pending``: how many are ``Pending``. Call only
        while ``open`` and aiohttp is idle; the bytes from the offset on are aiohttp's
        (which answers with back-pressure of its own), and already followed here."""
        answers: list[Answer] = []
        self.pending = 0
        start, size = 0, len(data)
        while start < size and budget > 0:
            if self._peer and (peer := _PEER_GET.match(data, start)) is not None and (
                    (end := peer.end()) - start <= MAX_HEAD):  # fmt: skip
                # A peer's forward, as http/pipes.py writes it: not fed to llhttp, which
                # would parse it as one whole bodyless keep-alive GET with one Host, the
                # hop header and at most one plain Authorization, and be between requests
                # after it as before. (Fed if the route is to answer it.)
                answer = self._ask(peer[1], peer[2], False)
                if answer is None:
                    self.follow(data[start:])
                    return answers, start
            else:
                end = data.find(b"\r\n\r\n", start) + 4
                if end < 4 or end - start > MAX_HEAD:
                    break  # a partial head, or a long one: aiohttp's
                self._peer = False  # (a client's connection: no peer's form looked for again)
                done = self._done
                if not self._feed(data if end - start == size else data[start:end]):
                    return answers, start
                answer = None
                # Exactly one whole request (else a body follows) that keeps the connection
                # open, with plain headers and the request line of a key's GET (which
                # llhttp parsed as well: the same URL).
                if (self._begun == self._done == done + 1 and self._keep_alive and self._plain
                        and self._seen & _HOST and self._fields < MAX_HEADERS
                        and (line := _GET_LINE.match(data, start)) is not None):  # fmt: skip
                    answer = self._ask(line[1], self._auth, not self._hopped)
                if answer is None:
                    self.follow(data[end:])
                    return answers, start
            answers.append(answer)
            if isinstance(answer, bytes):
                budget -= len(answer)
            else:
                self.pending += 1
                budget -= PENDING_BYTES
            start = end
        if start < size:
            self.follow(data[start:])
        return answers, start

    def _ask(self, path_key: bytes, auth: bytes | None, forward: bool) -> Answer | None:
        """The source's answer for the key of a plain GET (None: the route's, as for a key
        with a dot segment in it)."""
        key = path_key.decode()
        if "/." in key:
            return None
        try:
            return self._answer(key, None if auth is None else auth.decode(), forward)
        except Exception:  # a bug: the route answers (its guard makes it a JSON 500)
            log.exception("bug: the hit lane failed on a GET of %r", key[:100])
            return None

    def follow(self, data: bytes) -> None:
        """Bytes given to aiohttp: parsed here only to know where its requests end."""
        if data and not self._broken:
            self._feed(data)

    def _feed(self, data: bytes) -> bool:
        try:
            self._parser.feed_data(data)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade):
            # Malformed, or an upgrade or CONNECT whose bytes after the head are not HTTP.
            self._broken = True
            self.open = False
            return False
        return True
