"""Linearizability, checked: history recording (history.py) and the checker (checker.py)."""
