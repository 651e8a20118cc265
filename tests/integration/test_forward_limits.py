"""A hung owner cannot take every request slot of a node that forwards to it (issue 17):
past ``node.max_forwards_per_owner`` unanswered requests to one owner, more get 503 at once
(JSON, Retry-After), and the node keeps serving its own keys meanwhile."""

from __future__ import annotations

import asyncio
import time

from cachegrid.ring import Ring

LIMITS = "max_forwards_per_owner = 8\nread_lease_threshold = 0\n"


async def test_a_hung_owner_holds_at_most_its_share_of_a_forwarding_node(fresh_cluster,
                                                                         http) -> None:  # fmt: skip
    cluster = await asyncio.to_thread(fresh_cluster, node_config=LIMITS)
    front = cluster.urls[0]
    async with http.get(f"{front}/v1/ring") as response:
        ring = Ring.from_description(await response.json())
    theirs = [k for k in (f"far-{i}" for i in range(500)) if ring.owner(k) == "node1"][:40]
    ours = next(k for k in (f"near-{i}" for i in range(100)) if ring.owner(k) == "node0")
    async with http.put(f"{front}/v1/kv/{ours}", json={"value": "here"}) as response:
        assert response.status == 200

    async def get(key: str) -> tuple[int, float, dict]:
        started = time.monotonic()
        async with http.get(f"{front}/v1/kv/{key}") as response:
            return response.status, time.monotonic() - started, await response.json()

    cluster.nodes[1].pause()
    try:
        waiting = [asyncio.create_task(get(key)) for key in theirs]
        await asyncio.sleep(0.3)
        status, took, body = await get(ours)  # the node's own keys are not held up
        assert (status, body["value"]) == (200, "here")
        assert took < 0.5, took
        results = await asyncio.gather(*waiting)
    finally:
        cluster.nodes[1].resume()
    refused = [r for r in results if r[0] == 503 and "max_forwards_per_owner" in
               r[2]["error"]["message"]]  # fmt: skip
    assert len(refused) >= len(theirs) - 8, [r[:2] for r in results]
    assert all(took < 0.5 for _, took, _ in refused)
    # Those that waited timed out as reads: 503 (not applied), never 504 (indeterminate).
    assert {status for status, _, _ in results} == {503}
    async with http.get(f"{front}/metrics") as response:
        page = await response.text()
    counted = next(float(line.split()[-1]) for line in page.splitlines()
                   if line.startswith("cachegrid_forward_refused_total "))  # fmt: skip
    assert counted >= len(refused)
