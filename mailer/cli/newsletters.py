"""`mailer newsletter create|list|edit|archive|unarchive`."""

from __future__ import annotations

import click

from mailer.cli.base import console, domain_session
from mailer.cli.output import Column, json_option, print_json, show
from mailer.models import Frequency
from mailer.operators import newsletters as newsletters_ops

FREQUENCIES = click.Choice([f.value for f in Frequency])


@click.group()
def newsletter() -> None:
    """Newsletters."""


@newsletter.command("create")
@click.argument("slug")
@click.option("--name", required=True, help="Shown to readers.")
@click.option("--from", "sender", required=True, help='Sender, as "Name <addr@host>".')
@click.option(
    "--frequency",
    type=FREQUENCIES,
    default="weekly",
    show_default=True,
    help="Default for readers who choose none.",
)
@click.option("--site-url", default=None, help="The site's home, for 'more on the site'.")
def create(slug: str, name: str, sender: str, frequency: str, site_url: str | None) -> None:
    """Create a newsletter."""
    with domain_session() as session:
        nl = newsletters_ops.create_newsletter(
            session, slug, name, sender, default_frequency=Frequency(frequency), site_url=site_url
        )
        console.print(
            f"created newsletter {nl.slug} ({nl.name}) from {nl.sender}",
            highlight=False,
        )


COLUMNS = (
    Column("slug", lambda n: n.slug),
    Column("name", lambda n: n.name),
    Column("from", lambda n: n.sender),
    Column("default", lambda n: n.default_frequency.value),
    Column("readers", lambda n: str(n.active_readers)),
    Column("state", lambda n: "archived" if n.archived_at else ("paused" if n.paused else "")),
)


@newsletter.command("list")
@json_option
def list_(as_json: bool) -> None:
    """List newsletters with their active readers."""
    with domain_session() as session:
        rows = newsletters_ops.newsletters_out(session)
    if as_json:
        print_json(rows)
        return
    show(
        rows,
        COLUMNS,
        empty='no newsletter yet: mailer newsletter create SLUG --name N --from "N <a@b.org>"',
    )


@newsletter.command("edit")
@click.argument("slug")
@click.option("--name", default=None, help="Shown to readers, in every Subject and List-Id.")
@click.option("--from", "sender", default=None, help='Sender, as "Name <addr@host>".')
@click.option("--frequency", type=FREQUENCIES, default=None, help="Default for new readers.")
@click.option("--site-url", default=None, help="The site's home; '' removes it.")
def edit(
    slug: str, name: str | None, sender: str | None, frequency: str | None, site_url: str | None
) -> None:
    """Rename a newsletter or change its sender or frequency. The slug stays."""
    if name is None and sender is None and frequency is None and site_url is None:
        raise click.UsageError("nothing to change: give --name, --from, --frequency or --site-url")
    with domain_session() as session:
        nl = newsletters_ops.update_newsletter(
            session,
            slug,
            name=name,
            sender=sender,
            site_url=site_url,
            default_frequency=Frequency(frequency) if frequency else None,
        )
        console.print(
            f"{nl.slug}: {nl.name}, from {nl.sender}, {nl.default_frequency.value} by default",
            highlight=False,
        )


@newsletter.command("archive")
@click.argument("slug")
def archive(slug: str) -> None:
    """Close a newsletter: no more subscriptions or editions.

    Its readers, articles and history are kept."""
    with domain_session() as session:
        newsletters_ops.archive_newsletter(session, slug)
    console.print(
        f"{slug}: archived (no subscriptions, no editions; `mailer newsletter unarchive {slug}` "
        "undoes it)",
        highlight=False,
    )


@newsletter.command("unarchive")
@click.argument("slug")
def unarchive(slug: str) -> None:
    """Take subscriptions and make editions again."""
    with domain_session() as session:
        newsletters_ops.unarchive_newsletter(session, slug)
    console.print(f"{slug}: open again", highlight=False)
