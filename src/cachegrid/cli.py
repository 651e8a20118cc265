"""The ``cachegrid`` command line. Parses arguments and calls into the library; no logic."""

from __future__ import annotations

import asyncio
import logging
import signal
from pathlib import Path

import click

from cachegrid import app, cluster, config


@click.group()
def main() -> None:
    """cachegrid: a linearizable, write-through cache over a quorum-replicated store."""


@main.command()
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="TOML configuration file (see config/cachegrid.toml).",
)
@click.option("--id", "node_id", help="Overrides node.id.")
@click.option("--listen", help="Overrides node.listen (host:port).")
@click.option("--advertise", help="Overrides node.advertise (host:port).")
@click.option(
    "--log-level",
    default="INFO",
    show_default=True,
    type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"]),
)
def node(
    config_path: Path | None,
    node_id: str | None,
    listen: str | None,
    advertise: str | None,
    log_level: str,
) -> None:
    """Run one cache node until SIGINT or SIGTERM."""
    logging.basicConfig(level=log_level, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    flags = {"node.id": node_id, "node.listen": listen, "node.advertise": advertise}
    try:
        settings = config.load(config_path, overrides={k: v for k, v in flags.items() if v})
    except config.ConfigError as error:
        raise click.ClickException(str(error)) from error
    asyncio.run(_serve_until_signalled(settings))


async def _serve_until_signalled(settings: config.Config) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    await app.serve(settings, stop)


@main.command()
@click.option(
    "--nodes",
    default=3,
    show_default=True,
    type=click.IntRange(0, 16),
    help="Cache nodes to start.",
)
@click.option(
    "--replicas",
    default=3,
    show_default=True,
    type=click.IntRange(1, 9),
    help="Redis store replicas to start.",
)
@click.option(
    "--data-dir",
    default=".cluster",
    show_default=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Where data, logs, cluster.json and cachegrid.toml go.",
)
@click.option(
    "--base-port",
    default=24000,
    show_default=True,
    type=click.IntRange(1024, 32700),
    help="etcd on this port (peer: +1), Redis replicas from +10, nodes from +20.",
)
@click.option(
    "--appendfsync",
    default="everysec",
    show_default=True,
    type=click.Choice(["everysec", "always"]),
    help="The replicas' AOF fsync policy.",
)
def up(nodes: int, replicas: int, data_dir: Path, base_port: int, appendfsync: str) -> None:
    """Start a local cluster on 127.0.0.1 and keep it up until Ctrl-C."""
    try:
        local = cluster.LocalCluster.plan(
            data_dir,
            nodes=nodes,
            replicas=replicas,
            base_port=base_port,
            appendfsync=appendfsync,
        )
    except ValueError as error:
        raise click.ClickException(str(error)) from error
    try:
        cluster.run(local)
    except RuntimeError as error:
        raise click.ClickException(str(error)) from error
