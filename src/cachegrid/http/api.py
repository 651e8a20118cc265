"""The public HTTP API of a cache node (DESIGN.md §7): the key-value, ring and ops routes.

Owns: turning HTTP requests into calls on the serving layer (``Node`` for keys this node
serves, ``Router`` for the others) and their answers into responses.

Invariants:
- A request is validated (key, content type, size before reading the body, JSON shape,
  headers) before anything is applied, so a rejected request changes nothing; errors are
  JSON (http/framework.py).
- Every response names the node that served it as owner (``X-Cachegrid-Node``), forwarded
  or not; a forwarded one also carries this node's ring epoch (``X-Cachegrid-Epoch``) so a
  client can tell its routing was stale.
- A key this node holds a read-lease copy of (serving/leases.py) is answered from it with
  no I/O: ``X-Cache: replica``, ``X-Cachegrid-Node`` the owner, ``X-Cachegrid-Replica`` this
  node. A batchGet's ``lease`` member (a peer asking leases) is honoured only one hop from
  its sender, with ``detail``.
- No business logic here: ownership, caching and versions live in the serving layer.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from typing import Protocol
from urllib.parse import quote, unquote_to_bytes

import orjson
from aiohttp import web

from cachegrid.auth import Scope, Tokens
from cachegrid.errors import (
    BadRequest,
    CachegridError,
    NotFound,
    TooLarge,
    Unavailable,
    VersionMismatch,
)
from cachegrid.headers import EPOCH_HEADER, HOPS_HEADER, JSON, NODE_HEADER, REPLICA_HEADER
from cachegrid.hotkeys import KeyTraffic
from cachegrid.http.conditions import condition_of
from cachegrid.http.forwards import LaneForwards
from cachegrid.http.framework import (
    Admission,
    Answer,
    Recorder,
    Routes,
    Table,
    add_table,
    authorized,
    bind,
    error_response,
    hops,
    json_response,
    read_json,
    send,
)
from cachegrid.http.lane import Pending
from cachegrid.http.pipes import Pipes
from cachegrid.http.wire import EncodedResponse, HitPrefix, usable
from cachegrid.keys import check_key
from cachegrid.localcache import Entry, entry_body, entry_etag, is_tombstone
from cachegrid.ring import Ring
from cachegrid.serving.copies import Copy
from cachegrid.serving.grants import Holder
from cachegrid.serving.leases import ACK_PATH
from cachegrid.serving.owner import Condition, Node, NotOwner
from cachegrid.serving.ports import PeerAnswer
from cachegrid.serving.routing import Router
from cachegrid.version import Version

log = logging.getLogger(__name__)

KV_ROUTE = r"/v1/kv/{key:[\s\S]*}"
# The public routes (admitted: past max_in_flight_requests, 429) and the ops routes.
PUBLIC_ROUTES: Routes = {
    # Any character, newlines too ("." would not match one, and aiohttp would answer a
    # plain-text 404): check_key refuses what is not a key, in JSON.
    KV_ROUTE: {"GET": "get", "HEAD": "get", "PUT": "put", "DELETE": "delete"},
    "/v1/kv:batchGet": {"POST": "batch_get"},
    "/v1/ring": {"GET": "ring"},
    "/v1/openapi.json": {"GET": "openapi"},
}
# Node-to-node routes (read-lease acknowledgements).
PEER_ROUTES: Routes = {ACK_PATH: {"POST": "lease_ack"}}
OPS_ROUTES: Routes = {
    "/healthz": {"GET": "healthz"},
    "/readyz": {"GET": "readyz"},
    "/metrics": {"GET": "metrics_page"},
}
KV_PATH = "/v1/kv/"
# The OpenAPI 3.1 description of every route (http/openapi.json, kept true by a test).
OPENAPI = resources.files("cachegrid.http").joinpath("openapi.json").read_bytes()
# Room for the {"value": ...} envelope around the largest value.
ENVELOPE_BYTES = 64 * 1024
# Headers a 304 keeps from the 200 it stands for (RFC 9110 §15.4.5).
NOT_MODIFIED_HEADERS = ("ETag", "X-Cache", NODE_HEADER, REPLICA_HEADER, EPOCH_HEADER)
# Request headers forwarded to the owner with the request.
FORWARDED = ("Content-Type", "If-Match", "If-None-Match")
# The scope a token needs for each method of the data API (auth.py); batchGet is a POST
# that reads.
DATA_SCOPES = {"GET": Scope.READ, "HEAD": Scope.READ, "POST": Scope.READ,
               "PUT": Scope.WRITE, "DELETE": Scope.WRITE}  # fmt: skip


@dataclass(frozen=True)
class Limits:
    """What one request may cost (config.py's node and store sections)."""

    max_key_bytes: int
    max_value_bytes: int
    max_batch: int = 1000  # keys in one batchGet
    max_in_flight: int = 4096  # requests in progress at once
    max_batch_bytes: int = 16 << 20  # bytes of one batchGet answer
    write_timeout: float = 30.0  # seconds a client may take to read the next part of one
    access_log: bool = False  # a log line per answer of the data routes


class Readiness(Protocol):
    """What the public routes need of coordination (coord/coordinator.py implements it)."""

    @property
    def ring(self) -> Ring | None: ...

    def ready(self) -> bool: ...

    def status(self) -> dict[str, object]: ...


class Api:
    def __init__(self, node: Node, coordinator: Readiness, router: Router,
                 limits: Limits, traffic: KeyTraffic, tokens: Tokens,
                 pipes: Pipes | None = None) -> None:  # fmt: skip
        self.node = node
        self.tokens = tokens  # who may read, write, or speak as a peer (auth.py)
        self.traffic = traffic  # the keys clients read and write most here
        self.admission = Admission(limits.max_in_flight)
        self.coordinator = coordinator
        self.router = router
        self.budget = router.budget
        self.limits = limits
        self.node_id = node.node_id
        self._hit_prefix = HitPrefix(self.node_id, "hit")
        self._miss_prefix = HitPrefix(self.node_id, "miss")
        self._replica_prefixes: dict[str, HitPrefix] = {}  # by owner (one per member)
        route = Recorder(node.metrics, f"GET {KV_ROUTE}")  # the GET route's metrics
        self._lane_seconds, self._lane_ok = route.latency, route.responses(200)
        # With ``pipes``, the lane forwards GETs of other nodes' keys over them.
        self._forwards = (
            LaneForwards(self.node_id, pipes, router, self.admission, route,
                         node.metrics.forwarded) if pipes is not None else None
        )  # fmt: skip

    def lane_answer(self, key: str, authorization: str | None,
                    forward: bool) -> bytes | Pending | None:  # fmt: skip
        """The whole answer to a plain ``GET /v1/kv/{key}`` if it is a hit here (a value
        this node serves from its cache, or a live read-lease copy), or, for a key another
        node owns, the answer to come of its forward (http/forwards.py; only with
        ``forward``: not for a request a peer forwarded here); for the hit lane
        (http/lane.py). None for anything else, which then takes the route. The same bytes,
        metrics, counting and refusals as the route: a token that may not read, and a node
        at its admission limit (429), are the route's to answer. A read is counted among
        the node's hot keys where the client sent it, not again where it was forwarded."""
        started = time.perf_counter()
        if not self.tokens.data_open:
            try:
                self.tokens.check(authorization, Scope.READ)
            except CachegridError:
                return None
        if self.admission.current >= self.admission.limit:
            return None
        # (Not a renewal's read: that one is the route's, which forwards it with an ask.)
        if (copy := self.router.replica(key, renew=False)) is not None:
            answer = self._replica_prefix(copy.owner).current() + copy.entry
            seconds = self._lane_seconds["replica"]
        elif (entry := self.node.hit(key, tombstones=False)) is not None:
            answer, seconds = self._hit_prefix.current() + entry, self._lane_seconds["hit"]
        elif forward and self._forwards is not None:
            pending = self._forwards.forward(key, self.coordinator.ring, started)
            if pending is not None:
                try:  # (sent: the lane must have it whatever happens here)
                    self.traffic.reads.add(key)
                except Exception:
                    log.exception("bug: a forwarded read could not be counted")
            return pending
        else:
            return None
        if forward:  # (else a peer forwarded it: counted where the client sent it)
            self.traffic.reads.add(key)
        seconds.observe(time.perf_counter() - started)  # (the route's metrics, as it would)
        self._lane_ok.inc()
        return answer

    def add_routes(self, app: web.Application) -> None:
        """Every route, each with a JSON 405 for other methods; a JSON 404 for the rest."""
        logged = self.limits.access_log  # the data routes only: not probes and scrapes
        public = bind(self, PUBLIC_ROUTES)
        if not self.tokens.data_open:
            public = self._authorized(public, DATA_SCOPES.__getitem__)
        add_table(app, public, self.node_id, self.node.metrics, self.admission, logged,
                  self.limits.max_value_bytes + ENVELOPE_BYTES)  # fmt: skip
        add_table(app, bind(self, OPS_ROUTES), self.node_id, self.node.metrics)
        # Not admitted: refusing an acknowledgement under load would make writes wait
        # out whole leases, which adds load. Peers only, when nodes have a peer token.
        peer = bind(self, PEER_ROUTES)
        if self.tokens.peer_required:
            peer = self._authorized(peer, lambda method: Scope.PEER)
        add_table(app, peer, self.node_id, self.node.metrics, access_log=logged)

    def _authorized(self, table: Table, needed: Callable[[str], Scope]) -> Table:
        """The table, each handler run only for a token of the scope ``needed(method)``."""
        return [(path, {method: authorized(handler, self.tokens, needed(method))
                        for method, handler in methods.items()})
                for path, methods in table]  # fmt: skip

    async def metrics_page(self, request: web.Request) -> web.StreamResponse:
        return web.Response(body=self.node.metrics.render(),
                            headers={"Content-Type": "text/plain; version=0.0.4"})  # fmt: skip

    # -- key-value --------------------------------------------------------------------

    async def get(self, request: web.Request, *, encoded: bool = True) -> Answer:
        """GET and HEAD. With If-Match / If-None-Match, the answer is judged against them
        (RFC 9110 §13.1): 412 if If-Match fails, 304 if If-None-Match does. ``encoded``:
        a hit may be answered with pre-encoded bytes (http/wire.py)."""
        headers = request.headers
        if encoded and ("If-None-Match" in headers or "If-Match" in headers):
            return await self._conditional_get(request, parse_condition(request))
        key = key_of(request)
        if HOPS_HEADER not in headers:  # (counted where the client sent it)
            self.traffic.reads.add(key)
        # The hot paths: no validation needed (only valid keys are ever held), nothing
        # awaited. A live read-lease copy is always a linearizable answer, so it may be
        # looked up first (a node holds none of the keys it owns).
        if (copy := self.router.replica(key)) is not None:
            return self._replica_found(request, copy, encoded)
        entry = self.node.hit(key)
        hit = entry is not None
        if entry is None:
            check_key(key, self.limits.max_key_bytes)
            try:
                entry, hit = await self.node.get(key)
            except NotOwner as moved:
                answer = await self.router.forward_get(key, moved, hops(request))
                return forwarded(answer, moved)
        if is_tombstone(entry):
            error = NotFound(f"no such key: {key[:100]}")
            return error_response(error, self.node_id, "hit" if hit else "miss")
        return self._found(request, entry, hit, encoded)

    async def _conditional_get(self, request: web.Request, condition: Condition) -> Answer:
        answer = await self.get(request, encoded=False)
        assert not isinstance(answer, EncodedResponse)
        if answer.status not in (200, 404):
            return answer  # a failure (503, 504...) passes through
        etag = answer.headers.get("ETag") if answer.status == 200 else None
        tag = etag[1:-1] if etag else None
        if reason := condition.if_match_fails(tag):
            raise VersionMismatch(reason)
        if condition.if_none_match_fails(tag) is None:
            return answer
        kept = {name: answer.headers[name] for name in NOT_MODIFIED_HEADERS
                if name in answer.headers}  # fmt: skip
        return web.Response(status=304, headers=kept)

    def _found(self, request: web.Request, entry: Entry, hit: bool, encoded: bool) -> Answer:
        """The 200 answer: pre-encoded bytes where HTTP/1.1 keep-alive allows (http/wire.py,
        the fast path), else an ordinary response with the same headers."""
        cache = "hit" if hit else "miss"
        if encoded and usable(request):
            prefix = (self._hit_prefix if hit else self._miss_prefix).current()
            return EncodedResponse(prefix + entry, cache)  # the entry is headers and body
        return web.Response(
            body=entry_body(entry),
            content_type=JSON,
            headers={"ETag": entry_etag(entry), "X-Cache": cache, NODE_HEADER: self.node_id},
        )

    def _replica_found(self, request: web.Request, copy: Copy, encoded: bool) -> Answer:
        """The 200 answer from a read-lease copy (the copy is never a tombstone)."""
        entry = copy.entry
        if encoded and usable(request):
            return EncodedResponse(self._replica_prefix(copy.owner).current() + entry,
                                   "replica")  # fmt: skip
        headers = {"ETag": entry_etag(entry), "X-Cache": "replica", NODE_HEADER: copy.owner,
                   REPLICA_HEADER: self.node_id}  # fmt: skip
        return web.Response(body=entry_body(entry), content_type=JSON, headers=headers)

    def _replica_prefix(self, owner: str) -> HitPrefix:
        prefix = self._replica_prefixes.get(owner)
        if prefix is None:
            if len(self._replica_prefixes) > 1024:  # departed owners do not pile up
                self._replica_prefixes.clear()
            prefix = self._replica_prefixes[owner] = HitPrefix(owner, "replica", self.node_id)
        return prefix

    async def put(self, request: web.Request) -> web.StreamResponse:
        key = key_of(request)
        check_key(key, self.limits.max_key_bytes)
        self._count_write(request, key)
        limit = self.limits.max_value_bytes + ENVELOPE_BYTES
        with self.budget.reservation() as held:
            # The body, read whole, and its value, held until written through: reserved
            # before a byte is read (its declared length, or the limit when chunked).
            held.expect(2 * min(request.content_length or limit, limit))
            return await self._put(request, key, await read_json(request, limit))

    async def _put(self, request: web.Request, key: str, document: object) -> web.StreamResponse:
        if not isinstance(document, dict) or "value" not in document:
            raise BadRequest('the body must be a JSON object with a "value" member')
        if len(document) > 1:
            unknown = ", ".join(sorted(repr(name)[:60] for name in document if name != "value"))
            raise BadRequest(f'the body may hold only "value"; unknown: {unknown}')
        value = orjson.dumps(document["value"])
        if len(value) > self.limits.max_value_bytes:
            raise TooLarge(
                f"value is {len(value)} bytes, the limit is {self.limits.max_value_bytes} "
                "(store.max_value_bytes)"
            )
        condition = parse_condition(request)
        try:
            version = await self.node.put(key, value, condition)
        except NotOwner as moved:
            return await self._forward(request, key, moved, await request.read())
        return self._written(key, version)

    async def delete(self, request: web.Request) -> web.StreamResponse:
        key = key_of(request)
        check_key(key, self.limits.max_key_bytes)
        self._count_write(request, key)
        condition = parse_condition(request)
        try:
            version = await self.node.delete(key, condition)
        except NotOwner as moved:
            return await self._forward(request, key, moved)
        return self._written(key, version)

    def _from_peer(self, request: web.Request) -> bool:
        """True if the request may speak for a node: it carries the peer token, or the
        nodes have none (the data API may be open while peers have their token)."""
        if not self.tokens.peer_required:
            return True
        try:
            return self.tokens.scope_of(request.headers.get("Authorization")) is Scope.PEER
        except CachegridError:
            return False

    def _count_write(self, request: web.Request, key: str) -> None:
        """Counted where the client sent it, not again at the owner it is forwarded to."""
        if not hops(request):
            self.traffic.writes.add(key)

    async def batch_get(self, request: web.Request) -> web.StreamResponse:
        document = await read_json(request, self.limits.max_value_bytes + ENVELOPE_BYTES)
        keys = document.get("keys") if isinstance(document, dict) else None
        if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
            raise BadRequest('the body must be {"keys": [<string>, ...]}')
        detail = document.get("detail", False)
        if not isinstance(detail, bool):
            raise BadRequest('"detail" must be true or false')
        ask = lease_ask(document.get("lease"), hops(request), detail, self._from_peer(request))
        if len(keys) > self.limits.max_batch:
            raise TooLarge(f"{len(keys)} keys in one batch, the limit is {self.limits.max_batch} "
                           "(node.max_batch_keys)")  # fmt: skip
        for index, key in enumerate(keys):
            try:
                check_key(key, self.limits.max_key_bytes)
            except CachegridError as error:
                raise type(error)(f"keys[{index}] {key[:60]!r}: {error.message}") from error
        if not hops(request):  # a client's batch (forwarded ones were counted where sent)
            for key in keys:
                self.traffic.reads.add(key)
        with self.budget.reservation(self.limits.max_batch_bytes, "node.max_batch_bytes") as held:
            # Up front, what it will likely hold; never more than a capped answer can.
            most = min(3 * self.limits.max_batch_bytes, self.budget.limit)
            held.expect(min(self.router.expected_bytes(len(keys)), most))
            items = await self.router.batch_items(keys, hops(request), detail, held, ask)
            held.need(held.answer, answer=False)  # the encoded answer, about that size
            body = orjson.dumps({"items": [items[key] for key in keys]})
            del items
            return await send(request, body, {NODE_HEADER: self.node_id},
                              self.limits.write_timeout)  # fmt: skip

    async def lease_ack(self, request: web.Request) -> web.StreamResponse:
        """A holder acknowledges a drop record: it no longer serves those copies."""
        document = await read_json(request, 4096)
        fields = [document.get(f) if isinstance(document, dict) else None
                  for f in ("nonce", "seq", "holder", "inc")]  # fmt: skip
        nonce, seq, holder_id, inc = fields
        if not (isinstance(nonce, str) and type(seq) is int and isinstance(holder_id, str)
                and isinstance(inc, str)):  # fmt: skip
            raise BadRequest('the body must be {"nonce": str, "seq": int, "holder": str, '
                             '"inc": str}')  # fmt: skip
        holder = (holder_id, inc)
        leases = self.node.leases
        settled = leases is not None and leases.acked(nonce, seq, holder)
        return json_response({"settled": settled}, self.node_id)

    # -- ring and health ----------------------------------------------------------------

    async def ring(self, request: web.Request) -> web.StreamResponse:
        ring = self.coordinator.ring
        if ring is None:
            raise Unavailable("this node has no ring yet")
        return json_response(ring.describe(), self.node_id)

    async def openapi(self, request: web.Request) -> web.StreamResponse:
        return web.Response(body=OPENAPI, content_type=JSON, headers={NODE_HEADER: self.node_id})

    async def healthz(self, request: web.Request) -> web.StreamResponse:
        return json_response({"status": "ok"}, self.node_id)

    async def readyz(self, request: web.Request) -> web.StreamResponse:
        if not self.coordinator.ready():
            raise Unavailable("not ready: no live lease or no active ring yet")
        return json_response({"status": "ready", **self.coordinator.status()}, self.node_id)

    # -- helpers --------------------------------------------------------------------------

    def _written(self, key: str, version: Version) -> web.Response:
        return web.Response(
            body=orjson.dumps({"key": key, "version": str(version)}),
            content_type=JSON,
            headers={"ETag": f'"{version}"', NODE_HEADER: self.node_id},
        )

    async def _forward(
        self, request: web.Request, key: str, moved: NotOwner, body: bytes = b""
    ) -> web.Response:
        headers = {h: request.headers[h] for h in FORWARDED if h in request.headers}
        # The path is made from the key as checked here, never the client's raw path: a
        # client's dot segments ("a/../b") would be resolved on the way and reach another
        # key, or another route, with the peer token.
        path = KV_PATH + quote(key, safe="")
        answer = await self.router.forward(
            request.method, moved, path, hops=hops(request), body=body, headers=headers
        )
        return forwarded(answer, moved)


def forwarded(answer: PeerAnswer, moved: NotOwner) -> web.Response:
    """The owner's answer, passed back with this node's ring epoch."""
    response = web.Response(status=answer.status, body=answer.body, headers=answer.headers)
    response.headers[EPOCH_HEADER] = str(moved.epoch)
    return response


def key_of(request: web.Request) -> str:
    """The key of a /v1/kv/{key} request, percent-decoded as UTF-8 (BadRequest if that
    fails). aiohttp leaves an escape that does not decode as it is ("a%FFb"), which would
    alias the key a client wrote as "a%25FFb"; so a key with a "%" left in it is decoded
    again, strictly, from the raw path (rare: the hot path pays one substring test)."""
    key = request.match_info["key"]
    if "%" not in key:
        return key
    raw = request.raw_path.partition("?")[0].removeprefix(KV_PATH)
    try:
        return unquote_to_bytes(raw).decode()
    except UnicodeDecodeError as error:
        raise BadRequest("the key's percent-encoding is not valid UTF-8") from error


def lease_ask(field: object, hops: int, detail: bool,
              from_peer: bool) -> tuple[Holder, set[str]] | None:  # fmt: skip
    """A batchGet's ``lease`` member: (holder, keys) it asks leases of; None if absent.
    Only a peer one hop away may ask (a node forwarding a batch on drops it), with
    ``detail`` (the grant travels in the item's detail); with a peer token configured,
    only a request that carried it (``from_peer``)."""
    if field is None:
        return None
    if hops != 1 or not detail or not from_peer:
        raise BadRequest('"lease" is for peers: one hop away, with "detail": true')
    if not isinstance(field, dict):
        raise BadRequest('"lease" must be {"holder", "inc", "keys"}')
    holder, inc, keys = field.get("holder"), field.get("inc"), field.get("keys")
    if not (isinstance(holder, str) and isinstance(inc, str) and isinstance(keys, list)
            and all(isinstance(k, str) for k in keys)):  # fmt: skip
        raise BadRequest('"lease" must be {"holder": str, "inc": str, "keys": [str]}')
    return (holder, inc), set(keys)


def parse_condition(request: web.Request) -> Condition:
    """The request's precondition from If-Match / If-None-Match; BadRequest if malformed."""
    return condition_of(request.headers.get("If-Match"), request.headers.get("If-None-Match"))
