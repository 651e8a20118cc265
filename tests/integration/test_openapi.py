"""The OpenAPI description (src/cachegrid/http/openapi.json) is true to the node: every route
is described, every described operation is answered, and schemathesis, fuzzing a live
cluster against it, finds no server error, undocumented status, wrong content type or
answer that breaks its schema (issue 14)."""

import json
from importlib import resources

import pytest

from cachegrid.http.admin import ADMIN_ROUTES
from cachegrid.http.api import KV_ROUTE, OPS_ROUTES, PEER_ROUTES, PUBLIC_ROUTES
from tests.processes import schemathesis_finds_nothing

SPEC = json.loads(resources.files("cachegrid.http").joinpath("openapi.json").read_text())
METHODS = {"get", "head", "put", "post", "delete"}


def described() -> set[tuple[str, str]]:
    return {(path, method.upper()) for path, item in SPEC["paths"].items()
            for method in item if method in METHODS}  # fmt: skip


def routed() -> set[tuple[str, str]]:
    routes = {**PUBLIC_ROUTES, **OPS_ROUTES, **PEER_ROUTES, **ADMIN_ROUTES}
    return {(path.replace(KV_ROUTE, "/v1/kv/{key}"), method)
            for path, methods in routes.items() for method in methods}  # fmt: skip


def test_every_route_is_described_and_nothing_else() -> None:
    assert routed() == described()


def test_every_status_has_an_error_body_or_none() -> None:
    """Every documented failure of the JSON API is the one error shape."""
    for path, item in SPEC["paths"].items():
        for method, operation in item.items():
            if method not in METHODS or method == "head":
                continue
            for status, answer in operation["responses"].items():
                if int(status) >= 400 and "content" in answer:
                    schema = answer["content"]["application/json"]["schema"]
                    assert schema == {"$ref": "#/components/schemas/Error"}, (path, status)


async def test_every_described_operation_is_answered(http, cluster) -> None:
    """Not a JSON 404 "no route" or a 405: each (path, method) reaches its handler."""
    auth = {"Authorization": f"Bearer {cluster.admin_token}"}
    for path, method in sorted(described()):
        if path in ("/admin/drain", "/admin/rebalance"):
            body = {"weights": {"node9": 1}} if path.endswith("rebalance") else {"node": "x"}
        elif method in ("PUT", "POST"):
            body = {"value": 1} if path.startswith("/v1/kv/") else {"keys": ["k"]}
        else:
            body = None
        url = cluster.urls[0] + path.replace("{key}", "openapi-probe")
        async with http.request(method, url, json=body, headers=auth) as response:
            text = await response.text()
            assert response.status != 405, (path, method)
            assert "no route" not in text, (path, method)


@pytest.mark.slow
def test_schemathesis_finds_nothing(cluster) -> None:
    """Bounded: 60 s, 30 examples an operation (tests/processes.py has the checks)."""
    schemathesis_finds_nothing(f"{cluster.urls[0]}/v1/openapi.json",
                               f"Bearer {cluster.admin_token}",
                               "--max-examples", "30", "--max-time", "60")  # fmt: skip
