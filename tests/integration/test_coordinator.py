"""The coordinator in-process against real etcd: resume, compaction, stalls, hand-off.

Faults in the watch come from thin wrappers around the real etcd client (a real compaction
below the watch's start; a stream that never delivers), never from a fake etcd.
"""

import asyncio
import time
from collections.abc import AsyncIterator

from cachegrid.coord.coordinator import Coordinator, CoordSettings
from cachegrid.coord.etcd import Etcd, WatchEvent

KEYS = [f"k{i}" for i in range(200)]


def settings(node: str, **overrides) -> CoordSettings:
    values = {"node_id": node, "addr": f"127.0.0.1:{9000 + int(node[1:])}", "lease_ttl": 2,
              "lease_margin": 0.3} | overrides  # fmt: skip
    return CoordSettings(**values)


async def wait_for(condition, limit: float, what: str) -> float:
    started = time.monotonic()
    while not condition():
        assert time.monotonic() - started < limit, f"not {what} within {limit}s"
        await asyncio.sleep(0.02)
    return time.monotonic() - started


def serving(*coordinators: Coordinator) -> bool:
    """Every key has exactly one active owner, and every coordinator serves some."""
    owners = [[c for c in coordinators if c.can_serve(k)] for k in KEYS]
    return all(len(o) == 1 for o in owners) and all(
        any(c.can_serve(k) for k in KEYS) for c in coordinators
    )


class CompactingEtcd(Etcd):
    """Real etcd; before the first watch, history is compacted past the watch's start."""

    compacted = False

    async def watch_prefix(self, prefix: bytes, start_revision: int) -> AsyncIterator[WatchEvent]:
        if not self.compacted:
            self.compacted = True
            await self.put(b"/elsewhere/pad", b"1")
            await self.compact(await self.put(b"/elsewhere/pad", b"2"))
        async for event in super().watch_prefix(prefix, start_revision):
            yield event


class StallingEtcd(Etcd):
    """Real etcd; the first watch opens but silently never delivers anything."""

    stalled = False

    async def watch_prefix(self, prefix: bytes, start_revision: int) -> AsyncIterator[WatchEvent]:
        if not self.stalled:
            self.stalled = True
            await asyncio.Event().wait()
        async for event in super().watch_prefix(prefix, start_revision):
            yield event


async def test_a_compacted_watch_drops_the_cache_and_resnapshots(etcd_servers) -> None:
    (member,) = etcd_servers(1)
    releases: list[bool] = []

    async def on_release(drop_all: bool) -> None:
        releases.append(drop_all)

    a = Coordinator(CompactingEtcd([member.endpoint]), settings("n1"), on_release=on_release)
    await a.start()
    b = Coordinator(Etcd([member.endpoint]), settings("n2"))
    await b.start()
    await wait_for(lambda: serving(a, b), 15, "both serving after a's re-snapshot")
    assert True in releases  # the whole cache was dropped
    assert a.failed is None
    await a.stop()
    await b.stop()


async def test_a_silently_stalled_watch_is_detected_and_replaced(etcd_servers) -> None:
    (member,) = etcd_servers(1)
    a = Coordinator(
        StallingEtcd([member.endpoint]),
        settings("n1", probe_interval=0.3, stall_after=1.0),
    )
    await a.start()
    b = Coordinator(Etcd([member.endpoint]), settings("n2"))
    await b.start()
    took = await wait_for(lambda: serving(a, b), 15, "a sees b despite its stalled watch")
    assert took > 1.0  # only the stall detector could have got a past its dead stream
    assert a.failed is None
    await a.stop()
    await b.stop()


async def test_the_watch_resumes_on_another_member_without_missing_a_change(
    etcd_servers,
) -> None:
    members = etcd_servers(3)
    endpoints = [m.endpoint for m in members]
    a = Coordinator(Etcd(endpoints, timeout=1.0), settings("n1"))
    await a.start()
    await wait_for(lambda: serving(a), 10, "a serving alone")
    members[0].kill()  # a's endpoint: its watch breaks
    b = Coordinator(Etcd(endpoints[1:], timeout=1.0), settings("n2"))
    await b.start()
    await wait_for(lambda: serving(a, b), 30, "a sees b's join after resuming")
    assert a.failed is None  # an event applied twice would have failed a (epochs must rise)
    await a.stop()
    await b.stop()


async def test_a_graceful_stop_hands_off_without_waiting_for_the_lease(etcd_servers) -> None:
    (member,) = etcd_servers(1)
    a = Coordinator(Etcd([member.endpoint]), settings("n1"))
    b = Coordinator(Etcd([member.endpoint]), settings("n2"))
    await a.start()
    await b.start()
    await wait_for(lambda: serving(a, b), 15, "both serving")
    await b.stop()
    assert not any(b.can_serve(k) for k in KEYS)
    took = await wait_for(lambda: serving(a), 10, "a serving every key")
    assert took < a.settings.lease_ttl  # the lease was revoked, not left to expire
    status = a.status()
    assert status["members"] == ["n1"]
    assert status["pending_epochs"] == []
    assert status["activated_epoch"] == status["ring_epoch"] <= status["applied_revision"]
    assert 0 < status["lease_slack_seconds"] <= a.settings.lease_ttl
    await a.stop()


async def test_requests_for_a_range_not_yet_active_wait_then_give_up(etcd_servers) -> None:
    """A new owner holds requests until activation; bounded, so callers get a 503."""
    (member,) = etcd_servers(1)
    a = Coordinator(Etcd([member.endpoint]), settings("n1"))
    await a.start()
    await wait_for(lambda: serving(a), 10, "a serving")
    a.settings = settings("n1", activation_poll=0.25)
    b = Coordinator(Etcd([member.endpoint]), settings("n2"))
    await b.start()
    await wait_for(lambda: b.ring is not None, 5, "b has a ring")
    key = next(k for k in KEYS if b.ownership.is_owner(k))
    assert await b.wait_active(key, hold=10)  # a acks promptly: b activates within the hold
    assert b.can_serve(key)
    assert not await a.wait_active(key, hold=0.1)  # a no longer owns it: no wait, no serve
    await a.stop()
    await b.stop()
