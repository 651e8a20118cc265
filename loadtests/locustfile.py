"""Locust load kit for a cachegrid cluster (started with `make up` / `cachegrid up`).

What it reports, beyond Locust's own tables:

- Every request is named by its kind: ``GET``, ``GET (If-None-Match)``, ``GET (hot key)``,
  ``batchGet``, ``PUT``, ``PUT (If-Match)``, ``PUT (If-None-Match)``, ``PUT (hot key)``,
  ``DELETE``.
- Outcomes that are normal for a cache are entries of their own, counted as successes:
  ``<kind> [404]`` (not found), ``<kind> [412]`` (precondition failed), ``<kind> [304]``
  (not modified). Anything else that is not 2xx (5xx, 429, a connection error, a batchGet
  item with an error other than not_found) stays a failure.
- At the end of a run, a summary: the ``X-Cache`` of every GET answer (200, 304, 404) and
  of every batchGet item, in total and by kind; the hit ratio, (hit + replica) / all; the
  replica share, replica / all; p50 and p99 by request kind. With ``--csv PREFIX`` the
  X-Cache counts are also written to ``PREFIX_xcache.csv``. Workers of a distributed run
  send their counts to the master, which prints the summary.

Users spread over every node listed in cluster.json, and key popularity follows a Zipf law
(a few hot keys, a long tail), as metadata lookups do. Each user remembers the ETags it saw,
as an HTTP cache in front of cachegrid would:

- ``MetadataReader``: lookups (GET), revalidations of remembered ETags (If-None-Match: 304
  if unchanged) and batchGets;
- ``ConditionalWriter``: optimistic writes with a remembered ETag (If-Match), or
  If-None-Match: * for a key it saw absent; a 412 (someone else wrote first) has it read
  the key again;
- ``MixedUser``: 90% reads, 8% writes, 2% deletes;
- ``HotKeyReader``: the read-lease mix. It reads a few hot keys through every node in turn,
  so the nodes that do not own them take read leases and answer ``X-Cache: replica``, and
  now and then writes one (each write revokes the copies).

Headless, bounded in time (the README has the command):

    .venv/bin/locust -f loadtests/locustfile.py --headless -u 50 -r 10 -t 60s \\
        --cluster .cluster/cluster.json
"""

from __future__ import annotations

import bisect
import csv
import itertools
import json
import random
from collections import Counter
from collections.abc import Collection
from typing import Any

import gevent.ssl
from locust import FastHttpUser, between, events, task
from locust.contrib.fasthttp import ResponseContextManager
from locust.env import Environment
from locust.runners import WorkerRunner
from locust.stats import RequestStats

KEYS = 10_000
ZIPF_S = 1.1
HOT_KEYS = [f"hot:{i}" for i in range(3)]
CACHE_VALUES = ("hit", "replica", "miss")
_CUMULATIVE = list(itertools.accumulate(1 / (rank**ZIPF_S) for rank in range(1, KEYS + 1)))
_NODES: list[str] = []
_XCACHE: Counter[tuple[str, str]] = Counter()  # (kind, X-Cache value) -> answers


@events.init_command_line_parser.add_listener
def _options(parser: Any) -> None:
    parser.add_argument("--cluster", default=".cluster/cluster.json",
                        help="cluster.json written by cachegrid up")  # fmt: skip


@events.init.add_listener
def _load_cluster(environment: Environment, **_: Any) -> None:
    with open(environment.parsed_options.cluster) as file:
        manifest = json.load(file)
    _NODES[:] = [node["url"] for node in manifest["nodes"]]
    if not _NODES:
        raise SystemExit(f"{environment.parsed_options.cluster} lists no node")
    # A secure cluster (cachegrid up --secure): HTTPS checked against its CA, and its write
    # token on every request.
    if manifest.get("ca"):
        ca = manifest["ca"]
        _CachegridUser.insecure = False
        _CachegridUser.ssl_context_factory = staticmethod(
            lambda: gevent.ssl.create_default_context(cafile=ca))  # fmt: skip
    if manifest.get("tokens"):
        _CachegridUser.default_headers = {
            "Authorization": f"Bearer {manifest['tokens']['write']}"}  # fmt: skip


def zipf_key() -> str:
    rank = bisect.bisect_left(_CUMULATIVE, random.random() * _CUMULATIVE[-1])
    return f"meta:{rank}"


# --- outcomes and X-Cache counts ---------------------------------------------------------


