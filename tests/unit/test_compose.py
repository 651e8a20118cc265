"""docker-compose.yml agrees with itself and with the node's configuration.

There is no Docker engine on the development machine, so the file cannot be run here; these
checks catch what would break it: a node configured with an unknown setting or a wrong
address, an etcd member missing from the initial cluster, a replica without AOF, a mounted
file that is not in the repository, Prometheus scraping something other than the nodes.
"""

import json
import re
import tomllib
from pathlib import Path

import yaml

from cachegrid import config
from cachegrid.cli import main as cli
from cachegrid.devcluster.secure import Secrets
from cachegrid.http.api import OPS_ROUTES

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


# -- monitoring: Prometheus and Grafana (docs/monitoring.md) --------------------------------


def mounts(service: dict) -> dict[str, Path]:
    """A service's bind mounts: the path in the container -> the file or directory here."""
    found = {}
    for volume in service.get("volumes", []):
        source, target = str(volume).split(":")[:2]
        if source.startswith("./"):
            found[target] = ROOT / source
    return found


def container_port(service: dict) -> str:
    (mapping,) = service["ports"]
    return str(mapping).rpartition(":")[2]


def test_every_mounted_file_is_in_the_repository() -> None:
    """A bind mount of a missing path would start the service with an empty directory."""
    for name, service in services().items():
        for target, source in mounts(service).items():
            assert source.exists(), f"{name}: {source} (mounted at {target}) does not exist"


def test_prometheus_scrapes_every_node_on_its_listen_port() -> None:
    """The scrape targets are exactly the node services, each on the port it listens on,
    at the path the node serves its metrics on."""
    prometheus = services()["prometheus"]
    config_file = mounts(prometheus)["/etc/prometheus/prometheus.yml"]
    jobs = yaml.safe_load(config_file.read_text())["scrape_configs"]
    targets = [t for job in jobs for group in job["static_configs"] for t in group["targets"]]
    listening = set()
    for name, node in of_kind("node").items():
        environ = {key: interpolated(value) for key, value in node["environment"].items()}
        listening.add(f"{name}:{config.load(None, environ=environ).node.listen.rpartition(':')[2]}")
    assert sorted(targets) == sorted(listening)
    assert {job.get("metrics_path", "/metrics") for job in jobs} == {"/metrics"}
    assert "/metrics" in OPS_ROUTES
    assert set(prometheus["depends_on"]) == set(of_kind("node"))
    assert container_port(prometheus) == "9090"


def test_prometheus_loads_the_alert_rules_it_is_given() -> None:
    """Every rule file the configuration names (relative to its own directory) is mounted
    from a file here that holds rule groups."""
    prometheus = services()["prometheus"]
    mounted = mounts(prometheus)
    rule_files = yaml.safe_load(mounted["/etc/prometheus/prometheus.yml"].read_text())["rule_files"]
    assert rule_files
    for rule_file in rule_files:
        source = mounted[str(Path("/etc/prometheus") / rule_file)]
        assert yaml.safe_load(source.read_text())["groups"], source


def test_grafana_reads_prometheus_and_provisions_the_dashboard() -> None:
    """Grafana's data source is the prometheus service on its port; the dashboard provider
    reads a mounted directory holding the dashboard, which is also the home dashboard; and
    anonymous visitors may view, not edit."""
    grafana = services()["grafana"]
    mounted = mounts(grafana)
    provisioning = mounted["/etc/grafana/provisioning"]
    datasources = yaml.safe_load((provisioning / "datasources/prometheus.yml").read_text())
    (source,) = datasources["datasources"]
    assert source["type"] == "prometheus"
    assert source["url"] == f"http://prometheus:{container_port(services()['prometheus'])}"
    providers = yaml.safe_load((provisioning / "dashboards/cachegrid.yml").read_text())
    (provider,) = providers["providers"]
    dashboards = mounted[provider["options"]["path"]]
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert Path(home).parent == Path(provider["options"]["path"])
    assert json.loads((dashboards / Path(home).name).read_text())["uid"] == "cachegrid"
    assert grafana["environment"]["GF_AUTH_ANONYMOUS_ENABLED"] == "true"
    assert grafana["environment"]["GF_AUTH_ANONYMOUS_ORG_ROLE"] == "Viewer"
    assert set(grafana["depends_on"]) == {"prometheus"}
    assert container_port(grafana) == "3000"


# -- the secure variant: docker-compose.secure.yml, on top of the base file ----------------


def secure_services() -> dict[str, dict]:
    document = yaml.safe_load((ROOT / "docker-compose.secure.yml").read_text())
    return document["services"]


def required(value: str) -> str:
    """Compose's ${VAR:?message}, with VAR set (to a stand-in token)."""
    return re.sub(r"\$\{([A-Z_]+):\?[^}]*\}", r"stand-in-\1", str(value))


def tls_paths(value: object) -> set[str]:
    return set(re.findall(r"/tls/[\w.-]+", json.dumps(value)))


def test_the_secure_variant_only_adds_to_services_of_the_base_file() -> None:
    assert set(secure_services()) <= set(services())
    for name, service in secure_services().items():
        if "volumes" in service:
            assert "./tls:/tls:ro" in service["volumes"], name


def test_the_secure_variant_uses_only_files_cachegrid_secrets_makes(tmp_path: Path) -> None:
    made = Secrets.create(tmp_path)
    names = {path.name for path in tmp_path.iterdir()}
    for name, service in secure_services().items():
        for path in tls_paths(service):
            assert path.removeprefix("/tls/") in names, f"{name}: {path}"
    assert made.cert.name == "node.pem"


def test_secure_nodes_are_configured_validly_for_tls_everywhere(tmp_path: Path) -> None:
    Secrets.create(tmp_path)
    for name, node in of_kind("node").items():
        secure = secure_services()[name]["environment"]
        environ = {key: interpolated(required(value)).replace("/tls/", f"{tmp_path}/")
                   for key, value in {**node["environment"], **secure}.items()}  # fmt: skip
        settings = config.load(None, environ=environ)  # raises ConfigError on any problem
        security = settings.security
        assert security.tls
        assert security.store_tls
        assert security.etcd_tls
        assert security.store_user == "cachegrid"
        assert security.store_password_file
        assert security.write_tokens == ("stand-in-CACHEGRID_WRITE_TOKEN",)


def test_secure_replicas_and_etcd_serve_tls_only_with_client_certificates() -> None:
    ports = {f"{r}:6379" for r in of_kind("redis")}
    for name in of_kind("redis"):
        command = secure_services()[name]["command"]
        assert flag(command, "--port") == "0"  # no plain port
        assert f"{name}:{flag(command, '--tls-port')}" in ports
        assert flag(command, "--tls-auth-clients") == "yes"
        assert flag(command, "--aclfile") == "/tls/users.acl"
        assert flag(command, "--appendonly") == "yes"
    for name in of_kind("etcd"):
        service = secure_services()[name]
        assert flag(service["command"], "--advertise-client-urls") == f"https://{name}:2379"
        assert service["environment"]["ETCD_LISTEN_CLIENT_URLS"].startswith("https://")
        assert service["environment"]["ETCD_CLIENT_CERT_AUTH"] == "true"
