"""Configuration: precedence, coercion, and validation that reports every problem."""

from pathlib import Path

import pytest

from cachegrid.config import Config, ConfigError, load

SHIPPED = Path(__file__).parents[2] / "config" / "cachegrid.toml"


def test_shipped_file_is_valid_and_states_the_defaults() -> None:
    assert load(SHIPPED, environ={}) == Config()


def test_environment_overrides_file_and_flags_override_environment(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[store]\ntimeout = 2.0\nreplicas = ["h:1", "h:2", "h:3"]\n'
                    "[node]\nforward_timeout = 4.0\nhandoff_hold = 4.0\n")  # fmt: skip
    env = {"CACHEGRID_STORE_TIMEOUT": "0.25", "CACHEGRID_STORE_REPLICAS": "a:1, b:2,c:3"}
    config = load(path, environ=env, overrides={"store.max_in_flight": 8})
    assert config.store.timeout == 0.25
    assert config.store.replicas == ("a:1", "b:2", "c:3")
    assert config.store.max_in_flight == 8
    assert load(path, environ={}).store.timeout == 2.0


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text(
        '[store]\ntimeout = -1\nreplicas = ["nope", "a:1", "a:1"]\nappendfsync = "no"\n'
        "max_in_flight = 1.5\ncolour = 3\n[etc]\nx = 1\n"
    )
    with pytest.raises(ConfigError) as error:
        load(path, environ={"CACHEGRID_ETCD_PREFIX": "bad/"})
    assert sorted(error.value.problems) == sorted(
        [
            "store.replicas: 'nope' is not host:port",
            "store.replicas: a replica is listed twice",
            "store.timeout: must be > 0",
            "store.appendfsync: must be 'everysec' or 'always'",
            "store.max_in_flight: must be an integer, not 1.5",
            "store.colour: unknown setting",
            "etc: unknown section (known: etcd, store, node, security)",
            "etcd.prefix: must start with '/' and not end with '/'",
        ]
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [("[store\n", "not valid TOML"), ("store = 3\n", "store: must be a table")],
)
def test_malformed_files_are_reported(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "c.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load(path, environ={})


def test_a_missing_file_is_reported(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load(tmp_path / "absent.toml", environ={})


def test_numbers_from_the_environment_must_parse() -> None:
    with pytest.raises(ConfigError, match=r"store.timeout: must be a number, not 'soon'"):
        load(environ={"CACHEGRID_STORE_TIMEOUT": "soon"})


def test_the_default_node_id_never_collides_across_hosts(monkeypatch: pytest.MonkeyPatch) -> None:
    """On loopback (one host) the port suffices; elsewhere the host name is part of it, so
    two hosts with the same config and port do not share an id (issue 10)."""
    import socket

    monkeypatch.setattr(socket, "gethostname", lambda: "metadata-7")
    assert load(overrides={"node.listen": "127.0.0.1:8000"}).node.node_id == "node-8000"
    assert load(overrides={"node.listen": "0.0.0.0:8000"}).node.node_id == "metadata-7-8000"
    assert load(overrides={"node.listen": "0.0.0.0:8000", "node.id": "a"}).node.node_id == "a"


def test_read_lease_settings_are_checked_against_the_deadlines_they_must_fit() -> None:
    """A write of a leased key may wait out a dead holder (term + margin) before the store:
    forwards and handoff holds must outlast that; terms must fit the node's own lease."""
    config = load(None, environ={"CACHEGRID_NODE_READ_LEASE_THRESHOLD": "50"})
    assert (config.node.read_lease_threshold, config.node.read_lease_ttl) == (50.0, 1.0)
    with pytest.raises(ConfigError) as error:
        load(
            None, environ={}, overrides={"node.read_lease_ttl": 3.0, "node.read_lease_margin": 0.01}
        )
    assert sorted(p.split(":")[0] for p in error.value.problems) == [
        "node.forward_timeout", "node.handoff_hold", "node.read_lease_margin",
        "node.read_lease_ttl",
    ]  # fmt: skip
    off = load(None, environ={}, overrides={"node.read_lease_threshold": 0,
                                            "store.timeout": 5.0})  # fmt: skip
    assert off.node.read_lease_threshold == 0
