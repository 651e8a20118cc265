"""The Python ceiling: a bare aiohttp app answering GET /v1/kv/{key} from a dict (orjson).

python bench/dict_app.py PORT [--uvloop]
"""

from __future__ import annotations

import sys

import orjson
from aiohttp import web

DATA = {
    f"k{i}": orjson.dumps({"key": f"k{i}", "value": {"n": i, "pad": "x" * 64}, "version": "1.1"})
    for i in range(10_000)
}


async def get(request: web.Request) -> web.Response:
    body = DATA.get(request.match_info["key"])
    if body is None:
        return web.Response(status=404, body=b'{"error":{"code":"not_found"}}',
                            content_type="application/json")  # fmt: skip
    return web.Response(body=body, content_type="application/json", headers={"ETag": '"1.1"'})


def main() -> None:
    if "--uvloop" in sys.argv:
        import uvloop

        uvloop.install()
    app = web.Application()
    app.router.add_get("/v1/kv/{key:.*}", get)
    web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), access_log=None, print=None)


if __name__ == "__main__":
    main()
