"""The etcd keyspace of a cluster: every key cachegrid reads or writes, built in one place.

Keys under ``<prefix>/``:
    members/<node-id>   {"addr", "weight", "incarnation"}  the node's right to be in the ring,
                        under the node's lease (a dead node's keys vanish together)
    acks/<node-id>      "<revision>"  "I applied every change up to <revision> and released
                        all I do not own under the ring it gave" (node's lease)
    weights/<node-id>   "<weight>"    the operator's weight for the node (no lease: it
                        outlives the node); the node re-registers with it
    nodes/<node-id>     {"addr"}      every node that ever registered (no lease: status
                        shows one that is gone as down, until an operator forgets it)
    admin/<id>          {"id", "op", "args"}  an admin command, under a short lease of its own
    admin-done/<id>/<node-id>  {...}  a node's result, under the command's lease
    inval/<node-id>/<id>  a read-lease drop record of the owner <node-id> (its holders drop
                        their copies and acknowledge to it directly), under a short lease
                        that the owner rotates, so records expire by themselves

Owns: the names, and parsing them back (which node a key names). No I/O.
Invariant: every key of the cluster starts with ``root``, so one watch sees them all.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Keyspace:
    prefix: bytes  # e.g. b"/cachegrid", without the trailing slash

    @classmethod
    def of(cls, prefix: str) -> Keyspace:
        return cls(prefix.encode())

    @property
    def root(self) -> bytes:
        return self.prefix + b"/"

    @property
    def members(self) -> bytes:
        return self.root + b"members/"

    @property
    def acks(self) -> bytes:
        return self.root + b"acks/"

    @property
    def weights(self) -> bytes:
        return self.root + b"weights/"

    @property
    def known(self) -> bytes:
        return self.root + b"nodes/"

    def known_node(self, node_id: str) -> bytes:
        return self.known + node_id.encode()

    @property
    def commands(self) -> bytes:
        return self.root + b"admin/"

    @property
    def invalidations(self) -> bytes:
        return self.root + b"inval/"

    def invalidation(self, node_id: str, record_id: str) -> bytes:
        return self.invalidations + node_id.encode() + b"/" + record_id.encode()

    def member(self, node_id: str) -> bytes:
        return self.members + node_id.encode()

    def ack(self, node_id: str) -> bytes:
        return self.acks + node_id.encode()

    def weight(self, node_id: str) -> bytes:
        return self.weights + node_id.encode()

    def command(self, command_id: str) -> bytes:
        return self.commands + command_id.encode()

    def results(self, command_id: str) -> bytes:
        """The prefix of every node's result of one command."""
        return self.root + b"admin-done/" + command_id.encode() + b"/"

    def result(self, command_id: str, node_id: str) -> bytes:
        return self.results(command_id) + node_id.encode()

    @staticmethod
    def name_under(key: bytes, under: bytes) -> str:
        """The last part of ``key``, which starts with ``under`` (a node or command id)."""
        return key[len(under) :].decode()
