"""Micro-batching: calls of one loop turn share a batch, and each caller gets its own outcome."""

import asyncio

import pytest

from cachegrid.batching import Batcher


class Recorder:
    """A batch call that records each batch and answers item * 10 (or an error for < 0)."""

    def __init__(self, delay: float = 0.0) -> None:
        self.batches: list[list[int]] = []
        self.delay = delay

    async def __call__(self, items: list[int]) -> list[int | Exception]:
        self.batches.append(items)
        await asyncio.sleep(self.delay)
        return [ValueError(f"bad {i}") if i < 0 else i * 10 for i in items]


async def test_calls_of_one_turn_share_one_batch_and_get_their_own_outcomes() -> None:
    call = Recorder()
    batcher = Batcher(call, max_batch=64)
    outcomes = await asyncio.gather(*(batcher.submit(i) for i in (1, -2, 3)),
                                    return_exceptions=True)  # fmt: skip
    assert call.batches == [[1, -2, 3]]
    assert outcomes[0] == 10
    assert outcomes[2] == 30
    assert isinstance(outcomes[1], ValueError)
    assert str(outcomes[1]) == "bad -2"


async def test_calls_of_later_turns_go_in_later_batches() -> None:
    call = Recorder(delay=0.01)
    batcher = Batcher(call, max_batch=64)
    first = asyncio.ensure_future(batcher.submit(1))
    await asyncio.sleep(0)  # the first batch leaves at the end of this turn...
    await asyncio.sleep(0)
    second = await batcher.submit(2)  # ...so this one does not wait for company
    assert (await first, second) == (10, 20)
    assert call.batches == [[1], [2]]


async def test_a_batch_holds_at_most_max_batch_items() -> None:
    call = Recorder()
    batcher = Batcher(call, max_batch=4)
    assert await asyncio.gather(*(batcher.submit(i) for i in range(10))) == [
        i * 10 for i in range(10)
    ]
    assert [len(batch) for batch in call.batches] == [4, 4, 2]


async def test_a_failed_batch_fails_every_caller_in_it() -> None:
    async def broken(items: list[int]) -> list[int]:
        raise ConnectionError("down")

    batcher = Batcher(broken, max_batch=8)
    outcomes = await asyncio.gather(*(batcher.submit(i) for i in range(3)),
                                    return_exceptions=True)  # fmt: skip
    assert all(isinstance(o, ConnectionError) for o in outcomes)


async def test_a_wrong_number_of_outcomes_is_an_error_for_all_not_a_hang() -> None:
    async def short(items: list[int]) -> list[int]:
        return items[:-1]

    batcher = Batcher(short, max_batch=8)
    outcomes = await asyncio.wait_for(
        asyncio.gather(*(batcher.submit(i) for i in range(3)), return_exceptions=True), 1
    )
    assert all(isinstance(o, RuntimeError) for o in outcomes)


async def test_a_cancelled_caller_does_not_cancel_the_batch_of_the_others() -> None:
    call = Recorder(delay=0.02)
    batcher = Batcher(call, max_batch=8)
    leaving = asyncio.ensure_future(batcher.submit(1))
    staying = asyncio.ensure_future(batcher.submit(2))
    await asyncio.sleep(0.005)
    leaving.cancel()
    with pytest.raises(asyncio.CancelledError):
        await leaving
    assert await staying == 20
    assert call.batches == [[1, 2]]