def settle(response: ResponseContextManager, allowed: Collection[int]) -> None:
    """An allowed non-2xx status is a success, reported as "<kind> [<status>]"."""
    if response.status_code in allowed:
        response.request_meta["name"] = f"{response.request_meta['name']} [{response.status_code}]"
        response.success()


def tally(kind: str, cache: object) -> None:
    if cache in CACHE_VALUES:
        _XCACHE[kind, str(cache)] += 1


def batch_error(items: list[dict[str, Any]]) -> str | None:
    """The first item error that is not a normal outcome (not_found), if any."""
    codes = (item["error"].get("code") for item in items if "error" in item)
    return next((f"batchGet item: {code}" for code in codes if code != "not_found"), None)


@events.report_to_master.add_listener
def _send_counts(data: dict[str, Any], **_: Any) -> None:
    data["xcache"] = [[kind, cache, count] for (kind, cache), count in _XCACHE.items()]
    _XCACHE.clear()


@events.worker_report.add_listener
def _add_counts(data: dict[str, Any], **_: Any) -> None:
    for kind, cache, count in data.get("xcache", []):
        _XCACHE[kind, cache] += count


@events.reset_stats.add_listener
def _reset_counts(**_: Any) -> None:
    _XCACHE.clear()


# --- the summary -------------------------------------------------------------------------


def cache_counts(kind: str | None = None) -> dict[str, int]:
    """hit / replica / miss answers of one kind, or of all kinds (None)."""
    found = {cache: 0 for cache in CACHE_VALUES}
    for (name, cache), count in _XCACHE.items():
        if kind is None or name == kind:
            found[cache] += count
    return found


def ratios(counts: dict[str, int]) -> str:
    total = sum(counts.values())
    if not total:
        return "hit ratio: n/a (no X-Cache seen), replica share: n/a"
    hits = counts["hit"] + counts["replica"]
    return (f"hit ratio: {100 * hits / total:.1f}% (hit + replica), "
            f"replica share: {100 * counts['replica'] / total:.1f}%")  # fmt: skip


def counts_line(label: str, counts: dict[str, int]) -> str:
    return f"{label} hit={counts['hit']} replica={counts['replica']} miss={counts['miss']}"


def latency_lines(stats: RequestStats) -> list[str]:
    lines = [f"  {'kind':<28} {'requests':>9} {'failures':>9} {'p50':>6} {'p99':>6}"]
    for entry in sorted(stats.entries.values(), key=lambda entry: entry.name):
        p50, p99 = (entry.get_response_time_percentile(p) for p in (0.5, 0.99))
        lines.append(f"  {entry.name:<28} {entry.num_requests:>9} {entry.num_failures:>9} "
                     f"{p50:>6.0f} {p99:>6.0f}")  # fmt: skip
    return lines


def summary(stats: RequestStats) -> str:
    kinds = sorted({kind for kind, _ in _XCACHE})
    return "\n".join([
        "=== cachegrid summary ===",
        counts_line("X-Cache:", cache_counts()) + " (GET answers and batchGet items)",
        ratios(cache_counts()),
        "X-Cache by kind:",
        *(counts_line(f"  {kind:<26}", cache_counts(kind)) for kind in kinds),
        "p50/p99 by request kind (ms):",
        *latency_lines(stats),
    ])  # fmt: skip


def write_csv(prefix: str) -> None:
    with open(f"{prefix}_xcache.csv", "w", newline="") as file:
        out = csv.writer(file)
        out.writerow(["Kind", *CACHE_VALUES])
        for kind in [*sorted({kind for kind, _ in _XCACHE}), None]:
            counts = cache_counts(kind)
            out.writerow([kind or "Aggregated", *(counts[cache] for cache in CACHE_VALUES)])


@events.quitting.add_listener
def _report(environment: Environment, **_: Any) -> None:
    if isinstance(environment.runner, WorkerRunner) or environment.stats is None:
        return  # a worker's counts went to the master
    print(summary(environment.stats), flush=True)
    if prefix := environment.parsed_options.csv_prefix:
        write_csv(prefix)


# --- users -------------------------------------------------------------------------------


