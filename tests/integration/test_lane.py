"""The hit lane (http/lane.py) on real connections: its answers are the route's, byte for
byte, and counted as the route's; pipelined requests of every framing, cut into reads
anywhere, are answered in order; an answer restarts the idle timer; a client that
pipelines without reading cannot make the node buffer; and no bytes a client sends make a
500 or an answer that is not HTTP."""

from __future__ import annotations

import asyncio
import contextlib
import random
import re
import socket
import threading
import time
import urllib.request
from itertools import accumulate

import orjson
import pytest
from aiohttp import web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from cachegrid.http.lane import Pending
from cachegrid.http.listener import Listener
from cachegrid.metrics import Metrics
from cachegrid.ring import Ring
from tests.conftest import Cluster
from tests.integration.test_connection_limits import address, closed_by_peer
from tests.integration.test_wire import connect, owned_keys, request

KV_ROUTE = r"GET /v1/kv/{key:[\s\S]*}"


async def metric_value(http, url: str, name: str, **labels: str) -> float:
    async with http.get(f"{url}/metrics") as response:
        page = await response.text()
    for family in text_string_to_metric_families(page):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return float(sample.value)
    return 0.0


def without_date(answer: bytes) -> bytes:
    return re.sub(rb"\r\nDate: [^\r]*", b"", answer)


async def raw_exchange(url: str, data: bytes, answers: int) -> list[bytes]:
    """``answers`` whole answers to ``data`` sent at once on a new connection."""
    reader, writer = await connect(url)
    try:
        writer.write(data)
        found = []
        for _ in range(answers):
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            length = int(re.search(rb"Content-Length: (\d+)", head)[1])  # type: ignore[index]
            found.append(head + await asyncio.wait_for(reader.readexactly(length), 5))
        return found
    finally:
        writer.close()


async def test_the_lanes_answer_is_the_routes_and_counted_as_its(http, cluster) -> None:
    url = cluster.urls[0]
    keys = await owned_keys(http, url, 3, "lane/a.b:c")  # a slash, a dot and a colon
    for key in keys:
        # Content-Length: 0 keeps a request from the lane: the route answers it.
        (by_route,) = await raw_exchange(url, request(key, extra="Content-Length: 0\r\n"), 1)
        hits = await metric_value(http, url, "cachegrid_request_seconds_count",
                                  route=KV_ROUTE, cache="hit")  # fmt: skip
        oks = await metric_value(http, url, "cachegrid_responses_total", route=KV_ROUTE,
                                 status="200")  # fmt: skip
        by_lane = await raw_exchange(url, request(key) * 3, 3)
        assert [without_date(answer) for answer in by_lane] == [without_date(by_route)] * 3
        assert b"\r\nX-Cache: hit\r\n" in by_route
        assert await metric_value(http, url, "cachegrid_request_seconds_count",
                                  route=KV_ROUTE, cache="hit") == hits + 3  # fmt: skip
        assert await metric_value(http, url, "cachegrid_responses_total", route=KV_ROUTE,
                                  status="200") == oks + 3  # fmt: skip


async def test_the_first_request_of_a_new_connection_takes_the_lane(http, cluster) -> None:
    """A GET sent on a new connection, as a client that connects per request sends it,
    through a node that does not own the key: the lane forwards it (no request id made,
    which the route's batched forward makes). Before, the first request of a connection
    always took the route: aiohttp's connection task had not run when it arrived."""
    (key,) = await owned_keys(http, cluster.urls[0], 1, "lane-first")
    for _ in range(3):
        (answer,) = await raw_exchange(cluster.urls[1], request(key), 1)
        assert answer.startswith(b"HTTP/1.1 200 OK\r\n"), answer
        assert b"\r\nX-Cachegrid-Epoch: " in answer
        assert b"X-Request-Id" not in answer, answer


