"""A node's part in the cluster: registration, the watch stream, handoff and activation.

Owns: the node's member record and ack in etcd, the one watch of ``<prefix>/``, the
membership view built from it, re-snapshots (compaction, a stalled watch), re-registration
after a lost lease, and the activation of rings. It answers the node's one question,
``can_serve(key)``, without I/O.

Its keys in etcd are those of keyspace.py; the decisions it takes (which epoch a ring
gets, whether a ring may be activated, whether our id is lost, whether the watch stalled)
are membership.py's pure rules. This module is their I/O: the watch, the reads, the puts.

Invariants:
- A ring's epoch follows membership.py's epoch rule. Each revision changes at most one
  member key: a registration is one put, and a lease revocation or expiry deletes the keys
  of one lease, which holds one member key.
- Handoff order on every membership change: apply the ring (keys that moved away stop being
  active at once), let the node release them (``on_release``: drain writes, drop entries),
  then ack the revision. Acks never wait for activation, so handoffs cannot deadlock.
- A ring is activated only after a linearizable read passes membership.py's
  ``may_activate``. Never on the watch alone.
- ``can_serve`` is true only before the session's local deadline and for a key active in
  ``Ownership``. After a lost lease nothing is served until re-registered and re-activated.
- A node id is held exclusively: registration creates ``members/<id>`` only if it is
  absent (one etcd transaction), and rewrites it only while it is attached to our lease.
  Whenever the watch, a snapshot or an activation read shows our id lost (membership.py's
  ``identity_lost``), the session is abandoned: a node never serves under an id it does
  not hold. A second process with a live id waits ``id_wait`` seconds for it to go (a
  previous run's lease expiring), then gives up (``DuplicateNodeId``).
- Read-lease drop records (``inval/``) are handed to ``on_invalidation`` as they are
  applied, from the watch and from snapshots, uninterpreted; it must not block.
- The member lease is revoked (so others take over at once) only after a release with
  nothing served has completed: read leases on our keys are revoked by then. A stop whose
  release does not complete in ``LEAVE_GRACE`` leaves the lease to expire instead.
- Life cycle: ``start`` then ``stop``; ``stop`` returns once every loop has ended, and
  revokes the lease (or lets it expire, see above) even if the task running it is
  cancelled meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import Any

import orjson

from cachegrid.clock import now
from cachegrid.coord.etcd import (
    Etcd,
    EtcdCompacted,
    EtcdError,
    EtcdUnavailable,
    KeyValue,
    WatchEvent,
)
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
from cachegrid.coord.ownership import Ownership
from cachegrid.coord.session import Session
from cachegrid.errors import CachegridError
from cachegrid.lifecycle import uncancellable
from cachegrid.logs import Throttle
from cachegrid.ring import DEFAULT_VNODES, Member, Ring

log = logging.getLogger(__name__)


# Seconds ``stop`` waits for the background loops to end before revoking the lease anyway.
STOP_GRACE = 2.0
# Seconds ``stop`` waits for the last release (writes drained, read leases revoked).
LEAVE_GRACE = 10.0


class DuplicateNodeId(CachegridError):
    """Another live process holds this node's id: this one must not serve."""

    code = "duplicate_node_id"
    status = 503


# Called after a ring is applied or the lease is lost, before the ack: the node must stop
# and drop everything that is no longer active (``drop_all``: its whole cache).
ReleaseFn = Callable[[bool], Awaitable[None]]
# Called with each admin command record (raw); returns the node's result, stored for the
# issuer (commands.py's ``Executor.apply``, which never raises).
AdminFn = Callable[[bytes], Awaitable[dict[str, Any]]]
# Called with each read-lease drop record (raw), synchronously.
InvalidationFn = Callable[[bytes], None]


@dataclass(frozen=True)
class CoordSettings:
    node_id: str
    addr: str  # host:port that other nodes and clients use to reach this node
    weight: int = 1
    prefix: str = "/cachegrid"
    lease_ttl: int = 5
    lease_margin: float = 0.5
    vnodes: int = DEFAULT_VNODES
    # While a ring awaits activation, acks are re-checked on every ack event and at
    # least this often (seconds).
    activation_poll: float = 0.25
    # The node writes its probe key this often; if the watch has not delivered a probe's
    # revision ``stall_after`` seconds later, the watch is deemed stalled: re-snapshot.
    probe_interval: float = 1.0
    stall_after: float = 3.0
    # Seconds to wait for another process to give up this node's id before giving up.
    id_wait: float = 15.0


