"""The suppression list as the operator sees it: page through it, lift an entry."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel
from sqlalchemy import select
from sqlalchemy.orm import Session

from mailer.models import (
    Subscriber,
    Suppression,
)
from mailer.operators.errors import Invalid, NotFound
from mailer.operators.paging import decode_cursor, encode_cursor
from mailer.readers import suppressions


class SuppressionOut(BaseModel):
    """One entry of the suppression list. Entries are kept as hashes: `address` is
    there only while the address's subscriber row still exists (never after erasure)."""

    hash: str
    address: str | None
    reason: str
    source: str | None
    created_at: datetime
    lifted_by_opt_in: bool


class SuppressionPage(BaseModel):
    items: list[SuppressionOut]
    next_cursor: str | None


class LiftOut(BaseModel):
    lifted: SuppressionOut
    at: datetime
    by: str


def _suppression_out(entry: Suppression, address: str | None) -> SuppressionOut:
    return SuppressionOut(
        hash=entry.address_hash,
        address=address,
        reason=entry.reason,
        source=entry.source,
        created_at=entry.created_at,
        lifted_by_opt_in=suppressions.lifted_by_opt_in(entry),
    )


def list_suppressions(
    session: Session, *, reason: str | None = None, cursor: str | None = None, limit: int = 50
) -> SuppressionPage:
    """The list in id order (oldest first), a page at a time, optionally one reason."""
    if not 1 <= limit <= 1000:
        raise Invalid("limit", "limit must be between 1 and 1000.")
    query = (
        select(Suppression, Subscriber.email)
        .outerjoin(Subscriber, Subscriber.id == Suppression.subscriber_id)
        .order_by(Suppression.id)
        .limit(limit + 1)
    )
    if reason:
        query = query.where(Suppression.reason == reason)
    if cursor:
        query = query.where(Suppression.id > decode_cursor(cursor))
    rows = session.execute(query).all()
    page = rows[:limit]
    return SuppressionPage(
        items=[_suppression_out(entry, email) for entry, email in page],
        next_cursor=encode_cursor(page[-1][0].id) if len(rows) > limit and page else None,
    )


def lift_suppression(
    session: Session, ref: str, *, ip: str | None = None, detail: str | None = None
) -> LiftOut:
    """An operator takes an address (or a hash from the list) off the list, on record.

    The reader's subscriptions keep their status: mail resumes only when they are
    active again (their own opt-in, or an operator's status change)."""
    entry = suppressions.find(session, ref)
    if entry is None:
        raise NotFound(f"{ref!r} is not on the suppression list.")
    address = session.scalar(select(Subscriber.email).where(Subscriber.id == entry.subscriber_id))
    out = _suppression_out(entry, address)
    event = suppressions.lift(session, entry, by=suppressions.BY_OPERATOR, ip=ip, detail=detail)
    return LiftOut(lifted=out, at=event.at, by=event.lifted_by)
