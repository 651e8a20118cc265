"""deploy/kubernetes/ is valid Kubernetes and agrees with the node's code.

No cluster is needed: every object is validated offline against the schemas that
kubernetes-validate bundles for a pinned Kubernetes version, in strict mode (unknown fields
are errors). The rest checks what a schema cannot: the node's environment, as the pod would
see it, names only real settings (from the dataclasses of config.py) and loads and validates;
the node id is the pod name and the advertised address the pod's stable name at the listen
port; probes ask routes the node serves; Services and the PodDisruptionBudget select the
StatefulSet's pods; the memory limit covers the documented envelope of the settings; the
grace period covers a graceful stop (the coordinator's own bounds); the pod runs as non-root.
"""

import dataclasses
import re
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from cachegrid import config
from cachegrid.cli import main as cli
from cachegrid.coord.coordinator import LEAVE_GRACE, STOP_GRACE
from cachegrid.http.api import OPS_ROUTES

ROOT = Path(__file__).parents[2]
MANIFESTS = ROOT / "deploy" / "kubernetes"
# The oldest schema set every kubernetes-validate the project allows (>=1.30) bundles.
KUBERNETES = "1.30.0"
MiB = 1 << 20
# docs/performance.md, "Sizing a node": the baseline, what read leases may hold at most, and
# what an open connection holds ("a few KiB").
BASELINE = 66 * MiB
READ_LEASES = 30 * MiB
CONNECTION = 4 << 10
# Stand-ins for what the kubelet fills in (downward API, Secret).
POD = {"metadata.name": "cachegrid-1", "metadata.namespace": "caching"}
SECRET = "a-token"
QUANTITY = {"": 1, "Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30, "k": 10**3, "M": 10**6, "G": 10**9}

Manifest = dict[str, Any]


def manifests() -> list[Manifest]:
    found = []
    for path in sorted(MANIFESTS.glob("*.yaml")):
        found += [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
    return found


def of_kind(kind: str) -> list[Manifest]:
    return [m for m in manifests() if m["kind"] == kind]


def statefulset() -> Manifest:
    (found,) = of_kind("StatefulSet")
    return found


def pod_spec() -> Manifest:
    spec: Manifest = statefulset()["spec"]["template"]["spec"]
    return spec


def container() -> Manifest:
    (found,) = [c for c in pod_spec()["containers"] if c["name"] == "node"]
    return found


def pod_labels() -> dict[str, str]:
    labels: dict[str, str] = statefulset()["spec"]["template"]["metadata"]["labels"]
    return labels


def setting_variables() -> set[str]:
    """CACHEGRID_<SECTION>_<SETTING> of every field of every section of config.Config."""
    sections = {s.name: getattr(config.Config(), s.name) for s in dataclasses.fields(config.Config)}
    return {
        f"{config.ENV_PREFIX}{section.upper()}_{field.name.upper()}"
        for section, defaults in sections.items()
        for field in dataclasses.fields(defaults)
    }


def expanded(value: str, environ: dict[str, str]) -> str:
    """Kubernetes' $(VAR) expansion: earlier variables only; unknown ones stay as written."""
    return re.sub(r"\$\((\w+)\)", lambda m: environ.get(m[1], m[0]), value)


def value_of(variable: Manifest, environ: dict[str, str]) -> str:
    if "value" in variable:
        return expanded(str(variable["value"]), environ)
    source = variable["valueFrom"]
    if "fieldRef" in source:
        return POD[source["fieldRef"]["fieldPath"]]
    assert "secretKeyRef" in source, f"{variable['name']}: unexpected source {source}"
    return SECRET


def environment() -> dict[str, str]:
    """The node container's environment, as the pod named POD would see it."""
    maps = {m["metadata"]["name"]: m["data"] for m in of_kind("ConfigMap")}
    environ: dict[str, str] = {}
    for source in container().get("envFrom", []):
        environ.update(maps[source["configMapRef"]["name"]])
    for variable in container()["env"]:
        environ[variable["name"]] = value_of(variable, environ)
    return environ


def settings() -> config.Config:
    return config.load(None, environ=environment())  # ConfigError names every problem


def port_of(address: str) -> int:
    return int(address.rpartition(":")[2])


def container_port(name_or_number: str | int) -> int:
    """A port as a probe or a Service names it, resolved against the container's ports."""
    ports = {p.get("name"): p["containerPort"] for p in container()["ports"]}
    if isinstance(name_or_number, int):
        assert name_or_number in ports.values()
        return name_or_number
    port: int = ports[name_or_number]
    return port


def quantity(text: str) -> int:
    match = re.fullmatch(r"(\d+)([A-Za-z]*)", text)
    assert match is not None, text
    return int(match[1]) * QUANTITY[match[2]]


def name_of(manifest: Manifest) -> str:
    return f"{manifest['kind']}/{manifest['metadata']['name']}"


@pytest.mark.parametrize("manifest", manifests(), ids=name_of)
def test_every_manifest_is_valid_kubernetes_in_strict_mode(manifest: Manifest) -> None:
    try:
        version = kubernetes_validate.validate(manifest, KUBERNETES, strict=True)
    except kubernetes_validate.ValidationError as error:
        where = ".".join(map(str, error.path))
        raise AssertionError(f"{name_of(manifest)} at {where}: {error.message}") from None
    assert version == KUBERNETES.rpartition(".")[0]  # that schema set, not a fallback


def test_the_manifests_hold_the_cache_nodes_and_nothing_else() -> None:
    kinds = sorted(m["kind"] for m in manifests())
    assert kinds == ["ConfigMap", "PodDisruptionBudget", "Service", "Service", "StatefulSet"]


def test_every_cachegrid_variable_names_a_setting() -> None:
    maps = {m["metadata"]["name"] for m in of_kind("ConfigMap")}
    assert {s["configMapRef"]["name"] for s in container()["envFrom"]} == maps  # all checked
    known = setting_variables()
    assert "CACHEGRID_NODE_ADMIN_TOKEN" in known  # the derivation itself works
    unknown = sorted(v for v in environment() if v.startswith("CACHEGRID_") and v not in known)
    assert unknown == []


def test_the_node_configuration_loads_and_validates() -> None:
    loaded = settings()
    assert loaded.node.node_id == POD["metadata.name"]
    assert loaded.node.admin_token == SECRET
    assert loaded.etcd.endpoints
    assert loaded.store.replicas


def test_service_links_are_off_because_the_node_refuses_unknown_variables() -> None:
    assert pod_spec()["enableServiceLinks"] is False
    service_link = {"CACHEGRID_SERVICE_HOST": "10.0.0.1"}  # what the Service would add
    with pytest.raises(config.ConfigError):
        config.load(None, environ={**environment(), **service_link})


def test_the_node_advertises_its_stable_name_at_the_listen_port() -> None:
    (headless,) = [s for s in of_kind("Service") if s["spec"].get("clusterIP") == "None"]
    assert statefulset()["spec"]["serviceName"] == headless["metadata"]["name"]
    assert headless["spec"]["publishNotReadyAddresses"] is True
    node = settings().node
    host = f"{POD['metadata.name']}.{headless['metadata']['name']}.{POD['metadata.namespace']}"
    assert node.advertised == f"{host}.svc:{port_of(node.listen)}"


def test_the_container_port_is_the_listen_port() -> None:
    listen = port_of(settings().node.listen)
    assert container_port("http") == listen
    for service in of_kind("Service"):
        for port in service["spec"]["ports"]:
            assert container_port(port["targetPort"]) == listen, name_of(service)


def test_the_probes_ask_routes_the_node_serves() -> None:
    paths = {"readinessProbe": "/readyz", "livenessProbe": "/healthz", "startupProbe": "/healthz"}
    listen = port_of(settings().node.listen)
    for probe, path in paths.items():
        request = container()[probe]["httpGet"]
        assert request["path"] == path, probe
        assert "GET" in OPS_ROUTES[path], probe
        assert container_port(request["port"]) == listen, probe


def test_services_and_the_disruption_budget_select_the_nodes() -> None:
    labels = pod_labels().items()
    assert statefulset()["spec"]["selector"]["matchLabels"].items() <= labels
    for service in of_kind("Service"):
        assert service["spec"]["selector"].items() <= labels, name_of(service)
    (budget,) = of_kind("PodDisruptionBudget")
    assert budget["spec"]["selector"]["matchLabels"].items() <= labels
    assert budget["spec"]["maxUnavailable"] == 1


def test_the_memory_limit_covers_the_documented_envelope() -> None:
    sizing = " ".join((ROOT / "docs" / "performance.md").read_text().split())
    # The figures above are still the documented ones.
    assert "baseline (66 MiB" in sizing
    assert "about 30 MiB at most" in sizing
    assert "connection holds a few KiB" in sizing
    node = settings().node
    envelope = BASELINE + node.cache_max_bytes + node.max_bytes_in_flight + READ_LEASES
    envelope += node.max_connections * CONNECTION
    resources = container()["resources"]
    assert quantity(resources["limits"]["memory"]) >= envelope
    assert quantity(resources["requests"]["memory"]) >= envelope


def test_the_grace_period_covers_a_graceful_stop() -> None:
    pre_stop = container()["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    # Then SIGTERM: release, loops ended, lease revoked; and the forwards in flight.
    stop = int(pre_stop[1]) + LEAVE_GRACE + STOP_GRACE + settings().node.forward_timeout
    assert pod_spec()["terminationGracePeriodSeconds"] >= stop


def test_the_pod_runs_as_non_root_without_privileges() -> None:
    pod = pod_spec()["securityContext"]
    assert pod["runAsNonRoot"] is True
    assert pod["runAsUser"] > 0
    own = container()["securityContext"]
    assert own["allowPrivilegeEscalation"] is False
    assert own["capabilities"]["drop"] == ["ALL"]


def test_the_admin_token_comes_from_a_secret() -> None:
    (token,) = [v for v in container()["env"] if v["name"] == "CACHEGRID_NODE_ADMIN_TOKEN"]
    assert "secretKeyRef" in token["valueFrom"]


def test_the_container_runs_the_node_command() -> None:
    args = container()["args"]
    assert "command" not in container()  # the image's entrypoint, cachegrid
    command = cli.main.get_command(None, args[0])  # type: ignore[arg-type]
    assert command is not None
    assert command.name == "node"
    command.make_context(args[0], args[1:])  # parses, or raises
