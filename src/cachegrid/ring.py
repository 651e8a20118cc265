"""The consistent-hash ring: which member owns each key, as a pure function of the members.

Owns: the placement of virtual nodes, the key -> owner lookup, and the stable hash both the
node and the Python client use (one code path, so they always agree).

Invariants:
- A ``Ring`` is immutable. A new member set makes a new ring, swapped in whole; nobody ever
  sees a half-updated ring.
- The owner of a key depends only on the key and the set of (member id, weight) pairs: not
  on insertion order, addresses, incarnations, the process, or the platform.
- A member of weight w has w * vnodes points; weight 0 means it owns nothing (drained).
- Adding or removing one member moves only the keys gained or lost by that member.
- Pure: no I/O, no asyncio, no clock.
"""

from __future__ import annotations

import bisect
import functools
import hashlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from cachegrid.errors import Unavailable

DEFAULT_VNODES = 128
OWNER_MEMO = 16384  # lookups remembered per ring

HashFn = Callable[[bytes], int]


def stable_hash(data: bytes) -> int:
    """64-bit BLAKE2b: the same on every process and platform (unlike ``hash()``)."""
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "big")


@dataclass(frozen=True, slots=True)
class Member:
    """A ring member as the ring and its users see it."""

    node_id: str
    addr: str  # host:port of its HTTP API
    weight: int = 1
    # Which registration of the node this is (read leases belong to one); not part of
    # the member's identity on the ring.
    incarnation: str = field(default="", compare=False)


class Ring:
    """Members placed on a hash circle; a key belongs to the first point at or after it."""

    def __init__(
        self,
        members: Mapping[str, Member] | list[Member],
        *,
        epoch: int = 0,
        vnodes: int = DEFAULT_VNODES,
        hash_fn: HashFn = stable_hash,
    ) -> None:
        if isinstance(members, Mapping):
            members = list(members.values())
        self.members: Mapping[str, Member] = {m.node_id: m for m in members}
        self.epoch = epoch
        self.vnodes = vnodes
        self._hash = hash_fn
        points = sorted(
            (hash_fn(f"{m.node_id}\0{i}".encode()), m.node_id)
            for m in self.members.values()
            for i in range(m.weight * vnodes)
        )
        # Parallel arrays: bisect on the hashes, read the owner at the same index. On a hash
        # collision the sort above orders by node id, so the tie breaks the same everywhere.
        self._hashes = [h for h, _ in points]
        self._owners = [node_id for _, node_id in points]
        # Memo of recent lookups, one per ring: a new ring starts empty, so it never
        # answers from another placement. Hashing dominates a lookup; hot keys repeat.
        memo = functools.lru_cache(maxsize=OWNER_MEMO)(self._owner)
        self.owner = memo  # type: ignore[method-assign]  # the memo stands in for the method

    def __repr__(self) -> str:
        return f"<Ring epoch={self.epoch} members={len(self.members)} points={len(self._hashes)}>"

    def owner(self, key: str) -> str:
        """The id of the member owning ``key``; Unavailable when no member has weight."""
        return self._owner(key)

    def _owner(self, key: str) -> str:
        if not self._hashes:
            raise Unavailable("the ring has no member with weight > 0")
        index = bisect.bisect_left(self._hashes, self._hash(key.encode()))
        if index == len(self._hashes):
            index = 0  # past the last point: wrap around to the first
        return self._owners[index]

    def owner_member(self, key: str) -> Member:
        return self.members[self.owner(key)]

    def shares(self) -> dict[str, float]:
        """Each member's fraction of the hash circle (what it owns of a uniform keyspace)."""
        if not self._hashes:
            return {}
        span = 1 << 64
        shares: dict[str, float] = {}
        previous = self._hashes[-1] - span  # the arc before the first point wraps around
        for point, owner in zip(self._hashes, self._owners, strict=True):
            shares[owner] = shares.get(owner, 0.0) + (point - previous) / span
            previous = point
        return shares

    def describe(self, *, with_shares: bool = False) -> dict[str, object]:
        """The JSON shape of ``GET /v1/ring``; ``with_shares`` adds each member's share of
        the keyspace (``GET /admin/ring``)."""
        shares = self.shares() if with_shares else {}
        members: list[dict[str, object]] = []
        for m in sorted(self.members.values(), key=lambda m: m.node_id):
            row: dict[str, object] = {"id": m.node_id, "addr": m.addr, "weight": m.weight}
            if with_shares:
                row["share"] = round(shares.get(m.node_id, 0.0), 4)
            members.append(row)
        return {"epoch": self.epoch, "vnodes": self.vnodes, "members": members}

    @classmethod
    def from_description(cls, body: Mapping[str, Any]) -> Ring:
        """The ring ``describe`` produced (the client builds its ring from GET /v1/ring)."""
        members = [Member(str(m["id"]), str(m["addr"]), int(m["weight"])) for m in body["members"]]
        return cls(members, epoch=int(body["epoch"]), vnodes=int(body["vnodes"]))
