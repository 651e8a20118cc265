"""The admin API and operations, end to end on clusters of real processes."""

import asyncio
import io
import json
import random
import re
import subprocess
import sys

import orjson
import pytest

from cachegrid.ring import Ring
from cachegrid.store import QuorumStore, Record, Replica
from cachegrid.version import Version


async def call(http, method, url, *, json=None, token=None):
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    data = None
    if json is not None:
        data = orjson.dumps(json)
        headers["Content-Type"] = "application/json"
    async with http.request(method, url, data=data, headers=headers) as response:
        body = await response.read()
        try:
            parsed = orjson.loads(body) if body else None
        except orjson.JSONDecodeError:
            parsed = body.decode()
        return response.status, response.headers, parsed


async def load(http, urls, keys, stop: asyncio.Event, errors: list) -> int:
    """Reads and writes through ``urls`` until ``stop``; failures go to ``errors``."""
    rng = random.Random(3)
    done = 0
    while not stop.is_set():
        key = rng.choice(keys)
        url = f"{rng.choice(urls)}/v1/kv/{key}"
        if rng.random() < 0.2:
            status, _, body = await call(http, "PUT", url, json={"value": done})
            ok = status == 200
        else:
            status, _, body = await call(http, "GET", url)
            ok = status in (200, 404)
        if not ok:
            errors.append((status, body))
        done += 1
    return done


async def test_the_admin_api_needs_the_token(http, cluster) -> None:
    url = f"{cluster.urls[0]}/admin/status"
    assert (await call(http, "GET", url))[0] == 401
    assert (await call(http, "GET", url, token="wrong"))[0] == 401
    status, _, body = await call(http, "GET", url, token=cluster.admin_token)
    assert status == 200
    assert body["node_id"] == "node0"
    assert {"cache", "replicas", "lease_slack_seconds", "ring_epoch", "weights"} <= set(body)


async def test_admin_bodies_are_read_like_public_ones(http, cluster) -> None:
    """One JSON reader for every route: a wrong Content-Type is 415 here too (it was 400),
    malformed JSON 400, a body over the limit 413."""
    url = f"{cluster.urls[0]}/admin/flush"
    auth = {"Authorization": f"Bearer {cluster.admin_token}"}
    cases = [({"Content-Type": "text/plain"}, b'{"all": true}', 415, "unsupported_media_type"),
             ({"Content-Type": "application/json"}, b"{bad", 400, "bad_request"),
             ({"Content-Type": "application/json"}, b"[1]", 400, "bad_request"),
             ({"Content-Type": "application/json"}, b'{"all": true, "x": "' + b"y" * (2 << 20)
              + b'"}', 413, "too_large")]  # fmt: skip
    for headers, body, status, code in cases:
        async with http.post(url, data=io.BytesIO(body), headers={**auth, **headers}) as response:
            answer = orjson.loads(await response.read())
            assert (response.status, answer["error"]["code"]) == (status, code), answer


async def test_cluster_status_and_ring_shares(http, cluster) -> None:
    status, _, body = await call(http, "GET", f"{cluster.urls[1]}/admin/status?scope=cluster",
                                 token=cluster.admin_token)  # fmt: skip
    assert status == 200
    assert sorted(body["nodes"]) == ["node0", "node1", "node2"]
    assert all("error" not in s for s in body["nodes"].values())
    for node in body["nodes"].values():  # each replica's trust and repair, per node
        assert [r["trust"] for r in node["replicas"]] == ["trusted"] * 3
        assert all({"missed_writes", "repair"} <= set(r) for r in node["replicas"])
    _, _, ring = await call(http, "GET", f"{cluster.urls[0]}/admin/ring", token=cluster.admin_token)
    shares = [m["share"] for m in ring["members"]]
    assert abs(sum(shares) - 1) < 0.01
    assert all(0.2 < share < 0.5 for share in shares)


