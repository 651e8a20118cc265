"""The ``cachegrid`` command line. Parses arguments and calls into the library; no logic."""

from __future__ import annotations

from pathlib import Path

import click

from cachegrid import cluster


@click.group()
def main() -> None:
    """cachegrid: a linearizable, write-through cache over a quorum-replicated store."""


@main.command()
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
    help="etcd listens on this port (peer: +1), Redis replicas from +10 up.",
)
@click.option(
    "--appendfsync",
    default="everysec",
    show_default=True,
    type=click.Choice(["everysec", "always"]),
    help="The replicas' AOF fsync policy.",
)
def up(replicas: int, data_dir: Path, base_port: int, appendfsync: str) -> None:
    """Start a local cluster on 127.0.0.1 and keep it up until Ctrl-C."""
    try:
        local = cluster.LocalCluster.plan(
            data_dir, replicas=replicas, base_port=base_port, appendfsync=appendfsync
        )
    except ValueError as error:
        raise click.ClickException(str(error)) from error
    try:
        cluster.run(local)
    except RuntimeError as error:
        raise click.ClickException(str(error)) from error
