"""`mailer subscribers list|export|erase|set-status|import`: the operator's view of readers."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn

from mailer.cli.base import console, domain_session
from mailer.cli.output import Column, json_option, print_json, show
from mailer.models import Status
from mailer.operators import newsletters as newsletters_ops
from mailer.operators import subscribers as subscribers_ops
from mailer.readers import spreadsheet
from mailer.readers.importer import ImportReport, import_csv

STATUSES = click.Choice([s.value for s in Status])


@click.group()
def subscribers() -> None:
    """Readers: list, export, erase, change status, import."""


def _filter(
    newsletter: str | None, status: str | None, contains: str | None
) -> subscribers_ops.SubscriberFilter:
    return subscribers_ops.SubscriberFilter(
        newsletter=newsletter, status=Status(status) if status else None, contains=contains
    )


SUBSCRIPTION_COLUMNS = (
    Column("id", lambda r: str(r[0].id)),
    Column("email", lambda r: r[0].email),
    Column("newsletter", lambda r: r[1].newsletter if r[1] else ""),
    Column("status", lambda r: r[1].status.value if r[1] else ""),
    Column("freq", lambda r: r[1].frequency.value if r[1] else ""),
    Column("topics", lambda r: (", ".join(r[1].topics) or "all") if r[1] else ""),
    Column("since", lambda r: r[1].status_changed_at.strftime("%Y-%m-%d") if r[1] else ""),
)


@subscribers.command("list")
@click.option("--newsletter", help="Only readers of this newsletter (slug).")
@click.option("--status", type=STATUSES, help="Only readers with a subscription in this state.")
@click.option("--email", "contains", help="Only addresses containing this text.")
@click.option("--limit", default=50, show_default=True, type=int)
@click.option("--cursor", help="Continue from the cursor the previous page printed.")
@json_option
def list_(
    newsletter: str | None,
    status: str | None,
    contains: str | None,
    limit: int,
    cursor: str | None,
    as_json: bool,
) -> None:
    """List readers in id order, a page at a time.

    The next page's cursor goes to stderr."""
    with domain_session() as session:
        page = subscribers_ops.list_subscribers(
            session, _filter(newsletter, status, contains), cursor=cursor, limit=limit
        )
    if as_json:
        print_json(page.items)
    else:
        none: list[subscribers_ops.SubscriptionOut | None] = [None]
        rows = [(r, sub) for r in page.items for sub in (r.subscriptions or none)]
        show(rows, SUBSCRIPTION_COLUMNS, empty="no reader matches")
    if page.next_cursor:
        click.echo(f"more: --cursor {page.next_cursor}", err=True)


@subscribers.command("export")
@click.argument("address", required=False)
@click.option("--newsletter", help="CSV export: only this newsletter.")
@click.option("--status", type=STATUSES, help="CSV export: only this status.")
@click.option(
    "-o", "--output", type=click.Path(dir_okay=False, path_type=Path), help="File (else stdout)."
)
def export(
    address: str | None, newsletter: str | None, status: str | None, output: Path | None
) -> None:
    """Export one reader as JSON, or everyone as CSV.

    With ADDRESS: everything held about that reader, as JSON (GDPR access).

    Without: every subscription as CSV (email, newsletter, status, frequency,
    topics, consent), in the columns `subscribers import` reads back.
    """
    with domain_session() as session:
        out = output.open("w", newline="", encoding="utf-8") if output else sys.stdout
        try:
            if address:
                data = subscribers_ops.export_subscriber(session, address)
                out.write(json.dumps(data.model_dump(mode="json"), indent=2) + "\n")
                return
            # Addresses may start with = + - (valid local parts): no cell runs as a formula.
            writer = spreadsheet.Writer(out)
            writer.writerow(
                ["email", "newsletter", "status", "frequency", "topics", "consent_at", "source"]
            )
            for reader, sub in subscribers_ops.iter_subscriptions(
                session, _filter(newsletter, status, None)
            ):
                writer.writerow(
                    [
                        reader.email,
                        sub.newsletter.slug,
                        sub.status.value,
                        sub.frequency.value,
                        ";".join(t.slug for t in sub.topics),
                        sub.consent_at.isoformat() if sub.consent_at else "",
                        sub.consent_source or "",
                    ]
                )
        finally:
            if output:
                out.close()


