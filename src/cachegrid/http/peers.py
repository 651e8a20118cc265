"""Requests to other nodes (the serving layer's ``Peers``) over pooled keep-alive connections.

Owns: the aiohttp client session to the other nodes, the hop limit, and the translation of
transport failures into cachegrid errors. Knows nothing of caches or ownership.

Invariants:
- A request is forwarded at most ``MAX_HOPS`` times; the hop count travels in
  ``X-Cachegrid-Hops``, so a ring disagreement can never loop.
- In secure mode every request to a peer is HTTPS, checked against the CA, and carries
  the peer token.
- A forwarded write that fails after it may have been sent is ``Indeterminate`` (504); one
  that could not connect is ``Unavailable`` (503). A read (GET, HEAD, or a POST the caller
  says reads, as batchGet does) is ``Unavailable`` either way.
"""

from __future__ import annotations

import ssl

import aiohttp
from yarl import URL

from cachegrid import httpclient, requestids
from cachegrid.errors import Indeterminate, Unavailable
from cachegrid.headers import HOPS_HEADER
from cachegrid.serving.ports import PeerAnswer

MAX_HOPS = 2

# Response headers passed back from the owner to the caller.
PASSED_BACK = (
    "Content-Type",
    "ETag",
    "X-Cache",
    "X-Cachegrid-Node",
    "X-Cachegrid-Replica",
    "Retry-After",
)


class Forwarder:
    def __init__(self, *, timeout: float, max_connections: int = 256,
                 tls: ssl.SSLContext | None = None, peer_token: str = "") -> None:  # fmt: skip
        self.timeout = timeout
        self.max_connections = max_connections
        self.tls = tls  # HTTPS to the other nodes, checked against the CA (http/tls.py)
        self.scheme = "https" if tls is not None else "http"
        # Every request to a peer carries the peer token (auth.py) in place of the
        # client's: the client's own was checked here, before forwarding.
        self._authorization = f"Bearer {peer_token}" if peer_token else ""
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        connector = aiohttp.TCPConnector(
            limit=self.max_connections,
            keepalive_timeout=30,
            enable_cleanup_closed=True,
            ssl=self.tls if self.tls is not None else True,
        )
        self._session = httpclient.session(
            connector=connector,
            timeout=aiohttp.ClientTimeout(total=self.timeout),
            auto_decompress=False,
            skip_auto_headers=("User-Agent",),
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def forward(
        self,
        method: str,
        addr: str,
        path: str,
        *,
        hops: int,
        body: bytes = b"",
        headers: dict[str, str] | None = None,
        read: bool = False,
    ) -> PeerAnswer:
        """Send the request to the node at ``addr``; its answer, whatever the status."""
        if hops >= MAX_HOPS:
            raise Unavailable(f"not forwarded: already {hops} hops (the ring is changing)")
        assert self._session is not None, "Forwarder.start() was not called"
        sent_headers = dict(headers or {})
        sent_headers[HOPS_HEADER] = str(hops + 1)
        # The owner logs and answers under the id of the request it serves.
        sent_headers.setdefault(requestids.HEADER, requestids.current())
        if self._authorization:
            sent_headers.setdefault("Authorization", self._authorization)
        writing = not read and method not in ("GET", "HEAD")
        try:
            async with self._session.request(
                # encoded: the path goes as given (yarl would resolve dot segments).
                method,
                URL(f"{self.scheme}://{addr}{path}", encoded=True),
                data=body or None,
                headers=sent_headers,
            ) as response:
                payload = await response.read()
                passed = {h: response.headers[h] for h in PASSED_BACK if h in response.headers}
                return PeerAnswer(response.status, passed, payload)
        except (aiohttp.ClientError, TimeoutError) as error:
            if not httpclient.may_have_been_sent(error):
                raise Unavailable(f"owner {addr} unreachable: {error}") from error
            if writing:
                raise Indeterminate(
                    f"forwarded write to {addr} failed after it may have been applied: "
                    f"{type(error).__name__}"
                ) from error
            raise Unavailable(f"owner {addr} failed: {type(error).__name__}") from error
