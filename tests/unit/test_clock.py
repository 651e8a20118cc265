"""Lease deadlines run on CLOCK_BOOTTIME (cachegrid/clock.py), which counts a suspend."""

import inspect
import time

from cachegrid import clock
from cachegrid.coord.coordinator import Coordinator
from cachegrid.coord.session import Session


def test_the_lease_clock_counts_a_suspend() -> None:
    """CLOCK_MONOTONIC stops while the machine sleeps; etcd's lease does not. A node timed
    by it would wake up believing in a lease etcd expired (no test can suspend the
    machine: this pins the choice)."""
    assert clock._CLOCK == time.CLOCK_BOOTTIME
    assert abs(clock.now() - time.clock_gettime(time.CLOCK_BOOTTIME)) < 1.0


def test_sessions_and_coordinators_use_it_by_default() -> None:
    for cls in (Session, Coordinator):
        assert inspect.signature(cls).parameters["clock"].default is clock.now, cls
