"""Concurrent clients that exercise a cluster over HTTP and record what they observe.

Owns: the workload (GET, PUT, conditional PUT with If-Match and If-None-Match, DELETE, over
a few keys with one hot key, each written value unique; plus readers of read-mostly keys,
which the writers write now and then: the keys read leases copy to every node), and the
honest classification of every answer into a history outcome (see history.py).

Invariants:
- Every op is recorded with its invocation and completion time on the monotonic clock.
- A write is ``unknown`` whenever it may have been applied without the client knowing:
  a 504, a timeout, a connection lost after sending. It is ``failed`` only when it
  certainly was not applied: 429, 503, or a connection refused before sending.
- A read that got no answer is ``unknown`` (the checker ignores it): it changed nothing.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from dataclasses import dataclass, field
from urllib.parse import quote

import aiohttp
import orjson

from cachegrid import httpclient
from tests.proof import connect
from tests.proof.history import (
    ABSENT,
    CAS,
    CREATE,
    DELETE,
    FAILED,
    MISMATCH,
    OK,
    READ,
    UNKNOWN,
    WRITE,
    Op,
)

# Share of each kind of op in the workload.
MIX = ((READ, 0.55), (WRITE, 0.15), (CAS, 0.15), (CREATE, 0.05), (DELETE, 0.10))


@dataclass
class Recorder:
    urls: list[str]
    keys: list[str]
    clients: int = 8
    hot_share: float = 0.4  # the first key gets this share of all ops
    timeout: float = 3.0
    seed: int = 0
    read_keys: list[str] = field(default_factory=list)  # read by ``readers``, rarely written
    readers: int = 0
    read_key_writes: float = 0.03  # share of the writers' writes that go to read_keys
    history: list[Op] = field(default_factory=list)
    _ids: int = 0

    async def run(self, duration: float) -> list[Op]:
        """Run the clients for ``duration`` seconds; the history so far."""
        stop_at = time.monotonic() + duration
        timeout = aiohttp.ClientTimeout(total=self.timeout)
        async with connect.session(timeout=timeout) as http:
            await asyncio.gather(
                *(self._client(http, f"c{n}", stop_at) for n in range(self.clients)),
                *(self._reader(http, f"r{n}", stop_at) for n in range(self.readers)),
            )  # fmt: skip
        return self.history

    async def read_all(self, deadline: float) -> list[tuple[str, str]]:
        """Read every key through every node until each read gets a definite answer (used
        after the faults healed: all these reads must see the latest writes). The
        (key, url) pairs that never answered by ``deadline``."""
        unanswered = []
        timeout = aiohttp.ClientTimeout(total=self.timeout)
        async with connect.session(timeout=timeout) as http:
            for key in self.keys:
                for url in self.urls:
                    while True:
                        op = await self._do(http, "final", url, key, READ, {}, None)
                        if op.outcome in (OK, ABSENT):
                            break
                        if time.monotonic() > deadline:
                            unanswered.append((key, url))
                            break
                        await asyncio.sleep(0.2)
        return unanswered

    async def _client(self, http: aiohttp.ClientSession, name: str, stop_at: float) -> None:
        rng = random.Random(f"{self.seed}-{name}")
        seen: dict[str, str] = {}  # key -> the last version this client observed
        written = 0
        while time.monotonic() < stop_at:
            key = self.keys[0] if rng.random() < self.hot_share else rng.choice(self.keys)
            kind = rng.choices([k for k, _ in MIX], [w for _, w in MIX])[0]
            if kind != READ and self.read_keys and rng.random() < self.read_key_writes:
                key = rng.choice(self.read_keys)
            url = rng.choice(self.urls)
            written += 1
            value = {"c": name, "n": written}
            headers: dict[str, str] = {}
            if kind == CAS:
                if key not in seen:
                    kind = READ
                else:
                    headers["If-Match"] = f'"{seen[key]}"'
            elif kind == CREATE:
                headers["If-None-Match"] = "*"
            op = await self._do(http, name, url, key, kind, headers, value)
            if op.outcome == OK and op.version:
                seen[key] = op.version

    async def _reader(self, http: aiohttp.ClientSession, name: str, stop_at: float) -> None:
        """Reads only, of the read-mostly keys, each through any node; but first a write,
        so the keys exist (the leases copy values, not absent keys)."""
        rng = random.Random(f"{self.seed}-{name}")
        key = self.read_keys[int(name[1:]) % len(self.read_keys)]
        await self._do(http, name, rng.choice(self.urls), key, WRITE, {}, {"c": name, "n": 0})
        while time.monotonic() < stop_at:
            key, url = rng.choice(self.read_keys), rng.choice(self.urls)
            await self._do(http, name, url, key, READ, {}, None)

    async def _do(
        self, http: aiohttp.ClientSession, client: str, url: str, key: str, kind: str,
        headers: dict[str, str], value: object,
    ) -> Op:  # fmt: skip
        method = {READ: "GET", DELETE: "DELETE"}.get(kind, "PUT")
        data = orjson.dumps({"value": value}) if method == "PUT" else None
        if data is not None:
            headers = {**headers, "Content-Type": "application/json"}
        self._ids += 1
        op_id = self._ids
        invoked = time.monotonic()
        note = ""
        try:
            async with http.request(method, f"{url}/v1/kv/{quote(key, safe='')}", data=data,
                                    headers=headers) as response:  # fmt: skip
                status, body = response.status, await response.read()
                cache = response.headers.get("X-Cache", "")
        except (aiohttp.ClientError, TimeoutError) as error:
            if httpclient.may_have_been_sent(error):
                status, body, note = 0, b"", type(error).__name__  # sent, and then lost
            else:
                status, body, note = -1, b"", "connection refused"
            cache = ""
        completed = time.monotonic()
        outcome, version, read_value = _classify(kind, status, body)
        if status not in (200, 404, 412) and not note:
            note = f"HTTP {status}: {body[:120].decode(errors='replace')}"
        if outcome == UNKNOWN:
            completed = math.inf
        expected = headers.get("If-Match", "").strip('"') or None
        op = Op(op_id, client, key, kind, invoked, completed, outcome,
                read_value if kind == READ else (value if kind != DELETE else None),
                version, expected, note, url, cache if kind == READ else "")  # fmt: skip
        self.history.append(op)
        return op


def _classify(kind: str, status: int, body: bytes) -> tuple[str, str | None, object]:
    """(outcome, version, value read) of one answer; status -1: refused, 0: lost."""
    if status == 200:
        document = orjson.loads(body)
        return OK, document.get("version"), document.get("value")
    if status == 404:
        return ABSENT, None, None
    if status == 412:
        return MISMATCH, None, None
    if status in (-1, 429, 503) or 400 <= status < 500:
        return FAILED, None, None
    return UNKNOWN, None, None  # 504, 500, lost connection, timeout
