"""`mailer db upgrade|current`: migrations on SQLite and PostgreSQL alike."""

from __future__ import annotations

import click

from mailer import migrate
from mailer.cli.base import console, settings_or_exit
from mailer.cli.output import json_option, print_json
from mailer.db import get_engine


@click.group()
def db() -> None:
    """Database schema."""


@db.command()
def upgrade() -> None:
    """Bring the database up to the code's schema."""
    settings = settings_or_exit()
    migrate.upgrade(settings.database)
    console.print(f"database at {migrate.head_revision(settings.database)}")


@db.command()
@json_option
def current(as_json: bool) -> None:
    """Show the database's migration and the code's."""
    settings = settings_or_exit()
    have = migrate.current_revision(get_engine(settings.database))
    head = migrate.head_revision(settings.database)
    if as_json:
        print_json({"database": have, "code": head, "current": have == head})
        return
    console.print(f"database: {have or 'none'}; code: {head}", highlight=False)
