"""Request ids: ``X-Request-Id`` follows a request through forwards, logs and error bodies.

Owns: the id of the request the running task serves (a context variable: aiohttp serves
the requests of one connection in one task, one after another, and each request's guard
sets and resets it), and making one when the request came without a usable id.

Invariants:
- An id is made only when something needs it (an error body, a forward, a log line), so a
  cache hit of a request that sent none pays one header lookup and one context-variable
  set and reset, nothing more; once made, the same id is returned for the rest of the
  request.
- An id sent by a client is used as it is if it is 1 to ``MAX_LENGTH`` visible ASCII
  characters without a comma, or a comma-separated list of at most ``MAX_IDS`` such ids
  (how a batch of forwarded GETs carries the ids of its requests); anything else is
  replaced by a fresh id, so log lines and headers never carry what a client smuggled in.
"""

from __future__ import annotations

import re
import secrets
from contextvars import ContextVar, Token

HEADER = "X-Request-Id"
MAX_LENGTH = 64
MAX_IDS = 64  # ids in one header at most: the GETs of one forwarded batch
_ID = rf"[\x21-\x2b\x2d-\x7e]{{1,{MAX_LENGTH}}}"
_USABLE = re.compile(rf"{_ID}(?:,{_ID}){{0,{MAX_IDS - 1}}}")

# The request's id: as received if usable (checked when the request begins), or as made;
# None: it had none and none was needed yet, or no request is being served.
_current: ContextVar[str | None] = ContextVar("request_id", default=None)


def begin(received: str | None) -> Token[str | None]:
    """A request starts, with the header's value if it sent one; pass the token to ``end``
    when it is answered."""
    if received is not None and _USABLE.fullmatch(received) is None:
        received = None  # unusable: one is made if needed
    return _current.set(received)


def end(token: Token[str | None]) -> None:
    _current.reset(token)


def current() -> str:
    """The request's id, made now if it had no usable one."""
    value = _current.get()
    if value is None:
        value = secrets.token_hex(8)
        _current.set(value)
    return value


def known() -> str | None:
    """The request's id if it has one already (sent usable, or made); never makes one."""
    return _current.get()


def joined(ids: list[str]) -> str:
    """The ids of the requests a forwarded batch carries, as one header value (each once,
    the first ``MAX_IDS``)."""
    single = dict.fromkeys(part for value in ids for part in value.split(","))
    return ",".join(list(single)[:MAX_IDS])