async def test_flush_all_prefix_and_keys_on_every_node(http, cluster) -> None:
    keys = [f"fl-a-{i}" for i in range(10)] + [f"fl-b-{i}" for i in range(10)]
    for key in keys:
        await call(http, "PUT", f"{cluster.urls[0]}/v1/kv/{key}", json={"value": key})

    async def cache_of(key):
        _, headers, body = await call(http, "GET", f"{cluster.urls[2]}/v1/kv/{key}")
        assert body["value"] == key  # a flush never loses data
        return headers["X-Cache"]

    token = cluster.admin_token
    status, _, result = await call(http, "POST", f"{cluster.urls[1]}/admin/flush",
                                   json={"prefix": "fl-a-"}, token=token)  # fmt: skip
    assert status == 200
    assert all(n["status"] == "applied" for n in result["nodes"].values()), result
    assert sum(n["flushed"] for n in result["nodes"].values()) == 10
    assert [await cache_of(k) for k in keys] == ["miss"] * 10 + ["hit"] * 10
    _, _, result = await call(http, "POST", f"{cluster.urls[1]}/admin/flush",
                              json={"keys": ["fl-b-1", "fl-b-2"]}, token=token)  # fmt: skip
    assert sum(n["flushed"] for n in result["nodes"].values()) == 2
    stop, errors = asyncio.Event(), []
    traffic = asyncio.create_task(load(http, cluster.urls, ["fl-load-1", "fl-load-2"], stop,
                                       errors))  # fmt: skip
    _, _, result = await call(http, "POST", f"{cluster.urls[1]}/admin/flush",
                              json={"all": True}, token=token)  # fmt: skip
    stop.set()
    await traffic
    assert errors == []  # a flush under load costs misses, never errors
    assert sorted(result["nodes"]) == ["node0", "node1", "node2"]
    assert await cache_of("fl-b-5") == "miss"
    assert (await call(http, "POST", f"{cluster.urls[1]}/admin/flush", json={}, token=token))[
        0
    ] == 400


@pytest.mark.slow
async def test_rebalance_under_light_load_moves_keys_without_client_errors(
    http, fresh_cluster
) -> None:
    cluster = fresh_cluster()
    keys = [f"rb-{i}" for i in range(50)]
    stop, errors = asyncio.Event(), []
    traffic = asyncio.create_task(load(http, cluster.urls, keys, stop, errors))
    await asyncio.sleep(0.5)
    status, _, result = await call(
        http,
        "POST",
        f"{cluster.urls[2]}/admin/rebalance",
        json={"weights": {"node0": 3}},
        token=cluster.admin_token,
    )
    assert status == 200, result
    assert all(n["status"] == "applied" for n in result["nodes"].values()), result
    await asyncio.sleep(0.5)
    stop.set()
    operations = await traffic
    _, _, ring = await call(http, "GET", f"{cluster.urls[1]}/admin/ring", token=cluster.admin_token)
    share = {m["id"]: m["share"] for m in ring["members"]}
    assert 0.45 < share["node0"] < 0.75  # 3 of 5 weight units
    assert operations > 20
    assert errors == []


@pytest.mark.slow
async def test_drain_then_stop_a_node_with_zero_client_errors(http, fresh_cluster) -> None:
    cluster = fresh_cluster()
    keys = [f"dr-{i}" for i in range(50)]
    for key in keys:
        await call(http, "PUT", f"{cluster.urls[0]}/v1/kv/{key}", json={"value": key})
    stop, errors = asyncio.Event(), []
    traffic = asyncio.create_task(load(http, cluster.urls[:2], keys, stop, errors))
    status, _, result = await call(
        http,
        "POST",
        f"{cluster.urls[0]}/admin/drain",
        json={"node": "node2"},
        token=cluster.admin_token,
    )
    assert status == 200, result
    assert all(n["status"] == "applied" for n in result["nodes"].values()), result
    cluster.nodes[2].stop()  # graceful: it owns nothing any more
    await asyncio.sleep(1.0)
    stop.set()
    await traffic
    assert errors == []
    for key in keys[:10]:
        status, headers, _ = await call(http, "GET", f"{cluster.urls[1]}/v1/kv/{key}")
        assert status == 200
        assert headers["X-Cachegrid-Node"] in ("node0", "node1")


