"""The public HTTP API end to end, against a cluster of real processes (DESIGN.md §7)."""

import asyncio
import random
import re
import socket
from typing import Any
from urllib.parse import quote

import orjson
import pytest
import redis

from cachegrid.ring import Ring
from cachegrid.store import QuorumStore, Record, Replica
from cachegrid.version import Version


async def call(http, method, url, *, json=None, data=None, headers=None):
    """(status, headers, parsed JSON body) of one request."""
    sent = dict(headers or {})
    if json is not None:
        data = orjson.dumps(json)
        sent.setdefault("Content-Type", "application/json")
    async with http.request(method, url, data=data, headers=sent) as response:
        body = await response.read()
        return response.status, response.headers, orjson.loads(body) if body else None


async def ring_of(http, cluster) -> Ring:
    _, _, body = await call(http, "GET", f"{cluster.urls[0]}/v1/ring")
    return Ring.from_description(body)


async def test_every_node_reads_what_any_node_wrote(http, cluster) -> None:
    ring = await ring_of(http, cluster)
    for i, writer in enumerate(cluster.urls):
        key = f"ryw-{i}"
        status, headers, body = await call(http, "PUT", f"{writer}/v1/kv/{key}",
                                           json={"value": {"n": i, "s": "ü"}})  # fmt: skip
        assert status == 200
        version = body["version"]
        assert headers["ETag"] == f'"{version}"'
        assert headers["X-Cachegrid-Node"] == ring.owner(key)
        for reader in cluster.urls:
            status, headers, body = await call(http, "GET", f"{reader}/v1/kv/{key}")
            assert status == 200
            assert body == {"key": key, "value": {"n": i, "s": "ü"}, "version": version}
            assert headers["X-Cachegrid-Node"] == ring.owner(key)
            assert headers["X-Cache"] == "hit"  # the write put it in the owner's cache


async def test_a_key_only_in_the_store_is_a_miss_then_a_hit(http, cluster) -> None:
    store = QuorumStore([Replica(r.endpoint, timeout=1) for r in cluster.redis], timeout=1)
    await store.write("only-in-store", Record(Version(1, 1), False, b'"from the store"'))
    await store.close()
    url = f"{cluster.urls[0]}/v1/kv/only-in-store"
    first = await call(http, "GET", url)
    second = await call(http, "GET", url)
    assert (first[0], first[1]["X-Cache"], first[2]["value"]) == (200, "miss", "from the store")
    assert (second[0], second[1]["X-Cache"]) == (200, "hit")


async def test_delete_leaves_a_404_and_versions_keep_rising(http, cluster) -> None:
    url = f"{cluster.urls[1]}/v1/kv/deleted"
    _, _, put = await call(http, "PUT", url, json={"value": 1})
    status, _, deleted = await call(http, "DELETE", url)
    assert status == 200
    assert Version.parse(deleted["version"]) > Version.parse(put["version"])
    status, headers, body = await call(http, "GET", url)
    assert (status, body["error"]["code"]) == (404, "not_found")
    assert "X-Cachegrid-Node" in headers
    assert (await call(http, "DELETE", url))[0] == 404
    _, _, again = await call(http, "PUT", url, json={"value": 2})
    assert Version.parse(again["version"]) > Version.parse(deleted["version"])


async def test_conditional_writes(http, cluster) -> None:
    url = f"{cluster.urls[2]}/v1/kv/cond"
    absent = {"If-None-Match": "*"}
    assert (await call(http, "PUT", url, json={"value": 1}, headers=absent))[0] == 200
    status, _, body = await call(http, "PUT", url, json={"value": 2}, headers=absent)
    assert (status, body["error"]["code"]) == (412, "version_mismatch")
    _, headers, _ = await call(http, "GET", url)
    etag = headers["ETag"]
    assert (await call(http, "PUT", url, json={"value": 3}, headers={"If-Match": etag}))[0] == 200
    assert (await call(http, "PUT", url, json={"value": 4}, headers={"If-Match": etag}))[0] == 412
    assert (await call(http, "DELETE", url, headers={"If-Match": etag}))[0] == 412
    assert (await call(http, "PUT", url, json={"value": 5}, headers={"If-Match": "*"}))[0] == 200
    assert (await call(http, "DELETE", url, headers={"If-Match": "*"}))[0] == 200
    assert (await call(http, "PUT", url, json={"value": 6}, headers={"If-Match": "*"}))[0] == 412
    _, _, body = await call(http, "GET", url)
    assert body["error"]["code"] == "not_found"  # no failed write left a trace


