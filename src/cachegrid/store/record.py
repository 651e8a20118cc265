"""The stored record: what one replica keeps for one user key.

Owns: the ``Record`` value type and its mapping to and from the fields of a Redis hash;
``BatchRead``, the outcome of reading many.

Invariants:
- A record is immutable; a newer state of a key is a new record with a greater version.
- A tombstone carries a version and an empty value, so a late older write cannot
  resurrect a deleted key.
- ``decode`` accepts exactly what ``encode`` produces; anything else raises
  ``ReplicaCorrupt`` rather than being guessed at.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from cachegrid.errors import CachegridError, ReplicaCorrupt
from cachegrid.version import Version

# Every user key lives under this prefix on a replica, so anti-entropy can scan just ours.
KEY_PREFIX = b"cg:"

# Hash field names, in the order HMGET asks for them.
FIELDS = (b"e", b"s", b"t", b"v")


@dataclass(frozen=True, slots=True)
class Record:
    version: Version
    tombstone: bool
    value: bytes

    @classmethod
    def tombstone_at(cls, version: Version) -> Record:
        return cls(version, True, b"")


def redis_key(key: str) -> bytes:
    return KEY_PREFIX + key.encode()


def user_key(stored: bytes) -> str:
    """The user key of a Redis key (undecodable bytes, never written by us, are replaced)."""
    return stored[len(KEY_PREFIX) :].decode(errors="replace")


def encode_args(record: Record) -> tuple[int, int, int, bytes]:
    """The ARGV of the set-if-newer script: epoch, seq, tombstone flag, value."""
    version = record.version
    return (version.epoch, version.seq, 1 if record.tombstone else 0, record.value)


def decode(fields: list[bytes | None]) -> Record | None:
    """The record held in the hash fields ``FIELDS``; None when the key is absent."""
    if all(field is None for field in fields):
        return None
    epoch, seq, tombstone, value = fields
    try:
        if tombstone not in (b"0", b"1") or value is None:
            raise ValueError("bad tombstone or value field")
        version = Version(int(epoch or b""), int(seq or b""))
        version.check()
    except ValueError as error:
        raise ReplicaCorrupt(f"corrupt record: {error}") from error
    return Record(version, tombstone == b"1", value)


@dataclass
class BatchRead:
    """The outcome of a multi-key read: a record (or None when absent) or an error, per key."""

    records: dict[str, Record | None] = field(default_factory=dict)
    errors: dict[str, CachegridError] = field(default_factory=dict)
