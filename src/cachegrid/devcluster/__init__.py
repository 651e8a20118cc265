"""Tooling for a local cluster of real processes (`cachegrid up`, benchmarks, tests):
the server processes (servers.py) and the planned cluster (cluster.py). Not used by a node."""