async def test_cas_races_admit_exactly_one_winner_per_version(http, cluster) -> None:
    """20 clients increment one counter with If-Match through random nodes."""
    url_of = lambda base: f"{base}/v1/kv/counter"  # noqa: E731
    await call(http, "PUT", url_of(cluster.urls[0]), json={"value": 0})
    wins: list[tuple[str, int]] = []  # (version read, value written)
    rng = random.Random(5)

    async def client() -> None:
        for _ in range(15):
            base = rng.choice(cluster.urls)
            _, headers, body = await call(http, "GET", url_of(base))
            status, _, _ = await call(http, "PUT", url_of(base), json={"value": body["value"] + 1},
                                      headers={"If-Match": headers["ETag"]})  # fmt: skip
            assert status in (200, 412)
            if status == 200:
                wins.append((body["version"], body["value"] + 1))

    await asyncio.gather(*(client() for _ in range(20)))
    _, _, final = await call(http, "GET", url_of(cluster.urls[1]))
    read_versions = [version for version, _ in wins]
    assert len(read_versions) == len(set(read_versions)), "two writers won on one version"
    assert final["value"] == len(wins)  # no increment lost, none applied twice
    assert sorted(value for _, value in wins) == list(range(1, len(wins) + 1))


BAD_REQUESTS = [
    # (method, path, headers, body, status, code)
    ("PUT", "/v1/kv/a", {"Content-Type": "text/plain"}, b"1", 415, "unsupported_media_type"),
    ("PUT", "/v1/kv/a", {"Content-Type": "application/json"}, b"{bad", 400, "bad_request"),
    ("PUT", "/v1/kv/a", {"Content-Type": "application/json"}, b"[1]", 400, "bad_request"),
    ("PUT", "/v1/kv/a", {"Content-Type": "application/json"}, b'{"v": 1}', 400, "bad_request"),
    ("PUT", "/v1/kv/a", {"Content-Type": "application/json"}, b"", 400, "bad_request"),
    ("PUT", "/v1/kv/a", {"Content-Type": "application/json", "If-Match": "12.3"},
     b'{"value": 1}', 400, "bad_request"),
    ("PUT", "/v1/kv/a", {"Content-Type": "application/json", "If-Match": '"1.1",'},
     b'{"value": 1}', 400, "bad_request"),
    ("PUT", "/v1/kv/a", {"Content-Type": "application/json", "If-Match": '"1.1"x'},
     b'{"value": 1}', 400, "bad_request"),
    ("DELETE", "/v1/kv/a", {"If-None-Match": "W/"}, b"", 400, "bad_request"),
    ("GET", "/v1/kv/a", {"If-None-Match": '"a" "b"'}, b"", 400, "bad_request"),
    ("PUT", "/v1/kv/a", {"Content-Type": "application/json"},
     b'{"value": "' + b"x" * 70000 + b'"}', 413, "too_large"),
    ("PUT", "/v1/kv/a", {"Content-Type": "application/json"},
     b'{"value": "' + b"x" * 66000 + b'"}', 413, "too_large"),
    ("GET", "/v1/kv/" + "k" * 1025, {}, b"", 413, "too_large"),
    ("GET", "/v1/kv/a%01b", {}, b"", 400, "bad_request"),
    ("GET", "/v1/kv/a%FFb", {}, b"", 400, "bad_request"),  # not UTF-8 once decoded
    ("GET", "/v1/kv/a%0Ab", {}, b"", 400, "bad_request"),  # found by schemathesis: was a
    ("GET", "/v2/a%0Ab", {}, b"", 404, "not_found"),  # plain-text 404 (no route matched)
    ("DELETE", "/v1/kv/a%C3", {}, b"", 400, "bad_request"),
    ("PUT", "/v1/kv/a", {"Content-Type": "application/json"}, b'{"value": 1, "ttl": 5}', 400,
     "bad_request"),  # an unknown field is refused, not dropped
    ("GET", "/v1/kv/", {}, b"", 400, "bad_request"),
    ("GET", "/v1/kv/a", {"X-Cachegrid-Hops": "many"}, b"", 400, "bad_request"),
    ("PATCH", "/v1/kv/a", {}, b"", 405, "method_not_allowed"),
    ("GET", "/v1/kv:batchGet", {}, b"", 405, "method_not_allowed"),
    ("DELETE", "/v1/ring", {}, b"", 405, "method_not_allowed"),
    ("GET", "/v2/kv/a", {}, b"", 404, "not_found"),
    ("GET", "/", {}, b"", 404, "not_found"),
    ("POST", "/v1/kv:batchGet", {"Content-Type": "application/json"}, b'{"keys": "a"}', 400,
     "bad_request"),
    ("POST", "/v1/kv:batchGet", {"Content-Type": "application/json"}, b'{"keys": [1]}', 400,
     "bad_request"),
    ("POST", "/v1/kv:batchGet", {"Content-Type": "application/json"},
     orjson.dumps({"keys": [f"k{i}" for i in range(1001)]}), 413, "too_large"),
]  # fmt: skip


