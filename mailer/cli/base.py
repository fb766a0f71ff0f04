"""The root command and what every command needs: settings, a session, errors."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import click
from pydantic import ValidationError
from rich.console import Console
from sqlalchemy.orm import Session

from mailer import logs
from mailer.config import ConfigError, Settings, get_settings
from mailer.db import get_engine, session_scope
from mailer.migrate import NotMigrated, require_current

# Markup off: what the CLI prints is full of outside text (article titles, feed titles,
# SMTP replies, bounce reasons), and rich would read `[/]` in it as a tag (a crash) or
# `[link=...]` as a terminal hyperlink. Styles are given with `style=`, never in text.
console = Console(markup=False)


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
