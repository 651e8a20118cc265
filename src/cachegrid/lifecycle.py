"""Starting and stopping under cancellation: the two helpers every life cycle here uses.

Owns: ``uncancellable`` (cleanup that must finish: revoking a lease, closing connections)
and ``unless_stopped`` (a start-up that may wait long, ended by a stop request).

Invariants:
- ``uncancellable(work)`` runs ``work`` to its end even if its caller is cancelled
  meanwhile, then passes the cancellation on: a node cancelled while stopping still
  revokes its lease, so others take over at once instead of after the TTL.
- ``unless_stopped(work, stop)`` cancels ``work`` once ``stop`` is set, and says whether
  ``work`` finished; its errors propagate.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any


async def uncancellable(work: Coroutine[Any, Any, None]) -> None:
    task = asyncio.ensure_future(work)
    try:
        await asyncio.shield(task)
    except asyncio.CancelledError:
        await task
        raise


async def unless_stopped(work: Coroutine[Any, Any, None], stop: asyncio.Event) -> bool:
    task = asyncio.ensure_future(work)
    stopping = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({task, stopping}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopping.cancel()
        if not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    if task.cancelled():
        return False
    task.result()
    return True
