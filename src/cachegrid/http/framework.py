"""The small route framework every HTTP route of a node runs in (public, ops and admin).

Owns: registering routes with a JSON 405 for other methods and a JSON 404 for unknown
paths; the guard around every handler (errors turned into JSON answers, latency and status
metrics, request admission); reading a JSON body within a size limit; the JSON error shape.

Invariants:
- Never a 500 for any input, never a stack trace: a ``CachegridError`` becomes its JSON
  answer with its status; anything else is a bug, logged, and answered as a JSON 500
  without details.
- Every answer names this node (``X-Cachegrid-Node``); 429 and 503 carry ``Retry-After``.
- Request ids (requestids.py): every request's id is set for its handler and reset after;
  every error body names it (``request_id``), and every answer except a pre-encoded hit
  carries it in ``X-Request-Id`` once it has one (sent by the client, or made for an
  error, a forward or a log line). With the access log on, every request gets a line.
- Admission: with an ``Admission``, a route refuses with 429 at once while the node already
  works on ``limit`` requests, so overload sheds requests instead of queueing them.
- A JSON body is refused before it is read if its declared length is over the limit (413),
  and with 415 if its Content-Type is not application/json.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, cast

import orjson
from aiohttp import web
from aiohttp.http import HttpVersion11

from cachegrid import requestids
from cachegrid.auth import Scope, Tokens
from cachegrid.errors import (
    BadRequest,
    CachegridError,
    ExpectationFailed,
    MethodNotAllowed,
    NotFound,
    Overloaded,
    TooLarge,
    UnsupportedMediaType,
    retry_after,
)
from cachegrid.headers import HOPS_HEADER, JSON, NODE_HEADER
from cachegrid.http.wire import EncodedResponse
from cachegrid.metrics import Count, Metrics

log = logging.getLogger(__name__)
access = logging.getLogger("cachegrid.access")

Answer = web.StreamResponse | EncodedResponse
Handler = Callable[[web.Request], Awaitable[Answer]]
AiohttpHandler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Table = list[tuple[str, dict[str, Handler]]]
# Routes as data: path -> {method: name of the handler method} (kept true to the OpenAPI
# description, http/openapi.json, by tests/integration/test_openapi.py).
Routes = dict[str, dict[str, str]]


def bind(owner: object, routes: Routes,
         wrap: Callable[[Handler], Handler] = lambda handler: handler) -> Table:  # fmt: skip
    """The route table of ``routes``, each name resolved to ``owner``'s method."""
    return [(path, {method: wrap(getattr(owner, name)) for method, name in methods.items()})
            for path, methods in routes.items()]  # fmt: skip