class _CachegridUser(FastHttpUser):
    abstract = True
    host = "http://127.0.0.1"  # every request names its node URL in full

    def on_start(self) -> None:
        self.node = random.choice(_NODES)
        self.etags: dict[str, str | None] = {}  # key -> last ETag seen (None: absent)

    def call(self, method: str, kind: str, key: str, allowed: Collection[int] = (),
             node: str | None = None, **options: Any) -> ResponseContextManager:  # fmt: skip
        """One request of ``kind`` about ``key``; remembers the ETag it answers with."""
        url = f"{node or self.node}/v1/kv/{key}"
        with self.client.request(method, url, name=kind, catch_response=True,
                                 **options) as response:  # fmt: skip
            settle(response, allowed)
        headers = response.headers or {}
        if method == "GET" and response.status_code in (200, 304, 404):
            tally(kind, headers.get("X-Cache"))
        if response.status_code == 404 or (method == "DELETE" and response.status_code == 200):
            self.etags[key] = None
        elif "ETag" in headers:
            self.etags[key] = headers["ETag"]
        return response

    def read(self, key: str) -> None:
        self.call("GET", "GET", key, allowed=(404,))

    def revalidate(self, key: str) -> None:
        etag = self.etags.get(key)
        if etag is None:
            self.read(key)
        else:
            headers = {"If-None-Match": etag}
            self.call("GET", "GET (If-None-Match)", key, allowed=(304, 404), headers=headers)

    def batch_read(self, keys: list[str]) -> None:
        body = {"keys": keys, "detail": True}
        with self.client.post(f"{self.node}/v1/kv:batchGet", name="batchGet", json=body,
                              catch_response=True) as response:  # fmt: skip
            if response.status_code != 200:
                return  # a failure, as Locust judges it
            items = response.json()["items"]
            if error := batch_error(items):
                response.failure(error)
        for item in items:
            tally("batchGet", item.get("cache"))

    def write(self, key: str) -> None:
        value = {"owner": self.node, "n": random.randrange(1 << 30)}
        self.call("PUT", "PUT", key, json={"value": value})

    def conditional_write(self, key: str) -> int:
        """Write ``key`` if it is still as this user last saw it; the status."""
        etag = self.etags[key]
        kind, headers = (("PUT (If-None-Match)", {"If-None-Match": "*"}) if etag is None
                         else ("PUT (If-Match)", {"If-Match": etag}))  # fmt: skip
        value = {"n": random.randrange(1 << 30)}
        response = self.call("PUT", kind, key, allowed=(412,), headers=headers,
                             json={"value": value})  # fmt: skip
        return response.status_code

    def delete(self, key: str) -> None:
        self.call("DELETE", "DELETE", key, allowed=(404,))


class MetadataReader(_CachegridUser):
    weight = 6
    wait_time = between(0.001, 0.01)

    @task(7)
    def lookup(self) -> None:
        self.read(zipf_key())

    @task(2)
    def revalidate_one(self) -> None:
        self.revalidate(zipf_key())

    @task(1)
    def lookup_many(self) -> None:
        self.batch_read(list({zipf_key() for _ in range(10)}))


class ConditionalWriter(_CachegridUser):
    weight = 1
    wait_time = between(0.01, 0.05)

    @task
    def read_modify_write(self) -> None:
        key = zipf_key()
        if key not in self.etags:
            self.read(key)
        if key in self.etags and self.conditional_write(key) == 412:
            self.read(key)  # lost the race: take the winner's version for next time


class MixedUser(_CachegridUser):
    weight = 3
    wait_time = between(0.001, 0.02)

    @task(90)
    def lookup(self) -> None:
        self.read(zipf_key())

    @task(8)
    def update(self) -> None:
        self.write(zipf_key())

    @task(2)
    def remove(self) -> None:
        self.delete(zipf_key())


class HotKeyReader(_CachegridUser):
    """Hot keys read through every node in turn (non-owners take read leases: X-Cache:
    replica), written now and then, well under node.read_lease_max_write_rate."""

    weight = 2
    wait_time = between(0.001, 0.005)

    def on_start(self) -> None:
        super().on_start()
        self.route = itertools.cycle(random.sample(_NODES, len(_NODES)))
        for key in HOT_KEYS:
            self.hot_write(key)

    def hot_write(self, key: str) -> None:
        value = {"hot": key, "n": random.randrange(1 << 30)}
        self.call("PUT", "PUT (hot key)", key, node=next(self.route), json={"value": value})

    @task(100)
    def lookup(self) -> None:
        self.call("GET", "GET (hot key)", random.choice(HOT_KEYS), node=next(self.route))

    @task(1)
    def update(self) -> None:
        self.hot_write(random.choice(HOT_KEYS))
