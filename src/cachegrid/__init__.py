"""cachegrid: a write-through, linearizable cache over a quorum-replicated store.

See docs/architecture.md for the layers and the safety argument. ``import cachegrid`` is
cheap: the clients (and aiohttp with them) load on first use of ``cachegrid.Client`` or
``cachegrid.SyncClient``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cachegrid.client import Client, Item
    from cachegrid.sync_client import SyncClient

__all__ = ["Client", "Item", "SyncClient"]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    if name == "SyncClient":
        from cachegrid import sync_client

        return sync_client.SyncClient
    if name in __all__:
        from cachegrid import client

        return getattr(client, name)
    raise AttributeError(f"module 'cachegrid' has no attribute {name!r}")
