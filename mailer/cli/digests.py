"""`mailer digest preview|send|status|test|cancel`: the operator's handles on editions."""

from __future__ import annotations

import time
from pathlib import Path

import click
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from mailer.cli.base import console, domain_session, settings_or_exit
from mailer.cli.output import Column, json_option, print_json, show, tally, when
from mailer.db import session_scope
from mailer.editions import close
from mailer.mail.rendering import EmailRenderer
from mailer.models import DeliveryStatus, Frequency
from mailer.operators import editions as editions_ops
from mailer.operators import newsletters as newsletters_ops
from mailer.sending import testmail

FREQUENCIES = click.Choice([f.value for f in Frequency])


@click.group()
def digest() -> None:
    """Digest editions: preview, send, status, test, cancel."""


def _renderer() -> EmailRenderer:
    return EmailRenderer(settings_or_exit().email_templates)


@digest.command()
@click.argument("newsletter")
@click.option("--email", default=None, help="Preview as this subscriber (topics, history).")
@click.option("--frequency", type=FREQUENCIES, default=None, help="Default: the reader's.")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None)
def preview(newsletter: str, email: str | None, frequency: str | None, out: Path | None) -> None:
    """Write the next edition's HTML as a reader would get it.

    Nothing is recorded."""
    settings = settings_or_exit()
    with domain_session() as session:
        found = editions_ops.preview_edition(
            session,
            settings,
            _renderer(),
            newsletter,
            frequency=Frequency(frequency) if frequency else None,
            subscriber=email,
        )
        session.rollback()
    if out is None:
        click.echo(found.html)
        return
    out.write_text(found.html, encoding="utf-8")
    console.print(
        f"wrote {out} — {found.articles} article(s), {found.frequency.value} window "
        f"{found.window_start:%Y-%m-%d %H:%M} → {found.window_end:%Y-%m-%d %H:%M} UTC; "
        f"subject: {found.subject}"
    )


@digest.command()
@click.argument("newsletter")
@click.option("--frequency", type=FREQUENCIES, default=None, help="Default: the newsletter's.")
@click.option("--wait", is_flag=True, help="Show progress until every mail is out.")
@click.option("--timeout", default=600.0, show_default=True, help="Seconds --wait waits.")
def send(newsletter: str, frequency: str | None, wait: bool, timeout: float) -> None:
    """Create the edition ending now and send it through the workers."""
    from mailer import tasks

    settings = settings_or_exit()
    with domain_session() as session:
        # What the API and the admin's button do, but the prepare runs here, not in a
        # worker, so the command can say what it queued.
        edition, _ = editions_ops.send_now(
            session, newsletter, Frequency(frequency) if frequency else None
        )
        freq, digest_id = edition.frequency, edition.id
    # Its due feeds first, as the worker's prepare does: the edition carries what the
    # sites published up to its cut.
    editions_ops.poll_before_cut(settings, digest_id)
    with domain_session() as session:
        prepared = editions_ops.prepare_edition(session, settings, _renderer(), digest_id)
    if prepared.already:
        console.print(
            f"edition {digest_id} of {newsletter} ({freq.value}) was already made this minute; "
            f"{len(prepared.ranges)} batch(es) still to send"
        )
    else:
        console.print(
            f"edition {digest_id} of {newsletter} ({freq.value}): {prepared.queued} to send, "
            f"{prepared.skipped} skipped, {prepared.variants} variant(s)"
        )
    try:
        for lo, hi in prepared.ranges:
            tasks.send_digest_batch.delay(digest_id, lo, hi)
    except Exception as exc:
        raise click.ClickException(
            f"the edition is prepared but the broker is unreachable ({exc}); a running "
            "worker's tick will send it once the lease has passed"
        ) from exc
    if wait and prepared.ranges:
        _wait(settings.database, digest_id, prepared.queued, timeout)


