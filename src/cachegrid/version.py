"""Record versions: the total order that makes the store a register.

Owns: the ``Version`` pair (epoch, seq) and its opaque string form used in ETags.

Invariants:
- Versions compare as tuples: first by epoch (the etcd revision at which the writer's
  ownership of the key's range became active), then by seq (a counter of that writer).
  No clock is involved anywhere.
- ``Version.parse(str(v)) == v`` for every valid version, and ``parse`` rejects every
  string that is not the canonical form of one (so two spellings never name one version).
"""

from __future__ import annotations

import re
from typing import NamedTuple

_CANONICAL = re.compile(r"(0|[1-9][0-9]{0,17})\.(0|[1-9][0-9]{0,17})")

# Lua numbers on the replicas are doubles: keep both parts exactly representable.
MAX_PART = 2**53 - 1


class Version(NamedTuple):
    epoch: int
    seq: int

    def __str__(self) -> str:
        return f"{self.epoch}.{self.seq}"

    @classmethod
    def parse(cls, text: str) -> Version:
        """The version named by ``text``; ValueError when it names none."""
        match = _CANONICAL.fullmatch(text)
        if match is None:
            raise ValueError(f"not a version: {text[:64]!r}")
        version = cls(int(match[1]), int(match[2]))
        version.check()
        return version

    def check(self) -> None:
        """ValueError unless both parts fit the replicas' number type."""
        if not (0 <= self.epoch <= MAX_PART and 0 <= self.seq <= MAX_PART):
            raise ValueError(f"version out of range: {self.epoch}.{self.seq}")


ZERO = Version(0, 0)
