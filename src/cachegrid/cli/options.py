"""Options shared by the command groups."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import click

F = TypeVar("F", bound=Callable[..., Any])


def json_flag(command: F) -> F:
    """``--json`` on a group and on each of its commands, so it may come anywhere on the
    line (``cachegrid kv --json get K`` and ``cachegrid kv get K --json``)."""
    return click.option("--json", "as_json", is_flag=True, default=None,
                        help="Print the whole JSON answer.")(command)  # fmt: skip


def wants_json(ctx: click.Context, as_json: bool | None) -> bool:
    """The command's own ``--json``, or its group's."""
    return bool(as_json) or bool((ctx.obj or {}).get("json"))
