"""An edition's counts and its end: done once no delivery of it can change any more."""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from mailer.models import Delivery, DeliveryStatus, Digest, EditionStatus, utcnow

# Deliveries in these states may still change; an edition with none left is done.
OPEN = (
    DeliveryStatus.QUEUED,
    DeliveryStatus.SENDING,
    DeliveryStatus.DEFERRED,
    DeliveryStatus.UNKNOWN,
)


def counts(session: Session, digest_id: int) -> dict[str, int]:
    rows = session.execute(
        select(Delivery.status, func.count())
        .where(Delivery.digest_id == digest_id)
        .group_by(Delivery.status)
    ).all()
    return {str(status.value if hasattr(status, "value") else status): n for status, n in rows}


def close_if_done(session: Session, digest_id: int, now: datetime | None = None) -> bool:
    """Record the edition's counts; mark it done once no delivery can change any more."""
    digest = session.get(Digest, digest_id)
    if digest is None or digest.status not in (EditionStatus.SENDING, EditionStatus.DONE):
        return False
    tally = counts(session, digest_id)
    digest.counts = tally
    if digest.status is EditionStatus.SENDING and not any(tally.get(s.value, 0) for s in OPEN):
        digest.status = EditionStatus.DONE
        digest.finished_at = now or utcnow()
    session.flush()
    return digest.status is EditionStatus.DONE


def has_open(session: Session, digest_id: int) -> bool:
    """Whether any delivery of the edition may still change: one indexed probe."""
    return (
        session.scalar(
            select(Delivery.id)
            .where(Delivery.digest_id == digest_id, Delivery.status.in_(OPEN))
            .limit(1)
        )
        is not None
    )


def close_finished(session: Session, now: datetime | None = None) -> list[int]:
    ids = session.scalars(select(Digest.id).where(Digest.status == EditionStatus.SENDING)).all()
    return [i for i in ids if close_if_done(session, i, now)]


def stale_unprepared(
    session: Session, older_than: timedelta, now: datetime | None = None
) -> list[int]:
    """Editions created but never prepared (their task was lost): prepare them again."""
    cutoff = (now or utcnow()) - older_than
    return list(
        session.scalars(
            select(Digest.id).where(
                Digest.status == EditionStatus.CREATED, Digest.created_at < cutoff
            )
        )
    )
