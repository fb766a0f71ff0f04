"""Readers as the operator sees them: find, page through, change status, export, erase.

Erasure (GDPR art. 17) deletes the subscriber row, and with it, through
ON DELETE CASCADE, every subscription, topic choice, consent/audit event,
notification, delivery and sent-article row. The one thing kept is a hashed
suppression entry, and only when the reader had asked not to be mailed:
a subscription that ended `unsubscribed` or `complained` (or an entry that
was already there). Keeping that hash is what stops a later import of an
old list from mailing them again; it cannot be turned back into the address.
A reader who was merely pending, active or bounced leaves nothing behind.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime

from pydantic import BaseModel
from sqlalchemy import Select, delete, select
from sqlalchemy.orm import Session, selectinload

from mailer.models import (
    Delivery,
    DeliveryStatus,
    Digest,
    Frequency,
    Notification,
    Status,
    Subscriber,
    Subscription,
    SubscriptionEvent,
    utcnow,
)
from mailer.operators.errors import Conflict, Invalid, NotFound
from mailer.operators.newsletters import newsletter
from mailer.operators.paging import decode_cursor, encode_cursor, parse_id
from mailer.readers import subscriptions as subs
from mailer.readers import suppressions
from mailer.readers.addresses import address_key

OPERATOR = "operator"
# Ending states that mean "the reader asked us to stop": kept as a hash after erasure.
ASKED_TO_STOP = (Status.UNSUBSCRIBED, Status.COMPLAINED)


class SubscriptionOut(BaseModel):
    id: int
    newsletter: str
    status: Status
    frequency: Frequency
    topics: list[str]
    created_at: datetime
    status_changed_at: datetime
    confirmed_at: datetime | None
    consent_at: datetime | None
    consent_source: str | None


class SubscriberOut(BaseModel):
    id: int
    email: str
    created_at: datetime
    subscriptions: list[SubscriptionOut]


class SubscriberPage(BaseModel):
    items: list[SubscriberOut]
    next_cursor: str | None


def subscription_out(sub: Subscription) -> SubscriptionOut:
    return SubscriptionOut(
        id=sub.id,
        newsletter=sub.newsletter.slug,
        status=sub.status,
        frequency=sub.frequency,
        topics=[t.slug for t in sub.topics],
        created_at=sub.created_at,
        status_changed_at=sub.status_changed_at,
        confirmed_at=sub.confirmed_at,
        consent_at=sub.consent_at,
        consent_source=sub.consent_source,
    )


def subscriber_out(subscriber: Subscriber) -> SubscriberOut:
    return SubscriberOut(
        id=subscriber.id,
        email=subscriber.email,
        created_at=subscriber.created_at,
        subscriptions=[
            subscription_out(s)
            for s in sorted(subscriber.subscriptions, key=lambda s: s.newsletter_id)
        ],
    )


def find_subscriber(session: Session, ref: str) -> Subscriber:
    """By id (all digits) or by address; ids keep addresses out of URLs and access logs."""
    ref = ref.strip()
    if ref.isdigit():
        number = parse_id(ref)
        found = session.get(Subscriber, number) if number is not None else None
    else:
        found = session.scalar(select(Subscriber).where(Subscriber.email_key == address_key(ref)))
    if found is None:
        raise NotFound(f"No subscriber {ref!r}.")
    return found


@dataclass(frozen=True)
class SubscriberFilter:
    newsletter: str | None = None
    status: Status | None = None
    contains: str | None = None


def _filtered(session: Session, f: SubscriberFilter) -> Select[Subscriber]:
    query = select(Subscriber)
    if f.newsletter is not None or f.status is not None:
        match = select(Subscription.id).where(Subscription.subscriber_id == Subscriber.id)
        if f.newsletter is not None:
            match = match.where(Subscription.newsletter_id == newsletter(session, f.newsletter).id)
        if f.status is not None:
            match = match.where(Subscription.status == f.status)
        query = query.where(match.exists())
    if f.contains:
        query = query.where(Subscriber.email_key.contains(f.contains.casefold(), autoescape=True))
    return query


def list_subscribers(
    session: Session, f: SubscriberFilter, *, cursor: str | None = None, limit: int = 50
) -> SubscriberPage:
    """One page in id order; the cursor is the last id seen, so pages never shift under inserts."""
    if not 1 <= limit <= 1000:
        raise Invalid("limit", "limit must be between 1 and 1000.")
    query = _filtered(session, f).order_by(Subscriber.id).limit(limit + 1)
    if cursor:
        query = query.where(Subscriber.id > decode_cursor(cursor))
    rows = session.scalars(
        query.options(
            selectinload(Subscriber.subscriptions).selectinload(Subscription.topics),
            selectinload(Subscriber.subscriptions).selectinload(Subscription.newsletter),
        )
    ).all()
    page = rows[:limit]
    more = len(rows) > limit
    return SubscriberPage(
        items=[subscriber_out(s) for s in page],
        next_cursor=encode_cursor(page[-1].id) if more and page else None,
    )


def iter_subscriptions(
    session: Session, f: SubscriberFilter, batch: int = 2000
) -> Iterator[tuple[Subscriber, Subscription]]:
    """Every matching (subscriber, subscription), streamed in id pages for CSV export."""
    last = 0
    while True:
        page = session.scalars(
            _filtered(session, f)
            .where(Subscriber.id > last)
            .order_by(Subscriber.id)
            .limit(batch)
            .options(
                selectinload(Subscriber.subscriptions).selectinload(Subscription.topics),
                selectinload(Subscriber.subscriptions).selectinload(Subscription.newsletter),
            )
        ).all()
        if not page:
            return
        for subscriber in page:
            for sub in sorted(subscriber.subscriptions, key=lambda s: s.newsletter_id):
                if f.newsletter is not None and sub.newsletter.slug != f.newsletter:
                    continue
                if f.status is not None and sub.status is not f.status:
                    continue
                yield subscriber, sub
        last = page[-1].id
        session.expunge_all()


# -- status ----------------------------------------------------------------------------


def set_status(
    session: Session,
    ref: str,
    newsletter_slug: str,
    status: Status,
    *,
    detail: str | None = None,
) -> Subscription:
    """An operator's status change, through the same lifecycle and audit as a reader's."""
    subscriber = find_subscriber(session, ref)
    nl = newsletter(session, newsletter_slug)
    sub = next((s for s in subscriber.subscriptions if s.newsletter_id == nl.id), None)
    if sub is None:
        raise NotFound(f"Subscriber {ref!r} has no subscription to {newsletter_slug!r}.")
    if sub.status is status:
        return sub
    if status is Status.ACTIVE and suppressions.is_suppressed(session, subscriber.email):
        raise Conflict(f"{ref!r} is on the suppression list and cannot be made active.")
    try:
        subs.change_status(session, sub, status, source=OPERATOR, detail=detail)
    except subs.InvalidTransition as exc:
        raise Conflict(str(exc)) from exc
    if status is Status.ACTIVE:
        now = sub.status_changed_at
        sub.confirmed_at = now
        sub.consent_at, sub.consent_source, sub.consent_ip = now, OPERATOR, None
    session.flush()
    return sub


# -- export and erasure -------------------------------------------------------------------------


class EventOut(BaseModel):
    subscription_id: int
    newsletter: str
    at: datetime
    old_status: str | None
    new_status: str
    source: str
    ip: str | None
    detail: str | None


class ConsentOut(BaseModel):
    newsletter: str
    consent_at: datetime | None
    consent_source: str | None
    consent_ip: str | None


class NotificationOut(BaseModel):
    newsletter: str
    kind: str
    status: str
    created_at: datetime
    sent_at: datetime | None


class DeliveryOut(BaseModel):
    newsletter: str
    edition_id: int
    window_end: datetime
    status: DeliveryStatus
    attempts: int
    sent_at: datetime | None
    message_id: str | None
    smtp_code: int | None
    smtp_reply: str | None


class SubscriberExport(BaseModel):
    """Everything we hold about one reader (GDPR art. 15 / 20)."""

    exported_at: datetime
    subscriber: SubscriberOut
    consent: list[ConsentOut]
    events: list[EventOut]
    notifications: list[NotificationOut]
    deliveries: list[DeliveryOut]
    suppressed: bool


def export_subscriber(session: Session, ref: str) -> SubscriberExport:
    subscriber = find_subscriber(session, ref)
    subs_by_id = {s.id: s for s in subscriber.subscriptions}
    slug = {sid: s.newsletter.slug for sid, s in subs_by_id.items()}
    ids = list(subs_by_id)
    events = session.scalars(
        select(SubscriptionEvent)
        .where(SubscriptionEvent.subscription_id.in_(ids))
        .order_by(SubscriptionEvent.at, SubscriptionEvent.id)
    ).all()
    notes = session.scalars(
        select(Notification)
        .where(Notification.subscription_id.in_(ids))
        .order_by(Notification.created_at, Notification.id)
    ).all()
    deliveries = session.execute(
        select(Delivery, Digest.window_end)
        .join(Digest, Digest.id == Delivery.digest_id)
        .where(Delivery.subscription_id.in_(ids))
        .order_by(Digest.window_end, Delivery.id)
    ).all()
    return SubscriberExport(
        exported_at=utcnow(),
        subscriber=subscriber_out(subscriber),
        consent=[
            ConsentOut(
                newsletter=slug[s.id],
                consent_at=s.consent_at,
                consent_source=s.consent_source,
                consent_ip=s.consent_ip,
            )
            for s in subs_by_id.values()
        ],
        events=[
            EventOut(
                subscription_id=e.subscription_id,
                newsletter=slug[e.subscription_id],
                at=e.at,
                old_status=e.old_status,
                new_status=e.new_status,
                source=e.source,
                ip=e.ip,
                detail=e.detail,
            )
            for e in events
        ],
        notifications=[
            NotificationOut(
                newsletter=slug[n.subscription_id],
                kind=n.kind,
                status=n.status,
                created_at=n.created_at,
                sent_at=n.sent_at,
            )
            for n in notes
        ],
        deliveries=[
            DeliveryOut(
                newsletter=slug[d.subscription_id],
                edition_id=d.digest_id,
                window_end=window_end,
                status=d.status,
                attempts=d.attempts,
                sent_at=d.sent_at,
                message_id=d.message_id,
                smtp_code=d.smtp_code,
                smtp_reply=d.smtp_reply,
            )
            for d, window_end in deliveries
        ],
        suppressed=suppressions.is_suppressed(session, subscriber.email),
    )


class ErasureReport(BaseModel):
    erased: bool
    subscriptions: int
    suppressed: bool


def erase_subscriber(session: Session, ref: str) -> ErasureReport:
    """Delete every row about the reader; keep only the hash if they had asked us to stop."""
    subscriber = find_subscriber(session, ref)
    email = subscriber.email
    asked_to_stop = any(s.status in ASKED_TO_STOP for s in subscriber.subscriptions)
    if asked_to_stop:
        # A complaint stays a complaint (only an operator lifts it); a plain "stop" may be
        # lifted by the owner's own fresh double opt-in (mailer.readers.suppressions).
        complained = any(s.status is Status.COMPLAINED for s in subscriber.subscriptions)
        reason = (
            suppressions.COMPLAINED_THEN_ERASED
            if complained
            else suppressions.UNSUBSCRIBED_THEN_ERASED
        )
        suppressions.suppress(session, email, reason=reason, source=OPERATOR)
    suppressions.forget_lifts(session, email)
    count = len(subscriber.subscriptions)
    subscriber_id = subscriber.id
    session.expunge(subscriber)
    # Core delete so the database's ON DELETE CASCADE removes dependants in one statement,
    # including tables this module does not know of.
    session.execute(delete(Subscriber).where(Subscriber.id == subscriber_id))
    session.flush()
    session.expire_all()
    return ErasureReport(
        erased=True,
        subscriptions=count,
        suppressed=suppressions.is_suppressed(session, email),
    )
