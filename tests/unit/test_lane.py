"""The hit lane's framing and choices (http/lane.py), sans I/O: which requests it answers,
and that every other byte reaches aiohttp whole and in order, however the bytes are split."""

from __future__ import annotations

import asyncio
from itertools import accumulate
from typing import Any
from unittest import mock

import httptools
import pytest
from aiohttp import http_parser
from hypothesis import example, given, settings
from hypothesis import strategies as st

from cachegrid.http.lane import MAX_HEAD, Lane

CACHED = {"a", "b/c", "d.e"}


class Source:
    """A HitSource over ``CACHED``: the answer names the key; records what it was asked."""

    def __init__(self) -> None:
        self.asked: list[tuple[str, str | None]] = []

    def __call__(self, key: str, authorization: str | None, forward: bool = True
                 ) -> bytes | None:  # fmt: skip
        self.asked.append((key, authorization))
        return f"<{key}>".encode() if key in CACHED else None


def get(path: str, extra: str = "", version: str = "1.1", method: str = "GET") -> bytes:
    return f"{method} {path} HTTP/{version}\r\nHost: n\r\n{extra}\r\n".encode()


def answer_of(data: bytes) -> bytes | None:
    """The lane's answer to ``data`` sent whole on a fresh connection (None: aiohttp's)."""
    lane = Lane(Source())
    answers, taken = lane.take(data, 1 << 20)
    assert taken in (0, len(data))
    return answers[0] if answers else None


def test_a_plain_hit_is_answered_and_its_authorization_passed_on() -> None:
    source = Source()
    lane = Lane(source)
    data = get("/v1/kv/b/c", "Authorization: Bearer t\r\n")
    assert lane.take(data, 1 << 20) == ([b"<b/c>"], len(data))
    assert source.asked == [("b/c", "Bearer t")]
    assert lane.open


@pytest.mark.parametrize("data", [
    get("/v1/kv/zz"),  # not cached: the source says no
    get("/v1/kv/a", method="HEAD"),
    get("/v1/kv/a", version="1.0"),
    get("/v1/kv/a", "Connection: close\r\n"),
    get("/v1/kv/a", 'If-None-Match: "1.1"\r\n'),
    get("/v1/kv/a", "if-match: *\r\n"),
    get("/v1/kv/a", "X-Request-Id: r1\r\n"),
    get("/v1/kv/a", "Expect: 100-continue\r\n"),
    get("/v1/kv/a", "Content-Length: 0\r\n"),
    get("/v1/kv/a", "Transfer-Encoding: chunked\r\n") + b"0\r\n\r\n",
    get("/v1/kv/a", "Upgrade: websocket\r\nConnection: upgrade\r\n"),
    get("/v1/kv/a?x=1"),
    get("/v1/kv/a#f"),
    get("/v1/kv/%61"),
    get("/v1/kv/x/../a"),
    get("/v1/kv/./a"),
    get("/v1/kv/.."),
    get("/v1/kv/"),
    get("/v1/kva"),
    get("/v2/kv/a"),
    get("/v1/kv/a", "X-Pad: " + "p" * MAX_HEAD + "\r\n"),  # aiohttp's limits decide
    get("/v1/kv/a", "".join(f"X-{i}: v\r\n" for i in range(100))),
    "GET /v1/kv/é HTTP/1.1\r\nHost: n\r\n\r\n".encode(),
    b"GET /v1/kv/a HTTP/1.1\nHost: n\n\n",  # bare line ends: aiohttp's to judge
    b"GET /v1/kv/zz HTTP/1.1\nHost: n\n\n" + get("/v1/kv/a"),
])  # fmt: skip
def test_what_is_not_a_plain_hit_is_left_to_aiohttp(data: bytes) -> None:
    assert answer_of(data) is None


def test_a_header_name_is_matched_in_any_case_and_a_plain_one_passes() -> None:
    assert answer_of(get("/v1/kv/a", "x-REQUEST-id: r\r\n")) is None
    assert answer_of(get("/v1/kv/a", "X-Requested: r\r\nAccept: */*\r\n")) == b"<a>"