def mixed_requests(key: str, written: str) -> list[tuple[bytes, int, bytes | None]]:
    """(request, its status, a body it must answer or None) of every framing."""
    value = orjson.dumps({"value": {"n": 7}})
    chunked = b"".join(b"%x\r\n%s\r\n" % (len(part), part) for part in (value[:5], value[5:]))
    got_key = f'"value":{{"k":"{key}"}}'.encode()  # (as owned_keys wrote it)
    return [
        (request(key), 200, got_key),
        (
            f"PUT /v1/kv/{written} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(value)}\r\n\r\n".encode()
            + value,
            200,
            None,
        ),
        (request(written), 200, b'"value":{"n":7}'),
        (
            f"PUT /v1/kv/{written} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            "Transfer-Encoding: chunked\r\n\r\n".encode()
            + chunked
            + b"0\r\n\r\n",
            200,
            None,
        ),
        (request(key, extra="If-None-Match: *\r\n"), 304, None),
        (request("lane-never-written"), 404, None),
        (f"HEAD /v1/kv/{key} HTTP/1.1\r\nHost: x\r\n\r\n".encode(), 200, None),
        (request(key, extra="X-Request-Id: lane-test\r\n"), 200, b"lane-test"),
        (request(key), 200, got_key),
    ]


@pytest.mark.parametrize("via", ["owner", "other node"])
async def test_pipelined_requests_cut_anywhere_are_answered_in_order(
        http, cluster, fresh_cluster, via: str) -> None:  # fmt: skip
    """Every framing (a hit, a PUT with a length and a chunked one, a 304, a 404, a HEAD, a
    request id), pipelined on one connection and sent in pieces cut at random: the answers
    come back whole, in the order asked, each the right one. Sent to another node, the
    plain GETs are the lane's forwards (answered later, over pipelined peer connections),
    the others the route's, and a hit of that node's own key follows each (the owner is
    paused while they are sent, so every forward is still pending when the bytes after it
    arrive; no read leases, which would soon answer them from copies)."""
    if via == "other node":
        cluster = await asyncio.to_thread(fresh_cluster, node_config="read_lease_threshold = 0\n")
    key, written = await owned_keys(http, cluster.urls[0], 2, "lane-mix")
    plan = mixed_requests(key, written) * 3
    url, keys, owner = cluster.urls[0], {key, written}, None
    if via == "other node":
        url, owner = cluster.urls[1], cluster.nodes[0]
        (own,) = await owned_keys(http, url, 1, "lane-mix-own")
        hit = (request(own), 200, f'"value":{{"k":"{own}"}}'.encode())
        plan = [step for asked in plan for step in (asked, hit)]
        keys.add(own)
    stream = b"".join(data for data, _, _ in plan)
    ends = list(accumulate(len(data) for data, _, _ in plan))[:-1]
    for seed in range(12):
        rng = random.Random(seed)
        cuts = sorted(rng.sample(range(1, len(stream)), rng.randint(1, 40)))
        if seed % 2:  # between requests too: a hit may then come while a PUT is written
            cuts = sorted({*cuts, *ends})
        reader, writer = await connect(url)
        writer.transport.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP,
                                                             socket.TCP_NODELAY, 1)  # fmt: skip
        try:
            if owner is not None:
                owner.pause()
            try:
                for start, end in zip([0, *cuts], [*cuts, len(stream)], strict=True):
                    writer.write(stream[start:end])
                    await writer.drain()
                    await asyncio.sleep(rng.choice((0, 0, 0.002)))  # separate reads, often
            finally:
                if owner is not None:
                    owner.resume()
            for index, (data, status, expected) in enumerate(plan):
                line, headers, body = await read_expected(reader, data)
                assert line.split(" ")[1] == str(status), (seed, index, line)
                if expected is not None:
                    assert expected in body or expected in headers.get(
                        "x-request-id", "").encode(), (seed, index, body)  # fmt: skip
                if status == 200 and data.startswith(b"GET"):
                    assert orjson.loads(body)["key"] in keys, (seed, index)
        finally:
            writer.close()


