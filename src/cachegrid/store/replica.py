"""One Redis server holding one copy of every record.

Owns: the connection pool to one replica, the atomic set-if-newer Lua script, the
translation of every redis-py error into ``ReplicaError``, the replica's health
(outcomes, latency, last success, circuit breaker), and what the replica says of its own
trustworthiness (its run_id, fsync policy and marker: see trust.py).

Invariants:
- A replica only ever moves a key forward: set-if-newer writes a record only when its
  version is greater than the stored one, atomically in Lua. A record that cannot be
  decoded counts as absent for a write, so a newer write repairs it.
- Every call is bounded by ``timeout``; no call outlives it, and at most ``max_in_flight``
  calls hold a connection at once (a stuck replica cannot hoard sockets).
- No redis-py exception escapes this module; the quorum above sees ``ReplicaError`` only.
  Its ``definite`` flag is true only when the command certainly did not run.
- Health is observed here but acted on by the quorum: this module never refuses a call.
- Every connection learns the run_id of the Redis process behind it before it carries a
  command (``_on_connect``), and every read carries the replica's marker, judged against
  that run_id. A process that restarted can answer only on a new connection, so no read
  answer of a restarted replica is ever judged by the marker of the process before it.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import TypeVar, cast

import redis.asyncio as aioredis
from redis import exceptions as rexc
from redis.asyncio.connection import Connection
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from cachegrid.errors import ReplicaCorrupt, ReplicaError
from cachegrid.store.record import (
    KEY_PREFIX,
    Record,
    decode,
    encode_args,
    redis_key,
    user_key,
)
from cachegrid.store.trust import MARKER, REPAIR_LOCK, Trust, marker_for, verdict
from cachegrid.version import Version

T = TypeVar("T")
log = logging.getLogger(__name__)

# For each key, with four ARGV (epoch, seq, tombstone flag, value) per key: write the record
# only if it is newer, and return the version stored afterwards, ARGV's when written, the
# existing newer (or equal) one when not. The caller compares it with its own to learn what
# happened. A batch is one script call, so one round trip, whatever its size.
SET_IF_NEWER = """
local out = {}
for i, key in ipairs(KEYS) do
  local a = (i - 1) * 4
  local cur = redis.call('HMGET', key, 'e', 's')
  local ce, cs = tonumber(cur[1]), tonumber(cur[2])
  local ne, ns = tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2])
  if ce and cs and (ce > ne or (ce == ne and cs >= ns)) then
    out[i] = {cur[1], cur[2]}
  else
    redis.call('HSET', key, 'e', ARGV[a + 1], 's', ARGV[a + 2], 't', ARGV[a + 3],
               'v', ARGV[a + 4])
    out[i] = {ARGV[a + 1], ARGV[a + 2]}
  end
end
return out
"""

# KEYS[1] is the trust marker, then the user keys: the marker's value (false if absent),
# then the fields of each key (absent ones as nil), in one script call for a batch.
READ_MANY = """
local out = {redis.call('GET', KEYS[1])}
for i = 2, #KEYS do
  out[i] = redis.call('HMGET', KEYS[i], 'e', 's', 't', 'v')
