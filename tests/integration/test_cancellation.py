"""Cleanup survives cancellation: a stop that is itself cancelled still ends every loop
and revokes the lease (lifecycle.py), against real etcd."""

import asyncio

import pytest

from cachegrid.coord.coordinator import Coordinator
from cachegrid.coord.etcd import Etcd
from cachegrid.lifecycle import uncancellable, unless_stopped
from tests.integration.test_coordinator import settings


# From 1: a task cancelled before its first turn never runs at all (asyncio), so there is
# no stop to finish.
@pytest.mark.parametrize("turns", [1, 2, 5])
async def test_a_cancelled_stop_still_revokes_the_lease(etcd_servers, turns: int) -> None:
    """Cancelled ``turns`` loop turns into its stop, the coordinator still ends its loops
    and revokes its lease: its member key is gone at once, not after the 2 s TTL."""
    (member,) = etcd_servers(1)
    etcd = Etcd([member.endpoint])
    coordinator = Coordinator(etcd, settings("n1", lease_ttl=30))
    await coordinator.start()
    key = b"/cachegrid/members/n1"
    assert (await etcd.get(key))[1] is not None
    stopping = asyncio.create_task(coordinator.stop())
    for _ in range(turns):
        await asyncio.sleep(0)
    stopping.cancel()
    with pytest.raises(asyncio.CancelledError):
        await stopping
    # With the 30 s TTL, only a revocation can have removed it by now.
    assert (await etcd.get(key))[1] is None
    assert all(task.done() for task in asyncio.all_tasks() if task.get_name().startswith("coord"))
    await etcd.close()


async def test_uncancellable_work_finishes_and_the_cancellation_is_passed_on() -> None:
    finished = asyncio.Event()

    async def cleanup() -> None:
        await asyncio.sleep(0.05)
        finished.set()

    caller = asyncio.create_task(uncancellable(cleanup()))
    await asyncio.sleep(0)
    caller.cancel()
    with pytest.raises(asyncio.CancelledError):
        await caller
    assert finished.is_set()


async def test_a_start_that_waits_is_ended_by_a_stop_request() -> None:
    stop = asyncio.Event()
    reached_end = False

    async def slow_start() -> None:
        nonlocal reached_end
        await asyncio.sleep(30)
        reached_end = True

    asyncio.get_running_loop().call_later(0.05, stop.set)
    assert await asyncio.wait_for(unless_stopped(slow_start(), stop), 5) is False
    assert not reached_end


async def test_a_start_that_fails_reports_its_error() -> None:
    async def failing() -> None:
        raise RuntimeError("no etcd")

    with pytest.raises(RuntimeError, match="no etcd"):
        await unless_stopped(failing(), asyncio.Event())
