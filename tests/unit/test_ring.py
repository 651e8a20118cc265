"""The ring: deterministic placement, spread, minimal movement, weights."""

import collections

import pytest

from cachegrid.errors import Unavailable
from cachegrid.ring import DEFAULT_VNODES, Member, Ring, stable_hash


def ring_of(*names: str, weights: dict[str, int] | None = None, **options) -> Ring:
    weights = weights or {}
    return Ring([Member(n, f"127.0.0.1:{9000 + i}", weights.get(n, 1))
                 for i, n in enumerate(names)], **options)  # fmt: skip


def test_owners_follow_the_points_on_the_circle() -> None:
    """With a transparent hash, each key belongs to the first point at or after it."""

    def fake_hash(data: bytes) -> int:
        # Points "a\0i" -> 10, 20, 30 for members "1", "2", "3" (one vnode each); keys are
        # numbers, so the expected owners can be read off the circle.
        text = data.decode()
        return int(text.split("\0")[0]) * 10 if "\0" in text else int(text)

    ring = ring_of("1", "2", "3", vnodes=1, hash_fn=fake_hash)
    table = {"5": "1", "10": "1", "11": "2", "20": "2", "29": "3", "30": "3", "31": "1"}
    assert {key: ring.owner(key) for key in table} == table  # 31 wraps around to 10


def test_placement_ignores_member_order_and_addresses() -> None:
    one = Ring([Member("a", "h:1"), Member("b", "h:2"), Member("c", "h:3")])
    two = Ring([Member("c", "x:9"), Member("a", "y:8"), Member("b", "z:7")])
    keys = [f"key{i}" for i in range(2000)]
    assert [one.owner(k) for k in keys] == [two.owner(k) for k in keys]


def test_the_hash_is_stable_across_processes() -> None:
    """Pinned values: a change here would move keys between the nodes and clients of a
    running cluster that are on different versions."""
    assert stable_hash(b"") == 0xE4A6A0577479B2B4
    assert stable_hash(b"user:42") == 0xD9279B7CB3A5B282


@pytest.mark.parametrize("nodes", [3, 10, 50])
def test_load_spread_over_a_million_keys(nodes: int) -> None:
    ring = ring_of(*(f"node-{i}" for i in range(nodes)))
    counts = collections.Counter(ring.owner(f"k{i}") for i in range(1_000_000))
    mean = 1_000_000 / nodes
    spread = max(counts.values()) / mean
    print(f"\n{nodes} nodes, {DEFAULT_VNODES} vnodes: max/mean = {spread:.3f}, "
          f"min/mean = {min(counts.values()) / mean:.3f}")  # fmt: skip
    assert len(counts) == nodes
    assert spread < 1.35


@pytest.mark.parametrize("nodes", [3, 10])
def test_adding_a_member_moves_about_one_nth_of_the_keys_all_to_it(nodes: int) -> None:
    keys = [f"k{i}" for i in range(100_000)]
    before = ring_of(*(f"n{i}" for i in range(nodes)))
    after = ring_of(*(f"n{i}" for i in range(nodes + 1)))
    moved = [k for k in keys if before.owner(k) != after.owner(k)]
    assert {after.owner(k) for k in moved} == {f"n{nodes}"}
    share = len(moved) / len(keys)
    assert 0.6 / (nodes + 1) < share < 1.4 / (nodes + 1)


def test_removing_a_member_moves_only_its_keys() -> None:
    keys = [f"k{i}" for i in range(100_000)]
    before = ring_of(*(f"n{i}" for i in range(5)))
    after = ring_of("n0", "n1", "n3", "n4")
    moved = {k for k in keys if before.owner(k) != after.owner(k)}
    assert moved == {k for k in keys if before.owner(k) == "n2"}


def test_weight_scales_the_share_and_zero_weight_owns_nothing() -> None:
    ring = ring_of("a", "b", "c", weights={"a": 2, "c": 0})
    counts = collections.Counter(ring.owner(f"k{i}") for i in range(60_000))
    assert "c" not in counts
    assert 1.6 < counts["a"] / counts["b"] < 2.4


def test_an_empty_or_weightless_ring_is_unavailable() -> None:
    with pytest.raises(Unavailable):
        Ring([]).owner("k")
    with pytest.raises(Unavailable):
        ring_of("a", weights={"a": 0}).owner("k")


def test_description_round_trips() -> None:
    ring = ring_of("b", "a", weights={"b": 3}, epoch=42, vnodes=16)
    copy = Ring.from_description(ring.describe())
    assert copy.describe() == ring.describe()
    assert ring.describe()["members"][0] == {"id": "a", "addr": "127.0.0.1:9001", "weight": 1}
    assert all(copy.owner(f"k{i}") == ring.owner(f"k{i}") for i in range(1000))