def test_bytes_that_do_not_parse_close_the_lane_for_good() -> None:
    lane = Lane(Source())
    answers, taken = lane.take(b"GET /v1/kv/a HTTP/1.1\r\nBad Header\r\n\r\n" + get("/v1/kv/a"),
                               1 << 20)  # fmt: skip
    assert (answers, taken) == ([], 0)
    assert not lane.open
    lane.follow(get("/v1/kv/a"))
    assert not lane.open


def test_answers_stop_at_the_budget_and_the_rest_is_aiohttps() -> None:
    lane = Lane(Source())
    data = get("/v1/kv/a") * 10
    answers, taken = lane.take(data, 7)  # two answers of 3 bytes, then one past the budget
    assert answers == [b"<a>"] * 3
    assert taken == 3 * len(get("/v1/kv/a"))
    assert lane.open


# A stream of requests of every framing: (bytes, the lane may answer it).
REQUESTS = [
    (get("/v1/kv/a"), True),
    (get("/v1/kv/d.e"), True),
    (get("/v1/kv/zz"), False),
    (b"PUT /v1/kv/a HTTP/1.1\r\nHost: n\r\nContent-Type: application/json\r\n"
     b"Content-Length: 14\r\n\r\n{\"value\": 1}\r\n", False),
    (b"PUT /v1/kv/a HTTP/1.1\r\nHost: n\r\nTransfer-Encoding: chunked\r\n\r\n"
     b"5\r\n{\"val\r\n9\r\nue\": 2}\r\n\r\n0\r\n\r\n", False),
    (b"GET /v1/kv/a HTTP/1.1\r\nHost: n\r\nContent-Length: 4\r\n\r\n\r\n\r\n", False),
    (get("/v1/kv/b/c", 'If-None-Match: "x"\r\n'), False),
    (b"POST /v1/kv:batchGet HTTP/1.1\r\nHost: n\r\nContent-Length: 17\r\n\r\n"
     b'{"keys": ["a\\r"]}', False),
    (get("/v1/kv/b/c"), True),
    # A peer's forwards, as http/pipes.py writes them (answered without llhttp's callbacks)
    (get("/v1/kv/a", "X-Cachegrid-Hops: 1\r\n"), True),
    (get("/v1/kv/b/c", "X-Cachegrid-Hops: 1\r\nAuthorization: Bearer t\r\n"), True),
    (get("/v1/kv/zz", "X-Cachegrid-Hops: 1\r\n"), False),
    (get("/v1/kv/a/./b", "X-Cachegrid-Hops: 1\r\n"), False),
]  # fmt: skip


class Requests:
    """The whole requests in the bytes fed, by a parser of their own (method and URL)."""

    def __init__(self) -> None:
        self.found: list[bytes] = []
        self._url = b""
        self._parser = httptools.HttpRequestParser(self)

    def feed(self, data: bytes) -> Requests:
        self._parser.feed_data(data)
        return self

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_message_complete(self) -> None:
        self.found.append(self._parser.get_method() + b" " + self._url)
        self._url = b""


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(range(len(REQUESTS))), min_size=1, max_size=12),
       st.lists(st.just(0) | st.integers(1, 200), min_size=1, max_size=40),
       st.lists(st.booleans(), min_size=1, max_size=40))  # fmt: skip