@pytest.mark.parametrize(("method", "path", "headers", "body", "status", "code"), BAD_REQUESTS)
async def test_bad_input_gets_a_json_error_and_changes_nothing(
    http, cluster, method, path, headers, body, status, code
) -> None:
    url = cluster.urls[0]
    await call(http, "PUT", f"{url}/v1/kv/a", json={"value": "before"})
    _, _, before = await call(http, "GET", f"{url}/v1/kv/a")
    stored = store_contents(cluster)
    got_status, got_headers, got = await call(http, method, f"{url}{path}", data=body,
                                              headers=headers)  # fmt: skip
    assert (got_status, got["error"]["code"]) == (status, code), got
    assert got_headers["Content-Type"].startswith("application/json")
    _, _, after = await call(http, "GET", f"{url}/v1/kv/a")
    assert after == before  # same value, same version: nothing was written
    # Nothing reached any replica either, for any key (a read that filled, wrote back or
    # repaired something for a key it should have refused would show here).
    assert store_contents(cluster) == stored


async def test_conditional_requests_follow_rfc_9110(http, cluster) -> None:
    """Versions are opaque entity tags (RFC 9110 §13): a well-formed tag that is not
    current fails (412), never 400; If-Match compares strongly, If-None-Match weakly; a GET
    answers 304 when If-None-Match matches, through the owner and through a forward."""
    ring = await ring_of(http, cluster)
    key = next(k for k in (f"cond-{i}" for i in range(100)) if ring.owner(k) == "node0")
    owner, other = cluster.urls[0], cluster.urls[1]
    url = f"{owner}/v1/kv/{key}"
    status, _, body = await call(http, "PUT", url, json={"value": 1})
    v1 = body["version"]

    async def put(headers, value=2):
        return await call(http, "PUT", url, json={"value": value}, headers=headers)

    for tag in ('"1.01"', f'W/"{v1}"', '"not-a-version"'):
        status, _, body = await put({"If-Match": tag})
        assert (status, body["error"]["code"]) == (412, "version_mismatch"), (tag, body)
    status, _, body = await put({"If-Match": f'"0.1", "{v1}"'})  # a list: one matches
    assert status == 200, body
    v2 = body["version"]
    status, _, body = await call(http, "PUT", f"{owner}/v1/kv/{key}-absent", json={"value": 1},
                                 headers={"If-Match": f'"{v2}"'})  # fmt: skip
    assert status == 412
    assert "does not exist" in body["error"]["message"]
    assert (await put({"If-None-Match": f'"{v2}"'}))[0] == 412
    assert (await put({"If-Match": f'"{v2}"', "If-None-Match": f'W/"{v2}"'}))[0] == 412
    delete = await call(http, "DELETE", f"{owner}/v1/kv/{key}", headers={"If-None-Match": "*"})
    assert delete[0] == 412

    for base in (owner, other):  # answered by the owner, and by a node that forwards
        read = f"{base}/v1/kv/{key}"
        for tag in (f'"{v2}"', f'W/"{v2}"', f'"x", "{v2}"', "*"):
            async with http.get(read, headers={"If-None-Match": tag}) as response:
                assert response.status == 304, (base, tag)
                assert response.headers["ETag"] == f'"{v2}"'
                assert response.headers["X-Cachegrid-Node"] == "node0"
                assert await response.read() == b""
        status, _, body = await call(http, "GET", read, headers={"If-None-Match": '"x"'})
        assert (status, body["value"]) == (200, 2)
        assert (await call(http, "GET", read, headers={"If-Match": '"x"'}))[0] == 412
        assert (await call(http, "GET", read, headers={"If-Match": f'"{v2}"'}))[0] == 200
        missing = f"{base}/v1/kv/{key}-absent"
        assert (await call(http, "GET", missing, headers={"If-None-Match": "*"}))[0] == 404
        assert (await call(http, "GET", missing, headers={"If-Match": "*"}))[0] == 412
        async with http.head(read) as response:
            assert response.status == 200
            assert response.headers["ETag"] == f'"{v2}"'
            assert await response.read() == b""
        async with http.head(missing) as response:
            assert response.status == 404


