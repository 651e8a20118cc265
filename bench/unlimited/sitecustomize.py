"""Loaded at start-up by a node run with ``PYTHONPATH=bench/unlimited`` (bench/limits_cost.py
only): takes the per-request resource limits of issue 17 out of the node's code, so that
their cost on the hot path can be measured against the same node without them.

Removed: the connection count on accept (http/listener.py), the per-owner forward slots
(serving/routing.py, the hit lane's forwards included), and the routes' in-flight admission
check (http/framework.py). Left: the hit lane's admission check (one compare, inline in
http/api.py) and the count of connections closed by the idle timer (once per close). The
byte budget is not on a GET's path.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from cachegrid.http import framework, listener
from cachegrid.serving import routing

_guarded = framework.guarded


def _unadmitted(handler: Any, node_id: str, route: str, metrics: Any, admission: Any,
                *rest: Any) -> Any:  # fmt: skip
    return _guarded(handler, node_id, route, metrics, None, *rest)


@contextlib.contextmanager
def _no_slot(self: Any, owner: Any) -> Iterator[None]:
    yield


def _uncounted(self: Any) -> Any:
    """A connection's protocol, the hit lane included, without the count on accept."""
    server = self._server_protocols
    return self._handler(server, loop=server._loop, **server._kwargs)


framework.guarded = _unadmitted  # type: ignore[assignment]
routing.Router._slot = _no_slot  # type: ignore[method-assign,assignment]
routing.Router.take_slot = lambda self, addr: True  # type: ignore[method-assign]
routing.Router.give_back = lambda self, addr: None  # type: ignore[method-assign]
listener.Listener._protocol = _uncounted  # type: ignore[method-assign]
