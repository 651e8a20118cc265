"""Routing: serve a key here or ask its owner, with forwarded GETs batched per owner.

Owns: what a node does with a request for a key it does not own — forwarding it (through
``Peers``) and passing the owner's answer back — and batchGet's fan-out: the keys served
here, the rest asked of each owner in one batch.

Invariants:
- A forwarded answer is the owner's own, as bytes: status, body and the headers peers pass
  back; the HTTP layer adds only this node's ring epoch.
- GETs forwarded to one owner in the same loop turn travel as one batchGet (``detail``),
  each answered as if it had been forwarded alone (``answer_of``).
- The table of per-owner batchers is bounded (``MAX_OWNER_BATCHERS``): addresses of departed
  members do not pile up.
- At most ``max_per_owner`` requests forwarded to one owner are unanswered at once; more
  get 503 at once (certainly not applied), so one slow or hung owner cannot hold every
  request slot of this node, whose other keys keep being served.
- batchGet returns one result per distinct key; an owner's failure becomes an error item
  for each of its keys, never a failed batch.
- Read leases (leases.py): a key this node holds a live copy of is answered from it
  (``cache: replica``); a forwarded batch asks leases of the keys that are hot here, at
  one hop only (a node that forwards a batch on builds a new body: the ask is dropped), and
  the owner grants in the same synchronous step as the hit it answers with.
- Bytes are reserved in the node's budget (budget.py) as they arrive, before they are
  kept: each local item's body, each owner's answer (twice: as bytes and parsed), so a
  batch too big for its cap or for the node fails (413, 429) before it grows further.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import orjson

from cachegrid import requestids
from cachegrid.batching import Batcher
from cachegrid.budget import ByteBudget, Reservation
from cachegrid.errors import CachegridError, NotFound, Unavailable, retry_after, status_of
from cachegrid.headers import JSON, NODE_HEADER, REPLICA_HEADER
from cachegrid.localcache import Entry, entry_body, is_tombstone
from cachegrid.ring import Member
from cachegrid.serving.copies import Copy, Ticket
from cachegrid.serving.grants import Holder
from cachegrid.serving.leases import HolderLeases
from cachegrid.serving.owner import Node, NotOwner
from cachegrid.serving.ports import PeerAnswer, Peers

# Bytes of JSON around one batchGet item's body (the key, the separators).
ITEM_BYTES = 64
# GETs forwarded to one owner in one batch at most.
FORWARD_BATCH = 64
# Owner batchers kept (one per owner address and hop count) before they are all dropped.
MAX_OWNER_BATCHERS = 256


class Router:
    def __init__(
        self, node: Node, peers: Peers, budget: ByteBudget,
        holder: HolderLeases | None = None, max_per_owner: int = 1024,
    ) -> None:  # fmt: skip
        self.node = node
        self.holder = holder
        self.max_per_owner = max_per_owner
        self._forwarding: dict[str, int] = {}  # requests unanswered, by owner address
        self.peers = peers
        self.budget = budget
        self.node_id = node.node_id
        # Forwarded GETs waiting to be batched, each with the id of its request.
        self._owner_reads: dict[tuple[str, int], Batcher[tuple[str, str], PeerAnswer]] = {}
        self._forward_batch_keys = node.metrics.batch_keys.labels("forward_get")

    async def forward(self, method: str, moved: NotOwner, path: str, *, hops: int,
                      body: bytes = b"", headers: dict[str, str] | None = None,
                      ) -> PeerAnswer:  # fmt: skip
        """The request, sent to the key's owner; its answer."""
        self.node.metrics.forwarded.inc()
        with self._slot(moved.owner):
            return await self.peers.forward(method, moved.owner.addr, path, hops=hops, body=body,
                                            headers=headers)  # fmt: skip

    async def forward_get(self, key: str, moved: NotOwner, hops: int) -> PeerAnswer:
        """A GET for a key another node owns, batched with the others to that owner."""
        self.node.metrics.forwarded.inc()
        if self.holder is not None:
            self.holder.forwarding(key)
        batcher = self._owner_reads.get((moved.owner.addr, hops))
        if batcher is None:
            if len(self._owner_reads) >= MAX_OWNER_BATCHERS:
                # Addresses of departed members pile up; a batch in flight keeps running.
                self._owner_reads.clear()
            fetch = functools.partial(self._fetch_from_owner, moved.owner, hops)
            batcher = Batcher(fetch, max_batch=FORWARD_BATCH)
            self._owner_reads[(moved.owner.addr, hops)] = batcher
        with self._slot(moved.owner):
            return await batcher.submit((key, requestids.current()))

    @contextmanager
    def _slot(self, owner: Member) -> Iterator[None]:
        """One of the owner's ``max_per_owner`` slots while a request waits on it."""
        self.claim(owner)
        try:
            yield
        finally:
            self.give_back(owner.addr)

    def claim(self, owner: Member) -> None:
        """Take one of the owner's ``max_per_owner`` slots for a request about to wait on
        it (Unavailable, counted, if none is left); ``give_back`` it once answered."""
        if not self.take_slot(owner.addr):
            self.node.metrics.forward_refused.inc()
            raise Unavailable(f"{self.max_per_owner} requests already wait on owner "
                              f"{owner.node_id}; retry (node.max_forwards_per_owner)")  # fmt: skip

    def take_slot(self, addr: str) -> bool:
        """``claim`` for a caller with another way (the hit lane's forwards: the route
        refuses, and counts, what they cannot take): False, nothing counted, if none is left."""
        taken = self._forwarding.get(addr, 0)
        if taken >= self.max_per_owner:
            return False
        self._forwarding[addr] = taken + 1
        return True

    def give_back(self, addr: str) -> None:
        left = self._forwarding[addr] - 1
        if left:
            self._forwarding[addr] = left
        else:
            del self._forwarding[addr]

    def expected_bytes(self, keys: int) -> int:
        """What a batchGet of ``keys`` keys will likely hold, taken before it starts: each
        item the size of this node's average cache entry (1 KiB while the cache is empty),
        three times over (an owner's answer as bytes and parsed, then the encoded answer)."""
        cache = self.node.cache
        typical = cache.bytes // len(cache) if len(cache) else 1024
        return 3 * keys * (typical + ITEM_BYTES)

    def replica(self, key: str, *, renew: bool = True) -> Copy | None:
        """A live copy of ``key`` held here under a read lease (no I/O); see
        ``HolderLeases.serve`` for ``renew``."""
        return self.holder.serve(key, renew=renew) if self.holder is not None else None

    async def batch_items(
        self, keys: list[str], hops: int, detail: bool, held: Reservation,
        ask: tuple[Holder, set[str]] | None = None,
    ) -> dict[str, Any]:  # fmt: skip
        """One result per distinct key: served here, or asked of its owner in one batch.
        With ``detail``, each also says which node served it and, if read, hit or miss.
        Every byte kept is first reserved in ``held`` (TooLarge or Overloaded past it).
        ``ask``: a peer's lease request (holder, keys), granted on hits of those keys."""
        items: dict[str, Any] = {}
        remote: dict[str, list[str]] = {}
        served_here = {"node": self.node_id} if detail else {}

        async def local(key: str) -> None:
            try:
                entry, hit = await self.node.get(key)
            except NotOwner as moved:
                if (copy := self.replica(key)) is not None:
                    items[key] = self._replica_item(copy, detail, held)
                else:
                    remote.setdefault(moved.owner.addr, []).append(key)
                return
            except CachegridError as error:
                items[key] = error_item(key, error) | served_here
                return
            # F11: in the hit's own synchronous step (a hit returns without suspending).
            grant = self._grant(key, entry, ask) if hit and ask and key in ask[1] else {}
            cache: dict[str, Any] = {"cache": "hit" if hit else "miss"} if detail else {}
            cache |= grant
            body = entry_body(entry)
            held.need(len(body) + ITEM_BYTES)
            if is_tombstone(entry):
                items[key] = (
                    error_item(key, NotFound(f"no such key: {key[:100]}")) | served_here | cache
                )
            elif detail:  # the entry's body is a JSON object: extend it in place
                extra = orjson.dumps(served_here | cache)
                items[key] = orjson.Fragment(body[:-1] + b"," + extra[1:])
            else:
                items[key] = orjson.Fragment(body)

        await asyncio.gather(*(local(key) for key in dict.fromkeys(keys)))
        if remote:  # the id is made before the fan-out, so that every owner is told it
            requestids.current()
        await asyncio.gather(
            *(self._remote_batch(a, ks, hops, detail, items, held) for a, ks in remote.items())
        )
        return items

    def _grant(self, key: str, entry: Entry, ask: tuple[Holder, set[str]]) -> dict[str, Any]:
        """The ``grant`` detail of a hit a peer asked a lease of ({} if refused)."""
        term = self.node.grant_hit(key, entry, ask[0])
        leases = self.node.leases
        if term is None or leases is None:
            return {}
        return {"grant": {"term": term, "margin": leases.settings.margin}}

    def _replica_item(self, copy: Copy, detail: bool, held: Reservation) -> Any:
        body = entry_body(copy.entry)
        held.need(len(body) + ITEM_BYTES)
        if not detail:
            return orjson.Fragment(body)
        extra = orjson.dumps({"node": copy.owner, "cache": "replica", "replica": self.node_id})
        return orjson.Fragment(body[:-1] + b"," + extra[1:])

    async def _remote_batch(self, addr: str, keys: list[str], hops: int, detail: bool,
                            items: dict[str, Any], held: Reservation) -> None:  # fmt: skip
        try:
            answer = await self._batch_get_at(addr, keys, hops, detail)
            if answer.status != 200:
                raise Unavailable(f"owner {addr} answered {answer.status}")
        except CachegridError as error:
            for key in keys:
                items[key] = error_item(key, error) | ({"node": self.node_id} if detail else {})
            return
        held.need(len(answer.body))
        held.need(len(answer.body), answer=False)  # parsed, until the answer is encoded
        for item in orjson.loads(answer.body)["items"]:
            items[item["key"]] = item

    async def _batch_get_at(self, addr: str, keys: list[str], hops: int, detail: bool,
                            lease: dict[str, Any] | None = None,
                            request_ids: str | None = None) -> PeerAnswer:  # fmt: skip
        """POST /v1/kv:batchGet to the node at ``addr``; its answer, whatever the status.
        It names the requests it serves (``request_ids``; default: the running one's)."""
        body: dict[str, Any] = {"keys": keys, "detail": detail}
        if lease is not None:
            body["lease"] = lease
        headers = {"Content-Type": JSON, requestids.HEADER: request_ids or requestids.current()}
        return await self.peers.forward(
            "POST", addr, "/v1/kv:batchGet", hops=hops,
            body=orjson.dumps(body), headers=headers, read=True,
        )  # fmt: skip

    async def _fetch_from_owner(
        self, owner: Member, hops: int, requests: list[tuple[str, str]]
    ) -> list[PeerAnswer]:
        keys = [key for key, _ in requests]
        ids = [request_id for _, request_id in requests]
        self._forward_batch_keys.observe(len(keys))
        holder = self.holder
        # Leases are asked at the first hop only: the owner grants to the node that asks.
        tickets = holder.asks(keys, owner.node_id) if holder is not None and hops == 0 else {}
        try:
            return await self._fetch_answers(owner, hops, keys, tickets, ids)
        finally:
            if tickets and holder is not None:
                holder.finished(tickets)

    async def _fetch_answers(self, owner: Member, hops: int, keys: list[str],
                             tickets: dict[str, Ticket],
                             ids: list[str]) -> list[PeerAnswer]:  # fmt: skip
        """The owner's answer to each of ``keys`` (asked by the requests ``ids``)."""
        lease = self.holder.ask_field(tickets) if tickets and self.holder is not None else None
        answer = await self._batch_get_at(owner.addr, keys, hops, detail=True, lease=lease,
                                          request_ids=requestids.joined(ids))  # fmt: skip
        if answer.status != 200:  # the owner refused the whole batch: each request, alike
            return [answer] * len(keys)
        # Parsed and split into one answer per GET: held twice while that happens.
        with self.budget.reservation() as held:
            held.need(2 * len(answer.body))
            try:
                items = orjson.loads(answer.body)["items"]
                answers = [answer_of(item, owner.node_id, request_id)
                           for item, request_id in zip(items, ids, strict=False)]  # fmt: skip
                for item in items:
                    if self.holder is not None and (ticket := tickets.get(item["key"])):
                        self.holder.install(ticket, item)
            except (orjson.JSONDecodeError, KeyError, TypeError) as error:
                raise Unavailable(f"owner {owner.node_id} sent a malformed batch: {error}"
                                  ) from error  # fmt: skip
        if len(answers) != len(keys):
            raise Unavailable(f"owner {owner.node_id} answered {len(answers)} of {len(keys)} keys")
        return answers


def answer_of(item: dict[str, Any], owner_id: str, request_id: str) -> PeerAnswer:
    """The answer a GET forwarded alone would have had, from its batchGet ``detail`` item
    (an item without "node" comes from a node that predates ``detail``: the owner's), its
    error body naming the request."""
    headers = {"Content-Type": JSON, NODE_HEADER: item.get("node", owner_id)}
    if "cache" in item:
        headers["X-Cache"] = item["cache"]
    if "replica" in item:
        headers[REPLICA_HEADER] = item["replica"]
    if "error" in item:
        status = status_of(item["error"]["code"])
        if retry_after(status):
            headers["Retry-After"] = "1"
        error = item["error"] | {"request_id": request_id}
        return PeerAnswer(status, headers, orjson.dumps({"error": error}))
    headers["ETag"] = f'"{item["version"]}"'
    body = {"key": item["key"], "value": item["value"], "version": item["version"]}
    return PeerAnswer(200, headers, orjson.dumps(body))


def error_item(key: str, error: CachegridError) -> dict[str, Any]:
    """A batchGet item for a key that has no value to show."""
    return {"key": key, "error": {"code": error.code, "message": error.message}}
