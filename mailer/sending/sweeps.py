"""The tick's side of sending: what dead workers held goes back, lost ranges are sent again.

A row left in `sending` past its lease was in flight (`unknown`, sent again) or
never touched (queued again); a range whose task was lost is found by its
due rows and handed to a new task.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import and_, func, literal, or_, select, update
from sqlalchemy.orm import Session

from mailer.config import Settings
from mailer.editions.prepare import chunk_ranges
from mailer.models import Delivery, DeliveryStatus, Digest, EditionStatus, utcnow


def recover_expired(session: Session, settings: Settings, now: datetime | None = None) -> int:
    """Rows left in `sending` by a dead worker: untouched ones back to the queue,
    the one in flight to `unknown` (sent again), or `failed` when out of attempts."""
    now = now or utcnow()
    expired = and_(Delivery.status == DeliveryStatus.SENDING, Delivery.lease_until < now)
    untouched = session.execute(
        update(Delivery)
        .where(expired, Delivery.message_id.is_(None))
        .values(
            status=DeliveryStatus.QUEUED,
            lease_until=None,
            attempts=Delivery.attempts - 1,
            next_attempt_at=now,
            updated_at=now,
        )
    ).rowcount  # type: ignore[attr-defined]
    note = literal("outcome unknown: worker lost while sending ") + Delivery.message_id
    in_flight = session.execute(
        update(Delivery)
        .where(
            expired,
            Delivery.message_id.is_not(None),
            Delivery.attempts < settings.send_max_attempts,
        )
        .values(
            status=DeliveryStatus.UNKNOWN,
            smtp_reply=note,
            lease_until=None,
            next_attempt_at=now,
            updated_at=now,
        )
    ).rowcount  # type: ignore[attr-defined]
    exhausted = session.execute(
        update(Delivery)
        .where(expired, Delivery.message_id.is_not(None))
        .values(
            status=DeliveryStatus.FAILED,
            smtp_reply=note,
            lease_until=None,
            updated_at=now,
            released=True,
        )
    ).rowcount  # type: ignore[attr-defined]
    session.flush()
    return int(untouched) + int(in_flight) + int(exhausted)


def due_ranges(
    session: Session, settings: Settings, now: datetime | None = None
) -> list[tuple[int, int, int]]:
    """(edition, lo, hi) ranges with rows to send now whose task may have been lost.

    Retries that came due, rows a sweep handed back, and queued rows of an
    edition nobody has touched for a whole lease (its tasks were lost). An
    edition still draining a long queue is left alone, so a big send isn't
    enqueued again every minute.
    """
    now = now or utcnow()
    stale = now - timedelta(seconds=settings.send_lease)
    sending = select(Digest.id).where(Digest.status == EditionStatus.SENDING)
    due = session.execute(
        select(Delivery.digest_id, Delivery.id)
        .where(
            Delivery.digest_id.in_(sending),
            or_(
                and_(
                    Delivery.status.in_(
                        (DeliveryStatus.DEFERRED, DeliveryStatus.UNKNOWN, DeliveryStatus.QUEUED)
                    ),
                    Delivery.next_attempt_at <= now,
                ),
            ),
        )
        .order_by(Delivery.digest_id, Delivery.id)
    ).all()
    ids: dict[int, set[int]] = {}
    for digest_id, delivery_id in due:
        ids.setdefault(digest_id, set()).add(delivery_id)
    last_touch = dict(
        session.execute(
            select(Delivery.digest_id, func.max(Delivery.updated_at))
            .where(Delivery.digest_id.in_(sending))
            .group_by(Delivery.digest_id)
        ).all()
    )
    for digest_id, touched in last_touch.items():
        if touched is not None and touched < stale:
            ids.setdefault(digest_id, set()).update(
                session.scalars(
                    select(Delivery.id).where(
                        Delivery.digest_id == digest_id, Delivery.status == DeliveryStatus.QUEUED
                    )
                )
            )
    out = []
    for digest_id, found in sorted(ids.items()):
        for lo, hi in chunk_ranges(sorted(found), settings.send_batch_size):
            out.append((digest_id, lo, hi))
    return out
