"""The root command and what every command needs: settings, a session, errors."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import click
from pydantic import ValidationError
from rich.console import Console, ConsoleOptions, RenderableType
from rich.segment import Segment
from sqlalchemy.orm import Session

from mailer import logs
from mailer.config import ConfigError, Settings, get_settings
from mailer.db import get_engine, session_scope
from mailer.migrate import NotMigrated, require_current

# What a terminal would take as an order rather than text: C0 and C1 controls (ESC starts
# the sequences that clear the screen, retitle the window or recolour what follows) and the
# bidirectional overrides that reorder a line ("\u202egnp.exe"). Newline and tab stay.
_NOT_TEXT = {
    **{c: None for c in [*range(0x00, 0x20), *range(0x7F, 0xA0)] if chr(c) not in "\n\t"},
    **{c: None for c in (*range(0x202A, 0x202F), *range(0x2066, 0x206A))},
}


class TextConsole(Console):
    """A console whose printed text can never drive the terminal.

    What the CLI prints is full of outside text: article and feed titles, authors,
    topics, SMTP replies, bounce reasons, imported cells. Filtered here, at the one
    place every `print` passes, no command has to remember it. Only the text of a
    segment is filtered: rich's own colours and cursor moves are styles and control
    segments, not text, so they still work on a terminal.
    """

    def render(self, renderable: RenderableType, options: ConsoleOptions | None = None) -> Any:
        for segment in super().render(renderable, options):
            if segment.control is None and not segment.text.isprintable():
                segment = Segment(segment.text.translate(_NOT_TEXT), segment.style)
            yield segment


# Markup off: rich would read `[/]` in outside text as a tag (a crash) or `[link=...]` as
# a terminal hyperlink. Styles are given with `style=`, never in text. Soft wrap: a message
# stays one line however narrow the console (a pipe counts as 80 columns), so grep finds
# it whole; tables still fit the width (`output.show`).
console = TextConsole(markup=False, soft_wrap=True)


@click.group()
@click.version_option(package_name="mailer")
def main() -> None:
    """mailer: newsletter subscriptions and digest mail."""


def settings_or_exit() -> Settings:
    """The settings, or one line saying which variable is wrong (never a traceback)."""
    try:
        settings = get_settings()
    except ValidationError as exc:
        raise click.ClickException(setting_errors(exc)) from exc
    try:
        settings.check()
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from exc
    except OSError as exc:  # the generated secret key or token can't be written
        raise click.ClickException(
            f"cannot write {exc.filename or settings.data_dir}: {exc.strerror or exc}; "
            "set MAILER_DATA_DIR to a directory this user can write"
        ) from exc
    logs.install(settings)
    return settings


def setting_errors(exc: ValidationError) -> str:
    """pydantic's report as `MAILER_X: what is wrong (got 'y')`, one per variable, on one line."""
    parts = []
    for error in exc.errors(include_url=False):
        name = "MAILER_" + str(error["loc"][0]).upper() if error["loc"] else "a setting"
        parts.append(f"{name}: {error['msg']} (got {error.get('input')!r})")
    return "; ".join(parts)


@contextmanager
def domain_session() -> Iterator[Session]:
    """A committed unit of work on a migrated database; domain errors become CLI errors."""
    settings = settings_or_exit()
    try:
        require_current(get_engine(settings.database))
    except NotMigrated as exc:
        raise click.ClickException(str(exc)) from exc
    try:
        with session_scope(settings.database) as session:
            yield session
    except ValueError as exc:
        raise click.ClickException(str(exc)) from exc
