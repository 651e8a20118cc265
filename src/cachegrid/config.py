"""Configuration: one TOML file, overridden by ``CACHEGRID_*`` variables, then validated.

Owns: the settings' names, types, defaults and limits, and the rules for reading them.

Invariants:
- A ``Config`` is immutable and fully validated: code that receives one never re-checks.
- Precedence, lowest first: defaults < TOML file < environment < explicit overrides.
- Every problem is reported at once, each as ``section.field: what is wrong``.
- This module imports no networking library: it only describes settings.
"""

from __future__ import annotations

import dataclasses
import os
import socket
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ENV_PREFIX = "CACHEGRID_"
# Seconds allowed for one etcd round in the rules between settings.
ETCD_ROUND = 0.25


class ConfigError(ValueError):
    """The configuration is invalid; ``problems`` lists every reason."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("invalid configuration:\n  " + "\n  ".join(problems))
        self.problems = problems


@dataclass(frozen=True)
class EtcdConfig:
    # Client endpoints (host:port) of the etcd cluster; any one of them may be used.
    endpoints: tuple[str, ...] = ("127.0.0.1:2379",)
    # Every cachegrid key in etcd lives under this prefix.
    prefix: str = "/cachegrid"

    def problems(self) -> list[str]:
        found = [f"etcd.endpoints: {e!r} is not host:port" for e in self.endpoints if not _addr(e)]
        if not self.endpoints:
            found.append("etcd.endpoints: at least one endpoint is needed")
        if not self.prefix.startswith("/") or self.prefix.endswith("/"):
            found.append("etcd.prefix: must start with '/' and not end with '/'")
        return found


@dataclass(frozen=True)
class StoreConfig:
    # The Redis replicas (host:port). A majority must answer for any operation.
    replicas: tuple[str, ...] = ("127.0.0.1:6379", "127.0.0.1:6380", "127.0.0.1:6381")
    # Deadline of one store operation in seconds, write-back included.
    timeout: float = 0.5
    # At most this many commands in flight per replica; more wait (within the deadline).
    max_in_flight: int = 64
    # Seconds a replica is skipped after 3 failures in a row, before it is probed again.
    cooldown: float = 0.5
    # AOF fsync policy of the replicas that cachegrid starts: everysec | always.
    appendfsync: str = "everysec"
    max_value_bytes: int = 1 << 20
    max_key_bytes: int = 1024

    def problems(self) -> list[str]:
        found = [f"store.replicas: {r!r} is not host:port" for r in self.replicas if not _addr(r)]
        if not self.replicas:
            found.append("store.replicas: at least one replica is needed")
        if len(set(self.replicas)) != len(self.replicas):
            found.append("store.replicas: a replica is listed twice")
        found += _positive("store", self, "timeout", "max_in_flight", "cooldown")
        found += _positive("store", self, "max_value_bytes", "max_key_bytes")
        if self.appendfsync not in ("everysec", "always"):
            found.append("store.appendfsync: must be 'everysec' or 'always'")
        return found


@dataclass(frozen=True)
class NodeConfig:
    # Unique, stable name of this node; it places the node on the ring (see ``node_id``).
    id: str = ""
    # Where the HTTP API listens (host:port).
    listen: str = "127.0.0.1:8000"
    # The host:port other nodes and clients use to reach this node. Default: listen.
    advertise: str = ""
    # Share of the keyspace relative to other nodes (0 owns nothing: drained).
    weight: int = 1
    # The node's etcd lease, in seconds, and the safety margin of its local deadline.
    lease_ttl: int = 5
    lease_margin: float = 0.5
    # Seconds a request for a key whose range is being handed to this node waits, then 503.
    handoff_hold: float = 2.0
    # Deadline of a request forwarded to the key's owner, in seconds.
    forward_timeout: float = 2.0
    # Bounds of the in-memory cache.
    cache_max_entries: int = 1_000_000
    cache_max_bytes: int = 256 * 1024 * 1024
    # Keys in one POST /v1/kv:batchGet at most.
    max_batch_keys: int = 1000
    # Requests of the public API in progress at once at most; more get 429 at once.
    max_in_flight_requests: int = 4096
    # Bytes one batchGet answer may hold (more: 413), and bytes the node holds at most for
    # request bodies and answers in progress (more: 429); see docs/performance.md.
    max_batch_bytes: int = 16 * 1024 * 1024
    max_bytes_in_flight: int = 128 * 1024 * 1024
    # Seconds a client may take to read the next part of a big answer before it is cut off.
    write_timeout: float = 30.0
    # Seconds a connection may stay idle, or take to send a complete request head (from its
    # start or its last answer), before it is closed; and connections open at most (more
    # get 503 and are closed at once). Keep max_connections under the process's limit of
    # open files minus a few hundred (store, etcd and peer connections).
    idle_timeout: float = 30.0
    max_connections: int = 10_000
    # Requests forwarded to one owner and not yet answered, at most; more get 503 at once,
    # so a slow or hung owner cannot take every request slot (max_in_flight_requests).
    max_forwards_per_owner: int = 1024
    # Bearer token of the /admin API (empty: the admin API is disabled).
    admin_token: str = field(default="", repr=False)
    # One log line per request answered (logger cachegrid.access: method, path, status,
    # milliseconds, cache result, request id, client address).
    access_log: bool = False
    # Plain cache hits answered straight from the connection's bytes (the hit lane:
    # docs/performance.md), the same answers as the routes give, faster. Off: every request
    # takes the routes (for comparison). With access_log on, it is off.
    hit_lane: bool = True
    # The inconsistency detector re-reads one cache hit in this many from the store (0: off),
    # and at most this many per second.
    stale_check_every: int = 100
    stale_checks_per_second: float = 20.0
    # The asyncio event loop: "uvloop" (faster) or "asyncio" (the standard library's).
    event_loop: str = "uvloop"
    # Seconds to wait, at start, for another process holding this node's id (a previous
    # run whose lease has not expired) to let go of it; then exit with an error.
    id_wait: float = 15.0
    # Read leases (docs/read-leases.md): a key read more than this many times per second
    # through a node that does not own it gets a copy there, served with no forward (0: off).
    read_lease_threshold: float = 10.0
    # Seconds one lease lasts (renewed at 3/4 of it while the key stays hot), and the
    # allowance for clock-rate drift between nodes (at least 5% of the term).
    read_lease_ttl: float = 1.0
    read_lease_margin: float = 0.1
    # Writes per second of one key above which its owner stops granting leases on it (each
    # write of a leased key costs an etcd round first); 0: no limit.
    read_lease_max_write_rate: float = 10.0

    @property
    def node_id(self) -> str:
        """``id``, or one derived from where the node listens: ``node-<port>`` on loopback
        (one host), else ``<host name>-<port>``, so two hosts never share a default id."""
        if self.id:
            return self.id
        host, _, port = self.listen.rpartition(":")
        if host in ("127.0.0.1", "localhost", "::1", "[::1]"):
            return f"node-{port}"
        return f"{socket.gethostname()}-{port}"

    @property
    def advertised(self) -> str:
        return self.advertise or self.listen

    def problems(self) -> list[str]:
        found = [f"node.{n}: {v!r} is not host:port"
                 for n, v in (("listen", self.listen), ("advertise", self.advertise))
                 if v and not _addr(v)]  # fmt: skip
        found += _positive("node", self, "lease_ttl", "handoff_hold", "forward_timeout")
        found += _positive("node", self, "cache_max_entries", "cache_max_bytes", "max_batch_keys")
        found += _positive("node", self, "max_in_flight_requests", "max_batch_bytes",
                           "max_bytes_in_flight", "write_timeout",
                           "max_forwards_per_owner", "idle_timeout", "max_connections")  # fmt: skip
        if self.max_batch_bytes > self.max_bytes_in_flight:
            found.append("node.max_batch_bytes: must not exceed node.max_bytes_in_flight")
        if self.weight < 0:
            found.append("node.weight: must be >= 0")
        if self.stale_check_every < 0:
            found.append("node.stale_check_every: must be >= 0")
        found += _positive("node", self, "stale_checks_per_second", "id_wait")
        if self.event_loop not in ("uvloop", "asyncio"):
            found.append("node.event_loop: must be 'uvloop' or 'asyncio'")
        if not 0 <= self.lease_margin < self.lease_ttl / 3:
            found.append("node.lease_margin: must be >= 0 and under a third of node.lease_ttl")
        if any(c in self.id for c in "/ \t\n"):
            found.append("node.id: must not contain '/' or white space")
        return found + self._lease_problems()

    def _lease_problems(self) -> list[str]:
        found = _positive("node", self, "read_lease_ttl")
        if self.read_lease_threshold < 0 or self.read_lease_max_write_rate < 0:
            found.append("node.read_lease_threshold, read_lease_max_write_rate: must be >= 0")
        if not self.read_lease_ttl * 0.05 <= self.read_lease_margin < self.read_lease_ttl:
            found.append("node.read_lease_margin: must be at least 5% of node.read_lease_ttl "
                         "and under it")  # fmt: skip
        if (self.read_lease_threshold and self.read_lease_ttl + self.read_lease_margin
                > (self.lease_ttl - self.lease_margin) * 2 / 3):  # fmt: skip
            found.append(
                "node.read_lease_ttl: with read_lease_margin, must not exceed 2/3 of "
                "(node.lease_ttl - node.lease_margin): terms are cut to the lease"
            )
        return found


@dataclass(frozen=True)
class SecurityConfig:
    # HTTPS for the node's API and for what it forwards to other nodes (all empty: plain
    # HTTP): PEM files of this node's certificate (with its chain) and private key, and of
    # the CA its peers' certificates are checked against.
    cert: str = ""
    key: str = ""
    ca: str = ""
    # Require a client certificate signed by this CA on every connection (mutual TLS).
    client_ca: str = ""
    # Bearer tokens by scope, several each (to rotate: add the new one, move the clients,
    # remove the old one). read: GET, HEAD, batchGet, the ring; write: also PUT and DELETE;
    # admin: /admin (node.admin_token counts as one); peer: what nodes send each other.
    # With no read or write token the data API asks for none. Better kept out of the
    # configuration: tokens_file names a JSON file {"read": [...], "write": [...],
    # "admin": [...], "peer": "..."} whose tokens are added to these.
    read_tokens: tuple[str, ...] = field(default=(), repr=False)
    write_tokens: tuple[str, ...] = field(default=(), repr=False)
    admin_tokens: tuple[str, ...] = field(default=(), repr=False)
    peer_token: str = field(default="", repr=False)
    tokens_file: str = ""
    # The store replicas over TLS (checked against ca, presenting cert and key) and as an
    # ACL user with a password (store_password_file: a file holding it, kept out of here).
    store_tls: bool = False
    store_user: str = ""
    store_password: str = field(default="", repr=False)
    store_password_file: str = ""
    # etcd over TLS (checked against ca, presenting cert and key as its client certificate).
    etcd_tls: bool = False

    @property
    def tls(self) -> bool:
        return bool(self.cert)

    def problems(self) -> list[str]:
        found = []
        if bool(self.cert) != bool(self.key):
            found.append("security.cert, security.key: give both, or neither")
        if self.cert and not self.ca:
            found.append("security.ca: needed with security.cert (peers are checked with it)")
        if self.client_ca and not self.cert:
            found.append("security.client_ca: needs security.cert and key (mutual TLS is TLS)")
        if (self.store_tls or self.etcd_tls) and not (self.ca and self.cert):
            found.append("security.store_tls, etcd_tls: need security.ca, cert and key")
        for name in ("cert", "key", "ca", "client_ca", "tokens_file", "store_password_file"):
            path = getattr(self, name)
            if path and not Path(path).is_file():
                found.append(f"security.{name}: {path!r} is not a readable file")
        return found


@dataclass(frozen=True)
class Config:
    etcd: EtcdConfig = field(default_factory=EtcdConfig)
    store: StoreConfig = field(default_factory=StoreConfig)
    node: NodeConfig = field(default_factory=NodeConfig)
    security: SecurityConfig = field(default_factory=SecurityConfig)


def load(
    path: Path | None = None,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Config:
    """The validated configuration from ``path``, ``environ`` and ``overrides``.

    ``overrides`` maps ``"section.field"`` to a value, as command-line flags give them.
    """
    layers: dict[str, dict[str, Any]] = {}
    problems: list[str] = []
    if path is not None:
        _merge(layers, _read_toml(path, problems), problems)
    _merge(layers, _from_env(os.environ if environ is None else environ), problems)
    for dotted, value in (overrides or {}).items():
        section, _, name = dotted.partition(".")
        layers.setdefault(section, {})[name] = value
    config = _build(layers, problems)
    problems += config.etcd.problems() + config.store.problems() + config.node.problems()
    problems += config.security.problems()
    problems += _cross_problems(config)
    if problems:
        raise ConfigError(problems)
    return config


def _cross_problems(config: Config) -> list[str]:
    """Rules across sections: a write of a leased key may first wait out a dead holder's
    lease (term + margin) and an etcd round, then the store, all within the deadline of a
    forwarded request and of a handoff's hold."""
    node = config.node
    if not node.read_lease_threshold:
        return []
    need = config.store.timeout + ETCD_ROUND + node.read_lease_ttl + 2 * node.read_lease_margin
    return [
        f"node.{name}: must exceed store.timeout + {ETCD_ROUND} s + read_lease_ttl + "
        f"2 x read_lease_margin = {need:.2f} s (or turn read leases off)"
        for name in ("forward_timeout", "handoff_hold")
        if getattr(node, name) <= need
    ]


