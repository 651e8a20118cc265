"""What ``cachegrid up --secure`` generates: a CA, a certificate for the nodes, tokens.

Owns: the files under ``<data-dir>/tls/``: ``ca.pem`` (the CA certificate clients and
nodes trust), ``node.pem`` and ``node-key.pem`` (one certificate for every server of the
local cluster, nodes and replicas, valid for 127.0.0.1 and localhost, issued by that CA),
``tokens.json`` (one random token per scope: read, write, admin, peer), read by the nodes
through ``security.tokens_file``, and the replicas' ACL (``users.acl``: the default user
off, one user for the nodes with a random password, kept in ``store-password``); and, on
a running etcd, its authentication (``etcd_rbac``: the nodes' certificate names their
user, whose role reads and writes under the cluster's prefix only).

Invariants:
- Certificates come from ``trustme`` (built on ``cryptography``): nothing hand-rolled.
- The private key, the tokens, the password and the ACL are readable by their owner only
  (0600).
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
from dataclasses import dataclass
from pathlib import Path

import trustme

SCOPES = ("read", "write", "admin", "peer")


# The etcd user the nodes are (etcd takes it from their certificate's CN), and its role:
# read and write under the cluster's prefix, nothing else.
ETCD_USER = "cachegrid"

# The ACL user nodes reach the replicas as, and what it may do: the commands cachegrid
# sends (its Lua scripts' included), on its own keys only; the default user is off.
STORE_USER = "cachegrid"
# (Not CONFIG GET: it would show every setting; a node then assumes appendfsync everysec,
# the weaker policy, for what it decides on the replicas' durability.)
STORE_RULES = ("~cg:* ~cg-meta:* resetchannels -@all +ping +hello +auth "
               "+info +get +set +del +hmget +hset +evalsha +script|load +scan")  # fmt: skip


@dataclass(frozen=True)
class Secrets:
    directory: Path
    tokens: dict[str, str]  # scope -> token
    store_password: str

    @property
    def ca(self) -> Path:
        return self.directory / "ca.pem"

    @property
    def cert(self) -> Path:
        return self.directory / "node.pem"

    @property
    def key(self) -> Path:
        return self.directory / "node-key.pem"

    @property
    def tokens_file(self) -> Path:
        return self.directory / "tokens.json"

    @classmethod
    def create(cls, directory: Path,
               hosts: tuple[str, ...] = ("127.0.0.1", "localhost")) -> Secrets:  # fmt: skip
        """A new CA, a certificate for ``hosts`` and tokens, written under ``directory``."""
        directory.mkdir(parents=True, exist_ok=True)
        made = cls(directory, {scope: secrets.token_urlsafe(24) for scope in SCOPES},
                   secrets.token_urlsafe(24))  # fmt: skip
        authority = trustme.CA(organization_name="cachegrid local cluster")
        issued = authority.issue_cert(*hosts, common_name=ETCD_USER)
        authority.cert_pem.write_to_path(str(made.ca))
        issued.cert_chain_pems[0].write_to_path(str(made.cert))
        for extra in issued.cert_chain_pems[1:]:
            extra.write_to_path(str(made.cert), append=True)
        private(made.key, issued.private_key_pem.bytes())
        private(made.tokens_file, json.dumps(made.tokens).encode())
        private(made.store_password_file, made.store_password.encode())
        private(made.acl_file, (f"user default off\nuser {STORE_USER} on "
                                 f">{made.store_password} {STORE_RULES}\n").encode())  # fmt: skip
        return made

    @property
    def store_password_file(self) -> Path:
        return self.directory / "store-password"

    @property
    def acl_file(self) -> Path:
        """The replicas' ACL (redis-server --aclfile)."""
        return self.directory / "users.acl"

    def etcd_rbac(self, endpoint: str, prefix: str) -> None:
        """Turn on etcd's authentication with one role: read and write under ``prefix``,
        for the user named by the nodes' certificate. (Before auth is on, any client with
        a certificate may do this; after, the nodes may touch nothing else.)"""
        etcdctl = ["etcdctl", "--endpoints", endpoint, "--cacert", str(self.ca),
                   "--cert", str(self.cert), "--key", str(self.key)]  # fmt: skip
        environment = {"ETCDCTL_API": "3", "PATH": os.environ.get("PATH", "")}
        for command in (  # users without passwords: only a certificate's CN names them
            ["user", "add", "root", "--no-password"], ["user", "grant-role", "root", "root"],
            ["role", "add", ETCD_USER],
            ["role", "grant-permission", ETCD_USER, "--prefix=true", "readwrite", f"{prefix}/"],
            ["user", "add", ETCD_USER, "--no-password"],
            ["user", "grant-role", ETCD_USER, ETCD_USER], ["auth", "enable"],
        ):  # fmt: skip
            subprocess.run([*etcdctl, *command], check=True, capture_output=True, timeout=10,
                           env=environment)  # fmt: skip

    def config_toml(self) -> str:
        return (f'[security]\ncert = "{self.cert}"\nkey = "{self.key}"\nca = "{self.ca}"\n'
                f'tokens_file = "{self.tokens_file}"\nstore_tls = true\netcd_tls = true\n'
                f'store_user = "{STORE_USER}"\n'
                f'store_password_file = "{self.store_password_file}"\n')  # fmt: skip


def private(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path``, readable and writable by its owner only."""
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(descriptor, 0o600)  # an older file keeps its mode otherwise
    with os.fdopen(descriptor, "wb") as file:
        file.write(data)
