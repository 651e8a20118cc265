"""Publishing read-lease drop records into etcd, where every node's watch delivers them.

Owns: the record keys of one node (keyspace.py ``inval/<node-id>/<id>``) and the rotating
lease they live under. It does not interpret the records (serving/leases.py does).

Invariants:
- Records expire by themselves: each is put under the current rotating lease, which is
  replaced every ``ttl / 2`` seconds, so a record lives between ttl/2 and ttl seconds and
  records never accumulate (one lease per period, not one per record).
- A failed ``publish`` raises (EtcdUnavailable, EtcdError): the caller cannot know
  whether the record was written, and must wait its holders out.
"""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Callable

from cachegrid.clock import now
from cachegrid.coord.etcd import Etcd
from cachegrid.coord.keyspace import Keyspace

# Seconds a record lives at most.
RECORD_TTL = 10


class Publisher:
    def __init__(self, etcd: Etcd, prefix: str, node_id: str, *, ttl: int = RECORD_TTL,
                 clock: Callable[[], float] = now) -> None:  # fmt: skip
        self._etcd = etcd
        self._keys = Keyspace.of(prefix)
        self._node_id = node_id
        self._ttl = ttl
        self._clock = clock
        self._nonce = uuid.uuid4().hex[:12]
        self._ids = itertools.count(1)
        self._lease = 0
        self._rotate_at = 0.0

    def __repr__(self) -> str:
        return f"<Publisher {self._node_id} lease={self._lease:x}>"

    async def publish(self, record: bytes) -> None:
        lease = await self._current_lease()
        record_id = f"{self._nonce}-{next(self._ids)}"
        await self._etcd.put(self._keys.invalidation(self._node_id, record_id), record,
                             lease=lease)  # fmt: skip

    async def _current_lease(self) -> int:
        if not self._lease or self._clock() >= self._rotate_at:
            # Two publishers racing here may both grant: harmless, the spare one expires.
            granted = await self._etcd.grant(self._ttl)
            self._lease, self._rotate_at = granted.id, self._clock() + self._ttl / 2
        return self._lease
