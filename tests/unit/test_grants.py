"""The owner's grant table (serving/grants.py): rows end only by expiry or by settling the
exact row an acknowledged record froze (S3, F8), no term outlives the owner's deadline
(F4), a full table refuses and never evicts, and holders that timed out wait."""

from hypothesis import given
from hypothesis import strategies as st

from cachegrid.serving.grants import GrantTable
from cachegrid.version import Version

H1, H2 = ("h1", "inc1"), ("h2", "inc2")
V1, V2 = Version(5, 1), Version(5, 2)


def table(**options: float) -> GrantTable:
    return GrantTable(term=1.0, margin=0.1, **options)  # type: ignore[arg-type]


def test_a_row_lives_until_its_expiry_whatever_else_happens() -> None:
    grants = table()
    assert grants.grant("k", H1, V1, now=0.0, slack=5.0) == 1.0
    assert set(grants.live("k", 1.09)) == {H1}
    assert grants.live("k", 1.1) == {}
    assert grants.leased_keys(1.1) == []
    assert len(grants) == 0


def test_settling_ends_only_the_rows_that_were_frozen() -> None:
    """A duplicated or late acknowledgement of an old record cannot end a row granted
    after it (the F8 interleaving of docs/design/read-leases-review.md)."""
    grants = table()
    grants.grant("k", H1, V1, 0.0, 5.0)
    grants.grant("k", H2, V1, 0.0, 5.0)
    frozen = grants.live("k", 0.1)
    grants.grant("k", H1, V2, 0.2, 5.0)  # H1 renewed after the freeze: another row
    grants.settle("k", frozen, acked={H1, H2}, now=0.3)
    assert set(grants.live("k", 0.3)) == {H1}
    assert grants.live("k", 0.3)[H1].version == V2


def test_blocks_says_whether_a_newer_version_may_leave_the_owner() -> None:
    grants = table()
    grants.grant("k", H1, V1, 0.0, 5.0)
    assert grants.blocks("k", V2, 0.5)
    assert not grants.blocks("k", V1, 0.5)
    assert not grants.blocks("k", V2, 1.2)  # expired


@given(slack=st.floats(-10, 10), now=st.floats(0, 1e6))
def test_no_row_outlives_the_owners_deadline(slack: float, now: float) -> None:
    grants = table()
    term = grants.grant("k", H1, V1, now, slack)
    if isinstance(term, str):
        assert term == "deadline"
        assert slack - 0.1 < 0.25
        return
    row = grants.live("k", now)[H1]
    assert row.expiry <= now + slack + 1e-9  # the row ends before the owner's deadline
    assert 0.25 <= term <= 1.0


def test_a_full_table_refuses_and_never_evicts() -> None:
    grants = table(max_rows=2)
    grants.grant("a", H1, V1, 0.0, 5.0)
    grants.grant("b", H1, V1, 0.0, 5.0)
    assert grants.grant("c", H1, V1, 0.0, 5.0) == "full"
    assert grants.grant("a", H1, V2, 0.0, 5.0) == 1.0  # a renewal takes no new row
    assert grants.leased_keys(0.5) == ["a", "b"]


def test_a_holder_that_timed_out_waits_until_it_acknowledges() -> None:
    grants = table(timeout_memory=30.0)
    grants.grant("k", H1, V1, 0.0, 5.0)
    frozen = grants.live("k", 0.5)
    grants.settle("k", frozen, acked=set(), now=1.2)  # waited out
    assert grants.grant("k", H1, V1, 2.0, 5.0) == "timed_out"
    assert grants.grant("k", H2, V1, 2.0, 5.0) == 1.0
    grants.acknowledged(H1)
    assert grants.grant("k", H1, V1, 2.0, 5.0) == 1.0