async def test_a_bad_key_in_a_batch_is_named(http, cluster) -> None:
    status, _, body = await call(http, "POST", f"{cluster.urls[0]}/v1/kv:batchGet",
                                 json={"keys": ["fine", "also-fine", ""]})  # fmt: skip
    assert (status, body["error"]["code"]) == (400, "bad_request")
    assert body["error"]["message"].startswith("keys[2] ''"), body


async def test_keys_with_odd_bytes_survive_forwarding(http, cluster) -> None:
    """Written through a node that forwards, read through every node: the key is exactly
    the one the client encoded, with "?", "#", "%", "/" and non-ASCII in it."""
    ring = await ring_of(http, cluster)
    for key in ("a?b", "sp ace", "pct%FF", "é/ü", "hash#tag", "plus+sign"):
        owner = ring.owner(key)
        via = next(u for u, n in zip(cluster.urls, ("node0", "node1", "node2"), strict=True)
                   if n != owner)  # fmt: skip
        path = f"/v1/kv/{quote(key, safe='')}"
        status, _, body = await call(http, "PUT", f"{via}{path}", json={"value": key})
        assert status == 200, (key, body)
        assert body["key"] == key
        for url in cluster.urls:
            status, _, body = await call(http, "GET", f"{url}{path}")
            assert (status, body["key"], body["value"]) == (200, key, key), (key, url, body)


def store_contents(cluster) -> list[dict[bytes, dict[bytes, bytes]]]:
    """Every record of every replica (not the store's own metadata)."""
    contents = []
    for server in cluster.redis:
        replica = redis.Redis(port=server.port)
        try:
            contents.append({key: replica.hgetall(key) for key in replica.scan_iter()
                             if not key.startswith(b"cg-meta:")})  # fmt: skip
        finally:
            replica.close()
    return contents


async def test_a_body_over_the_limit_is_refused_before_it_is_read(http, cluster) -> None:
    """413 on the Content-Length alone, and for a chunked body as soon as it passes."""
    url = f"{cluster.urls[0]}/v1/kv/big"

    async def endless():
        yield b'{"value": "'
        for _ in range(200):
            yield b"x" * 65536

    status, _, body = await call(http, "PUT", url, data=endless(),
                                 headers={"Content-Type": "application/json"})  # fmt: skip
    assert (status, body["error"]["code"]) == (413, "too_large")


async def test_batch_get_spans_owners_and_reports_per_key(http, cluster) -> None:
    keys = [f"batch-{i}" for i in range(30)]
    for key in keys[:20]:
        await call(http, "PUT", f"{cluster.urls[1]}/v1/kv/{key}", json={"value": key.upper()})
    status, _, body = await call(http, "POST", f"{cluster.urls[2]}/v1/kv:batchGet",
                                 json={"keys": [*keys, keys[0]]})  # fmt: skip
    assert status == 200
    items = body["items"]
    assert [item["key"] for item in items] == [*keys, keys[0]]
    assert all(item["value"] == item["key"].upper() for item in items[:20])
    assert all(item["error"]["code"] == "not_found" for item in items[20:30])
    assert items[30] == items[0]


async def test_ring_and_health(http, cluster) -> None:
    rings = [(await call(http, "GET", f"{url}/v1/ring"))[2] for url in cluster.urls]
    assert all(ring == rings[0] for ring in rings)
    assert [m["id"] for m in rings[0]["members"]] == ["node0", "node1", "node2"]
    assert rings[0]["vnodes"] == 128
    for url in cluster.urls:
        assert (await call(http, "GET", f"{url}/healthz"))[0] == 200
        status, _, ready = await call(http, "GET", f"{url}/readyz")
        assert status == 200
        assert ready["activated_epoch"] is not None


