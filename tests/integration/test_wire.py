"""The pre-encoded hit answer (http/wire.py) on a real connection, byte by byte: it must be
a complete HTTP/1.1 response, keep pipelined answers in order, and leave HTTP/1.0 and
Connection: close to the ordinary path."""

import asyncio
import socket
import time
from email.utils import parsedate_to_datetime
from urllib.parse import urlsplit

import orjson

from cachegrid.ring import Ring


async def owned_keys(http, url: str, count: int, prefix: str) -> list[str]:
    """``count`` keys owned by the node at ``url``, written through it (so cached there)."""
    async with http.get(f"{url}/v1/ring") as response:
        ring = Ring.from_description(await response.json())
    async with http.get(f"{url}/readyz") as response:
        node_id = (await response.json())["node_id"]
    keys = [k for k in (f"{prefix}-{i}" for i in range(200)) if ring.owner(k) == node_id]
    for key in keys[:count]:
        async with http.put(f"{url}/v1/kv/{key}", json={"value": {"k": key}}) as response:
            assert response.status == 200
    return keys[:count]


async def connect(url: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    parts = urlsplit(url)
    return await asyncio.open_connection(parts.hostname, parts.port)


async def read_answer(reader: asyncio.StreamReader) -> tuple[str, dict[str, str], bytes]:
    """(status line, headers by lower-cased name, body) of one response."""
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    status, *lines = head.decode("latin-1").split("\r\n")[:-2]
    headers: dict[str, str] = {}
    for line in lines:
        name, _, value = line.partition(":")
        assert name.lower() not in headers, f"header {name} sent twice"
        headers[name.lower()] = value.strip()
    body = await asyncio.wait_for(reader.readexactly(int(headers["content-length"])), 5)
    return status, headers, body


def request(key: str, version: str = "1.1", extra: str = "") -> bytes:
    return f"GET /v1/kv/{key} HTTP/{version}\r\nHost: x\r\n{extra}\r\n".encode()


async def test_a_hit_is_a_complete_http11_answer(http, cluster) -> None:
    url = cluster.urls[0]
    (key,) = await owned_keys(http, url, 1, "wire")
    reader, writer = await connect(url)  # HTTP/1.0: the ordinary path, for comparison
    try:
        writer.write(request(key, "1.0"))
        _status, ordinary, _body = await read_answer(reader)
    finally:
        writer.close()
    version = ordinary["etag"].strip('"')
    reader, writer = await connect(url)
    try:
        for _ in range(2):  # twice on one connection: it stays open
            writer.write(request(key))
            status, headers, body = await read_answer(reader)
            assert status == "HTTP/1.1 200 OK"
            assert orjson.loads(body) == {"key": key, "value": {"k": key}, "version": version}
            assert headers["x-cache"] == "hit"
            sent_at = parsedate_to_datetime(headers["date"]).timestamp()
            assert abs(sent_at - time.time()) < 5
            same = ("content-type", "etag", "x-cache", "x-cachegrid-node", "content-length")
            assert {h: headers[h] for h in same} == {h: ordinary[h] for h in same}
            assert set(headers) == {*same, "date"}
    finally:
        writer.close()


async def test_pipelined_hits_are_answered_in_order(http, cluster) -> None:
    url = cluster.urls[0]
    keys = await owned_keys(http, url, 5, "pipe")
    order = [keys[i % len(keys)] for i in range(60)]
    reader, writer = await connect(url)
    try:
        writer.write(b"".join(request(key) for key in order))
        for key in order:
            _status, headers, body = await read_answer(reader)
            assert (orjson.loads(body)["key"], headers["x-cache"]) == (key, "hit")
    finally:
        writer.close()


async def test_http10_and_connection_close_are_answered_then_closed(http, cluster) -> None:
    url = cluster.urls[0]
    (key,) = await owned_keys(http, url, 1, "close")
    for version, extra in (("1.0", ""), ("1.1", "Connection: close\r\n")):
        reader, writer = await connect(url)
        try:
            writer.write(request(key, version, extra))
            status, headers, body = await read_answer(reader)
            assert status.endswith("200 OK")
            assert headers["x-cache"] == "hit"
            assert orjson.loads(body)["key"] == key
            assert await asyncio.wait_for(reader.read(), 5) == b""  # the node closed it
        finally:
            writer.close()


def resident_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        line = next(line for line in status if line.startswith("VmRSS:"))
    return int(line.split()[1]) * 1024


async def test_a_client_that_does_not_read_cannot_make_the_node_buffer(http, cluster) -> None:
    """2,000 pipelined GETs of a 60 KiB value, never read: without back-pressure the node
    would queue 120 MiB of answers in memory."""
    url, pid = cluster.urls[0], cluster.nodes[0].pid
    (key,) = await owned_keys(http, url, 1, "big")
    async with http.put(f"{url}/v1/kv/{key}", json={"value": "x" * (60 << 10)}) as response:
        assert response.status == 200
    async with http.get(f"{url}/v1/kv/{key}") as response:  # cached: every GET is a hit
        assert response.headers["X-Cache"] in ("hit", "miss")
    before = resident_bytes(pid)
    hits_before = await hits(http, url)
    parts = urlsplit(url)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect((parts.hostname, parts.port))
    sock.setblocking(False)
    # The node may stop reading our requests too (that is back-pressure as well).
    sending = asyncio.ensure_future(
        asyncio.get_running_loop().sock_sendall(sock, request(key) * 2000)
    )
    try:
        grown = 0
        for _ in range(20):  # the node answers what it can in well under 2 s
            await asyncio.sleep(0.1)
            grown = max(grown, resident_bytes(pid) - before)
        # The load really arrived: the sender did not fail, and the node answered (into
        # buffers nobody reads) more 60 KiB answers than fit in the client's socket.
        if sending.done():
            sending.result()
        answered = await hits(http, url) - hits_before
        assert answered >= 5, f"only {answered} pipelined GETs were answered: no load"
        assert grown < 40 << 20, f"the node buffered {grown >> 20} MiB for one idle reader"
    finally:
        sending.cancel()
        sock.close()


async def hits(http, url: str) -> int:
    """The node's count of cache hits, from its metrics."""
    async with http.get(f"{url}/metrics") as response:
        page = await response.text()
    line = next(line for line in page.splitlines()
                if line.startswith('cachegrid_cache_lookups_total{result="hit"}'))  # fmt: skip
    return int(float(line.split()[-1]))
