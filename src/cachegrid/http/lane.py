"""The hit lane: cache hits answered straight from a connection's bytes, ahead of aiohttp.

Owns: finding, in the bytes a connection received, the leading requests that are plain
hits, and knowing from every byte received whether the connection is between two requests.
It is sans-I/O (as httpcore keeps its state machine apart from its reads and writes): it
takes bytes and gives answers and the offset where aiohttp takes over; the connection's
protocol (http/listener.py) does the writing.

A plain hit request is a complete HTTP/1.1 keep-alive ``GET /v1/kv/<key>`` with no body,
no query, no percent-escape or dot segment in its path, a head of at most ``MAX_HEAD``
bytes and fewer than ``MAX_HEADERS`` fields, and none of the headers that change its answer
(``If-Match``, ``If-None-Match``, ``X-Request-Id``, ``Expect``, ``Upgrade``, a body's
length or coding); whether it is a hit is the ``HitSource``'s to say (http/api.py). aiohttp's
route gives such a request the same bytes (its pre-encoded answer, http/wire.py), and the
same metrics; the lane only saves aiohttp's request objects, routing and task around it.

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

import re
from collections.abc import Callable

import httptools

# (key, Authorization header or None) -> the whole encoded answer of a hit, or None.
HitSource = Callable[[str, str | None], bytes | None]

# A key's path the lane takes: visible ASCII without "%", "?", "#", and no dot segment
# ("/." : aiohttp's answer for those is the route's to give); the group is the key.
_KEY_PATH = re.compile(rb"/v1/kv/((?!\.)(?:[!\x22$&-.0-9:->@-~]|/(?!\.))+)")
# No head longer than this is taken: aiohttp's per-line and per-field limits (8190 bytes,
# its 431) cannot be exceeded within it, so every request aiohttp would refuse is left to it.
MAX_HEAD = 8190
MAX_HEADERS = 100  # aiohttp refuses more than 128
# Request headers that change a GET's answer or framing: a request with one goes to aiohttp.
_DECLINED = frozenset({b"if-match", b"if-none-match", b"x-request-id", b"expect", b"upgrade",
                       b"content-length", b"transfer-encoding"})  # fmt: skip
_AUTHORIZATION = b"authorization"


class Lane:
    """One connection's lane: an llhttp parser fed every byte, and the plain-hit test."""

    __slots__ = (
        "_answer",
        "_auth",
        "_begun",
        "_broken",
        "_done",
        "_fields",
        "_get",
        "_parser",
        "_plain",
        "_url",
    )  # fmt: skip

    def __init__(self, answer: HitSource) -> None:
        self._answer = answer
        self._parser = httptools.HttpRequestParser(self)
        self._begun = self._done = 0  # requests begun and completed by the parser
        self._broken = False  # the bytes stopped parsing: aiohttp has the rest
        self._url = b""
        self._auth: bytes | None = None
        self._plain = True  # no header seen so far keeps the request from the lane
        self._fields = 0
        self._get = False  # the request just completed is an HTTP/1.1 keep-alive GET

    def __repr__(self) -> str:
        return f"<Lane open={self.open} requests={self._done}>"

    @property
    def open(self) -> bool:
        """True between two requests of a connection whose bytes all parsed."""
        return self._begun == self._done and not self._broken

    # -- llhttp callbacks (httptools calls them by name) -----------------------------------

    def on_message_begin(self) -> None:
        self._begun += 1
        self._url, self._auth, self._plain, self._fields = b"", None, True, 0

    def on_url(self, url: bytes) -> None:
        self._url += url  # (in parts when a head arrives in parts)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._fields += 1
        lowered = name.lower()
        if lowered in _DECLINED:
            self._plain = False
        elif lowered == _AUTHORIZATION:
            self._auth = value

    def on_message_complete(self) -> None:
        self._done += 1
        parser = self._parser  # (llhttp forgets keep-alive once this returns)
        self._get = (parser.should_keep_alive() and parser.get_method() == b"GET"
                     and parser.get_http_version() == "1.1")  # fmt: skip

    # -- the two ways bytes pass --------------------------------------------------------

    def take(self, data: bytes, budget: int) -> tuple[list[bytes], int]:
        """The answers of ``data``'s leading plain hits, and how many bytes of it they
        were; no more answers once they hold ``budget`` bytes (a client pipelining small
        requests for big answers cannot make one read cost more than that). Call only
        while ``open`` and aiohttp is idle; the bytes from the offset on are aiohttp's
        (which answers with back-pressure of its own), and already followed here."""
        answers: list[bytes] = []
        start = 0
        while start < len(data) and budget > 0:
            end = data.find(b"\r\n\r\n", start) + 4
            if end < 4 or end - start > MAX_HEAD:
                break  # a partial head, or a long one: aiohttp's
            done = self._done
            if not self._feed(data[start:end]):
                return answers, start
            # Exactly one request, whole: else a body follows, and aiohttp takes it.
            whole = self._begun == self._done == done + 1
            answer = self._hit() if whole else None
            if answer is None:
                self.follow(data[end:])
                return answers, start
            answers.append(answer)
            budget -= len(answer)
            start = end
        if start < len(data):
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
            return False
        return True

    def _hit(self) -> bytes | None:
        """The answer of the request just parsed, if it is a plain hit."""
        if not (self._get and self._plain) or self._fields >= MAX_HEADERS:
            return None
        path = _KEY_PATH.fullmatch(self._url)
        if path is None:
            return None
        auth = self._auth
        return self._answer(path[1].decode(), None if auth is None else auth.decode("latin-1"))
