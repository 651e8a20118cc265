"""The composition root of a cache node: builds every part, starts and stops them in order.

Owns: which concrete classes meet (the only module where they do), and the order of start
and shutdown:
- start: store and forwarder, then the HTTP listener, then coordination (so that by the
  time the node is in the ring, other nodes can forward to it);
- stop: coordination first (stop serving, hand off, revoke the lease: others take over
  at once), then the HTTP listener (drains requests in flight), then the clients.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any

from aiohttp import web

from cachegrid import auth
from cachegrid.budget import ByteBudget
from cachegrid.config import Config, ConfigError, SecurityConfig
from cachegrid.coord.commands import Admin, Executor
from cachegrid.coord.coordinator import Coordinator, CoordSettings
from cachegrid.coord.etcd import Etcd, TlsFiles
from cachegrid.coord.invalidation import Publisher
from cachegrid.errors import Unavailable
from cachegrid.hotkeys import KeyTraffic, TopKeys
from cachegrid.http import tls
from cachegrid.http.admin import AdminApi
from cachegrid.http.api import ENVELOPE_BYTES, Api, Limits
from cachegrid.http.framework import add_not_found
from cachegrid.http.listener import Listener
from cachegrid.http.peers import Forwarder
from cachegrid.http.pipes import Pipes
from cachegrid.lifecycle import uncancellable, unless_stopped
from cachegrid.localcache import LocalCache
from cachegrid.metrics import Metrics
from cachegrid.serving.leases import HolderLeases, LeaseSettings, OwnerLeases
from cachegrid.serving.owner import Node
from cachegrid.serving.routing import Router
from cachegrid.store.quorum import QuorumStore, open_store
from cachegrid.store.replica import Credentials
from cachegrid.store.trust import Trust

log = logging.getLogger(__name__)


async def serve(config: Config, stop: asyncio.Event) -> None:
    """Run one node until ``stop`` is set, then shut it down gracefully."""
    settings = config.node
    security = config.security
    etcd_tls = TlsFiles(security.ca, security.cert, security.key) if security.etcd_tls else None
    etcd = Etcd(list(config.etcd.endpoints), tls=etcd_tls)
    store = open_store(config.store, store_credentials(config.security))
    tokens = auth.load(security.read_tokens, security.write_tokens,
                       (settings.admin_token, *security.admin_tokens), security.peer_token,
                       security.tokens_file)  # fmt: skip
    if not tokens.data_open and not tokens.peer_token:
        # Forwards would be refused (401), and the peer-only routes and fields would be
        # open to every client: a closed data API needs the peer token too.
        raise ConfigError(["security.peer_token: needed once read or write tokens are set "
                           "(nodes send it to each other)"])  # fmt: skip
    peer_tls = (
        tls.client_context(security.ca, security.cert, security.key) if security.tls else None
    )
    forwarder = Forwarder(timeout=settings.forward_timeout, tls=peer_tls,
                          peer_token=tokens.peer_token)  # fmt: skip
    metrics = Metrics()
    coordinator = Coordinator(etcd, coord_settings(config))
    leases = lease_settings(config)
    publisher = Publisher(etcd, config.etcd.prefix, settings.node_id)
    owner_leases = OwnerLeases(settings.node_id, settings.advertised, coordinator, publisher,
                               leases, metrics)  # fmt: skip
    holder = HolderLeases(settings.node_id, coordinator, forwarder, leases, metrics)
    node = Node(
        settings.node_id,
        coordinator,
        store,
        # Entries with live read leases are pinned: their holders serve them.
        LocalCache(settings.cache_max_entries, settings.cache_max_bytes, owner_leases.has_rows),
        hold=settings.handoff_hold,
        metrics=metrics,
        stale_check_every=settings.stale_check_every,
        stale_checks_per_second=settings.stale_checks_per_second,
        leases=owner_leases,
    )
    coordinator.attach(on_release=releaser(coordinator, node, holder),
                       on_admin=Executor(node, holder).apply,
                       on_invalidation=holder.apply_record)  # fmt: skip

    def read_leases() -> dict[str, int]:
        return {"held": len(holder.copies), "granted": len(owner_leases.table)}

    traffic = KeyTraffic(reads=TopKeys(), writes=TopKeys())
    admin_api = AdminApi(node, coordinator, Admin(etcd, config.etcd.prefix), store, forwarder,
                         tokens, tokens.peer_token or tokens.admin_token, read_leases,
                         traffic)  # fmt: skip
    app = web.Application(client_max_size=config.store.max_value_bytes + ENVELOPE_BYTES)
    router = Router(node, forwarder, ByteBudget(settings.max_bytes_in_flight), holder,
                    settings.max_forwards_per_owner)  # fmt: skip
    limits = Limits(
        max_key_bytes=config.store.max_key_bytes, max_value_bytes=config.store.max_value_bytes,
        max_batch=settings.max_batch_keys, max_in_flight=settings.max_in_flight_requests,
        max_batch_bytes=settings.max_batch_bytes, write_timeout=settings.write_timeout,
        access_log=settings.access_log,
    )  # fmt: skip
    # The hit lane's forwards: pipelined connections to the peers (http/pipes.py).
    pipes = Pipes(timeout=settings.forward_timeout, budget=router.budget,
                  max_answer=config.store.max_value_bytes + 2 * ENVELOPE_BYTES, tls=peer_tls,
                  peer_token=tokens.peer_token,
                  idle=min(10.0, settings.idle_timeout / 2))  # fmt: skip
    api = Api(node, coordinator, router, limits, traffic, tokens, pipes)
    api.add_routes(app)
    admin_api.add_routes(app)
    add_not_found(app)
    add_gauges(metrics, coordinator, node, store, router.budget, holder)
    # No aiohttp access log: it would read attributes that pre-encoded hit answers lack
    # (http/wire.py); the routes' guard writes one instead (node.access_log).
    # aiohttp's keep-alive timer runs from a connection's start and from each answer: it
    # closes idle connections and those that stall before completing a request head.
    runner = web.AppRunner(app, access_log=None, keepalive_timeout=settings.idle_timeout)
    await runner.setup()
    assert runner.server is not None  # set up just above
    # The hit lane answers plain hits ahead of aiohttp (http/lane.py); not with the access
    # log on, whose lines the routes' guard writes.
    hits = api.lane_answer if settings.hit_lane and not settings.access_log else None
    listener = Listener(runner.server, settings.max_connections, metrics, hits)
    metrics.gauge("cachegrid_peer_connections",
                  "Pipelined connections to other nodes (the hit lane's forwards).",
                  lambda: pipes.open)  # fmt: skip
    metrics.gauge("cachegrid_open_connections",
                  "Client connections open (node.max_connections: more are refused).",
                  lambda: listener.open)  # fmt: skip
    host, _, port = settings.listen.rpartition(":")
    await forwarder.start()
    try:
        # Starting can wait long (for the replicas, for our node id to be free): a stop
        # meanwhile ends it, rather than after the wait.
        server_tls = (tls.server_context(security.cert, security.key, security.client_ca)
                      if security.tls else None)  # fmt: skip
        started = _start(store, listener, host, int(port), server_tls, coordinator)
        if not await unless_stopped(started, stop):
            return
        node.detector.start()
        log.info("node %s serving on %s", settings.node_id, settings.listen,
                 extra={"event": "node_started", "listen": settings.listen})  # fmt: skip
        await _first_of(stop.wait(), coordinator.fatal.wait())
        if coordinator.fatal.is_set() and coordinator.failed is not None:
            raise coordinator.failed
    finally:
        # Shielded: a node cancelled while stopping still revokes its lease (others take
        # over at once) and closes its connections.
        await uncancellable(
            _shutdown(coordinator, node, listener, runner, forwarder, pipes, store, etcd)
        )


def store_credentials(security: SecurityConfig) -> Credentials:
    """How this node reaches the replicas: TLS and an ACL user in secure mode."""
    password = security.store_password
    if security.store_password_file:
        password = Path(security.store_password_file).read_text().strip()
    tls = security.store_tls
    return Credentials(
        ca=security.ca if tls else None, cert=security.cert if tls else None,
        key=security.key if tls else None, username=security.store_user or None,
        password=password or None,
    )  # fmt: skip


def releaser(coordinator: Coordinator, node: Node,
             holder: HolderLeases) -> Callable[[bool], Awaitable[None]]:  # fmt: skip
    """What coordination calls before it acks a ring (or after a lost lease, a
    re-snapshot): copies held here whose key moved go first (all of them on ``drop_all``),
    then the node releases what it no longer owns."""

    def owner_of(key: str) -> str | None:
        ring = coordinator.ring
        try:
            return ring.owner(key) if ring is not None else None
        except Unavailable:  # no member has weight: nobody owns it
            return None

    async def release(drop_all: bool) -> None:
        if drop_all:
            holder.drop_all()
        else:
            holder.drop_moved(owner_of)
        await node.release(drop_all)

    return release


async def _shutdown(coordinator: Coordinator, node: Node, listener: Listener, runner: web.AppRunner,
                    forwarder: Forwarder, pipes: Pipes, store: QuorumStore,
                    etcd: Etcd) -> None:  # fmt: skip
    """In the order of the module's docstring."""
    log.info("node leaving: releasing its keys, then revoking its lease",
             extra={"event": "node_stopping"})  # fmt: skip
    await coordinator.stop()
    await node.detector.stop()
    await listener.close()
    await runner.cleanup()
    await forwarder.close()
    await pipes.close()
    await store.close()
    await etcd.close()
    log.info("node stopped", extra={"event": "node_stopped"})


