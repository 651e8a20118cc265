"""A node's lease in etcd, kept alive, and the local deadline that bounds its right to serve.

Owns: granting the lease, the keep-alive loop, the local lease deadline, and ``lost``.

Invariants:
- deadline = (monotonic time when the last successful keep-alive — or the grant — was
  *sent*) + granted TTL - margin. etcd expires a lease no sooner than TTL after it
  *received* the last keep-alive, which is after we sent it; so while the local clock runs
  no faster than etcd's (the margin covers rate drift), our deadline passes before etcd can
  expire the lease and let another node take over what we own.
- The deadline only moves forward, and never after it has passed: a session past its
  deadline is lost for good (``lost`` is set and stays set). The caller re-registers with a
  new session, as a new incarnation.
- One keep-alive is in flight at a time; the loop stops on ``close`` or when lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from cachegrid.clock import now
from cachegrid.coord.etcd import Etcd, EtcdError, EtcdUnavailable

log = logging.getLogger(__name__)


class Session:
    """One lease. Not reusable: after ``lost`` or ``close``, make a new Session."""

    def __init__(
        self,
        etcd: Etcd,
        ttl: int,
        *,
        margin: float,
        clock: Callable[[], float] = now,
    ) -> None:
        if margin >= ttl / 3:
            raise ValueError("the lease margin must be under a third of the TTL")
        self.ttl = ttl
        self.margin = margin
        self.lease_id = 0
        self.deadline = 0.0  # monotonic; serving is allowed strictly before it
        self.lost = asyncio.Event()
        self._etcd = etcd
        self._clock = clock
        self._loop: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        state = "lost" if self.lost.is_set() else f"slack={self.slack():.2f}s"
        return f"<Session lease={self.lease_id:x} ttl={self.ttl} {state}>"

    def alive(self) -> bool:
        """True while the local deadline has not passed (the hot path's check)."""
        return self._clock() < self.deadline and not self.lost.is_set()

    def slack(self) -> float:
        """Seconds left before the deadline (negative once past)."""
        return self.deadline - self._clock()

    async def start(self) -> None:
        """Grant the lease and start keeping it alive. EtcdUnavailable if etcd is down."""
        sent = self._clock()
        lease = await self._etcd.grant(self.ttl)
        self.lease_id = lease.id
        self._extend(sent, lease.ttl)
        self._loop = asyncio.create_task(self._keep_alive(), name=f"keepalive-{lease.id:x}")

    async def close(self, *, revoke: bool = True) -> None:
        """Stop keeping the lease alive and, if ``revoke``, end it now in etcd."""
        if self._loop is not None:
            self._loop.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop
        self.deadline = 0.0
        self.lost.set()
        if revoke and self.lease_id:
            # EtcdError: the lease already expired (etcd: "requested lease not found").
            with contextlib.suppress(EtcdUnavailable, EtcdError):
                await self._etcd.revoke(self.lease_id)

    async def _keep_alive(self) -> None:
        """Renew every TTL/3. A failed or slow renewal is retried at once, each try bounded
        by a third of the slack left (against the next endpoint when there are several),
        so one stuck call cannot use up a lease that still has time."""
        interval = self.ttl / 3
        retry = False
        while not self.lost.is_set():
            if not retry:
                # Renew every TTL/3, and sooner when the slack is short (a slow renewal):
                # sleeping until the deadline itself would give the lease up unasked.
                await asyncio.sleep(min(interval, max(self.slack() / 2, 0.0)))
            if self._clock() >= self.deadline:
                self._lose("the deadline passed without a successful keep-alive")
                return
            sent = self._clock()
            attempt = max(0.05, min(interval, self.slack() / 3))
            try:
                granted = await self._etcd.keep_alive(self.lease_id, per_try=attempt)
            except (EtcdUnavailable, EtcdError) as error:
                log.warning("keep-alive of lease %x failed: %s", self.lease_id, error.message)
                await asyncio.sleep(min(0.1, interval))
                retry = True
                continue
            retry = False
            if granted <= 0:
                self._lose("etcd says the lease expired")
                return
            self._extend(sent, granted)

    def abandon(self, reason: str) -> None:
        """Stop serving under this lease now (it is no longer a right to serve)."""
        if not self.lost.is_set():
            self._lose(reason)

    def _extend(self, sent: float, granted: int) -> None:
        if self._clock() >= self.deadline and self.deadline:
            # Too late: the lease may already be gone and our ranges served elsewhere.
            self._lose("a keep-alive succeeded only after the deadline")
            return
        self.deadline = max(self.deadline, sent + granted - self.margin)

    def _lose(self, reason: str) -> None:
        log.warning("lease %x lost: %s", self.lease_id, reason,
                    extra={"event": "lease_lost", "lease": f"{self.lease_id:x}"})  # fmt: skip
        self.deadline = 0.0
        self.lost.set()
