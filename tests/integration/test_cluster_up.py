"""`cachegrid up`: starts real processes, writes cluster.json, stops everything on a signal."""

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import orjson
import pytest
import redis

from cachegrid.devcluster.servers import PortAllocator, bindable


def free_base_port(ports: PortAllocator) -> int:
    for _ in range(50):
        base = ports.take()
        if base + 30 < 32768 and all(bindable(base + i) for i in range(30)):
            return base
    raise RuntimeError("no free run of 30 ports")


def wait_for(path: Path, proc: subprocess.Popen, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, "cachegrid up exited early"
        assert time.monotonic() < deadline, f"{path} not written in {timeout}s"
        time.sleep(0.1)


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


@pytest.mark.parametrize("stop_signal", [signal.SIGINT, signal.SIGTERM])
def test_up_starts_a_usable_cluster_and_stops_it_on_a_signal(
    tmp_path: Path, ports: PortAllocator, stop_signal: int
) -> None:
    data_dir = tmp_path / "cluster"
    base = free_base_port(ports)
    command = [sys.executable, "-m", "cachegrid", "up", "--replicas", "3", "--nodes", "2",
               "--data-dir", str(data_dir), "--base-port", str(base)]  # fmt: skip
    log = (tmp_path / "up.log").open("wb")
    proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for(data_dir / "cluster.json", proc, timeout=60)
        manifest = orjson.loads((data_dir / "cluster.json").read_bytes())
        assert set(manifest) == {"nodes", "redis", "etcd", "admin_token"}
        assert [r["addr"] for r in manifest["redis"]] == [
            f"127.0.0.1:{base + 10 + i}" for i in range(3)
        ]
        assert manifest["etcd"][0]["url"] == f"http://127.0.0.1:{base}"
        assert [(n["id"], n["url"]) for n in manifest["nodes"]] == [
            (f"node{i}", f"http://127.0.0.1:{base + 20 + i}") for i in range(2)
        ]
        for node in manifest["nodes"]:  # every node answers, as owner or by forwarding
            with urllib.request.urlopen(f"{node['url']}/v1/ring", timeout=5) as response:
                assert len(orjson.loads(response.read())["members"]) == 2
        for replica in manifest["redis"]:
            host, port = replica["addr"].split(":")
            with redis.Redis(host=host, port=int(port)) as client:
                assert client.config_get("appendonly") == {"appendonly": "yes"}
        assert "[store]" in (data_dir / "cachegrid.toml").read_text()
        pids = [p["pid"] for p in manifest["redis"] + manifest["etcd"] + manifest["nodes"]]
        proc.send_signal(stop_signal)
        assert proc.wait(30) == 0
        assert all(gone(pid) for pid in pids)
        assert not (data_dir / "cluster.json").exists()
        assert b"cluster stopped" in (tmp_path / "up.log").read_bytes()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()


def test_up_refuses_ports_in_use(tmp_path: Path, ports: PortAllocator) -> None:
    base = free_base_port(ports)
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", base + 10))
        squatter.listen()
        result = subprocess.run(
            [sys.executable, "-m", "cachegrid", "up", "--data-dir", str(tmp_path),
             "--base-port", str(base)],
            capture_output=True, text=True, timeout=30, check=False,
        )  # fmt: skip
    assert result.returncode != 0
    assert f"ports already in use: [{base + 10}]" in result.stderr
