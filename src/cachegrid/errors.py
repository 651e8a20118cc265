"""The cachegrid exception tree.

Owns: every error cachegrid raises on purpose, each carrying the stable machine-readable
``code`` and the HTTP ``status`` it maps to (DESIGN.md §7). Foreign exceptions (redis, aetcd,
aiohttp) are translated into these once, at the module that talks to the foreign library;
nothing above that module ever sees a third-party exception.

Invariant: an error's class says whether a write may have taken effect. ``Unavailable``
means it did not; ``Indeterminate`` means it may or may not have.
"""

from __future__ import annotations


class CachegridError(Exception):
    """Root of every deliberate cachegrid error."""

    code = "internal"
    status = 500

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class BadRequest(CachegridError):
    """The request is malformed: bad key, body, header or parameter."""

    code = "bad_request"
    status = 400


class Unauthorized(CachegridError):
    """A missing or wrong admin token."""

    code = "unauthorized"
    status = 401


class Forbidden(CachegridError):
    code = "forbidden"
    status = 403


class NotFound(CachegridError):
    code = "not_found"
    status = 404


class MethodNotAllowed(CachegridError):
    code = "method_not_allowed"
    status = 405


class UnsupportedMediaType(CachegridError):
    code = "unsupported_media_type"
    status = 415


class ExpectationFailed(CachegridError):
    """An ``Expect`` header other than ``100-continue`` (RFC 9110 §10.1.1)."""

    code = "expectation_failed"
    status = 417


class VersionMismatch(CachegridError):
    """A conditional write's precondition (If-Match / If-None-Match) does not hold."""

    code = "version_mismatch"
    status = 412


class TooLarge(CachegridError):
    """A key, value or body exceeds its configured limit."""

    code = "too_large"
    status = 413


class HeaderTooLarge(TooLarge):
    """A request head (request line or header fields) over the server's limit (RFC 6585)."""

    status = 431


class Overloaded(CachegridError):
    code = "overloaded"
    status = 429


class Unavailable(CachegridError):
    """The operation was not carried out; retrying it is safe."""

    code = "unavailable"
    status = 503


class Indeterminate(CachegridError):
    """A write may or may not have taken effect (a timeout after it was sent)."""

    code = "indeterminate"
    status = 504


class StoreUnavailable(Unavailable):
    """Too few store replicas answered; for a write: it was applied on none of them."""

    code = "store_unavailable"


class WriteIndeterminate(Indeterminate):
    """Too few replicas acknowledged a write that may still have reached some of them."""

    code = "write_indeterminate"


class ReplicaError(CachegridError):
    """One replica failed one operation. Never escapes the store: a quorum absorbs it.

    ``definite`` is true when the command certainly did not execute on the replica
    (refused connection, shed before sending), false when it may have (timeout, reset).
    """

    code = "replica_error"
    status = 503

    def __init__(self, message: str, *, definite: bool) -> None:
        super().__init__(message)
        self.definite = definite


class ReplicaCorrupt(ReplicaError):
    """A replica answered with something that is not a valid record."""

    code = "replica_corrupt"

    def __init__(self, message: str) -> None:
        super().__init__(message, definite=False)


def status_of(code: str) -> int:
    """The HTTP status of an error ``code`` (as found in a JSON error body); 503 if unknown."""
    pending: list[type[CachegridError]] = [CachegridError]
    while pending:
        cls = pending.pop()
        if cls.code == code:
            return cls.status
        pending.extend(cls.__subclasses__())
    return Unavailable.status


def retry_after(status: int) -> bool:
    """True if an error answer of ``status`` carries ``Retry-After: 1``: 429 and 503 say
    "not now", and a retry a second later may be served (every path that answers an error
    asks this, so they agree)."""
    return status in (429, 503)
