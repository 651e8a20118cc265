"""Cluster-wide admin commands, both sides: issuing one, and carrying it out on a node.

A command is a record ``<prefix>/admin/<id>`` under a lease of its own (``COMMAND_TTL``);
every node applies it from its watch stream (the coordinator hands it to ``Executor``) and
writes ``<prefix>/admin-done/<id>/<node-id>`` under the same lease, so both vanish on their
own. ``Admin`` issues commands and collects the results; it also writes the operator's
weights, ``<prefix>/weights/<node-id>`` (persistent). Keys: coord/keyspace.py.

Invariants:
- ``Admin.run`` reports every node that was a live member when the command was issued: its
  result, ``lost`` if its lease ended before it answered, or ``timeout``.
- Decisions rest on linearizable reads, not on a watch.
- ``Executor.apply`` never raises: a bad or unknown command gets a result that says so,
  and the watch that delivered it goes on.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from typing import Any, Protocol

import orjson

from cachegrid.coord.etcd import Etcd
from cachegrid.coord.keyspace import Keyspace

log = logging.getLogger(__name__)

COMMAND_TTL = 60  # seconds a command and its results stay in etcd


class Flushable(Protocol):
    """What a flush command needs of a node (serving/owner.py implements it)."""

    def flush(self, keys: list[str] | None = None, prefix: str | None = None) -> int: ...


class Executor:
    """Carries out a command on this node; the result is stored for the issuer."""

    def __init__(self, node: Flushable, copies: Flushable | None = None) -> None:
        self.node = node
        self.copies = copies  # read-lease copies held here: a flush drops them too

    async def apply(self, raw: bytes) -> dict[str, Any]:
        try:
            command = orjson.loads(raw)
            if not isinstance(command, dict):
                raise TypeError("a command is a JSON object")
            return self._apply(command)
        except Exception as error:  # a bad command must not stop the watch
            log.exception("admin command %r failed", raw[:200])
            return {"status": "failed", "error": repr(error)}

    def _apply(self, command: dict[str, Any]) -> dict[str, Any]:
        if command.get("op") != "flush":
            return {"status": "ignored", "reason": f"unknown op {command.get('op')!r}"}
        args = command.get("args", {})
        keys, prefix = args.get("keys"), args.get("prefix")
        flushed = self.node.flush(keys=keys, prefix=prefix)
        dropped = self.copies.flush(keys=keys, prefix=prefix) if self.copies else 0
        return {"status": "applied", "flushed": flushed, "copies_dropped": dropped}


class Admin:
    """Issues commands and weights; reads who is live."""

    def __init__(self, etcd: Etcd, prefix: str) -> None:
        self._etcd = etcd
        self._keys = Keyspace.of(prefix)

    async def run(self, op: str, args: dict[str, Any], wait: float) -> dict[str, Any]:
        """Issue command ``op`` and wait up to ``wait`` s for every live node's result."""
        command_id = uuid.uuid4().hex
        members = await self.live_members()
        lease = await self._etcd.grant(COMMAND_TTL)
        record = {"id": command_id, "op": op, "args": args}
        revision = await self._etcd.put(
            self._keys.command(command_id), orjson.dumps(record), lease=lease.id
        )
        results = await self._collect(command_id, members, wait)
        return {"id": command_id, "op": op, "revision": revision, "nodes": results}

    async def live_members(self) -> dict[str, dict[str, Any]]:
        """node id -> member record, read linearizably."""
        snapshot = await self._etcd.get_prefix(self._keys.members)
        return {
            Keyspace.name_under(item.key, self._keys.members): orjson.loads(item.value)
            for item in snapshot.items
        }

    async def known_nodes(self) -> dict[str, dict[str, Any]]:
        """node id -> {"addr"} of every node that ever registered and was not forgotten."""
        snapshot = await self._etcd.get_prefix(self._keys.known)
        return {
            Keyspace.name_under(item.key, self._keys.known): orjson.loads(item.value)
            for item in snapshot.items
        }

    async def forget(self, node_id: str) -> None:
        """Drop a node that is gone for good from the status (and its operator weight)."""
        await self._etcd.delete(self._keys.known_node(node_id))
        await self._etcd.delete(self._keys.weight(node_id))

    async def set_weight(self, node_id: str, weight: int) -> int:
        """Persist the operator's weight for ``node_id``; the revision of the write."""
        return await self._etcd.put(self._keys.weight(node_id), b"%d" % weight)

    async def _collect(
        self, command_id: str, members: dict[str, Any], wait: float
    ) -> dict[str, Any]:
        results = self._keys.results(command_id)
        deadline = time.monotonic() + wait
        while True:
            snapshot = await self._etcd.get_prefix(self._keys.root)
            done = {
                Keyspace.name_under(item.key, results): orjson.loads(item.value)
                for item in snapshot.items
                if item.key.startswith(results)
            }
            alive = {Keyspace.name_under(item.key, self._keys.members) for item in snapshot.items
                     if item.key.startswith(self._keys.members)}  # fmt: skip
            pending = [n for n in members if n not in done and n in alive]
            if not pending or time.monotonic() >= deadline:
                return {
                    node: done.get(node, {"status": "timeout" if node in alive else "lost"})
                    for node in sorted(members)
                }
            await asyncio.sleep(0.05)