class Coordinator:
    """One node's coordination. Start with ``start``, stop with ``stop``. One event loop."""

    def __init__(
        self,
        etcd: Etcd,
        settings: CoordSettings,
        *,
        on_release: ReleaseFn | None = None,
        on_admin: AdminFn | None = None,
        on_change: Callable[[], None] | None = None,
        clock: Callable[[], float] = now,
    ) -> None:
        self.settings = settings
        self.ownership = Ownership(settings.node_id)
        self.applied_revision = 0  # the last event handled, release included
        self.incarnation = ""
        self.session: Session | None = None
        self._etcd = etcd
        self._on_release = on_release
        self._on_admin = on_admin
        self._on_invalidation: InvalidationFn = lambda raw: None
        self._on_change = on_change or (lambda: None)
        self._clock = clock
        self._keys = Keyspace.of(settings.prefix)
        self._member_key = self._keys.member(settings.node_id)
        self._members: dict[str, Member] = {}  # the view, as of applied_revision
        self._changed = asyncio.Condition()  # notified on every applied event or activation
        self._probes = Probes(settings.stall_after)
        self.failed: BaseException | None = None  # a background loop died: serve nothing
        self.fatal = asyncio.Event()  # set when the node must exit (``failed`` says why)
        # The session whose member key we created, and that key's revision: identity checks
        # apply only to it (a session still registering holds no key yet).
        self._registered_lease = 0
        self._registered_at = 0
        self._tasks: dict[str, asyncio.Task[None]] = {}  # the background loops, by name
        self._throttle = Throttle()  # of the warnings that repeat while etcd is away
        self._stopping = False

    def attach(self, *, on_release: ReleaseFn | None = None, on_admin: AdminFn | None = None,
               on_invalidation: InvalidationFn | None = None) -> None:  # fmt: skip
        """Set the callbacks once the objects they call exist (the node is built after
        its coordinator, which it needs). Before ``start``."""
        self._on_release = on_release or self._on_release
        self._on_admin = on_admin or self._on_admin
        self._on_invalidation = on_invalidation or self._on_invalidation

    def __repr__(self) -> str:
        slack = f"{self.session.slack():.2f}s" if self.session else "-"
        return (
            f"<Coordinator {self.settings.node_id} applied={self.applied_revision} "
            f"{self.ownership!r} slack={slack}>"
        )

    # -- what the node asks ------------------------------------------------------------

    def can_serve(self, key: str) -> bool:
        """True if this node is the active owner of ``key`` right now. No I/O. (Ownership
        is looked at first: a key of another node, forwarded, is told at once.)"""
        return self.ownership.is_active_owner(key) and self.lease_alive()

    def ready(self) -> bool:
        """Serving: a live lease and an activated ring (what /readyz answers)."""
        return self.lease_alive() and self.ownership.activated_epoch is not None

    def lease_alive(self) -> bool:
        """Before the local lease deadline, with every background loop healthy. No I/O."""
        session = self.session
        return session is not None and session.alive() and self.failed is None

    @property
    def ring(self) -> Ring | None:
        return self.ownership.current

    @property
    def member_lease(self) -> int:
        """The id of the lease we serve under now (0: none)."""
        session = self.session
        return session.lease_id if session is not None else 0

    def live_lease(self) -> int:
        """The lease we serve under, while it is alive (0 otherwise). No I/O."""
        session = self.session
        if session is not None and session.alive() and self.failed is None:
            return session.lease_id
        return 0

    def lease_slack(self) -> float:
        """Seconds before the local lease deadline (0 without a session)."""
        return self.session.slack() if self.session is not None else 0.0

    def is_member(self, node_id: str, incarnation: str) -> bool:
        """True if that incarnation of ``node_id`` is a member in the applied view."""
        member = self._members.get(node_id)
        return member is not None and member.incarnation == incarnation

    @property
    def write_epoch(self) -> int:
        """The epoch of versions written now (the revision that confirmed activation)."""
        return self.ownership.write_epoch

    def status(self) -> dict[str, object]:
        """What status pages and metrics show of this node's coordination."""
        session = self.session
        ring = self.ring
        return {
            "node_id": self.settings.node_id,
            "incarnation": self.incarnation,
            "lease_id": f"{session.lease_id:x}" if session else None,
            "lease_slack_seconds": round(session.slack(), 3) if session else None,
            "applied_revision": self.applied_revision,
            "ring_epoch": ring.epoch if ring else None,
            "activated_epoch": self.ownership.activated_epoch,
            "pending_epochs": self.ownership.pending_epochs,
            "members": sorted(ring.members) if ring else [],
            "failed": repr(self.failed) if self.failed else None,
        }

    async def wait_active(self, key: str, hold: float) -> bool:
        """Hold a request for a key this node owns but has not yet activated, up to
        ``hold`` seconds; True once it can be served."""
        if self.can_serve(key):
            return True
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(hold), self._changed:
                await self._changed.wait_for(
                    lambda: self.can_serve(key) or not self.ownership.is_owner(key)
                )
        return self.can_serve(key)

    # -- life cycle -----------------------------------------------------------------------

    async def start(self) -> None:
        """Register, load the membership snapshot, and start the background loops."""
        await self._register()
        await self._snapshot()
        self._start_watch()
        for loop, name in (
            (self._activation_loop, "coord-activate"),
            (self._lease_loop, "coord-lease"),
            (self._probe_loop, "coord-probe"),
        ):
            self._tasks[name] = self._supervised(loop, name)  # fmt: skip

    async def stop(self) -> None:
        """Leave the cluster: stop serving, end every loop, revoke the lease (its keys go
        with it, so others take over at once). Returns once all of it is done, even if the
        caller is cancelled meanwhile (then the cancellation is passed on)."""
        await uncancellable(self._stop())

    async def _stop(self) -> None:
        self._stopping = True
        self.ownership.reset()
        self._on_change()
        # The watch runs on through the release: as a holder, this node still acknowledges
        # drop records (its copies are gone), so owners need not wait its leases out.
        for name, task in self._tasks.items():
            if name != "coord-watch":
                task.cancel()
        released = self.session is not None and await self._released_before_leaving()
        for task in self._tasks.values():
            task.cancel()
        # Bounded: aetcd can deadlock a watch cancelled while it is being created (its
        # request queue fills while its lock is held), and a stuck loop must not keep
        # the lease alive: serving stopped above, and revoking it hands our keys over.
        if self._tasks:
            _, stuck = await asyncio.wait(self._tasks.values(), timeout=STOP_GRACE)
            if stuck:
                log.warning("loops still running %.0f s after stop: %s", STOP_GRACE,
                            ", ".join(sorted(t.get_name() for t in stuck)))  # fmt: skip
        self._tasks = {}
        if self.session is not None:
            await self.session.close(revoke=released)

    async def _released_before_leaving(self) -> bool:
        """Release everything (nothing is served now); True once done. Until then read
        leases on our keys may be live: revoking the member lease would let the next
        owner activate under them (F1 of docs/design/read-leases-review.md)."""
        try:
            await asyncio.wait_for(self._release(drop_all=True), LEAVE_GRACE)
            return True
        except Exception:  # TimeoutError, or a release that failed: let the lease expire
            log.exception("release before leaving did not complete: the lease will expire")
            return False

    # -- registration and lease -------------------------------------------------------

    async def _register(self) -> None:
        session = Session(
            self._etcd, self.settings.lease_ttl, margin=self.settings.lease_margin,
            clock=self._clock,
        )  # fmt: skip
        await session.start()
        previous = self.session
        self.session = session
        try:
            _, weight = await self._etcd.get(self._keys.weight(self.settings.node_id))
            if weight is not None:
                self._set_weight(weight.value)
            self.incarnation = uuid.uuid4().hex[:12]
            await self._put_member()
            # Outlives the lease: status shows this node as down once it is gone.
            await self._etcd.put(self._keys.known_node(self.settings.node_id),
                                 orjson.dumps({"addr": self.settings.addr}))  # fmt: skip
        except BaseException:
            self.session = previous
            await session.close(revoke=True)  # or its keep-alive loop would run on, orphaned
            raise

    def _member_record(self) -> bytes:
        return orjson.dumps({
            "addr": self.settings.addr,
            "weight": self.settings.weight,
            "incarnation": self.incarnation,
        })  # fmt: skip

    async def _put_member(self) -> None:
        """Create our member key; if another process holds it, wait for it to go."""
        session = self.session
        assert session is not None
        deadline = self._clock() + self.settings.id_wait
        warned = False
        while True:
            holder = await self._etcd.put_if_absent(
                self._member_key, self._member_record(), session.lease_id
            )
            if holder is None:
                _, ours = await self._etcd.get(self._member_key)
                self._registered_at = ours.mod_revision if ours else 0
                self._registered_lease = session.lease_id
                return
            if self._clock() >= deadline:
                raise DuplicateNodeId(
                    f"node id {self.settings.node_id!r} is held by another live process "
                    f"({holder.value[:200]!r}, lease {holder.lease:x}); give each node its "
                    "own node.id"
                )
            if not warned:
                log.warning("node id %r is held by lease %x (%r): waiting up to %.0fs for it",
                            self.settings.node_id, holder.lease, holder.value[:200],
                            self.settings.id_wait)  # fmt: skip
                warned = True
            await asyncio.sleep(min(0.5, self.settings.id_wait / 10))

    async def _rewrite_member(self) -> None:
        """Rewrite our member key (new weight), only while it is still ours."""
        session = self.session
        assert session is not None
        if not await self._etcd.put_if_lease(
            self._member_key, self._member_record(), session.lease_id
        ):
            self._give_up_lease("our member key is no longer attached to our lease")

    def _give_up_lease(self, reason: str) -> None:
        """Serve nothing from now on and abandon the session: the lease loop registers anew
        (our member key is not ours any more, or a loop died)."""
        session = self.session
        if session is not None and not self._stopping:
            log.error("node %s gives up its lease: %s", self.settings.node_id, reason,
                      extra={"event": "lease_given_up"})  # fmt: skip
            self.ownership.reset()
            self._on_change()
            session.abandon(reason)

    def _holds_id(self) -> bool:
        """True once the current session has created our member key."""
        session = self.session
        return session is not None and session.lease_id == self._registered_lease

    def _check_identity(self, key: bytes, lease: int | None) -> None:
        """``lease`` is the lease our member key has now (None: gone)."""
        session = self.session
        if key != self._member_key or session is None:
            return
        reason = identity_lost(self._holds_id(), session.lease_id, lease)
        if reason is not None:
            self._give_up_lease(reason)

    def _set_weight(self, raw: bytes) -> bool:
        """Adopt the operator's weight; True if it changed."""
        weight = parse_weight(raw)
        if weight is None:
            log.error("ignoring malformed weight %r", raw[:50])
            return False
        if weight == self.settings.weight:
            return False
        self.settings = replace(self.settings, weight=weight)
        return True

    async def _lease_loop(self) -> None:
        """When the lease is lost: serve nothing, drop everything, register anew."""
        while not self._stopping:
            session = self.session
            assert session is not None
            await session.lost.wait()
            self.ownership.reset()
            self._on_change()
            await self._release(drop_all=True)
            await session.close(revoke=True)
            await self._retry(self._register)
            self._on_change()

    # -- the watch stream ---------------------------------------------------------------

    async def _snapshot(self) -> None:
        """Rebuild the view from a linearizable read of the whole prefix."""
        snapshot = await self._etcd.get_prefix(self._keys.root)
        before = dict(self._members)
        self._members = {}
        newest_put = 0
        for item in snapshot.items:
            if item.key.startswith(self._keys.members):
                self._read_member(item)
                newest_put = max(newest_put, item.mod_revision)
        for item in snapshot.items:
            if item.key.startswith(self._keys.invalidations):
                self._on_invalidation(item.value)
        ours = next((i for i in snapshot.items if i.key == self._member_key), None)
        self._check_identity(self._member_key, ours.lease if ours else None)
        current = self.ownership.current
        epoch = snapshot_epoch(current.epoch if current else None, newest_put,
                               self._members != before, snapshot.revision)  # fmt: skip
        if epoch is not None:
            await self._apply_ring(epoch)
        # Set last: an ack of applied_revision must not run ahead of the release above.
        self.applied_revision = snapshot.revision
        await self._ack()

    async def _watch_loop(self) -> None:
        while not self._stopping:
            try:
                resume = self.applied_revision + 1
                async for event in self._etcd.watch_prefix(self._keys.root, resume):
                    await self._apply_event(event)
            except EtcdCompacted as error:
                log.warning("watch compacted (%s): re-snapshot", error.message)
                await self._resync()
            except (EtcdUnavailable, EtcdError) as error:
                self._warn("watch", "watch broke: %s; resuming at %d", error.message,
                           self.applied_revision + 1)  # fmt: skip
                await asyncio.sleep(0.2)

    async def _resync(self) -> None:
        """Events may have been missed: drop the whole cache and start from a snapshot."""
        await self._release(drop_all=True)
        await self._retry(self._snapshot)

    async def _apply_event(self, event: WatchEvent) -> None:
        if event.key.startswith(self._keys.members):
            node_id = Keyspace.name_under(event.key, self._keys.members)
            known = node_id in self._members
            if event.kind == "put":
                self._read_member(KeyValue(event.key, event.value, 0, event.revision, event.lease))
                if not known and node_id in self._members:
                    log.info("member %s joined at %s", node_id, self._members[node_id].addr,
                             extra={"event": "member_joined", "member": node_id,
                                    "revision": event.revision})  # fmt: skip
            elif self._members.pop(node_id, None) is not None:
                log.info("member %s left (lease revoked or expired)", node_id,
                         extra={"event": "member_left", "member": node_id,
                                "revision": event.revision})  # fmt: skip
            if event.revision > self._registered_at:  # not the past of an earlier session
                self._check_identity(event.key, event.lease if event.kind == "put" else None)
            await self._apply_ring(event.revision)
        elif event.key == self._keys.weight(self.settings.node_id) and event.kind == "put":
            if self._set_weight(event.value) and self.session and self.session.alive():
                with contextlib.suppress(EtcdUnavailable):
                    await self._rewrite_member()  # its own event then changes the ring
        elif event.key.startswith(self._keys.commands) and event.kind == "put":
            await self._run_admin(event)
        elif event.key.startswith(self._keys.invalidations) and event.kind == "put":
            self._on_invalidation(event.value)
        # Only now, with the ring applied and released, does the event count as applied.
        self.applied_revision = event.revision
        async with self._changed:
            self._changed.notify_all()

    def _read_member(self, item: KeyValue) -> None:
        node_id = Keyspace.name_under(item.key, self._keys.members)
        member = parse_member(node_id, item.value)
        if member is None:
            log.error("ignoring malformed member record %r", item.value[:200])
            return
        self._members[node_id] = member

    async def _apply_ring(self, epoch: int) -> None:
        """Handoff, releasing side: apply the new ring, release, then ack ``epoch``."""
        ring = Ring(list(self._members.values()), epoch=epoch, vnodes=self.settings.vnodes)
        self.ownership.apply(ring)
        self._on_change()
        started = self._clock()
        await self._release(drop_all=False)
        await self._ack(epoch)
        released = self._clock() - started
        log.info("ring epoch %d applied: %d members (%s); released and acked in %.3f s",
                 epoch, len(ring.members), ", ".join(sorted(self._members)), released,
                 extra={"event": "ring_applied", "epoch": epoch, "members": sorted(self._members),
                        "release_seconds": round(released, 4)})  # fmt: skip

    async def _run_admin(self, event: WatchEvent) -> None:
        """Carry out an admin command and leave the result for its issuer."""
        if self._on_admin is None:
            return
        result = await self._on_admin(event.value)
        command_id = Keyspace.name_under(event.key, self._keys.commands)
        done = self._keys.result(command_id, self.settings.node_id)
        with contextlib.suppress(EtcdUnavailable, EtcdError):
            await self._etcd.put(done, orjson.dumps(result), lease=event.lease or None)

    async def _release(self, *, drop_all: bool) -> None:
        if self._on_release is not None:
            await self._on_release(drop_all)

    async def _ack(self, revision: int | None = None) -> int | None:
        """Tell the others we applied and released everything up to ``revision`` (default:
        ``applied_revision``); the revision of the ack's own write, or None if not written."""
        session = self.session
        if session is None or not session.alive():
            return None  # no live lease: nobody waits for our ack
        value = str(self.applied_revision if revision is None else revision).encode()
        try:
            return await self._etcd.put(self._keys.ack(self.settings.node_id), value,
                                        lease=session.lease_id)  # fmt: skip
        except (EtcdUnavailable, EtcdError) as error:  # e.g. NOSPACE: acks resume later
            self._warn("ack", "ack of %s not written: %s", value.decode(), error.message)
            return None

    # -- activation -----------------------------------------------------------------------

    async def _activation_loop(self) -> None:
        waiting: tuple[int, float] | None = None  # the epoch waited for, since when
        while not self._stopping:
            epoch = self.ownership.needs_activation()
            if epoch is None or not (self.session and self.session.alive()):
                await self._wait_change(self.settings.activation_poll)
                continue
            if waiting is None or waiting[0] != epoch:
                waiting = (epoch, self._clock())
            try:
                confirmed_at = await self._all_acked(epoch)
            except (EtcdUnavailable, EtcdError):
                confirmed_at = None
            if confirmed_at is not None and self.ownership.activate(epoch, confirmed_at):
                waited = self._clock() - waiting[1]
                log.info("ring epoch %d active: every live member acked it, after %.3f s",
                         epoch, waited, extra={"event": "ring_activated", "epoch": epoch,
                                               "wait_seconds": round(waited, 4)})  # fmt: skip
                self._on_change()
                async with self._changed:
                    self._changed.notify_all()
            else:
                await self._wait_change(self.settings.activation_poll)

    async def _all_acked(self, epoch: int) -> int | None:
        """A linearizable read: has every other live member acked a revision >= epoch?
        The read's revision if so, else None."""
        snapshot = await self._etcd.get_prefix(self._keys.root)
        members, acks = members_and_acks(snapshot.items, self._keys)
        session = self.session
        lease = session.lease_id if session and self._holds_id() else 0
        newest = newest_member_change(snapshot.items, self._keys)
        verdict = may_activate(members, acks, self.settings.node_id, lease, epoch, newest)
        if verdict is Activation.NOT_OURS:
            self._check_identity(self._member_key, members.get(self.settings.node_id))
        return snapshot.revision if verdict is Activation.YES else None

    async def _wait_change(self, at_most: float) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(at_most), self._changed:
                await self._changed.wait()

    # -- stall detection ----------------------------------------------------------------

    async def _probe_loop(self) -> None:
        """Re-ack regularly (peers that joined from a snapshot may wait on it); if the watch
        does not deliver our own ack's event in time, it has stalled: re-snapshot."""
        while not self._stopping:
            await asyncio.sleep(self.settings.probe_interval)
            written = await self._ack()
            if written is not None:
                self._probes.written(written, self._clock())
            if self._probes.stalled(self.applied_revision, self._clock()):
                log.warning("watch stalled at %d: re-snapshot", self.applied_revision)
                await self._restart_watch()

    def _start_watch(self) -> None:
        self._tasks["coord-watch"] = self._supervised(self._watch_loop, "coord-watch",
                                                      on_restart=self._resync)  # fmt: skip

    async def _restart_watch(self) -> None:
        watch = self._tasks["coord-watch"]
        watch.cancel()
        await asyncio.gather(watch, return_exceptions=True)
        await self._resync()
        self._start_watch()

    # -- helpers --------------------------------------------------------------------------

    def _warn(self, kind: str, message: str, *args: object) -> None:
        """A warning that may repeat many times a second while etcd is away: logged with
        backoff (logs.py), saying how many like it were held back."""
        held = self._throttle.allow(kind, self._clock())
        if held is None:
            return
        if held:
            message, args = message + " (%d more like it held back)", (*args, held)
        log.warning(message, *args)

    def _supervised(
        self,
        loop: Callable[[], Awaitable[None]],
        name: str,
        on_restart: Callable[[], Awaitable[None]] | None = None,
    ) -> asyncio.Task[None]:
        """Run a background loop. If it dies of a bug, never stay alive and useless: give up
        the lease (others take our keys; the lease loop registers anew), then run the loop
        again, with backoff, after ``on_restart`` (the watch: it may have died half-way
        through an event, so re-snapshot). If another process holds our id, exit."""

        async def run() -> None:
            delay = 0.2
            while not self._stopping:
                try:
                    await loop()
                    return
                except DuplicateNodeId as error:
                    log.error("%s", error.message)
                    self.failed = error
                    self.fatal.set()
                    self._on_change()
                    return
                except Exception as error:
                    log.exception("%s failed: giving up the lease, restarting it", name)
                    self.failed = error
                    self._give_up_lease(f"{name} failed: {error!r}")
                    await asyncio.sleep(delay)
                    delay = min(2 * delay, 5.0)
                    self.failed = None
                    if on_restart is not None:
                        await on_restart()

        return asyncio.create_task(run(), name=name)

    async def _retry(self, step: Callable[[], Awaitable[None]]) -> None:
        """Run ``step`` until it gets through to etcd (or we are stopping)."""
        delay = 0.1
        while not self._stopping:
            try:
                await step()
                return
            except (EtcdUnavailable, EtcdError) as error:
                self._warn("retry", "etcd: %s; retrying", error.message)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)
