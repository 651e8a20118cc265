"""User keys: what a valid key is (DESIGN.md §2).

Owns: the validation rule for keys, shared by the store, the node and the client, so a key
accepted by one layer is accepted by all.

Invariant: a valid key is a UTF-8 string of 1..max_bytes bytes with no control characters.
"""

from __future__ import annotations

import re

from cachegrid.errors import BadRequest, TooLarge

DEFAULT_MAX_KEY_BYTES = 1024

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def check_key(key: str, max_bytes: int = DEFAULT_MAX_KEY_BYTES) -> None:
    """Raise BadRequest or TooLarge unless ``key`` is valid."""
    if not key:
        raise BadRequest("key must not be empty")
    try:
        size = len(key.encode())
    except UnicodeEncodeError as error:
        raise BadRequest("key is not valid UTF-8") from error
    if size > max_bytes:
        raise TooLarge(f"key is {size} bytes, the limit is {max_bytes} (store.max_key_bytes)")
    if _CONTROL.search(key):
        raise BadRequest("key must not contain control characters")
