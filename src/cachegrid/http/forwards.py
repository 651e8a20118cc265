"""The hit lane's forwards: a plain GET of a key another node owns, sent to the owner over a
pipelined peer connection (http/pipes.py), and the answer the client gets back.

Owns: which of the lane's GETs are forwarded this way (the others take the route), and
turning the owner's answer, or the failure, into the bytes the route's forward would give.

Invariants:
- The client gets what the route's forward gives: the owner's status, passed-back headers
  and body, plus this node's ring epoch (``X-Cachegrid-Epoch``); a failure is this node's
  JSON error, naming it (503 for an owner unreachable, failing or too slow; 429 for a node
  out of byte budget), as the route's. No request id is made for a forward that needs
  none: the owner makes one if it does (an error), and its answer returns it
  (``X-Request-Id``), as this node's own errors do.
- Forwarded here only: a key whose owner on this node's ring is another node, at the first
  hop; not a key a read lease is to be asked or renewed for (the route's forward carries
  the ask: serving/leases.py); while the node is under its admission limit and the owner
  under ``node.max_forwards_per_owner`` (a forward in flight counts in both, as a route's
  does).
- Counted as the route counts a forward: ``cachegrid_forwarded``, the read of the key, the
  GET route's latency (labelled by the owner's ``X-Cache``) and status.
"""

from __future__ import annotations

import logging
import time
from functools import partial

from cachegrid import requestids
from cachegrid.errors import CachegridError, Unavailable
from cachegrid.headers import EPOCH_HEADER, JSON, NODE_HEADER
from cachegrid.http.framework import Admission, Recorder, error_body
from cachegrid.http.lane import Pending
from cachegrid.http.pipes import Pipes, RawAnswer
from cachegrid.http.wire import DateLine, encode
from cachegrid.metrics import Count
from cachegrid.ring import Ring
from cachegrid.serving.routing import Router

log = logging.getLogger(__name__)

_EPOCH = EPOCH_HEADER.encode()
_REQUEST_ID = requestids.HEADER.encode()


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
        self._route = route
        self._forwarded = forwarded
        self._date = DateLine()
        self._epoch, self._epoch_line = -1, b""  # the last ring's epoch, as a header line
        self._error_headers = b"Content-Type: %s\r\n%s: %s\r\n" % (
            JSON.encode(), NODE_HEADER.encode(), node_id.encode())  # fmt: skip

    def __repr__(self) -> str:
        return f"<LaneForwards {self.pipes!r}>"

    def forward(self, key: str, ring: Ring | None) -> Pending | None:
        """The answer to a GET of ``key`` asked of its owner on ``ring`` (this node's), to
        come; None if it is not for this path."""
        if ring is None:
            return None
        try:
            owner = ring.owner_member(key)
        except Unavailable:  # no member has weight: the route's 503
            return None
        if owner.node_id == self.node_id:
            return None  # ours, and not a hit: the route's (a fill, a handoff wait)
        holder = self.holder
        if holder is not None and holder.would_ask(key):
            return None
        if not self.router.take_slot(owner.addr):
            return None  # as many as allowed wait on it: the route's 503 (counted there)
        started = time.perf_counter()
        epoch = self._epoch_line
        if ring.epoch != self._epoch:
            self._epoch, epoch = ring.epoch, b"%s: %d\r\n" % (_EPOCH, ring.epoch)
            self._epoch_line = epoch
        pending = Pending()
        finish = partial(self._answer, pending, owner.addr, epoch, started)
        if not self.pipes.ask(owner.addr, key.encode(), finish):
            self.router.give_back(owner.addr)
            return None
        self.admission.current += 1
        self._forwarded.inc()
        if holder is not None:
            holder.forwarding(key)
        return pending

    def _answer(self, pending: Pending, addr: str, epoch: bytes, started: float,
                outcome: RawAnswer | CachegridError) -> None:  # fmt: skip
        """What the client gets, from the owner's answer or the failure; counted. Always
        made ready (a bug here is a JSON 500, as the route's guard makes it), or the
        client's connection would wait for it to its idle timeout."""
        self.admission.current -= 1
        self.router.give_back(addr)
        held = outcome.held if isinstance(outcome, RawAnswer) else None
        try:
            answer, status, cache = self._encoded(epoch, outcome)
        except Exception:
            log.exception("bug: a forwarded GET's answer could not be made")
            answer, status, cache = self._error(CachegridError("internal error")), 500, ""
        self._route.record(status, cache if cache in self._route.latency else "", started)
        pending.ready(answer, held)

    def _encoded(self, epoch: bytes,
                 outcome: RawAnswer | CachegridError) -> tuple[bytes, int, str]:  # fmt: skip
        """(the answer's bytes, its status, the owner's X-Cache)."""
        if isinstance(outcome, RawAnswer):
            status, cache = outcome.status, outcome.cache.decode("latin-1")
            headers = outcome.headers + epoch
            return encode(status, self._date.current(), headers, outcome.body), status, cache
        return self._error(outcome), outcome.status, ""

    def _error(self, error: CachegridError) -> bytes:
        """This node's JSON error answer, naming a request id made for it."""
        headers = self._error_headers
        if error.status in (429, 503):
            headers += b"Retry-After: 1\r\n"
        token = requestids.begin(None)  # (the id the error body names is made here)
        try:
            body = error_body(error)
            headers += b"%s: %s\r\n" % (_REQUEST_ID, requestids.current().encode())
        finally:
            requestids.end(token)
        return encode(error.status, self._date.current(), headers, body)
