"""The cache's byte limit holds under concurrent load on real nodes, and evictions lose
nothing: every key still reads back its last acknowledged value (issue 6)."""

import asyncio
import random
import time

import orjson
import pytest

LIMIT = 300_000  # bytes: a few dozen of the values below per node
pytestmark = pytest.mark.slow


async def gauge(http, url: str, name: str) -> float:
    async with http.get(f"{url}/metrics") as response:
        page = await response.text()
    line = next(line for line in page.splitlines() if line.startswith(name + " "))
    return float(line.split()[-1])


async def test_the_byte_limit_holds_under_load_and_evictions_lose_nothing(
    fresh_cluster, http
) -> None:
    cluster = await asyncio.to_thread(fresh_cluster, node_config=f"cache_max_bytes = {LIMIT}\n")
    urls = cluster.urls
    workers, keys_per_worker = 16, 25
    last: dict[str, int] = {}  # key -> its writer's last acknowledged value
    peaks: list[float] = []
    stop_at = time.monotonic() + 4

    async def worker(index: int) -> None:
        rng = random.Random(index)
        own = [f"bound-{index}-{i}" for i in range(keys_per_worker)]  # one writer per key
        while time.monotonic() < stop_at:
            key, url = rng.choice(own), rng.choice(urls)
            n = rng.randrange(10**6)
            value = {"n": n, "pad": "x" * rng.randrange(100, 8000)}
            async with http.put(f"{url}/v1/kv/{key}", json={"value": value}) as response:
                assert response.status == 200, await response.text()
            last[key] = n
            async with http.get(f"{rng.choice(urls)}/v1/kv/{rng.choice(own)}") as response:
                assert response.status in (200, 404)

    async def sample() -> None:
        while time.monotonic() < stop_at:
            peaks.extend(
                await asyncio.gather(*(gauge(http, u, "cachegrid_cache_bytes") for u in urls))
            )
            await asyncio.sleep(0.05)

    await asyncio.gather(sample(), *(worker(i) for i in range(workers)))
    assert max(peaks) <= LIMIT
    assert max(peaks) > LIMIT / 2, "the load never filled the cache: the bound went untested"
    entries = sum([await gauge(http, u, "cachegrid_cache_entries") for u in urls])
    assert entries < len(last), "nothing was evicted"
    for key, n in last.items():
        async with http.get(f"{urls[0]}/v1/kv/{key}") as response:
            assert response.status == 200
            assert orjson.loads(await response.read())["value"]["n"] == n, key