def test_every_request_is_answered_once_whole_and_in_order(picks: list[int], sizes: list[int],
                                                           busy: list[bool]) -> None:  # fmt: skip
    """However the stream is cut into reads, and however long aiohttp takes over its
    requests (a model: at each read it may still be busy with those it has), the answers
    leave in the order asked, each request answered once, by the lane only if a plain hit;
    and aiohttp gets every other request whole."""
    stream = b"".join(REQUESTS[i][0] for i in picks)
    ends = list(accumulate(len(REQUESTS[i][0]) for i in picks))
    lane, aiohttp = Lane(Source()), Requests()
    answered: list[bytes] = []  # the answers, in the order they leave
    done = 0  # aiohttp's requests answered
    at = read = 0
    while at < len(stream):
        if not busy[read % len(busy)]:  # aiohttp answers what it has, in order
            answered += aiohttp.found[done:]
            done = len(aiohttp.found)
        size = sizes[read % len(sizes)]  # 0: up to the next request's end
        chunk = stream[at : at + size] if size else stream[at : next(e for e in ends if e > at)]
        at, read = at + len(chunk), read + 1
        idle = done == len(aiohttp.found)  # (the protocol's idle check)
        if lane.open and idle:
            answers, taken = lane.take(chunk, 1 << 20)
            answered += [b"GET /v1/kv/" + answer[1:-1] for answer in answers]
            aiohttp.feed(chunk[taken:])
        else:
            lane.follow(chunk)
            aiohttp.feed(chunk)
    answered += aiohttp.found[done:]
    assert lane.open  # the stream ended between requests
    assert answered == Requests().feed(stream).found


def test_a_peers_forwards_are_answered_without_the_parser_and_once_only_for_peers() -> None:
    """A connection whose requests are all a peer's forwards in http/pipes.py's form: each
    is answered (never forwarded again) without llhttp's callbacks, which would find them
    whole; one the route is to answer is fed to llhttp, and goes to aiohttp. A client's
    connection is looked at once: after its first request, the same bytes are parsed."""
    asked: list[tuple[str, str | None, bool]] = []

    def source(key: str, authorization: str | None, forward: bool) -> bytes | None:
        asked.append((key, authorization, forward))
        return f"<{key}>".encode() if key in CACHED else None

    peer = (get("/v1/kv/a", "X-Cachegrid-Hops: 1\r\n")
            + get("/v1/kv/b/c", "X-Cachegrid-Hops: 1\r\nAuthorization: Bearer t\r\n"))  # fmt: skip
    lane = Lane(source)
    assert lane.take(peer, 1 << 20) == ([b"<a>", b"<b/c>"], len(peer))
    assert asked == [("a", None, False), ("b/c", "Bearer t", False)]
    assert lane._begun == lane._done == 0  # (not parsed)
    declined = get("/v1/kv/zz", "X-Cachegrid-Hops: 1\r\n")
    assert lane.take(declined + peer, 1 << 20) == ([], 0)  # aiohttp's, all of it
    assert lane._begun == lane._done == 3  # (followed)
    assert lane.open
    client = Lane(source)
    assert client.take(get("/v1/kv/a") + peer, 1 << 20) == ([b"<a>"] * 2 + [b"<b/c>"],
                                                          len(get("/v1/kv/a") + peer))  # fmt: skip
    assert client._begun == client._done == 3  # (each parsed)


@pytest.mark.parametrize("extra", [
    "Host: y\r\n",  # a second Host
    "User-Agent: a\r\nUser-Agent: b\r\n",
    "Content-Type: a\r\ncontent-type: b\r\n",
    "Authorization: Bearer x\r\nAuthorization: Bearer y\r\n",
    "Authorization: Bearer x\xa0\r\n",  # decoded and trimmed otherwise by aiohttp
    "Authorization: Bearer \x85x\r\n",
    "Sec-WebSocket-Key1: 1\r\n",
])  # fmt: skip
def test_heads_aiohttp_refuses_or_reads_otherwise_are_left_to_it(extra: str) -> None:
    assert answer_of(get("/v1/kv/a", extra).replace(b"\xc2", b"")) is None
    assert answer_of(b"GET /v1/kv/a HTTP/1.1\r\n\r\n") is None  # no Host


