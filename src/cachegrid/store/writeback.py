"""What a read learned from the replicas' answers, and which copies would bring them level.

Owns: choosing the newest record per key among answers, and listing the replicas that lag
behind it. Pure: no I/O. Used by the quorum's reads (ABD write-back) and by repairs.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from cachegrid.errors import ReplicaCorrupt
from cachegrid.store.record import Record
from cachegrid.version import ZERO, Version

R = TypeVar("R", bound=Hashable)  # a replica

# What one replica answered for a batch read: a record, a corrupt marker or None, per key.
Answer = Sequence[Record | ReplicaCorrupt | None]


def version_of(record: Record | ReplicaCorrupt | None) -> Version:
    """The version a reply stands for: absent and corrupt records rank below every write."""
    return record.version if isinstance(record, Record) else ZERO


@dataclass
class Plan(Generic[R]):
    """The latest record per key, how many answers hold it, and who lags behind it."""

    latest: dict[str, Record | None] = field(default_factory=dict)
    holders: dict[str, int] = field(default_factory=dict)
    behind: dict[R, list[tuple[str, Record]]] = field(default_factory=dict)


def plan_write_back(keys: Sequence[str], answers: Mapping[R, Answer], majority: int) -> Plan[R]:
    """From the replicas' answers, the latest record per key and the copies to write.

    Keys with fewer than ``majority`` decodable answers get no entry in ``latest``.
    """
    plan: Plan[R] = Plan()
    for index, key in enumerate(keys):
        replies = {replica: answer[index] for replica, answer in answers.items()}
        decodable = [reply for reply in replies.values() if not isinstance(reply, ReplicaCorrupt)]
        if len(decodable) < majority:
            continue
        latest = max(decodable, key=version_of)
        plan.latest[key] = latest
        plan.holders[key] = 0
        for replica, reply in replies.items():
            if latest is None or (
                not isinstance(reply, ReplicaCorrupt) and version_of(reply) >= latest.version
            ):
                plan.holders[key] += not isinstance(reply, ReplicaCorrupt)
            else:
                plan.behind.setdefault(replica, []).append((key, latest))
    return plan


def decodable(answers: Mapping[R, Answer], index: int) -> int:
    """How many answers hold a decodable reply (or None) for the key at ``index``."""
    return sum(not isinstance(answer[index], ReplicaCorrupt) for answer in answers.values())
