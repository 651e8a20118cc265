"""docker-compose.yml agrees with itself and with the node's configuration.

There is no Docker engine on the development machine, so the file cannot be run here; these
checks catch what would break it: a node configured with an unknown setting or a wrong
address, an etcd member missing from the initial cluster, a replica without AOF.
"""

import re
import tomllib
from pathlib import Path

import yaml

from cachegrid import config
from cachegrid.cli import main as cli

ROOT = Path(__file__).parents[2]


def services() -> dict[str, dict]:
    document = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return document["services"]


def of_kind(prefix: str) -> dict[str, dict]:
    return {name: s for name, s in services().items() if re.fullmatch(prefix + r"\d+", name)}


def flag(command: list[str], name: str) -> str:
    return command[command.index(name) + 1]


def interpolated(value: str) -> str:
    """Compose's ${VAR:-default}, with VAR unset."""
    return re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", str(value))


def test_the_cluster_has_three_of_each() -> None:
    assert (len(of_kind("etcd")), len(of_kind("redis")), len(of_kind("node"))) == (3, 3, 3)


def test_every_etcd_member_is_in_the_initial_cluster_under_its_own_name() -> None:
    members = of_kind("etcd")
    for name, member in members.items():
        initial = dict(
            entry.split("=") for entry in member["environment"]["ETCD_INITIAL_CLUSTER"].split(",")
        )
        assert initial == {m: f"http://{m}:2380" for m in members}
        command = member["command"]
        assert flag(command, "--name") == name
        assert flag(command, "--initial-advertise-peer-urls") == f"http://{name}:2380"
        assert flag(command, "--advertise-client-urls") == f"http://{name}:2379"


def test_every_replica_keeps_an_append_only_file() -> None:
    for replica in of_kind("redis").values():
        command = replica["command"]
        assert flag(command, "--appendonly") == "yes"
        assert flag(command, "--appendfsync") in ("everysec", "always")
        assert any(str(v).endswith(":/data") for v in replica["volumes"])


def test_every_node_configuration_is_valid_and_points_at_the_cluster() -> None:
    ids = set()
    for name, node in of_kind("node").items():
        environ = {key: interpolated(value) for key, value in node["environment"].items()}
        settings = config.load(None, environ=environ)  # raises ConfigError on any problem
        assert set(settings.etcd.endpoints) == {f"{m}:2379" for m in of_kind("etcd")}
        assert set(settings.store.replicas) == {f"{r}:6379" for r in of_kind("redis")}
        port = settings.node.listen.rpartition(":")[2]
        assert settings.node.advertised == f"{name}:{port}"
        assert any(mapping.endswith(f":{port}") for mapping in node["ports"])
        assert set(node["depends_on"]) == {*of_kind("etcd"), *of_kind("redis")}
        ids.add(settings.node.node_id)
        command = cli.main.get_command(None, node["command"][0])  # type: ignore[arg-type]
        assert command is not None
        command.make_context(node["command"][0], node["command"][1:])  # parses, or raises
    assert len(ids) == 3


def test_the_image_gets_what_the_package_needs() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["readme"] in dockerfile
    assert "COPY src ./src" in dockerfile
    assert 'ENTRYPOINT ["cachegrid"]' in dockerfile