end
return out
"""

# Write the marker ARGV[2] only if this is still the process ARGV[1] (a restart between
# the repair and this call would have undone the repair): 1 if written.
CERTIFY = """
local info = redis.call('INFO', 'server')
if string.match(info, 'run_id:(%x+)') ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[2])
return 1
"""

# Release the repair lock only if we still hold it.
UNLOCK = """
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
return 0
"""


@dataclass(frozen=True, slots=True)
class Reply:
    """A read answer and whether it may count toward a read quorum (trust.py)."""

    trusted: bool
    records: list[Record | ReplicaCorrupt | None]


@dataclass
class ReplicaHealth:
    """What the quorum, status and metrics know about one replica. Mutated only here."""

    ok: int = 0
    errors: int = 0
    corrupt: int = 0
    consecutive_failures: int = 0
    last_ok: float | None = None  # monotonic time of the last success
    last_error: str = ""
    latency_ewma: float = 0.0  # seconds, successful calls only
    down_until: float = 0.0  # monotonic; the breaker is open before this

    def snapshot(self, now: float) -> dict[str, object]:
        return {
            "up": now >= self.down_until,
            "ok": self.ok,
            "errors": self.errors,
            "corrupt_records": self.corrupt,
            "consecutive_failures": self.consecutive_failures,
            "seconds_since_ok": None if self.last_ok is None else round(now - self.last_ok, 3),
            "latency_ms": round(self.latency_ewma * 1000, 3),
            "last_error": self.last_error,
        }


@dataclass(frozen=True)
class Credentials:
    """How a node proves itself to the replicas in secure mode: TLS (checked against ``ca``,
    presenting ``cert`` and ``key``) and an ACL user. All None: plain, as the default user."""

    ca: str | None = None
    cert: str | None = None
    key: str | None = None
    username: str | None = None
    password: str | None = field(default=None, repr=False)


@dataclass
class Identity:
    """What the replica's process says of itself on each new connection."""

    run_id: bytes = b""
    fsync_always: bool = False
    trust: Trust = Trust.UNKNOWN


