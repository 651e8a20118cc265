"""Which keys this node may serve as active owner: the local half of invariant S1.

Owns: the rings this node has applied, and which of them it has activated.

Invariants (S1, at most one active owner per key, given every node keeps these):
- A key is *active* here only if this node owns it in the last activated ring and in every
  ring applied since. So the moment a ring that moves a key away is applied, the key stops
  being active, and it stays inactive until a later ring is activated — even if a ring in
  between gives it back. (Without this, an owner two epochs back could still be serving.)
- A ring is activated only by ``activate(epoch)`` for the newest applied ring, which the
  caller does only after a linearizable read showed every other live member acked an
  applied revision >= that epoch (membership.py's ``may_activate``).
- ``reset`` (the lease was lost) makes nothing active and forgets every ring.
- ``write_epoch`` is the etcd revision of the read that confirmed the last activation. A
  later owner of any key activates only after reading our later ack, so its write epoch is
  strictly greater: versions of one key rise across owners without any clock.
Pure and synchronous: no I/O, no clock.
"""

from __future__ import annotations

from cachegrid.ring import Ring

# Rings kept while activation lags. Past this, forget the activated ring (serve nothing
# until the next activation) rather than let the per-request check grow without bound.
MAX_PENDING = 16


class Ownership:
    def __init__(self, node_id: str) -> None:
        self.node_id = node_id
        # The last ring activated, then every ring applied after it, oldest first.
        self._activated: Ring | None = None
        self._pending: list[Ring] = []
        self.write_epoch = 0  # revision of the read that confirmed the last activation

    def __repr__(self) -> str:
        activated = self._activated.epoch if self._activated else None
        return f"<Ownership {self.node_id} activated={activated} pending={self.pending_epochs}>"

    @property
    def current(self) -> Ring | None:
        """The newest applied ring (what routing should follow)."""
        if self._pending:
            return self._pending[-1]
        return self._activated

    @property
    def activated_epoch(self) -> int | None:
        return self._activated.epoch if self._activated else None

    @property
    def pending_epochs(self) -> list[int]:
        return [ring.epoch for ring in self._pending]

    def needs_activation(self) -> int | None:
        """The epoch of the newest ring if it still awaits activation."""
        return self._pending[-1].epoch if self._pending else None

    def apply(self, ring: Ring) -> None:
        """A new membership state: from now on serve only what every ring since agrees on."""
        current = self.current
        if current is not None and ring.epoch <= current.epoch:
            raise ValueError(f"ring epoch {ring.epoch} is not after {current.epoch}")
        if len(self._pending) >= MAX_PENDING:
            self._activated = None
            self._pending = []
        self._pending.append(ring)

    def activate(self, epoch: int, confirmed_at: int) -> bool:
        """Activate the newest ring if its epoch is ``epoch``; False if a newer one came.

        ``confirmed_at`` is the revision of the linearizable read that found every ack.
        """
        if not self._pending or self._pending[-1].epoch != epoch:
            return False
        self._activated = self._pending[-1]
        self._pending = []
        self.write_epoch = confirmed_at
        return True

    def is_active_owner(self, key: str) -> bool:
        activated = self._activated
        if activated is None or activated.owner(key) != self.node_id:
            return False
        pending = self._pending  # (usually none: no generator made on every hit then)
        return not pending or all(ring.owner(key) == self.node_id for ring in pending)

    def is_owner(self, key: str) -> bool:
        """Owner under the newest ring, active or not (such requests wait, not forward)."""
        current = self.current
        return current is not None and current.owner(key) == self.node_id

    def reset(self) -> None:
        self._activated = None
        self._pending = []
        self.write_epoch = 0
