"""The ``cachegrid`` command line. Parses arguments and calls into the library; no logic."""

from __future__ import annotations

import asyncio
import json
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from cachegrid import app, config, logs
from cachegrid.cli import admin_client
from cachegrid.cli.kv import kv
from cachegrid.cli.options import json_flag, wants_json
from cachegrid.coord.coordinator import DuplicateNodeId
from cachegrid.coord.etcd import EtcdUnavailable
from cachegrid.devcluster import cluster, secure


@click.group()
@click.version_option(package_name="cachegrid", prog_name="cachegrid")
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
@click.option(
    "--log-format",
    default="auto",
    show_default=True,
    type=click.Choice(["auto", "json", "text"]),
    help="JSON lines, text, or auto: text on a terminal, JSON lines otherwise.",
)
def node(
    config_path: Path | None,
    node_id: str | None,
    listen: str | None,
    advertise: str | None,
    log_level: str,
    log_format: logs.LogFormat,
) -> None:
    """Run one cache node until SIGINT or SIGTERM."""
    flags = {"node.id": node_id, "node.listen": listen, "node.advertise": advertise}
    try:
        settings = config.load(config_path, overrides={k: v for k, v in flags.items() if v})
    except config.ConfigError as error:
        raise click.ClickException(str(error)) from error
    logs.configure(log_level, log_format, settings.node.node_id)
    if settings.node.event_loop == "uvloop":
        import uvloop

        uvloop.run(_serve_until_signalled(settings))
    else:
        asyncio.run(_serve_until_signalled(settings))


async def _serve_until_signalled(settings: config.Config) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    try:
        await app.serve(settings, stop)
    except DuplicateNodeId as error:
        raise click.ClickException(error.message) from error
    except config.ConfigError as error:  # found once files named by the config are read
        raise click.ClickException(str(error)) from error
    except EtcdUnavailable as error:  # at start, or etcd gone for longer than the lease
        endpoints = ", ".join(settings.etcd.endpoints)
        raise click.ClickException(f"etcd unreachable (etcd.endpoints: {endpoints}): "
                                   f"{error.message}") from error  # fmt: skip


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
@click.option(
    "--secure",
    is_flag=True,
    help="Nodes serve HTTPS and ask for tokens: a CA, certificates and tokens are made "
    "under DATA_DIR/tls, and cluster.json names the CA and the tokens.",
)
def up(nodes: int, replicas: int, data_dir: Path, base_port: int, appendfsync: str,
       secure: bool) -> None:  # fmt: skip
    """Start a local cluster on 127.0.0.1 and keep it up until Ctrl-C."""
    try:
        local = cluster.LocalCluster.plan(
            data_dir,
            nodes=nodes,
            replicas=replicas,
            base_port=base_port,
            appendfsync=appendfsync,
            secure=secure,
        )
    except ValueError as error:
        raise click.ClickException(str(error)) from error
    try:
        cluster.run(local)
    except RuntimeError as error:
        raise click.ClickException(str(error)) from error


main.add_command(kv)


@main.command("secrets")
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@click.option("--host", "hosts", multiple=True, default=("127.0.0.1", "localhost"),
              show_default=True,
              help="A name the servers are reached by (repeatable).")  # fmt: skip
def make_secrets(directory: Path, hosts: tuple[str, ...]) -> None:
    """Make what secure mode needs in DIRECTORY: a CA (ca.pem), one certificate for every
    server (node.pem, node-key.pem) valid for the --host names, the replicas' ACL
    (users.acl, store-password) and tokens (tokens.json); print the tokens as variables
    for docker compose."""
    made = secure.Secrets.create(directory, hosts)
    for scope, token in made.tokens.items():
        click.echo(f"CACHEGRID_{scope.upper()}_TOKEN={token}")


@main.group()
@click.option("--url", help="A node's URL (default: the first node of --cluster).")
@click.option("--token", help="The admin token (default: from --cluster).")
@click.option("--ca", help="CA certificate to check an https node with (default: from --cluster).")
@click.option(
    "--cluster",
    "cluster_json",
    default=".cluster/cluster.json",
    show_default=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="cluster.json of cachegrid up.",
)
@json_flag
@click.pass_context
def admin(
    ctx: click.Context, url: str | None, token: str | None, ca: str | None, cluster_json: Path,
    as_json: bool | None,
) -> None:  # fmt: skip
    """Operate a cluster through a node's admin API."""
    ctx.obj = {"url": url, "token": token, "ca": ca, "cluster": cluster_json,
               "json": bool(as_json)}  # fmt: skip


