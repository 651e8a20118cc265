"""cachegrid against its ceilings, measured side by side in one run (issue 6).

Starts a real cluster (etcd, 3 Redis replicas, N cache nodes) and the baselines, then loads
each scenario from a separate process (wrk, 1 thread, fixed connections) and prints
throughput, p50/p99/p99.9 latency, and the ratios the targets are stated in:

    .venv/bin/python bench/harness.py [--seconds 5] [--connections 32]

Baselines: (a) a bare aiohttp app answering GET from a dict (the Python ceiling, on the same
event loop as the nodes); (b) etcd's linearizable reads of a key through its HTTP gateway;
(c) direct quorum reads and writes of the store from one Python process, one key per call
(and, for reference, reads of 8 keys per call: the store's capacity when batched).

Then, per core, the node's hot GET against Redis's own GET (bench/vs_redis.py): the node
pinned to one core, then a fresh redis-server pinned there, each loaded from the other.

Read leases (issue 11): the same hot GETs sent to a node that does not own them (answered
from its copies), a Zipf read load spread round-robin over every node by plain wrk (as
behind a load balancer), and the latency of writes of a key with live holders, without,
and with a holder paused; then the nodes are restarted with read leases off and the
non-owner and round-robin loads measured again: before and after, in one run.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import itertools
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).parents[1] / "bench"))
from cachegrid.devcluster.cluster import LocalCluster
from cachegrid.devcluster.servers import NodeProcess, PortAllocator, bindable
from cachegrid.ring import Ring
from cachegrid.store import QuorumStore, Record, Replica
from cachegrid.version import Version
from store_bench import measure, pct

VALUE = {"n": 1, "pad": "x" * 64}
PAUSE_MS = 4  # a connection's pause between requests in the set-rate scenario

# Lua run by wrk: requests from a table of paths (and methods), latency percentiles as JSON.
LUA = """
local paths = {%(paths)s}
local methods = {%(methods)s}
local body = '%(body)s'
local headers = {%(headers)s}
local counter = 0
%(pause)s
request = function()
  counter = counter + 1
  local i = (counter %% #paths) + 1
  local method = methods[(counter %% #methods) + 1]
  local path = paths[i]
  if method == "GET" then return wrk.format("GET", path, headers) end
  headers["Content-Type"] = "application/json"
  return wrk.format(method, path, headers, body)
end
done = function(summary, latency, requests)
  io.write(string.format('RESULT {"requests": %%d, "seconds": %%f, "errors": %%d, '
    .. '"non2xx": %%d, "p50": %%d, "p99": %%d, "p999": %%d}\\n',
    summary.requests, summary.duration / 1e6,
    summary.errors.connect + summary.errors.read + summary.errors.write
      + summary.errors.timeout, summary.errors.status,
    latency:percentile(50), latency:percentile(99), latency:percentile(99.9)))
end
"""


@dataclass
class Result:
    rps: float
    p50: float  # ms
    p99: float
    p999: float
    errors: int

    def cells(self) -> str:
        return (f"{self.rps:>9.0f} {self.p50:>8.3f} {self.p99:>8.3f} {self.p999:>8.3f}"
                f"{'  errors=' + str(self.errors) if self.errors else ''}")  # fmt: skip


def wrk(base: str, paths: list[str], seconds: float, connections: int,
        methods: tuple[str, ...] = ("GET",), body: str = "", not_found_ok: bool = False,
        pause_ms: int = 0, pinned_to: str = "",
        headers: dict[str, str] | None = None) -> Result:  # fmt: skip
    """Load ``base`` with wrk: ``paths`` in turn, ``methods`` in turn (a mix). Answers of
    4xx/5xx count as errors, except 404s when ``not_found_ok``. With ``pause_ms``, each
    connection waits that long after an answer before its next request (a set rate); with
    ``pinned_to``, wrk runs on that core only; ``headers`` go with every request."""
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(LUA % {
            "paths": ",".join(json.dumps(p) for p in paths),
            "methods": ",".join(json.dumps(m) for m in methods),
            "body": body,
            "pause": f"delay = function() return {pause_ms} end" if pause_ms else "",
            "headers": ",".join(f"[{json.dumps(k)}] = {json.dumps(v)}"
                                for k, v in (headers or {}).items()),
        })  # fmt: skip
    out = subprocess.run(
        [*(["taskset", "-c", pinned_to] if pinned_to else []),
         "wrk", "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s", "-s", script.name, base],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    data = json.loads(next(line for line in out.splitlines() if line.startswith("RESULT "))[7:])
    errors = data["errors"] + (0 if not_found_ok else data["non2xx"])
    return Result(data["requests"] / data["seconds"], data["p50"] / 1000, data["p99"] / 1000,
                  data["p999"] / 1000, errors)  # fmt: skip


def http(method: str, url: str, body: object = None) -> dict:
    data = orjson.dumps(body) if body is not None else None
    request = urllib.request.Request(url, data=data, method=method,
                                     headers={"Content-Type": "application/json"})  # fmt: skip
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def free_base(ports: PortAllocator) -> int:
    while True:
        base = ports.take()
        if base + 30 < 32768 and all(bindable(base + i) for i in range(30)):
            return base


def planned(data_dir: Path, nodes: int, ports: PortAllocator | None = None) -> LocalCluster:
    """A local cluster of ``nodes`` nodes and 3 Redis replicas (AOF everysec), not started;
    ``start`` writes its config file, which ``reconfigured`` extends."""
    return LocalCluster.plan(data_dir, nodes=nodes, replicas=3,
                             base_port=free_base(ports or PortAllocator()),
                             appendfsync="everysec")  # fmt: skip


@contextmanager
def started(nodes: int) -> Iterator[LocalCluster]:
    """A ``planned`` cluster in a temporary directory, started; stopped on the way out."""
    with tempfile.TemporaryDirectory() as tmp:
        cluster = planned(Path(tmp), nodes)
        cluster.start()
        try:
            yield cluster
        finally:
            cluster.stop()


def written_keys(owner: NodeProcess, count: int, value: object, prefix: str = "key:") -> list[str]:
    """``count`` keys (``prefix`` and a number) that ``owner`` owns, each written through it
    with ``value``."""
    ring = Ring.from_description(http("GET", f"{owner.url}/v1/ring"))
    keys = [k for k in (f"{prefix}{i}" for i in range(10 * count))
            if ring.owner(k) == owner.node_id][:count]  # fmt: skip
    for key in keys:
        http("PUT", f"{owner.url}/v1/kv/{key}", {"value": value})
    return keys


async def direct_store(cluster: LocalCluster, seconds: float, concurrency: int) -> dict:
    """Quorum reads and writes from this process: baseline (c)."""
    store = QuorumStore([Replica(r.endpoint, timeout=2) for r in cluster.redis], timeout=2)
    value = orjson.dumps(VALUE)
    seq = iter(range(1, 1 << 60))
    for i in range(1000):
        await store.write(f"direct-{i}", Record(Version(1, next(seq)), False, value))
    results = {}
    for name, op in {
        "read": lambda k: store.read(f"direct-{k}"),
        "write": lambda k: store.write(f"direct-{k}", Record(Version(2, next(seq)), False, value)),
    }.items():
        rate, latencies = await measure(op, concurrency, seconds)
        results[name] = Result(rate, pct(latencies, 50), pct(latencies, 99), pct(latencies, 99.9),
                               0)  # fmt: skip
    # The store's own capacity when callers batch: 8 keys per read_many, as many in flight.
    batch = 8
    rate, latencies = await measure(
        lambda k: store.read_many([f"direct-{(k * batch + j) % 1000}" for j in range(batch)]),
        concurrency // batch, seconds,
    )  # fmt: skip
    results["read_many"] = Result(rate * batch, pct(latencies, 50), pct(latencies, 99),
                                  pct(latencies, 99.9), 0)  # fmt: skip
    await store.close()
    return results


async def single_flight(nodes: list[str]) -> int:
    """1,000 concurrent GETs of one uncached key through one node: how many store reads
    they cost, counted on every node (the key's owner may be another one)."""
    import aiohttp

    def fills() -> float:
        total = 0.0
        for node in nodes:
            text = urllib.request.urlopen(f"{node}/metrics", timeout=5).read().decode()
            total += float(next(line.split()[1] for line in text.splitlines()
                                if line.startswith("cachegrid_fills_total ")))  # fmt: skip
        return total

    before = fills()
    connector = aiohttp.TCPConnector(limit=1000)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def get() -> int:
            async with session.get(f"{nodes[0]}/v1/kv/stampede-{before}") as response:
                return response.status

        statuses = await asyncio.gather(*(get() for _ in range(1000)))
    assert set(statuses) == {404}, set(statuses)
    return int(fills() - before)


def zipf_paths(node: str, count: int, keys: int = 100_000, s: float = 1.1) -> list[str]:
    """``count`` request paths whose keys follow a Zipf law over ``keys`` keys. wrk sends
    them all to one node, which forwards what it does not own, as a plain HTTP client's
    traffic would be. Every 10th distinct key is written first; the others are 404s."""
    import bisect
    import itertools
    import random

    rng = random.Random(11)
    cumulative = list(itertools.accumulate(1 / rank**s for rank in range(1, keys + 1)))
    ranks = [bisect.bisect_left(cumulative, rng.random() * cumulative[-1]) for _ in range(count)]
    for rank in sorted(set(ranks))[::10]:
        http("PUT", f"{node}/v1/kv/zipf-{rank}", {"value": VALUE})
    return [f"/v1/kv/zipf-{rank}" for rank in ranks]


def at_rate(base: str, paths: list[str], seconds: float, rate: float) -> Result:
    """Load at about ``rate`` requests per second: enough connections that each, pausing
    PAUSE_MS between answer and next request, adds up to the rate; corrected once from
    the rate a first run reached. The result's rps is what was reached, not what was aimed at."""
    connections = max(1, round(rate * (PAUSE_MS + 0.2) / 1000))
    result = wrk(base, paths, seconds, connections, pause_ms=PAUSE_MS)
    if not 0.9 < result.rps / rate < 1.1:
        connections = max(1, round(connections * rate / result.rps))
        result = wrk(base, paths, seconds, connections, pause_ms=PAUSE_MS)
    return result


def round_robin(nodes: list[str], paths: list[str], seconds: float,
                connections: int) -> Result:  # fmt: skip
    """A plain HTTP load generator behind a round-robin balancer: one wrk per node, the
    connections split evenly, all at once."""
    share = max(1, connections // len(nodes))
    with ThreadPoolExecutor(len(nodes)) as pool:
        results = list(pool.map(lambda node: wrk(node, paths, seconds, share, not_found_ok=True),
                                nodes))  # fmt: skip
    return Result(sum(r.rps for r in results), max(r.p50 for r in results),
                  max(r.p99 for r in results), max(r.p999 for r in results),
                  sum(r.errors for r in results))  # fmt: skip


def put_latencies(url: str, count: int) -> Result:
    """``count`` PUTs of one key, one at a time; their latency (the p99.9 column: the max)."""
    latencies = []
    started = time.perf_counter()
    for n in range(count):
        begun = time.perf_counter()
        http("PUT", url, {"value": {"n": n}})
        latencies.append(time.perf_counter() - begun)
    rate = count / (time.perf_counter() - started)
    ranked = sorted(latencies)  # few samples: nearest rank, no extrapolation past the max

    def rank(q: float) -> float:
        return ranked[min(len(ranked) - 1, int(q / 100 * len(ranked)))] * 1000

    return Result(rate, rank(50), rank(99), ranked[-1] * 1000, 0)


def replica_of(node: str, path: str, within: float = 5.0) -> bool:
    """Read ``path`` through ``node`` until a replica hit answers (True), or give up."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        with urllib.request.urlopen(f"{node}{path}", timeout=5) as response:
            if response.headers.get("X-Cache") == "replica":
                return True
        time.sleep(0.005)
    return False


def write_costs(cluster: LocalCluster, leased: str, plain: str, count: int) -> dict[str, Result]:
    """PUT latency at the owner (node0) of a key without holders, of a key whose copies
    the other nodes hold (kept hot by a background reader through each), and of that key
    while one holder is paused (SIGSTOP: it can acknowledge nothing)."""
    owner, others = cluster.nodes[0], cluster.nodes[1:]
    rows = {"PUT, key without holders": put_latencies(f"{owner.url}{plain}", count)}
    stop = time.monotonic() + 3600
    done = [False]

    def keep_hot(node: str) -> None:
        while not done[0] and time.monotonic() < stop:
            urllib.request.urlopen(f"{node}{leased}", timeout=5).read()
            time.sleep(0.002)

    with ThreadPoolExecutor(len(others)) as pool:
        readers = [pool.submit(keep_hot, node.url) for node in others]
        try:
            assert all(replica_of(node.url, leased) for node in others), "no copies held"
            rows[f"PUT, key with {len(others)} live holders"] = put_latencies(
                f"{owner.url}{leased}", count
            )  # fmt: skip
            paused = others[0]
            assert replica_of(paused.url, leased)
            assert paused.pid is not None
            os.kill(paused.pid, signal.SIGSTOP)
            try:
                rows["PUT, a holder paused (SIGSTOP)"] = put_latencies(
                    f"{owner.url}{leased}", count // 4
                )  # fmt: skip
            finally:
                os.kill(paused.pid, signal.SIGCONT)
        finally:
            done[0] = True
        for reader in readers:
            reader.exception()
    return rows


def leases_off(cluster: LocalCluster) -> None:
    """Restart every node with read leases off (one at a time: the cluster keeps serving)."""
    reconfigured(cluster, "read_lease_threshold = 0\n")


def reconfigured(cluster: LocalCluster, settings: str) -> None:
    """Restart every node (one at a time: the cluster keeps serving) with ``settings`` (TOML
    lines of the node section) added to its config."""
    config = cluster.data_dir / "cachegrid.toml"
    config.write_text(config.read_text() + settings)
    for node in cluster.nodes:
        node.stop()
        node.start(timeout=60)
    time.sleep(1.0)


def scale_out(cluster: LocalCluster, paths0: list[str], paths1: list[str], seconds: float,
              connections: int) -> tuple[Result, Result]:  # fmt: skip
    """Hot GETs sent straight to the owner (as cachegrid.Client does): one node, then two
    nodes loaded at once, each with half the connections and its own keys."""
    node0, node1 = cluster.nodes[0].url, cluster.nodes[1].url
    one = wrk(node0, paths0, seconds, connections)
    with ThreadPoolExecutor(2) as pool:
        halves = list(pool.map(lambda args: wrk(*args, seconds, connections // 2),
                               [(node0, paths0), (node1, paths1)]))  # fmt: skip
    rps = sum(r.rps for r in halves)
    two = Result(rps, max(r.p50 for r in halves), max(r.p99 for r in halves),
                 max(r.p999 for r in halves), sum(r.errors for r in halves))  # fmt: skip
    return one, two


def main(seconds: float, connections: int, nodes: int) -> None:
    ports = PortAllocator()
    with tempfile.TemporaryDirectory() as tmp:
        cluster = planned(Path(tmp), nodes, ports)
        dict_port = ports.take()
        dict_app = subprocess.Popen([sys.executable, str(Path(__file__).parent / "dict_app.py"),
                                     str(dict_port), "--uvloop"])  # fmt: skip
        cluster.start()
        try:
            run(cluster, f"http://127.0.0.1:{dict_port}", seconds, connections)
        finally:
            dict_app.terminate()
            dict_app.wait()
            cluster.stop()


def run(cluster: LocalCluster, dict_url: str, seconds: float, connections: int) -> None:
    node0, node1 = cluster.nodes[0].url, cluster.nodes[1].url
    ring = Ring.from_description(http("GET", f"{node0}/v1/ring"))
    own0 = [k for k in (f"hot-{i}" for i in range(3000)) if ring.owner(k) == "node0"][:500]
    own1 = [k for k in (f"hot-{i}" for i in range(3000)) if ring.owner(k) == "node1"][:500]
    for key in own0 + own1:
        http("PUT", f"{node0}/v1/kv/{key}", {"value": VALUE})
    etcd = cluster.etcd[0].url
    encoded = base64.b64encode(b"/cachegrid/bench").decode()
    http("POST", f"{etcd}/v3/kv/put", {"key": encoded, "value": encoded})
    body = json.dumps({"value": VALUE}).replace("'", "\\'")
    paths0 = [f"/v1/kv/{k}" for k in own0]
    time.sleep(0.5)
    rows: dict[str, Result] = {}
    rows["dict ceiling (aiohttp+orjson)"] = wrk(dict_url, [f"/v1/kv/k{i}" for i in range(500)],
                                                seconds, connections)  # fmt: skip
    rows["etcd linearizable range"] = wrk(etcd, ["/v3/kv/range"], seconds, connections,
                                          ("POST",), json.dumps({"key": encoded}))  # fmt: skip
    rows["hot GET at the owner"] = wrk(node0, paths0, seconds, connections)
    half = rows["hot GET at the owner"].rps / 2
    rows["hot GET at half the peak rate"] = at_rate(node0, paths0, seconds, half)
    # Read leases build up as keys prove hot: one second of the same load first, unmeasured
    # (a service behind a load balancer runs in that steady state).
    wrk(node1, paths0, 1, connections)
    rows["hot GET via a non-owner (read leases)"] = wrk(node1, paths0, seconds, connections)
    # Keys never written and owned by node0, more than one run can send: every GET a miss.
    cold = (f"cold-{i}" for i in itertools.count())
    cold_paths = [f"/v1/kv/{k}" for k in itertools.islice(
        (k for k in cold if ring.owner(k) == "node0"), int(seconds * 40_000))]  # fmt: skip
    rows["cold GET at the owner (all misses)"] = wrk(node0, cold_paths, seconds, connections,
                                                     not_found_ok=True)  # fmt: skip
    rows["PUT"] = wrk(node0, paths0, seconds, connections, ("PUT",), body)
    rows["95/5 GET/PUT"] = wrk(node0, paths0, seconds, connections,
                               ("GET",) * 19 + ("PUT",), body)  # fmt: skip
    rows["50/50 GET/PUT"] = wrk(node0, paths0, seconds, connections, ("GET", "PUT"), body)
    zipf = zipf_paths(node0, 20_000)
    rows["Zipf GET over 100k keys (s=1.1)"] = wrk(node0, zipf, seconds, connections,
                                                  not_found_ok=True)  # fmt: skip
    nodes = [n.url for n in cluster.nodes]
    round_robin(nodes, zipf, 1, connections)
    rows["Zipf GET round-robin (read leases)"] = round_robin(nodes, zipf, seconds, connections)
    rows |= write_costs(cluster, paths0[0], paths0[1], 200)
    paths1 = [f"/v1/kv/{k}" for k in own1]
    one, two = scale_out(cluster, paths0, paths1, seconds, connections)
    rows["owner-direct GET, 1 node"] = one
    rows["owner-direct GET, 2 nodes"] = two
    direct = asyncio.run(direct_store(cluster, seconds, connections))
    rows["direct quorum read"] = direct["read"]
    rows["direct quorum write"] = direct["write"]
    rows["direct read_many, 8 keys (keys/s)"] = direct["read_many"]
    stampede = asyncio.run(single_flight([n.url for n in cluster.nodes]))
    leases_off(cluster)
    wrk(node1, paths0, 1, connections)
    rows["hot GET via a non-owner (leases off)"] = wrk(node1, paths0, seconds, connections)
    round_robin(nodes, zipf, 1, connections)
    rows["Zipf GET round-robin (leases off)"] = round_robin(nodes, zipf, seconds, connections)

    print(f"\n{'scenario':<36}{'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'p99.9':>8}")
    for name, result in rows.items():
        print(f"{name:<36}{result.cells()}")
    hot = rows["hot GET at the owner"].rps
    print("\nratios (targets in brackets)")
    ratios = [
        ("hot GET / dict ceiling", hot / rows["dict ceiling (aiohttp+orjson)"].rps, 0.9),
        ("hot GET / etcd linearizable read", hot / rows["etcd linearizable range"].rps, 3.0),
        ("cold GET / direct quorum read",
         rows["cold GET at the owner (all misses)"].rps / rows["direct quorum read"].rps, 0.8),
        ("PUT / direct quorum write", rows["PUT"].rps / rows["direct quorum write"].rps, 0.7),
    ]  # fmt: skip
    for name, ratio, target in ratios:
        verdict = "met" if ratio >= target else "MISSED"
        print(f"  {name:<36}{ratio:6.2f}x  (>= {target}x: {verdict})")
    calm = rows["hot GET at half the peak rate"]
    verdict = "met" if calm.p99 < 2 else "MISSED"
    print(f"  hot GET p99 at {calm.rps / hot:.0%} of the peak rate: {calm.p99:.2f} ms"
          f"  (< 2 ms at half the peak: {verdict})")  # fmt: skip
    print(f"  store reads for 1,000 concurrent misses of one key: {stampede} (target 1)")
    scaling = rows["owner-direct GET, 2 nodes"].rps / rows["owner-direct GET, 1 node"].rps
    print(f"  2 nodes / 1 node, requests sent to owners (the smart client): {scaling:.2f}x")
    print_lease_ratios(rows)


def print_lease_ratios(rows: dict[str, Result]) -> None:
    hot = rows["hot GET at the owner"].rps
    via = rows["hot GET via a non-owner (read leases)"].rps
    verdict = "met" if via / hot >= 0.9 else "MISSED"
    print(
        f"  hot GET via a non-owner / at the owner{via / hot:10.2f}x  (>= 0.9x: {verdict}); "
        f"leases off: {rows['hot GET via a non-owner (leases off)'].rps / hot:.2f}x"
    )
    on, off = rows["Zipf GET round-robin (read leases)"], rows["Zipf GET round-robin (leases off)"]
    print(
        f"  Zipf round-robin, leases on / off: {on.rps / off.rps:.2f}x"
        f" (p99 {on.p99:.2f} ms vs {off.p99:.2f} ms)"
    )
    plain = rows["PUT, key without holders"]
    for name in [n for n in rows if n.startswith("PUT, ") and rows[n] is not plain]:
        row = rows[name]
        print(
            f"  {name} / without holders: p50 {row.p50 / plain.p50:.2f}x, "
            f"p99 {row.p99 / plain.p99:.2f}x ({row.p50:.2f} / {row.p99:.2f} ms)"
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--nodes", type=int, default=2)
    parser.add_argument("--secure", action="store_true",
                        help="then what secure mode costs (bench/secure_cost.py)")  # fmt: skip
    arguments = parser.parse_args()
    main(arguments.seconds, arguments.connections, arguments.nodes)
    import vs_redis  # here: it imports this module

    print("\nagainst Redis, per core (issue 13: bench/vs_redis.py)")
    vs_redis.main(arguments.seconds)
    if arguments.secure:
        import secure_cost  # here: it imports this module

        secure_cost.main(arguments.seconds)