async def read_expected(reader: asyncio.StreamReader,
                        sent: bytes) -> tuple[str, dict[str, str], bytes]:  # fmt: skip
    """One answer; a HEAD's and a 304's have no body, whatever length they name."""
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    status, *lines = head.decode("latin-1").split("\r\n")[:-2]
    headers = {n.lower(): v.strip() for n, _, v in (line.partition(":") for line in lines)}
    if sent.startswith(b"HEAD") or " 304 " in status:
        return status, headers, b""
    length = int(headers["content-length"])
    return status, headers, await asyncio.wait_for(reader.readexactly(length), 5)


async def ask(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
              data: bytes) -> tuple[str, dict[str, str], bytes]:  # fmt: skip
    """``data`` sent (a request, or the rest of one), and the answer it completes."""
    writer.write(data)
    return await read_expected(reader, b"GET")


async def test_answers_from_the_lane_keep_a_busy_connection_open(fresh_cluster, http) -> None:
    """The idle timer (node.idle_timeout, 1 s here) runs from the last answer, the lane's
    too: a connection asking every 0.3 s for 2.5 s stays open; left idle, it is closed."""
    cluster: Cluster = await asyncio.to_thread(fresh_cluster, node_config="idle_timeout = 1.0\n")
    url = cluster.urls[0]
    (key,) = await owned_keys(http, url, 1, "busy")
    conn = socket.create_connection(address(cluster), timeout=5)
    try:
        conn.sendall(request(key))
        assert conn.recv(65536).startswith(b"HTTP/1.1 200 OK")  # cached now: hits follow
        started = time.monotonic()
        while time.monotonic() - started < 2.5:
            await asyncio.sleep(0.3)
            conn.sendall(request(key))
            answer = await asyncio.to_thread(conn.recv, 65536)
            assert answer.startswith(b"HTTP/1.1 200 OK"), answer
            assert b"X-Cache: hit" in answer, answer
        assert await asyncio.to_thread(closed_by_peer, conn, 2.5)
    finally:
        conn.close()


async def test_a_hit_gets_the_routes_429_while_the_node_is_at_its_admission_limit(
        fresh_cluster, http) -> None:  # fmt: skip
    """Admission (node.max_in_flight_requests, 2 here) holds for the lane's hits too: with
    two PUTs in progress (their bodies not yet sent), a hit is refused with the route's 429;
    once they are done, the same connection's next GET is a hit from the lane again."""
    limit = "max_in_flight_requests = 2\n"
    cluster: Cluster = await asyncio.to_thread(fresh_cluster, node_config=limit)
    url = cluster.urls[0]
    (key,) = await owned_keys(http, url, 1, "admitted")
    body = orjson.dumps({"value": 1})
    stalled = []
    for i in range(2):
        reader, writer = await connect(url)
        head = (f"PUT /v1/kv/slow-{i} HTTP/1.1\r\nHost: x\r\nContent-Type: "
                f"application/json\r\nContent-Length: {len(body)}\r\n\r\n")  # fmt: skip
        writer.write(head.encode())
        stalled.append((reader, writer))
    reader, writer = await connect(url)
    try:
        await asyncio.sleep(0.3)  # both PUTs admitted, each waiting for its body
        status, headers, answer = await ask(reader, writer, request(key))
        assert status == "HTTP/1.1 429 Too Many Requests", (status, answer)
        assert headers["retry-after"] == "1"
        assert orjson.loads(answer)["error"]["code"] == "overloaded"
        for put_reader, put_writer in stalled:
            put_status, _, _ = await ask(put_reader, put_writer, body)
            assert put_status == "HTTP/1.1 200 OK"
        status, headers, answer = await ask(reader, writer, request(key))
        assert (status, headers["x-cache"]) == ("HTTP/1.1 200 OK", "hit")
    finally:
        for _, other in [*stalled, (reader, writer)]:
            other.close()


