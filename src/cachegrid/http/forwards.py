"""The hit lane's forwards: a plain GET of a key another node owns, sent to the owner over a
pipelined peer connection (http/pipes.py), and the answer the client gets back.

Owns: which of the lane's GETs are forwarded this way (the others take the route), and
turning the owner's answer, or the failure, into the bytes the client gets.

Invariants:
- The client gets the owner's answer as the owner sent it (status line, headers and body,
  byte for byte), plus this node's ring epoch (``X-Cachegrid-Epoch``) after the status
  line: what the route's forward gives (the owner's status, its passed-back headers and
  body, this node's epoch), and the owner's Date and Server besides. The headers that
  describe the owner's connection or ring, not the answer (``Connection``, ``Keep-Alive``,
  an ``X-Cachegrid-Epoch`` of a node the owner forwarded to), are never passed on. A
  failure is this node's JSON error, naming it (503 for an owner unreachable, failing or
  too slow; 429 for a node out of byte budget), as the route's. No request id is made for
  a forward that needs none: the owner makes one if it does (an error), and its answer
  returns it (``X-Request-Id``), as this node's own errors do.
- Forwarded here only: a key whose owner on this node's ring is another node, at the first
  hop; not a key a read lease is to be asked or renewed for (the route's forward carries
  the ask: serving/leases.py); while the node is under its admission limit and the owner
  under ``node.max_forwards_per_owner`` (a forward in flight counts in both, as a route's
  does).
- Every forward's answer is made ready exactly once (a bug in making it is a JSON 500, as
  the route's guard makes it), or the client's connection would wait for it to its idle
  timeout.
- Counted as the route counts a forward: ``cachegrid_forwarded``, the read of the key, the
  GET route's latency (labelled by the owner's ``X-Cache``) and status.
"""

from __future__ import annotations

import logging
import re

from cachegrid import requestids
from cachegrid.budget import Reservation
from cachegrid.errors import CachegridError, Unavailable, retry_after
from cachegrid.headers import EPOCH_HEADER, JSON, NODE_HEADER
from cachegrid.http.framework import Admission, Recorder, error_body
from cachegrid.http.lane import Pending
from cachegrid.http.pipes import Pipes
from cachegrid.http.wire import DateLine, encode
from cachegrid.metrics import Count
from cachegrid.ring import Ring
from cachegrid.serving.routing import Router

log = logging.getLogger(__name__)

_EPOCH = EPOCH_HEADER.encode()
_REQUEST_ID = requestids.HEADER.encode()
# Header lines of the owner's answer not passed on (each with the CRLF before it): its
# connection's, and the epoch of a node it forwarded the request to (this node's goes).
_NOT_PASSED = re.compile(rb"\r\n(?:Connection|Keep-Alive|" + re.escape(_EPOCH) + rb"):[^\r\n]*",
                         re.IGNORECASE)  # fmt: skip
# (looked for as nodes spell it, on every answer; removed whatever its case)
_EPOCH_LINE = b"\r\n" + _EPOCH + b":"
_CACHE_LINE = b"\r\nX-Cache: "
# The route's latency labels, by the owner's X-Cache.
_LABELS = {b"hit": "hit", b"miss": "miss", b"replica": "replica"}


class Forward(Pending):
    """One GET forwarded over a pipe: the lane's answer to come (``Pending``), and what
    the pipe tells of the owner's answer (its ``Asker``)."""

    __slots__ = ("_forwards", "addr", "deadline", "epoch", "started")

    def __init__(self, forwards: LaneForwards, addr: str, epoch: bytes, started: float) -> None:
        # (Pending's fields set here: one call fewer on every forward)
        self.result, self.held, self._listener = None, None, None
        self._forwards, self.addr, self.epoch, self.started = forwards, addr, epoch, started
        self.deadline = 0.0

    def __repr__(self) -> str:
        return f"<Forward to {self.addr} ready={self.result is not None}>"

    def answered(self, status: int, message: bytes, keep_alive: bool,
                 held: Reservation | None) -> None:  # fmt: skip
        forwards = self._forwards
        forwards.admission.current -= 1  # (no longer in flight: as ``done``, inline)
        forwards.router.give_back(self.addr)
        self.held = held
        try:
            answer, label = passed_on(message, keep_alive, self.epoch)
        except Exception:
            log.exception("bug: a forwarded GET's answer could not be made")
            answer, status, label = forwards.error(CachegridError("internal error")), 500, ""
        forwards.route.record(status, label, self.started)
        self.ready(answer)

    def failed(self, error: CachegridError) -> None:
        forwards = self._forwards
        forwards.done(self.addr)
        forwards.route.record(error.status, "", self.started)
        self.ready(forwards.error(error))


