"""Whether a replica may count toward a read quorum: the rule against amnesia.

ABD tolerates replicas that crash; it does not tolerate replicas that come back having
forgotten what they acknowledged. Two majorities intersect, but if the replica in the
intersection forgot the write, a read majority can miss an acknowledged write.

Owns: the marker that vouches for a replica, the verdict on a replica from what it says of
itself, and the decision of how replicas in doubt become trusted again. Pure: no I/O.

The marker is a Redis key on the replica itself, ``MARKER``, written only by ``certify``
after the replica was brought up to date with a majority of trusted replicas:
- ``<run_id>``: vouches for the replica while the Redis process that wrote it runs. A
  restart (new run_id) voids it, since with ``appendfsync everysec`` the last second of
  acknowledged writes may be gone.
- ``always``: vouches across restarts, written only when the replica fsyncs every write
  (``appendfsync always``, checked when certifying, and again on every connection).
A replica restarted empty has no marker at all. So:

Invariants:
- A replica is trusted only if its marker vouches for the process answering now.
- A replica in doubt still takes writes (its acknowledgements count toward write
  majorities), but its read answers count toward no read quorum.
- In doubt, a replica becomes trusted only by ``certify`` after a repair read every key of
  a majority of trusted replicas (so every acknowledged write, held by a majority, met the
  repair), or — when no majority can ever be trusted again (a whole-cluster restart) — after
  every reachable replica, a majority at least, was reconciled with the others.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

# On each replica: the marker, and the lock that keeps nodes from repairing one replica at
# once. Outside the user keys' prefix (``cg:``), so scans of user keys never meet them.
MARKER = b"cg-meta:trust"
REPAIR_LOCK = b"cg-meta:repair"
DURABLE = b"always"


class Trust(enum.Enum):
    UNKNOWN = "unknown"  # never reached
    TRUSTED = "trusted"
    IN_DOUBT = "in_doubt"


def verdict(marker: bytes | None, run_id: bytes, fsync_always: bool) -> Trust:
    """What a replica's marker says of the process that answered."""
    if marker is None:
        return Trust.IN_DOUBT  # restarted empty, or never certified
    if marker == run_id or (marker == DURABLE and fsync_always):
        return Trust.TRUSTED
    return Trust.IN_DOUBT


def marker_for(run_id: bytes, fsync_always: bool) -> bytes:
    """The marker ``certify`` writes for a replica running as ``run_id``."""
    return DURABLE if fsync_always else run_id


class Mode(enum.Enum):
    NONE = "none"  # nothing in doubt
    REPAIR = "repair"  # sources: the trusted replicas, a majority of them
    RECONCILE = "reconcile"  # no majority can become trusted: sources are all reachable
    WAIT = "wait"  # too few trusted now, but replicas not known to be in doubt may be


@dataclass(frozen=True)
class Plan:
    mode: Mode
    targets: tuple[int, ...] = ()  # indexes of the replicas to certify


def plan(trusts: list[Trust], majority: int) -> Plan:
    """How the replicas in doubt become trusted again, from every replica's state."""
    doubt = tuple(i for i, trust in enumerate(trusts) if trust is Trust.IN_DOUBT)
    if not doubt:
        return Plan(Mode.NONE)
    trusted = sum(trust is Trust.TRUSTED for trust in trusts)
    if trusted >= majority:
        return Plan(Mode.REPAIR, doubt)
    if len(trusts) - len(doubt) < majority:
        # Even if every replica not known to be in doubt came back trusted, they would
        # not make a majority: only reconciling the replicas in doubt can end this.
        return Plan(Mode.RECONCILE, doubt)
    return Plan(Mode.WAIT)
