"""The one module that talks to etcd.

Owns: the aetcd clients (one per endpoint), fail-over between endpoints, per-call deadlines,
and the translation of aetcd/gRPC errors into cachegrid errors (``EtcdUnavailable``,
``EtcdCompacted``, ``EtcdError``). It knows keys, values, revisions and leases — nothing of
members, rings or caches.

Invariants:
- Reads are linearizable (never serializable): a safety decision may rest on them.
- Every call ends within ``timeout`` per endpoint tried; a call that fails for a reason of
  connectivity is tried on the next endpoint, each endpoint at most once per call.
- Only an error of connectivity moves to another endpoint; an answer from etcd (an invalid
  argument, a compacted revision) is final.
- No aetcd or grpc exception escapes this module.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import aetcd
import grpc
from aetcd import exceptions as aexc
from aetcd import rpc, watcher

from cachegrid.errors import CachegridError, Unavailable

T = TypeVar("T")


class EtcdUnavailable(Unavailable):
    """No etcd endpoint answered in time."""

    code = "etcd_unavailable"


class EtcdCompacted(CachegridError):
    """The requested revision was compacted away; re-snapshot from ``compacted_revision``."""

    code = "etcd_compacted"
    status = 503

    def __init__(self, message: str, compacted_revision: int) -> None:
        super().__init__(message)
        self.compacted_revision = compacted_revision


class EtcdError(CachegridError):
    """etcd refused a request (a bug, or a misconfiguration): retrying will not help."""

    code = "etcd_error"
    status = 503


# aetcd error -> ours. EtcdUnavailable means another endpoint may do better.
_ERRORS: dict[type[Exception], type[CachegridError]] = {
    aexc.ConnectionFailedError: EtcdUnavailable,
    aexc.ConnectionTimeoutError: EtcdUnavailable,
    aexc.InternalError: EtcdError,
    aexc.InvalidArgumentError: EtcdError,
    aexc.PreconditionFailedError: EtcdError,
    aexc.UnauthenticatedError: EtcdError,
}
# What a call may raise that _translate knows, timeouts included.
_TRANSLATED: tuple[type[Exception], ...] = (TimeoutError, *_ERRORS)


@dataclass(frozen=True, slots=True)
class KeyValue:
    key: bytes
    value: bytes
    create_revision: int
    mod_revision: int
    lease: int


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Keys read at one revision."""

    revision: int
    items: list[KeyValue]


@dataclass(frozen=True, slots=True)
class WatchEvent:
    """One change under a watched prefix; ``revision`` is the revision that made it."""

    kind: str  # "put" | "delete"
    key: bytes
    value: bytes
    revision: int
    lease: int


@dataclass(frozen=True, slots=True)
class Lease:
    id: int
    ttl: int  # seconds, as granted