class Admission:
    """Bounds the requests a node works on at once (see the module's invariants)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.current = 0  # requests admitted and not yet answered


def add_table(app: web.Application, table: Table, node_id: str, metrics: Metrics,
              admission: Admission | None = None, access_log: bool = False,
              body_limit: int = 1 << 20) -> None:  # fmt: skip
    """Add every (path, {method: handler}), each with a JSON 405 for other methods, and
    ``Expect: 100-continue`` answered only for a body of at most ``body_limit`` bytes."""
    expect = expect_continue(body_limit)
    for path, methods in table:
        for method, handler in methods.items():
            wrapped = guarded(handler, node_id, f"{method} {path}", metrics, admission,
                              access_log)  # fmt: skip
            # aiohttp's type says StreamResponse; an EncodedResponse has what its request
            # handler uses of one (http/wire.py).
            app.router.add_route(method, path, cast(AiohttpHandler, wrapped),
                                 expect_handler=expect)  # fmt: skip
        app.router.add_route("*", path, cast(AiohttpHandler, method_not_allowed(sorted(methods))))


def expect_continue(limit: int) -> Callable[[web.Request], Awaitable[web.Response | None]]:
    """The answer to a request's ``Expect`` header, before its body is sent: ``100
    Continue`` (as aiohttp's own), but a JSON 413 if the declared length is over ``limit``
    (so the client does not send a body that would be refused unread) and a JSON 417 for
    an expectation other than 100-continue (aiohttp's would be plain text)."""

    async def answer(request: web.Request) -> web.Response | None:
        if request.headers.get("Expect", "").lower() != "100-continue":
            return unrouted(request, 417, ExpectationFailed("only Expect: 100-continue is known"))
        length = request.content_length
        if length is not None and length > limit:
            error = TooLarge(f"body of {length} bytes, the limit is {limit}")
            response = unrouted(request, 413, error)
            response.force_close()  # the body may follow all the same: not read
            return response
        if request.version == HttpVersion11:
            await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            request.writer.output_size = 0  # (as aiohttp's: the answer proper is still to come)
        return None

    return answer


def add_not_found(app: web.Application) -> None:
    """The JSON 404 for every path no route took (newlines in it too); add it after every
    other route."""
    app.router.add_route("*", r"/{tail:[\s\S]*}", not_found)


def guarded(handler: Handler, node_id: str, route: str, metrics: Metrics,
            admission: Admission | None, access_log: bool = False) -> Handler:  # fmt: skip
    """The handler, with every error turned into its JSON response, measured, and (with
    ``admission``) refused with 429 while the node already works on too many requests; its
    request id set while it runs; with ``access_log``, one log line per answer."""
    recorder = Recorder(metrics, route)
    record, latency = recorder.record, recorder.latency

    def finish(request: web.Request, response: Answer, started: float) -> Answer:
        """Measure the answer, log it (access log), and name its request in it."""
        if isinstance(response, EncodedResponse):
            cache = response.cache
        else:
            cache = response.headers.get("X-Cache", "")
        record(response.status, cache if cache in latency else "", started)
        if access_log:
            log_access(request, response.status, cache, route, time.perf_counter() - started)
        request_id = requestids.known()
        if request_id is not None and not isinstance(response, EncodedResponse):
            response.headers[requestids.HEADER] = request_id
        return response

    async def run(request: web.Request) -> Answer:
        # One coroutine, not a wrapper of another: this runs on every hit.
        token = requestids.begin(request.headers.get(requestids.HEADER))
        started = time.perf_counter()
        try:
            if admission is not None:
                if admission.current >= admission.limit:
                    overloaded = Overloaded("too many requests in flight")
                    return finish(request, error_response(overloaded, node_id), started)
                admission.current += 1
            response: Answer
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
            return finish(request, response, started)
        finally:
            requestids.end(token)

    return run


class Recorder:
    """The latency and status metrics of one route's answers."""

    __slots__ = ("_metrics", "_responses", "_route", "latency")

    def __init__(self, metrics: Metrics, route: str) -> None:
        self.latency = {cache: metrics.requests.labels(route, cache)
                        for cache in ("hit", "miss", "replica", "")}  # fmt: skip
        self._responses: dict[int, Count] = {}
        self._metrics, self._route = metrics, route

    def __repr__(self) -> str:
        return f"<Recorder {self._route}>"

    def record(self, status: int, cache: str, started: float) -> None:
        """One answer: its latency since ``started`` (perf_counter) and its status."""
        self.latency[cache].observe(time.perf_counter() - started)
        (self._responses.get(status) or self.responses(status)).inc()

    def responses(self, status: int) -> Count:
        """The series counting this route's answers of ``status``."""
        counter = self._responses.get(status)
        if counter is None:
            counter = self._responses[status] = self._metrics.responses.labels(
                self._route, str(status))  # fmt: skip
        return counter


def authorized(handler: Handler, tokens: Tokens, needed: Scope) -> Handler:
    """The handler, run only for a request whose bearer token allows ``needed`` (401 or
    403 otherwise); the token's scope is left in ``request["scope"]``."""

    async def checked(request: web.Request) -> Answer:
        request["scope"] = tokens.check(request.headers.get("Authorization"), needed)
        return await handler(request)

    return checked


def log_access(request: web.Request, status: int, cache: str, route: str,
               seconds: float) -> None:  # fmt: skip
    """One access-log line: what was asked, by whom, and how it was answered."""
    path, ms = request.path_qs[:300], round(seconds * 1000, 3)
    access.info(
        "%s %s %d %s %.3f ms", request.method, path, status, cache or "-", ms,
        extra={"event": "access", "method": request.method, "path": path, "route": route,
               "status": status, "cache": cache or None, "ms": ms,
               "remote": request.remote, "request_id": requestids.current()},
    )  # fmt: skip


async def read_json(request: web.Request, limit: int, *, optional: bool = False) -> Any:
    """The request's JSON body, read only if it fits ``limit`` bytes. With ``optional``, a
    request without a body reads as ``{}``."""
    if optional and not request.can_read_body:
        return {}
    if request.content_type != JSON:
        raise UnsupportedMediaType(f"Content-Type must be {JSON}")
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


# A big answer is written in parts of this size, each within the write timeout.
SEND_PART = 256 * 1024
# An answer this small goes out at once, as any other: the transport's buffer takes it
# whole (its high-water mark), so nothing waits on the client.
SEND_AT_ONCE = 64 * 1024


async def send(request: web.Request, body: bytes, headers: dict[str, str],
               write_timeout: float) -> web.StreamResponse:  # fmt: skip
    """A JSON 200 written in parts, each waiting for the client to drain the one before
    (back-pressure): the answer is sent before the handler returns, so the bytes it holds
    are given back only once they are out. A client that reads nothing for
    ``write_timeout`` seconds loses the connection (as nginx's send_timeout). An answer
    of at most ``SEND_AT_ONCE`` bytes is an ordinary response (no waiting, no parts)."""
    if len(body) <= SEND_AT_ONCE:
        return web.Response(body=body, content_type=JSON, headers=headers)
    response = web.StreamResponse(headers=headers)
    response.content_type = JSON
    response.content_length = len(body)
    await response.prepare(request)
    view = memoryview(body)
    try:
        for start in range(0, len(view), SEND_PART):
            async with asyncio.timeout(write_timeout):
                await response.write(view[start : start + SEND_PART])
        await response.write_eof()
    except (TimeoutError, ConnectionError):
        if request.transport is not None:
            request.transport.abort()
        log.info("closed a connection that did not read its answer of %d bytes", len(body))
    return response


def hops(request: web.Request) -> int:
    """How many times the request was forwarded already (``X-Cachegrid-Hops``)."""
    try:
        count = int(request.headers.get(HOPS_HEADER, "0"))
    except ValueError as error:
        raise BadRequest(f"{HOPS_HEADER} must be an integer") from error
    if count < 0:  # would stretch the hop limit
        raise BadRequest(f"{HOPS_HEADER} must not be negative")
    return count


def error_body(error: CachegridError) -> bytes:
    """The JSON error shape, naming the request (its id is made now if it had none)."""
    return orjson.dumps({"error": {"code": error.code, "message": error.message,
                                   "request_id": requestids.current()}})  # fmt: skip


def error_response(error: CachegridError, node_id: str, cache: str | None = None) -> web.Response:
    headers = {NODE_HEADER: node_id}
    if cache is not None:
        headers["X-Cache"] = cache
    if retry_after(error.status):
        headers["Retry-After"] = "1"
    return web.Response(
        status=error.status, body=error_body(error), content_type=JSON, headers=headers
    )


def json_response(document: Any, node_id: str) -> web.Response:
    return web.Response(
        body=orjson.dumps(document), content_type=JSON, headers={NODE_HEADER: node_id}
    )


def method_not_allowed(allowed: list[str]) -> Handler:
    async def answer(request: web.Request) -> web.StreamResponse:
        error = MethodNotAllowed(f"{request.method} not allowed; use {', '.join(allowed)}")
        response = unrouted(request, 405, error)
        response.headers["Allow"] = ", ".join(allowed)
        return response

    return answer


async def not_found(request: web.Request) -> web.StreamResponse:
    return unrouted(request, 404, NotFound(f"no route {request.method} {request.path[:200]}"))


def unrouted(request: web.Request, status: int, error: CachegridError) -> web.Response:
    """The error answer of a request no route's guard ran for, with its own request id."""
    token = requestids.begin(request.headers.get(requestids.HEADER))
    try:
        response = web.Response(status=status, body=error_body(error), content_type=JSON)
        response.headers[requestids.HEADER] = requestids.current()
        return response
    finally:
        requestids.end(token)
