"""Cluster-wide admin commands: issue one through etcd, wait for every live node's result.

Owns: the admin command protocol. A command is a record ``<prefix>/admin/<id>`` under a
lease of its own (``COMMAND_TTL``); every node applies it from its watch stream and writes
``<prefix>/admin-done/<id>/<node-id>`` under the same lease, so both vanish on their own.
Also the operator's weights, ``<prefix>/weights/<node-id>`` (persistent).

Invariants:
- ``run`` reports every node that was a live member when the command was issued: its
  result, ``lost`` if its lease ended before it answered, or ``timeout``.
- Decisions rest on linearizable reads, not on a watch.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import orjson

from cachegrid.coord.etcd import Etcd

COMMAND_TTL = 60  # seconds a command and its results stay in etcd


class Admin:
    def __init__(self, etcd: Etcd, prefix: str) -> None:
        self._etcd = etcd
        self._root = prefix.encode() + b"/"
        self._members = self._root + b"members/"

    async def run(self, op: str, args: dict[str, Any], wait: float) -> dict[str, Any]:
        """Issue command ``op`` and wait up to ``wait`` s for every live node's result."""
        command_id = uuid.uuid4().hex
        members = await self.live_members()
        lease = await self._etcd.grant(COMMAND_TTL)
        record = {"id": command_id, "op": op, "args": args}
        revision = await self._etcd.put(
            self._root + b"admin/" + command_id.encode(), orjson.dumps(record), lease=lease.id
        )
        results = await self._collect(command_id, members, wait)
        return {"id": command_id, "op": op, "revision": revision, "nodes": results}

    async def live_members(self) -> dict[str, dict[str, Any]]:
        """node id -> member record, read linearizably."""
        snapshot = await self._etcd.get_prefix(self._members)
        return {
            item.key[len(self._members) :].decode(): orjson.loads(item.value)
            for item in snapshot.items
        }

    async def set_weight(self, node_id: str, weight: int) -> int:
        """Persist the operator's weight for ``node_id``; the revision of the write."""
        return await self._etcd.put(self._root + b"weights/" + node_id.encode(), b"%d" % weight)

    async def _collect(
        self, command_id: str, members: dict[str, Any], wait: float
    ) -> dict[str, Any]:
        done_prefix = self._root + b"admin-done/" + command_id.encode() + b"/"
        deadline = time.monotonic() + wait
        while True:
            snapshot = await self._etcd.get_prefix(self._root)
            done = {
                item.key[len(done_prefix) :].decode(): orjson.loads(item.value)
                for item in snapshot.items
                if item.key.startswith(done_prefix)
            }
            alive = {item.key[len(self._members) :].decode() for item in snapshot.items
                     if item.key.startswith(self._members)}  # fmt: skip
            pending = [n for n in members if n not in done and n in alive]
            if not pending or time.monotonic() >= deadline:
                return {
                    node: done.get(node, {"status": "timeout" if node in alive else "lost"})
                    for node in sorted(members)
                }
            await asyncio.sleep(0.05)
