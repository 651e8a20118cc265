"""Bytes held for requests in progress are bounded on real nodes (issue 17): a batchGet
answer over ``node.max_batch_bytes`` is a 413, big batchGets past
``node.max_bytes_in_flight`` are 429s while resident memory stays bounded, and a client
that does not read its answer is cut off after ``node.write_timeout`` and gives every byte
back."""

import asyncio
import contextlib
import socket
from urllib.parse import urlsplit

import orjson
import pytest

from tests.integration.test_cache_bounds import gauge
from tests.integration.test_wire import resident_bytes

pytestmark = pytest.mark.slow

VALUE = "x" * 60_000  # the test clusters' values are at most 64 KiB
CAP = 8 << 20
BUDGET = 32 << 20
LIMITS = f"max_batch_bytes = {CAP}\nmax_bytes_in_flight = {BUDGET}\nwrite_timeout = 2.0\n"


async def filled(fresh_cluster, http, count: int):
    cluster = await asyncio.to_thread(fresh_cluster, node_config=LIMITS)
    keys = [f"big-{i:03d}" for i in range(count)]
    for i, key in enumerate(keys):
        async with http.put(f"{cluster.urls[i % 3]}/v1/kv/{key}",
                            json={"value": f"{key}:{VALUE}"}) as response:  # fmt: skip
            assert response.status == 200, await response.text()
    return cluster, keys


async def batch_get(http, url: str, keys: list[str]) -> tuple[int, dict, dict]:
    async with http.post(f"{url}/v1/kv:batchGet", json={"keys": keys}) as response:
        return response.status, dict(response.headers), orjson.loads(await response.read())


async def test_a_batch_answer_over_its_cap_is_refused_and_one_under_it_is_whole(
    fresh_cluster, http
) -> None:
    cluster, keys = await filled(fresh_cluster, http, 200)
    status, _, body = await batch_get(http, cluster.urls[0], keys)  # about 12 MB
    assert (status, body["error"]["code"]) == (413, "too_large"), body
    assert "node.max_batch_bytes" in body["error"]["message"]
    status, _, body = await batch_get(http, cluster.urls[0], keys[:100])  # about 6 MB
    assert status == 200
    assert [item["value"] for item in body["items"]] == [f"{k}:{VALUE}" for k in keys[:100]]
    assert await gauge(http, cluster.urls[0], "cachegrid_bytes_in_flight") == 0


async def test_forty_big_batches_at_once_keep_memory_bounded(fresh_cluster, http) -> None:
    """40 concurrent batchGets of about 6 MB each (most of each from other owners): the
    node works on as many as its budget allows and refuses the rest with 429; its resident
    memory grows by a bounded amount, not by 40 answers' worth (about 500 MB)."""
    cluster, keys = await filled(fresh_cluster, http, 100)
    url, pid = cluster.urls[0], cluster.nodes[0].pid
    before = resident_bytes(pid)
    peak = before
    done = asyncio.Event()

    async def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, resident_bytes(pid))
            await asyncio.sleep(0.01)

    sampler = asyncio.create_task(sample())
    results = await asyncio.gather(*(batch_get(http, url, keys) for _ in range(40)))
    done.set()
    await sampler
    statuses = [status for status, _, _ in results]
    grown = (peak - before) >> 20
    print(f"\n40 batchGets of ~6 MB: {statuses.count(200)} served, {statuses.count(429)} "
          f"refused; resident memory grew by {grown} MiB (budget {BUDGET >> 20} MiB)")  # fmt: skip
    assert grown < 3 * (BUDGET >> 20), f"resident memory grew by {grown} MiB"
    for status, headers, body in results:
        if status == 200:
            assert [item["value"] for item in body["items"]] == [f"{k}:{VALUE}" for k in keys]
        else:
            assert (status, body["error"]["code"]) == (429, "overloaded"), body
            assert headers["Retry-After"] == "1"
    assert statuses.count(200) >= 1, statuses
    assert statuses.count(429) >= 1, f"the budget was never reached: {statuses}"
    assert await gauge(http, url, "cachegrid_bytes_in_flight") == 0


async def test_a_client_that_never_reads_its_answer_is_cut_off_and_frees_it(
    fresh_cluster, http
) -> None:
    cluster, keys = await filled(fresh_cluster, http, 100)
    url = cluster.urls[0]
    parts = urlsplit(url)
    body = orjson.dumps({"keys": keys})
    request = (b"POST /v1/kv:batchGet HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
               b"Content-Length: %d\r\n\r\n%s" % (len(body), body))  # fmt: skip
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect((parts.hostname, parts.port))
    sock.sendall(request)
    try:
        await asyncio.sleep(0.5)
        held = await gauge(http, url, "cachegrid_bytes_in_flight")
        assert held > 5e6, f"the answer is not being sent ({held} bytes held)"
        async with http.get(f"{url}/v1/kv/{keys[0]}") as response:  # others are served
            assert response.status == 200
        for _ in range(60):  # write_timeout is 2 s per part
            await asyncio.sleep(0.1)
            if await gauge(http, url, "cachegrid_bytes_in_flight") == 0:
                break
        assert await gauge(http, url, "cachegrid_bytes_in_flight") == 0
        sock.setblocking(False)
        received = b""
        with contextlib.suppress(BlockingIOError):
            while chunk := sock.recv(1 << 20):
                received += chunk
        assert len(received) < len(VALUE) * 100, "the whole answer went out"
    finally:
        sock.close()
