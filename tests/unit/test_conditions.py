"""If-Match / If-None-Match parsing (http/conditions.py), fuzzed with hypothesis."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cachegrid.errors import BadRequest, VersionMismatch
from cachegrid.http.conditions import condition_of, entity_tags
from cachegrid.localcache import Entry
from cachegrid.serving.entry import make_entry
from cachegrid.store import Record
from cachegrid.version import Version

ETAGC = st.characters(min_codepoint=0x21, max_codepoint=0xFF,
                      blacklist_characters='"\x7f', blacklist_categories=())  # fmt: skip
TAGS = st.lists(st.tuples(st.booleans(), st.text(ETAGC, max_size=12)), min_size=1, max_size=5)


def entry(version: str | None) -> Entry:
    if version is None:
        return make_entry("k", None)
    return make_entry("k", Record(Version.parse(version), False, b"{}"))


@given(TAGS, st.sampled_from([",", ", ", " ,", " , "]))
def test_a_list_of_tags_reads_back_as_written(tags: list[tuple[bool, str]], comma: str) -> None:
    header = comma.join(('W/"%s"' if weak else '"%s"') % tag for weak, tag in tags)
    assert entity_tags(header, "If-Match") == tags


@given(st.text(max_size=40))
def test_any_header_parses_or_is_a_clear_400(header: str) -> None:
    outcome = parsed(header)
    if isinstance(outcome, BadRequest):
        assert "entity tags" in outcome.message
    else:
        assert outcome


def parsed(header: str) -> list[tuple[bool, str]] | BadRequest:
    try:
        return entity_tags(header, "If-Match")
    except BadRequest as error:
        return error


def test_if_match_is_strong_and_lists_match_any_member() -> None:
    current = entry("3.4")
    condition_of('"1.1", "3.4"', None).check(current)
    with pytest.raises(VersionMismatch, match="current version"):
        condition_of('W/"3.4"', None).check(current)
    with pytest.raises(VersionMismatch, match="current version"):
        condition_of('"03.4"', None).check(current)  # opaque: no version parsing
    with pytest.raises(VersionMismatch, match="does not exist"):
        condition_of('"3.4"', None).check(entry(None))
    with pytest.raises(VersionMismatch, match="does not exist"):
        condition_of("*", None).check(entry(None))


def test_if_none_match_is_weak_and_star_means_any_value() -> None:
    current = entry("3.4")
    assert condition_of(None, 'W/"3.4"').if_none_match_fails("3.4") is not None
    assert condition_of(None, '"1.1"').if_none_match_fails("3.4") is None
    assert condition_of(None, "*").if_none_match_fails("3.4") is not None
    condition_of(None, "*").check(entry(None))  # creating an absent key passes
    with pytest.raises(VersionMismatch, match="exists"):
        condition_of(None, "*").check(current)
    assert not condition_of(None, None).conditional
