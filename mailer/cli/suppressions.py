"""`mailer suppression list|lift`: the addresses we never mail, and taking one off.

Entries are kept as hashes of the address. `list` shows each one's hash,
reason, source and date, and the address only while we still hold it (a
subscriber row exists for it); after an erasure only the hash is left, and
`lift` takes either the address or that hash.
"""

from __future__ import annotations

import click

from mailer.cli.base import console, domain_session
from mailer.cli.output import Column, show, when
from mailer.operators import suppressions as suppressions_ops


@click.group("suppression")
def suppression() -> None:
    """The suppression list: addresses never mailed.

    They come from bounces, complaints and erased opt-outs."""


SUPPRESSION_COLUMNS = (
    Column("hash", lambda i: i.hash[:16]),
    Column("address", lambda i: i.address or "(not known: only the hash is kept)"),
    Column("reason", lambda i: i.reason),
    Column("source", lambda i: i.source or ""),
    Column("since (UTC)", lambda i: when(i.created_at)),
    Column(
        "lifted by",
        lambda i: "its owner's new opt-in, or an operator" if i.lifted_by_opt_in else "an operator",
    ),
)


@suppression.command("list")
@click.option("--reason", help="Only entries with this reason (e.g. hard-bounce, complaint).")
@click.option("--limit", default=50, show_default=True, type=click.IntRange(1, 1000))
@click.option("--cursor", help="Continue from the cursor the previous page printed.")
def list_(reason: str | None, limit: int, cursor: str | None) -> None:
    """List suppressed addresses, oldest first.

    Each with its hash, the address if known, the reason, source and date."""
    with domain_session() as session:
        page = suppressions_ops.list_suppressions(
            session, reason=reason, cursor=cursor, limit=limit
        )
    show(
        page.items,
        SUPPRESSION_COLUMNS,
        empty="the suppression list is empty" + (f" for {reason!r}" if reason else ""),
    )
    if page.next_cursor:
        console.print(f"more: --cursor {page.next_cursor}")


@suppression.command("lift")
@click.argument("address")
@click.option("--reason", "detail", help="Why, for the audit record.")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
def lift(address: str, detail: str | None, yes: bool) -> None:
    """Take ADDRESS (or a hash `list` showed) off the list.

    The lift is recorded.

    The reader's subscriptions keep their status: they are mailed again once
    active (their own new opt-in, or `mailer subscribers set-status`).
    """
    if not yes:
        click.confirm(f"Lift the suppression of {address}? It may be mailed again.", abort=True)
    with domain_session() as session:
        out = suppressions_ops.lift_suppression(session, address, detail=detail)
    shown = out.lifted.address or out.lifted.hash[:16]
    console.print(
        f"lifted: {shown} (was {out.lifted.reason}, since {out.lifted.created_at:%Y-%m-%d}); "
        "recorded in suppression_event"
    )
