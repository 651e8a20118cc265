"""The layers of docs/architecture.md, checked on the source: imports go one way only."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src"

# Each layer, and what of the other layers it may import (module-name prefixes). Leaves
# are the top-level modules not listed here; store/record.py holds value types only.
LAYERS = {
    "cachegrid.store": (),
    "cachegrid.coord": (),
    "cachegrid.serving": ("cachegrid.store.record",),
    "cachegrid.http": ("cachegrid.serving", "cachegrid.store.record"),
}
FORBIDDEN_EVERYWHERE_BUT_APP = ("cachegrid.store.quorum", "cachegrid.store.replica")


def imports_of(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return names


def modules() -> dict[str, set[str]]:
    found = {}
    for path in sorted(SRC.rglob("*.py")):
        name = ".".join(path.relative_to(SRC).with_suffix("").parts).removesuffix(".__init__")
        found[name] = imports_of(path)
    return found


def layer_of(module: str) -> str | None:
    return next((layer for layer in LAYERS if module.startswith(layer)), None)


@pytest.mark.parametrize("module", sorted(modules()))
def test_imports_go_down_the_layers_only(module: str) -> None:
    own = layer_of(module)
    for name in modules()[module]:
        other = layer_of(name)
        if own is not None and other is not None and other != own:
            assert name.startswith(LAYERS[own]), f"{module} imports {name}: {own} may not"
        if own == "cachegrid.serving":
            assert name.split(".")[0] not in ("aiohttp", "redis", "aetcd"), (module, name)
        if module.startswith(("cachegrid.http", "cachegrid.serving", "cachegrid.coord")):
            assert name not in FORBIDDEN_EVERYWHERE_BUT_APP, (module, name)


def test_only_the_composition_root_meets_both_etcd_and_redis() -> None:
    both = [
        module
        for module, names in modules().items()
        if any(n.startswith("cachegrid.coord") for n in names)
        and any(n.startswith(FORBIDDEN_EVERYWHERE_BUT_APP) for n in names)
    ]
    assert both == ["cachegrid.app"]


def test_importing_cachegrid_or_a_record_loads_no_server_side_library() -> None:
    probe = (
        "import sys, cachegrid, cachegrid.store.record, cachegrid.serving.ports\n"
        "print(' '.join(m for m in sys.modules if m.split('.')[0] in "
        "('redis', 'aetcd', 'aiohttp', 'tenacity', 'grpc')))"
    )
    loaded = subprocess.run([sys.executable, "-c", probe], check=True, capture_output=True,
                            text=True).stdout.split()  # fmt: skip
    assert loaded == []


def test_nothing_in_the_product_is_test_tooling() -> None:
    assert not (SRC / "cachegrid" / "proof").exists()
    for module, names in modules().items():
        assert not any(n.startswith("tests") for n in names), module
