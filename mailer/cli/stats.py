"""`mailer stats [NEWSLETTER]`: readers by status, growth and recent editions."""

from __future__ import annotations

import click

from mailer.cli.base import domain_session
from mailer.cli.output import Column, json_option, print_json, show, tally, when
from mailer.models import Status
from mailer.operators import stats as stats_ops

EDITION_COLUMNS = ("sent", "deferred", "failed", "skipped")


@click.command()
@click.argument("newsletter", required=False)
@click.option("--editions", default=5, show_default=True, help="How many recent editions.")
@json_option
def stats(newsletter: str | None, editions: int, as_json: bool) -> None:
    """Readers by status, new readers, the last editions.

    Per newsletter: readers by status, new readers in 7 and 30 days, and the
    last editions."""
    with domain_session() as session:
        rows = stats_ops.stats(session, newsletter, editions=editions)
    if as_json:  # like the API: one newsletter's stats an object, everyone's an array
        print_json(rows[0] if newsletter else rows)
        return
    show(
        rows,
        (
            Column("newsletter", lambda r: r.newsletter + (" (paused)" if r.paused else "")),
            Column("readers", lambda r: tally(r.by_status, [s.value for s in Status], "none")),
            Column("new 7d", lambda r: str(r.new_active_7d)),
            Column("new 30d", lambda r: str(r.new_active_30d)),
        ),
        title="readers",
        empty="no newsletter yet",
    )
    recent = [(row.newsletter, e) for row in rows for e in row.editions]
    show(
        recent,
        (
            Column("newsletter", lambda r: r[0]),
            Column("edition", lambda r: f"{r[1].id} ({r[1].frequency.value})"),
            Column("window end", lambda r: when(r[1].window_end)),
            Column("status", lambda r: r[1].status),
            Column("mail", lambda r: tally(r[1].counts, EDITION_COLUMNS, "none")),
            Column(
                "bounces",
                lambda r: "" if r[1].bounce_rate is None else f"{r[1].bounce_rate:.1%}",
            ),
        ),
        title="recent editions",
    )
