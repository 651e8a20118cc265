"""Throttle (logs.py): a repeating warning is logged with doubling gaps, says how many were
held back, and starts over once its kind has been quiet."""

from cachegrid.logs import Throttle


def test_a_warning_every_100_ms_is_logged_with_doubling_gaps() -> None:
    throttle = Throttle(first_gap=1.0, max_gap=8.0)
    logged = [(round(t / 10, 1), held) for t in range(0, 300)
              if (held := throttle.allow("watch", t / 10)) is not None]  # fmt: skip
    assert [t for t, _ in logged] == [0.0, 1.0, 3.0, 7.0, 15.0, 23.0]
    assert [held for _, held in logged] == [0, 9, 19, 39, 79, 79]
    assert len(logged) == 6  # of 300


def test_kinds_are_apart_and_a_quiet_kind_starts_over() -> None:
    throttle = Throttle(first_gap=1.0, max_gap=4.0)
    assert throttle.allow("a", 0.0) == 0
    assert throttle.allow("b", 0.1) == 0  # another kind is not held back
    assert throttle.allow("a", 0.5) is None
    assert throttle.allow("a", 10.0) == 1  # quiet past max_gap: logged, with the one held


def test_memory_is_bounded() -> None:
    throttle = Throttle(max_kinds=3)
    for i in range(10):
        throttle.allow(f"k{i}", 0.0)
    assert repr(throttle) == "<Throttle kinds=3>"
