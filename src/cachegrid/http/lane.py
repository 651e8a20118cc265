"""The hit lane: cache hits answered straight from a connection's bytes, ahead of aiohttp.

Owns: finding, in the bytes a connection received, the leading requests that are plain
hits, and knowing from every byte received whether the connection is between two requests.
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
routing and task around it.

Invariants:
- Order: the lane answers only while aiohttp has no request of the connection queued or in
  progress (``open`` and the protocol's idle check), and stops at the first request it does
  not answer: that request and every byte after it go to aiohttp, until aiohttp is idle and
  the connection is between requests again. So answers leave in the order asked.
- Framing: every byte the connection receives, answered here or not, is fed once to one
  llhttp parser (httptools), so ``open`` is true exactly between two requests (a body,
  chunked or not, and a partial head included). Bytes it cannot parse close the lane for
  the connection's life: aiohttp alone answers them (its JSON 400) and closes.
- Anything the lane is unsure of, it leaves to aiohttp: declining costs one parse.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable

import httptools

log = logging.getLogger(__name__)

# (key, Authorization header or None) -> the whole encoded answer of a hit, or None.
HitSource = Callable[[str, str | None], bytes | None]

# The request line of a GET the lane may answer: HTTP/1.1, a key's path of visible ASCII
# without "%", "?", "#", not starting with "." (the group is the key). A key with a dot
# segment in it ("/.") is refused after: the route's answer for those is aiohttp's to give.
_GET_LINE = re.compile(rb"GET /v1/kv/([!\x22$&-\-/->@-~][!\x22$&->@-~]*) HTTP/1\.1\r\n")
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
        "_keep_alive",
        "_parser",
        "_plain",
        "_seen",
        "open",
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
        self._keep_alive = False  # the request just completed leaves the connection open

    def __repr__(self) -> str:
        return f"<Lane open={self.open} requests={self._done}>"

    # -- llhttp callbacks (httptools calls them by name) -----------------------------------

    def on_message_begin(self) -> None:
        self._begun += 1
        self.open = False
        self._auth, self._plain, self._fields, self._seen = None, True, 0, 0

    def on_header(self, name: bytes, value: bytes) -> None:
        self._fields += 1
        lowered = name.lower()
        if lowered in _DECLINED:
            self._plain = False
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

    def take(self, data: bytes, budget: int) -> tuple[list[bytes], int]:
        """The answers of ``data``'s leading plain hits, and how many bytes of it they
        were; no more answers once they hold ``budget`` bytes (a client pipelining small
        requests for big answers cannot make one read cost more than that). Call only
        while ``open`` and aiohttp is idle; the bytes from the offset on are aiohttp's
        (which answers with back-pressure of its own), and already followed here."""
        answers: list[bytes] = []
        start, size = 0, len(data)
        while start < size and budget > 0:
            end = data.find(b"\r\n\r\n", start) + 4
            if end < 4 or end - start > MAX_HEAD:
                break  # a partial head, or a long one: aiohttp's
            done = self._done
            if not self._feed(data if end - start == size else data[start:end]):
                return answers, start
            answer = None
            # Exactly one whole request (else a body follows) that keeps the connection
            # open, with plain headers and the request line of a key's GET (which llhttp
            # parsed as well: the same URL).
            if (self._begun == self._done == done + 1 and self._keep_alive and self._plain
                    and self._seen & _HOST and self._fields < MAX_HEADERS
                    and (line := _GET_LINE.match(data, start)) is not None
                    and "/." not in (key := line[1].decode())):  # fmt: skip
                auth = self._auth
                try:
                    answer = self._answer(key, None if auth is None else auth.decode())
                except Exception:  # a bug: the route answers (its guard makes it a JSON 500)
                    log.exception("bug: the hit lane failed on a GET of %r", key[:100])
            if answer is None:
                self.follow(data[end:])
                return answers, start
            answers.append(answer)
            budget -= len(answer)
            start = end
        if start < size:
            self.follow(data[start:])
        return answers, start

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
