"""The public HTTP API of a cache node (DESIGN.md §7): routes, parsing, JSON errors.

Owns: turning HTTP requests into calls on ``Node`` and answers into responses, forwarding
to the owner, and the rule that every error is a JSON body with a fitting status.

Invariants:
- Never a 500 for any input, never a stack trace: a request is validated (key, content
  type, size before reading the body, JSON shape, headers) before anything is applied, so
  a rejected request changes nothing. An unexpected exception is a bug: logged, and
  answered as a JSON 500 without details.
- Every response names the node that served it as owner (``X-Cachegrid-Node``), forwarded
  or not; a forwarded one also carries this node's ring epoch (``X-Cachegrid-Epoch``) so a
  client can tell its routing was stale.
- No business logic here: ownership, caching and versions live in node.py.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from aiohttp import web

from cachegrid.batching import Batcher
from cachegrid.coord.coordinator import Coordinator
from cachegrid.errors import (
    BadRequest,
    CachegridError,
    MethodNotAllowed,
    NotFound,
    Overloaded,
    TooLarge,
    Unavailable,
    UnsupportedMediaType,
    status_of,
)
from cachegrid.forward import HOPS_HEADER, Forwarded, Forwarder
from cachegrid.http.wire import EncodedResponse, HitPrefix, usable
from cachegrid.keys import check_key
from cachegrid.localcache import Entry
from cachegrid.metrics import Metrics
from cachegrid.node import ANY, Condition, Node, NotOwner
from cachegrid.ring import Member
from cachegrid.version import Version

log = logging.getLogger(__name__)

JSON = "application/json"
NODE_HEADER = "X-Cachegrid-Node"
EPOCH_HEADER = "X-Cachegrid-Epoch"
# Room for the {"value": ...} envelope around the largest value.
ENVELOPE_BYTES = 64 * 1024

Answer = web.StreamResponse | EncodedResponse
Handler = Callable[[web.Request], Awaitable[Answer]]


class Admission:
    """Bounds the requests a node works on at once; past the bound, 429 at once, so that
    overload sheds requests instead of queueing them into timeouts."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.current = 0  # requests admitted and not yet answered