async def test_expect_100_continue_then_hits_on_the_same_connection(http, cluster) -> None:
    """A PUT with Expect: 100-continue gets its interim answer before it sends the body, its
    final answer after, and the same connection's next GET is the lane's hit of the value
    just written. A declared length over the limit gets a JSON 413 instead of the interim
    answer, an unknown expectation a JSON 417."""
    url = cluster.urls[0]
    (key,) = await owned_keys(http, url, 1, "expect")
    value = orjson.dumps({"value": {"expected": True}})
    reader, writer = await connect(url)
    try:
        head = (f"PUT /v1/kv/{key} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                "Expect: 100-continue\r\nContent-Length: %d\r\n\r\n")  # fmt: skip
        writer.write((head % (64 << 20)).encode())  # over the limit: refused, body unread
        status, _, answer = await read_expected(reader, b"PUT")
        assert status == "HTTP/1.1 413 Request Entity Too Large", (status, answer)
        assert orjson.loads(answer)["error"]["code"] == "too_large"
        writer.close()
        reader, writer = await connect(url)
        writer.write(head.replace("100-continue", "tea").encode() % len(value) + value)
        status, _, answer = await read_expected(reader, b"PUT")
        assert status == "HTTP/1.1 417 Expectation Failed", (status, answer)
        assert orjson.loads(answer)["error"]["code"] == "expectation_failed"
        writer.close()
        reader, writer = await connect(url)
        writer.write((head % len(value)).encode())
        interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
        status, _, _ = await ask(reader, writer, value)
        assert status == "HTTP/1.1 200 OK"
        status, headers, answer = await ask(reader, writer, request(key))
        assert (status, headers["x-cache"]) == ("HTTP/1.1 200 OK", "hit")
        assert orjson.loads(answer)["value"] == {"expected": True}
    finally:
        writer.close()


BIG_ANSWER = b"HTTP/1.1 200 OK\r\nContent-Length: 8192\r\n\r\n" + b"x" * 8192


async def test_a_graceful_stop_waits_for_the_lanes_forwards(fresh_cluster, http) -> None:
    """A GET the lane forwarded (its owner paused: the answer comes only with the forward
    timeout, 4 s here) is still answered when the forwarding node is told to stop
    meanwhile: the stop waits for it, then closes the connection. aiohttp alone would
    count the connection idle and close it unanswered."""
    config = "forward_timeout = 4.0\nread_lease_threshold = 0\n"
    cluster: Cluster = await asyncio.to_thread(fresh_cluster, node_config=config)
    async with http.get(f"{cluster.urls[0]}/v1/ring") as response:
        ring = Ring.from_description(await response.json())
    key = next(k for k in (f"stop-{i}" for i in range(200)) if ring.owner(k) == "node0")
    host, port = cluster.nodes[1].endpoint.rsplit(":", 1)
    conn = socket.create_connection((host, int(port)), timeout=10)
    cluster.nodes[0].pause()
    try:
        conn.sendall(request(key))
        await asyncio.sleep(0.5)
        stopping = asyncio.create_task(asyncio.to_thread(cluster.nodes[1].stop, 20))
        answer = b""
        while chunk := await asyncio.to_thread(conn.recv, 65536):
            answer += chunk
        await stopping
    finally:
        cluster.nodes[0].resume()
        conn.close()
    assert answer.startswith(b"HTTP/1.1 503 Service Unavailable\r\n"), answer
    assert b'"code":"unavailable"' in answer
    assert b"TimeoutError" in answer
    named = re.search(rb'"request_id":"([^"]+)"', answer)
    assert named is not None
    assert b"\r\nX-Request-Id: " + named[1] + b"\r\n" in answer


@pytest.mark.parametrize(("at_once", "forwarded"), [
    (True, False), (False, False), (True, True), (False, True),
])  # fmt: skip
async def test_a_client_pipelining_without_reading_cannot_grow_the_lanes_buffer(
        at_once: bool, forwarded: bool) -> None:  # fmt: skip
    """2,000 pipelined GETs of an 8 KiB answer, never read, sent at once (the lane answers
    some, then aiohttp takes what was read, with back-pressure of its own) or one by one
    (the lane stops reading once its answers are past the high-water mark); hits, or
    forwards whose answers come 5 ms later (the lane takes at most 16 a read, and takes no
    more once their answers are past the mark; the budget they hold is given back only
    once the client has read them, so big ones count in the node's byte budget). Without
    those bounds the node would hold 16 MiB of answers for one client (62 MiB in a review,
    with forwards of 1 MiB)."""
    asked = held = 0
    loop = asyncio.get_running_loop()

    class Held:
        def close(self) -> None:
            nonlocal held
            held -= 1

    def big(key: str, authorization: str | None, forward: bool) -> bytes | Pending:
        nonlocal asked, held
        asked += 1
        if not forwarded:
            return BIG_ANSWER
        pending = Pending()
        held += 1
        loop.call_later(0.005, pending.ready, BIG_ANSWER, Held())
        return pending

    async def route(request: web.BaseRequest) -> web.StreamResponse:
        return web.Response(body=b"x" * 8192)

    server = web.Server(route)
    listener = Listener(server, 100, Metrics(), big)
    await listener.start("127.0.0.1", 0)
    assert listener._socket_server is not None
    port = listener._socket_server.sockets[0].getsockname()[1]
    client = socket.socket()
    client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    client.connect(("127.0.0.1", port))

    def send() -> None:
        if at_once:  # (forwarded: one first, the rest arriving while it is pending)
            if forwarded:
                client.sendall(request("k"))
                time.sleep(0.001)
            client.sendall(request("k") * (1999 if forwarded else 2000))
            return
        with contextlib.suppress(OSError):  # (closed at the end of the test)
            for _ in range(2000):
                client.sendall(request("k"))
                time.sleep(0.0005)  # each its own read

    sender = threading.Thread(target=send, daemon=True)
    sender.start()
    try:
        buffered = 0
        for _ in range(20):
            await asyncio.sleep(0.05)
            for protocol in server._connections:
                if protocol.transport is not None:
                    buffered = max(buffered, protocol.transport.get_write_buffer_size())
        assert asked >= 2, "the lane answered nothing: no load"
        assert buffered < 1 << 20, f"{buffered >> 20} MiB buffered for one idle reader"
        if forwarded and not at_once:  # (at once, aiohttp answers all but the first 16)
            assert held > 0, "answers the client never read gave their budget back"
        client.close()
        for _ in range(40):  # the node sees the connection go, then gives the budget back
            await asyncio.sleep(0.05)
            if not held:
                break
        assert held == 0
    finally:
        client.close()
        await listener.close()
        await server.shutdown(1)


async def test_a_forward_slower_than_the_idle_timeout_is_still_answered() -> None:
    """The idle timer does not close a connection whose answers are pending (a forward,
    0.6 s here, with an idle timeout of 0.3 s): the connection is not idle. Found in a
    review: it was closed unanswered, and counted as idle."""
    loop = asyncio.get_running_loop()

    def slow(key: str, authorization: str | None, forward: bool) -> Pending:
        pending = Pending()
        loop.call_later(0.6, pending.ready, BIG_ANSWER)
        return pending

    async def route(request: web.BaseRequest) -> web.StreamResponse:
        return web.Response(body=b"route")

    server = web.Server(route, keepalive_timeout=0.3)
    metrics = Metrics()
    listener = Listener(server, 100, metrics, slow)
    await listener.start("127.0.0.1", 0)
    assert listener._socket_server is not None
    port = listener._socket_server.sockets[0].getsockname()[1]
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request("k"))
        answer = await asyncio.wait_for(reader.readexactly(len(BIG_ANSWER)), 5)
        assert answer == BIG_ANSWER
        assert metrics.connections_timed_out.value == 0
        assert await asyncio.wait_for(reader.read(), 5) == b""  # then idle: closed
        assert metrics.connections_timed_out.value == 1
    finally:
        writer.close()
        await listener.close()
        await server.shutdown(1)


