"""RateCounter (hotkeys.py): bounded memory, and a key's rate never over-estimated."""

from hypothesis import given
from hypothesis import strategies as st

from cachegrid.hotkeys import RateCounter


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
