"""The backing store: a quorum-replicated, versioned register per key over Redis.

record.py holds the value types (``Record``, ``BatchRead``); quorum.py the register
(``QuorumStore``, ``open_store``) over replica.py's ``Replica``, kept whole by upkeep.py
with the pure rules of trust.py and writeback.py. What a node needs of a store is the
``Store`` protocol of cachegrid.serving.ports, owned by its consumer.

Importing this package is cheap (no redis): the Redis-backed parts load on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from cachegrid.store.record import BatchRead, Record

if TYPE_CHECKING:
    from cachegrid.store.quorum import QuorumStore, RepairReport, open_store
    from cachegrid.store.replica import Replica

_LAZY = {"QuorumStore": "quorum", "RepairReport": "quorum", "open_store": "quorum",
         "Replica": "replica"}  # fmt: skip

__all__ = ["BatchRead", "QuorumStore", "Record", "RepairReport", "Replica", "open_store"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f"cachegrid.store.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'cachegrid.store' has no attribute {name!r}")
