"""The S1 checker must flag overlapping service and accept hand-offs in order."""

from tests.s1 import covered, violations


def rec(t: float, deadline: float, active: list[int]) -> dict:
    return {"t": t, "deadline": deadline, "active": active, "incarnation": "x"}


def test_a_clean_handoff_has_no_violation() -> None:
    logs = {
        "a": [rec(0, 10, [0, 1]), rec(5, 10, [1])],  # a releases key 0 at t=5
        "b": [rec(0, 10, []), rec(5.1, 20, [0])],
    }
    assert violations(logs, now=8) == []


def test_overlapping_service_is_flagged() -> None:
    logs = {"a": [rec(0, 10, [0])], "b": [rec(4, 20, [0])]}
    (problem,) = violations(logs, now=8)
    assert problem.startswith("key 0: a serves until 8.000, b from 4.000")


def test_service_ends_at_the_deadline_of_a_silent_node() -> None:
    """A killed or paused node logs nothing more: its last deadline bounds its service."""
    logs = {"a": [rec(0, 3, [0])], "b": [rec(3.5, 20, [0])]}
    assert violations(logs, now=8) == []
    logs["b"] = [rec(2.9, 20, [0])]
    assert len(violations(logs, now=8)) == 1


def test_coverage_looks_at_the_latest_records() -> None:
    logs = {"a": [rec(0, 9, [0, 1])], "b": [rec(0, 9, [2])]}
    assert covered(logs, 3)
    assert not covered(logs, 4)
