"""Stored records: decode accepts exactly what encode produces."""

import pytest

from cachegrid.errors import BadRequest, ReplicaCorrupt, TooLarge
from cachegrid.keys import check_key
from cachegrid.store.record import Record, decode, encode_args, redis_key, user_key
from cachegrid.version import Version


def as_fields(record: Record) -> list[bytes | None]:
    epoch, seq, tombstone, value = encode_args(record)
    return [str(epoch).encode(), str(seq).encode(), str(tombstone).encode(), value]


@pytest.mark.parametrize(
    "record",
    [
        Record(Version(1, 0), False, b'{"a": 1}'),
        Record(Version(2**53 - 1, 5), False, b""),
        Record.tombstone_at(Version(9, 9)),
    ],
)
def test_decode_inverts_encode(record: Record) -> None:
    assert decode(as_fields(record)) == record


def test_absent_key_decodes_to_none() -> None:
    assert decode([None, None, None, None]) is None


@pytest.mark.parametrize(
    "fields",
    [
        [b"x", b"1", b"0", b"v"],
        [b"1", None, b"0", b"v"],
        [b"1", b"1", b"2", b"v"],
        [b"1", b"1", b"0", None],
        [b"-1", b"1", b"0", b"v"],
        [str(2**60).encode(), b"1", b"0", b"v"],
    ],
)
def test_malformed_fields_are_reported_as_corrupt(fields: list[bytes | None]) -> None:
    with pytest.raises(ReplicaCorrupt):
        decode(fields)


def test_keys_map_to_a_private_namespace_and_back() -> None:
    assert redis_key("user:ü") == b"cg:user:\xc3\xbc"
    assert user_key(redis_key("user:ü")) == "user:ü"


@pytest.mark.parametrize(
    ("key", "error"),
    [("", BadRequest), ("a\nb", BadRequest), ("\x7f", BadRequest), ("\ud800", BadRequest),
     ("k" * 1025, TooLarge), ("é" * 513, TooLarge)],
)  # fmt: skip
def test_invalid_keys_are_rejected(key: str, error: type[Exception]) -> None:
    with pytest.raises(error):
        check_key(key)


def test_valid_keys_pass() -> None:
    check_key("k" * 1024)
    check_key("users/42:profile 🙂")
