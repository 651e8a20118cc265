"""Invariant S1 checked on the logs of coordination agents (tests/agents/coord_agent.py).

A node serves a sample key during [t_i, min(t_i+1, deadline_i)) when record i lists it as
active: record i holds until the next, and nothing is served past the local deadline it
states. S1 holds if no two nodes' serving intervals of one key overlap.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import orjson


@dataclass(frozen=True)
class Interval:
    node: str
    start: float
    end: float


def read_log(path: Path) -> list[dict]:
    lines = path.read_bytes().splitlines() if path.exists() else []
    return [orjson.loads(line) for line in lines if line.strip()]


def serving_intervals(node: str, records: list[dict], now: float) -> dict[int, list[Interval]]:
    """Per sample key index, the intervals in which ``node`` would have served it."""
    intervals: dict[int, list[Interval]] = {}
    for i, record in enumerate(records):
        following = records[i + 1]["t"] if i + 1 < len(records) else now
        end = min(following, record["deadline"])
        if end <= record["t"]:
            continue
        for key in record["active"]:
            spans = intervals.setdefault(key, [])
            if spans and spans[-1].end >= record["t"]:  # contiguous: extend
                spans[-1] = Interval(node, spans[-1].start, max(spans[-1].end, end))
            else:
                spans.append(Interval(node, record["t"], end))
    return intervals


def violations(logs: dict[str, list[dict]], now: float) -> list[str]:
    """Every overlap of two nodes' serving intervals for one key, described."""
    per_key: dict[int, list[Interval]] = {}
    for node, records in logs.items():
        for key, spans in serving_intervals(node, records, now).items():
            per_key.setdefault(key, []).extend(spans)
    found = []
    for key, spans in per_key.items():
        spans.sort(key=lambda span: span.start)
        latest: Interval | None = None
        for span in spans:
            if latest is not None and span.start < latest.end and span.node != latest.node:
                found.append(
                    f"key {key}: {latest.node} serves until {latest.end:.3f}, "
                    f"{span.node} from {span.start:.3f} ({latest.end - span.start:.3f}s overlap)"
                )
            if latest is None or span.end > latest.end:
                latest = span
    return found


def covered(logs: dict[str, list[dict]], keys: int) -> bool:
    """True if the latest records of the nodes together serve every sample key."""
    active: set[int] = set()
    for records in logs.values():
        if records:
            active.update(records[-1]["active"])
    return len(active) == keys


def first_covered(logs: dict[str, list[dict]], keys: int, after: float) -> float | None:
    """The first time after ``after`` at which the records then current, one per node,
    together serve every sample key (by the agents' own timestamps, not by when a test
    happened to look); None if that never happened."""
    current: dict[str, set[int]] = {}
    timeline = sorted((record["t"], node, record) for node, records in logs.items()
                      for record in records)  # fmt: skip
    for t, node, record in timeline:
        current[node] = set(record["active"]) if t < record["deadline"] else set()
        if t > after and len(set().union(*current.values())) == keys:
            return float(t)
    return None
