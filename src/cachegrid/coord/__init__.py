"""Coordination through etcd: the client wrapper, leases, the watch stream, ownership."""
