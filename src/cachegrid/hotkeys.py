"""Per-key event rates in bounded memory: which keys are read (or written) often.

Owns: ``RateCounter``, counting events per key over two fixed windows (the current one and
the one before), so a key's rate is known without a dict of every key ever seen; and
``TopKeys``, the most frequent keys of the last minute or so (operators' hot-key
statistics), from a Misra-Gries sketch.

Invariants of ``RateCounter``:
- At most ``capacity`` keys are counted per window (2 x capacity in all); a key first seen
  once the current window is full is not counted in it (it reads as cold until the next
  window). So memory is bounded, and a key's rate is never over-estimated.
- ``rate`` blends the previous window's count, weighted by how much of it still lies
  within one window of ``now``, with the current count: a sliding-window estimate.
- Pure: time is an argument, no I/O, no asyncio. Not thread-safe.
"""

from __future__ import annotations

import heapq
import time
from collections.abc import Callable
from dataclasses import dataclass


class RateCounter:
    """Events per second of each key, over the last ``window`` seconds."""

    __slots__ = ("_current", "_previous", "_started", "capacity", "window")

    def __init__(self, capacity: int = 4096, window: float = 1.0) -> None:
        self.capacity = capacity
        self.window = window
        self._current: dict[str, int] = {}
        self._previous: dict[str, int] = {}
        self._started = 0.0  # when the current window began

    def __repr__(self) -> str:
        return f"<RateCounter keys={len(self._current)}+{len(self._previous)}>"

    def __len__(self) -> int:
        return len(self._current) + len(self._previous)

    def observe(self, key: str, now: float) -> float:
        """Count one event of ``key`` at ``now``; its rate, this event included."""
        self._roll(now)
        count = self._current.get(key)
        if count is not None:
            self._current[key] = count + 1
        elif len(self._current) < self.capacity:
            self._current[key] = 1
        return self.rate(key, now)

    def rate(self, key: str, now: float) -> float:
        """Events per second of ``key`` over the last window (0 for an uncounted key)."""
        self._roll(now)
        elapsed = min(max(now - self._started, 0.0), self.window) / self.window
        blended = self._previous.get(key, 0) * (1.0 - elapsed) + self._current.get(key, 0)
        return blended / self.window

    def _roll(self, now: float) -> None:
        if now - self._started < self.window:
            return
        if now - self._started < 2 * self.window:
            self._previous = self._current
            self._started += self.window
        else:  # idle for more than a window: nothing recent to remember
            self._previous = {}
            self._started = now
        self._current = {}


@dataclass(frozen=True, slots=True)
class Frequent:
    """One key of a ``TopKeys`` report: it was counted at least ``count`` times in the
    last ``seconds`` seconds, and at most ``count + error``."""

    key: str
    count: int
    error: int


class TopKeys:
    """The most frequent keys of a stream of events, over the last one to two windows.

    A Misra-Gries sketch per window: a key's count, less the counts pruned away. When more
    than ``2 x capacity`` keys are counted, the ``capacity + 1``-th largest count is taken
    from every count and the keys left at zero are dropped (what was taken adds to
    ``error``). So:

    - memory is bounded: at most ``2 x capacity`` keys per window, two windows;
    - a count is never over-estimated, and under-estimated by at most ``error``, which is
      at most events / (capacity + 1) of its window: a key more frequent than that is
      always listed;
    - adding is a dict update; pruning costs O(keys) once per ``capacity`` new keys.

    Windows roll by the clock, checked every ``CHECK_EVERY`` events and on each report.
    """

    CHECK_EVERY = 1024

    def __init__(self, capacity: int = 1024, window: float = 60.0,
                 clock: Callable[[], float] = time.monotonic) -> None:  # fmt: skip
        self.capacity, self.window, self._clock = capacity, window, clock
        self._current: dict[str, int] = {}
        self._previous: dict[str, int] = {}
        self._error = self._previous_error = 0
        self._started = clock()
        self._previous_started: float | None = None
        self._events = 0

    def __repr__(self) -> str:
        return f"<TopKeys keys={len(self._current)}+{len(self._previous)}>"

    def add(self, key: str) -> None:
        """Count one event of ``key``."""
        counts = self._current
        counts[key] = counts.get(key, 0) + 1
        self._events += 1
        if len(counts) > 2 * self.capacity:
            self._prune()
        if not self._events % self.CHECK_EVERY:
            self._roll(self._clock())

    def top(self, limit: int) -> tuple[float, list[Frequent]]:
        """The seconds covered, and the ``limit`` most frequent keys in them."""
        now = self._clock()
        self._roll(now)
        merged = dict(self._previous)
        for key, count in self._current.items():
            merged[key] = merged.get(key, 0) + count
        error = self._error + self._previous_error
        since = self._previous_started if self._previous_started is not None else self._started
        best = heapq.nlargest(limit, merged.items(), key=lambda item: item[1])
        return now - since, [Frequent(key, count, error) for key, count in best]

    def _prune(self) -> None:
        counts = self._current
        cut = heapq.nlargest(self.capacity + 1, counts.values())[-1]
        self._current = {key: count - cut for key, count in counts.items() if count > cut}
        self._error += cut

    def _roll(self, now: float) -> None:
        if now - self._started < self.window:
            return
        if now - self._started < 2 * self.window:
            self._previous, self._previous_error = self._current, self._error
            self._previous_started = self._started
            self._started += self.window
        else:  # quiet for more than a window: nothing recent to remember
            self._previous, self._previous_error, self._previous_started = {}, 0, None
            self._started = now
        self._current, self._error = {}, 0


@dataclass(frozen=True, slots=True)
class KeyTraffic:
    """The keys clients read and write most through one node (GET /admin/hotkeys)."""

    reads: TopKeys
    writes: TopKeys

    def report(self, limit: int) -> dict[str, object]:
        return {
            "reads": _listed(*self.reads.top(limit)),
            "writes": _listed(*self.writes.top(limit)),
        }


def _listed(seconds: float, keys: list[Frequent]) -> dict[str, object]:
    return {
        "seconds": round(seconds, 3),
        "keys": [{"key": f.key, "count": f.count, "error": f.error,
                  "per_second": round(f.count / seconds, 3) if seconds > 0 else None}
                 for f in keys],
    }  # fmt: skip
