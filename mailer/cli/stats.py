"""`mailer stats [NEWSLETTER]`: readers by status, growth and recent editions."""

from __future__ import annotations

import click
from rich.table import Table

from mailer import operators as ops
from mailer.cli.base import console, domain_session
from mailer.models import Status

EDITION_COLUMNS = ("sent", "deferred", "failed", "skipped")


@click.command()
@click.argument("newsletter", required=False)
@click.option("--editions", default=5, show_default=True, help="How many recent editions.")
def stats(newsletter: str | None, editions: int) -> None:
    """Readers by status per newsletter, new readers in 7/30 days, last editions."""
    with domain_session() as session:
        rows = ops.stats(session, newsletter, editions=editions)
    readers = Table("newsletter", *[s.value for s in Status], "new 7d", "new 30d", title="readers")
    for row in rows:
        readers.add_row(
            row.newsletter + (" (paused)" if row.paused else ""),
            *[str(row.by_status[s.value]) for s in Status],
            str(row.new_active_7d),
            str(row.new_active_30d),
        )
    console.print(readers)
    if not any(row.editions for row in rows):
        return
    recent = Table("newsletter", "edition", "window end", "status", *EDITION_COLUMNS, "bounce rate")
    for row in rows:
        for e in row.editions:
            recent.add_row(
                row.newsletter,
                f"{e.id} ({e.frequency.value})",
                f"{e.window_end:%Y-%m-%d %H:%M}",
                e.status,
                *[str(e.counts.get(c, 0)) for c in EDITION_COLUMNS],
                "" if e.bounce_rate is None else f"{e.bounce_rate:.1%}",
            )
    console.print(recent)
