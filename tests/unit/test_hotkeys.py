"""RateCounter (hotkeys.py): bounded memory, and a key's rate never over-estimated."""

from hypothesis import given
from hypothesis import strategies as st

from cachegrid.hotkeys import RateCounter, TopKeys


def test_a_steady_key_reads_at_its_rate() -> None:
    counter = RateCounter(window=1.0)
    for i in range(300):
        counter.observe("hot", i / 100)  # 100 a second for 3 s
    assert 90 <= counter.rate("hot", 3.0) <= 100
    assert counter.rate("cold", 3.0) == 0
    assert counter.rate("hot", 10.0) == 0  # long idle: forgotten


def test_memory_is_bounded() -> None:
    counter = RateCounter(capacity=10)
    for i in range(1000):
        counter.observe(f"k{i}", i / 1000)
    assert len(counter) <= 20


@given(st.lists(st.tuples(st.sampled_from("abcdef"), st.floats(0, 0.2)), max_size=200))
def test_never_over_estimates(steps: list[tuple[str, float]]) -> None:
    counter, now, seen = RateCounter(capacity=3, window=1.0), 0.0, []
    for key, gap in steps:
        now += gap
        seen.append((key, now))
        rate = counter.observe(key, now)
        truth = sum(1 for k, t in seen if k == key and t > now - 2.0)
        assert rate <= truth + 1e-9


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@given(st.lists(st.integers(0, 30), max_size=600), st.integers(1, 6))
def test_top_keys_are_within_their_error_bound(stream: list[int], capacity: int) -> None:
    """Misra-Gries: count <= true count <= count + error; every key more frequent than
    the error is listed; never more than 2 x capacity keys held."""
    top = TopKeys(capacity=capacity, window=60.0, clock=FakeClock())
    for key in stream:
        top.add(f"k{key}")
        assert len(top._current) <= 2 * capacity
    _, listed = top.top(limit=100)
    found = {f.key: f for f in listed}
    error = top._error  # what pruning took (the same in every listed entry)
    assert all(f.error == error for f in listed)
    assert error <= len(stream) / (capacity + 1)
    for key in set(stream):
        true = stream.count(key)
        if f"k{key}" in found:
            assert found[f"k{key}"].count <= true <= found[f"k{key}"].count + error
        else:
            assert true <= error


def test_top_keys_rank_and_forget_with_the_window() -> None:
    clock = FakeClock()
    top = TopKeys(capacity=8, window=60.0, clock=clock)
    for i in range(2000):
        top.add("hot" if i % 2 else f"cold{i}")
    _, listed = top.top(limit=1)
    assert [f.key for f in listed] == ["hot"]
    assert listed[0].count >= 900
    clock.now = 90.0  # one window on: the previous one is still reported
    assert top.top(limit=1)[1][0].key == "hot"
    assert top.top(limit=1)[0] == 90.0
    clock.now = 200.0  # quiet for two windows: nothing recent
    assert top.top(limit=1) == (0.0, [])
