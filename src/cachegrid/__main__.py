"""``python -m cachegrid``: the same as the ``cachegrid`` command."""

from cachegrid.cli.main import main

main()
