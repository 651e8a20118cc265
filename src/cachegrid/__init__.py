"""cachegrid: a write-through, linearizable cache over a quorum-replicated store.

See docs/architecture.md for the architecture and the safety argument.
"""

from cachegrid.client import Client, Item

__all__ = ["Client", "Item"]
__version__ = "0.1.0"
