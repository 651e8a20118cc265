"""``python -m cachegrid``: the same as the ``cachegrid`` command."""

from cachegrid.cli import main

main()
