"""What the serving layer needs of the layers beside it, as protocols it owns.

Owns: ``Store`` (the register: store/quorum.py implements it), ``OwnerView`` (ownership
and the lease: coord/coordinator.py), ``Peers`` (requests to other nodes: http/peers.py)
and ``PeerAnswer``, a peer's answer as bytes. Nothing here imports aiohttp, redis or etcd:
the serving layer meets the concrete classes only in app.py, the composition root.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

from cachegrid.errors import CachegridError
from cachegrid.ring import Ring
from cachegrid.store.record import BatchRead, Record
from cachegrid.version import Version


class Store(Protocol):
    """A linearizable register per key.

    Failure behaviour: ``read``/``read_many`` raise (or report per key) ``StoreUnavailable``
    when no majority answered in time; retrying is safe. ``write`` raises ``StoreUnavailable``
    when the write was applied nowhere and ``WriteIndeterminate`` when it may have been;
    ``TooLarge``/``BadRequest`` before touching any replica. ``write_many`` reports the
    same per item, and sends the batch in one round per replica.
    """

    async def read(self, key: str) -> Record | None: ...

    async def read_many(self, keys: Iterable[str]) -> BatchRead: ...

    async def write(self, key: str, record: Record) -> Version: ...

    async def write_many(
        self, items: Sequence[tuple[str, Record]]
    ) -> list[Version | CachegridError]: ...


class OwnerView(Protocol):
    """Ownership as coordination decides it. None of these does I/O except
    ``wait_active``, which only waits."""

    @property
    def ring(self) -> Ring | None: ...

    def can_serve(self, key: str) -> bool: ...

    def lease_alive(self) -> bool:
        """True before the local lease deadline (and while coordination is healthy)."""
        ...

    async def wait_active(self, key: str, hold: float) -> bool: ...

    @property
    def write_epoch(self) -> int: ...


@dataclass(frozen=True, slots=True)
class PeerAnswer:
    """A peer's HTTP answer, whatever its status: the headers passed back, the body."""

    status: int
    headers: dict[str, str]
    body: bytes


class Peers(Protocol):
    """Requests to other nodes. ``Unavailable`` if one was certainly not applied (not
    sent, or a read), ``Indeterminate`` if a write may have been. A request is a read if
    its method is GET or HEAD, or if ``read`` says so (a batchGet is a POST that reads)."""

    async def forward(
        self,
        method: str,
        addr: str,
        path: str,
        *,
        hops: int,
        body: bytes = b"",
        headers: dict[str, str] | None = None,
        read: bool = False,
    ) -> PeerAnswer: ...
