"""The node's byte budget (budget.py): bounded, capped per answer, always given back."""

import pytest

from cachegrid.budget import ByteBudget
from cachegrid.errors import Overloaded, TooLarge


def test_reservations_share_the_limit_and_give_everything_back() -> None:
    budget = ByteBudget(100)
    with budget.reservation() as first:
        first.need(60)
        with budget.reservation() as second:
            with pytest.raises(Overloaded, match="max_bytes_in_flight"):
                second.need(41)  # refused, and took nothing
            second.need(40)
            assert budget.used == 100
        assert budget.used == 60
    assert budget.used == 0


def test_an_answer_is_capped_whatever_the_budget() -> None:
    budget = ByteBudget(1000)
    with budget.reservation(cap=50, cap_name="node.max_batch_bytes") as held:
        held.need(30)
        held.need(500, answer=False)  # working copies do not count toward the answer
        with pytest.raises(TooLarge, match=r"node\.max_batch_bytes"):
            held.need(21)
        assert (held.answer, budget.used) == (30, 530)
    assert budget.used == 0


def test_a_failure_inside_gives_the_bytes_back_too() -> None:
    budget = ByteBudget(10)

    def failing() -> None:
        with budget.reservation() as held:
            held.need(10)
            raise RuntimeError("the store failed")

    with pytest.raises(RuntimeError):
        failing()
    assert budget.used == 0


def test_an_estimate_is_taken_up_front_and_only_excess_needs_more() -> None:
    budget = ByteBudget(100)
    with budget.reservation() as big, budget.reservation() as second:
        big.expect(70)
        with pytest.raises(Overloaded):
            second.expect(40)  # refused before doing any work
        big.need(50)
        big.need(15)
        assert budget.used == 70  # within the estimate: nothing more taken
        big.need(10)
        assert budget.used == 75
    assert budget.used == 0
