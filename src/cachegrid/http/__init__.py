"""The node's HTTP surface: the public API (server.py) and the admin API (admin.py)."""