async def test_repair_copies_to_a_replica_restarted_empty(http, fresh_cluster) -> None:
    cluster = fresh_cluster()
    cluster.redis[2].kill()
    for i in range(30):
        await call(http, "PUT", f"{cluster.urls[i % 3]}/v1/kv/rp-{i}", json={"value": i})
    cluster.redis[2].wipe()
    cluster.redis[2].start()
    status, _, report = await call(http, "POST", f"{cluster.urls[0]}/admin/repair",
                                   token=cluster.admin_token)  # fmt: skip
    assert status == 200
    assert report["unreachable"] == []
    # The nodes' own upkeep races the admin pass (it copies missed writes and repairs a
    # replica in doubt by itself), so the copies may be written by either: what must hold
    # is that the wiped replica has every record afterwards.
    assert report["keys_checked"] >= 30
    alone = Replica(cluster.redis[2].endpoint, timeout=1)
    held = await alone.read([f"rp-{i}" for i in range(30)])
    await alone.close()
    assert all(record is not None for record in held), held


async def test_metrics_and_the_inconsistency_detector(http, fresh_cluster) -> None:
    """The detector must see a stale hit when one exists: here a newer record is slipped
    into the store behind the owner's back, as a consistency bug would leave it."""
    cluster = fresh_cluster(node_config="stale_check_every = 1\n")
    url = cluster.urls[0]
    _, headers, _ = await call(http, "PUT", f"{url}/v1/kv/watched", json={"value": 1})
    owner = cluster.urls[int(headers["X-Cachegrid-Node"][-1])]
    for _ in range(5):
        await call(http, "GET", f"{owner}/v1/kv/watched")
    _, _, text = await call(http, "GET", f"{owner}/metrics")
    assert "cachegrid_stale_hits_total 0.0" in text
    assert 'cachegrid_cache_lookups_total{result="hit"}' in text
    assert "cachegrid_request_seconds_bucket" in text
    store = QuorumStore([Replica(r.endpoint, timeout=1) for r in cluster.redis], timeout=1)
    await store.write("watched", Record(Version(2**40, 1), False, b"2"))
    await store.close()
    for _ in range(5):
        await call(http, "GET", f"{owner}/v1/kv/watched")
        await asyncio.sleep(0.05)
    _, _, text = await call(http, "GET", f"{owner}/metrics")
    assert "cachegrid_stale_hits_total 0.0" not in text


