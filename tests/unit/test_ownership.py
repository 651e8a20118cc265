"""Ownership: a key is active only if owned in the activated ring and every ring since."""

import pytest

from cachegrid.coord.ownership import MAX_PENDING, Ownership
from cachegrid.ring import Member, Ring

KEYS = [f"k{i}" for i in range(400)]


def ring(epoch: int, *nodes: str) -> Ring:
    return Ring([Member(n, f"h:{i}") for i, n in enumerate(nodes)], epoch=epoch)


def active(ownership: Ownership) -> set[str]:
    return {k for k in KEYS if ownership.is_active_owner(k)}


def test_nothing_is_active_before_the_first_activation() -> None:
    me = Ownership("a")
    me.apply(ring(5, "a"))
    assert active(me) == set()
    assert me.is_owner("k1")
    assert me.needs_activation() == 5
    assert me.activate(5, 100)
    assert active(me) == set(KEYS)
    assert me.needs_activation() is None


def test_keys_moved_away_stop_at_once_and_kept_keys_stay_active() -> None:
    me = Ownership("a")
    me.apply(ring(1, "a", "b"))
    me.activate(1, 100)
    mine_before = active(me)
    me.apply(ring(2, "a", "b", "c"))
    still_mine = {k for k in KEYS if ring(2, "a", "b", "c").owner(k) == "a"}
    assert active(me) == mine_before & still_mine
    assert still_mine < mine_before  # c took some of a's keys, and those stopped


def test_a_key_given_back_two_epochs_later_waits_for_activation() -> None:
    """E2 moves keys from a to c; E3 (c gone) gives them back. Between E2 and the
    activation of E3, c may have served them, so a must not resume on applying E3."""
    me = Ownership("a")
    me.apply(ring(1, "a", "b"))
    me.activate(1, 100)
    me.apply(ring(2, "a", "b", "c"))
    me.apply(ring(3, "a", "b"))
    bounced = {k for k in KEYS if ring(2, "a", "b", "c").owner(k) == "c"} & {
        k for k in KEYS if ring(1, "a", "b").owner(k) == "a"
    }
    assert bounced
    assert not (active(me) & bounced)
    assert not me.activate(2, 100)  # only the newest ring can be activated
    assert me.activate(3, 100)
    assert bounced <= active(me)


def test_epochs_must_increase() -> None:
    me = Ownership("a")
    me.apply(ring(4, "a"))
    with pytest.raises(ValueError, match="not after"):
        me.apply(ring(4, "a", "b"))


def test_too_many_pending_rings_deactivate_everything_until_the_next_activation() -> None:
    me = Ownership("a")
    me.apply(ring(1, "a"))
    me.activate(1, 100)
    for epoch in range(2, MAX_PENDING + 3):
        me.apply(ring(epoch, "a"))
    assert active(me) == set()
    assert me.activate(MAX_PENDING + 2, 100)
    assert active(me) == set(KEYS)


def test_the_write_epoch_is_the_confirming_read_revision() -> None:
    me = Ownership("a")
    me.apply(ring(3, "a"))
    assert me.write_epoch == 0
    me.activate(3, 57)
    assert me.write_epoch == 57


def test_reset_forgets_everything() -> None:
    me = Ownership("a")
    me.apply(ring(1, "a"))
    me.activate(1, 100)
    me.reset()
    assert active(me) == set()
    assert me.current is None
    me.apply(ring(1, "a"))  # after a reset, any epoch starts afresh
