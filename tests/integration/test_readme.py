"""The README's snippets run as written, against a real cluster (only the node addresses
are those of the test's cluster), and its settings table names every setting (issue 14)."""

from __future__ import annotations

import dataclasses
import re
import shutil
import subprocess
import sys
from pathlib import Path

import orjson

from cachegrid.config import Config
from cachegrid.devcluster.servers import PortAllocator, bindable

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()
CACHEGRID = str(Path(sys.executable).parent / "cachegrid")


def snippets(heading: str, language: str) -> list[str]:
    """The fenced ``language`` blocks under the section titled ``heading`` (up to the next
    heading of any level; a ``#`` line inside a block is a comment, not a heading)."""
    found: list[str] = []
    inside, fence, lines = False, None, []
    for line in README.splitlines():
        if fence is not None:
            if line.startswith("```"):
                if fence == language:
                    found.append("\n".join(lines) + "\n")
                fence, lines = None, []
            else:
                lines.append(line)
        elif line.startswith("```"):
            fence = line[3:].strip() if inside else ""
        elif line.startswith("#"):
            inside = line == heading
    return found


def at(cluster, code: str) -> str:
    """``code`` with the README's node addresses replaced by the cluster's."""
    return (code.replace("http://127.0.0.1:24020", cluster.urls[0])
            .replace("http://127.0.0.1:24021", cluster.urls[1]))  # fmt: skip


def workdir(cluster, tmp_path: Path) -> Path:
    """A directory laid out as ``cachegrid up`` leaves it: .cluster/ with the manifest and
    the config."""
    (tmp_path / ".cluster").mkdir()
    (tmp_path / ".cluster" / "cluster.json").write_bytes(orjson.dumps(cluster.manifest()))
    shutil.copy(cluster.config, tmp_path / ".cluster" / "cachegrid.toml")
    return tmp_path


def run(command: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=60)


def test_the_settings_table_names_every_setting() -> None:
    for field in dataclasses.fields(Config):  # every section, each with every setting
        section, cls = field.name, type(getattr(Config(), field.name))
        row = next(line for line in README.splitlines() if line.startswith(f"| `[{section}]`"))
        listed = set(re.findall(r"`(\w+)`", row.split("|")[2]))
        assert listed == {f.name for f in dataclasses.fields(cls)}, section


def test_the_python_snippets_run_as_written(cluster, tmp_path: Path) -> None:
    code = [*snippets("### From Python: `cachegrid.Client`", "python"),
            *snippets("## The store", "python")]  # fmt: skip
    assert len(code) == 3
    cwd = workdir(cluster, tmp_path)
    for snippet in code:
        done = run([sys.executable, "-c", at(cluster, snippet)], cwd)
        assert done.returncode == 0, snippet + done.stderr[-2000:]
        assert done.stdout.strip(), snippet


def test_the_curl_session_runs_as_written(cluster, tmp_path: Path) -> None:
    (session,) = snippets("## Using it", "sh")
    done = run(["bash", "-c", at(cluster, session.replace(
        "N=http://127.0.0.1:24020", f"N={cluster.urls[0]}"))], tmp_path)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert '"key":"user:42"' in done.stdout
    assert "HTTP/1.1 5" not in done.stdout, done.stdout[-3000:]


def test_the_kv_session_runs_as_written(cluster, tmp_path: Path) -> None:
    (session,) = snippets("### From a shell: `cachegrid kv`", "sh")
    cwd = workdir(cluster, tmp_path)
    codes = []
    for line in session.splitlines():
        command = line.split("  #")[0].strip()
        if not command.startswith("cachegrid kv"):
            continue
        done = run(["bash", "-c", CACHEGRID + command.removeprefix("cachegrid")], cwd)
        assert "Traceback" not in done.stderr, command + done.stderr
        codes.append(done.returncode)
    # put, get, a CAS on an old version (2: precondition failed), delete, batch-get.
    assert codes[:4] == [0, 0, 2, 0], codes
    assert codes[4] in (0, 1), codes


def test_the_secure_session_runs_as_written(ports: PortAllocator, tmp_path: Path) -> None:
    """ "Running it securely": cachegrid up --secure, then curl, kv and admin with the CA
    and tokens it wrote (only the base port is the test's)."""
    (session,) = snippets("## Running it securely", "sh")
    base = next(p for p in iter(ports.take, None)
                if p + 30 < 32768 and all(bindable(p + i) for i in range(30)))  # fmt: skip
    script = (session.replace("--base-port 25000", f"--base-port {base}")
              .replace("https://127.0.0.1:25020", f"https://127.0.0.1:{base + 20}")
              .replace("cachegrid ", f"{CACHEGRID} "))  # fmt: skip
    done = run(["bash", "-c", script + "kill %1\nwait\n"], tmp_path)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    # curl's answer (no newline after it), then cachegrid kv get k's value, among the
    # lines cachegrid up prints; then the status table.
    assert re.search(r'\{"key":"k","version":"[\d.]+"\}\n?1\n', done.stdout), done.stdout
    lines = done.stdout.splitlines()
    assert sum(re.match(r"node\d\s+serving ", line) is not None for line in lines) == 3, lines
