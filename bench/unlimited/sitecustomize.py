"""Loaded at start-up by a node run with ``PYTHONPATH=bench/unlimited`` (bench/limits_cost.py
only): takes the per-request resource limits of issue 17 out of the node's code, so that
their cost on the hot path can be measured against the same node without them.

Removed: the connection count on accept and the count of connections closed by the idle
timer (http/listener.py), the per-owner forward slots (serving/routing.py), and the
in-flight admission check (http/framework.py). The byte budget is not on a GET's path.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from cachegrid.http import framework, listener
from cachegrid.serving import routing

_guarded = framework.guarded


def _unadmitted(handler: Any, node_id: str, route: str, metrics: Any, admission: Any) -> Any:
    return _guarded(handler, node_id, route, metrics, None)


@contextlib.contextmanager
def _no_slot(self: Any, owner: Any) -> Iterator[None]:
    yield


framework.guarded = _unadmitted  # type: ignore[assignment]
routing.Router._slot = _no_slot  # type: ignore[method-assign,assignment]
listener.Listener._protocol = lambda self: self._server_protocols()  # type: ignore[method-assign]
