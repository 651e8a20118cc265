"""Run coordination agents (tests/agents/coord_agent.py) as processes and read their logs."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from cachegrid.clock import now
from tests.s1 import covered, read_log, violations

ROOT = Path(__file__).parents[2]


class Agents:
    def __init__(self, tmp_path: Path, etcd: list[str], *, ttl: int = 2, keys: int = 128) -> None:
        self.dir = tmp_path / "agents"
        self.dir.mkdir(exist_ok=True)
        self.etcd = etcd
        self.ttl = ttl
        self.keys = keys
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.paused: set[str] = set()

    def start(self, node: str) -> None:
        command = [sys.executable, "-m", "tests.agents.coord_agent", "--etcd", ",".join(self.etcd),
                   "--node-id", node, "--log", str(self.dir / f"{node}.jsonl"),
                   "--ttl", str(self.ttl), "--keys", str(self.keys)]  # fmt: skip
        with (self.dir / f"{node}.out").open("ab") as out:
            self.procs[node] = subprocess.Popen(
                command, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT
            )

    def kill(self, node: str) -> float:
        self.procs[node].kill()
        self.procs.pop(node).wait()
        self.paused.discard(node)
        return now()

    def stop(self, node: str) -> None:
        proc = self.procs.pop(node)
        proc.send_signal(signal.SIGCONT)
        proc.terminate()
        proc.wait(15)
        self.paused.discard(node)

    def pause(self, node: str) -> None:
        os.kill(self.procs[node].pid, signal.SIGSTOP)
        self.paused.add(node)

    def resume(self, node: str) -> None:
        os.kill(self.procs[node].pid, signal.SIGCONT)
        self.paused.discard(node)

    def logs(self) -> dict[str, list[dict]]:
        return {path.stem: read_log(path) for path in self.dir.glob("*.jsonl")}

    def serving(self) -> dict[str, list[dict]]:
        """Logs of the agents running and not paused (whose latest record is current)."""
        logs = self.logs()
        return {n: logs.get(n, []) for n in self.procs if n not in self.paused}

    def violations(self) -> list[str]:
        return violations(self.logs(), now=now())

    def covered(self) -> bool:
        return covered(self.serving(), self.keys)

    def wait_until(self, condition: Callable[[], bool], timeout: float, what: str) -> float:
        """Poll ``condition``; the time (lease clock) it first held. AssertionError on timeout."""
        deadline = now() + timeout
        while not condition():
            for node, proc in self.procs.items():
                assert proc.poll() is None, f"agent {node} died:\n{self.output(node)}"
            assert now() < deadline, f"not {what} within {timeout}s: {self.state()}"
            time.sleep(0.05)
        return now()

    def state(self) -> str:
        """The latest record of each agent, and the end of its output, for failure messages."""
        lines = []
        for node, records in self.logs().items():
            last = records[-1] if records else {}
            lines.append(f"{node}: {len(last.get('active', []))} keys, record {last}")
            lines.append(self.output(node)[-600:])
        return "\n".join(lines)

    def output(self, node: str) -> str:
        path = self.dir / f"{node}.out"
        return path.read_text(errors="replace")[-3000:] if path.exists() else ""

    def close(self) -> None:
        for proc in self.procs.values():
            proc.kill()
            proc.wait()
        self.procs.clear()


def random_faults(agents: Agents, nodes: list[str], seconds: float, seed: int) -> list[str]:
    """Random kills, restarts, pauses (short and past the lease) and graceful stops."""
    rng = random.Random(seed)
    actions: list[str] = []
    end = now() + seconds
    while now() < end:
        node = rng.choice(nodes)
        running = node in agents.procs
        if not running:
            agents.start(node)
            actions.append(f"start {node}")
        elif node in agents.paused:
            agents.resume(node)
            actions.append(f"resume {node}")
        else:
            action = rng.choice(["kill", "pause", "stop", "none"])
            if action == "kill":
                agents.kill(node)
            elif action == "pause":
                agents.pause(node)
            elif action == "stop":
                agents.stop(node)
            actions.append(f"{action} {node}")
        time.sleep(rng.uniform(0.2, agents.ttl + 1.0))
    return actions