class Api:
    def __init__(
        self,
        node: Node,
        coordinator: Coordinator,
        forwarder: Forwarder,
        *,
        max_key_bytes: int,
        max_value_bytes: int,
        max_batch: int = 1000,
        max_in_flight: int = 4096,
    ) -> None:
        self.node = node
        self.admission = Admission(max_in_flight)
        self.coordinator = coordinator
        self.forwarder = forwarder
        self.max_key_bytes = max_key_bytes
        self.max_value_bytes = max_value_bytes
        self.max_batch = max_batch
        self.node_id = node.node_id
        self._owner_reads: dict[tuple[str, int], Batcher[str, Forwarded]] = {}
        self._forward_batch_keys = node.metrics.batch_keys.labels("forward_get")
        self._hit_prefix = HitPrefix(self.node_id, "hit")
        self._miss_prefix = HitPrefix(self.node_id, "miss")

    def add_routes(self, app: web.Application) -> None:
        """Every route, each with a JSON 405 for other methods; a JSON 404 for the rest."""
        public: list[tuple[str, dict[str, Handler]]] = [
            ("/v1/kv/{key:.*}", {"GET": self.get, "PUT": self.put, "DELETE": self.delete}),
            ("/v1/kv:batchGet", {"POST": self.batch_get}),
            ("/v1/ring", {"GET": self.ring}),
        ]
        operations: list[tuple[str, dict[str, Handler]]] = [
            ("/healthz", {"GET": self.healthz}),
            ("/readyz", {"GET": self.readyz}),
            ("/metrics", {"GET": self.metrics_page}),
        ]
        add_table(app, public, self.node_id, self.node.metrics, self.admission)
        add_table(app, operations, self.node_id, self.node.metrics)

    async def metrics_page(self, request: web.Request) -> web.StreamResponse:
        return web.Response(body=self.node.metrics.render(),
                            headers={"Content-Type": "text/plain; version=0.0.4"})  # fmt: skip

    # -- key-value --------------------------------------------------------------------

    async def get(self, request: web.Request) -> Answer:
        key = request.match_info["key"]
        entry = self.node.hit(key)  # the hot path: no validation needed, nothing awaited
        hit = entry is not None
        if entry is None:
            check_key(key, self.max_key_bytes)
            try:
                entry, hit = await self.node.get(key)
            except NotOwner as moved:
                return await self._forward_get(request, key, moved)
        if entry.tombstone:
            error = NotFound(f"no such key: {key[:100]}")
            return error_response(error, self.node_id, "hit" if hit else "miss")
        return self._found(request, entry, hit)

    def _found(self, request: web.Request, entry: Entry, hit: bool) -> Answer:
        """The 200 answer: pre-encoded bytes where HTTP/1.1 keep-alive allows (http/wire.py,
        the fast path), else an ordinary response with the same headers."""
        cache = "hit" if hit else "miss"
        if usable(request):
            prefix = (self._hit_prefix if hit else self._miss_prefix).current()
            return EncodedResponse(b"".join((prefix, entry.head, entry.body)), cache)
        return web.Response(
            body=entry.body,
            content_type=JSON,
            headers={"ETag": entry.etag, "X-Cache": cache, NODE_HEADER: self.node_id},
        )

    async def put(self, request: web.Request) -> web.StreamResponse:
        key = request.match_info["key"]
        check_key(key, self.max_key_bytes)
        document = await self._read_json(request)
        if not isinstance(document, dict) or "value" not in document:
            raise BadRequest('the body must be a JSON object with a "value" member')
        value = orjson.dumps(document["value"])
        if len(value) > self.max_value_bytes:
            raise TooLarge(f"value is {len(value)} bytes, the limit is {self.max_value_bytes}")
        condition = parse_condition(request)
        try:
            version = await self.node.put(key, value, condition)
        except NotOwner as moved:
            return await self._forward(request, moved, await request.read())
        return self._written(key, version)

    async def delete(self, request: web.Request) -> web.StreamResponse:
        key = request.match_info["key"]
        check_key(key, self.max_key_bytes)
        condition = parse_condition(request)
        if condition.absent:
            raise BadRequest("If-None-Match is not supported on DELETE")
        try:
            version = await self.node.delete(key, condition)
        except NotOwner as moved:
            return await self._forward(request, moved)
        return self._written(key, version)

    async def batch_get(self, request: web.Request) -> web.StreamResponse:
        document = await self._read_json(request)
        keys = document.get("keys") if isinstance(document, dict) else None
        if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
            raise BadRequest('the body must be {"keys": [<string>, ...]}')
        detail = document.get("detail", False)
        if not isinstance(detail, bool):
            raise BadRequest('"detail" must be true or false')
        if len(keys) > self.max_batch:
            raise TooLarge(f"{len(keys)} keys in one batch, the limit is {self.max_batch}")
        for key in keys:
            check_key(key, self.max_key_bytes)
        items = await self._batch_items(keys, hops(request), detail)
        body = orjson.dumps({"items": [items[key] for key in keys]})
        return web.Response(body=body, content_type=JSON, headers={NODE_HEADER: self.node_id})

    # -- ring and health ----------------------------------------------------------------

    async def ring(self, request: web.Request) -> web.StreamResponse:
        ring = self.coordinator.ring
        if ring is None:
            raise Unavailable("this node has no ring yet")
        return json_response(ring.describe(), self.node_id)

    async def healthz(self, request: web.Request) -> web.StreamResponse:
        return json_response({"status": "ok"}, self.node_id)

    async def readyz(self, request: web.Request) -> web.StreamResponse:
        status = self.coordinator.status()
        session = self.coordinator.session
        ready = bool(session and session.alive()) and status["activated_epoch"] is not None
        if not ready:
            raise Unavailable("not ready: no live lease or no active ring yet")
        return json_response({"status": "ready", **status}, self.node_id)

    # -- helpers --------------------------------------------------------------------------

    async def _read_json(self, request: web.Request) -> Any:
        if request.content_type != JSON:
            raise UnsupportedMediaType(f"Content-Type must be {JSON}")
        limit = self.max_value_bytes + ENVELOPE_BYTES
        if request.content_length is not None and request.content_length > limit:
            raise TooLarge(f"body of {request.content_length} bytes, the limit is {limit}")
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge as error:
            raise TooLarge(f"body over the limit of {limit} bytes") from error
        try:
            return orjson.loads(body)
        except orjson.JSONDecodeError as error:
            raise BadRequest(f"the body is not valid JSON: {error}") from error

    def _written(self, key: str, version: Version) -> web.Response:
        return web.Response(
            body=orjson.dumps({"key": key, "version": str(version)}),
            content_type=JSON,
            headers={"ETag": f'"{version}"', NODE_HEADER: self.node_id},
        )

    async def _forward(
        self, request: web.Request, moved: NotOwner, body: bytes = b""
    ) -> web.Response:
        headers = {h: request.headers[h] for h in FORWARDED if h in request.headers}
        self.node.metrics.forwarded.inc()
        answer = await self.forwarder.forward(
            request.method, moved.owner.addr, request.path_qs,
            hops=hops(request), body=body, headers=headers,
        )  # fmt: skip
        response = web.Response(status=answer.status, body=answer.body, headers=answer.headers)
        response.headers[EPOCH_HEADER] = str(moved.epoch)
        return response

    async def _batch_items(self, keys: list[str], hop_count: int, detail: bool) -> dict[str, Any]:
        """One result per distinct key: served here, or asked of its owner in one batch.
        With ``detail``, each also says which node served it and, if read, hit or miss."""
        items: dict[str, Any] = {}
        remote: dict[str, list[str]] = {}
        served_here = {"node": self.node_id} if detail else {}

        async def local(key: str) -> None:
            try:
                entry, hit = await self.node.get(key)
            except NotOwner as moved:
                remote.setdefault(moved.owner.addr, []).append(key)
                return
            except CachegridError as error:
                items[key] = error_item(key, error) | served_here
                return
            cache = {"cache": "hit" if hit else "miss"} if detail else {}
            if entry.tombstone:
                items[key] = (
                    error_item(key, NotFound(f"no such key: {key[:100]}")) | served_here | cache
                )
            elif detail:  # the entry's body is a JSON object: extend it in place
                extra = orjson.dumps(served_here | cache)
                items[key] = orjson.Fragment(entry.body[:-1] + b"," + extra[1:])
            else:
                items[key] = orjson.Fragment(entry.body)

        await asyncio.gather(*(local(key) for key in dict.fromkeys(keys)))
        await asyncio.gather(
            *(self._remote_batch(a, ks, hop_count, detail, items) for a, ks in remote.items())
        )
        return items

    async def _remote_batch(
        self, addr: str, keys: list[str], hop_count: int, detail: bool, items: dict[str, Any]
    ) -> None:
        try:
            answer = await self._batch_get_at(addr, keys, hop_count, detail)
            if answer.status != 200:
                raise Unavailable(f"owner {addr} answered {answer.status}")
            for item in orjson.loads(answer.body)["items"]:
                items[item["key"]] = item
        except CachegridError as error:
            for key in keys:
                items[key] = error_item(key, error) | ({"node": self.node_id} if detail else {})

    async def _batch_get_at(
        self, addr: str, keys: list[str], hop_count: int, detail: bool
    ) -> Forwarded:
        """POST /v1/kv:batchGet to the node at ``addr``; its answer, whatever the status."""
        return await self.forwarder.forward(
            "POST", addr, "/v1/kv:batchGet", hops=hop_count,
            body=orjson.dumps({"keys": keys, "detail": detail}), headers={"Content-Type": JSON},
        )  # fmt: skip

    # -- forwarded reads, batched per owner --------------------------------------------------

    async def _forward_get(self, request: web.Request, key: str, moved: NotOwner) -> web.Response:
        """A GET for a key another node owns. GETs forwarded to one owner in the same loop
        turn travel as one batchGet (``detail``), each answered as if forwarded alone."""
        self.node.metrics.forwarded.inc()
        hop_count = hops(request)
        batcher = self._owner_reads.get((moved.owner.addr, hop_count))
        if batcher is None:
            if len(self._owner_reads) >= MAX_OWNER_BATCHERS:
                # Addresses of departed members pile up; a batch in flight keeps running.
                self._owner_reads.clear()
            fetch = functools.partial(self._fetch_from_owner, moved.owner, hop_count)
            batcher = Batcher(fetch, max_batch=FORWARD_BATCH)
            self._owner_reads[(moved.owner.addr, hop_count)] = batcher
        answer = await batcher.submit(key)
        response = web.Response(status=answer.status, body=answer.body, headers=answer.headers)
        response.headers[EPOCH_HEADER] = str(moved.epoch)
        return response

    async def _fetch_from_owner(
        self, owner: Member, hop_count: int, keys: list[str]
    ) -> list[Forwarded]:
        self._forward_batch_keys.observe(len(keys))
        answer = await self._batch_get_at(owner.addr, keys, hop_count, detail=True)
        if answer.status != 200:  # the owner refused the whole batch: each request, alike
            return [answer] * len(keys)
        try:
            answers = [answer_of(i, owner.node_id) for i in orjson.loads(answer.body)["items"]]
        except (orjson.JSONDecodeError, KeyError, TypeError) as error:
            raise Unavailable(f"owner {owner.node_id} sent a malformed batch: {error}") from error
        if len(answers) != len(keys):
            raise Unavailable(f"owner {owner.node_id} answered {len(answers)} of {len(keys)} keys")
        return answers


