"""A linearizability checker for per-key registers with versions (Wing-Gong-Lowe).

Owns: deciding whether a history of one key can be totally ordered so that (1) each op
takes effect at one instant between its invocation and completion, and (2) the order obeys
the register's sequential specification; and explaining it when it cannot.

The sequential specification, with the state = the last write that took effect (or none):
- a read returns the state's value and version, or ``absent`` if none/deleted;
- ``write`` always applies; ``cas`` (If-Match v) applies iff a value exists with version v,
  else ``mismatch``; ``create`` (If-None-Match *) iff none exists; ``delete`` iff one exists,
  else ``absent``; ``failed`` ops have no effect and are left out;
- versions rise along the whole order: a write whose version is known (acknowledged, or
  revealed by a read) exceeds every known version of the writes ordered before it, however
  many writes of unknown version stand in between.
An ``unknown`` write may take effect at any instant after its invocation, or never.

Histories are checked per key (linearizability is compositional). The search memoizes
(linearized set, state) pairs, so 20,000 operations over a few keys take seconds.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field

import orjson

from cachegrid.version import ZERO, Version
from tests.proof.history import (
    ABSENT,
    CAS,
    CREATE,
    DELETE,
    FAILED,
    MISMATCH,
    OK,
    READ,
    UNKNOWN,
    WRITE,
    Op,
)

# A state is (the id of the op whose effect is current — a write, or a delete — or -1,
# the highest known version among the writes linearized so far).
NONE = -1
State = tuple[int, Version]
START: State = (NONE, ZERO)


@dataclass
class Violation:
    key: str
    op: Op  # the op that could not be placed in the deepest attempt
    window: list[Op]  # the ops overlapping it in time: the smallest context to look at
    linearized: int  # how many ops of the key were ordered before the search failed
    writer: Op | None = None  # for a read: the op that wrote the value it saw, if any

    def explain(self) -> str:
        lines = [
            f"key {self.key!r}: not linearizable; after ordering {self.linearized} ops, "
            f"no order places {self.op.describe()}",
            "ops overlapping it:",
            *(f"  {op.describe()}" for op in self.window),
        ]
        if self.op.kind == READ and self.op.outcome == OK:
            source = self.writer.describe() if self.writer else "no op of the history"
            lines.append(f"the value it read was written by: {source}")
        return "\n".join(lines)


@dataclass
class Report:
    keys: int = 0
    ops: int = 0
    violations: list[Violation] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.violations


def check(history: Iterable[Op]) -> Report:
    """Check every key's sub-history; a report with one violation per failing key."""
    by_key: dict[str, list[Op]] = {}
    writers: dict[str, Op] = {}  # value -> the op that wrote it, failed ones included
    for op in history:
        if op.kind in (WRITE, CAS, CREATE) and op.value is not None:
            writers[_key(op.value)] = op
        if op.outcome != FAILED and not (op.kind == READ and op.outcome == UNKNOWN):
            by_key.setdefault(op.key, []).append(op)
    report = Report(keys=len(by_key))
    for key, ops in sorted(by_key.items()):
        report.ops += len(ops)
        violation = _Search(key, ops).run()
        if violation is not None:
            if violation.op.kind == READ and violation.op.value is not None:
                violation.writer = writers.get(_key(violation.op.value))
            report.violations.append(violation)
    return report


class _Model:
    """The register's sequential specification over op ids."""

    def __init__(self, ops: list[Op]) -> None:
        self.ops = ops
        # The version each write carries, when some op revealed it (unique values).
        self.version_of: dict[int, Version] = {}
        by_value: dict[str, int] = {}
        for op in ops:
            if op.kind in (WRITE, CAS, CREATE) and op.value is not None:
                by_value[_key(op.value)] = op.id
        # Acknowledged writes first: a read that reports another version for the same
        # value must then fail the read step, not redefine the writer's version.
        for op in sorted(ops, key=lambda o: o.kind == READ):
            if op.outcome == OK and op.version is not None:
                writer = op.id if op.kind != READ else by_value.get(_key(op.value))
                if writer is not None:
                    self.version_of.setdefault(writer, Version.parse(op.version))
        self.index = {op.id: op for op in ops}
        self.known_versions = set(self.version_of.values())

    def present(self, state: State) -> bool:
        current = state[0]
        return current != NONE and self.index[current].kind != DELETE

    def step(self, state: State, op: Op) -> State | None:
        """The state after ``op`` taken in ``state``; None if the spec forbids it."""
        present = self.present(state)
        if op.kind == READ:
            if op.outcome == ABSENT:
                return state if not present else None
            return state if present and self._shows(state[0], op) else None
        if op.outcome == MISMATCH:
            return state if self._may_fail(state[0], op, present) else None
        if op.outcome == ABSENT:  # a delete that found nothing
            return state if not present else None
        if not self._condition(state[0], op, present):
            return None
        version = self.version_of.get(op.id)
        if version is None:
            return (op.id, state[1])
        return (op.id, version) if version > state[1] else None

    def _may_fail(self, current: int, op: Op, present: bool) -> bool:
        """Can ``op``'s precondition be false in state ``current``?"""
        if op.expected is not None and present and self.version_of.get(current) is None:
            return True  # an unrevealed version may differ from the expected one
        return not self._condition(current, op, present)

    def _shows(self, current: int, read: Op) -> bool:
        """Does ``read`` show exactly the state: its value, and its version if known?"""
        if _key(self.index[current].value) != _key(read.value):
            return False
        known = self.version_of.get(current)
        return read.version is None or known is None or Version.parse(read.version) == known

    def _condition(self, current: int, op: Op, present: bool) -> bool:
        if op.kind == CREATE:
            return not present
        if op.expected is not None:  # If-Match: a CAS, or a conditional delete
            return present and self._may_have_version(current, Version.parse(op.expected))
        if op.kind in (CAS, DELETE):
            return present
        return True

    def _may_have_version(self, current: int, version: Version) -> bool:
        """Can the write ``current`` carry ``version``? If its version was never revealed
        (an unknown write nobody read), any version that is not another write's."""
        known = self.version_of.get(current)
        return known == version if known is not None else version not in self.known_versions


