"""The etcd wrapper against real etcd: reads, writes, leases, fail-over, clear errors."""

import asyncio
import time

import pytest

from cachegrid.coord.etcd import Etcd, EtcdUnavailable


async def test_reads_and_writes_carry_revisions(etcd_servers) -> None:
    (member,) = etcd_servers(1)
    etcd = Etcd([member.endpoint])
    first = await etcd.put(b"/cg/members/a", b"1")
    second = await etcd.put(b"/cg/members/b", b"2")
    await etcd.put(b"/cg/other", b"x")
    await etcd.put(b"/cg/members0", b"not under the prefix")
    assert second > first
    revision, item = await etcd.get(b"/cg/members/a")
    assert revision >= second
    assert item is not None
    assert (item.value, item.mod_revision) == (b"1", first)
    snapshot = await etcd.get_prefix(b"/cg/members/")
    assert [(kv.key, kv.value) for kv in snapshot.items] == [
        (b"/cg/members/a", b"1"),
        (b"/cg/members/b", b"2"),
    ]
    deleted_at = await etcd.delete(b"/cg/members/a")
    assert deleted_at > snapshot.revision
    assert (await etcd.get(b"/cg/members/a"))[1] is None
    await etcd.close()


async def test_a_key_under_a_lease_lives_while_it_is_kept_alive(etcd_servers) -> None:
    (member,) = etcd_servers(1)
    etcd = Etcd([member.endpoint])
    lease = await etcd.grant(1)
    await etcd.put(b"/cg/kept", b"x", lease=lease.id)
    for _ in range(6):  # 3 s: well past the 1 s TTL
        assert await etcd.keep_alive(lease.id) == 1
        await asyncio.sleep(0.5)
    assert (await etcd.get(b"/cg/kept"))[1] is not None
    await etcd.revoke(lease.id)
    assert (await etcd.get(b"/cg/kept"))[1] is None
    assert await etcd.keep_alive(lease.id) == 0
    await etcd.close()


async def test_a_key_under_an_expired_lease_disappears(etcd_servers) -> None:
    (member,) = etcd_servers(1)
    etcd = Etcd([member.endpoint])
    lease = await etcd.grant(1)
    await etcd.put(b"/cg/dropped", b"x", lease=lease.id)
    deadline = time.monotonic() + 10
    while (await etcd.get(b"/cg/dropped"))[1] is not None:
        assert time.monotonic() < deadline, "the key outlived its lease by 9 s"
        await asyncio.sleep(0.2)
    assert await etcd.keep_alive(lease.id) == 0
    await etcd.close()


async def test_calls_fail_over_when_the_current_member_dies(etcd_servers) -> None:
    members = etcd_servers(3)
    etcd = Etcd([m.endpoint for m in members], timeout=1.0)
    await etcd.put(b"/cg/k", b"1")
    used = etcd.current_endpoint
    next(m for m in members if m.endpoint == used).kill()
    deadline = time.monotonic() + 20
    while True:  # the survivors may first need to elect a leader
        try:
            await etcd.put(b"/cg/k", b"2")
            break
        except EtcdUnavailable:
            assert time.monotonic() < deadline, "no fail-over within 20 s"
    assert etcd.current_endpoint != used
    assert (await etcd.get(b"/cg/k"))[1].value == b"2"
    await etcd.close()


async def test_unreachable_etcd_gives_a_clear_error_in_bounded_time(ports) -> None:
    endpoints = [f"127.0.0.1:{ports.take()}" for _ in range(2)]
    etcd = Etcd(endpoints, timeout=0.5)
    started = time.monotonic()
    with pytest.raises(EtcdUnavailable) as error:
        await etcd.get(b"/cg/k")
    assert all(endpoint in error.value.message for endpoint in endpoints)
    assert time.monotonic() - started < 2 * 0.5 + 2  # each endpoint tried once, bounded
    await etcd.close()


async def test_conditional_puts_hold_a_key_for_one_lease(etcd_servers) -> None:
    """put_if_absent creates a key once; a second lease cannot take it; put_if_lease
    rewrites it only for the lease it is attached to."""
    (member,) = etcd_servers(1)
    etcd = Etcd([member.endpoint])
    first, second = await etcd.grant(10), await etcd.grant(10)
    assert await etcd.put_if_absent(b"/t/id", b"one", first.id) is None
    holder = await etcd.put_if_absent(b"/t/id", b"two", second.id)
    assert holder is not None
    assert (holder.value, holder.lease) == (b"one", first.id)
    assert not await etcd.put_if_lease(b"/t/id", b"two", second.id)
    assert await etcd.put_if_lease(b"/t/id", b"one'", first.id)
    _, now = await etcd.get(b"/t/id")
    assert now is not None
    assert (now.value, now.lease) == (b"one'", first.id)
    await etcd.revoke(first.id)
    assert not await etcd.put_if_lease(b"/t/id", b"x", first.id)  # gone
    assert await etcd.put_if_absent(b"/t/id", b"two", second.id) is None
    await etcd.close()