def _read_toml(path: Path, problems: list[str]) -> dict[str, Any]:
    try:
        with path.open("rb") as file:
            return tomllib.load(file)
    except OSError as error:
        problems.append(f"{path}: cannot read: {error.strerror}")
    except tomllib.TOMLDecodeError as error:
        problems.append(f"{path}: not valid TOML: {error}")
    return {}


def _from_env(environ: Mapping[str, str]) -> dict[str, dict[str, Any]]:
    """``CACHEGRID_STORE_TIMEOUT=0.2`` -> {"store": {"timeout": "0.2"}}."""
    layers: dict[str, dict[str, Any]] = {}
    for name, value in environ.items():
        if name.startswith(ENV_PREFIX):
            section, _, key = name[len(ENV_PREFIX) :].lower().partition("_")
            layers.setdefault(section, {})[key] = value
    return layers


def _merge(into: dict[str, dict[str, Any]], layer: dict[str, Any], problems: list[str]) -> None:
    for section, values in layer.items():
        if isinstance(values, dict):
            into.setdefault(section, {}).update(values)
        else:
            problems.append(f"{section}: must be a table of settings")


def _build(layers: dict[str, dict[str, Any]], problems: list[str]) -> Config:
    sections = {f.name: f.type for f in dataclasses.fields(Config)}
    built: dict[str, Any] = {}
    for section, values in layers.items():
        if section not in sections:
            problems.append(f"{section}: unknown section (known: {', '.join(sections)})")
            continue
        built[section] = _build_section(
            section, globals()[str(sections[section])], values, problems
        )
    return Config(**built)