class Replica:
    """Async access to one replica. Safe for concurrent use from one event loop."""

    # After this many failures in a row the breaker opens for ``cooldown`` seconds.
    failure_threshold = 3

    def __init__(
        self,
        addr: str,
        *,
        timeout: float,
        max_in_flight: int = 64,
        cooldown: float = 0.5,
        clock: Callable[[], float] = time.monotonic,
        credentials: Credentials = Credentials(),
    ) -> None:
        host, _, port = addr.rpartition(":")
        self.addr = addr
        self.timeout = timeout
        self.cooldown = cooldown
        self.health = ReplicaHealth()
        self._clock = clock
        # Our own deadlines replace redis-py's retries: a retry would outlive them.
        self._redis = aioredis.Redis(
            host=host,
            port=int(port),
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            retry=Retry(NoBackoff(), 0),
            max_connections=max_in_flight,
            health_check_interval=0,
            redis_connect_func=self._on_connect,
            username=credentials.username,
            password=credentials.password,
            ssl=credentials.ca is not None,
            ssl_ca_certs=credentials.ca,
            ssl_certfile=credentials.cert,
            ssl_keyfile=credentials.key,
            ssl_cert_reqs="required",
        )
        self.identity = Identity()
        self._set_if_newer = self._redis.register_script(SET_IF_NEWER)
        self._read_many = self._redis.register_script(READ_MANY)
        self._certify = self._redis.register_script(CERTIFY)
        self._unlock = self._redis.register_script(UNLOCK)
        # Bounds the calls holding (or waiting for) a connection; waiting counts
        # against the call's timeout, so a stuck replica sheds load instead of queueing.
        self._slots = asyncio.Semaphore(max_in_flight)

    def __repr__(self) -> str:
        state = "up" if self.is_up() else "down"
        return (
            f"<Replica {self.addr} {state} {self.identity.trust.value} "
            f"failures={self.health.consecutive_failures}>"
        )

    @property
    def trust(self) -> Trust:
        """As of the last connection or read answer."""
        return self.identity.trust

    def is_up(self) -> bool:
        """False while the breaker is open after repeated failures."""
        return self._clock() >= self.health.down_until

    async def read(self, keys: Sequence[str]) -> list[Record | ReplicaCorrupt | None]:
        """The stored record of each key, in order; a ReplicaCorrupt in place of a bad one."""
        return (await self.read_reply(keys)).records

    async def read_reply(self, keys: Sequence[str]) -> Reply:
        """``read``, with whether this answer may count toward a read quorum. With no
        keys, a probe of the replica's trust."""

        async def run() -> list[bytes | list[bytes | None] | None]:
            reply = await self._read_many([MARKER, *(redis_key(key) for key in keys)])
            return cast(list[bytes | list[bytes | None] | None], reply)

        marker, *fields = await self._call(run)
        identity = self.identity
        identity.trust = verdict(_bytes(marker), identity.run_id, identity.fsync_always)
        records = [self._decode(list(f)) if isinstance(f, list) else None for f in fields]
        return Reply(identity.trust is Trust.TRUSTED, records)

    async def certify(self, run_id: bytes) -> bool:
        """Vouch for this replica, if still the process ``run_id``; True if done."""
        marker = marker_for(run_id, self.identity.fsync_always)

        async def run() -> int:
            return int(await self._certify([MARKER], [run_id, marker]))

        done = await self._call(run) == 1
        if done and self.identity.run_id == run_id:
            self.identity.trust = Trust.TRUSTED
        return done

    async def lock_repair(self, token: bytes, seconds: float) -> bool:
        """Take this replica's repair lock for ``seconds``; False if another holds it."""

        async def run() -> bool:
            return bool(await self._redis.set(REPAIR_LOCK, token, nx=True,
                                              px=int(seconds * 1000)))  # fmt: skip

        return await self._call(run)

    async def unlock_repair(self, token: bytes) -> None:
        async def run() -> None:
            await self._unlock([REPAIR_LOCK], [token])

        await self._call(run)

    async def _on_connect(self, connection: Connection) -> None:
        """Before a new connection carries any command: learn which process it reaches."""
        await connection.on_connect()
        await connection.send_command("INFO", "server")
        info = await connection.read_response()
        await connection.send_command("CONFIG", "GET", "appendfsync")
        try:
            fsync = await connection.read_response()
        except rexc.ResponseError:  # CONFIG not allowed to us: assume the weaker policy
            fsync = []
        await connection.send_command("GET", MARKER)
        marker = await connection.read_response()
        found = re.search(rb"run_id:([0-9a-f]+)", info if isinstance(info, bytes) else b"")
        identity = self.identity
        identity.run_id = found[1] if found else b""
        identity.fsync_always = _fsync_policy(fsync) == b"always"
        identity.trust = verdict(_bytes(marker), identity.run_id, identity.fsync_always)

    async def write(self, items: Sequence[tuple[str, Record]]) -> list[Version]:
        """Set-if-newer each (key, record); the version stored afterwards, per item."""

        keys = [redis_key(key) for key, _ in items]
        args = [arg for _, record in items for arg in encode_args(record)]

        async def run() -> list[list[bytes]]:
            try:
                replies: list[list[bytes]] = await self._set_if_newer(keys, args)
                return replies
            except rexc.ResponseError as error:
                if len(items) == 1:
                    raise
                # Redis does not undo a script's earlier writes when a later one fails.
                raise ReplicaError(
                    f"{self.addr}: failed mid-batch: {error}", definite=False
                ) from error

        replies = await self._call(run)
        try:
            return [Version(int(epoch), int(seq)) for epoch, seq in replies]
        except (TypeError, ValueError) as error:
            raise self._failed(ReplicaCorrupt(f"{self.addr}: bad script reply")) from error

    async def scan(self, cursor: int, count: int) -> tuple[int, list[str]]:
        """One SCAN step over this replica's cachegrid keys: (next cursor, user keys)."""

        async def run() -> tuple[int, list[bytes | str]]:
            return await self._redis.scan(cursor, match=KEY_PREFIX + b"*", count=count)

        next_cursor, stored = await self._call(run)
        # The client does not decode responses: every key is bytes.
        return int(next_cursor), [user_key(key) for key in stored if isinstance(key, bytes)]

    async def close(self) -> None:
        await self._redis.aclose()

    def _decode(self, fields: list[bytes | None]) -> Record | ReplicaCorrupt | None:
        try:
            return decode(fields)
        except ReplicaCorrupt as error:
            self.health.corrupt += 1
            return ReplicaCorrupt(f"{self.addr}: {error.message}")

    async def _call(self, run: Callable[[], Awaitable[T]]) -> T:
        started = self._clock()
        try:
            async with asyncio.timeout(self.timeout):
                async with self._slots:
                    result = await self._run_once_more_if_stale(run)
        except TimeoutError as error:
            raise self._failed(ReplicaError(f"{self.addr}: timed out", definite=False)) from error
        except ReplicaError as error:
            raise self._failed(error) from error
        except rexc.RedisError as error:
            raise self._failed(_translate(self.addr, error)) from error
        self._succeeded(self._clock() - started)
        return result

    async def _run_once_more_if_stale(self, run: Callable[[], Awaitable[T]]) -> T:
        """Run; if a pooled connection turns out dead, drop the idle ones and run again.

        After a replica restarts, every pooled connection is dead, and the first command on
        each would fail. Both calls are idempotent (reads; set-if-newer), so one more try is
        safe; but the first may have executed, so a second failure is never 'definite'.
        """
        try:
            return await run()
        except rexc.ConnectionError as error:
            if _before_sending(error):
                raise
            await self._redis.connection_pool.disconnect(inuse_connections=False)
        try:
            return await run()
        except rexc.RedisError as error:
            raise ReplicaError(f"{self.addr}: failed again: {error}", definite=False) from error

    def _succeeded(self, latency: float) -> None:
        health = self.health
        if health.consecutive_failures >= self.failure_threshold:
            log.info("store replica %s up again after %d failures", self.addr,
                     health.consecutive_failures,
                     extra={"event": "replica_up", "replica": self.addr})  # fmt: skip
        health.ok += 1
        health.consecutive_failures = 0
        health.down_until = 0.0
        health.last_ok = self._clock()
        health.latency_ewma = (
            latency if health.ok == 1 else 0.9 * health.latency_ewma + 0.1 * latency
        )

    def _failed(self, error: ReplicaError) -> ReplicaError:
        health = self.health
        health.errors += 1
        health.consecutive_failures += 1
        health.last_error = error.message
        if health.consecutive_failures >= self.failure_threshold:
            health.down_until = self._clock() + self.cooldown
        if health.consecutive_failures == self.failure_threshold:
            log.warning("store replica %s down after %d failures in a row: %s", self.addr,
                        health.consecutive_failures, error.message,
                        extra={"event": "replica_down", "replica": self.addr})  # fmt: skip
        return error


