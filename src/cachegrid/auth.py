"""Bearer tokens with a scope: who may read, write, administer, or speak as a peer node.

Owns: ``Tokens``, the table of the tokens a node accepts and what each may do, and the
check of an ``Authorization`` header against it.

Invariants:
- Scopes nest for the data API: ``write`` may do what ``read`` may; ``peer`` (the token
  nodes send each other) may do everything, ``admin`` included; ``admin`` may use the admin
  API only.
- A presented token is compared by its SHA-256 digest: the lookup takes the same time
  whatever the token's bytes, and the table holds digests, not tokens. The only tokens
  kept are the node's own credentials (``peer_token``, ``admin_token``), to send; none
  is ever logged or shown (``__repr__`` names none).
- No token or an unknown one: ``Unauthorized`` (401); a known token of too small a scope:
  ``Forbidden`` (403). A malformed header is a 401 too, never a crash: any bytes are
  hashed as they are.
- Pure: no I/O (``load`` reads the tokens file once, at start).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from enum import IntEnum
from pathlib import Path

from cachegrid.errors import Forbidden, Unauthorized


class Scope(IntEnum):
    READ = 1
    WRITE = 2
    ADMIN = 3
    PEER = 4


# What a scope may do, beyond itself.
_GRANTS = {
    Scope.READ: {Scope.READ},
    Scope.WRITE: {Scope.READ, Scope.WRITE},
    Scope.ADMIN: {Scope.ADMIN},
    Scope.PEER: set(Scope),
}


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).digest()


class Tokens:
    def __init__(self, by_scope: dict[Scope, Iterable[str]]) -> None:
        # This node's own credentials, to send: the peer token, and an admin token for
        # other nodes' admin APIs (the peer token does too). Never logged (no __repr__ of
        # them).
        self.peer_token = next((t for t in by_scope.get(Scope.PEER, ()) if t), "")
        self.admin_token = next((t for t in by_scope.get(Scope.ADMIN, ()) if t), "")
        self._scopes: dict[bytes, Scope] = {}
        for scope, tokens in sorted(by_scope.items()):  # a token in two scopes: the larger
            for token in tokens:
                if token:
                    self._scopes[_digest(token)] = scope
        # No read or write token: the data API asks for none (as without secure mode).
        self.data_open = not any(by_scope.get(s) for s in (Scope.READ, Scope.WRITE))
        # A peer token: node-to-node routes and fields ask for it.
        self.peer_required = any(by_scope.get(Scope.PEER, ()))

    def __repr__(self) -> str:  # never the tokens
        return (
            f"<Tokens {len(self._scopes)} known, data API {'open' if self.data_open else 'closed'}>"
        )

    def scope_of(self, authorization: str | None) -> Scope:
        """The scope of the ``Authorization`` header's bearer token (Unauthorized if none)."""
        scheme, _, token = (authorization or "").partition(" ")
        scope = self._scopes.get(_digest(token.strip())) if scheme.lower() == "bearer" else None
        if scope is None:
            raise Unauthorized("a valid 'Authorization: Bearer <token>' is required")
        return scope

    def check(self, authorization: str | None, needed: Scope) -> Scope:
        """The token's scope if it allows ``needed``; Unauthorized or Forbidden if not."""
        scope = self.scope_of(authorization)
        if needed not in _GRANTS[scope]:
            raise Forbidden(f"a token of scope '{scope.name.lower()}' may not do this; "
                            f"'{needed.name.lower()}' is needed")  # fmt: skip
        return scope


def load(read: Iterable[str], write: Iterable[str], admin: Iterable[str], peer: str,
         tokens_file: str = "") -> Tokens:  # fmt: skip
    """The tokens of the configuration, with those of ``tokens_file`` (JSON: {"read":
    [...], "write": [...], "admin": [...], "peer": "..."}) added."""
    by_scope: dict[Scope, Iterable[str]] = {
        Scope.READ: list(read), Scope.WRITE: list(write), Scope.ADMIN: list(admin),
        Scope.PEER: [peer],
    }  # fmt: skip
    if tokens_file:
        document = json.loads(Path(tokens_file).read_text())
        for scope in Scope:
            extra = document.get(scope.name.lower(), [])
            by_scope[scope] = [*by_scope[scope], *([extra] if isinstance(extra, str) else extra)]
    return Tokens(by_scope)
