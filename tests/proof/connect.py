"""How the proof's clients connect to the nodes: plain HTTP, or, inside ``secured``, HTTPS
checked against a CA and a bearer token on every request (secure mode, issue 15). Every
HTTP session the proof opens comes from ``session``, so one switch moves them all."""

from __future__ import annotations

import contextlib
import ssl
from collections.abc import Iterator
from typing import Any

import aiohttp

from cachegrid import httpclient

_secure: tuple[str, str] | None = None  # (CA file, token) while secured


def session(**options: Any) -> aiohttp.ClientSession:
    """A client session as cachegrid.httpclient makes them, secured if ``secured`` runs."""
    if _secure is not None:
        ca, token = _secure
        options.setdefault("connector", aiohttp.TCPConnector(
            ssl=ssl.create_default_context(cafile=ca)))  # fmt: skip
        options["headers"] = {"Authorization": f"Bearer {token}", **options.get("headers", {})}
    return httpclient.session(**options)


@contextlib.contextmanager
def secured(ca: str, token: str) -> Iterator[None]:
    global _secure
    _secure = (ca, token)
    try:
        yield
    finally:
        _secure = None
