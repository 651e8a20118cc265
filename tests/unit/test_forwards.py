"""What a client gets of an owner's answer to a lane forward (http/forwards.py): the owner's
bytes, with this node's ring epoch after the status line and nothing of the owner's
connection or of another node's ring."""

from __future__ import annotations

import pytest

from cachegrid.http.forwards import passed_on

EPOCH = b"X-Cachegrid-Epoch: 7\r\n"
BODY = b'{"key":"k","value":{"a":"\\r\\nX-Cache: miss"},"version":"3"}'


def owner_answer(*lines: bytes, body: bytes = BODY) -> bytes:
    head = b"HTTP/1.1 200 OK\r\n" + b"".join(line + b"\r\n" for line in lines)
    return head + b"Content-Length: %d\r\n\r\n" % len(body) + body


def test_the_owners_answer_is_passed_on_byte_for_byte_with_this_nodes_epoch() -> None:
    message = owner_answer(b"Date: Mon, 07 Dec 2026 10:41:15 GMT", b"X-Cache: hit",
                           b"X-Cachegrid-Node: node0", b'ETag: "3"')  # fmt: skip
    answer, label = passed_on(message, True, EPOCH)
    assert answer == b"HTTP/1.1 200 OK\r\n" + EPOCH + message.removeprefix(b"HTTP/1.1 200 OK\r\n")
    assert label == "hit"


@pytest.mark.parametrize(("lines", "label"), [
    ((b"X-Cache: miss", b"Server: Python/3.11 aiohttp"), "miss"),
    ((b"X-Cache: replica", b"X-Cachegrid-Replica: node2"), "replica"),
    ((b"X-Cache: odd",), ""),
    ((b"X-Request-Id: r1",), ""),  # (no X-Cache: an error; the body's lookalike is not it)
])  # fmt: skip
def test_the_latency_label_is_the_owners_x_cache(lines: tuple[bytes, ...], label: str) -> None:
    assert passed_on(owner_answer(*lines), True, EPOCH)[1] == label


@pytest.mark.parametrize("keep_alive", [True, False])
def test_the_owners_connection_headers_and_another_nodes_epoch_are_not_passed_on(
        keep_alive: bool) -> None:  # fmt: skip
    """An owner that forwarded the request on (two hops) sends its own epoch; one closing
    its connection says so: neither is the client's (its connection stays open, and the
    epoch it gets is of the ring of the node it asked)."""
    connection = [] if keep_alive else [b"Connection: close"]
    message = owner_answer(b"X-Cache: hit", b"X-Cachegrid-Epoch: 9", *connection,
                           b'ETag: "3"')  # fmt: skip
    answer, label = passed_on(message, keep_alive, EPOCH)
    assert answer == owner_answer(b"X-Cachegrid-Epoch: 7", b"X-Cache: hit", b'ETag: "3"')
    assert label == "hit"


def test_headers_not_passed_on_are_found_whatever_their_case() -> None:
    message = owner_answer(b"connection: close", b"x-cachegrid-epoch: 9", b"KEEP-ALIVE: x")
    assert passed_on(message, False, EPOCH)[0] == owner_answer(b"X-Cachegrid-Epoch: 7")
