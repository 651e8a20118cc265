"""The linearizability checker: it accepts what is linearizable and explains what is not."""

import math
import random
import time

import pytest

from tests.proof.checker import check
from tests.proof.history import (
    ABSENT,
    CAS,
    CREATE,
    DELETE,
    MISMATCH,
    OK,
    READ,
    UNKNOWN,
    WRITE,
    Op,
)

_ids = iter(range(10**9))


def op(kind, start, end, outcome=OK, value=None, version=None, expected=None, key="k",
       client="c"):  # fmt: skip
    return Op(next(_ids), client, key, kind, start, end, outcome, value, version, expected)


def w(start, end, value, version, outcome=OK):
    return op(WRITE, start, end, outcome, value, version)


def r(start, end, value=None, version=None, outcome=OK):
    return op(READ, start, end, ABSENT if value is None and outcome == OK else outcome, value,
              version)  # fmt: skip


GOOD = {
    "sequential": [w(0, 1, "a", "1.1"), r(2, 3, "a", "1.1"), w(4, 5, "b", "1.2"),
                   r(6, 7, "b", "1.2")],
    "read concurrent with a write sees the old value": [
        w(0, 1, "a", "1.1"), w(2, 6, "b", "1.2"), r(3, 4, "a", "1.1"), r(7, 8, "b", "1.2")],
    "read concurrent with a write sees the new value": [
        w(0, 1, "a", "1.1"), w(2, 6, "b", "1.2"), r(3, 4, "b", "1.2"), r(5, 5.5, "b", "1.2")],
    "absent before any write": [r(0, 1), w(2, 3, "a", "1.1")],
    "an indeterminate write that shows up later": [
        w(0, 1, "a", "1.1"), w(2, math.inf, "b", None, UNKNOWN), r(5, 6, "a", "1.1"),
        r(7, 8, "b", "1.2")],
    "an indeterminate write that never took effect": [
        w(0, 1, "a", "1.1"), w(2, math.inf, "b", None, UNKNOWN), r(5, 6, "a", "1.1")],
    "cas chain with a loser": [
        w(0, 1, "a", "1.1"), op(CAS, 2, 3, OK, "b", "1.2", "1.1"),
        op(CAS, 2.5, 4, MISMATCH, "c", None, "1.1"), r(5, 6, "b", "1.2")],
    "create, delete, create": [
        op(CREATE, 0, 1, OK, "a", "1.1"), op(CREATE, 2, 3, MISMATCH, "x"),
        op(DELETE, 4, 5, OK, None, "1.2"), op(DELETE, 6, 7, ABSENT), r(8, 9),
        op(CREATE, 10, 11, OK, "b", "2.1"), r(12, 13, "b", "2.1")],
}  # fmt: skip

BAD = {
    "stale read after a completed write": (
        [w(0, 1, "a", "1.1"), w(2, 3, "b", "1.2"), r(4, 5, "a", "1.1")], "a"),
    "reads flipping new then old": (
        [w(0, 1, "a", "1.1"), w(2, 10, "b", "1.2"), r(3, 4, "b", "1.2"), r(5, 6, "a", "1.1")],
        "a"),
    "lost cas: two winners on one version": (
        [w(0, 1, "a", "1.1"), op(CAS, 2, 3, OK, "b", "1.2", "1.1"),
         op(CAS, 4, 5, OK, "c", "1.3", "1.1")], "c"),
    "a value nobody wrote": ([w(0, 1, "a", "1.1"), r(2, 3, "zzz", "9.9")], "zzz"),
    "a deleted value read after the delete": (
        [w(0, 1, "a", "1.1"), op(DELETE, 2, 3, OK, None, "1.2"), r(4, 5, "a", "1.1")], "a"),
    "versions going backwards": ([w(0, 1, "a", "2.5"), w(2, 3, "b", "1.9")], "b"),
    "a read with the right value but another version": (
        [w(0, 1, "a", "1.1"), r(2, 3, "a", "1.7")], "a"),
    "create that succeeded over an existing value": (
        [w(0, 1, "a", "1.1"), op(CREATE, 2, 3, OK, "b", "1.2")], "b"),
    # Version order is a property of the whole order, not of neighbours: an unknown write
    # (version never revealed) placed in between must not switch the rule off.
    "versions falling behind an unknown write in between": (
        [w(0, 1, "a", "2.1"), w(2, math.inf, "x", None, UNKNOWN), w(4, 5, "b", "1.9")], "b"),
    "versions falling behind two writes back": (
        [w(0, 1, "a", "2.1"), w(2, 3, "x", None, UNKNOWN), op(DELETE, 2.5, 3.5, OK, None, None),
         w(4, 5, "b", "1.9")], "b"),
    "a stale read inside the window, unknown writes in flight": (
        [w(0, 1, "a", "1.1"), w(2, 3, "b", "1.2"), w(2.5, math.inf, "c", None, UNKNOWN),
         w(2.6, math.inf, "d", None, UNKNOWN), r(4, 5, "a", "1.1")], "a"),
    "a spurious 412: If-Match of the current version refused": (
        [w(0, 1, "a", "1.1"), op(CAS, 2, 3, MISMATCH, "b", None, "1.1")], "b"),
    "a spurious 404: a delete of an existing key finds nothing": (
        [w(0, 1, "a", "1.1"), op(DELETE, 2, 3, ABSENT, None, None, None), r(4, 5, "a", "1.1")],
        None),
    "If-None-Match refused on an absent key": (
        [op(CREATE, 0, 1, MISMATCH, "a"), r(2, 3)], "a"),
}  # fmt: skip


