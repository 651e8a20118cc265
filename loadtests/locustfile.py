"""Locust load kit for a cachegrid cluster (started with `make up` / `cachegrid up`).

Users spread over every node listed in cluster.json, and key popularity follows a Zipf law
(a few hot keys, a long tail), as metadata lookups do:

- ``MetadataReader``: read-heavy lookups (GET), the bulk of a metadata service's traffic;
- ``ConditionalWriter``: read-modify-write with If-Match; a 412 (someone else won the race)
  is a normal outcome and counts as a success;
- ``MixedUser``: 90% reads, 10% writes.

Headless, bounded in time (the README has the command):

    .venv/bin/locust -f loadtests/locustfile.py --headless -u 50 -r 10 -t 60s \\
        --cluster .cluster/cluster.json
"""

from __future__ import annotations

import bisect
import itertools
import json
import random
from typing import Any

from locust import FastHttpUser, between, events, task

KEYS = 10_000
ZIPF_S = 1.1
_CUMULATIVE = list(itertools.accumulate(1 / (rank**ZIPF_S) for rank in range(1, KEYS + 1)))
_NODES: list[str] = []


@events.init_command_line_parser.add_listener
def _options(parser: Any) -> None:
    parser.add_argument("--cluster", default=".cluster/cluster.json",
                        help="cluster.json written by cachegrid up")  # fmt: skip


@events.init.add_listener
def _load_cluster(environment: Any, **_: Any) -> None:
    with open(environment.parsed_options.cluster) as file:
        _NODES[:] = [node["url"] for node in json.load(file)["nodes"]]
    if not _NODES:
        raise SystemExit(f"{environment.parsed_options.cluster} lists no node")


def zipf_key() -> str:
    rank = bisect.bisect_left(_CUMULATIVE, random.random() * _CUMULATIVE[-1])
    return f"meta:{rank}"


class _CachegridUser(FastHttpUser):
    abstract = True
    host = "http://127.0.0.1"  # every request names its node URL in full

    def on_start(self) -> None:
        self.node = random.choice(_NODES)

    def read(self) -> None:
        with self.client.get(f"{self.node}/v1/kv/{zipf_key()}", name="GET /v1/kv/[key]",
                             catch_response=True) as response:  # fmt: skip
            if response.status_code in (200, 404):
                response.success()

    def write(self) -> None:
        value = {"owner": self.node, "n": random.randrange(1 << 30)}
        self.client.put(f"{self.node}/v1/kv/{zipf_key()}", name="PUT /v1/kv/[key]",
                        json={"value": value})  # fmt: skip

    def conditional_write(self) -> None:
        key = zipf_key()
        with self.client.get(f"{self.node}/v1/kv/{key}", name="GET /v1/kv/[key] (cas)",
                             catch_response=True) as response:  # fmt: skip
            if response.status_code in (200, 404):  # 404: not written yet, create it
                response.success()
        headers = {"If-Match": response.headers["ETag"]} if response.status_code == 200 else {
            "If-None-Match": "*"}  # fmt: skip
        with self.client.put(f"{self.node}/v1/kv/{key}", name="PUT /v1/kv/[key] (cas)",
                             json={"value": {"n": random.randrange(1 << 30)}}, headers=headers,
                             catch_response=True) as answer:  # fmt: skip
            if answer.status_code in (200, 412):
                answer.success()


class MetadataReader(_CachegridUser):
    weight = 6
    wait_time = between(0.001, 0.01)

    @task
    def lookup(self) -> None:
        self.read()


class ConditionalWriter(_CachegridUser):
    weight = 1
    wait_time = between(0.01, 0.05)

    @task
    def read_modify_write(self) -> None:
        self.conditional_write()


class MixedUser(_CachegridUser):
    weight = 3
    wait_time = between(0.001, 0.02)

    @task(9)
    def lookup(self) -> None:
        self.read()

    @task(1)
    def update(self) -> None:
        self.write()
