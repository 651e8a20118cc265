"""The membership rules of S1, as pure functions: which epoch a ring gets, when a ring may
be activated, when a node has lost its id, when the watch has stalled.

Owns: the decisions coordinator.py takes, apart from the etcd I/O that feeds them, so each
is unit-tested on its own (tests/unit/test_membership.py). No I/O, no clock (times are
arguments).

Invariants:
- Epoch rule: a ring's epoch is an etcd revision >= every put that built its member set.
  From the watch, the change's own revision. From a snapshot, the newest member record's
  mod_revision if that is newer than the current ring's epoch; or, when members vanished
  while nobody watched (no put dates the new set), the snapshot's revision; else the ring
  stands. A peer that applied every change up to that epoch knows every member of the
  set (and may know extra members deleted since, which only takes keys from it).
- Activation: a ring of epoch E may be activated only if our own member key is attached
  to our own lease, and every *other* live member acked E or later. A member whose key is
  gone has no live lease, so its local deadline has passed and it serves nothing.
- Identity: a node whose member key is gone, or attached to another lease, has lost its
  id — but only once it created that key: a session still registering has none yet.
- Stall: a written probe (our own ack) not seen on the watch ``stall_after`` seconds later
  means the watch stalled.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

import orjson

from cachegrid.coord.keyspace import Keyspace
from cachegrid.ring import Member


def parse_member(node_id: str, value: bytes) -> Member | None:
    """The member a ``members/<id>`` record describes; None if it is malformed."""
    try:
        record = orjson.loads(value)
        return Member(node_id, str(record["addr"]), int(record["weight"]),
                      str(record.get("incarnation", "")))  # fmt: skip
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
        return None


def parse_weight(raw: bytes) -> int | None:
    """An operator's weight; None if malformed or negative."""
    try:
        weight = int(raw)
    except ValueError:
        return None
    return weight if weight >= 0 else None


def snapshot_epoch(current: int | None, newest_put: int, members_changed: bool,
                   snapshot_revision: int) -> int | None:  # fmt: skip
    """The epoch of the ring a snapshot gives (None: keep the current ring).

    ``current`` is the current ring's epoch (None: no ring yet); ``newest_put`` the newest
    mod_revision among the member records read; ``members_changed`` whether the set read
    differs from the one applied before."""
    if current is None or newest_put > current:
        return newest_put
    if members_changed:
        return snapshot_revision
    return None


class Activation(enum.Enum):
    YES = "yes"
    NOT_YET = "not_yet"  # some other live member has not acked the epoch
    NOT_OURS = "not_ours"  # our member key is gone or held by another lease: serve nothing


def may_activate(
    members: Mapping[str, int], acks: Mapping[str, int], node_id: str, lease: int, epoch: int,
    newest_change: int = 0,
) -> Activation:  # fmt: skip
    """The activation decision of S1, from one linearizable read of etcd.

    ``members`` maps each live member's id to the lease its member key is attached to;
    ``acks`` each node's acked revision; ``lease`` is ours (0 while we hold no member key);
    ``newest_change`` the newest mod_revision among the member keys read.

    An ack >= epoch means "applied a ring at least that new and released what it does not
    own there" — not necessarily ring ``epoch`` itself: a node that re-snapshots applies
    only the newest membership and skips the rings in between. So a ring is activated only
    while it is still the newest one (no member key changed since): else a key could move
    to us in ``epoch`` and back to the acking node in the ring it jumped to, and both would
    serve it. (Deleting a member key moves only that member's keys: it cannot do this.)
    """
    if members.get(node_id) != lease:
        return Activation.NOT_OURS
    if newest_change > epoch:
        return Activation.NOT_YET  # a newer ring is coming: activate that one
    others = (member for member in members if member != node_id)
    return Activation.YES if all(acks.get(m, 0) >= epoch for m in others) else Activation.NOT_YET


class Item(Protocol):
    """One key read from etcd (coord/etcd.py's ``KeyValue``): what the rules need of it."""

    @property
    def key(self) -> bytes: ...

    @property
    def value(self) -> bytes: ...

    @property
    def lease(self) -> int: ...

    @property
    def mod_revision(self) -> int: ...


def newest_member_change(items: Iterable[Item], keys: Keyspace) -> int:
    """The newest mod_revision among the member keys of one read of the prefix."""
    return max((i.mod_revision for i in items if i.key.startswith(keys.members)), default=0)


def members_and_acks(
    items: Iterable[Item], keys: Keyspace
) -> tuple[dict[str, int], dict[str, int]]:
    """From one read of the prefix: each member's lease, and each node's acked revision
    (a malformed ack counts as none)."""
    members: dict[str, int] = {}
    acks: dict[str, int] = {}
    for item in items:
        if item.key.startswith(keys.members):
            members[Keyspace.name_under(item.key, keys.members)] = item.lease
        elif item.key.startswith(keys.acks):
            try:
                acks[Keyspace.name_under(item.key, keys.acks)] = int(item.value)
            except ValueError:
                continue
    return members, acks


def identity_lost(registered: bool, our_lease: int, key_lease: int | None) -> str | None:
    """Why we no longer hold our id, or None if we do (or hold no member key yet).

    ``registered``: the current session created our member key; ``key_lease``: the lease
    that key is attached to now (None: gone)."""
    if not registered or key_lease == our_lease:
        return None
    shown = "gone" if key_lease is None else f"attached to lease {key_lease:x}"
    return f"our member key is {shown}"


@dataclass
class Probes:
    """Probe revisions written and not yet seen on the watch, with when they were written."""

    stall_after: float
    unseen: list[tuple[int, float]] = field(default_factory=list)

    def written(self, revision: int, at: float) -> None:
        self.unseen.append((revision, at))

    def stalled(self, applied_revision: int, now: float) -> bool:
        """Forget the probes the watch delivered; True if the oldest left is overdue (then
        all are forgotten: the caller re-snapshots)."""
        self.unseen = [p for p in self.unseen if p[0] > applied_revision]
        if self.unseen and now - self.unseen[0][1] > self.stall_after:
            self.unseen = []
            return True
        return False
