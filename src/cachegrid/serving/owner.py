"""The owner's read and write paths (DESIGN.md §4), independent of HTTP.

Owns: what a node does with a request for a key it owns — cache hits, single-flight fills,
per-key serialized writes with preconditions and versions — and how it releases keys on
handoff.

Invariants:
- S2: every write of a key runs here, at its active owner, serialized with the other writes
  of the key, and updates the cache before it is acknowledged. With S1 this makes every
  cache hit a linearizable read.
- A fill inserts its result only if no write of the key was under way at any moment of
  the fill, and ownership did not change meanwhile: a write invalidates and detaches the
  key's fill both when it starts and when it ends (just before it updates the cache), so
  a fill that overlapped it in any way neither caches its value nor serves a reader that
  arrives after the write completed; and no write of the key is in flight or queued when
  it inserts. A fill never replaces a newer cached entry.
- A fill belongs to one activation: a release detaches every fill (no reader arriving
  after it joins one), and a fill that completes under another activation than the one it
  began in, or once the key is no longer served here, answers nobody: its readers start
  over (and are forwarded, or fill anew). Otherwise a fill begun before a handoff could
  answer, after the key came back, a reader that arrived after another owner's write.
- Versions are (write epoch, seq): the write epoch rises with every activation and across
  owners (coord/ownership.py); seq rises with every write of this node.
- A write acknowledged by the store after the node's lease deadline is answered as
  indeterminate (the key may be served elsewhere already), never as 200. One that finishes
  during a handoff is acknowledged: the handoff waits for it before the new owner can
  activate (``release``), and the entry is dropped.
- A hit does no I/O and awaits nothing; at most it offers its key to the inconsistency
  detector (detector.py), which never waits.
- Read leases (leases.py, invariant G): a write of a key revokes the key's read leases
  under the key's write lock, before it creates a new version; a grant is made only in the
  synchronous step of a hit, with no write of the key in flight or queued; a miss of a key
  with live leases revokes them first, and a fill never answers a version newer than a
  live lease's. Release revokes the leases of every key no longer served before the node
  may ack the ring.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from cachegrid.batching import Batcher
from cachegrid.errors import (
    CachegridError,
    Indeterminate,
    NotFound,
    StoreUnavailable,
    Unavailable,
    VersionMismatch,
    WriteIndeterminate,
)
from cachegrid.localcache import Entry, LocalCache, entry_version, is_tombstone
from cachegrid.metrics import Metrics
from cachegrid.ring import Member
from cachegrid.serving.detector import StaleDetector
from cachegrid.serving.entry import make_entry
from cachegrid.serving.grants import Holder
from cachegrid.serving.leases import OwnerLeases
from cachegrid.serving.ports import OwnerView, Store
from cachegrid.singleflight import Group
from cachegrid.store.record import Record
from cachegrid.version import Version

log = logging.getLogger(__name__)


class NotOwner(Exception):
    """The key belongs to another node under the current ring: forward it there."""

    def __init__(self, owner: Member, epoch: int) -> None:
        super().__init__(owner.node_id)
        self.owner = owner
        self.epoch = epoch


@dataclass(frozen=True, slots=True)
class Condition:
    """A request's precondition (RFC 9110 §13), on versions as opaque strings:
    If-Match, one of ``versions`` (or any existing value with ``exists``); If-None-Match,
    none of ``not_versions`` (or no value at all with ``absent``)."""

    versions: frozenset[str] | None = None
    exists: bool = False
    absent: bool = False
    not_versions: frozenset[str] = frozenset()

    def check(self, current: Entry) -> None:
        """VersionMismatch if the precondition fails on ``current`` (a write's rule)."""
        tag = None if is_tombstone(current) else str(entry_version(current))
        reason = self.if_match_fails(tag) or self.if_none_match_fails(tag)
        if reason is not None:
            raise VersionMismatch(reason)

    def if_match_fails(self, tag: str | None) -> str | None:
        """Why If-Match fails on the current version ``tag`` (None: no value), or None."""
        if self.versions is None and not self.exists:
            return None
        if tag is None:
            return "If-Match: the key does not exist"
        if self.versions is not None and tag not in self.versions:
            return f'If-Match: the current version is "{tag}"'
        return None

    def if_none_match_fails(self, tag: str | None) -> str | None:
        """Why If-None-Match fails (a read answers 304 then), or None."""
        if tag is None:
            return None
        if self.absent:
            return "If-None-Match: * but the key exists"
        if tag in self.not_versions:
            return f'If-None-Match: the current version is "{tag}"'
        return None

    @property
    def conditional(self) -> bool:
        return self.versions is not None or self.exists or self.absent or bool(self.not_versions)


ANY = Condition()


@dataclass
class _Fill:
    activation: int  # the owner's write epoch when the fill began: one per activation
    invalidated: bool = False


class _FillOutlived(Exception):
    """The fill completed under another activation than its own: answer nobody with it."""


class Node:
    def __init__(
        self,
        node_id: str,
        owner: OwnerView,
        store: Store,
        cache: LocalCache,
        *,
        hold: float = 2.0,
        metrics: Metrics | None = None,
        stale_check_every: int = 100,
        stale_checks_per_second: float = 20.0,
        max_batch: int = 64,
        leases: OwnerLeases | None = None,
    ) -> None:
        self.node_id = node_id
        self.owner = owner
        self.store = store
        self.cache = cache
        self.hold = hold  # seconds a request waits for its key's range to activate
        self._flights: Group[Entry] = Group()
        # The newest fill in flight per key. An older one for the same key exists only if a
        # write detached it, and then it is invalidated already.
        self._fills: dict[str, _Fill] = {}
        self._locks: dict[str, asyncio.Lock] = {}  # writes in flight or queued, by key
        self._waiters: dict[str, int] = {}  # how many writes use each lock
        self._seq = 0
        self.leases = leases  # read leases granted on keys of this node (None: never)
        self.metrics = metrics or Metrics()
        self._hit = self.metrics.cache_results.labels("hit")
        self._miss = self.metrics.cache_results.labels("miss")
        self._read_seconds = self.metrics.store_seconds.labels("read")
        self._write_seconds = self.metrics.store_seconds.labels("write")
        self._read_batch_keys = self.metrics.batch_keys.labels("store_read")
        self._write_batch_keys = self.metrics.batch_keys.labels("store_write")
        # Store calls made in the same loop turn go out as one batch (batching.py).
        self._reads: Batcher[str, Record | None] = Batcher(self._read_batch, max_batch=max_batch)
        self._writes: Batcher[tuple[str, Record], Version] = Batcher(
            self._write_batch, max_batch=max_batch
        )
        # Re-reads one hit in ``stale_check_every`` (0: never), at most
        # ``stale_checks_per_second``; the composition root starts and stops it.
        self.detector = StaleDetector(cache, store, owner, self.is_writing, self.metrics,
                                      every=stale_check_every,
                                      per_second=stale_checks_per_second)  # fmt: skip

    def __repr__(self) -> str:
        return (
            f"<Node {self.node_id} {self.cache!r} fills={len(self._fills)} "
            f"writing={len(self._locks)}>"
        )

    # -- reads --------------------------------------------------------------------------

    def hit(self, key: str, *, tombstones: bool = True) -> Entry | None:
        """The cached entry of ``key`` if this node may serve it now; no I/O, no await.
        Only valid keys are ever cached, so the caller may look here before validating.
        Without ``tombstones``, a cached tombstone is not a hit (and not counted one)."""
        if self.owner.can_serve(key):
            entry = self.cache.get(key)
            if entry is not None and (tombstones or not is_tombstone(entry)):
                self._hit.inc()
                self.detector.sample(key)
                return entry
        return None

    async def get(self, key: str) -> tuple[Entry, bool]:
        """(entry, hit). NotOwner to forward; Unavailable if the range is not active in time.

        The entry may be a tombstone (deleted, or never written): the caller answers 404.
        """
        entry = self.hit(key)
        if entry is not None:
            return entry, True
        for _attempt in range(3):
            if not self.owner.can_serve(key):
                await self._await_serving(key)
            if self.leases is not None and self.leases.has_rows(key):
                await self._revoke(key)  # the leased entry left the cache: G first
            self._miss.inc()
            try:
                entry = await self._flights.do(key, lambda: self._fill(key, self._new_fill(key)))
            except _FillOutlived:
                continue  # ownership changed during the fill: start over
            return entry, False
        raise Unavailable("ownership of the key kept changing during the read; retry")

    def _new_fill(self, key: str) -> _Fill:
        """Register a fill the moment its flight is created, before its task first runs,
        so that no write can start unseen in between."""
        fill = self._fills[key] = _Fill(self.owner.write_epoch)
        return fill

    async def _fill(self, key: str, fill: _Fill) -> Entry:
        self.metrics.fills.inc()
        started = time.perf_counter()
        try:
            record = await self._reads.submit(key)
        finally:
            # A write may have detached this fill and a newer one taken its place: remove
            # only our own. (A detached fill is already invalidated: nothing is lost.)
            if self._fills.get(key) is fill:
                del self._fills[key]
            self._read_seconds.observe(time.perf_counter() - started)
        if fill.activation != self.owner.write_epoch or not self.owner.can_serve(key):
            raise _FillOutlived
        entry = make_entry(key, record)
        if self.leases is not None and self.leases.blocks(key, entry_version(entry)):
            # A version newer than a live lease's (an indeterminate write surfacing, a fill
            # that overlapped a write): a holder may still serve the older one. Retry,
            # revoking first.
            raise _FillOutlived
        cached = self.cache.get(key)
        newer_cached = cached is not None and entry_version(cached) >= entry_version(entry)
        if not fill.invalidated and not newer_cached and key not in self._locks:
            self.cache.put(key, entry)
        return entry

    async def _read_batch(self, keys: list[str]) -> list[Record | CachegridError | None]:
        self._read_batch_keys.observe(len(keys))
        result = await self.store.read_many(keys)
        return [result.errors[key] if key in result.errors else result.records[key] for key in keys]

    # -- writes -------------------------------------------------------------------------

    async def put(self, key: str, value: bytes, condition: Condition = ANY) -> Version:
        """Write ``value`` (encoded JSON). VersionMismatch if ``condition`` fails."""
        return await self._write(key, value, condition)

    async def delete(self, key: str, condition: Condition = ANY) -> Version:
        """Write a tombstone. NotFound if the key does not exist."""
        return await self._write(key, None, condition)

    async def _write(self, key: str, value: bytes | None, condition: Condition) -> Version:
        await self._await_serving(key)
        with self._key_lock(key) as lock:
            async with lock:
                self._invalidate_fill(key)
                if self.leases is not None:
                    # Before a new version exists, no copy of an older one may be served.
                    self.leases.wrote(key)
                    await self.leases.revoke([key])
                current = await self._current(key)
                condition.check(current)
                if value is None and is_tombstone(current):
                    raise NotFound("no such key")
                if not self.owner.can_serve(key):
                    raise Unavailable("ownership of the key moved; retry")
                self._seq += 1
                version = Version(self.owner.write_epoch, self._seq)
                record = Record.tombstone_at(version) if value is None else Record(
                    version, False, value
                )  # fmt: skip
                await self._store_and_cache(key, record)
                return version

    async def _current(self, key: str) -> Entry:
        """The key's current state for preconditions: cached, or read from the store."""
        entry = self.cache.get(key)
        if entry is None:
            entry = make_entry(key, await self.store.read(key))
        return entry

    async def _store_and_cache(self, key: str, record: Record) -> None:
        started = time.perf_counter()
        try:
            stored = await self._writes.submit((key, record))
        except (StoreUnavailable, WriteIndeterminate):
            self.cache.evict(key)
            raise
        finally:
            self._write_seconds.observe(time.perf_counter() - started)
            # A fill that began while this write was under way may hold the old value.
            self._invalidate_fill(key)
        if stored != record.version:
            self.cache.evict(key)
            log.error("write of %r at %s found newer %s in the store", key, record.version, stored)
            raise Indeterminate(f"the store holds a newer version {stored}; write superseded")
        if not self.owner.lease_alive():
            # Past the deadline, the key may already be served elsewhere without our ack.
            self.cache.evict(key)
            raise Indeterminate("the write reached the store, but this node's lease ran out "
                                "before it could acknowledge it")  # fmt: skip
        if not self.owner.can_serve(key):
            # A handoff began meanwhile. It waits for this write before acking the new ring,
            # so the new owner activates only after the write is in the store: acknowledge
            # it, but keep no entry for a key this node no longer serves.
            self.cache.evict(key)
            return
        self.cache.put(key, make_entry(key, record))

    async def _write_batch(self, items: list[tuple[str, Record]]) -> list[Version | CachegridError]:
        self._write_batch_keys.observe(len(items))
        return await self.store.write_many(items)

    # -- handoff ------------------------------------------------------------------------

    async def release(self, drop_all: bool) -> None:
        """Called by coordination before it acks a new ring: let writes on keys no longer
        active finish, then drop their entries (or every entry)."""
        for fill in self._fills.values():
            fill.invalidated = True
        self._flights.detach_all()  # no reader arriving from now on joins a fill of before
        moving = [lock for key, lock in self._locks.items() if not self.owner.can_serve(key)]
        for lock in moving:
            async with lock:  # a write holding it finishes (its store call has a deadline)
                pass
        if self.leases is not None:
            # Copies of keys we no longer serve must be gone before the ack: the next owner
            # activates on it. (Bounded: rows expire within a term.)
            await self.leases.revoke(
                [k for k in self.leases.leased_keys() if not self.owner.can_serve(k)]
            )
        if drop_all:
            self.cache.clear()
            return
        for key in self.cache.cached_keys():
            if not self.owner.can_serve(key):
                self.cache.evict(key)

    def flush(self, keys: list[str] | None = None, prefix: str | None = None) -> int:
        """Drop cached entries (all, those in ``keys``, or those starting with ``prefix``);
        how many. Safe at any time: the store holds the truth."""
        for fill in self._fills.values():
            fill.invalidated = True  # a fill in flight must not refill what was flushed
        if keys is None and prefix is None:
            count = len(self.cache)
            self.cache.clear()
            return count
        chosen = keys if keys is not None else self._keys_with_prefix(prefix or "")
        count = 0
        for key in chosen:
            if self.cache.get(key) is not None:
                self.cache.evict(key)
                count += 1
        return count

    # -- read leases --------------------------------------------------------------------

    def grant_hit(self, key: str, entry: Entry, holder: Holder) -> float | None:
        """A read lease on ``key`` for ``holder``, in the same synchronous step as the hit
        that returned ``entry``; the term, or None. Never while a write of the key is in
        flight or queued, nor on a tombstone or a key not served here."""
        if (self.leases is None or is_tombstone(entry) or key in self._locks
                or not self.owner.can_serve(key)):  # fmt: skip
            return None
        return self.leases.grant(key, holder, entry_version(entry))

    async def _revoke(self, key: str) -> None:
        """Revoke the read leases of ``key`` under its write lock (no grant meanwhile)."""
        assert self.leases is not None
        with self._key_lock(key) as lock:
            async with lock:
                await self.leases.revoke([key])

    # -- helpers ------------------------------------------------------------------------

    def is_writing(self, key: str) -> bool:
        """True while a write of ``key`` is in flight or queued here."""
        return key in self._locks

    def _keys_with_prefix(self, prefix: str) -> list[str]:
        return [key for key in self.cache.cached_keys() if key.startswith(prefix)]

    async def _await_serving(self, key: str) -> None:
        """Return once this node may serve ``key``; NotOwner or Unavailable otherwise."""
        if self.owner.can_serve(key):
            return
        ring = self.owner.ring
        if ring is None:
            raise Unavailable("this node has no ring yet")
        owner = ring.owner_member(key)
        if owner.node_id != self.node_id:
            raise NotOwner(owner, ring.epoch)
        started = time.perf_counter()
        active = await self.owner.wait_active(key, self.hold)
        self.metrics.handoff_wait.observe(time.perf_counter() - started)
        if not active:
            raise Unavailable("the key's range is being handed over to this node; retry")

    def _invalidate_fill(self, key: str) -> None:
        fill = self._fills.get(key)
        if fill is not None:
            fill.invalidated = True
        self._flights.detach(key)

    @contextmanager
    def _key_lock(self, key: str) -> Iterator[asyncio.Lock]:
        """The lock serializing writes of ``key``, dropped once no write uses it."""
        lock = self._locks.setdefault(key, asyncio.Lock())
        self._waiters[key] = self._waiters.get(key, 0) + 1
        try:
            yield lock
        finally:
            self._waiters[key] -= 1
            if not self._waiters[key]:
                del self._waiters[key]
                del self._locks[key]
