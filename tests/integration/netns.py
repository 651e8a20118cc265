"""A network namespace of the test's own, joined to the host by a veth pair.

A node started inside it reaches the host (etcd, the replicas, the other nodes) only over
the veth link, so the kernel can cut it from chosen services while clients still reach
it: a real network partition, not a relay. All traffic stays on this machine.

Inside the namespace the node has ``inner`` (10.213.N.2); the host side of the link is
``outer`` (10.213.N.1), where etcd and the replicas also listen. ``cut(ports)`` drops,
inside the namespace, every packet the node sends to those ports (nftables): the peers see
silence, not resets. ``heal`` removes the rule. ``destroy`` removes the namespace and the
link; it is idempotent, and the fixtures call it even when the test fails.
"""

from __future__ import annotations

import os
import subprocess


def _run(*argv: str) -> None:
    subprocess.run(argv, check=True, capture_output=True, timeout=20)


class Netns:
    def __init__(self, index: int) -> None:
        tag = f"{os.getpid() % 100000}x{index}"
        self.name = f"cg{tag}"
        self.host_link, self.inner_link = f"cgh{tag}"[:15], f"cgn{tag}"[:15]
        self.subnet = 1 + (os.getpid() + index) % 250
        self.outer = f"10.213.{self.subnet}.1"
        self.inner = f"10.213.{self.subnet}.2"
        self.created = False

    def __repr__(self) -> str:
        return f"<Netns {self.name} {self.inner} via {self.outer}>"

    @property
    def wrapper(self) -> tuple[str, ...]:
        """The command prefix that runs a program inside the namespace."""
        return ("ip", "netns", "exec", self.name)

    def create(self) -> None:
        self.created = True
        _run("ip", "netns", "add", self.name)
        _run("ip", "link", "add", self.host_link, "type", "veth", "peer", "name", self.inner_link)
        _run("ip", "link", "set", self.inner_link, "netns", self.name)
        _run("ip", "addr", "add", f"{self.outer}/30", "dev", self.host_link)
        _run("ip", "link", "set", self.host_link, "up")
        inside = self.wrapper
        _run(*inside, "ip", "addr", "add", f"{self.inner}/30", "dev", self.inner_link)
        _run(*inside, "ip", "link", "set", self.inner_link, "up")
        _run(*inside, "ip", "link", "set", "lo", "up")

    def cut(self, ports: list[int]) -> None:
        """Black-hole what the namespace sends to these ports of the host."""
        inside = self.wrapper
        _run(*inside, "nft", "add", "table", "inet", "cut")
        _run(*inside, "nft", "add", "chain", "inet", "cut", "out",
             "{ type filter hook output priority 0; }")  # fmt: skip
        listed = ", ".join(str(port) for port in ports)
        _run(*inside, "nft", "add", "rule", "inet", "cut", "out", "ip", "daddr", self.outer,
             "tcp", "dport", f"{{ {listed} }}", "drop")  # fmt: skip

    def heal(self) -> None:
        subprocess.run([*self.wrapper, "nft", "delete", "table", "inet", "cut"],
                       capture_output=True, timeout=20)  # fmt: skip

    def destroy(self) -> None:
        if not self.created:
            return
        self.created = False
        subprocess.run(["ip", "link", "del", self.host_link], capture_output=True, timeout=20)
        subprocess.run(["ip", "netns", "del", self.name], capture_output=True, timeout=20)
