"""Conditional request headers (RFC 9110 §13): If-Match and If-None-Match, parsed.

Owns: the grammar of entity-tag lists (§8.8.3) and turning the two headers into the
serving layer's ``Condition``. Versions are opaque entity tags here: a tag is compared as
a string with the current version's canonical form, never parsed as a version, so any
well-formed tag that is not current simply fails to match (412), and only a malformed
header is refused (400).

Invariants:
- ``If-Match`` uses the strong comparison: a weak tag (``W/"..."``) never matches.
- ``If-None-Match`` uses the weak comparison: ``W/"v"`` matches ``"v"``.
- ``*`` stands alone; a list is one or more tags separated by commas and optional spaces.
"""

from __future__ import annotations

import re

from cachegrid.errors import BadRequest
from cachegrid.serving.owner import Condition

# etagc = "!" / %x23-7E / obs-text (%x80-FF), as text decoded from latin-1.
_TAG = re.compile(r'\s*(W/)?"([\x21\x23-\x7e\x80-\xff]*)"\s*')


def entity_tags(header: str, name: str) -> list[tuple[bool, str]]:
    """The (weak, opaque) tags of a list header; BadRequest if malformed."""
    tags: list[tuple[bool, str]] = []
    position = 0
    while True:
        match = _TAG.match(header, position)
        if match is None:
            raise BadRequest(f'{name} must be "*" or a list of entity tags, as in "12.3"')
        tags.append((match[1] is not None, match[2]))
        position = match.end()
        if position == len(header):
            return tags
        if header[position] != ",":
            raise BadRequest(f'{name} must be "*" or a list of entity tags, as in "12.3"')
        position += 1


def condition_of(if_match: str | None, if_none_match: str | None) -> Condition:
    """The precondition the two headers state (absent headers: none)."""
    condition = Condition()
    if if_match is not None:
        if if_match.strip() == "*":
            condition = Condition(exists=True)
        else:
            strong = [tag for weak, tag in entity_tags(if_match, "If-Match") if not weak]
            condition = Condition(versions=frozenset(strong))
    if if_none_match is not None:
        if if_none_match.strip() == "*":
            return Condition(condition.versions, condition.exists, absent=True)
        tags = frozenset(tag for _, tag in entity_tags(if_none_match, "If-None-Match"))
        return Condition(condition.versions, condition.exists, not_versions=tags)
    return condition