# Request headers forwarded to the owner with the request.
FORWARDED = ("Content-Type", "If-Match", "If-None-Match")
# GETs forwarded to one owner in one batch at most.
FORWARD_BATCH = 64
# Owner batchers kept (one per owner address and hop count) before they are all dropped.
MAX_OWNER_BATCHERS = 256


def answer_of(item: dict[str, Any], owner_id: str) -> Forwarded:
    """The answer a GET forwarded alone would have had, from its batchGet ``detail`` item
    (an item without "node" comes from a node that predates ``detail``: the owner's)."""
    headers = {"Content-Type": JSON, NODE_HEADER: item.get("node", owner_id)}
    if "cache" in item:
        headers["X-Cache"] = item["cache"]
    if "error" in item:
        status = status_of(item["error"]["code"])
        if status in (429, 503):
            headers["Retry-After"] = "1"
        return Forwarded(status, headers, orjson.dumps({"error": item["error"]}))
    headers["ETag"] = f'"{item["version"]}"'
    body = {"key": item["key"], "value": item["value"], "version": item["version"]}
    return Forwarded(200, headers, orjson.dumps(body))


def hops(request: web.Request) -> int:
    try:
        return int(request.headers.get(HOPS_HEADER, "0"))
    except ValueError as error:
        raise BadRequest(f"{HOPS_HEADER} must be an integer") from error