def _wait(database: str, digest_id: int, total: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    with Progress(
        TextColumn("[bold]edition {task.fields[id]}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TextColumn(
            "sent {task.fields[sent]} · deferred {task.fields[deferred]} · "
            "failed {task.fields[failed]}"
        ),
        TimeElapsedColumn(),
        console=console,
    ) as progress:
        bar = progress.add_task("send", total=total, id=digest_id, sent=0, deferred=0, failed=0)
        while True:
            with session_scope(database) as session:
                tally = close.counts(session, digest_id)
            done = sum(
                tally.get(s.value, 0)
                for s in (DeliveryStatus.SENT, DeliveryStatus.FAILED, DeliveryStatus.DEFERRED)
            )
            progress.update(
                bar,
                completed=min(done, total),
                sent=tally.get("sent", 0),
                deferred=tally.get("deferred", 0),
                failed=tally.get("failed", 0),
            )
            busy = sum(tally.get(s, 0) for s in ("queued", "sending", "unknown"))
            if not busy:
                break
            if time.monotonic() > deadline:
                raise click.ClickException(
                    f"still {busy} to send after {timeout:.0f}s; is a worker running? "
                    f"(`mailer digest status {digest_id}` shows progress)"
                )
            time.sleep(0.3)
    if tally.get("deferred"):
        console.print(
            f"{tally['deferred']} deferred by the server; the worker retries them with backoff"
        )


STATUS_COLUMNS = [s.value for s in DeliveryStatus]
EDITION_COLUMNS = (
    Column("id", lambda e: str(e.id)),
    Column("newsletter", lambda e: e.newsletter),
    Column("freq", lambda e: e.frequency.value),
    Column("window end (UTC)", lambda e: when(e.window_end)),
    Column("status", lambda e: e.status),
    Column("mail", lambda e: tally(e.counts, STATUS_COLUMNS, "no mail")),
)


@digest.command()
@click.argument("digest_id", required=False, type=int)
@click.option("--newsletter", default=None, help="Only this newsletter's editions.")
@click.option("--limit", default=20, show_default=True, help="How many recent editions.")
@json_option
def status(digest_id: int | None, newsletter: str | None, limit: int, as_json: bool) -> None:
    """Delivery counts of recent editions, or of one."""
    with domain_session() as session:
        if digest_id is None:
            rows = editions_ops.recent_editions(session, newsletter, limit)
            if as_json:
                print_json(rows)
            else:
                show(rows, EDITION_COLUMNS, empty="no edition yet: mailer digest send NEWSLETTER")
            return
        edition = editions_ops.edition_out(session, digest_id)
        if as_json:
            print_json(edition)
            return
        problems = editions_ops.problem_deliveries(session, digest_id)
    show(
        [edition],
        (
            *EDITION_COLUMNS[:3],
            Column("window (UTC)", lambda e: f"{when(e.window_start)} → {when(e.window_end)}"),
            *EDITION_COLUMNS[4:],
        ),
    )
    for row in problems:
        console.print(
            f"  {row.status.value}: {row.smtp_reply or '(no reply recorded)'}", highlight=False
        )


@digest.command()
@click.argument("digest_id", type=int)
def cancel(digest_id: int) -> None:
    """Stop an edition: its waiting mail is not sent.

    Mail already going out finishes."""
    with domain_session() as session:
        report = editions_ops.cancel_edition(session, digest_id)
    console.print(
        f"edition {digest_id} cancelled: {report.cancelled} delivery(ies) stopped, "
        f"{report.released} reader(s) get those articles next time, "
        f"{report.still_sending} still finishing"
    )


@digest.command()
@click.argument("newsletter")
@click.option("--to", "to", required=True, help="Send the test to this address only.")
def test(newsletter: str, to: str) -> None:
    """Send the next edition to one address, marked [TEST].

    Nothing is recorded."""
    settings = settings_or_exit()
    with domain_session() as session:
        nl = newsletters_ops.newsletter(session, newsletter)
        reply, message_id = testmail.send_test(session, settings, _renderer(), nl, to)
        session.rollback()
    if not reply.ok:
        raise click.ClickException(f"the server refused the test mail: {reply.code} {reply.text}")
    console.print(f"test mail sent to {to}: {reply.code} {reply.text} ({message_id})")
