"""`mailer ...` run in-process through click, at a chosen console width."""

from __future__ import annotations

import json
from typing import Any

from click.testing import CliRunner, Result

from mailer.cli import main
from mailer.cli.base import console


def run(*args: str, width: int | None = None) -> Result:
    """The command's result, as `mailer ARGS` prints it. `width` is the terminal's
    columns, for rich's tables and click's help alike (a pipe gives 80). An
    exception the command did not turn into an error message fails the test with
    its traceback instead of becoming exit code 1."""
    before = console.width
    if width is not None:
        console.width = width
    try:
        return CliRunner().invoke(
            main, list(args), prog_name="mailer", terminal_width=width, catch_exceptions=False
        )
    finally:
        console.width = before


def run_json(*args: str) -> Any:
    """`mailer ARGS --json`, which must succeed and print exactly one JSON document."""
    result = CliRunner().invoke(main, [*args, "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)
