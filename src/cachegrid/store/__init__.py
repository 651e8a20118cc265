"""The backing store: a quorum-replicated, versioned register per key over Redis.

``Store`` is what the node needs from it; ``QuorumStore`` is the implementation.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Protocol

from cachegrid.config import StoreConfig
from cachegrid.errors import CachegridError
from cachegrid.store.quorum import BatchRead, QuorumStore, RepairReport
from cachegrid.store.record import Record
from cachegrid.store.replica import Replica
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


def open_store(config: StoreConfig) -> QuorumStore:
    """A QuorumStore over the replicas ``config`` names (connections open lazily)."""
    replicas = [
        Replica(
            addr,
            timeout=config.timeout,
            max_in_flight=config.max_in_flight,
            cooldown=config.cooldown,
        )
        for addr in config.replicas
    ]
    return QuorumStore(
        replicas,
        timeout=config.timeout,
        max_value_bytes=config.max_value_bytes,
        max_key_bytes=config.max_key_bytes,
    )


__all__ = ["BatchRead", "QuorumStore", "Record", "RepairReport", "Replica", "Store", "open_store"]
