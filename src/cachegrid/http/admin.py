"""The admin HTTP API of a node (/admin/...), behind a bearer token.

Owns: authentication of operators, and turning admin requests into cluster-wide commands
and weight changes (coord/commands.py's ``Admin``), or local work (status, repair). No
cache logic here. What it needs of the other layers are the protocols below.

Routes (JSON bodies):
    GET  /admin/status[?scope=cluster]   this node's status, or every live node's
    GET  /admin/ring                     the ring, with each member's share of the keyspace
    POST /admin/flush      {"all": true} | {"prefix": "p"} | {"keys": [...]}
    POST /admin/rebalance  {"weights": {"<node-id>": <int>, ...}}
    POST /admin/drain      {"node": "<node-id>"}          (weight 0: it then owns nothing)
    POST /admin/repair     anti-entropy over the store replicas
    GET  /admin/hotkeys[?limit=10][&scope=cluster]   keys read and written most

Invariants:
- Tokens of scope admin (node.admin_token, security.admin_tokens) or peer are accepted,
  compared by digest (auth.py); with no admin token configured, every admin route answers
  403, so an admin API is never open by accident.
- flush, rebalance and drain answer only once every live node has applied them (or lost its
  lease, or ``wait`` seconds passed), with a result per node.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any, Protocol

import orjson
from aiohttp import web

from cachegrid.auth import Scope, Tokens
from cachegrid.errors import BadRequest, CachegridError, Forbidden
from cachegrid.hotkeys import KeyTraffic
from cachegrid.http.framework import (
    Answer,
    Handler,
    Routes,
    add_table,
    bind,
    json_response,
    read_json,
)
from cachegrid.keys import check_key
from cachegrid.ring import Ring
from cachegrid.serving.owner import Node
from cachegrid.serving.ports import Peers

log = logging.getLogger(__name__)

DEFAULT_WAIT = 15.0  # seconds an admin request waits for the cluster
ADMIN_ROUTES: Routes = {
    "/admin/status": {"GET": "status"},
    "/admin/ring": {"GET": "ring"},
    "/admin/flush": {"POST": "flush"},
    "/admin/rebalance": {"POST": "rebalance"},
    "/admin/drain": {"POST": "drain"},
    "/admin/repair": {"POST": "repair"},
    "/admin/hotkeys": {"GET": "hotkeys"},
    "/admin/forget": {"POST": "forget"},
}
BODY_LIMIT = 1 << 20  # bytes of an admin request's body


class Commands(Protocol):
    """Cluster-wide commands and weights (coord/commands.py's ``Admin``)."""

    async def run(self, op: str, args: dict[str, Any], wait: float) -> dict[str, Any]: ...

    async def live_members(self) -> dict[str, dict[str, Any]]: ...

    async def known_nodes(self) -> dict[str, dict[str, Any]]: ...

    async def forget(self, node_id: str) -> None: ...

    async def set_weight(self, node_id: str, weight: int) -> int: ...


class Coordination(Protocol):
    """What status pages show of coordination (coord/coordinator.py)."""

    @property
    def ring(self) -> Ring | None: ...

    def status(self) -> dict[str, object]: ...


class Repair(Protocol):
    """What a RepairReport carries (store/quorum.py)."""

    keys_checked: int
    copies_written: int
    unreachable: list[str]


class StoreAdmin(Protocol):
    """The store's health and repair (store/quorum.py's ``QuorumStore``)."""

    def health(self) -> list[dict[str, object]]: ...

    async def repair(self) -> Repair: ...


class AdminApi:
    def __init__(
        self,
        node: Node,
        coordinator: Coordination,
        admin: Commands,
        store: StoreAdmin,
        peers: Peers,
        tokens: Tokens,
        own_token: str,
        read_leases: Callable[[], dict[str, int]],
        traffic: KeyTraffic,
    ) -> None:
        self.node = node
        self.traffic = traffic  # the keys clients read and write most through this node
        self.read_leases = read_leases  # {"held": copies here, "granted": rows here}
        self.node_id = node.node_id
        self.coordinator = coordinator
        self.admin = admin
        self.store = store
        self.peers = peers
        self.tokens = tokens  # the admin API takes tokens of scope admin (or peer)
        self._own_token = own_token  # what this node shows other nodes' admin APIs

    def add_routes(self, app: web.Application) -> None:
        add_table(app, bind(self, ADMIN_ROUTES, self._auth), self.node_id, self.node.metrics)

    # -- routes -------------------------------------------------------------------------

    async def status(self, request: web.Request) -> web.StreamResponse:
        if request.query.get("scope") == "cluster":
            members = await self.admin.live_members()
            statuses = await asyncio.gather(
                *(self._remote_status(node, record["addr"]) for node, record in members.items())
            )
            nodes: dict[str, Any] = dict(zip(members, statuses, strict=True))
            for node, record in (await self.admin.known_nodes()).items():
                if node not in nodes:  # registered once, no live lease now
                    nodes[node] = {"state": "down", "addr": record.get("addr")}
            return json_response({"nodes": nodes}, self.node_id)
        return json_response(self.local_status(), self.node_id)

    def local_status(self) -> dict[str, Any]:
        cache = self.node.cache
        ring = self.coordinator.ring
        return {
            **self.coordinator.status(),
            "weights": {m.node_id: m.weight for m in ring.members.values()} if ring else {},
            "cache": {
                "entries": len(cache),
                "bytes": cache.bytes,
                "max_bytes": cache.max_bytes,
                "evictions": cache.evictions,
            },
            "replicas": self.store.health(),
            "read_leases": self.read_leases(),
        }

    async def hotkeys(self, request: web.Request) -> web.StreamResponse:
        """The keys read and written most through this node (or, with ``scope=cluster``,
        through each live node) in the last one to two minutes."""
        limit = limit_of(request)
        if request.query.get("scope") != "cluster":
            return json_response(self.traffic.report(limit), self.node_id)
        members = await self.admin.live_members()
        path = f"/admin/hotkeys?limit={limit}"
        reports = await asyncio.gather(*(
            self._remote(node, record["addr"], path, lambda: self.traffic.report(limit))
            for node, record in members.items()
        ))  # fmt: skip
        return json_response({"nodes": dict(zip(members, reports, strict=True))}, self.node_id)

    async def ring(self, request: web.Request) -> web.StreamResponse:
        ring = self.coordinator.ring
        if ring is None:
            return json_response({"epoch": None, "members": []}, self.node_id)
        description = ring.describe(with_shares=True)
        return json_response(description, self.node_id)

    async def flush(self, request: web.Request) -> web.StreamResponse:
        body = await read_object(request)
        args = flush_args(body)
        result = await self.admin.run("flush", args, wait_of(body))
        return json_response(result, self.node_id)

    async def rebalance(self, request: web.Request) -> web.StreamResponse:
        body = await read_object(request)
        weights = body.get("weights")
        if (
            not isinstance(weights, dict)
            or not weights
            or not all(
                isinstance(w, int) and not isinstance(w, bool) and 0 <= w <= 100
                for w in weights.values()
            )
        ):
            raise BadRequest('"weights" must map node ids to integers from 0 to 100')
        result = await self._set_weights(weights, wait_of(body), force_of(body))
        return json_response(result, self.node_id)

    async def drain(self, request: web.Request) -> web.StreamResponse:
        body = await read_object(request)
        node = body.get("node")
        if not isinstance(node, str):
            raise BadRequest('"node" must name a node id')
        result = await self._set_weights({node: 0}, wait_of(body), force_of(body))
        return json_response(result, self.node_id)

    async def forget(self, request: web.Request) -> web.StreamResponse:
        """Forget a node that is gone for good (status shows it as down until then)."""
        body = await read_object(request)
        node = body.get("node")
        if not isinstance(node, str):
            raise BadRequest('"node" must name a node id')
        if node in await self.admin.live_members():
            raise BadRequest(f"{node} is live: drain and stop it first")
        await self.admin.forget(node)
        return json_response({"forgotten": node}, self.node_id)

    async def repair(self, request: web.Request) -> web.StreamResponse:
        report = await self.store.repair()
        return json_response(
            {"keys_checked": report.keys_checked, "copies_written": report.copies_written,
             "unreachable": report.unreachable}, self.node_id,
        )  # fmt: skip

    # -- helpers --------------------------------------------------------------------------

    async def _set_weights(self, weights: dict[str, int], wait: float,
                           force: bool) -> dict[str, Any]:  # fmt: skip
        """Persist the weights, then wait until every live node applied and activated them.
        Refused (nothing applied) if no live node would keep a weight, unless ``force``."""
        members = await self.admin.live_members()
        unknown = sorted(set(weights) - set(members))
        if unknown:
            raise BadRequest(f"no live node named {', '.join(unknown)}")
        after = {
            node: weights.get(node, record.get("weight", 1)) for node, record in members.items()
        }
        if not force and not any(after.values()):
            raise BadRequest("refused: no live node would keep a weight, so no key would have "
                             'an owner (every read and write would fail); send "force": true '
                             "to do it anyway")  # fmt: skip
        for node, weight in weights.items():
            await self.admin.set_weight(node, weight)
        deadline = time.monotonic() + wait
        while True:
            statuses = {node: await self._remote_status(node, record["addr"])
                        for node, record in members.items()}  # fmt: skip
            done = {node: _settled(status, weights) for node, status in statuses.items()}
            if all(done.values()) or time.monotonic() >= deadline:
                return {"weights": weights, "nodes": {
                    node: {"status": "applied" if done[node] else "timeout",
                           "ring_epoch": statuses[node].get("ring_epoch")}
                    for node in statuses}}  # fmt: skip
            await asyncio.sleep(0.1)

    async def _remote_status(self, node: str, addr: str) -> dict[str, Any]:
        return await self._remote(node, addr, "/admin/status", self.local_status)

    async def _remote(self, node: str, addr: str, path: str,
                      local: Callable[[], dict[str, Any]]) -> dict[str, Any]:  # fmt: skip
        """GET ``path`` of the admin API of ``node`` (``local()`` for this node itself)."""
        if node == self.node_id:
            return local()
        try:
            answer = await self.peers.forward(
                "GET", addr, path, hops=0,
                headers={"Authorization": f"Bearer {self._own_token}"},
            )  # fmt: skip
        except CachegridError as error:
            return {"error": error.message}
        if answer.status != 200:
            return {"error": f"HTTP {answer.status}"}
        status: dict[str, Any] = orjson.loads(answer.body)
        return status

    def _auth(self, handler: Handler) -> Handler:
        async def checked(request: web.Request) -> Answer:
            if not self._own_token:
                raise Forbidden("the admin API is disabled: set node.admin_token (or "
                                "security.admin_tokens)")  # fmt: skip
            self.tokens.check(request.headers.get("Authorization"), Scope.ADMIN)
            if request.method == "GET":
                return await handler(request)
            try:
                answer = await handler(request)
            except CachegridError as error:
                await log_admin(request, error.status)
                raise
            await log_admin(request, answer.status)
            return answer

        return checked


async def log_admin(request: web.Request, status: int) -> None:
    """An admin action, with who asked (the client's address and agent) and what it
    asked (the body the handler read, cut to 300 bytes)."""
    try:
        body = await request.read()  # aiohttp keeps what the handler read
    except web.HTTPException:  # over the size limit: not read
        body = b""
    asked = body[:300].decode("utf-8", "replace")
    log.info("admin %s by %s (%s): %s -> %d", request.path, request.remote,
                request.headers.get("User-Agent", "-"), asked or "{}", status,
                extra={"event": "admin", "action": request.path.removeprefix("/admin/"),
                       "remote": request.remote, "body": asked, "status": status,
                       "user_agent": request.headers.get("User-Agent")})  # fmt: skip


def _settled(status: dict[str, Any], weights: dict[str, int]) -> bool:
    """True once a node's ring carries ``weights`` and it has activated that ring."""
    current = status.get("weights", {})
    return (
        all(current.get(node) == weight for node, weight in weights.items() if node in current)
        and not status.get("pending_epochs")
        and status.get("activated_epoch") is not None
    )


async def read_object(request: web.Request) -> dict[str, Any]:
    """An admin request's body: a JSON object, or none at all (``{}``)."""
    body = await read_json(request, BODY_LIMIT, optional=True)
    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object")
    return body


def flush_args(body: dict[str, Any]) -> dict[str, Any]:
    if body.get("all") is True:
        return {}
    if isinstance(body.get("prefix"), str):
        return {"prefix": body["prefix"]}
    keys = body.get("keys")
    if isinstance(keys, list) and keys and all(isinstance(k, str) for k in keys):
        for key in keys:
            check_key(key)
        return {"keys": keys}
    raise BadRequest('flush what? {"all": true}, {"prefix": "..."} or {"keys": [...]}')


def limit_of(request: web.Request) -> int:
    """The ``limit`` query parameter: how many keys to list (1 to 100, default 10)."""
    raw = request.query.get("limit", "10")
    if not raw.isdigit() or not 1 <= int(raw) <= 100:
        raise BadRequest('"limit" must be an integer from 1 to 100')
    return int(raw)


def force_of(body: dict[str, Any]) -> bool:
    force = body.get("force", False)
    if not isinstance(force, bool):
        raise BadRequest('"force" must be true or false')
    return force


def wait_of(body: dict[str, Any]) -> float:
    wait = body.get("wait", DEFAULT_WAIT)
    if not isinstance(wait, int | float) or isinstance(wait, bool) or not 0 < wait <= 300:
        raise BadRequest('"wait" must be a number of seconds from 0 to 300')
    return float(wait)
