"""``cachegrid kv`` against a real cluster: answers, --json anywhere, exit codes."""

import json
import subprocess
import sys

import pytest


def kv(cluster, *args: str, url: str | None = None) -> subprocess.CompletedProcess[str]:
    where = url or cluster.urls[1].removeprefix("http://")  # without a scheme: allowed
    return subprocess.run([sys.executable, "-m", "cachegrid", "kv", "--url", where, *args],
                          capture_output=True, text=True, timeout=60)  # fmt: skip


def test_put_get_delete_and_their_exit_codes(cluster) -> None:
    put = kv(cluster, "put", "cli-a", '{"n": 1}')
    assert put.returncode == 0, put.stderr
    version = put.stdout.strip()
    got = kv(cluster, "get", "cli-a")
    assert (got.returncode, json.loads(got.stdout)) == (0, {"n": 1})
    whole = kv(cluster, "get", "cli-a", "--json")  # --json after the command
    assert json.loads(whole.stdout) == {"key": "cli-a", "value": {"n": 1}, "version": version}
    assert json.loads(kv(cluster, "--json", "get", "cli-a").stdout)["version"] == version
    assert kv(cluster, "put", "cli-a", "2", "--if-absent").returncode == 2
    assert kv(cluster, "put", "cli-a", "2", "--if-match", "0.1").returncode == 2
    assert kv(cluster, "put", "cli-a", "2", "--if-match", version).returncode == 0
    assert kv(cluster, "put", "cli-a", "{not json").returncode == 4
    assert kv(cluster, "delete", "cli-a").returncode == 0
    missing = kv(cluster, "get", "cli-a")
    assert (missing.returncode, missing.stdout) == (1, "")
    assert "not found" in missing.stderr
    assert kv(cluster, "delete", "cli-a").returncode == 1


def test_batch_get_as_json_and_as_a_table(cluster) -> None:
    assert kv(cluster, "put", "cli-b1", '"one"').returncode == 0
    both = kv(cluster, "batch-get", "cli-b1", "cli-b2")
    assert both.returncode == 1  # one of them does not exist
    assert json.loads(both.stdout) == {"cli-b1": "one", "cli-b2": None}
    rows = kv(cluster, "batch-get", "cli-b1", "-w", "table").stdout.splitlines()
    assert rows[0].split() == ["key", "version", "value"]
    assert rows[1].split()[0] == "cli-b1"
    assert rows[1].split()[2] == '"one"'


@pytest.mark.parametrize("url", ["127.0.0.1:1", "http://127.0.0.1:1"])
def test_an_unreachable_cluster_is_exit_code_3_with_a_message(cluster, url: str) -> None:
    result = kv(cluster, "get", "k", url=url)
    assert result.returncode == 3
    assert "Error" in result.stderr
    assert "Traceback" not in result.stderr
