"""The pure S1 rules of coord/membership.py, each on its own (the coordinator is their I/O)."""

from dataclasses import dataclass

from hypothesis import given
from hypothesis import strategies as st

from cachegrid.coord.keyspace import Keyspace
from cachegrid.coord.membership import (
    Activation,
    Probes,
    identity_lost,
    may_activate,
    members_and_acks,
    newest_member_change,
    parse_member,
    parse_weight,
    snapshot_epoch,
)
from cachegrid.ring import Member

KEYS = Keyspace.of("/cg")


@dataclass(frozen=True)
class Stored:
    key: bytes
    value: bytes
    lease: int = 0
    mod_revision: int = 0


def test_a_first_snapshot_dates_its_ring_by_the_newest_member_put() -> None:
    assert snapshot_epoch(None, 42, members_changed=True, snapshot_revision=50) == 42


def test_a_newer_member_put_gives_a_new_ring() -> None:
    assert snapshot_epoch(30, 42, members_changed=True, snapshot_revision=50) == 42


def test_members_gone_while_unwatched_date_the_ring_by_the_snapshot() -> None:
    """No put dates a set that only lost members (their leases ended while the watch was
    down): the snapshot's own revision does, which every peer's ack must reach."""
    assert snapshot_epoch(42, 42, members_changed=True, snapshot_revision=50) == 50


def test_an_unchanged_membership_keeps_its_ring() -> None:
    assert snapshot_epoch(42, 42, members_changed=False, snapshot_revision=50) is None


@given(st.integers(0, 100), st.integers(0, 100), st.booleans(), st.integers(0, 100))
def test_a_snapshot_never_dates_a_ring_before_the_current_one_or_its_puts(
    current: int, newest_put: int, changed: bool, extra: int
) -> None:
    # A snapshot is at least as new as what it read; and if the members differ from those
    # applied as of ``current``, some change came after it, so the snapshot is newer.
    revision = max(current, newest_put) + extra + (1 if changed else 0)
    epoch = snapshot_epoch(current, newest_put, changed, revision)
    if epoch is not None:
        assert epoch >= newest_put
        assert epoch > current or (epoch == current and newest_put == current)


def test_activation_needs_every_other_live_member_acked() -> None:
    """The S1 decision: every other live member acked the epoch (a member whose key is gone
    has no lease and cannot serve); acks of departed members do not matter."""
    members = {"a": 7, "b": 8, "c": 9}
    assert may_activate(members, {"b": 10, "c": 10}, "a", 7, 10) is Activation.YES
    assert may_activate(members, {"b": 10, "c": 9}, "a", 7, 10) is Activation.NOT_YET
    assert may_activate(members, {"b": 10}, "a", 7, 10) is Activation.NOT_YET  # c never acked
    assert may_activate({"a": 7}, {"b": 1}, "a", 7, 10) is Activation.YES  # b is gone
    assert may_activate({"a": 7}, {}, "a", 7, 10) is Activation.YES  # alone


def test_a_ring_is_not_activated_once_a_newer_member_change_exists() -> None:
    """An ack >= E may come from a node that re-snapshotted past E and never applied ring E
    (a key moved to us in E may be back with it in the ring it jumped to): E activates
    only while no member key changed after it. Found by the read-lease review: a release
    waiting out leases can stall a watch into such a re-snapshot."""
    members, acks = {"a": 7, "b": 8}, {"b": 12}
    assert may_activate(members, acks, "a", 7, 10, newest_change=12) is Activation.NOT_YET
    assert may_activate(members, acks, "a", 7, 12, newest_change=12) is Activation.YES
    assert may_activate(members, acks, "a", 7, 10, newest_change=10) is Activation.YES
    items = [Stored(b"/cg/members/a", b"{}", lease=7, mod_revision=5),
             Stored(b"/cg/members/b", b"{}", lease=8, mod_revision=12),
             Stored(b"/cg/acks/b", b"14", mod_revision=14)]  # fmt: skip
    assert newest_member_change(items, KEYS) == 12


def test_activation_is_refused_when_our_member_key_is_not_ours() -> None:
    """Another process holds our id (its lease on our key), or our key is gone: whatever
    the acks say, this node must not activate (issue 10: duplicate ids broke S1)."""
    acks = {"b": 10}
    assert may_activate({"a": 99, "b": 8}, acks, "a", 7, 10) is Activation.NOT_OURS
    assert may_activate({"b": 8}, acks, "a", 7, 10) is Activation.NOT_OURS


def test_the_activation_read_is_parsed_per_member_and_ack() -> None:
    items = [
        Stored(b"/cg/members/a", b"{}", lease=7),
        Stored(b"/cg/members/b", b"{}", lease=8),
        Stored(b"/cg/acks/a", b"12"),
        Stored(b"/cg/acks/b", b"not a number"),  # counts as no ack
        Stored(b"/cg/acks/gone", b"3"),  # a departed member's ack: kept, and harmless
        Stored(b"/cg/weights/a", b"2"),
    ]
    members, acks = members_and_acks(items, KEYS)
    assert members == {"a": 7, "b": 8}
    assert acks == {"a": 12, "gone": 3}
    assert may_activate(members, acks, "a", 7, 10) is Activation.NOT_YET  # b: no valid ack


def test_a_session_still_registering_has_no_id_to_lose() -> None:
    """Found by the netns partition scenario: a new session was judged by the member key
    it had not created yet, and abandoned."""
    assert identity_lost(registered=False, our_lease=7, key_lease=None) is None
    assert identity_lost(registered=False, our_lease=7, key_lease=9) is None


def test_an_id_is_lost_when_our_key_is_gone_or_on_another_lease() -> None:
    assert identity_lost(registered=True, our_lease=7, key_lease=7) is None
    assert identity_lost(registered=True, our_lease=7, key_lease=None) == "our member key is gone"
    assert "attached to lease 1f" in (identity_lost(registered=True, our_lease=7,
                                                    key_lease=0x1F) or "")  # fmt: skip


def test_a_probe_the_watch_never_delivers_means_a_stall() -> None:
    probes = Probes(stall_after=3.0)
    probes.written(10, at=100.0)
    assert not probes.stalled(applied_revision=9, now=102.0)  # not overdue yet
    assert probes.stalled(applied_revision=9, now=103.5)  # overdue: re-snapshot
    assert probes.unseen == []  # and start counting afresh


def test_a_delivered_probe_is_forgotten() -> None:
    probes = Probes(stall_after=3.0)
    probes.written(10, at=100.0)
    probes.written(11, at=101.0)
    assert not probes.stalled(applied_revision=10, now=103.5)  # 10 seen; 11 not overdue
    assert probes.unseen == [(11, 101.0)]


def test_member_records_and_weights_are_parsed_strictly() -> None:
    assert parse_member("a", b'{"addr": "h:1", "weight": 2}') == Member("a", "h:1", 2)
    for bad in (b"", b"[]", b'{"addr": "h:1"}', b'{"addr": "h:1", "weight": "x"}'):
        assert parse_member("a", bad) is None
    assert parse_weight(b"3") == 3
    assert parse_weight(b"-1") is None
    assert parse_weight(b"x") is None
