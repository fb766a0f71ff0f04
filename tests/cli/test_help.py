"""`mailer --help` reads whole in a pipe's 80 columns: each command listed with a
description that ends where its author ended it, not where click cut it with "...".

Click shortens a command's summary to the space left beside the longest name,
so a first sentence longer than about 55 characters lost its end in every
listing. Each command now opens with a short sentence and keeps its detail
for its own `--help`.
"""

from __future__ import annotations

from collections.abc import Iterator

import click
import pytest

from mailer.cli import main
from tests.helpers.cli import run


def every_command(
    command: click.Command, path: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], click.Command]]:
    yield path, command
    if isinstance(command, click.Group):
        for name, sub in command.commands.items():
            yield from every_command(sub, (*path, name))


COMMANDS = list(every_command(main))
GROUPS = [path for path, command in COMMANDS if isinstance(command, click.Group)]


def help_at_80_columns(path: tuple[str, ...]) -> str:
    result = run(*path, "--help", width=80)
    assert result.exit_code == 0, result.output
    return result.output


@pytest.mark.parametrize("path", GROUPS, ids=lambda p: " ".join(("mailer", *p)))
def test_every_command_is_listed_with_its_whole_summary_at_80_columns(path):
    listing = help_at_80_columns(path).split("Commands:\n", 1)[1]
    summaries = [line.split(None, 1) for line in listing.splitlines() if line.strip()]
    assert summaries, listing
    for name, summary in summaries:
        assert not summary.endswith("..."), f"{name}: {summary}"
        assert summary.endswith("."), f"{name}: {summary}"


@pytest.mark.parametrize("path", [p for p, _ in COMMANDS], ids=lambda p: " ".join(("mailer", *p)))
def test_every_help_page_fits_in_80_columns(path):
    for line in help_at_80_columns(path).splitlines():
        assert len(line) <= 80, line
