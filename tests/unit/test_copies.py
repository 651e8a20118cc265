"""A holder's copies (serving/copies.py): a grant is installed only through the ticket of
its own ask, and not if a record, flush, ring change or re-snapshot came since; a copy is
served strictly before (ask sent) + term - margin, under its own member lease."""

from cachegrid.localcache import entry_version
from cachegrid.metrics import Metrics
from cachegrid.serving.copies import CopyTable
from cachegrid.serving.entry import make_entry
from cachegrid.serving.leases import HolderLeases, LeaseSettings
from cachegrid.store.record import Record
from cachegrid.version import Version


def entry(seq: int):
    return make_entry("k", Record(Version(3, seq), False, b'"v"'))


def asked(table: CopyTable, sent: float = 0.0, session: int = 7):
    return table.ask("k", "owner", sent, session)


def test_a_copy_ends_at_the_send_time_plus_term_minus_margin() -> None:
    table = CopyTable()
    assert table.install(asked(table), entry(1), term=1.0, margin=0.1, now=0.05, session=7)
    assert table.serve("k", 0.8999, 7) is not None
    assert table.serve("k", 0.9, 7) is None
    assert len(table) == 0  # an ended copy is dropped


def test_a_late_grant_is_born_expired() -> None:
    table = CopyTable()
    assert not table.install(asked(table), entry(1), term=1.0, margin=0.1, now=0.95, session=7)


def test_nothing_since_the_ask_may_touch_the_key() -> None:
    for withdraw in (
        lambda t: t.drop(["k"]),  # a drop record of the key
        lambda t: t.drop_all(),  # a re-snapshot, a flush of everything
        lambda t: t.drop_where(lambda key, owner: True),  # a ring change
    ):
        table = CopyTable()
        ticket = asked(table)
        withdraw(table)
        assert not table.install(ticket, entry(1), 1.0, 0.1, 0.1, 7)


def test_only_the_current_ask_installs_and_only_under_its_session() -> None:
    table = CopyTable()
    first = asked(table)
    second = asked(table, sent=0.1)
    assert not table.install(first, entry(1), 1.0, 0.1, 0.2, 7)
    assert not table.install(second, entry(1), 1.0, 0.1, 0.2, session=8)
    assert table.serve("k", 0.2, 7) is None


def test_a_copy_is_never_replaced_by_an_older_version() -> None:
    table = CopyTable()
    assert table.install(asked(table), entry(2), 1.0, 0.1, 0.0, 7)
    assert not table.install(asked(table), entry(1), 1.0, 0.1, 0.0, 7)
    copy = table.serve("k", 0.1, 7)
    assert copy is not None
    assert entry_version(copy.entry) == Version(3, 2)
    assert table.serve("k", 0.1, session=8) is None  # another member lease: gone


def test_the_table_is_bounded() -> None:
    table = CopyTable(capacity=3)
    for i in range(10):
        ticket = table.ask(f"k{i}", "owner", 0.0, 7)
        assert table.install(ticket, entry(1), 1.0, 0.1, 0.0, 7)
    assert len(table) == 3


class View:
    """A holder's view of coordination: one live member lease, 7."""

    incarnation, member_lease = "inc", 7

    def lease_alive(self) -> bool:
        return True

    def live_lease(self) -> int:
        return 7

    def lease_slack(self) -> float:
        return 10.0

    def is_member(self, node_id: str, incarnation: str) -> bool:
        return True


def test_a_read_that_cannot_forward_leaves_the_renewal_to_the_next_that_can() -> None:
    """A copy due for renewal and hot: the hit lane's read (``renew=False``) is refused and
    changes nothing; the route's read, next, is the renewal (None: it forwards and asks);
    the others meanwhile use the copy."""
    now = [0.0]
    holder = HolderLeases("n1", View(), peers=None, settings=LeaseSettings(threshold=1.0),  # type: ignore[arg-type]
                          metrics=Metrics(), clock=lambda: now[0])  # fmt: skip
    table = holder.copies
    assert table.install(asked(table), entry(1), term=1.0, margin=0.1, now=0.0, session=7)
    for _ in range(5):
        assert holder.serve("k") is not None  # hot: 5 reads
    now[0] = 0.8  # past the renewal point, before the end
    copy = table.serve("k", 0.8, 7)
    assert copy is not None
    hits = copy.hits
    assert holder.serve("k", renew=False) is None  # the lane: declined...
    assert (copy.hits, copy.renewing) == (hits, False)  # ...and nothing changed
    assert holder.serve("k") is None  # the route: this read renews
    assert copy.renewing
    assert holder.serve("k", renew=False) is copy  # the others use the copy meanwhile


def test_the_lanes_forward_leaves_asks_and_renewals_to_the_route() -> None:
    """``would_ask``: a forward that cannot carry an ask (the hit lane's) is told which reads
    must go the route's way: a key forwarded often enough to ask a lease of, and a key whose
    copy is due for renewal; not a cold key, nor one whose ask is already in flight."""
    now = [0.0]
    holder = HolderLeases("n1", View(), peers=None, settings=LeaseSettings(threshold=3.0),  # type: ignore[arg-type]
                          metrics=Metrics(), clock=lambda: now[0])  # fmt: skip
    assert not holder.would_ask("cold")
    holder.forwarding("warm")
    assert not holder.would_ask("warm")  # 2 a second with this read: below the threshold
    holder.forwarding("warm")
    assert holder.would_ask("warm")  # this read would make it 3: the route asks
    holder.forwarding("warm")  # the route's forward counts it, then asks
    assert holder.asks(["warm"], "owner")
    assert not holder.would_ask("warm")  # asked already: forwarded plainly meanwhile
    table = holder.copies
    assert table.install(asked(table), entry(1), term=1.0, margin=0.1, now=0.0, session=7)
    now[0] = 0.8
    assert holder.serve("k", renew=False) is None  # due: the lane does not serve it...
    assert holder.would_ask("k")  # ...nor forward it: the route renews
