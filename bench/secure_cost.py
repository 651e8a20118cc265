"""What secure mode costs (issue 15), measured in one run: the same loads against a
one-node cluster started plain, then started as ``cachegrid up --secure`` starts it (HTTPS
with a write token, the store over TLS with its ACL user, etcd over TLS):

- hot GET, cold GET (every GET a miss: a store read) and PUT, over keep-alive connections;
- new connections: a GET on a fresh connection each time (``Connection: close``), which
  over HTTPS costs a TLS handshake per request.

    .venv/bin/python bench/secure_cost.py [--seconds 5]
"""

from __future__ import annotations

import argparse
import json
import ssl
import tempfile
import urllib.request
from pathlib import Path

from cachegrid.devcluster.cluster import LocalCluster
from cachegrid.devcluster.servers import PortAllocator
from harness import Result, free_base, wrk

KEYS = 500
BODY = json.dumps({"value": {"n": 1, "pad": "x" * 64}})


def put(url: str, headers: dict[str, str], context: ssl.SSLContext | None) -> None:
    sent = {**headers, "Content-Type": "application/json"}
    request = urllib.request.Request(url, data=BODY.encode(), method="PUT", headers=sent)
    with urllib.request.urlopen(request, timeout=10, context=context) as response:
        assert response.status == 200


def measure(secure: bool, seconds: float) -> dict[str, Result]:
    with tempfile.TemporaryDirectory() as tmp:
        cluster = LocalCluster.plan(Path(tmp), nodes=1, replicas=3,
                                    base_port=free_base(PortAllocator()),
                                    appendfsync="everysec", secure=secure)  # fmt: skip
        cluster.start()
        try:
            url = cluster.nodes[0].url
            made = cluster.secure
            headers = {"Authorization": f"Bearer {made.tokens['write']}"} if made else {}
            context = ssl.create_default_context(cafile=str(made.ca)) if made else None
            for i in range(KEYS):
                put(f"{url}/v1/kv/hot-{i}", headers, context)
            hot = [f"/v1/kv/hot-{i}" for i in range(KEYS)]
            cold = [f"/v1/kv/cold-{i}" for i in range(int(seconds * 20_000))]
            wrk(url, hot, 1, 32, headers=headers)  # warm
            closing = {**headers, "Connection": "close"}
            rows = {"hot GET": wrk(url, hot, seconds, 32, headers=headers)}
            rows["cold GET (misses)"] = wrk(url, cold, seconds, 32, headers=headers,
                                            not_found_ok=True)  # fmt: skip
            rows["PUT"] = wrk(url, hot, seconds, 32, ("PUT",), BODY, headers=headers)
            rows["GET on a new connection each"] = wrk(url, hot, seconds, 8, headers=closing)
            return rows
        finally:
            cluster.stop()


def main(seconds: float) -> None:
    plain, secure = measure(False, seconds), measure(True, seconds)
    print(f"\n{'load':<32}{'plain/s':>10}{'secure/s':>10}{'ratio':>8}  p99 plain / secure ms")
    for name in plain:
        a, b = plain[name], secure[name]
        print(f"{name:<32}{a.rps:>10.0f}{b.rps:>10.0f}{b.rps / a.rps:>7.2f}x"
              f"  {a.p99:.2f} / {b.p99:.2f}")  # fmt: skip


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    main(parser.parse_args().seconds)