async def _start(store: QuorumStore, listener: Listener, host: str, port: int,
                 server_tls: ssl.SSLContext | None, coordinator: Coordinator) -> None:  # fmt: skip
    # Judge the replicas (and reconcile a fresh store) before serving any read.
    await store.start()
    await listener.start(host, port, server_tls)
    await coordinator.start()


async def _first_of(*waits: Coroutine[Any, Any, Any]) -> None:
    tasks = [asyncio.ensure_future(wait) for wait in waits]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def add_gauges(metrics: Metrics, coordinator: Coordinator, node: Node, store: QuorumStore,
               budget: ByteBudget, holder: HolderLeases) -> None:  # fmt: skip
    def slack() -> float:
        return coordinator.session.slack() if coordinator.session else 0.0

    def epoch() -> float:
        ring = coordinator.ring
        return ring.epoch if ring else 0

    gauges = [
        ("cachegrid_lease_slack_seconds",
         "Seconds left before the local lease deadline (serving stops at 0).", slack),
        ("cachegrid_ring_epoch", "Epoch of the newest ring applied.", epoch),
        ("cachegrid_applied_revision",
         "Last etcd revision applied from the watch (compare nodes for watch lag).",
         lambda: coordinator.applied_revision),
        ("cachegrid_cache_entries", "Entries in the cache.", lambda: len(node.cache)),
        ("cachegrid_cache_bytes", "Accounted bytes in the cache.", lambda: node.cache.bytes),
        ("cachegrid_bytes_in_flight",
         "Bytes held for request bodies and answers in progress (node.max_bytes_in_flight).",
         lambda: budget.used),
        ("cachegrid_store_replicas_up", "Store replicas whose circuit breaker is closed.",
         lambda: sum(r.is_up() for r in store.replicas)),
        ("cachegrid_store_replicas_trusted",
         "Store replicas that count toward read quorums (the others are in doubt or unknown).",
         lambda: sum(r.trust is Trust.TRUSTED for r in store.replicas)),
        ("cachegrid_store_missed_writes",
         "Keys whose latest write some replica missed, waiting to be copied to it.",
         lambda: sum(len(b) for b in store.upkeep.backlogs.values())),
        ("cachegrid_store_repair_copies",
         "Records copied to lagging or in-doubt replicas by this node's upkeep, in all.",
         lambda: store.upkeep.copies_written),
    ]  # fmt: skip
    for name, documentation, read in gauges:
        metrics.gauge(name, documentation, read)
    metrics.labelled_gauge(
        "cachegrid_read_leases",
        "Read leases: copies this node holds of others' keys (held), rows of its grant table "
        "(granted; some may have expired since).", "side",
        {"held": lambda: len(holder.copies),
         "granted": lambda: len(node.leases.table) if node.leases else 0},
    )  # fmt: skip


def lease_settings(config: Config) -> LeaseSettings:
    node = config.node
    return LeaseSettings(threshold=node.read_lease_threshold, term=node.read_lease_ttl,
                         margin=node.read_lease_margin,
                         max_write_rate=node.read_lease_max_write_rate)  # fmt: skip


def coord_settings(config: Config) -> CoordSettings:
    node = config.node
    return CoordSettings(
        node_id=node.node_id,
        addr=node.advertised,
        weight=node.weight,
        prefix=config.etcd.prefix,
        lease_ttl=node.lease_ttl,
        lease_margin=node.lease_margin,
        id_wait=node.id_wait,
        # A release may wait out a read lease (term + margin) in the watch loop: a watch
        # that waits that long has not stalled.
        stall_after=max(3.0, node.read_lease_ttl + node.read_lease_margin + 1.0),
    )
