"""The clock of lease deadlines and every time compared with them.

Owns: ``now()``, in seconds, on Linux's CLOCK_BOOTTIME. Why not CLOCK_MONOTONIC (Python's
``time.monotonic``): it stops while the machine is suspended, and etcd, elsewhere, does not.
A node resumed after a suspend longer than its lease's slack would still see its local
deadline ahead while etcd has expired its lease and another node serves its keys (S1).
CLOCK_BOOTTIME counts the suspend too. Both are immune to wall-clock steps.
"""

from __future__ import annotations

import time

_CLOCK = getattr(time, "CLOCK_BOOTTIME", time.CLOCK_MONOTONIC)


def now() -> float:
    return time.clock_gettime(_CLOCK)