def test_the_admin_cli_prints_tables_json_and_clear_errors(cluster) -> None:
    base = [sys.executable, "-m", "cachegrid", "admin", "--url", cluster.urls[0]]
    run = lambda *args: subprocess.run(  # noqa: E731
        [*base, *args], capture_output=True, text=True, timeout=60, check=False
    )
    status = run("--token", cluster.admin_token, "status")
    assert status.returncode == 0, status.stderr
    assert [line.split()[0] for line in status.stdout.splitlines()[1:]] == [
        "node0", "node1", "node2",
    ]  # fmt: skip
    ring = run("--token", cluster.admin_token, "--json", "ring")
    assert len(json.loads(ring.stdout)["members"]) == 3
    denied = run("--token", "wrong", "status")
    assert denied.returncode == 1
    assert "HTTP 401" in denied.stderr
    usage = run("--token", cluster.admin_token, "flush")
    assert usage.returncode == 2
    assert "exactly one of --all, --prefix, --key" in usage.stderr
    after = run("--token", cluster.admin_token, "ring", "--json")  # --json after the command
    assert len(json.loads(after.stdout)["members"]) == 3
    bare = subprocess.run(  # host:port is enough
        [sys.executable, "-m", "cachegrid", "admin", "--url",
         cluster.urls[0].removeprefix("http://"), "--token", cluster.admin_token, "ring"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert bare.returncode == 0, bare.stderr


async def test_a_rebalance_that_leaves_no_weight_is_refused_and_changes_nothing(
    http, cluster
) -> None:
    url = f"{cluster.urls[0]}/admin/rebalance"
    everyone = {"weights": {"node0": 0, "node1": 0, "node2": 0}}
    status, _, body = await call(http, "POST", url, json=everyone, token=cluster.admin_token)
    assert (status, body["error"]["code"]) == (400, "bad_request"), body
    assert "no live node would keep a weight" in body["error"]["message"]
    _, _, ring = await call(http, "GET", f"{cluster.urls[0]}/admin/ring",
                            token=cluster.admin_token)  # fmt: skip
    assert all(member["weight"] > 0 for member in ring["members"]), ring
    status, _, body = await call(http, "POST", url, json={**everyone, "force": "yes"},
                                 token=cluster.admin_token)  # fmt: skip
    assert (status, body["error"]["code"]) == (400, "bad_request")


async def test_without_a_token_the_admin_api_is_closed(http, fresh_cluster, monkeypatch) -> None:
    monkeypatch.setenv("CACHEGRID_NODE_ADMIN_TOKEN", "")  # overrides the file's token
    cluster = fresh_cluster(nodes=1)
    for token in (None, "", cluster.admin_token):
        status, _, body = await call(http, "GET", f"{cluster.urls[0]}/admin/status", token=token)
        assert (status, body["error"]["code"]) == (403, "forbidden")
    assert (await call(http, "GET", f"{cluster.urls[0]}/v1/ring"))[0] == 200


def test_drain_then_undrain_through_the_cli(cluster) -> None:
    base = [sys.executable, "-m", "cachegrid", "admin", "--url", cluster.urls[0],
            "--token", cluster.admin_token]  # fmt: skip

    def weights() -> dict[str, int]:
        ring = subprocess.run([*base, "ring", "--json"], capture_output=True, text=True,
                              timeout=60, check=True)  # fmt: skip
        return {m["id"]: m["weight"] for m in json.loads(ring.stdout)["members"]}

    def states() -> dict[str, str]:
        """The state column of the status table; its cache column is human-readable."""
        table = subprocess.run([*base, "status"], capture_output=True, text=True, timeout=60,
                               check=True).stdout.splitlines()  # fmt: skip
        assert all(re.search(r"\d+(\.\d)? (B|KiB|MiB) of 256\.0 MiB", row) for row in table[1:])
        return {row.split()[0]: row.split()[1] for row in table[1:]}

    drained = subprocess.run([*base, "drain", "node2", "--json"], capture_output=True,
                             text=True, timeout=60, check=False)  # fmt: skip
    assert drained.returncode == 0, drained.stderr
    assert all(n["status"] == "applied" for n in json.loads(drained.stdout)["nodes"].values())
    assert weights()["node2"] == 0
    assert states() == {"node0": "serving", "node1": "serving", "node2": "drained"}
    back = subprocess.run([*base, "undrain", "node2"], capture_output=True, text=True,
                          timeout=60, check=False)  # fmt: skip
    assert back.returncode == 0, back.stderr
    assert weights() == {"node0": 1, "node1": 1, "node2": 1}
    assert states() == {"node0": "serving", "node1": "serving", "node2": "serving"}


async def test_a_node_that_is_gone_shows_as_down_until_forgotten(fresh_cluster, http) -> None:
    """Status does not drop a node whose lease is gone: it shows it as down (it registered
    once) until an operator forgets it; a live node cannot be forgotten."""
    cluster = await asyncio.to_thread(fresh_cluster)
    token = cluster.admin_token
    url = f"{cluster.urls[0]}/admin/status?scope=cluster"
    cluster.nodes[2].kill()
    nodes: dict = {}
    for _ in range(100):  # until its lease expires (TTL 2 s)
        _, _, body = await call(http, "GET", url, token=token)
        nodes = body["nodes"]
        if nodes["node2"].get("state") == "down":
            break
        await asyncio.sleep(0.1)
    assert nodes["node2"] == {"state": "down", "addr": cluster.nodes[2].endpoint}
    assert "cache" in nodes["node0"]
    status, _, body = await call(http, "POST", f"{cluster.urls[0]}/admin/forget",
                                 json={"node": "node1"}, token=token)  # fmt: skip
    assert status == 400
    assert "live" in body["error"]["message"]
    status, _, body = await call(http, "POST", f"{cluster.urls[0]}/admin/forget",
                                 json={"node": "node2"}, token=token)  # fmt: skip
    assert (status, body) == (200, {"forgotten": "node2"})
    _, _, body = await call(http, "GET", url, token=token)
    assert sorted(body["nodes"]) == ["node0", "node1"]


async def test_hot_keys_are_listed_per_node_by_reads_and_writes(http, fresh_cluster) -> None:
    """GET /admin/hotkeys and `cachegrid admin hotkeys`: the keys clients read and wrote
    most through each node, counted where the client sent them (a forward, the hit lane's
    over a pipelined connection too, is not counted again at the owner)."""
    cluster = await asyncio.to_thread(fresh_cluster)
    node0, node1 = cluster.urls[0], cluster.urls[1]
    for i in range(30):
        await call(http, "PUT", f"{node0}/v1/kv/written-{i % 3}", json={"value": i})
    for i in range(200):
        await call(http, "GET", f"{node1}/v1/kv/{'popular' if i % 4 else f'rare-{i}'}")
    status, _, body = await call(http, "GET", f"{node1}/admin/hotkeys?limit=3",
                                 token=cluster.admin_token)  # fmt: skip
    assert status == 200, body
    assert body["reads"]["keys"][0] == {
        "key": "popular", "count": 150, "error": 0,
        "per_second": body["reads"]["keys"][0]["per_second"],
    }  # fmt: skip
    assert len(body["reads"]["keys"]) == 3
    assert body["writes"]["keys"] == []
    status, _, both = await call(http, "GET", f"{node0}/admin/hotkeys?scope=cluster",
                                 token=cluster.admin_token)  # fmt: skip
    written = both["nodes"]["node0"]["writes"]["keys"]
    assert sorted((e["key"], e["count"]) for e in written) == [
        ("written-0", 10), ("written-1", 10), ("written-2", 10),
    ]  # fmt: skip
    owners = [n for n in ("node1", "node2") if both["nodes"][n]["writes"]["keys"]]
    assert owners == [], "a forwarded write was counted again at its owner"
    readers = [n for n in ("node0", "node2") if both["nodes"][n]["reads"]["keys"]]
    assert readers == [], "a forwarded read was counted again at its owner"
    bad, _, error = await call(http, "GET", f"{node0}/admin/hotkeys?limit=0",
                               token=cluster.admin_token)  # fmt: skip
    assert (bad, error["error"]["code"]) == (400, "bad_request")
    table = await asyncio.to_thread(subprocess.run, [
        sys.executable, "-m", "cachegrid", "admin", "--url", node0, "--token",
        cluster.admin_token, "hotkeys", "--limit", "1"], capture_output=True, text=True,
        timeout=60, check=True)  # fmt: skip
    assert re.search(r"^reads\s+popular\s+150\s", table.stdout, re.M), table.stdout
    # Hits at the owner of GETs the lane forwarded over a pipelined connection: counted at
    # node1 only.
    status, _, ring = await call(http, "GET", f"{node0}/v1/ring")
    key = next(k for k in (f"lane-read-{i}" for i in range(100))
               if Ring.from_description(ring).owner(k) == "node0")  # fmt: skip
    await call(http, "PUT", f"{node0}/v1/kv/{key}", json={"value": 1})
    for _ in range(5):
        assert (await call(http, "GET", f"{node1}/v1/kv/{key}"))[0] == 200
    _, _, body = await call(http, "GET", f"{node0}/admin/hotkeys", token=cluster.admin_token)
    assert key not in [entry["key"] for entry in body["reads"]["keys"]]
