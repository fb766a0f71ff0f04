"""`mailer schedule set|list|pause|resume`: when each newsletter's editions go out."""

from __future__ import annotations

import click

from mailer.cli.base import console, domain_session
from mailer.cli.output import Column, json_option, print_json, show
from mailer.models import Frequency
from mailer.operators import newsletters as newsletters_ops
from mailer.operators import schedules as schedules_ops


@click.group()
def schedule() -> None:
    """Send schedules: cron in the newsletter's own time zone."""


@schedule.command("set")
@click.argument("newsletter")
@click.option(
    "--frequency",
    type=click.Choice([f.value for f in Frequency]),
    required=True,
    help="Which edition this schedule makes.",
)
@click.option("--cron", required=True, help='Five fields, e.g. "0 8 * * MON".')
@click.option(
    "--tz", "timezone", default="UTC", show_default=True, help="IANA zone, e.g. Europe/Kyiv."
)
def set_(newsletter: str, frequency: str, cron: str, timezone: str) -> None:
    """Set (or replace) a newsletter's schedule for one frequency."""
    with domain_session() as session:
        out = schedules_ops.set_schedule(session, newsletter, Frequency(frequency), cron, timezone)
    console.print(
        f"{out.newsletter} {out.frequency.value}: '{out.cron}' in {out.timezone}; "
        f"next at {out.next_run_local:%Y-%m-%d %H:%M %Z} ({out.next_run_utc:%H:%M} UTC)"
    )


SCHEDULE_COLUMNS = (
    Column("newsletter", lambda s: s.newsletter),
    Column("frequency", lambda s: s.frequency.value),
    Column("cron", lambda s: s.cron),
    Column("time zone", lambda s: s.timezone),
    Column("next", lambda s: f"{s.next_run_local:%Y-%m-%d %H:%M %Z}\n{s.next_run_utc:%H:%M} UTC"),
    Column("", lambda s: "paused" if s.paused else ""),
)


@schedule.command("list")
@click.argument("newsletter", required=False)
@json_option
def list_(newsletter: str | None, as_json: bool) -> None:
    """Every schedule, with its next run in local time and UTC."""
    with domain_session() as session:
        rows = schedules_ops.list_schedules(session, newsletter)
    if as_json:
        print_json(rows)
        return
    show(
        rows,
        SCHEDULE_COLUMNS,
        empty="no schedule: editions go out at the default times (mailer schedule set)",
    )


@schedule.command("pause")
@click.argument("newsletter")
def pause(newsletter: str) -> None:
    """Stop making editions for a newsletter.

    Its readers and schedules are kept."""
    with domain_session() as session:
        newsletters_ops.update_newsletter(session, newsletter, paused=True)
    console.print(f"{newsletter}: paused")


@schedule.command("resume")
@click.argument("newsletter")
def resume(newsletter: str) -> None:
    """Make editions again from the next scheduled time."""
    with domain_session() as session:
        newsletters_ops.update_newsletter(session, newsletter, paused=False)
    console.print(f"{newsletter}: resumed")