def fuzzed_requests() -> st.SearchStrategy[bytes]:
    """Requests near the lane's boundary: real heads and broken ones, bodies that match
    their length or not, and random bytes, pipelined in twos and threes."""
    token = st.sampled_from(["GET", "HEAD", "PUT", "DELETE", "POST", "get", "G ET", "", "OPTIONS"])
    path = st.sampled_from(["/v1/kv/fz", "/v1/kv/fz%41", "/v1/kv/../x", "/v1/kv/", "*",
                            "/v1/kv/fz?x", "/v1/kv:batchGet", "/v1/kv/f z", "/\x00",
                            "/v1/kv/" + "k" * 600, "/v1/kv/\xff\xfe", "/v1/kv/fz\x7f"])  # fmt: skip
    version = st.sampled_from(["HTTP/1.1", "HTTP/1.0", "HTTP/2", "HTTP/1.1 x", ""])
    header = st.sampled_from([
        "Host: x", "Content-Length: 3", "Content-Length: -1", "Content-Length: 1, 2",
        "Transfer-Encoding: chunked", "Transfer-Encoding: gzip", "Connection: close",
        "Expect: 100-continue", "X-Request-Id: \x7f", "If-None-Match: nope", "Bad Header",
        "Upgrade: h2c", "Content-Type: application/json", "X: " + "v" * 9000, ":empty",
    ])  # fmt: skip
    body = st.sampled_from(["", "abc", '{"value": 1}', "3\r\nabc\r\n0\r\n\r\n", "zz\r\n"])
    one = st.builds(lambda m, p, v, hs, b: (f"{m} {p} {v}\r\n" + "".join(f"{h}\r\n" for h in hs)
                                            + f"\r\n{b}").encode("latin-1"),
                    token, path, version, st.lists(header, max_size=4), body)  # fmt: skip
    return st.lists(one | st.binary(max_size=64), min_size=1, max_size=3).map(b"".join)


