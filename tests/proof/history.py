"""Operation histories of a key-value register, as concurrent clients observed them.

Owns: the ``Op`` record and its outcome vocabulary, shared by the recorder and the checker.

An op has an invocation and a completion time (``math.inf`` when its outcome is unknown)
and one of these outcomes:
- ``ok``: it took effect (writes) or returned ``value``/``version`` (reads);
- ``absent``: a read or delete found no value (404);
- ``mismatch``: a conditional write's precondition failed (412): no effect;
- ``failed``: certainly not applied (400, 429, 503, connection refused);
- ``unknown``: a write that may or may not have taken effect (504, timeout, lost connection).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

READ, WRITE, CAS, CREATE, DELETE = "read", "write", "cas", "create", "delete"
OK, ABSENT, MISMATCH, FAILED, UNKNOWN = "ok", "absent", "mismatch", "failed", "unknown"


@dataclass(frozen=True, slots=True)
class Op:
    id: int
    client: str
    key: str
    kind: str  # READ | WRITE | CAS | CREATE | DELETE
    invoked: float
    completed: float  # math.inf when the outcome is UNKNOWN
    outcome: str  # OK | ABSENT | MISMATCH | FAILED | UNKNOWN
    value: Any = None  # written (writes) or read (reads); unique per write
    version: str | None = None  # returned by an OK op; for CAS, in ``expected``
    expected: str | None = None  # the If-Match version of a CAS
    note: str = ""  # why the outcome is what it is, when not plain (an error, a status)
    url: str = ""  # the node the op was sent to
    cache: str = ""  # a read's X-Cache: hit, miss, or replica (a read-lease copy)

    @property
    def definite(self) -> bool:
        return self.outcome != UNKNOWN

    def describe(self) -> str:
        end = "..." if math.isinf(self.completed) else f"{self.completed:.4f}"
        detail = f"value={self.value!r}" if self.value is not None else ""
        if self.version:
            detail += f" version={self.version}"
        if self.expected:
            detail += f" if-match={self.expected}"
        if self.note:
            detail += f" ({self.note})"
        if self.cache == "replica":
            detail += " [replica]"
        return (f"#{self.id} {self.client} {self.kind} [{self.invoked:.4f}, {end}] "
                f"-> {self.outcome} {detail}").rstrip()  # fmt: skip