async def test_the_hop_limit_stops_forwarding_loops(http, cluster) -> None:
    ring = await ring_of(http, cluster)
    key = next(f"hop-{i}" for i in range(100) if ring.owner(f"hop-{i}") != "node0")
    status, headers, body = await call(http, "GET", f"{cluster.urls[0]}/v1/kv/{key}",
                                       headers={"X-Cachegrid-Hops": "2"})  # fmt: skip
    assert (status, body["error"]["code"]) == (503, "unavailable")
    assert headers["Retry-After"] == "1"


async def test_batch_get_with_detail_says_who_served_each_key_and_how(http, cluster) -> None:
    ring = await ring_of(http, cluster)
    await call(http, "PUT", f"{cluster.urls[0]}/v1/kv/detail-a", json={"value": 1})
    detailed = {"keys": ["detail-a", "detail-none"], "detail": True}
    status, _, body = await call(http, "POST", f"{cluster.urls[1]}/v1/kv:batchGet", json=detailed)
    assert status == 200
    found, missing = body["items"]
    assert (found["value"], found["cache"], found["node"]) == (1, "hit", ring.owner("detail-a"))
    assert missing["error"]["code"] == "not_found"
    assert missing["node"] == ring.owner("detail-none")
    plain = (await call(http, "POST", f"{cluster.urls[1]}/v1/kv:batchGet",
                        json={"keys": ["detail-a"]}))[2]  # fmt: skip
    assert set(plain["items"][0]) == {"key", "value", "version"}  # no detail unless asked
    bad = await call(http, "POST", f"{cluster.urls[1]}/v1/kv:batchGet",
                     json={"keys": ["detail-a"], "detail": "yes"})  # fmt: skip
    assert (bad[0], bad[2]["error"]["code"]) == (400, "bad_request")


async def metric(http, url: str, name: str, label: str = "") -> float:
    """The sum of the series of ``name`` (with ``label`` in them) on the node at ``url``."""
    async with http.get(f"{url}/metrics") as response:
        page = await response.text()
    return sum(float(line.split()[-1]) for line in page.splitlines()
               if line.startswith(name) and label in line)  # fmt: skip


@pytest.mark.parametrize("path", ["lane", "route"])
async def test_forwarded_gets_share_their_way_and_answer_as_the_owner_would(
        http, cluster, path) -> None:  # fmt: skip
    """GETs forwarded to one owner share their way there: plain ones (the hit lane's) a few
    persistent pipelined connections, the others (here: each with a request id) batches;
    each answer is the one the owner gives directly: body, status, ETag, X-Cache and the
    serving node, plus this node's epoch."""
    ring = await ring_of(http, cluster)
    owner_url, via = cluster.urls[0], cluster.urls[1]
    keys = [k for k in (f"fwd-{path}-{i}" for i in range(900)) if ring.owner(k) == "node0"][:150]
    for key in keys[:100]:  # the last 50 are never written: 404s
        await call(http, "PUT", f"{owner_url}/v1/kv/{key}", json={"value": {"k": key}})
    batches = (http, owner_url, "cachegrid_responses_total", 'route="POST /v1/kv:batchGet"')

    def headers(key: str) -> dict[str, str]:
        return {"X-Request-Id": f"t-{key}"} if path == "route" else {}

    at_once = asyncio.Semaphore(32)  # (within the pipes' 8 x 8: past it, GETs take batches)

    async def get(key: str) -> tuple[int, Any, Any]:
        async with at_once:
            return await call(http, "GET", f"{via}/v1/kv/{key}", headers=headers(key))

    before = await metric(*batches)
    forwarded = await asyncio.gather(*(get(k) for k in keys))
    sent = await metric(*batches) - before
    if path == "route":
        # Forwards that meet in one loop turn share a batch; how many meet depends on how
        # the requests arrive, so only sharing itself is required (a busy machine spreads
        # them).
        assert 1 <= sent < len(keys), f"{sent} batches for {len(keys)} forwarded GETs"
    else:
        assert sent == 0
        pipes = await metric(http, via, "cachegrid_peer_connections")
        assert 1 <= pipes <= 8 * (len(cluster.urls) - 1), pipes  # Pipes.per_peer per peer
        # Persistent: GETs one at a time reuse them, and open no more.
        for k in keys[:20]:
            await call(http, "GET", f"{via}/v1/kv/{k}")
        assert await metric(http, via, "cachegrid_peer_connections") == pipes
    for key, (status, got_headers, body) in zip(keys, forwarded, strict=True):
        direct_status, direct_headers, direct_body = await call(
            http, "GET", f"{owner_url}/v1/kv/{key}"
        )
        if status != 200:  # each error names its own request, in the body and the header
            assert got_headers["X-Request-Id"] == body["error"]["request_id"]
            assert body["error"].pop("request_id") != direct_body["error"].pop("request_id")
        assert (status, body) == (direct_status, direct_body)
        for name in ("ETag", "X-Cachegrid-Node", "Content-Type"):
            assert got_headers.get(name) == direct_headers.get(name), name
        assert got_headers["X-Cache"] in ("hit", "miss")
        assert got_headers["X-Cachegrid-Epoch"] == str(ring.epoch)


