"""The lease session against real etcd: the deadline, and losing the lease."""

import asyncio
import time

import pytest

from cachegrid.clock import now
from cachegrid.coord.etcd import Etcd
from cachegrid.coord.session import Session
from tests.integration.faults import TcpProxy


async def test_the_deadline_trails_the_send_time_by_ttl_minus_margin(etcd_servers) -> None:
    (member,) = etcd_servers(1)
    etcd = Etcd([member.endpoint])
    session = Session(etcd, 3, margin=0.5)
    before = now()
    await session.start()
    assert session.alive()
    first = session.deadline
    assert before + 3 - 0.5 <= first <= now() + 3 - 0.5
    await asyncio.sleep(2.5)  # near the first deadline: keep-alives must have extended it
    assert session.alive()
    # What the design promises is renewal before the deadline, not a given slack.
    assert session.deadline > first
    await session.close()
    assert not session.alive()
    await etcd.close()


async def test_the_session_is_lost_when_etcd_is_gone_past_the_deadline(etcd_servers) -> None:
    (member,) = etcd_servers(1)
    etcd = Etcd([member.endpoint], timeout=0.5)
    session = Session(etcd, 2, margin=0.3)
    await session.start()
    member.kill()
    killed = time.monotonic()
    await asyncio.wait_for(session.lost.wait(), timeout=5)
    # Lost no later than its deadline allowed (plus a tick), and never serving after.
    assert time.monotonic() - killed < 2 + 0.5
    assert not session.alive()
    await session.close()
    await etcd.close()


async def test_a_lease_that_expired_while_paused_is_lost_not_revived(etcd_servers) -> None:
    """Keep-alives stop (as in a paused process); when they resume, the lease is gone."""
    (member,) = etcd_servers(1)
    etcd = Etcd([member.endpoint])
    session = Session(etcd, 1 + 1, margin=0.3)
    await session.start()
    session._loop.cancel()  # the process "pauses": no keep-alives
    await asyncio.sleep(3.5)
    assert not session.alive()  # the local deadline alone already forbids serving
    assert await etcd.keep_alive(session.lease_id) == 0  # and etcd expired the lease
    await session.close()
    await etcd.close()


class LateKeepAlives:
    """The real etcd client, except that once armed, a keep-alive's reply (a success: etcd
    renewed the lease) reaches the session only after the session's deadline passed — a
    process paused between sending and reading, or a reply stuck in a slow network."""

    def __init__(self, etcd: Etcd) -> None:
        self.etcd = etcd
        self.session: Session | None = None
        self.armed = False

    def __getattr__(self, name: str):
        return getattr(self.etcd, name)

    async def keep_alive(self, lease_id: int, per_try: float | None = None) -> int:
        granted = await self.etcd.keep_alive(lease_id, per_try)
        if self.armed and self.session is not None:
            self.armed = False
            await asyncio.sleep(max(self.session.slack(), 0) + 0.1)
        return granted


async def test_a_keep_alive_that_succeeds_after_the_deadline_does_not_revive_it(
    etcd_servers,
) -> None:
    """The session's own keep-alive loop gets a successful renewal, but only after its
    local deadline: others may already serve its keys, so the session is lost for good,
    though etcd renewed the lease."""
    (member,) = etcd_servers(1)
    etcd = Etcd([member.endpoint])
    late = LateKeepAlives(etcd)
    session = Session(late, 2, margin=0.3)  # type: ignore[arg-type]  # a wrapper of Etcd
    late.session = session
    await session.start()
    late.armed = True
    await asyncio.wait_for(session.lost.wait(), 5)
    assert not session.alive()
    assert await etcd.keep_alive(session.lease_id) > 0  # etcd still has it: we refused it
    await asyncio.sleep(1.0)
    assert not session.alive(), "a later keep-alive revived a lost session"
    await session.close()
    await etcd.close()


def test_the_margin_must_leave_room_for_keep_alives() -> None:
    with pytest.raises(ValueError, match="margin"):
        Session(None, 3, margin=1.0)  # type: ignore[arg-type]


async def test_a_stuck_endpoint_does_not_cost_a_lease_that_has_slack(etcd_servers) -> None:
    """The first endpoint black-holes every call (a hung etcd member): each keep-alive try
    is bounded by a third of the slack and goes on to the next endpoint, so the lease is
    kept. With the client's whole timeout (2 s) spent on the stuck endpoint, a 2 s lease
    would be lost at the first renewal."""
    (member,) = etcd_servers(1)
    host, _, port = member.endpoint.rpartition(":")
    stuck = TcpProxy(host, int(port))
    stuck_port = await stuck.start()
    etcd = Etcd([f"127.0.0.1:{stuck_port}", member.endpoint], timeout=2.0)
    session = Session(etcd, 2, margin=0.3)
    await session.start()  # through the relay, while it still relays
    stuck.partition()
    await asyncio.sleep(5)
    assert not session.lost.is_set()
    assert session.alive()
    await session.close()
    await stuck.close()
    await etcd.close()