def _admin(ctx: click.Context, method: str, path: str, body: object,
           render: Callable[[dict[str, Any]], str], as_json: bool | None) -> None:  # fmt: skip
    options = ctx.obj
    try:
        to = admin_client.target(options["url"], options["token"], options["cluster"],
                                 options["ca"])  # fmt: skip
        answer = admin_client.call(to, method, path, body)
    except admin_client.AdminError as error:
        raise click.ClickException(error.message) from error
    click.echo(json.dumps(answer, indent=2) if wants_json(ctx, as_json) else render(answer))


@admin.command()
@json_flag
@click.pass_context
def status(ctx: click.Context, as_json: bool | None) -> None:
    """Every live node: lease slack, epochs, cache, replicas."""
    _admin(ctx, "GET", "/admin/status?scope=cluster", None, admin_client.render_status, as_json)


@admin.command()
@json_flag
@click.pass_context
def ring(ctx: click.Context, as_json: bool | None) -> None:
    """The ring: members, weights and shares of the keyspace."""
    _admin(ctx, "GET", "/admin/ring", None, admin_client.render_ring, as_json)


@admin.command()
@click.option(
    "--limit",
    default=10,
    show_default=True,
    type=click.IntRange(1, 100),
    help="Keys listed per node and kind.",
)
@json_flag
@click.pass_context
def hotkeys(ctx: click.Context, limit: int, as_json: bool | None) -> None:
    """The keys read and written most through each node in the last minute or two."""
    _admin(ctx, "GET", f"/admin/hotkeys?scope=cluster&limit={limit}", None,
           admin_client.render_hotkeys, as_json)  # fmt: skip


@admin.command()
@click.option("--all", "everything", is_flag=True, help="Flush every cached entry.")
@click.option("--prefix", help="Flush the keys starting with this.")
@click.option("--key", "keys", multiple=True, help="Flush this key (repeatable).")
@json_flag
@click.pass_context
def flush(ctx: click.Context, everything: bool, prefix: str | None, keys: tuple[str, ...],
          as_json: bool | None) -> None:  # fmt: skip
    """Drop cached entries on every node (the store keeps the data)."""
    if sum((everything, prefix is not None, bool(keys))) != 1:
        raise click.UsageError("give exactly one of --all, --prefix, --key")
    body = {"all": True} if everything else {"prefix": prefix} if prefix else {"keys": list(keys)}
    _admin(ctx, "POST", "/admin/flush", body, admin_client.render_nodes, as_json)


FORCE = click.option(
    "--force", is_flag=True, help="Even if no live node would keep a weight (no key owned)."
)


@admin.command()
@click.argument("weights", nargs=-1, required=True)
@FORCE
@json_flag
@click.pass_context
def rebalance(ctx: click.Context, weights: tuple[str, ...], force: bool,
              as_json: bool | None) -> None:  # fmt: skip
    """Set node weights, as NODE=WEIGHT ...; waits until every node applied them."""
    parsed = {}
    for item in weights:
        node_id, _, weight = item.partition("=")
        if not weight.isdigit():
            raise click.UsageError(f"{item!r}: expected NODE=WEIGHT")
        parsed[node_id] = int(weight)
    body = {"weights": parsed, "force": force}
    _admin(ctx, "POST", "/admin/rebalance", body, admin_client.render_nodes, as_json)


@admin.command()
@click.argument("node_id")
@FORCE
@json_flag
@click.pass_context
def drain(ctx: click.Context, node_id: str, force: bool, as_json: bool | None) -> None:
    """Move every key away from NODE_ID (weight 0), so it can be stopped without errors."""
    _admin(ctx, "POST", "/admin/drain", {"node": node_id, "force": force},
           admin_client.render_nodes, as_json)  # fmt: skip


@admin.command()
@click.argument("node_id")
@click.option("--weight", default=1, show_default=True, type=click.IntRange(1, 100))
@json_flag
@click.pass_context
def undrain(ctx: click.Context, node_id: str, weight: int, as_json: bool | None) -> None:
    """Give NODE_ID a weight again (after a drain): keys move back to it."""
    body = {"weights": {node_id: weight}}
    _admin(ctx, "POST", "/admin/rebalance", body, admin_client.render_nodes, as_json)


@admin.command()
@click.argument("node_id")
@json_flag
@click.pass_context
def forget(ctx: click.Context, node_id: str, as_json: bool | None) -> None:
    """Forget NODE_ID, a node that is gone for good (status shows it as down until then)."""
    _admin(ctx, "POST", "/admin/forget", {"node": node_id},
           lambda answer: f"forgot {answer['forgotten']}", as_json)  # fmt: skip


@admin.command()
@json_flag
@click.pass_context
def repair(ctx: click.Context, as_json: bool | None) -> None:
    """Anti-entropy: copy the newest record of every key to every lagging replica."""
    _admin(ctx, "POST", "/admin/repair", None, admin_client.render_repair, as_json)
