"""`mailer bounces poll|process`: read bounce reports from the mailbox or from a pipe.

`process` reads one message on stdin, so an MTA can pipe the bounce
address straight into it (`bounces: "|mailer bounces process"`) with no
mailbox at all.
"""

from __future__ import annotations

import json
import sys
from typing import BinaryIO

import click

from mailer.bounces import mailboxes, outcomes
from mailer.cli.base import console, domain_session, settings_or_exit
from mailer.mail.verp import return_paths


@click.group("bounces")
def bounces_group() -> None:
    """Bounces and complaints."""


@bounces_group.command()
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="JSON Lines: one object per report on stdout as it is read; the summary on stderr.",
)
def poll(as_json: bool) -> None:
    """Read the bounce mailbox once.

    The mailbox is MAILER_BOUNCE_MAILDIR or MAILER_BOUNCE_IMAP_URL."""
    settings = settings_or_exit()
    if not mailboxes.mailbox_configured(settings):
        raise click.ClickException(
            "no bounce mailbox: set MAILER_BOUNCE_MAILDIR or MAILER_BOUNCE_IMAP_URL"
        )
    with domain_session():  # fails early, with a message, on an un-migrated database
        pass
    try:
        result = mailboxes.poll(settings)
    except (OSError, ValueError) as exc:
        raise click.ClickException(f"cannot read the bounce mailbox: {exc}") from exc
    for outcome in result.outcomes:
        if as_json:
            click.echo(json.dumps(outcome.as_dict()))
        else:
            mark = "applied" if outcome.applied else "ignored"
            console.print(f"{mark:8} {outcome.result}: {outcome.reason}", highlight=False)
    summary = f"{result.seen} report(s): {result.applied} applied, {result.ignored} ignored"
    if as_json:
        click.echo(summary, err=True)
    else:
        console.print(summary, highlight=False)


@bounces_group.command()
@click.argument("message", type=click.File("rb"), default="-")
def process(message: BinaryIO) -> None:
    """Handle one raw report from a file or stdin.

    The outcome is printed as JSON."""
    raw = message.read()
    settings = settings_or_exit()
    verp = return_paths(settings)
    with domain_session() as session:
        outcome = outcomes.handle_raw(session, verp, raw, soft_limit=settings.soft_bounce_limit)
    click.echo(json.dumps(outcome.as_dict()))
    if not outcome.applied:
        sys.stderr.write(f"ignored: {outcome.reason}\n")
