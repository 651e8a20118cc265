"""The command line's own surface (its commands are tested against real clusters)."""

from click.testing import CliRunner

import cachegrid
from cachegrid.cli.main import main


def test_version() -> None:
    result = CliRunner().invoke(main, ["--version"])
    assert result.exit_code == 0
    assert result.output == f"cachegrid, version {cachegrid.__version__}\n"
