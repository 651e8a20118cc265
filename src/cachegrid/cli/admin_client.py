"""What ``cachegrid admin`` does: call a node's /admin API and render the answer.

Owns: finding the node, token and CA (flags, or ``cluster.json`` from ``cachegrid up``), the
HTTP calls, and the plain-text tables. Uses only the public admin API.
"""

from __future__ import annotations

import contextlib
import json
import ssl
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cachegrid.errors import CachegridError


class AdminError(CachegridError):
    code = "admin_error"


@dataclass(frozen=True)
class Target:
    url: str
    token: str
    ca: str | None  # the CA to check an https node against (None: the system's)


def target(url: str | None, token: str | None, cluster_json: Path,
           ca: str | None = None) -> Target:  # fmt: skip
    """The node URL, token and CA to use: the flags, else from cluster.json (the first
    node, the admin token, and the CA of a secure cluster)."""
    if url and "://" not in url:
        url = f"{'https' if ca else 'http'}://{url}"  # host:port is enough; with a CA, TLS
    if url and token:
        return Target(url.rstrip("/"), token, ca)
    try:
        manifest = json.loads(cluster_json.read_text())
    except (OSError, ValueError) as error:
        raise AdminError(
            f"give --url and --token, or a readable {cluster_json}: {error}"
        ) from error
    nodes = manifest.get("nodes") or []
    if not nodes and not url:
        raise AdminError(f"{cluster_json} lists no node: give --url")
    return Target((url or nodes[0]["url"]).rstrip("/"), token or manifest["admin_token"],
                  ca or manifest.get("ca"))  # fmt: skip


def call(to: Target, method: str, path: str, body: Any = None) -> Any:
    """One admin request; its JSON answer. AdminError with the server's message if not 200."""
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(f"{to.url}{path}", data=data, method=method)
    request.add_header("Authorization", f"Bearer {to.token}")
    if data is not None:
        request.add_header("Content-Type", "application/json")
    context = ssl.create_default_context(cafile=to.ca) if to.ca else None
    try:
        with urllib.request.urlopen(request, timeout=120, context=context) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as error:
        detail = error.read().decode(errors="replace")
        with contextlib.suppress(ValueError, KeyError, TypeError):
            detail = json.loads(detail)["error"]["message"]
        raise AdminError(f"HTTP {error.code}: {detail}") from error
    except OSError as error:
        raise AdminError(f"cannot reach {to.url}: {error}") from error


def table(headers: list[str], rows: list[list[Any]]) -> str:
    cells = [headers, *[["" if c is None else str(c) for c in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
                     for row in cells)  # fmt: skip


def human_bytes(count: float) -> str:
    """1536 -> '1.5 KiB'."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if count < 1024 or unit == "GiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    raise AssertionError("unreachable")


def state_of(node: str, status: dict[str, Any]) -> str:
    """serving, drained (weight 0: owns nothing), or not serving yet (no active ring)."""
    if status.get("activated_epoch") is None:
        return "not serving"
    if status.get("weights", {}).get(node) == 0:
        return "drained"
    return "serving"


def render_status(answer: dict[str, Any]) -> str:
    rows = []
    for node, status in sorted(answer["nodes"].items()):
        if "error" in status:
            rows.append([node, "unreachable", status["error"], "", "", "", "", "", ""])
            continue
        if status.get("state") == "down":  # registered once, no live lease now
            rows.append([node, f"down ({status.get('addr')})", "", "", "", "", "", "", ""])
            continue
        cache = status["cache"]
        replicas = status["replicas"]
        up = sum(1 for r in replicas if r["up"])
        leases = status.get("read_leases", {})
        rows.append([node, state_of(node, status), status["lease_slack_seconds"],
                     status["ring_epoch"], status["activated_epoch"], cache["entries"],
                     f"{human_bytes(cache['bytes'])} of {human_bytes(cache['max_bytes'])}",
                     f"{up}/{len(replicas)}",
                     f"{leases.get('held', 0)}/{leases.get('granted', 0)}"])  # fmt: skip
    return table(["node", "state", "lease slack s", "ring epoch", "active epoch", "entries",
                  "cache", "replicas up", "read leases held/granted"], rows)  # fmt: skip


def render_ring(answer: dict[str, Any]) -> str:
    rows = [[m["id"], m["addr"], m["weight"], f"{m['share']:.1%}"] for m in answer["members"]]
    return f"epoch {answer['epoch']}\n" + table(["node", "addr", "weight", "share"], rows)


def render_nodes(answer: dict[str, Any]) -> str:
    rows = [[node, result.get("status"), ", ".join(f"{k}={v}" for k, v in result.items()
                                                 if k != "status")]
            for node, result in sorted(answer["nodes"].items())]  # fmt: skip
    return table(["node", "result", "details"], rows)


def render_repair(answer: dict[str, Any]) -> str:
    unreachable = ", ".join(answer["unreachable"]) or "none"
    return (f"keys checked: {answer['keys_checked']}\ncopies written: {answer['copies_written']}"
            f"\nunreachable replicas: {unreachable}")  # fmt: skip


def render_hotkeys(answer: dict[str, Any]) -> str:
    """One table per node: the keys read most, then written most, with rates."""
    parts = []
    for node, report in sorted(answer["nodes"].items()):
        if "error" in report:
            parts.append(f"{node}: unreachable ({report['error']})")
            continue
        rows = [[kind, entry["key"], entry["count"], entry["per_second"],
                 f"±{entry['error']}" if entry["error"] else ""]
                for kind in ("reads", "writes") for entry in report[kind]["keys"]]  # fmt: skip
        seconds = report["reads"]["seconds"]
        listed = table(["kind", "key", "count", "per s", "error"], rows) if rows else "(none)"
        parts.append(f"{node} (last {seconds:.0f} s)\n{listed}")
    return "\n\n".join(parts)
