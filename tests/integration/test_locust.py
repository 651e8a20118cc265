"""The Locust kit runs against a real cluster, bounded in time, with zero failures."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]


@pytest.mark.slow
def test_a_short_headless_locust_run_has_no_failures(cluster, tmp_path) -> None:
    manifest = tmp_path / "cluster.json"
    manifest.write_text(json.dumps({"nodes": [{"id": n.node_id, "url": n.url, "pid": n.pid}
                                              for n in cluster.nodes]}))  # fmt: skip
    locust = Path(sys.executable).parent / "locust"
    result = subprocess.run(
        [str(locust), "-f", str(ROOT / "loadtests" / "locustfile.py"), "--headless",
         "-u", "12", "-r", "12", "-t", "6s", "--cluster", str(manifest), "--only-summary",
         "--csv", str(tmp_path / "stats")],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    rows = (tmp_path / "stats_stats.csv").read_text().splitlines()
    header = rows[0].split(",")
    total = dict(zip(header, rows[-1].split(","), strict=True))
    assert total["Name"] == "Aggregated"
    assert int(total["Request Count"]) > 100
    assert int(total["Failure Count"]) == 0, result.stderr[-3000:]
