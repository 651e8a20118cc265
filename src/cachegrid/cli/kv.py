"""``cachegrid kv``: read and write keys from a shell, like etcdctl (through SyncClient).

Owns: finding the cluster (``--url``, repeatable and with or without a scheme, else the
nodes of ``cluster.json``), printing answers (the value; ``--json`` the whole answer;
``-w table`` for batches) and the exit codes scripts test:

    0 done (found)   1 not found   2 precondition failed   3 unavailable or indeterminate
    4 refused (bad key or value, too large, overloaded...)

``--json`` may come before or after the command (``kv --json get K`` or ``kv get K --json``).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from cachegrid import errors
from cachegrid.cli.admin_client import table
from cachegrid.cli.options import json_flag, wants_json
from cachegrid.client import Item
from cachegrid.sync_client import SyncClient


class KvError(click.ClickException):
    """A refused kv command: its message on stderr, and the exit code of its kind."""

    exit_code = 4


class KeyNotFound(KvError):
    exit_code = 1


class PreconditionFailed(KvError):
    exit_code = 2


class NoAnswer(KvError):
    exit_code = 3


# The server's errors, by the exit code they get (anything else: 4).
EXIT: dict[type[errors.CachegridError], type[KvError]] = {
    errors.NotFound: KeyNotFound, errors.VersionMismatch: PreconditionFailed,
    errors.Unavailable: NoAnswer, errors.Indeterminate: NoAnswer,
}  # fmt: skip


@click.group()
@click.option("--url", "urls", multiple=True,
              help="A node's URL (repeatable; default: the nodes of --cluster).")  # fmt: skip
@click.option("--cluster", "cluster_json", default=".cluster/cluster.json", show_default=True,
              type=click.Path(dir_okay=False, path_type=Path),
              help="cluster.json of cachegrid up.")  # fmt: skip
@click.option("--token", help="Bearer token (default: the write token of a secure --cluster).")
@click.option("--ca", help="CA certificate for https nodes (default: from --cluster).")
@json_flag
@click.pass_context
def kv(ctx: click.Context, urls: tuple[str, ...], cluster_json: Path, token: str | None,
       ca: str | None, as_json: bool) -> None:  # fmt: skip
    """Read and write keys."""
    ctx.obj = {"urls": urls, "cluster": cluster_json, "token": token, "ca": ca,
               "json": bool(as_json)}  # fmt: skip


@kv.command()
@click.argument("key")
@json_flag
@click.pass_context
def get(ctx: click.Context, key: str, as_json: bool | None) -> None:
    """Print KEY's value (exit 1 if it does not exist)."""
    item = _call(ctx, lambda client: client.get(key))
    if item is None:
        raise KeyNotFound(f"{key}: not found")
    _print(ctx, as_json, _item(item), json.dumps(item.value))


@kv.command()
@click.argument("key")
@click.argument("value")
@click.option("--if-match", help="Only if the current version is this one.")
@click.option("--if-absent", is_flag=True, help="Only if the key does not exist.")
@json_flag
@click.pass_context
def put(ctx: click.Context, key: str, value: str, if_match: str | None, if_absent: bool,
        as_json: bool | None) -> None:  # fmt: skip
    """Write VALUE (a JSON document) to KEY; print its new version."""
    if if_match is not None and if_absent:
        raise KvError("use --if-match or --if-absent, not both")
    try:
        document = json.loads(value)
    except ValueError as error:
        raise KvError(f"VALUE is not JSON: {error}") from error
    version = _call(ctx, lambda client: client.put(key, document, if_match=if_match,
                                                   if_absent=if_absent))  # fmt: skip
    _print(ctx, as_json, {"key": key, "version": version}, version)


@kv.command()
@click.argument("key")
@click.option("--if-match", help="Only if the current version is this one.")
@json_flag
@click.pass_context
def delete(ctx: click.Context, key: str, if_match: str | None, as_json: bool | None) -> None:
    """Delete KEY; print the version of its deletion (exit 1 if it does not exist)."""
    version = _call(ctx, lambda client: client.delete(key, if_match=if_match))
    _print(ctx, as_json, {"key": key, "version": version}, version)


@kv.command("batch-get")
@click.argument("keys", nargs=-1, required=True)
@click.option("-w", "--write-out", type=click.Choice(["json", "table"]), default="json",
              show_default=True, help="json: {key: value or null}; table: a row a key")  # fmt: skip
@json_flag
@click.pass_context
def batch_get(ctx: click.Context, keys: tuple[str, ...], write_out: str,
              as_json: bool | None) -> None:  # fmt: skip
    """Print many keys at once (exit 1 if any does not exist)."""
    items = _call(ctx, lambda client: client.batch_get(list(keys)))
    if write_out == "table" and not wants_json(ctx, as_json):
        rows = [[k, i.version if i else "-", json.dumps(i.value) if i else "(not found)"]
                for k, i in items.items()]  # fmt: skip
        click.echo(table(["key", "version", "value"], rows))
    elif wants_json(ctx, as_json):
        click.echo(json.dumps({k: _item(i) if i else None for k, i in items.items()}))
    else:
        click.echo(json.dumps({k: i.value if i else None for k, i in items.items()}))
    if any(item is None for item in items.values()):
        ctx.exit(1)


def _call(ctx: click.Context, call: Callable[[SyncClient], Any]) -> Any:
    urls, token, ca = _connection(ctx)
    with SyncClient(urls, token=token, ca=ca) as client:
        try:
            return call(client)
        except errors.CachegridError as error:
            kind = next((k for e, k in EXIT.items() if isinstance(error, e)), KvError)
            raise kind(error.message) from error


def _connection(ctx: click.Context) -> tuple[list[str], str | None, str | None]:
    """The node URLs, token and CA: with --url, the flags; else cluster.json's (its
    nodes, and the write token and the CA of a secure cluster), the flags first."""
    token, ca = ctx.obj["token"], ctx.obj["ca"]
    scheme = "https" if ca else "http"  # host:port is enough; with a CA, over TLS
    urls = [url if "://" in url else f"{scheme}://{url}" for url in ctx.obj["urls"]]
    if urls:
        return urls, token, ca
    path: Path = ctx.obj["cluster"]
    try:
        manifest = json.loads(path.read_text())
        urls = [node["url"] for node in manifest["nodes"]]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise NoAnswer(f"give --url, or a readable {path} (cachegrid up): {error}") from error
    return urls, token or manifest.get("tokens", {}).get("write"), ca or manifest.get("ca")


def _print(ctx: click.Context, as_json: bool | None, document: dict[str, Any], text: str) -> None:
    click.echo(json.dumps(document) if wants_json(ctx, as_json) else text)


def _item(item: Item) -> dict[str, Any]:
    return {"key": item.key, "value": item.value, "version": item.version}
