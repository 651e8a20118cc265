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

from aiohttp import web

from cachegrid.config import Config
from cachegrid.coord.coordinator import Coordinator, CoordSettings
from cachegrid.coord.etcd import Etcd
from cachegrid.forward import Forwarder
from cachegrid.http.server import ENVELOPE_BYTES, Api
from cachegrid.localcache import LocalCache
from cachegrid.node import Node
from cachegrid.store import open_store

log = logging.getLogger(__name__)


async def serve(config: Config, stop: asyncio.Event) -> None:
    """Run one node until ``stop`` is set, then shut it down gracefully."""
    settings = config.node
    etcd = Etcd(list(config.etcd.endpoints))
    store = open_store(config.store)
    forwarder = Forwarder(timeout=settings.forward_timeout)
    node: Node | None = None

    async def release(drop_all: bool) -> None:
        if node is not None:
            await node.release(drop_all)

    coordinator = Coordinator(etcd, coord_settings(config), on_release=release)
    node = Node(
        settings.node_id,
        coordinator,
        store,
        LocalCache(settings.cache_max_entries, settings.cache_max_bytes),
        hold=settings.handoff_hold,
    )
    app = web.Application(client_max_size=config.store.max_value_bytes + ENVELOPE_BYTES)
    Api(node, coordinator, forwarder, max_key_bytes=config.store.max_key_bytes,
        max_value_bytes=config.store.max_value_bytes,
        max_batch=settings.max_batch_keys).add_routes(app)  # fmt: skip
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    host, _, port = settings.listen.rpartition(":")
    await forwarder.start()
    try:
        await web.TCPSite(runner, host, int(port), reuse_address=True).start()
        await coordinator.start()
        log.info("node %s serving on %s", settings.node_id, settings.listen)
        await stop.wait()
    finally:
        await coordinator.stop()
        await runner.cleanup()
        await forwarder.close()
        await store.close()
        await etcd.close()


def coord_settings(config: Config) -> CoordSettings:
    node = config.node
    return CoordSettings(
        node_id=node.node_id,
        addr=node.advertised,
        weight=node.weight,
        prefix=config.etcd.prefix,
        lease_ttl=node.lease_ttl,
        lease_margin=node.lease_margin,
    )