# Header lines near what aiohttp and llhttp judge differently.
LINES = st.sampled_from([
    "Host: x", "host: y", "HOST:z", "User-Agent: a", "user-agent: b", "Authorization: Bearer t",
    "Authorization: Bearer t ", "authorization:Bearer u", "Authorization: Bearer t\xa0",
    "Authorization: Bearer \x85t", "Content-Length: 0", "Transfer-Encoding: chunked",
    "Connection: close", "Connection: keep-alive", "Connection: upgrade", "Upgrade: h2c",
    "Expect: 100-continue", "X-Request-Id: r", "If-None-Match: *", "Sec-WebSocket-Key1: 1",
    "Content-Type: a", "ETag: e", "Max-Forwards: 1", "X-A: b", "X-A: \x01", " folded",
    "\tX-B: c", "Bad Header", "Host : x", "X-C:", ": v", "X-D: a\x7fb", "Accept: */*",
    "X-Cachegrid-Hops: 1", "X-Cachegrid-Hops: 1", "Authorization: Bearer \x01",
])  # fmt: skip
TARGETS = st.sampled_from(["/v1/kv/a", "/v1/kv/a/b", "/v1/kv//a", "/v1/kv/a/", "/v1/kv/a;b",
                           "/v1/kv/a%2Fb", "/v1/kv/a/../b", "/v1/kv/.a", "/v1/kv/a?x",
                           "/v1/kv/\\x", "/v1/kv/a b"])  # fmt: skip
LINE_ENDS = st.sampled_from(["\r\n", "\r\n", "\r\n", "\n"])


def aiohttp_reads(head: bytes, parser_class: type) -> list[Any] | None:
    """What aiohttp's parser makes of ``head``: its messages, or None if it refuses it."""
    loop = asyncio.new_event_loop()
    try:
        parser = parser_class(mock.Mock(), loop, 2**16, max_line_size=8190, max_field_size=8190)
        messages, _upgraded, _tail = parser.feed_data(head)
        return [message for message, _payload in messages]
    except Exception:
        return None
    finally:
        loop.close()


@settings(max_examples=1000, deadline=None)
@example("/v1/kv/a", [("Authorization: Bearer t\xa0", "\r\n")], "1.1", True)
@example("/v1/kv/a", [("Authorization: Bearer \x85t", "\r\n")], "1.1", True)
@example("/v1/kv/a", [("Authorization: Bearer t", "\r\n")] * 2, "1.1", True)
@example("/v1/kv/a", [("host: y", "\r\n")], "1.1", True)
@example("/v1/kv/a", [], "1.1", False)
@example(
    "/v1/kv/a", [("X-Cachegrid-Hops: 1", "\r\n"), ("Authorization: Bearer t", "\r\n")], "1.1", True
)  # (a peer's forward)
@example(
    "/v1/kv/a", [("X-Cachegrid-Hops: 1", "\r\n"), ("Authorization: Bearer t ", "\r\n")], "1.1", True
)
@given(TARGETS, st.lists(st.tuples(LINES, LINE_ENDS), max_size=4), st.sampled_from(["1.1", "1.0"]),
       st.booleans())  # fmt: skip
def test_the_lane_answers_only_what_aiohttp_reads_as_that_same_get(
        target: str, lines: list[tuple[str, str]], version: str, host: bool) -> None:  # fmt: skip
    """A differential test against both of aiohttp's parsers (C and pure Python): whenever
    the lane answers a head, aiohttp reads it as exactly one keep-alive HTTP/1.1 GET of the
    same key, and the route's check would see the same Authorization."""
    if host:  # (most heads then get as far as the lane's own checks)
        lines = [("Host: h", "\r\n"), *lines]
    head = (f"GET {target} HTTP/{version}\r\n" + "".join(line + end for line, end in lines)
            + "\r\n").encode("latin-1")  # fmt: skip
    source = Source()
    lane = Lane(lambda key, auth, forward: source(key, auth) or b"<any>")
    answers, _taken = lane.take(head, 1 << 20)
    if not answers:
        return
    ((key, authorization),) = source.asked
    for parser_class in (http_parser.HttpRequestParser, http_parser.HttpRequestParserPy):
        messages = aiohttp_reads(head, parser_class)
        assert messages is not None, (head, parser_class)  # (None: aiohttp refuses it)
        (message,) = messages
        assert (message.method, message.version, message.should_close) == ("GET", (1, 1), False)
        assert message.path == f"/v1/kv/{key}"
        sent = message.headers.get("Authorization")
        assert (sent.strip() if sent else None) == (authorization.strip() if authorization
                                                    else None), head  # fmt: skip
