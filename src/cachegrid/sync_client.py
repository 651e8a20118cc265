"""``cachegrid.SyncClient``: ``cachegrid.Client`` for code that is not async.

Owns: one background thread running an event loop of its own, on which the async client
runs; each call is submitted to it and waited for. The routing, the ring refresh, the retry
rule and the typed errors are the async client's, unchanged (client.py).

Invariants:
- Safe from any number of threads at once: calls run concurrently on the client's loop.
- Usable from inside another event loop's thread too (it never touches the caller's loop),
  though async code should use ``Client``.
- ``close`` (or leaving the ``with`` block) closes the connections and ends the thread;
  calls after it raise ``RuntimeError``.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

from cachegrid.client import Client, Item
from cachegrid.ring import Ring

T = TypeVar("T")


class SyncClient:
    def __init__(self, urls: list[str], *, timeout: float = 5.0, attempts: int = 4,
                 token: str | None = None, ca: str | None = None, cert: str | None = None,
                 key: str | None = None) -> None:  # fmt: skip
        self._client = Client(urls, timeout=timeout, attempts=attempts, token=token, ca=ca,
                              cert=cert, key=key)  # fmt: skip
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="cachegrid-client",
                                        daemon=True)  # fmt: skip
        self._thread.start()

    def __enter__(self) -> SyncClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    @property
    def ring(self) -> Ring | None:
        return self._client.ring

    def get(self, key: str) -> Item | None:
        """The key's item, or None if it does not exist."""
        return self._run(self._client.get(key))

    def put(self, key: str, value: Any, *, if_match: str | None = None,
            if_absent: bool = False) -> str:  # fmt: skip
        """Write ``value``; its new version. VersionMismatch if a precondition fails."""
        return self._run(self._client.put(key, value, if_match=if_match, if_absent=if_absent))

    def delete(self, key: str, *, if_match: str | None = None) -> str:
        """Delete ``key``; the tombstone's version. NotFound if it does not exist."""
        return self._run(self._client.delete(key, if_match=if_match))

    def batch_get(self, keys: list[str]) -> dict[str, Item | None]:
        """Every key's item (None if missing), asking each owner once for its keys."""
        return self._run(self._client.batch_get(keys))

    def refresh_ring(self) -> Ring:
        return self._run(self._client.refresh_ring())

    def close(self) -> None:
        if self._loop.is_closed():
            return
        self._run(self._client.close())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()

    def _run(self, call: Coroutine[Any, Any, T]) -> T:
        if self._loop.is_closed():
            call.close()
            raise RuntimeError("this SyncClient is closed")
        return asyncio.run_coroutine_threadsafe(call, self._loop).result()
