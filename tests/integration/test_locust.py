"""The Locust kit runs against a real cluster, bounded in time, with no failures, and reports
what matters for a cache: 404, 412 and 304 as entries of their own (successes), the hit
ratio and the replica share (the hot-key mix gets read-lease copies), p99 by request kind.
Against a server that answers only 5xx and 429, every request is a failure."""

from __future__ import annotations

import csv
import itertools
import json
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]
KINDS = {"GET", "GET (If-None-Match)", "GET (hot key)", "batchGet", "PUT", "PUT (If-Match)",
         "PUT (hot key)", "DELETE"}  # fmt: skip

pytestmark = pytest.mark.slow


@dataclass
class Run:
    result: subprocess.CompletedProcess[str]
    stats: dict[str, dict[str, str]]  # Locust's stats CSV, by Name
    xcache: dict[str, dict[str, str]]  # the kit's X-Cache CSV, by Kind

    @property
    def summary(self) -> str:
        _, found, after = self.result.stdout.partition("=== cachegrid summary ===")
        assert found, f"no summary printed:\n{self.result.stdout[-3000:]}"
        return after

    def section(self, title: str) -> list[str]:
        """The indented lines right under ``title`` in the summary."""
        lines = self.summary.splitlines()
        assert title in lines, self.summary
        below = lines[lines.index(title) + 1 :]
        return list(itertools.takewhile(lambda line: line.startswith("  "), below))


def rows(path: Path, key: str) -> dict[str, dict[str, str]]:
    with path.open() as file:
        return {row[key]: row for row in csv.DictReader(file)}


def locust(urls: list[str], tmp: Path, seconds: int, users: int) -> Run:
    """A headless run of the kit against the nodes at ``urls``."""
    manifest = tmp / "cluster.json"
    manifest.write_text(json.dumps({"nodes": [{"id": f"node{i}", "url": url}
                                              for i, url in enumerate(urls)]}))  # fmt: skip
    result = subprocess.run(
        [str(Path(sys.executable).parent / "locust"), "-f", str(ROOT / "loadtests/locustfile.py"),
         "--headless", "-u", str(users), "-r", str(users), "-t", f"{seconds}s",
         "--cluster", str(manifest), "--only-summary", "--csv", str(tmp / "stats")],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    stats, xcache = rows(tmp / "stats_stats.csv", "Name"), rows(tmp / "stats_xcache.csv", "Kind")
    return Run(result, stats, xcache)


@pytest.fixture(scope="module")
def run(cluster, tmp_path_factory) -> Run:
    """8 s of the whole mix against the cluster: the hot keys pass the read-lease threshold
    (10 reads/s of a key through a non-owner, the default) within about a second."""
    return locust(cluster.urls, tmp_path_factory.mktemp("locust"), seconds=8, users=12)


def test_a_short_headless_run_has_no_failures(run) -> None:
    assert run.result.returncode == 0, run.result.stderr[-3000:]
    assert int(run.stats["Aggregated"]["Request Count"]) > 100
    failed = {name: row["Failure Count"] for name, row in run.stats.items()
              if row["Failure Count"] != "0"}  # fmt: skip
    assert not failed, run.result.stderr[-3000:]


def test_not_found_precondition_failed_and_not_modified_are_entries_of_their_own(run) -> None:
    for name in ("GET [404]", "PUT (If-Match) [412]", "GET (If-None-Match) [304]"):
        assert name in run.stats, sorted(run.stats)
        assert int(run.stats[name]["Request Count"]) > 0
    assert set(run.stats) >= KINDS, sorted(run.stats)


def test_the_summary_gives_the_hit_ratio_and_the_hot_keys_get_replica_hits(run) -> None:
    ratio = re.search(r"^hit ratio: (\d+\.\d)% \(hit \+ replica\), replica share: (\d+\.\d)%$",
                      run.summary, re.MULTILINE)  # fmt: skip
    assert ratio, run.summary
    assert int(run.xcache["GET (hot key)"]["replica"]) > 0, run.summary
    kinds = [row for kind, row in run.xcache.items() if kind != "Aggregated"]
    counts = {cache: sum(int(row[cache]) for row in kinds) for cache in ("hit", "replica", "miss")}
    assert {cache: int(run.xcache["Aggregated"][cache]) for cache in counts} == counts
    printed = re.search(r"^X-Cache: hit=(\d+) replica=(\d+) miss=(\d+)", run.summary, re.MULTILINE)
    assert printed, run.summary
    assert [int(n) for n in printed.groups()] == list(counts.values())
    total = sum(counts.values())
    assert float(ratio[1]) == pytest.approx(100 * (total - counts["miss"]) / total, abs=0.05)
    assert float(ratio[2]) == pytest.approx(100 * counts["replica"] / total, abs=0.05)


def locusts_p99(run: Run) -> dict[str, int]:
    """The 99% column of the percentile table Locust prints at the end (on stderr)."""
    _, _, table = run.result.stderr.partition("Response time percentiles (approximated)")
    found = {}
    for line in table.splitlines()[3:]:
        if line.startswith("--------"):
            break
        words = line.split()  # type, name (may hold spaces), 11 percentiles, # reqs
        found[" ".join(words[1:-12])] = int(words[-5])
    return found


def test_the_summary_gives_p99_by_request_kind(run) -> None:
    lines = run.section("p50/p99 by request kind (ms):")
    printed = {}
    for line in lines[1:]:
        match = re.fullmatch(r"  (.+?) +(\d+) +(\d+) +(\d+) +(\d+)", line)
        assert match, line
        printed[match[1]] = int(match[5])
    assert set(printed) >= KINDS, lines
    assert printed == locusts_p99(run)


class Refusing(BaseHTTPRequestHandler):
    """Answers every request with one of 500, 503, 429 in turn."""

    statuses = itertools.cycle([500, 503, 429])

    def answer(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        body = b'{"error": {"code": "unavailable", "message": "refused"}}'
        self.send_response(next(self.statuses))
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_PUT = do_POST = do_DELETE = answer

    def log_message(self, *_: object) -> None:
        pass


@pytest.fixture
def refusing() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Refusing)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()


def test_5xx_and_429_stay_failures(refusing, tmp_path) -> None:
    run = locust([refusing], tmp_path, seconds=2, users=4)
    assert run.result.returncode == 1, run.result.stderr[-3000:]
    entries = {name: row for name, row in run.stats.items() if name != "Aggregated"}
    assert entries
    for name, row in entries.items():
        assert "[" not in name
        assert row["Failure Count"] == row["Request Count"], name
    assert "hit ratio: n/a" in run.summary