class _Entry:
    """A node of the doubly linked list of call and return events (Lowe's algorithm)."""

    __slots__ = ("is_call", "match", "next", "op", "prev", "time")

    def __init__(self, op: Op, is_call: bool, time: float) -> None:
        self.op = op
        self.is_call = is_call
        self.time = time
        self.match: _Entry | None = None
        self.prev: _Entry | None = None
        self.next: _Entry | None = None


class _Search:
    def __init__(self, key: str, ops: list[Op]) -> None:
        self.key = key
        self.ops = ops
        self.model = _Model(ops)
        self.bit = {op.id: 1 << i for i, op in enumerate(ops)}
        self.head = self._build_list(ops)

    def _build_list(self, ops: list[Op]) -> _Entry:
        events: list[_Entry] = []
        for op in ops:
            call, ret = _Entry(op, True, op.invoked), _Entry(op, False, op.completed)
            call.match = ret
            events += [call, ret]
        # Calls before returns at the same instant: touching intervals overlap.
        events.sort(key=lambda e: (e.time, not e.is_call))
        head = _Entry(ops[0], True, -math.inf)  # sentinel
        previous = head
        for event in events:
            previous.next, event.prev = event, previous
            previous = event
        return head

    def run(self) -> Violation | None:
        remaining = sum(op.definite for op in self.ops)
        state, linearized = START, 0
        seen: set[tuple[int, State]] = set()
        stack: list[tuple[_Entry, State]] = []
        deepest, stuck = 0, self.head.next
        entry = self.head.next
        while remaining:
            assert entry is not None
            if entry.is_call:
                after = self.model.step(state, entry.op)
                if after is not None and (linearized | self.bit[entry.op.id], after) not in seen:
                    linearized |= self.bit[entry.op.id]
                    seen.add((linearized, after))
                    stack.append((entry, state))
                    state = after
                    remaining -= entry.op.definite
                    _lift(entry)
                    entry = self.head.next
                    continue
                entry = entry.next
                continue
            # A return event: the op it ends was not linearized in time. Backtrack.
            if len(stack) > deepest or deepest == 0:
                deepest, stuck = len(stack), entry
            if not stack:
                return self._violation(stuck, deepest)
            entry, state = stack.pop()
            linearized &= ~self.bit[entry.op.id]
            remaining += entry.op.definite
            _unlift(entry)
            entry = entry.next
        return None

    def _violation(self, stuck: _Entry | None, depth: int) -> Violation:
        assert stuck is not None
        op = stuck.op
        window = [o for o in self.ops if o.invoked <= op.completed and o.completed >= op.invoked]
        return Violation(self.key, op, sorted(window, key=lambda o: o.invoked), depth)


def _lift(entry: _Entry) -> None:
    """Take a call and its return out of the list."""
    entry.prev.next = entry.next  # type: ignore[union-attr]
    entry.next.prev = entry.prev  # type: ignore[union-attr]
    match = entry.match
    assert match is not None
    match.prev.next = match.next  # type: ignore[union-attr]
    if match.next is not None:
        match.next.prev = match.prev


def _unlift(entry: _Entry) -> None:
    """Put a call and its return back where they were."""
    match = entry.match
    assert match is not None
    match.prev.next = match  # type: ignore[union-attr]
    if match.next is not None:
        match.next.prev = match
    entry.prev.next = entry  # type: ignore[union-attr]
    entry.next.prev = entry  # type: ignore[union-attr]


def _key(value: object) -> str:
    """Values compare by their JSON text (they are JSON documents)."""
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()
