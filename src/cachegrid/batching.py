"""Micro-batching: calls made in the same turn of the event loop share one batch call.

Owns: the items submitted and not yet sent, and when they go: at the end of the loop turn
in which the first of them arrived. So batching adds no waiting — a lone call leaves as
soon as it otherwise would — while calls that arrive together (under load one turn starts
many requests) share one round trip. The node batches its store reads (fills) and writes
this way: a replica round costs about as much Python work for 8 keys as for 2.

Invariants:
- Every submitted item is sent in exactly one batch, and its caller gets the outcome the
  batch function gave for that item (a value, or an exception raised to that caller).
- A batch holds at most ``max_batch`` items; more go out as further batches, same turn.
- The batch runs in its own task: a caller that is cancelled stops waiting, but the batch
  (and the item, which may already be on the wire) goes on for the others.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

Item = TypeVar("Item")
Result = TypeVar("Result")

# One outcome per item, in order: its result, or the exception its caller should see.
BatchCall = Callable[[list[Item]], Awaitable[Sequence[Result | Exception]]]


class Batcher(Generic[Item, Result]):
    def __init__(self, call: BatchCall[Item, Result], *, max_batch: int) -> None:
        self._call = call
        self.max_batch = max_batch
        self._pending: list[tuple[Item, asyncio.Future[Result]]] = []
        # Batches sent and not yet answered: the loop keeps only weak references to tasks.
        self._running: set[asyncio.Task[None]] = set()

    def __len__(self) -> int:
        """Items waiting to be sent."""
        return len(self._pending)

    async def submit(self, item: Item) -> Result:
        """The outcome of ``item``, sent in a batch with the items submitted this turn."""
        loop = asyncio.get_running_loop()
        if not self._pending:
            loop.call_soon(self._send_pending)
        future: asyncio.Future[Result] = loop.create_future()
        self._pending.append((item, future))
        return await future

    def _send_pending(self) -> None:
        pending, self._pending = self._pending, []
        for start in range(0, len(pending), self.max_batch):
            task = asyncio.ensure_future(self._send(pending[start : start + self.max_batch]))
            self._running.add(task)
            task.add_done_callback(self._running.discard)

    async def _send(self, batch: list[tuple[Item, asyncio.Future[Result]]]) -> None:
        try:
            outcomes = list(await self._call([item for item, _ in batch]))
            if len(outcomes) != len(batch):
                raise RuntimeError(f"bug: {len(outcomes)} outcomes for {len(batch)} items")
        except asyncio.CancelledError:
            for _, future in batch:
                future.cancel()
            raise
        except Exception as error:  # the whole batch failed: each caller sees why
            outcomes = [error] * len(batch)
        for (_, future), outcome in zip(batch, outcomes, strict=True):
            if future.done():  # its caller was cancelled and no longer waits
                continue
            if isinstance(outcome, Exception):
                future.set_exception(outcome)
            else:
                future.set_result(outcome)
