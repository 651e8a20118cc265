"""How a node logs: JSON lines or text, each line with the request it served, and warnings
that repeat logged with backoff.

Owns: ``configure`` (the root logger of ``cachegrid node``: one stderr handler, JSON lines
for log collectors or text for a terminal, every line naming the node, and the request id
of the request being served when there is one) and ``Throttle``, which decides whether a
warning of a given kind is logged now, and how many of that kind were held back since the
last one logged. A broken watch or an etcd outage otherwise logs several lines a second
for as long as it lasts.

Structured fields: code that logs an event passes them as ``extra`` (``event`` names the
kind of line: ``ring_applied``, ``member_joined``, ``admin``, ``access``...); in JSON they
are members of the line, in text the message already says them.

Invariants of ``Throttle``:
- The first warning of a kind is always logged; after that, the gap between two logged
  ones of the same kind doubles, from ``first_gap`` up to ``max_gap`` seconds, and falls
  back to ``first_gap`` once the kind has been quiet for ``max_gap``.
- Nothing is lost silently: the next warning logged says how many were held back.
- Bounded: at most ``max_kinds`` kinds are remembered (the oldest are forgotten).
- Pure: time is an argument; no I/O. Not thread-safe (one event loop).
"""

from __future__ import annotations

import logging
import sys
import time
from dataclasses import dataclass
from typing import Literal

from pythonjsonlogger.json import JsonFormatter

from cachegrid import requestids

LogFormat = Literal["auto", "json", "text"]
TEXT = "%(asctime)s %(levelname)s %(name)s %(message)s"


def _with_request_id(record: logging.LogRecord) -> bool:
    """A filter that names the request being served, if it has an id (never makes one)."""
    if not hasattr(record, "request_id"):
        request_id = requestids.known()
        if request_id is not None:
            record.request_id = request_id
    return True


def configure(level: str, log_format: LogFormat, node_id: str) -> None:
    """Send every log line to stderr: JSON lines (``json``), text (``text``), or ``auto``:
    text when stderr is a terminal, JSON otherwise (a service manager, a container)."""
    if log_format == "auto":
        log_format = "text" if sys.stderr.isatty() else "json"
    formatter: logging.Formatter
    if log_format == "json":
        formatter = JsonFormatter(
            "%(asctime)s %(levelname)s %(name)s %(message)s",
            rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
            static_fields={"node": node_id},
        )
    else:
        formatter = logging.Formatter(TEXT)
    # UTC, ISO 8601 with milliseconds: lines of several nodes sort together.
    formatter.converter = time.gmtime
    formatter.default_time_format = "%Y-%m-%dT%H:%M:%S"
    formatter.default_msec_format = "%s.%03dZ"
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter)
    handler.addFilter(_with_request_id)
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(level)


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