@subscribers.command("erase")
@click.argument("address")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
def erase(address: str, yes: bool) -> None:
    """Delete everything about a reader. It cannot be undone.

    This is the GDPR erasure.

    If they had unsubscribed or complained, a hash of the address stays on the
    suppression list so no later import mails them again.
    """
    if not yes:
        click.confirm(f"Erase every record of {address}?", abort=True)
    with domain_session() as session:
        report = subscribers_ops.erase_subscriber(session, address)
    kept = " (kept as a hashed suppression entry)" if report.suppressed else ""
    console.print(f"erased {address}: {report.subscriptions} subscription(s){kept}")


@subscribers.command(
    "set-status",
    # STATUS stands for the choices in the usage line, which broke mid-word at 80 columns.
    help="Change a reader's status.\n\n"
    "The change is recorded in the audit trail as done by an operator. "
    f"STATUS is one of: {', '.join(STATUSES.choices)}.",
)
@click.argument("address")
@click.argument("status", type=STATUSES, metavar="STATUS")
@click.option("--newsletter", required=True, help="The newsletter (slug).")
@click.option("--reason", help="Why, for the audit record.")
def set_status(address: str, status: str, newsletter: str, reason: str | None) -> None:
    with domain_session() as session:
        sub = subscribers_ops.set_status(
            session, address, newsletter, Status(status), detail=reason
        )
        console.print(f"{address} in {newsletter}: now {sub.status.value}")


def _only_newsletter(newsletter: str | None) -> str:
    if newsletter:
        return newsletter
    with domain_session() as session:
        slugs = [n.slug for n in newsletters_ops.list_newsletters(session)]
    if len(slugs) != 1:
        raise click.UsageError(
            "Say which newsletter with --newsletter"
            + (f" (one of: {', '.join(slugs)})." if slugs else "; none exists yet.")
        )
    return slugs[0]


def _summary(report: ImportReport, confirmed: bool) -> None:
    counts = [
        ("added", report.added),
        ("pending, now confirmed", report.confirmed),
        ("already there", report.already),
        ("invalid", report.invalid),
        ("suppressed (asked not to be mailed)", report.suppressed),
        ("unsubscribed earlier (left alone)", report.ended),
    ]
    always = {"added", "already there", "invalid"}
    show(
        [(what, n) for what, n in counts if n or what in always],
        (Column("result", lambda r: r[0]), Column("rows", lambda r: f"{r[1]:,}")),
    )
    if report.invalid_lines:
        more = ", …" if report.invalid > len(report.invalid_lines) else ""
        lines = ", ".join(map(str, report.invalid_lines))
        label = "line" if len(report.invalid_lines) == 1 and not more else "lines"
        console.print(f"the invalid rows are at {label} {lines}{more} of the file")
    if report.rejects_path:
        console.print(f"rejected rows, with the reason, are in {report.rejects_path}")
    if report.added and not confirmed:
        console.print("each new reader was sent a confirmation request")


@subscribers.command("import")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--newsletter", help="Newsletter slug (needed when there is more than one).")
@click.option(
    "--confirmed",
    is_flag=True,
    help="They already opted in elsewhere: active now, the import recorded as consent source.",
)
@click.option("--chunk-size", default=2000, show_default=True, type=int, hidden=True)
def import_(file: Path, newsletter: str | None, confirmed: bool, chunk_size: int) -> None:
    """Import readers from a CSV with an `email` column.

    Optional columns: topics, frequency, name.

    Topics are separated by ';' or '|'. Safe to run again: readers already
    there are counted, not duplicated. Without --confirmed each new reader
    gets a confirmation request (double opt-in).
    """
    from mailer.tasks import enqueue_notices

    slug = _only_newsletter(newsletter)
    with domain_session() as session:
        newsletters_ops.newsletter(session, slug)  # NotFound, before the file is read
        size = file.stat().st_size
        columns = [
            TextColumn("[bold]importing"),
            BarColumn(),
            DownloadColumn(),
            TextColumn("{task.fields[rows]} rows"),
            TimeRemainingColumn(),
        ]
        with Progress(*columns, console=console, transient=True) as progress:
            task = progress.add_task("import", total=size, rows=0)

            def on_chunk(report: ImportReport, read: int) -> None:
                progress.update(task, completed=read, rows=report.rows)

            report = import_csv(
                session,
                file,
                slug,
                confirmed=confirmed,
                chunk_size=chunk_size,
                after_commit=enqueue_notices,
                on_chunk=on_chunk,
            )
    _summary(report, confirmed)