@pytest.mark.parametrize("name", GOOD)
def test_linearizable_histories_pass(name: str) -> None:
    report = check(GOOD[name])
    assert report.ok, report.violations[0].explain()


@pytest.mark.parametrize("name", BAD)
def test_violations_are_found_and_explained(name: str) -> None:
    history, culprit_value = BAD[name]
    report = check(history)
    assert not report.ok
    (violation,) = report.violations
    text = violation.explain()
    assert "key 'k': not linearizable" in text
    assert any(o.value == culprit_value for o in violation.window), text


def simulated_history(ops: int, keys: int, clients: int, seed: int) -> list[Op]:
    """A linearizable history: concurrent ops, each taking effect at a random instant inside
    its interval, results computed in that order; some writes' outcomes are unknown."""
    rng = random.Random(seed)
    planned = []
    clock = [0.0] * clients
    for n in range(ops):
        c = rng.randrange(clients)
        start = clock[c] + rng.random()
        end = start + rng.random() * 3
        clock[c] = end
        point = rng.uniform(start, end)
        kind = rng.choice([READ, READ, READ, WRITE, CAS, DELETE])
        planned.append((point, n, c, f"k{min(rng.randrange(keys * 3), keys - 1)}", kind, start,
                        end))  # fmt: skip
    state: dict[str, tuple[str, str] | None] = {}
    seq = 0
    history = []
    for _point, n, c, key, kind, start, end in sorted(planned):
        current = state.get(key)
        if kind == READ:
            value, version = current if current else (None, None)
            history.append(Op(n, f"c{c}", key, READ, start, end, OK if current else ABSENT,
                              value, version))  # fmt: skip
            continue
        seq += 1
        version = f"1.{seq}"
        if kind == DELETE:
            if current is None:
                history.append(Op(n, f"c{c}", key, DELETE, start, end, ABSENT))
                continue
            state[key] = None
            history.append(Op(n, f"c{c}", key, DELETE, start, end, OK, None, version))
            continue
        value = f"v{n}"
        expected = current[1] if kind == CAS and current and rng.random() < 0.7 else "0.1"
        if kind == CAS and (current is None or current[1] != expected):
            history.append(Op(n, f"c{c}", key, CAS, start, end, MISMATCH, value, None, expected))
            continue
        state[key] = (value, version)
        unknown = rng.random() < 0.03
        history.append(Op(n, f"c{c}", key, kind, start, math.inf if unknown else end,
                          UNKNOWN if unknown else OK, value, None if unknown else version,
                          expected if kind == CAS else None))  # fmt: skip
    return history


def test_twenty_thousand_operations_are_checked_quickly() -> None:
    history = simulated_history(20_000, keys=8, clients=16, seed=1)
    started = time.perf_counter()
    report = check(history)
    took = time.perf_counter() - started
    print(f"\nchecked {report.ops} ops over {report.keys} keys in {took:.2f}s")
    assert report.ok, report.violations[0].explain()
    assert report.ops > 19_000


def test_a_single_stale_read_in_twenty_thousand_is_found() -> None:
    history = simulated_history(20_000, keys=8, clients=16, seed=2)
    writes = [o for o in history if o.kind == WRITE and o.outcome == OK]
    last = max(writes, key=lambda o: o.completed)
    first = min((o for o in writes if o.key == last.key), key=lambda o: o.completed)
    stale = Op(10**8, "cX", last.key, READ, last.completed + 1000, last.completed + 1001, OK,
               first.value, first.version)  # fmt: skip
    report = check([*history, stale])
    assert [v.key for v in report.violations] == [last.key]