def _build_section(
    section: str, cls: type[Any], values: dict[str, Any], problems: list[str]
) -> Any:
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs: dict[str, Any] = {}
    for name, raw in values.items():
        if name not in fields:
            problems.append(f"{section}.{name}: unknown setting")
            continue
        default = getattr(cls(), name)
        try:
            kwargs[name] = _coerce(raw, default)
        except (TypeError, ValueError) as error:
            problems.append(f"{section}.{name}: {error}")
    return cls(**kwargs)


def _coerce(raw: Any, default: Any) -> Any:
    """``raw`` (from TOML, or a string from the environment) as the type of ``default``."""
    if isinstance(default, tuple):
        items = raw.split(",") if isinstance(raw, str) else raw
        if not isinstance(items, list | tuple) or not all(isinstance(i, str) for i in items):
            raise TypeError("must be a list of strings")
        return tuple(item.strip() for item in items if item.strip())
    if isinstance(default, bool):
        if isinstance(raw, str) and raw.lower() in ("1", "true", "yes", "0", "false", "no"):
            return raw.lower() in ("1", "true", "yes")
        if isinstance(raw, bool):
            return raw
        raise TypeError("must be true or false")
    if isinstance(default, int | float) and isinstance(raw, bool):
        raise TypeError(f"must be a number, not {raw!r}")
    if isinstance(default, int):
        return _number(int, raw)
    if isinstance(default, float):
        return _number(float, raw)
    if not isinstance(raw, str):
        raise TypeError(f"must be a string, not {raw!r}")
    return raw


def _number(kind: type[int] | type[float], raw: Any) -> int | float:
    if isinstance(raw, str):
        try:
            return kind(raw)
        except ValueError:
            raise ValueError(f"must be a number, not {raw!r}") from None
    if kind is float and isinstance(raw, int | float):
        return float(raw)
    if kind is int and isinstance(raw, int):
        return raw
    raise TypeError(f"must be {'an integer' if kind is int else 'a number'}, not {raw!r}")


def _positive(section: str, obj: object, *names: str) -> list[str]:
    return [f"{section}.{name}: must be > 0" for name in names if getattr(obj, name) <= 0]


def _addr(text: str) -> bool:
    host, sep, port = text.rpartition(":")
    return bool(sep and host and port.isdigit() and 0 < int(port) < 65536)
