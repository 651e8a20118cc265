"""The inconsistency detector: re-reads a sample of cache hits from the store.

Owns: sampling hits (one in ``every``), a bounded pace (at most ``per_second`` checks
whatever the load), and the verdict "this hit was stale", counted in
``cachegrid_stale_hits`` and logged. It is a tripwire for bugs, not a correctness
mechanism: linearizability rests on S1 and S2 (owner.py), never on it.

Invariants:
- Sampling never waits and never grows: one slot, and a sample that finds it taken is
  dropped (a hit stays free of I/O and awaits).
- A hit is reported stale only when that is certain: no write of the key was in flight
  during the store read, the cached entry did not change, the node still serves the key,
  and the store holds a newer version.
- ``start``/``stop`` pair: after ``stop`` returns, no check runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from cachegrid.errors import StoreUnavailable
from cachegrid.localcache import LocalCache, entry_version
from cachegrid.metrics import Metrics
from cachegrid.serving.ports import OwnerView, Store
from cachegrid.version import ZERO

log = logging.getLogger(__name__)


class StaleDetector:
    def __init__(
        self,
        cache: LocalCache,
        store: Store,
        owner: OwnerView,
        writing: Callable[[str], bool],
        metrics: Metrics,
        *,
        every: int = 100,
        per_second: float = 20.0,
    ) -> None:
        self.cache = cache
        self.store = store
        self.owner = owner
        self.writing = writing  # True while a write of the key is in flight or queued
        self.metrics = metrics
        self.every = every  # re-read one hit in this many (0: never)
        self.pause = 1.0 / per_second
        self._hits = 0
        self._samples: asyncio.Queue[str] = asyncio.Queue(maxsize=1)
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self.every > 0 and self._task is None:
            self._task = asyncio.create_task(self._run(), name="stale-detector")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def sample(self, key: str) -> None:
        """Called on every hit; never waits."""
        if not self.every:
            return
        self._hits += 1
        if self._hits % self.every == 0:
            with contextlib.suppress(asyncio.QueueFull):
                self._samples.put_nowait(key)

    async def _run(self) -> None:
        while True:
            key = await self._samples.get()
            with contextlib.suppress(StoreUnavailable):
                if await self.is_stale(key):
                    self.metrics.stale_hits.inc()
                    log.error("stale cache hit detected for %r", key,
                              extra={"event": "stale_hit", "key": key[:200]})  # fmt: skip
            await asyncio.sleep(self.pause)

    async def is_stale(self, key: str) -> bool:
        """True only if the cached entry of ``key`` is certainly older than the store."""
        before = self.cache.get(key)
        if before is None or self.writing(key):
            return False
        self.metrics.stale_checks.inc()
        record = await self.store.read(key)
        unchanged = self.cache.get(key) is before and not self.writing(key)
        stored = record.version if record is not None else ZERO
        return unchanged and self.owner.can_serve(key) and stored > entry_version(before)