def parse_condition(request: web.Request) -> Condition:
    """The write's precondition from If-Match / If-None-Match; BadRequest if malformed."""
    if_match = request.headers.get("If-Match")
    if_none_match = request.headers.get("If-None-Match")
    if if_match is not None and if_none_match is not None:
        raise BadRequest("use either If-Match or If-None-Match, not both")
    if if_none_match is not None:
        if if_none_match.strip() != "*":
            raise BadRequest('If-None-Match supports only "*"')
        return Condition(absent=True)
    if if_match is None:
        return ANY
    text = if_match.strip()
    if text == "*":
        return Condition(exists=True)
    if len(text) < 2 or text[0] != '"' or text[-1] != '"':
        raise BadRequest('If-Match must be one quoted version, as in ETag: "12.3"')
    try:
        return Condition(version=Version.parse(text[1:-1]))
    except ValueError as error:
        raise BadRequest(f"If-Match: {error}") from error


def error_body(error: CachegridError) -> bytes:
    return orjson.dumps({"error": {"code": error.code, "message": error.message}})


def error_item(key: str, error: CachegridError) -> dict[str, Any]:
    return {"key": key, "error": {"code": error.code, "message": error.message}}


def error_response(error: CachegridError, node_id: str, cache: str | None = None) -> web.Response:
    headers = {NODE_HEADER: node_id}
    if cache is not None:
        headers["X-Cache"] = cache
    if error.status in (429, 503):
        headers["Retry-After"] = "1"
    return web.Response(
        status=error.status, body=error_body(error), content_type=JSON, headers=headers
    )


