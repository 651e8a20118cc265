"""What an operator (or a fault) does to etcd: fill it past its quota, clear the alarm."""

from __future__ import annotations

import asyncio
import subprocess

from cachegrid.coord.etcd import Etcd, EtcdError, EtcdUnavailable


def etcdctl(endpoint: str, *args: str) -> None:
    subprocess.run(["etcdctl", f"--endpoints={endpoint}", *args], check=True,
                   env={"ETCDCTL_API": "3", "PATH": "/usr/bin:/bin"},
                   capture_output=True, timeout=30)  # fmt: skip


async def fill_past_quota(etcd: Etcd) -> int:
    """Put 1 MiB values until etcd raises its NOSPACE alarm; how many were written."""
    blob = b"x" * (1 << 20)
    for count in range(200):
        try:
            await etcd.put(b"/filler/%d" % count, blob)
        except (EtcdError, EtcdUnavailable) as error:
            if "space exceeded" not in error.message:
                raise AssertionError(f"not NOSPACE: {error.message}") from error
            return count
    raise AssertionError("etcd never ran out of space")


async def clear_nospace(etcd: Etcd, endpoint: str, written: int) -> None:
    """What an operator does: delete, compact, defragment, disarm the alarm."""
    for count in range(written):
        await etcd.delete(b"/filler/%d" % count)
    revision, _ = await etcd.get(b"/filler/0")
    await etcd.compact(revision)
    await asyncio.to_thread(etcdctl, endpoint, "defrag")
    await asyncio.to_thread(etcdctl, endpoint, "alarm", "disarm")
