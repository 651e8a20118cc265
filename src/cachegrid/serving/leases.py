"""Read leases (DESIGN.md §3b): hot keys served from every node's memory, linearizably.

Owns both sides of a lease. ``OwnerLeases`` (at the key's owner O): grants recorded in
the grant table (grants.py), and ``revoke`` — publish a drop record through etcd, then wait
until every holder frozen into it has acknowledged it or its row has expired by O's clock.
``Holder`` (at every other node H): hot-key counting, asks piggybacked on forwarded reads,
installing grants into the copy table (copies.py), replica hits, applying drop records from
the watch stream and acknowledging them to O directly.

Invariants (the safety argument is in docs/linearizability.md, "Read leases"):
- G: while a live row (H, k, v) exists, nothing newer than v leaves O. O guarantees it by
  revoking *before* a new version exists: a write of k, holding k's write lock (so no grant
  of k can be made meanwhile), first revokes every row of k, and only then reads, checks and
  writes the store. A miss of k while rows live revokes first too (the cached entry went:
  flush, eviction, re-snapshot), and a fill result newer than a live row is not answered.
- A row ends only by expiry or by an acknowledgement of the record it was frozen into
  (grants.py S3). Acknowledgements name (O's process nonce, record seq, holder, holder
  incarnation): a late or duplicated one can end no other row.
- Before O acks a ring that moves k away, or gives up its member lease, every row of k has
  been revoked (Node.release): the next owner cannot activate while a copy is live.
- H serves a copy only before (time the ask was sent) + term - margin (term and margin
  from O's reply), under the member lease it asked under; it installs a grant only if no
  record, flush, ring change or re-snapshot touched the key since it sent the ask.
- Applying a record never blocks the watch loop: it is synchronous, and its
  acknowledgement is sent by a task of its own. A revoke is bounded by the expiry of the
  rows it froze (term + margin at most), publishing included.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson

from cachegrid.clock import now as boottime
from cachegrid.errors import CachegridError
from cachegrid.hotkeys import RateCounter
from cachegrid.metrics import Metrics
from cachegrid.serving.copies import Copy, CopyTable, Ticket
from cachegrid.serving.entry import make_entry
from cachegrid.serving.grants import GrantTable, Holder, Row
from cachegrid.serving.ports import Peers
from cachegrid.store.record import Record
from cachegrid.version import Version

log = logging.getLogger(__name__)

ACK_PATH = "/internal/v1/leases:ack"
# Acknowledgements in flight at most; past it a record goes unacknowledged (its owner
# waits the row out: slower, never unsafe).
MAX_ACKS_IN_FLIGHT = 1024


@dataclass(frozen=True)
class LeaseSettings:
    threshold: float = 0.0  # reads/s of a key through a holder before it asks; 0: off
    term: float = 1.0  # seconds a grant lasts
    margin: float = 0.1  # clock-rate drift allowance, seconds
    max_write_rate: float = 0.0  # writes/s of a key above which O stops granting; 0: none
    max_rows: int = 100_000  # rows in the owner's grant table
    max_copies: int = 10_000  # copies at a holder

    @property
    def enabled(self) -> bool:
        return self.threshold > 0


class LeaseView(Protocol):
    """What read leases need of coordination (coord/coordinator.py implements it). No I/O."""

    @property
    def incarnation(self) -> str: ...

    @property
    def member_lease(self) -> int:
        """The id of the member lease this node serves under now (0: none)."""
        ...

    def lease_alive(self) -> bool: ...

    def live_lease(self) -> int:
        """``member_lease`` while ``lease_alive``, else 0 (the replica hit's one check)."""
        ...

    def lease_slack(self) -> float:
        """Seconds before the local lease deadline."""
        ...

    def is_member(self, node_id: str, incarnation: str) -> bool:
        """True if that incarnation of that node is a live member, as this node sees it."""
        ...


class Invalidations(Protocol):
    """Publishes records through etcd's watch stream (coord/invalidation.py). ``publish``
    raises ``CachegridError`` if the record may not have been written: the owner then
    waits its rows out."""

    async def publish(self, record: bytes) -> None: ...


# -- the record ------------------------------------------------------------------------


@dataclass(frozen=True)
class DropRecord:
    """ "Drop your copies of these keys": ``holders`` per key are the rows frozen into it,
    who must acknowledge to ``addr`` naming (``nonce``, ``seq``)."""

    owner: str
    nonce: str
    addr: str
    seq: int
    holders: dict[str, list[Holder]]

    def encode(self) -> bytes:
        return orjson.dumps({"owner": self.owner, "nonce": self.nonce, "addr": self.addr,
                             "seq": self.seq, "keys": self.holders})  # fmt: skip

    @classmethod
    def decode(cls, raw: bytes) -> DropRecord:
        """ValueError if malformed."""
        try:
            doc = orjson.loads(raw)
            holders = {str(k): [(str(h), str(i)) for h, i in v] for k, v in doc["keys"].items()}
            return cls(str(doc["owner"]), str(doc["nonce"]), str(doc["addr"]), int(doc["seq"]),
                       holders)  # fmt: skip
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as e:
            raise ValueError(f"malformed drop record: {e}") from e


# -- the owner's side ------------------------------------------------------------------


@dataclass
class _Pending:
    waiting: set[Holder]  # frozen holders that have not acknowledged yet
    woken: asyncio.Event = field(default_factory=asyncio.Event)


class OwnerLeases:
    def __init__(self, node_id: str, addr: str, view: LeaseView, publisher: Invalidations,
                 settings: LeaseSettings, metrics: Metrics,
                 clock: Callable[[], float] = boottime) -> None:  # fmt: skip
        self.node_id = node_id
        self.addr = addr
        self.view = view
        self.publisher = publisher
        self.settings = settings
        self.table = GrantTable(term=settings.term, margin=settings.margin,
                                max_rows=settings.max_rows)  # fmt: skip
        self.nonce = uuid.uuid4().hex[:12]  # this process: acks of another never match
        self._clock = clock
        self._seq = 0
        self._pending: dict[int, _Pending] = {}  # records awaiting acks, by seq
        self._writes = RateCounter()
        self._metrics = metrics

    def __repr__(self) -> str:
        return f"<OwnerLeases {self.table!r} pending={len(self._pending)}>"

    def grant(self, key: str, holder: Holder, version: Version) -> float | None:
        """Record a lease of ``key`` at ``version`` for ``holder``; the term, or None.
        Called in the same synchronous step as the cache hit it serves, with no write of
        the key in flight or queued (the caller checks both)."""
        now = self._clock()
        reason: float | str
        if not self.settings.enabled:
            reason = "off"
        elif holder[0] == self.node_id or not self.view.is_member(*holder):
            reason = "not_a_member"
        elif 0 < self.settings.max_write_rate < self._writes.rate(key, now):
            reason = "written_often"
        else:
            reason = self.table.grant(key, holder, version, now, self.view.lease_slack())
        if isinstance(reason, str):
            self._metrics.lease_refusals.labels(reason).inc()
            return None
        return reason

    def wrote(self, key: str) -> None:
        """Count a write of ``key`` (keys written often are not granted)."""
        self._writes.observe(key, self._clock())

    def has_rows(self, key: str) -> bool:
        return bool(self.table.live(key, self._clock()))

    def blocks(self, key: str, version: Version) -> bool:
        return self.table.blocks(key, version, self._clock())

    def leased_keys(self) -> list[str]:
        """Keys with a live lease."""
        return self.table.leased_keys(self._clock())

    async def revoke(self, keys: list[str]) -> None:
        """Make sure no holder serves a copy of ``keys`` any more: publish one drop record
        naming the live rows, then wait for each holder's acknowledgement or its row's
        expiry. Rows end only once that is done: if cancelled, they stay (a later revoke
        waits for them again)."""
        now = self._clock()
        frozen = {key: rows for key in keys if (rows := self.table.live(key, now))}
        if not frozen:
            return
        self._seq += 1
        seq = self._seq
        pending = self._pending[seq] = _Pending({h for rows in frozen.values() for h in rows})
        last = max(row.expiry for rows in frozen.values() for row in rows.values())
        try:
            with contextlib.suppress(TimeoutError):  # once every row expired, it is moot
                await asyncio.wait_for(self._publish(seq, frozen), last - now)
            await self._wait(pending, frozen)
        finally:
            del self._pending[seq]
        done = self._clock()
        acked = {h for rows in frozen.values() for h in rows} - pending.waiting
        for key, rows in frozen.items():
            self.table.settle(key, rows, acked, done)
        outcome = "expired" if pending.waiting else "acked"
        self._metrics.invalidation_wait.labels(outcome).observe(done - now)

    def acked(self, nonce: str, seq: int, holder: Holder) -> bool:
        """A holder acknowledged record ``seq``; False if it names no record of ours."""
        if nonce != self.nonce:
            return False
        self.table.acknowledged(holder)
        pending = self._pending.get(seq)
        if pending is None or holder not in pending.waiting:
            return False
        pending.waiting.discard(holder)
        if not pending.waiting:
            pending.woken.set()
        return True

    async def _publish(self, seq: int, frozen: dict[str, dict[Holder, Row]]) -> None:
        record = DropRecord(self.node_id, self.nonce, self.addr, seq,
                            {key: list(rows) for key, rows in frozen.items()})  # fmt: skip
        try:
            await self.publisher.publish(record.encode())
        except CachegridError as error:  # the holders are waited out instead
            log.warning("drop record %d not published (%s): waiting its leases out",
                        seq, error.message)  # fmt: skip

    async def _wait(self, pending: _Pending, frozen: dict[str, dict[Holder, Row]]) -> None:
        while True:
            now = self._clock()
            ends = [row.expiry for rows in frozen.values() for holder, row in rows.items()
                    if holder in pending.waiting and row.expiry > now]  # fmt: skip
            if not ends:
                return
            pending.woken.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(pending.woken.wait(), max(ends) - now)


# -- the holder's side -----------------------------------------------------------------


class HolderLeases:
    def __init__(self, node_id: str, view: LeaseView, peers: Peers, settings: LeaseSettings,
                 metrics: Metrics, clock: Callable[[], float] = boottime) -> None:  # fmt: skip
        self.node_id = node_id
        self.view = view
        self.peers = peers
        self.settings = settings
        self.copies = CopyTable(settings.max_copies)
        self._forwards = RateCounter()  # reads of keys this node forwards
        self._clock = clock
        self._acks: set[asyncio.Task[None]] = set()
        self._replica_hits = metrics.replica_hits
        self._refused = metrics.install_refusals

    def __repr__(self) -> str:
        return f"<HolderLeases {self.copies!r} acks={len(self._acks)}>"

    def serve(self, key: str, *, renew: bool = True) -> Copy | None:
        """A copy this node may answer ``key`` from now (the replica hit path: no I/O).
        None also when the copy is due for renewal and still hot: that read goes to the
        owner and asks again (the others meanwhile still use the copy). Without ``renew``
        (a caller that cannot forward: the hit lane), such a read is None and changes
        nothing: the caller that can, asked next, renews."""
        if not self.copies.holds(key):
            return None  # the common case, an owner hit included: one dict lookup
        now = self._clock()
        copy = self.copies.serve(key, now, self.view.live_lease())
        if copy is None:
            return None
        due = now >= copy.renew_at and not copy.renewing
        if due and not renew:
            return None
        copy.hits += 1
        if due and self._still_hot(copy, now):
            copy.renewing = True
            return None
        self._replica_hits.inc()
        return copy

    def would_ask(self, key: str) -> bool:
        """True if a read of ``key`` forwarded now should ask (or renew) a lease of it, as
        ``asks`` would decide after counting it; no side effect. A forward that cannot
        carry an ask (the hit lane's) leaves such a read to one that can."""
        if not self.settings.enabled or self.copies.asking(key) or not self.view.lease_alive():
            return False
        if self.copies.holds(key):
            return True  # a copy due for renewal, or lapsed while the key was hot
        counter = self._forwards  # (this read counted: one more event in its window)
        return counter.rate(key, self._clock()) + 1 / counter.window >= self.settings.threshold

    def forwarding(self, key: str) -> None:
        """Count a read of ``key`` forwarded to its owner."""
        if self.settings.enabled:
            self._forwards.observe(key, self._clock())

    def asks(self, keys: list[str], owner: str) -> dict[str, Ticket]:
        """Tickets for the keys of a forwarded batch worth asking a lease of."""
        if not self.settings.enabled or not self.view.lease_alive():
            return {}
        now, session = self._clock(), self.view.member_lease
        tickets = {}
        for key in keys:
            if self.copies.asking(key):
                continue
            copy = self.copies.serve(key, now, session)
            if (copy is not None and copy.renewing) or (
                self._forwards.rate(key, now) >= self.settings.threshold
            ):
                tickets[key] = self.copies.ask(key, owner, now, session)
        return tickets

    def ask_field(self, tickets: dict[str, Ticket]) -> dict[str, Any]:
        """The ``lease`` member of a forwarded batchGet asking for ``tickets``."""
        return {"holder": self.node_id, "inc": self.view.incarnation, "keys": list(tickets)}

    def install(self, ticket: Ticket, item: dict[str, Any]) -> None:
        """Install the grant an owner's batch item carries (if any, and if still allowed)."""
        grant = item.get("grant")
        if not isinstance(grant, dict) or item.get("node") != ticket.owner:
            return
        try:
            version = Version.parse(item["version"])
            entry = make_entry(ticket.key, Record(version, False, orjson.dumps(item["value"])))
            term, margin = float(grant["term"]), float(grant["margin"])
        except (KeyError, TypeError, ValueError):
            self._refused.labels("malformed").inc()
            return
        alive = self.view.lease_alive()
        if not alive or not self.copies.install(
            ticket, entry, term, margin, self._clock(), self.view.member_lease
        ):
            self._refused.labels("withdrawn" if alive else "no_lease").inc()

    def finished(self, tickets: dict[str, Ticket]) -> None:
        """The forwarded batch that carried ``tickets`` is over: withdraw what is left."""
        for ticket in tickets.values():
            self.copies.forget(ticket)
            copy = self.copies.serve(ticket.key, self._clock(), ticket.session)
            if copy is not None:
                copy.renewing = False

    def apply_record(self, raw: bytes) -> None:
        """A drop record from the watch stream: drop the named copies and withdraw their
        asks, then (in a task) acknowledge to the owner if we are named."""
        try:
            record = DropRecord.decode(raw)
        except ValueError as error:
            log.error("%s: dropping every copy", error)
            self.copies.drop_all()
            return
        self.copies.drop(record.holders)
        me = (self.node_id, self.view.incarnation)
        if any(me in holders for holders in record.holders.values()):
            self._acknowledge(record, me)

    def drop_all(self) -> None:
        """A re-snapshot, a lost lease: every copy and ask goes."""
        self.copies.drop_all()

    def drop_moved(self, owner_of: Callable[[str], str | None]) -> None:
        """A new ring: drop copies and asks whose key has another owner now (or is ours)."""
        self.copies.drop_where(lambda key, owner: owner_of(key) != owner or owner == self.node_id)

    def flush(self, keys: list[str] | None = None, prefix: str | None = None) -> int:
        if keys is None and prefix is None:
            return self.copies.drop_all()
        if keys is not None:
            return self.copies.drop(keys)
        return self.copies.drop_where(lambda key, owner: key.startswith(prefix or ""))

    def _acknowledge(self, record: DropRecord, me: Holder) -> None:
        if len(self._acks) >= MAX_ACKS_IN_FLIGHT:
            return
        body = orjson.dumps({"nonce": record.nonce, "seq": record.seq, "holder": me[0],
                             "inc": me[1]})  # fmt: skip
        task = asyncio.ensure_future(self._send_ack(record.addr, body))
        self._acks.add(task)
        task.add_done_callback(self._acks.discard)

    async def _send_ack(self, addr: str, body: bytes) -> None:
        try:
            await self.peers.forward("POST", addr, ACK_PATH, hops=0, body=body,
                                     headers={"Content-Type": "application/json"})  # fmt: skip
        except CachegridError as error:  # the owner waits our row out instead
            log.debug("lease ack to %s failed: %s", addr, error.message)

    def _still_hot(self, copy: Copy, now: float) -> bool:
        return copy.hits >= self.settings.threshold * max(now - copy.installed, 1e-3)
