"""The root command and what every command needs: settings, a session, errors."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import click
from rich.console import Console
from sqlalchemy.orm import Session

from mailer import logs
from mailer.config import ConfigError, Settings, get_settings
from mailer.db import get_engine, session_scope
from mailer.migrate import NotMigrated, require_current

console = Console()


@click.group()
@click.version_option(package_name="mailer")
def main() -> None:
    """mailer: newsletter subscriptions and digest mail."""


def settings_or_exit() -> Settings:
    settings = get_settings()
    try:
        settings.check()
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from exc
    logs.install(settings)
    return settings


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