def json_response(document: Any, node_id: str) -> web.Response:
    return web.Response(
        body=orjson.dumps(document), content_type=JSON, headers={NODE_HEADER: node_id}
    )


def add_table(
    app: web.Application,
    table: list[tuple[str, dict[str, Handler]]],
    node_id: str,
    metrics: Metrics,
    admission: Admission | None = None,
) -> None:
    """Add every (path, {method: handler}), each with a JSON 405 for other methods."""
    for path, methods in table:
        for method, handler in methods.items():
            wrapped = guarded(handler, node_id, f"{method} {path}", metrics, admission)
            app.router.add_route(method, path, wrapped)
        app.router.add_route("*", path, method_not_allowed(sorted(methods)))


def guarded(
    handler: Handler, node_id: str, route: str, metrics: Metrics, admission: Admission | None
) -> Handler:
    """The handler, with every error turned into its JSON response, measured, and (with
    ``admission``) refused with 429 while the node already works on too many requests."""
    latency = {cache: metrics.requests.labels(route, cache) for cache in ("hit", "miss", "")}
    responses: dict[int, Any] = {}

    def record(status: int, cache: str, started: float) -> None:
        latency[cache].observe(time.perf_counter() - started)
        counter = responses.get(status)
        if counter is None:
            counter = responses[status] = metrics.responses.labels(route, str(status))
        counter.inc()

    async def run(request: web.Request) -> Answer:
        started = time.perf_counter()
        if admission is not None:
            if admission.current >= admission.limit:
                response = error_response(Overloaded("too many requests in flight"), node_id)
                record(response.status, "", started)
                return response
            admission.current += 1
        try:
            response = await handler(request)
        except CachegridError as error:
            response = error_response(error, node_id)
        except Exception:
            log.exception("bug: unexpected error in %s %s", request.method, request.path)
            response = web.Response(
                status=500,
                body=b'{"error":{"code":"internal","message":"internal error"}}',
                content_type=JSON,
            )
        finally:
            if admission is not None:
                admission.current -= 1
        if type(response) is EncodedResponse:
            cache = response.cache
        else:
            cache = response.headers.get("X-Cache", "")
        record(response.status, cache if cache in latency else "", started)
        return response

    return run


def method_not_allowed(allowed: list[str]) -> Handler:
    async def answer(request: web.Request) -> web.StreamResponse:
        error = MethodNotAllowed(f"{request.method} not allowed; use {', '.join(allowed)}")
        response = web.Response(status=405, body=error_body(error), content_type=JSON)
        response.headers["Allow"] = ", ".join(allowed)
        return response

    return answer


def add_not_found(app: web.Application) -> None:
    """The JSON 404 for every path no route took; add it after every other route."""
    app.router.add_route("*", "/{tail:.*}", not_found)


async def not_found(request: web.Request) -> web.StreamResponse:
    error = NotFound(f"no route {request.method} {request.path[:200]}")
    return web.Response(status=404, body=error_body(error), content_type=JSON)
