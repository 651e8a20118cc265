"""Per-key event rates in bounded memory: which keys are read (or written) often.

Owns: ``RateCounter``, counting events per key over two fixed windows (the current one and
the one before), so a key's rate is known without a dict of every key ever seen.

Invariants:
- At most ``capacity`` keys are counted per window (2 x capacity in all); a key first seen
  once the current window is full is not counted in it (it reads as cold until the next
  window). So memory is bounded, and a key's rate is never over-estimated.
- ``rate`` blends the previous window's count, weighted by how much of it still lies
  within one window of ``now``, with the current count: a sliding-window estimate.
- Pure: time is an argument, no I/O, no asyncio. Not thread-safe.
"""

from __future__ import annotations


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