def passed_on(message: bytes, keep_alive: bool, epoch: bytes) -> tuple[bytes, str]:
    """(what the client gets of the owner's answer ``message``, the route's latency label
    for it): ``epoch`` (a header line) after the status line, and the lines the owner's
    connection needed removed."""
    line = message.find(b"\r\n") + 2
    head = message.find(b"\r\n\r\n", line - 2)
    if not keep_alive or message.find(_EPOCH_LINE, line - 2, head) >= 0:
        body = message[head:]
        message = _NOT_PASSED.sub(b"", message[:head]) + body
        head = len(message) - len(body)
    cache = message.find(_CACHE_LINE, line - 2, head)
    label = ""
    if cache >= 0:
        cache += len(_CACHE_LINE)
        label = _LABELS.get(message[cache : message.find(b"\r\n", cache)], "")
    return message[:line] + epoch + message[line:], label


class LaneForwards:
    def __init__(self, node_id: str, pipes: Pipes, router: Router, admission: Admission,
                 route: Recorder, forwarded: Count) -> None:  # fmt: skip
        self.node_id = node_id
        self.pipes = pipes
        self.router = router
        # Read leases on (settings fixed at start): reads to count, asks to leave alone.
        holder = router.holder
        self.holder = holder if holder is not None and holder.settings.enabled else None
        self.admission = admission
        self.route = route
        self._forwarded = forwarded
        self._date = DateLine()
        self._epoch, self._epoch_line = -1, b""  # the last ring's epoch, as a header line
        self._error_headers = b"Content-Type: %s\r\n%s: %s\r\n" % (
            JSON.encode(), NODE_HEADER.encode(), node_id.encode())  # fmt: skip

    def __repr__(self) -> str:
        return f"<LaneForwards {self.pipes!r}>"

    def forward(self, key: str, ring: Ring | None, started: float) -> Forward | None:
        """The answer to a GET of ``key`` (received at ``started``, perf_counter) asked of
        its owner on ``ring`` (this node's), to come; None if it is not for this path."""
        if ring is None:
            return None
        try:
            owner = ring.members[ring.owner(key)]  # (owner_member, a call fewer)
        except Unavailable:  # no member has weight: the route's 503
            return None
        if owner.node_id == self.node_id:
            return None  # ours, and not a hit: the route's (a fill, a handoff wait)
        holder = self.holder
        if holder is not None and holder.would_ask(key):
            return None
        addr = owner.addr
        if not self.router.take_slot(addr):
            return None  # as many as allowed wait on it: the route's 503 (counted there)
        if ring.epoch != self._epoch:
            self._epoch, self._epoch_line = ring.epoch, b"%s: %d\r\n" % (_EPOCH, ring.epoch)
        forward = Forward(self, addr, self._epoch_line, started)
        if not self.pipes.ask(addr, key.encode(), forward):
            self.router.give_back(addr)
            return None
        self.admission.current += 1
        try:  # (sent: whatever happens, the lane must have it, or its answer is orphaned)
            self._forwarded.inc()
            if holder is not None:
                holder.forwarding(key)
        except Exception:
            log.exception("bug: a forwarded GET could not be counted")
        return forward

    def done(self, addr: str) -> None:
        """A forward to ``addr`` has its answer, or failed: it no longer counts."""
        self.admission.current -= 1
        self.router.give_back(addr)

    def error(self, error: CachegridError) -> bytes:
        """This node's JSON error answer, naming a request id made for it."""
        headers = self._error_headers
        if retry_after(error.status):
            headers += b"Retry-After: 1\r\n"
        token = requestids.begin(None)  # (the id the error body names is made here)
        try:
            body = error_body(error)
            headers += b"%s: %s\r\n" % (_REQUEST_ID, requestids.current().encode())
        finally:
            requestids.end(token)
        return encode(error.status, self._date.current(), headers, body)