@pytest.mark.parametrize(("method", "path", "body", "setting"), [
    ("PUT", "/v1/kv/a", b'{"value": "' + b"x" * 66000 + b'"}', "store.max_value_bytes"),
    ("GET", "/v1/kv/" + "k" * 1025, b"", "store.max_key_bytes"),
    ("POST", "/v1/kv:batchGet", orjson.dumps({"keys": [f"k{i}" for i in range(1001)]}),
     "node.max_batch_keys"),
])  # fmt: skip
async def test_a_size_limit_names_its_setting(http, cluster, method, path, body,
                                              setting) -> None:  # fmt: skip
    """A 413 says which setting to raise (issue 14)."""
    headers = {"Content-Type": "application/json"} if body else {}
    status, _, got = await call(http, method, f"{cluster.urls[0]}{path}", data=body,
                                headers=headers)  # fmt: skip
    assert status == 413
    assert setting in got["error"]["message"], got


@pytest.mark.parametrize(("request_bytes", "status", "code"), [
    (b"GET /v1/kv/a HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 10_000 + b"\r\n\r\n", 431,
     "too_large"),
    (b"GET /v1/kv/" + b"k" * 10_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 431, "too_large"),
    (b"GET /v1/kv/a HTTP/1.1\r\nHost: x\r\nNo colon here\r\n\r\n", 400, "bad_request"),
    (b"GET /v1/kv/a HTTP/9.9\r\nHost: x\r\n\r\n", 400, "bad_request"),
    (b"PUT /v1/kv/a HTTP/1.1\r\nHost: x\r\nContent-Length: x\r\n\r\n", 400, "bad_request"),
])  # fmt: skip
def test_a_request_that_cannot_be_parsed_gets_a_json_error(cluster, request_bytes, status,
                                                           code) -> None:  # fmt: skip
    """Before any route runs, aiohttp refuses what it cannot parse: in the contract's JSON,
    with the connection closed, never plain text (found in session 6: it was)."""
    host, _, port = cluster.urls[0].removeprefix("http://").rpartition(":")
    with socket.create_connection((host, int(port)), timeout=5) as conn:
        conn.sendall(request_bytes)
        answer = b""
        while chunk := conn.recv(65536):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    assert re.match(rb"HTTP/1\.[01] %d " % status, head), answer
    assert b"Content-Type: application/json" in head, head
    error = orjson.loads(body)["error"]
    assert error["code"] == code, error
    assert error["request_id"]


async def test_a_forward_names_the_key_checked_not_the_clients_raw_path(http, cluster) -> None:
    """A client's dot segments ("a/../b") are part of its key; forwarded to the owner, the
    write must reach that key, not the path they resolve to (found by the secure-mode
    review of session 6: the raw path was forwarded, and the client library resolved it)."""
    ring = await ring_of(http, cluster)
    tricky = next(k for k in (f"dots-{i}/../b{i}" for i in range(200))
                  if ring.owner(k) != "node0")  # fmt: skip
    resolved = tricky.rpartition("/")[2]  # what "dots-i/../bi" resolves to
    host, _, port = cluster.urls[0].removeprefix("http://").rpartition(":")
    body = b'{"value": "tricky"}'
    with socket.create_connection((host, int(port)), timeout=5) as conn:
        conn.sendall(b"PUT /v1/kv/%s HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: %d\r\nConnection: close\r\n\r\n%s"
                     % (tricky.encode(), len(body), body))  # fmt: skip
        answer = b""
        while chunk := conn.recv(65536):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 200"), answer
    status, _, got = await call(http, "GET", f"{cluster.urls[0]}/v1/kv/{quote(tricky, safe='')}")
    assert (status, got["value"]) == (200, "tricky"), got
    status, _, _ = await call(http, "GET", f"{cluster.urls[0]}/v1/kv/{resolved}")
    assert status == 404  # nothing was written there
