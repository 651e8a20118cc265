"""``cachegrid.Client``: the async Python client. It keeps the ring and talks to owners.

Owns: routing each request to its key's owner with the same ring code as the nodes,
refreshing the ring when a node signals that it moved (``X-Cachegrid-Epoch``), and the
retry rule. Imports no server module.

Invariants:
- Only what is safe is retried: reads on 503 or a transport failure; writes only on a 503
  or a refused connection — both mean the write was not applied. A write that timed out
  or got 504 is raised as ``Indeterminate``: it may or may not have taken effect, and
  retrying a non-conditional write could apply it twice.
- Errors are the server's, as cachegrid exceptions (``VersionMismatch``, ``TooLarge``, ...);
  a missing key is ``None`` from ``get``.
"""

from __future__ import annotations

import asyncio
import random
import ssl
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import aiohttp
import orjson
from tenacity import (
    AsyncRetrying,
    retry_if_exception_type,
    stop_after_attempt,
    wait_random_exponential,
)

from cachegrid import errors, httpclient
from cachegrid.ring import Ring

JSON = "application/json"
_BY_STATUS: dict[int, type[errors.CachegridError]] = {
    400: errors.BadRequest, 401: errors.Unauthorized, 403: errors.Forbidden,
    404: errors.NotFound, 405: errors.MethodNotAllowed, 412: errors.VersionMismatch,
    413: errors.TooLarge, 415: errors.UnsupportedMediaType, 429: errors.Overloaded,
    503: errors.Unavailable, 504: errors.Indeterminate,
}  # fmt: skip


@dataclass(frozen=True, slots=True)
class Item:
    key: str
    value: Any
    version: str  # opaque; pass it back as ``if_match``


class _Retry(Exception):
    """A failure that is safe to retry (carries the error to raise if retries run out)."""

    def __init__(self, error: errors.CachegridError) -> None:
        super().__init__(error.message)
        self.error = error


