"""Warnings that repeat are logged with backoff, not once per occurrence.

Owns: ``Throttle``, which decides whether a warning of a given kind is logged now, and how
many of that kind were held back since the last one logged. A broken watch or an etcd
outage otherwise logs several lines a second for as long as it lasts.

Invariants:
- The first warning of a kind is always logged; after that, the gap between two logged
  ones of the same kind doubles, from ``first_gap`` up to ``max_gap`` seconds, and falls
  back to ``first_gap`` once the kind has been quiet for ``max_gap``.
- Nothing is lost silently: the next warning logged says how many were held back.
- Bounded: at most ``max_kinds`` kinds are remembered (the oldest are forgotten).
- Pure: time is an argument; no I/O. Not thread-safe (one event loop).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class _Kind:
    next_at: float  # when a warning of this kind may be logged again
    gap: float  # the current gap between two logged warnings
    held: int = 0  # warnings held back since the last one logged


class Throttle:
    def __init__(self, first_gap: float = 1.0, max_gap: float = 60.0,
                 max_kinds: int = 256) -> None:  # fmt: skip
        self.first_gap, self.max_gap, self.max_kinds = first_gap, max_gap, max_kinds
        self._kinds: dict[str, _Kind] = {}

    def __repr__(self) -> str:
        return f"<Throttle kinds={len(self._kinds)}>"

    def allow(self, kind: str, now: float) -> int | None:
        """None to hold this warning back; else log it, with the returned count of those
        held back since the last one of its kind."""
        state = self._kinds.get(kind)
        if state is None or now >= state.next_at + self.max_gap:  # new, or quiet long
            if state is None and len(self._kinds) >= self.max_kinds:
                del self._kinds[next(iter(self._kinds))]
            self._kinds[kind] = _Kind(now + self.first_gap, self.first_gap)
            return 0 if state is None else state.held
        if now < state.next_at:
            state.held += 1
            return None
        held, state.held = state.held, 0
        state.gap = min(2 * state.gap, self.max_gap)
        state.next_at = now + state.gap
        return held
