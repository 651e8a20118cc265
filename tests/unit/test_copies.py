"""A holder's copies (serving/copies.py): a grant is installed only through the ticket of
its own ask, and not if a record, flush, ring change or re-snapshot came since; a copy is
served strictly before (ask sent) + term - margin, under its own member lease."""

from cachegrid.localcache import entry_version
from cachegrid.serving.copies import CopyTable
from cachegrid.serving.entry import make_entry
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
