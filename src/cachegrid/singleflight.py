"""Single-flight: concurrent loads of one key share one call.

Owns: the map of loads in flight. The load runs in its own task, so a caller that is
cancelled (a client that went away) does not cancel the load the others wait on; each
caller awaits it through ``asyncio.shield``.

Invariant: at most one load per key is in flight; it is forgotten the moment it finishes,
so a load that starts later (after a write, say) is a new call. Knows nothing of caches.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class Group(Generic[T]):
    def __init__(self) -> None:
        self._calls: dict[str, asyncio.Task[T]] = {}  # key -> its load in flight

    def __len__(self) -> int:
        return len(self._calls)

    async def do(self, key: str, load: Callable[[], Awaitable[T]]) -> T:
        """The result of ``load()`` for ``key``, shared with every concurrent caller."""
        task = self._calls.get(key)
        if task is None:
            task = asyncio.ensure_future(load())
            self._calls[key] = task
            task.add_done_callback(lambda _: self._forget(key, task))
        return await asyncio.shield(task)

    def detach(self, key: str) -> None:
        """Callers from now on start a new load; those already waiting keep theirs.

        For a write of ``key``: a load that began before the write may return the old
        value, which is fine for readers concurrent with the write, not for later ones.
        """
        self._calls.pop(key, None)

    def detach_all(self) -> None:
        """``detach`` every key (ownership changed: no later caller may join a load that
        began under the old ownership)."""
        self._calls.clear()

    def _forget(self, key: str, task: asyncio.Task[T]) -> None:
        if self._calls.get(key) is task:
            del self._calls[key]
        if not task.cancelled():
            task.exception()  # retrieved here: every caller saw it through the shield