class Etcd:
    """A fail-over client over several etcd endpoints (host:port). One event loop."""

    def __init__(self, endpoints: Sequence[str], *, timeout: float = 2.0,
                 tls: TlsFiles | None = None) -> None:  # fmt: skip
        if not endpoints:
            raise ValueError("etcd needs at least one endpoint")
        self.endpoints = list(endpoints)
        self.timeout = timeout
        self._clients = [_client(endpoint, timeout, tls) for endpoint in self.endpoints]
        self._current = 0  # index of the endpoint that answered last; tried first

    def __repr__(self) -> str:
        return f"<Etcd current={self.endpoints[self._current]} endpoints={len(self.endpoints)}>"

    @property
    def current_endpoint(self) -> str:
        return self.endpoints[self._current]

    async def get(self, key: bytes) -> tuple[int, KeyValue | None]:
        """(revision, the key's value or None), read linearizably."""
        snapshot = await self._range(key, key + b"\0")
        return snapshot.revision, (snapshot.items[0] if snapshot.items else None)

    async def get_prefix(self, prefix: bytes) -> Snapshot:
        """Every key under ``prefix``, at one revision, read linearizably."""
        return await self._range(prefix, _prefix_end(prefix))

    async def put(self, key: bytes, value: bytes, lease: int | None = None) -> int:
        """Write ``key``; the revision of the write."""
        reply = await self._call(lambda c: c.put(key, value, lease=lease))
        return int(reply.header.revision)

    async def put_if_absent(self, key: bytes, value: bytes, lease: int) -> KeyValue | None:
        """Create ``key`` only if it does not exist, in one transaction: None if written,
        else the key as it is."""
        kv = aetcd.transactions

        async def txn(client: aetcd.Client) -> tuple[bool, list[Any]]:
            return await client.transaction(  # type: ignore[no-any-return]  # untyped
                compare=[kv.Create(key) == 0],
                success=[kv.Put(key, value, lease=lease)],
                failure=[kv.Get(key)],
            )

        written, existing = await self._conditional(txn)
        return None if written else existing

    async def put_if_lease(self, key: bytes, value: bytes, lease: int) -> bool:
        """Rewrite ``key`` only if it is attached to ``lease`` (still ours); True if so."""
        kv = aetcd.transactions

        async def txn(client: aetcd.Client) -> tuple[bool, list[Any]]:
            return await client.transaction(  # type: ignore[no-any-return]  # untyped
                compare=[_LeaseCompare(key) == lease],
                success=[kv.Put(key, value, lease=lease)],
                failure=[kv.Get(key)],
            )

        written, _ = await self._conditional(txn)
        return written

    async def _conditional(
        self, txn: Callable[[aetcd.Client], Awaitable[tuple[bool, list[Any]]]]
    ) -> tuple[bool, KeyValue | None]:
        """(whether the transaction's success branch ran, the key its failure branch read)."""
        succeeded, responses = await self._call(txn)
        found = responses[0] if responses and not succeeded else []
        if not found:
            return bool(succeeded), None
        _value, meta = found[0]
        item = KeyValue(meta.key, meta.value, meta.create_revision, meta.mod_revision,
                        meta.lease)  # fmt: skip
        return False, item

    async def delete(self, key: bytes) -> int:
        reply = await self._call(lambda c: c.delete(key))
        return int(reply.header.revision) if reply is not None else 0

    async def grant(self, ttl: int) -> Lease:
        lease = await self._call(lambda c: c.lease(ttl))
        return Lease(int(lease.id), int(lease.ttl))

    async def keep_alive(self, lease_id: int, per_try: float | None = None) -> int:
        """Refresh a lease once; its TTL now, 0 if it no longer exists. ``per_try``, if
        given, bounds each endpoint's try instead of the client's timeout."""
        reply = await self._call(lambda c: c.refresh_lease(lease_id), per_try)
        return max(int(reply.TTL), 0) if reply is not None else 0

    async def revoke(self, lease_id: int) -> None:
        await self._call(lambda c: c.revoke_lease(lease_id))

    async def compact(self, revision: int) -> None:
        """Discard history before ``revision`` (watches from before it will fail)."""
        await self._call(lambda c: c.compact(revision))

    async def watch_prefix(self, prefix: bytes, start_revision: int) -> AsyncIterator[WatchEvent]:
        """Every change under ``prefix`` from ``start_revision`` on, in revision order.

        Ends by raising: ``EtcdCompacted`` if the start revision is gone, ``EtcdUnavailable``
        when the stream breaks (the caller resumes from its last revision + 1; the next
        attempt goes to another endpoint).
        """
        index = self._current
        client = self._clients[index]
        # Created in a task of its own, never cancelled midway: aetcd can deadlock a watch
        # cancelled while it is being created (a condition's lock that is never released),
        # and with it whoever waits for the cancelled task (a node's shutdown).
        creating = asyncio.ensure_future(client.watch_prefix(prefix, start_revision=start_revision))
        try:
            await asyncio.wait({creating}, timeout=self.timeout)
        finally:
            if not creating.done():
                creating.add_done_callback(_discard_watch)
        try:
            if not creating.done():
                raise TimeoutError
            watch = creating.result()
        except aexc.RevisionCompactedError as error:
            raise compacted(error) from error
        except (TimeoutError, aexc.ClientError) as error:
            self._current = (index + 1) % len(self._clients)
            raise EtcdUnavailable(f"{self.endpoints[index]}: watch failed: {error!r}") from error
        try:
            async for event in watch:
                kv = event.kv
                kind = "put" if event.kind == "PUT" else "delete"
                yield WatchEvent(kind, kv.key, kv.value, kv.mod_revision, kv.lease)
        except aexc.RevisionCompactedError as error:
            raise compacted(error) from error
        except Exception as error:
            # aetcd delivers any failure of the shared stream (a gRPC error, a closed
            # channel) to every watcher; for us each means: resume elsewhere.
            self._current = (index + 1) % len(self._clients)
            raise EtcdUnavailable(f"{self.endpoints[index]}: watch broke: {error!r}") from error
        finally:
            # Also in a task of its own, waited for at most a second, for the same reason.
            cancelling = asyncio.ensure_future(watch.cancel())
            cancelling.add_done_callback(_retrieve)
            await asyncio.wait({cancelling}, timeout=1.0)

    async def close(self) -> None:
        await asyncio.gather(*(client.close() for client in self._clients))

    async def _range(self, start: bytes, end: bytes) -> Snapshot:
        reply = await self._call(lambda c: c.get_range(start, end))
        items = [
            KeyValue(kv.key, kv.value, kv.create_revision, kv.mod_revision, kv.lease)
            for kv in reply
        ]
        return Snapshot(int(reply.header.revision), items)

    async def _call(
        self, op: Callable[[aetcd.Client], Awaitable[T]], per_try: float | None = None
    ) -> T:
        """Run ``op`` on the current endpoint, failing over to the others in turn."""
        failures: list[str] = []
        for step in range(len(self._clients)):
            index = (self._current + step) % len(self._clients)
            try:
                async with asyncio.timeout(per_try or self.timeout):
                    result = await op(self._clients[index])
            except _TRANSLATED as error:
                translated = _translate(error)
                if not isinstance(translated, EtcdUnavailable):
                    raise translated from error
                failures.append(f"{self.endpoints[index]}: {translated.message}")
                continue
            except aexc.RevisionCompactedError as error:
                raise compacted(error) from error
            except aexc.ClientError as error:
                if not _transient(error):
                    raise EtcdError(f"etcd: {error}") from error
                failures.append(f"{self.endpoints[index]}: {error}")
                continue
            self._current = index
            return result
        raise EtcdUnavailable("no etcd endpoint answered: " + "; ".join(failures))


