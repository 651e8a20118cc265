"""cachegrid: a write-through, linearizable cache over a quorum-replicated store.

See DESIGN.md in the repository for the architecture and the safety argument.
"""

__version__ = "0.1.0"
