"""aiohttp client sessions that never re-send a request on their own.

Owns: creating every aiohttp ClientSession cachegrid uses to send writes (forwarding,
``cachegrid.Client``, the history recorder), and the one rule for telling, from a failed
request, whether it may have reached the server (``may_have_been_sent``).

Why: when a reused keep-alive connection breaks, aiohttp silently sends an "idempotent"
request again, PUT and DELETE included (RFC 9112 §9.3.1). If the first attempt reached a
node that applied the write and then died, the second attempt fails to connect, and the
caller sees "connection refused": proof, it would seem, that the write never left. Found by
the linearizability checker (a read saw a value whose write was reported as not applied).
Whether a write may have happened must be decided by us, so resends are off.

Invariants: a session from ``session()`` sends each request at most once; a request whose
failure is not certainly "never sent" counts as possibly applied.
"""

from __future__ import annotations

from typing import Any

import aiohttp


def session(**options: Any) -> aiohttp.ClientSession:
    """A ClientSession like ``aiohttp.ClientSession(**options)``, minus silent resends."""
    created = aiohttp.ClientSession(**options)
    if not hasattr(created, "_retry_connection"):
        raise RuntimeError(
            "this aiohttp has no _retry_connection switch: cachegrid cannot turn off its "
            "silent resends of PUT/DELETE, so it could misreport writes as not applied"
        )
    # aiohttp's own test client does the same (aiohttp/test_utils.py).
    created._retry_connection = False
    return created


def may_have_been_sent(error: BaseException) -> bool:
    """False only when the request certainly never reached the server: the connection
    was refused or could not be made. Anything later (a reset, a timeout, a broken
    answer) may have come after the server applied it."""
    return not isinstance(error, aiohttp.ClientConnectorError)