class Client:
    def __init__(self, urls: list[str], *, timeout: float = 5.0, attempts: int = 4,
                 token: str | None = None, ca: str | None = None, cert: str | None = None,
                 key: str | None = None) -> None:  # fmt: skip
        """``token``: a bearer token (secure mode: scope read, or write to write); ``ca``:
        the CA certificate to check https nodes with (default: the system's CAs); ``cert``
        and ``key``: a client certificate, for nodes that require one (mutual TLS)."""
        if not urls:
            raise ValueError("a client needs at least one node URL")
        self.urls = [url.rstrip("/") for url in urls]
        # Owners are reached as the nodes given are: https if they are (never a mix, which
        # would send the token in the clear to some).
        schemes = {url.partition("://")[0] for url in self.urls}
        if len(schemes) != 1 or not schemes <= {"http", "https"}:
            raise ValueError(f"node URLs must all be http:// or all https://: {urls}")
        self.scheme = schemes.pop()
        self._headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._ca, self._cert, self._key = ca, cert, key
        self.timeout = timeout
        self.attempts = attempts
        self.ring: Ring | None = None
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    # -- the API --------------------------------------------------------------------------

    async def get(self, key: str) -> Item | None:
        try:
            body = await self._request("GET", key, writing=False)
        except errors.NotFound:
            return None
        return Item(body["key"], body["value"], body["version"])

    async def put(
        self, key: str, value: Any, *, if_match: str | None = None, if_absent: bool = False
    ) -> str:
        """Write ``value``; its new version. VersionMismatch if a precondition fails."""
        headers = _conditions(if_match, if_absent)
        headers["Content-Type"] = JSON
        body = await self._request("PUT", key, writing=True, headers=headers,
                                   data=orjson.dumps({"value": value}))  # fmt: skip
        return str(body["version"])

    async def delete(self, key: str, *, if_match: str | None = None) -> str:
        """Delete ``key``; the tombstone's version. NotFound if it does not exist."""
        body = await self._request("DELETE", key, writing=True,
                                   headers=_conditions(if_match, False))  # fmt: skip
        return str(body["version"])

    async def batch_get(self, keys: list[str]) -> dict[str, Item | None]:
        """Every key's item (None if missing), asking each owner once for its keys."""
        ring = await self._ring()
        groups: dict[str, list[str]] = {}
        for key in dict.fromkeys(keys):
            groups.setdefault(ring.owner_member(key).addr, []).append(key)
        results: dict[str, Item | None] = {}
        for items in await asyncio.gather(
            *(self._batch(f"{self.scheme}://{a}", g) for a, g in groups.items())
        ):
            results.update(items)
        return results

    async def refresh_ring(self) -> Ring:
        """Fetch the ring from any node that answers."""
        failures = []
        for url in random.sample(self.urls, len(self.urls)):
            try:
                async with self._http().get(f"{url}/v1/ring") as response:
                    if response.status == 200:
                        self.ring = Ring.from_description(orjson.loads(await response.read()))
                        return self.ring
                    failures.append(f"{url}: HTTP {response.status}")
            except (aiohttp.ClientError, TimeoutError) as error:
                failures.append(f"{url}: {type(error).__name__}")
        raise errors.Unavailable("no node gave its ring: " + "; ".join(failures))

    # -- plumbing ---------------------------------------------------------------------------

    async def _request(
        self,
        method: str,
        key: str,
        *,
        writing: bool,
        headers: dict[str, str] | None = None,
        data: bytes | None = None,
    ) -> dict[str, Any]:
        retrying = AsyncRetrying(
            stop=stop_after_attempt(self.attempts),
            wait=wait_random_exponential(multiplier=0.05, max=1.0),
            retry=retry_if_exception_type(_Retry),
            reraise=True,
        )
        try:
            async for attempt in retrying:
                with attempt:
                    return await self._once(method, key, writing, headers or {}, data)
        except _Retry as exhausted:
            raise exhausted.error from None
        raise AssertionError("unreachable")

    async def _once(
        self, method: str, key: str, writing: bool, headers: dict[str, str], data: bytes | None
    ) -> dict[str, Any]:
        ring = await self._ring()
        url = f"{self.scheme}://{ring.owner_member(key).addr}/v1/kv/{quote(key, safe='')}"
        try:
            async with self._http().request(method, url, headers=headers, data=data) as response:
                body = await response.read()
                if epoch := response.headers.get("X-Cachegrid-Epoch"):
                    self._stale(int(epoch))
                status = response.status
        except (aiohttp.ClientError, TimeoutError) as error:
            if not httpclient.may_have_been_sent(error):
                self.ring = None  # the owner may be gone: ask again
                raise _Retry(errors.Unavailable(f"{url}: cannot connect")) from error
            if writing:
                raise errors.Indeterminate(
                    f"{method} {key}: no answer ({type(error).__name__}); "
                    "the write may or may not have happened"
                ) from error
            raise _Retry(errors.Unavailable(f"{url}: {type(error).__name__}")) from error
        if status == 200:
            document: dict[str, Any] = orjson.loads(body)
            return document
        failure = _error(status, body)
        if status == 503:
            raise _Retry(failure)
        raise failure

    async def _batch(self, base: str, keys: list[str]) -> dict[str, Item | None]:
        async with self._http().post(f"{base}/v1/kv:batchGet", data=orjson.dumps({"keys": keys}),
                                     headers={"Content-Type": JSON}) as response:  # fmt: skip
            body = await response.read()
            if response.status != 200:
                raise _error(response.status, body)
        results: dict[str, Item | None] = {}
        for item in orjson.loads(body)["items"]:
            code = item.get("error", {}).get("code")
            if code == "not_found":
                results[item["key"]] = None
            elif code is not None:
                raise errors.Unavailable(f"{item['key']}: {item['error']['message']}")
            else:
                results[item["key"]] = Item(item["key"], item["value"], item["version"])
        return results

    async def _ring(self) -> Ring:
        return self.ring if self.ring is not None else await self.refresh_ring()

    def _stale(self, epoch: int) -> None:
        """A node forwarded our request: our ring is older than its; fetch anew next time."""
        if self.ring is None or epoch != self.ring.epoch:
            self.ring = None

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None:
            tls: ssl.SSLContext | bool = True
            if self._ca or self._cert:
                tls = ssl.create_default_context(cafile=self._ca)
                if self._cert:
                    tls.load_cert_chain(self._cert, self._key)
            self._session = httpclient.session(
                timeout=aiohttp.ClientTimeout(total=self.timeout), headers=self._headers,
                connector=aiohttp.TCPConnector(ssl=tls),
            )  # fmt: skip
        return self._session


def _conditions(if_match: str | None, if_absent: bool) -> dict[str, str]:
    if if_match is not None and if_absent:
        raise ValueError("use if_match or if_absent, not both")
    if if_match is not None:
        return {"If-Match": f'"{if_match}"'}
    return {"If-None-Match": "*"} if if_absent else {}


def _error(status: int, body: bytes) -> errors.CachegridError:
    try:
        message = orjson.loads(body)["error"]["message"]
    except (orjson.JSONDecodeError, KeyError, TypeError):
        message = body[:200].decode(errors="replace")
    return _BY_STATUS.get(status, errors.CachegridError)(f"HTTP {status}: {message}")
