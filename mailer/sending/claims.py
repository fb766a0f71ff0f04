"""Claiming rows: which rows of a range may be sent now, read a couple of hundred at a time.

Nothing is locked here: each row is claimed by the write that marks it in
flight (`marks`), just before its message goes, so a row another sender took
first, or that was cancelled, is passed over. The readers' status is read
fresh with the rows, so one who left after the edition was prepared is
skipped, not mailed.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Table, and_, or_, select, update
from sqlalchemy.orm import Session

from mailer.config import Settings
from mailer.db import among, is_postgres
from mailer.models import Delivery, DeliveryStatus, Status, Subscriber, Subscription
from mailer.readers import suppressions
from mailer.readers.addresses import address_hash

# Rows read per step (due_rows): a few statements and a commit each; the readers'
# status they carry is then at most one step old (under a second of sending).
CLAIM_CHUNK = 200


# The per-message statements use the Core table: the ORM-enabled UPDATE path
# costs about a millisecond more per statement, which is most of a send.
DELIVERY: Table = Delivery.__table__  # type: ignore[assignment]


@dataclass(frozen=True)
class Reader:
    """The subscription as the send loop needs it (its links' tokens, its id).

    A plain record, not an ORM object: loading, identity-mapping and expiring
    a Subscription per message was a visible part of a send's CPU."""

    id: int
    generation: int


@dataclass
class Claimed:
    delivery_id: int
    variant_id: int
    attempts: int
    subscription: Reader
    email: str


def claimable(now: Any) -> Any:
    """A row that may be sent at `now` (a time, or the claim's bound parameter): queued,
    or a retry that is due. Spelt without IN (...), so the claim can be prepared."""
    c = DELIVERY.c
    return or_(
        c.status == DeliveryStatus.QUEUED,
        and_(
            or_(c.status == DeliveryStatus.DEFERRED, c.status == DeliveryStatus.UNKNOWN),
            c.next_attempt_at <= now,
        ),
    )


def due_rows(
    session: Session,
    digest_id: int,
    lo: int,
    hi: int,
    *,
    limit: int,
    now: datetime,
    after: int | None = None,
) -> list[Claimed]:
    """Up to `limit` rows of the range that may be sent now, with their readers; commits.

    Nothing is locked or written for them here: each row is claimed by the
    write that marks it in flight, just before its message goes (Marks), so a
    row another sender took first is passed over. Rows whose reader is no
    longer active or is suppressed are marked `skipped` here (while still
    claimable) instead of being handed out: the reader's status is read fresh,
    so one who left after the edition was prepared is not mailed.
    """
    postgres = is_postgres(session)
    query = (
        select(
            Delivery.id,
            Delivery.variant_id,
            Delivery.attempts,
            Subscription.id.label("sub_id"),
            Subscription.status,
            Subscription.generation,
            Subscriber.email,
        )
        .join(Subscription, Subscription.id == Delivery.subscription_id)
        .join(Subscriber, Subscriber.id == Subscription.subscriber_id)
        .where(
            Delivery.digest_id == digest_id,
            Delivery.id.between(lo, hi),
            claimable(now),
        )
        .order_by(Delivery.id)
        .limit(limit)
    )
    if after is not None:
        query = query.where(Delivery.id > after)
    picked = session.execute(query).all()
    if not picked:
        session.commit()
        return []
    hashes = {r.email: address_hash(r.email) for r in picked}
    blocked = suppressions.suppressed(session, hashes.values())
    out: list[Claimed] = []
    skipped: dict[str, list[int]] = {}
    for row in picked:
        if row.status is not Status.ACTIVE:
            skipped.setdefault(f"not mailed: subscription {row.status.value}", []).append(row.id)
        elif hashes[row.email] in blocked:
            skipped.setdefault("not mailed: address suppressed", []).append(row.id)
        elif row.variant_id is None:
            skipped.setdefault("not mailed: nothing to send", []).append(row.id)
        else:
            reader = Reader(row.sub_id, row.generation)
            out.append(Claimed(row.id, row.variant_id, row.attempts + 1, reader, row.email))
    for reason, ids in skipped.items():
        session.execute(
            update(DELIVERY)
            .where(among(DELIVERY.c.id, ids, postgres), claimable(now))
            .values(
                status=DeliveryStatus.SKIPPED,
                smtp_reply=reason,
                lease_until=None,
                updated_at=now,
                released=True,  # its articles go back: a later edition may bring them
            )
        )
    session.commit()
    return out


def claim_size(settings: Settings) -> int:
    """Rows read per step: the readers' status they carry is at most one step old."""
    return max(1, min(settings.send_batch_size, CLAIM_CHUNK))