async def after_a_hit(host: str, port: int, data: bytes) -> tuple[bytes, bool]:
    """A hit asked and answered on a new connection, then ``data`` sent on it: what the
    node answers until it closes or is quiet for 0.25 s, and whether it closed. (Never
    half-closed: aiohttp drops the requests it has not answered when a client does.)"""
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(request("fz"))
        hit = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert hit.startswith(b"HTTP/1.1 200 OK\r\n"), hit
        assert b"\r\nX-Cache: hit\r\n" in hit, hit
        await reader.readexactly(int(re.search(rb"Content-Length: (\d+)", hit)[1]))  # type: ignore[index]
        writer.write(data)
        chunks = []
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            try:
                chunk = await asyncio.wait_for(reader.read(65536), 0.25)
            except TimeoutError:
                break  # (a request waiting for a body that never comes)
            if not chunk:
                return b"".join(chunks), True
            chunks.append(chunk)
        return b"".join(chunks), False
    finally:
        writer.close()


@pytest.fixture(scope="module")
def fuzz_node(cluster: Cluster) -> tuple[str, int]:
    """The first node's address, with the keys the fuzz asks cached there."""
    url = cluster.urls[0]
    for path in ("/v1/kv/fz", "/v1/kv/" + "k" * 600):
        body = orjson.dumps({"value": 1})
        put = urllib.request.Request(url + path, data=body, method="PUT",
                                     headers={"Content-Type": "application/json"})  # fmt: skip
        with urllib.request.urlopen(put, timeout=5), urllib.request.urlopen(url + path):
            pass
    return address(cluster)


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=fuzzed_requests())
def test_no_bytes_make_a_500_or_an_answer_that_is_not_http(fuzz_node, data: bytes) -> None:
    """Each example follows a hit on its connection (so the lane reads it first): every
    answer is HTTP, none a 500, and the node never closes the connection unanswered."""
    host, port = fuzz_node
    answer, closed = asyncio.run(after_a_hit(host, port, data))
    assert answer == b"" or re.match(rb"HTTP/1\.[01] \d{3} ", answer), answer[:200]
    assert answer or not closed, "closed with no answer"
    statuses = re.findall(rb"HTTP/1\.[01] (\d{3}) ", answer)
    assert b"500" not in statuses, answer