def _fsync_policy(reply: object) -> bytes | None:
    """The value of CONFIG GET appendfsync, answered as a map or as a flat list."""
    if isinstance(reply, dict):
        return _bytes(reply.get(b"appendfsync"))
    if isinstance(reply, list) and len(reply) == 2:
        return _bytes(reply[1])
    return None


def _bytes(reply: object) -> bytes | None:
    return reply if isinstance(reply, bytes) else None


def _before_sending(error: rexc.RedisError) -> bool:
    """True when redis-py failed before any byte of the command left: nothing executed."""
    return isinstance(error, rexc.MaxConnectionsError) or "connecting to" in str(error)


def _translate(addr: str, error: rexc.RedisError) -> ReplicaError:
    """The ReplicaError for one redis-py error, with whether the command surely did not run."""
    if isinstance(error, rexc.ResponseError):
        # The server refused the command (a script error, OOM, read-only): it did not apply.
        return ReplicaError(f"{addr}: refused: {error}", definite=True)
    if _before_sending(error):
        return ReplicaError(f"{addr}: unreachable: {error}", definite=True)
    if isinstance(error, rexc.InvalidResponse | rexc.DataError):
        return ReplicaCorrupt(f"{addr}: protocol error: {error}")
    return ReplicaError(f"{addr}: failed: {error}", definite=False)