class _LeaseCompare(aetcd.transactions.BaseCompare):  # type: ignore[misc]  # untyped
    """Compare a key's lease (etcd has it; aetcd has no class for it)."""

    def build_compare(self, compare: Any) -> None:
        compare.target = aetcd.rpc.Compare.LEASE
        compare.lease = int(self.value)


# gRPC codes under which etcd may well answer later, or another endpoint now: too many
# requests or no space (RESOURCE_EXHAUSTED: callers retry until the alarm is disarmed),
# a call cut short (CANCELLED), or an unclassified failure (UNKNOWN).
_TRANSIENT = {"RESOURCE_EXHAUSTED", "CANCELLED", "UNKNOWN"}


def _transient(error: aexc.ClientError) -> bool:
    cause = error.__cause__
    code = getattr(cause, "code", None)
    return callable(code) and getattr(code(), "name", "") in _TRANSIENT


def _discard_watch(creating: asyncio.Future[Any]) -> None:
    """A watch whose creation we stopped waiting for: cancel it if it came to exist."""
    if creating.cancelled() or creating.exception() is not None:
        return
    asyncio.ensure_future(creating.result().cancel()).add_done_callback(_retrieve)


def _retrieve(task: asyncio.Future[Any]) -> None:
    """Consume a background call's outcome (its failure needs no one's attention)."""
    if not task.cancelled():
        task.exception()


def compacted(error: aexc.RevisionCompactedError) -> EtcdCompacted:
    """Ours, for aetcd's RevisionCompactedError (which says from where to re-snapshot)."""
    return EtcdCompacted(str(error), int(error.compacted_revision))


def _translate(error: Exception) -> CachegridError:
    if isinstance(error, TimeoutError):
        return EtcdUnavailable("timed out")
    return _ERRORS[type(error)](str(error) or type(error).__name__)


@dataclass(frozen=True)
class TlsFiles:
    """TLS to etcd (secure mode): the CA its certificate is checked against, and this
    node's client certificate and key (PEM files)."""

    ca: str
    cert: str
    key: str


class _TlsClient(aetcd.Client):  # type: ignore[misc]
    """aetcd's client over a TLS channel. aetcd 1.x opens only plaintext channels: this
    is its ``connect`` with ``secure_channel`` in place of ``insecure_channel`` (and no
    username/password login, which cachegrid does not use)."""

    _is_connecting: bool  # aetcd's, set in its __init__
    _connected: asyncio.Event

    def __init__(self, tls: TlsFiles, **options: Any) -> None:
        super().__init__(**options)
        self._credentials = grpc.ssl_channel_credentials(
            Path(tls.ca).read_bytes(), Path(tls.key).read_bytes(), Path(tls.cert).read_bytes()
        )

    async def connect(self) -> None:
        if self._connected.is_set():
            return
        if self._is_connecting:  # another task is connecting: wait for it (aetcd's rule)
            await asyncio.wait_for(self._connected.wait(), self._connect_wait_timeout)
            return
        try:
            self._is_connecting = True
            target = f"{self._host}:{self._port}"
            self.channel = grpc.aio.secure_channel(target, self._credentials,
                                                   options=list(self._options.items()))  # fmt: skip
            self.kvstub = rpc.KVStub(self.channel)
            self.clusterstub = rpc.ClusterStub(self.channel)
            self.leasestub = rpc.LeaseStub(self.channel)
            self.maintenancestub = rpc.MaintenanceStub(self.channel)
            self._watcher = watcher.Watcher(rpc.WatchStub(self.channel), timeout=self._timeout,
                                            metadata=self.metadata)  # fmt: skip
            self._connected.set()
        finally:
            self._is_connecting = False


def _client(endpoint: str, timeout: float, tls: TlsFiles | None) -> aetcd.Client:
    host, _, port = endpoint.rpartition(":")
    options: dict[str, Any] = {
        # Reconnect quickly after an etcd restart rather than after gRPC's default backoff.
        "grpc.initial_reconnect_backoff_ms": 100,
        "grpc.max_reconnect_backoff_ms": 1000,
    }
    if tls is not None:
        return _TlsClient(tls, host=host, port=int(port), timeout=timeout, options=options)
    return aetcd.Client(host=host, port=int(port), timeout=timeout, options=options)


def _prefix_end(prefix: bytes) -> bytes:
    """The first key after every key that starts with ``prefix`` (etcd's range_end)."""
    stripped = prefix.rstrip(b"\xff")
    if not stripped:
        return b"\0"  # the whole keyspace
    return stripped[:-1] + bytes([stripped[-1] + 1])
