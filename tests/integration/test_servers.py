"""The real-process fixtures themselves: etcd clusters, fsync policy, cleanup."""

import base64
import json
import os
import time
import urllib.request

import redis

from tests.processes import FaultyRedis


def etcd_put_get(url: str, key: str, value: str) -> bytes:
    """A write through one member and a linearizable read, via etcd's HTTP gateway."""

    def post(path: str, body: dict) -> bytes:
        request = urllib.request.Request(f"{url}{path}", data=json.dumps(body).encode())
        with urllib.request.urlopen(request, timeout=1) as response:
            return response.read()

    def encode(text: str) -> str:
        return base64.b64encode(text.encode()).decode()

    post("/v3/kv/put", {"key": encode(key), "value": encode(value)})
    return post("/v3/kv/range", {"key": encode(key)})


def test_a_three_member_etcd_cluster_survives_losing_one(etcd_servers) -> None:
    """After a member dies, the other two elect a leader and serve again (clients retry:
    a proposal that was in flight to a dead leader only times out)."""
    members = etcd_servers(3)
    members[0].kill()
    deadline = time.monotonic() + 20
    while True:
        try:
            reply = etcd_put_get(members[1].url, "k", "v")
            break
        except OSError:
            assert time.monotonic() < deadline, "the two surviving members never served"
    assert b'"count":"1"' in reply


def test_replicas_run_with_the_requested_fsync_policy(redis_servers) -> None:
    (everysec,) = redis_servers(1)
    (always,) = redis_servers(1, appendfsync="always")
    for server, policy in ((everysec, "everysec"), (always, "always")):
        with redis.Redis(host="127.0.0.1", port=server.port) as client:
            assert client.config_get("appendfsync") == {"appendfsync": policy}
            assert client.config_get("appendonly") == {"appendonly": "yes"}


def test_stop_reaps_even_a_paused_process(tmp_path, ports) -> None:
    server = FaultyRedis(tmp_path / "r", ports.take())
    server.start()
    pid = server.pid
    server.pause()
    server.stop()
    assert not server.running
    assert not os.path.exists(f"/proc/{pid}")
    server.stop()  # idempotent
