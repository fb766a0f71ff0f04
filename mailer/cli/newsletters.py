"""`mailer newsletter create|list`."""

from __future__ import annotations

import click
from rich.table import Table
from sqlalchemy import func, select

from mailer.cli.base import console, domain_session
from mailer.models import Frequency, Newsletter, Status, Subscription
from mailer.subscriptions import create_newsletter


@click.group()
def newsletter() -> None:
    """Newsletters."""


@newsletter.command("create")
@click.argument("slug")
@click.option("--name", required=True, help="Shown to readers.")
@click.option("--from", "sender", required=True, help='Sender, as "Name <addr@host>".')
@click.option(
    "--frequency",
    type=click.Choice([f.value for f in Frequency]),
    default="weekly",
    show_default=True,
    help="Default for readers who choose none.",
)
@click.option("--site-url", default=None, help="The site's home, for 'more on the site'.")
def create(slug: str, name: str, sender: str, frequency: str, site_url: str | None) -> None:
    """Create a newsletter."""
    with domain_session() as session:
        nl = create_newsletter(
            session, slug, name, sender, default_frequency=Frequency(frequency), site_url=site_url
        )
        console.print(f"created newsletter [bold]{nl.slug}[/bold] ({nl.name}) from {nl.sender}")


@newsletter.command("list")
def list_() -> None:
    """List newsletters with their active readers."""
    with domain_session() as session:
        active = (
            select(Subscription.newsletter_id, func.count().label("n"))
            .where(Subscription.status == Status.ACTIVE)
            .group_by(Subscription.newsletter_id)
            .subquery()
        )
        rows = session.execute(
            select(Newsletter, func.coalesce(active.c.n, 0))
            .outerjoin(active, active.c.newsletter_id == Newsletter.id)
            .order_by(Newsletter.slug)
        ).all()
        table = Table("slug", "name", "from", "default", "active readers", "paused")
        for nl, n in rows:
            table.add_row(
                nl.slug,
                nl.name,
                nl.sender,
                nl.default_frequency.value,
                str(n),
                "yes" if nl.paused else "",
            )
        console.print(table)
