"""Versions: total order and a canonical, round-tripping string form."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cachegrid.version import MAX_PART, Version

parts = st.integers(min_value=0, max_value=MAX_PART)


@given(parts, parts)
def test_string_form_round_trips(epoch: int, seq: int) -> None:
    version = Version(epoch, seq)
    assert Version.parse(str(version)) == version


@given(parts, parts, parts, parts)
def test_order_is_epoch_then_seq(e1: int, s1: int, e2: int, s2: int) -> None:
    assert (Version(e1, s1) < Version(e2, s2)) == ((e1, s1) < (e2, s2))


def test_a_later_epoch_beats_any_seq_of_an_earlier_one() -> None:
    assert Version(8, 0) > Version(7, 10**9)


@pytest.mark.parametrize(
    "text",
    ["", "1", "1.", ".1", "01.1", "1.01", "-1.2", "1.2.3", "a.b", " 1.2", "1.2 ", "\uff11.\uff12",
     f"{MAX_PART + 1}.0", "1" * 19 + ".0"],
)  # fmt: skip
def test_parse_rejects_non_canonical_text(text: str) -> None:
    with pytest.raises(ValueError, match="version"):
        Version.parse(text)
