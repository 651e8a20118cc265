"""Single-flight on its own: one load per key in flight, shared, and robust to callers that
go away (singleflight.py)."""

import asyncio

import pytest

from cachegrid.singleflight import Group


class Load:
    """A load that counts its calls and finishes when told."""

    def __init__(self) -> None:
        self.calls = 0
        self.release = asyncio.Event()

    async def __call__(self) -> int:
        self.calls += 1
        await self.release.wait()
        return self.calls


async def test_concurrent_callers_share_one_load() -> None:
    group: Group[int] = Group()
    load = Load()
    callers = [asyncio.create_task(group.do("k", load)) for _ in range(5)]
    await asyncio.sleep(0)
    assert len(group) == 1
    load.release.set()
    assert await asyncio.gather(*callers) == [1] * 5
    assert load.calls == 1
    assert len(group) == 0  # forgotten the moment it finished


async def test_a_later_caller_starts_a_new_load() -> None:
    group: Group[int] = Group()
    load = Load()
    load.release.set()
    assert await group.do("k", load) == 1
    assert await group.do("k", load) == 2


async def test_a_cancelled_caller_does_not_cancel_the_load_the_others_wait_on() -> None:
    group: Group[int] = Group()
    load = Load()
    leaving = asyncio.create_task(group.do("k", load))
    staying = asyncio.create_task(group.do("k", load))
    await asyncio.sleep(0)
    leaving.cancel()
    with pytest.raises(asyncio.CancelledError):
        await leaving
    load.release.set()
    assert await staying == 1
    assert load.calls == 1


async def test_every_caller_sees_the_loads_error() -> None:
    group: Group[int] = Group()

    async def failing() -> int:
        await asyncio.sleep(0)
        raise ValueError("store down")

    results = await asyncio.gather(*(group.do("k", failing) for _ in range(3)),
                                   return_exceptions=True)  # fmt: skip
    assert [type(r) for r in results] == [ValueError] * 3
    assert len(group) == 0


async def test_detach_makes_later_callers_load_anew_and_keeps_the_waiting_ones() -> None:
    group: Group[int] = Group()
    first, second = Load(), Load()
    early = asyncio.create_task(group.do("k", first))
    await asyncio.sleep(0)
    group.detach("k")  # a write of k began: nobody from now on may join the old load
    late = asyncio.create_task(group.do("k", second))
    await asyncio.sleep(0)
    first.release.set()
    second.release.set()
    assert await early == 1
    assert await late == 1
    assert (first.calls, second.calls) == (1, 1)


async def test_detach_all_and_a_detached_load_finishing_late_forgets_nothing_newer() -> None:
    group: Group[int] = Group()
    old, new = Load(), Load()
    waiting = asyncio.create_task(group.do("k", old))
    await asyncio.sleep(0)
    group.detach_all()
    fresh = asyncio.create_task(group.do("k", new))
    await asyncio.sleep(0)
    old.release.set()
    assert await waiting == 1
    assert len(group) == 1  # the old load's end did not drop the new one
    new.release.set()
    assert await fresh == 1
