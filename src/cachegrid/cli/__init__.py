"""The `cachegrid` command line (main.py) and its admin client (admin_client.py)."""
