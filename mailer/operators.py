"""The operator's side of the store: newsletters, topics, readers, schedules, stats.

One set of functions serves both the JSON API and the CLI, so the two can
never disagree about a rule. Errors carry what a person needs to fix the
request: `NotFound` names what is missing, `Conflict` what is already there
or in the way, `Invalid` the field that is wrong. Like `subscriptions`,
functions here flush but never commit; the caller owns the unit of work.

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

import base64
import binascii
from collections import defaultdict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from croniter import croniter
from pydantic import BaseModel, ConfigDict
from sqlalchemy import Select, delete, func, select, update
from sqlalchemy.orm import Session, selectinload

from mailer.config import Settings
from mailer.content import cleaner, feeds
from mailer.content.articles import arrival_time
from mailer.db import session_scope
from mailer.editions import close, errors, prepare, preview, schedule
from mailer.mail.rendering import EmailRenderer
from mailer.models import (
    EDITION_OPEN,
    MAX_ID,
    Article,
    Delivery,
    DeliveryStatus,
    Digest,
    EditionStatus,
    Feed,
    Frequency,
    Newsletter,
    Notification,
    Schedule,
    Status,
    Subscriber,
    Subscription,
    SubscriptionEvent,
    Suppression,
    Topic,
    utcnow,
)
from mailer.readers import subscriptions as subs
from mailer.readers import suppressions
from mailer.readers.addresses import address_key

OPERATOR = "operator"
# Ending states that mean "the reader asked us to stop": kept as a hash after erasure.
ASKED_TO_STOP = (Status.UNSUBSCRIBED, Status.COMPLAINED)


class OperatorError(ValueError):
    """A request we refuse; the message is for the operator who made it."""


class NotFound(OperatorError):
    pass


class Conflict(OperatorError):
    pass


class Invalid(OperatorError):
    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


# -- newsletters ----------------------------------------------------------------------


def newsletter(session: Session, slug: str) -> Newsletter:
    try:
        return subs.get_newsletter(session, slug)
    except subs.UnknownNewsletter as exc:
        raise NotFound(str(exc)) from exc


def list_newsletters(session: Session) -> Sequence[Newsletter]:
    return session.scalars(select(Newsletter).order_by(Newsletter.slug)).all()


def open_newsletters(session: Session) -> Sequence[Newsletter]:
    """The newsletters that take subscriptions (not archived), by name: the home page's list."""
    return session.scalars(
        select(Newsletter).where(Newsletter.archived_at.is_(None)).order_by(Newsletter.name)
    ).all()


class NewsletterOut(BaseModel):
    id: int
    slug: str
    name: str
    sender: str
    site_url: str | None
    default_frequency: Frequency
    paused: bool
    archived_at: datetime | None
    active_readers: int


def _active_readers(session: Session, ids: list[int]) -> dict[int, int]:
    return dict(
        session.execute(
            select(Subscription.newsletter_id, func.count())
            .where(Subscription.newsletter_id.in_(ids), Subscription.status == Status.ACTIVE)
            .group_by(Subscription.newsletter_id)
        ).all()
    )


def _newsletter_out(nl: Newsletter, active: int) -> NewsletterOut:
    return NewsletterOut(
        id=nl.id,
        slug=nl.slug,
        name=nl.name,
        sender=nl.sender,
        site_url=nl.site_url,
        default_frequency=nl.default_frequency,
        paused=nl.paused,
        archived_at=nl.archived_at,
        active_readers=active,
    )


def newsletter_out(session: Session, nl: Newsletter) -> NewsletterOut:
    return _newsletter_out(nl, _active_readers(session, [nl.id]).get(nl.id, 0))


def newsletters_out(session: Session) -> list[NewsletterOut]:
    """Every newsletter with its count of active readers, in slug order."""
    nls = list_newsletters(session)
    active = _active_readers(session, [nl.id for nl in nls])
    return [_newsletter_out(nl, active.get(nl.id, 0)) for nl in nls]


def parse_frequency(value: str, field_name: str = "frequency") -> Frequency:
    with _fields():
        return subs.frequency(value, field_name)


@contextmanager
def _fields() -> Iterator[None]:
    """The store's refusals, tied to the field they are about (422) or a clash (409)."""
    try:
        yield
    except subs.NewsletterExists as exc:
        raise Conflict(str(exc)) from exc
    except subs.SubscriptionError as exc:
        raise Invalid(exc.field or "body", str(exc)) from exc


def _sender(value: str) -> str:
    with _fields():
        return subs.parse_sender(value)


def _name(value: str) -> str:
    with _fields():
        return subs.newsletter_name(value)


def create_newsletter(
    session: Session,
    slug: str,
    name: str,
    sender: str,
    *,
    default_frequency: Frequency = Frequency.WEEKLY,
    site_url: str | None = None,
) -> Newsletter:
    """`subscriptions.create_newsletter`, with each refusal tied to its field."""
    with _fields():
        return subs.create_newsletter(
            session, slug, name, sender, default_frequency=default_frequency, site_url=site_url
        )


def update_newsletter(
    session: Session,
    slug: str,
    *,
    name: str | None = None,
    sender: str | None = None,
    site_url: str | None = None,
    default_frequency: Frequency | None = None,
    paused: bool | None = None,
) -> Newsletter:
    """Change only what was given; the slug is the newsletter's identity and stays."""
    nl = newsletter(session, slug)
    new_name = _name(name) if name is not None else None
    new_sender = _sender(sender) if sender is not None else None
    if new_name is not None:
        nl.name = new_name
    if new_sender is not None:
        nl.sender = new_sender
    if site_url is not None:
        nl.site_url = site_url or None
    if default_frequency is not None:
        nl.default_frequency = default_frequency
    if paused is not None:
        nl.paused = paused
    session.flush()
    return nl


def archive_newsletter(session: Session, slug: str, now: datetime | None = None) -> Newsletter:
    """No more subscriptions or editions; every row about it is kept. Safe to repeat.

    Refused while an edition is still being made or sent, so "archived" never
    hides mail that is going out: wait for it, or cancel it first.
    """
    nl = newsletter(session, slug)
    if nl.archived_at is not None:
        return nl
    busy = session.scalar(
        select(Digest.id)
        .where(Digest.newsletter_id == nl.id, Digest.status.in_(EDITION_OPEN))
        .order_by(Digest.id)
        .limit(1)
    )
    if busy is not None:
        raise Conflict(
            f"Edition {busy} of {slug!r} is still being sent; wait for it to finish or cancel "
            f"it (`mailer digest cancel {busy}`), then archive."
        )
    nl.archived_at = now or utcnow()
    session.flush()
    return nl


def unarchive_newsletter(session: Session, slug: str) -> Newsletter:
    """Take subscriptions and make editions again, from the next scheduled time."""
    nl = newsletter(session, slug)
    nl.archived_at = None
    session.flush()
    return nl


# -- feeds ----------------------------------------------------------------------------


class FeedOut(BaseModel):
    id: int
    newsletter: str
    url: str
    title: str | None
    topics: list[str]
    interval: int
    backfill_days: int | None = None
    paused: bool
    last_polled_at: datetime | None
    last_success_at: datetime | None
    next_poll_at: datetime | None
    error_count: int
    last_error: str | None


def feed_out(feed: Feed, slug: str) -> FeedOut:
    return FeedOut(
        id=feed.id,
        newsletter=slug,
        url=feed.url,
        title=feed.title,
        topics=list(feed.topics or []),
        interval=feed.interval,
        backfill_days=feed.backfill_days,
        paused=feed.paused,
        last_polled_at=feed.last_polled_at,
        last_success_at=feed.last_success_at,
        next_poll_at=feed.next_poll_at,
        error_count=feed.error_count,
        last_error=feed.last_error,
    )


def find_feed(session: Session, feed_id: int) -> Feed:
    found = session.get(Feed, feed_id) if 0 < feed_id <= MAX_ID else None
    if found is None:
        raise NotFound(f"There is no feed {feed_id}.")
    return found


def _feed_out(session: Session, feed: Feed) -> FeedOut:
    return feed_out(feed, session.get_one(Newsletter, feed.newsletter_id).slug)


def list_feeds(session: Session, slug: str | None = None) -> list[FeedOut]:
    """Feeds with their last poll, next poll and last error; one newsletter's or all."""
    query = select(Feed, Newsletter.slug).join(Newsletter, Newsletter.id == Feed.newsletter_id)
    if slug is not None:
        query = query.where(Feed.newsletter_id == newsletter(session, slug).id)
    rows = session.execute(query.order_by(Newsletter.slug, Feed.id)).all()
    return [feed_out(f, nl_slug) for f, nl_slug in rows]


@contextmanager
def _feed_refusals() -> Iterator[None]:
    try:
        yield
    except feeds.FeedExists as exc:
        raise Conflict(str(exc)) from exc
    except feeds.FeedError as exc:
        raise Invalid(exc.field or "body", str(exc)) from exc


def add_feed(
    session: Session,
    settings: Settings,
    slug: str,
    url: str,
    *,
    topics: Sequence[str] = (),
    interval: int | None = None,
    backfill_days: int | None = None,
) -> FeedOut:
    """A new feed, polled from the next tick on; its topics exist at once."""
    nl = newsletter(session, slug)
    with _feed_refusals():
        feed = feeds.add_feed(
            session,
            nl,
            url,
            topics=list(topics),
            interval=interval,
            settings=settings,
            backfill_days=backfill_days,
        )
    return feed_out(feed, nl.slug)


def edit_feed(
    session: Session,
    feed_id: int,
    *,
    interval: int | None = None,
    topics: Sequence[str] | None = None,
) -> FeedOut:
    """A new interval, or a new list of topics replacing the old (for articles from now on)."""
    feed = find_feed(session, feed_id)
    with _feed_refusals():
        feeds.edit_feed(
            session, feed, interval=interval, topics=None if topics is None else list(topics)
        )
    return _feed_out(session, feed)


def set_feed_paused(session: Session, feed_id: int, paused: bool) -> FeedOut:
    feed = find_feed(session, feed_id)
    return _feed_out(session, feeds.set_paused(session, feed, paused))


def remove_feed(session: Session, feed_id: int) -> FeedOut:
    """The feed goes; the articles it brought stay, and so does what was sent of them."""
    feed = find_feed(session, feed_id)
    out = _feed_out(session, feed)
    session.delete(feed)
    session.flush()
    return out


# -- topics ---------------------------------------------------------------------------


class TopicOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    slug: str
    name: str


def list_topics(session: Session, slug: str) -> list[Topic]:
    return list(newsletter(session, slug).topics)


def create_topic(session: Session, slug: str, name: str) -> Topic:
    nl = newsletter(session, slug)
    clean = " ".join(name.split())
    if not clean or len(clean) > 200:
        raise Invalid("name", "A topic name is 1-200 characters on one line.")
    key = subs.slugify(clean)
    for topic in nl.topics:
        if topic.slug == key or topic.name.casefold() == clean.casefold():
            raise Conflict(
                f"Newsletter {slug!r} already has a topic {topic.slug!r} ({topic.name})."
            )
    return subs.ensure_topic(session, nl, clean)


def rename_topic(session: Session, slug: str, topic_slug: str, new_name: str) -> Topic:
    """Rename by the articles module's rule: the slug stays, so links and forms still work."""
    from mailer.content.articles import ArticleError
    from mailer.content.articles import rename_topic as rename

    nl = newsletter(session, slug)
    if not any(t.slug == topic_slug for t in nl.topics):
        raise NotFound(f"Newsletter {slug!r} has no topic {topic_slug!r}.")
    try:
        return rename(session, nl, topic_slug, new_name)
    except ArticleError as exc:
        if "already" in str(exc):
            raise Conflict(str(exc)) from exc
        raise Invalid("name", str(exc)) from exc


# -- subscribers: find, list, page ----------------------------------------------------------


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


def parse_id(text: str) -> int | None:
    """An id as written in a URL: ASCII digits only ("²" is a digit to str.isdigit
    but not to int()), within the column's range; anything else is None."""
    if not (text.isascii() and text.isdigit()):
        return None
    number = int(text)
    return number if number <= MAX_ID else None


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


def encode_cursor(last_id: int) -> str:
    return base64.urlsafe_b64encode(f"s1:{last_id}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> int:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        prefix, _, number = raw.partition(":")
        last_id = parse_id(number)
        if prefix != "s1" or last_id is None:
            raise ValueError(raw)
        return last_id
    except (ValueError, binascii.Error, UnicodeDecodeError) as exc:
        raise Invalid(
            "cursor", "The cursor is not one this API gave out; start without one."
        ) from exc


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
    if status is Status.ACTIVE and subs.is_suppressed(session, subscriber.email):
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
        suppressed=subs.is_suppressed(session, subscriber.email),
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
        subs.suppress(session, email, reason=reason, source=OPERATOR)
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


# -- suppressions -------------------------------------------------------------------------------


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


# -- schedules ------------------------------------------------------------------------------


class ScheduleOut(BaseModel):
    newsletter: str
    frequency: Frequency
    cron: str
    timezone: str
    paused: bool
    next_run_local: datetime | None
    next_run_utc: datetime | None
    last_run_at: datetime | None


def check_schedule(cron: str, timezone: str) -> tuple[str, str]:
    """`editions.schedule`'s own checks, each refusal tied to its field: (cron, zone) as stored."""
    try:
        return schedule.check_schedule(cron, timezone)
    except schedule.ScheduleError as exc:
        raise Invalid(exc.field, str(exc)) from exc


def next_run(cron: str, timezone: str, now: datetime | None = None) -> datetime:
    """The next fire time, evaluated in the schedule's zone so 08:00 stays 08:00 over DST."""
    local_now = (now or utcnow()).astimezone(schedule.check_timezone(timezone))
    fire: datetime = croniter(cron, local_now).get_next(datetime)
    return fire


def _schedule_out(schedule: Schedule, nl: Newsletter, now: datetime | None) -> ScheduleOut:
    fire = next_run(schedule.cron, schedule.timezone, now)
    return ScheduleOut(
        newsletter=nl.slug,
        frequency=schedule.frequency,
        cron=schedule.cron,
        timezone=schedule.timezone,
        paused=nl.paused,
        next_run_local=fire,
        next_run_utc=fire.astimezone(ZoneInfo("UTC")),
        last_run_at=schedule.last_run_at,
    )


def set_schedule(
    session: Session,
    slug: str,
    frequency: Frequency,
    cron: str,
    timezone: str,
    now: datetime | None = None,
) -> ScheduleOut:
    nl = newsletter(session, slug)
    cron, zone = check_schedule(cron, timezone)
    schedule = session.scalar(
        select(Schedule).where(Schedule.newsletter_id == nl.id, Schedule.frequency == frequency)
    )
    if schedule is None:
        schedule = Schedule(newsletter_id=nl.id, frequency=frequency, cron=cron, timezone=zone)
        session.add(schedule)
    else:
        schedule.cron, schedule.timezone = cron, zone
    session.flush()
    return _schedule_out(schedule, nl, now)


def list_schedules(
    session: Session, slug: str | None = None, now: datetime | None = None
) -> list[ScheduleOut]:
    query = select(Schedule, Newsletter).join(Newsletter, Newsletter.id == Schedule.newsletter_id)
    if slug is not None:
        query = query.where(Newsletter.id == newsletter(session, slug).id)
    rows = session.execute(query.order_by(Newsletter.slug, Schedule.frequency)).all()
    return [_schedule_out(s, nl, now) for s, nl in rows]


def get_schedule(
    session: Session, slug: str, frequency: Frequency, now: datetime | None = None
) -> ScheduleOut:
    found = [s for s in list_schedules(session, slug, now) if s.frequency is frequency]
    if not found:
        raise NotFound(f"Newsletter {slug!r} has no {frequency.value} schedule.")
    return found[0]


# -- stats -----------------------------------------------------------------------------------


class EditionStats(BaseModel):
    id: int
    frequency: Frequency
    window_end: datetime
    status: str
    counts: dict[str, int]
    bounce_rate: float | None


class NewsletterStats(BaseModel):
    newsletter: str
    name: str
    paused: bool
    by_status: dict[str, int]
    new_active_7d: int
    new_active_30d: int
    editions: list[EditionStats] = []


@dataclass
class _Growth:
    week: int = 0
    month: int = 0


def bounce_rate(counts: dict[str, int]) -> float | None:
    """Hard failures over everything the server answered for (sent + failed)."""
    answered = counts.get("sent", 0) + counts.get("failed", 0)
    return counts.get("failed", 0) / answered if answered else None


def stats(
    session: Session, slug: str | None = None, *, editions: int = 5, now: datetime | None = None
) -> list[NewsletterStats]:
    """Readers by status, growth from the audit table, and the last editions' outcomes.

    Growth counts subscriptions that became active within the window and are
    still active, read from the consent/audit events rather than created_at,
    so an import of old readers and a re-subscribe both count when they happen.
    """
    now = now or utcnow()
    nls = [newsletter(session, slug)] if slug is not None else list(list_newsletters(session))
    ids = [nl.id for nl in nls]
    by_status: dict[int, dict[str, int]] = defaultdict(dict)
    for nl_id, status, n in session.execute(
        select(Subscription.newsletter_id, Subscription.status, func.count())
        .where(Subscription.newsletter_id.in_(ids))
        .group_by(Subscription.newsletter_id, Subscription.status)
    ):
        by_status[nl_id][Status(status).value] = n
    growth: dict[int, _Growth] = defaultdict(_Growth)
    month_ago, week_ago = now - timedelta(days=30), now - timedelta(days=7)
    became_active = (
        select(
            Subscription.newsletter_id,
            SubscriptionEvent.subscription_id,
            func.max(SubscriptionEvent.at).label("at"),
        )
        .join(Subscription, Subscription.id == SubscriptionEvent.subscription_id)
        .where(
            Subscription.newsletter_id.in_(ids),
            Subscription.status == Status.ACTIVE,
            SubscriptionEvent.new_status == Status.ACTIVE.value,
            func.coalesce(SubscriptionEvent.old_status, "") != Status.ACTIVE.value,
            SubscriptionEvent.at >= month_ago,
        )
        .group_by(Subscription.newsletter_id, SubscriptionEvent.subscription_id)
    )
    for nl_id, _sub_id, at in session.execute(became_active):
        growth[nl_id].month += 1
        if at >= week_ago:
            growth[nl_id].week += 1
    out = []
    for nl in nls:
        recent = session.scalars(
            select(Digest)
            .where(Digest.newsletter_id == nl.id)
            .order_by(Digest.window_end.desc(), Digest.id.desc())
            .limit(editions)
        ).all()
        live: dict[int, dict[str, int]] = defaultdict(dict)
        if recent:
            for digest_id, state, n in session.execute(
                select(Delivery.digest_id, Delivery.status, func.count())
                .where(Delivery.digest_id.in_([d.id for d in recent]))
                .group_by(Delivery.digest_id, Delivery.status)
            ):
                live[digest_id][DeliveryStatus(state).value] = n
        out.append(
            NewsletterStats(
                newsletter=nl.slug,
                name=nl.name,
                paused=nl.paused,
                by_status={s.value: by_status[nl.id].get(s.value, 0) for s in Status},
                new_active_7d=growth[nl.id].week,
                new_active_30d=growth[nl.id].month,
                editions=[
                    EditionStats(
                        id=d.id,
                        frequency=d.frequency,
                        window_end=d.window_end,
                        status=d.status,
                        counts=live[d.id] or dict(d.counts or {}),
                        bounce_rate=bounce_rate(live[d.id] or dict(d.counts or {})),
                    )
                    for d in recent
                ],
            )
        )
    return out


# -- articles: what is stored, and what the source sent -----------------------------------------


class ArticleDetail(BaseModel):
    """One stored article as readers get it and, when asked for, as its source sent it.

    `raw_kept` is false for articles stored before what sources send was kept
    (migration 0006); they were never cleaned again. `removed` lists what the
    cleaner, as it is today, takes out of what was sent: what the stored text lacks.
    """

    id: int
    newsletter: str
    source: str
    guid: str
    url: str
    title: str
    summary: str
    author: str | None
    image_url: str | None
    topics: list[str]
    published_at: datetime
    fetched_at: datetime
    updated_at: datetime
    content_html: str
    raw_kept: bool
    raw_summary: str | None = None
    raw_content: str | None = None
    removed: list[str] | None = None


class ArticleOut(BaseModel):
    """One line of `mailer article list` / `GET /api/newsletters/{slug}/articles`.

    `due_at` is when it became due to readers (null: history, never mailed);
    `excluded_at` is set while an operator keeps it out of editions.
    """

    id: int
    newsletter: str
    source: str
    url: str
    title: str
    topics: list[str]
    published_at: datetime
    arrived_at: datetime
    due_at: datetime | None
    excluded_at: datetime | None


def _article_out(article: Article, slug: str) -> ArticleOut:
    return ArticleOut(
        id=article.id,
        newsletter=slug,
        source=article.source,
        url=article.url,
        title=article.title,
        topics=[t.name for t in article.topics],
        published_at=article.published_at,
        arrived_at=article.arrived_at,
        due_at=article.due_at,
        excluded_at=article.excluded_at,
    )


def list_articles(session: Session, slug: str, limit: int = 20) -> list[ArticleOut]:
    """The newsletter's newest articles (by published time), with what editions make of them."""
    if not 1 <= limit <= 1000:
        raise Invalid("limit", f"limit is 1-1000, got {limit}")
    nl = newsletter(session, slug)
    rows = session.scalars(
        select(Article)
        .where(Article.newsletter_id == nl.id)
        .options(selectinload(Article.topics))
        .order_by(Article.published_at.desc(), Article.id.desc())
        .limit(limit)
    ).all()
    return [_article_out(a, nl.slug) for a in rows]


def find_article(session: Session, article_id: int) -> Article:
    found = session.get(Article, article_id) if 0 < article_id <= MAX_ID else None
    if found is None:
        raise NotFound(f"there is no article {article_id}")
    return found


def exclude_article(session: Session, article_id: int, now: datetime | None = None) -> ArticleOut:
    """Keep an article out of every edition cut from now on, until it is put back.

    Readers who already got it, or have it queued, keep it: an edition prepared
    before stays as it was.
    """
    article = find_article(session, article_id)
    if article.excluded_at is None:
        article.excluded_at = now or utcnow()
        session.flush()
    return _article_out(article, session.get_one(Newsletter, article.newsletter_id).slug)


def include_article(session: Session, article_id: int, now: datetime | None = None) -> ArticleOut:
    """Put an excluded article back: due again from now, so the next edition of each
    frequency carries it to every reader it matches who has not had it. An
    article that was never excluded is left as it is."""
    article = find_article(session, article_id)
    if article.excluded_at is not None:
        article.excluded_at = None
        article.due_at = arrival_time(session, article.newsletter_id)
        session.flush()
    return _article_out(article, session.get_one(Newsletter, article.newsletter_id).slug)


def poll_before_cut(settings: Settings, digest_id: int) -> None:
    """Before an edition is cut: its newsletter's due feeds, bounded by the feed timeout.
    An edition already prepared (a redelivered task) polls nothing."""
    with session_scope(settings.database) as session:
        digest = session.get(Digest, digest_id)
        if digest is None or digest.status != "created":
            return
        newsletter_id = digest.newsletter_id
    feeds.poll_before_cut(settings, newsletter_id)


def show_article(session: Session, article_id: int, *, raw: bool = False) -> ArticleDetail:
    article = session.get(Article, article_id)
    if article is None:
        raise NotFound(f"there is no article {article_id}")
    newsletter = session.get(Newsletter, article.newsletter_id)
    assert newsletter is not None  # the FK cascades: an article never outlives it
    kept = article.raw_summary is not None or article.raw_content is not None
    detail = ArticleDetail(
        id=article.id,
        newsletter=newsletter.slug,
        source=article.source,
        guid=article.guid,
        url=article.url,
        title=article.title,
        summary=article.summary,
        author=article.author,
        image_url=article.image_url,
        topics=[t.name for t in article.topics],
        published_at=article.published_at,
        fetched_at=article.fetched_at,
        updated_at=article.updated_at,
        content_html=article.content_html,
        raw_kept=kept,
    )
    if raw and kept:
        sent = [article.raw_summary, article.raw_content]
        if sent[0] == sent[1]:  # a feed item with only a description is both
            sent = sent[:1]
        detail.raw_summary, detail.raw_content = article.raw_summary, article.raw_content
        detail.removed = [
            line for field in sent for line in cleaner.clean(field, title=article.title).removed
        ]
    return detail


# -- editions: preview, send now, watch, cancel ------------------------------------------------
#
# The API, the admin page and `mailer digest` share these, so "send now" means the same
# edition (one per minute) and "cancel" the same rule wherever it is pressed.

# Rows a cancel stops: those waiting for a worker. A row in `sending` is held by a worker in
# mid-conversation and finishes normally; its outcome is the truth about that reader.
WAITING = (DeliveryStatus.QUEUED, DeliveryStatus.DEFERRED)
# Sent once already with no reply heard; cancelling stops the resend, but the reader may have
# the mail, so their articles stay reserved rather than arriving again next time.
MAYBE_SENT = (DeliveryStatus.UNKNOWN,)


class EditionOut(BaseModel):
    id: int
    newsletter: str
    frequency: Frequency
    window_start: datetime
    window_end: datetime
    status: EditionStatus
    created_at: datetime
    prepared_at: datetime | None
    finished_at: datetime | None
    counts: dict[str, int]


class EditionPage(BaseModel):
    items: list[EditionOut]
    next_cursor: str | None


class SendNowOut(BaseModel):
    edition: EditionOut
    new: bool


class CancelReport(BaseModel):
    edition: EditionOut
    cancelled: int
    released: int
    still_sending: int


class EditionDelivery(BaseModel):
    id: int
    subscription_id: int
    address: str
    status: DeliveryStatus
    attempts: int
    next_attempt_at: datetime | None
    smtp_code: int | None
    smtp_reply: str | None
    message_id: str | None
    sent_at: datetime | None
    updated_at: datetime


class DeliveryPage(BaseModel):
    items: list[EditionDelivery]
    next_cursor: str | None


@dataclass(frozen=True)
class Preview:
    html: str
    subject: str
    frequency: Frequency
    window_start: datetime
    window_end: datetime
    articles: int


def _live_counts(session: Session, ids: Sequence[int]) -> dict[int, dict[str, int]]:
    """Counts read from the delivery rows, not the edition's stored tally, which is only
    refreshed when a batch closes (and never after a cancel, while in-flight rows finish)."""
    out: dict[int, dict[str, int]] = defaultdict(dict)
    if ids:
        for digest_id, state, n in session.execute(
            select(Delivery.digest_id, Delivery.status, func.count())
            .where(Delivery.digest_id.in_(ids))
            .group_by(Delivery.digest_id, Delivery.status)
        ):
            out[digest_id][DeliveryStatus(state).value] = n
    return out


def _edition_out(digest: Digest, slug: str, counts: dict[str, int]) -> EditionOut:
    return EditionOut(
        id=digest.id,
        newsletter=slug,
        frequency=digest.frequency,
        window_start=digest.window_start,
        window_end=digest.window_end,
        status=digest.status,
        created_at=digest.created_at,
        prepared_at=digest.prepared_at,
        finished_at=digest.finished_at,
        counts=counts,
    )


def find_edition(session: Session, digest_id: int) -> Digest:
    found = session.get(Digest, digest_id) if 0 < digest_id <= MAX_ID else None
    if found is None:
        raise NotFound(f"There is no edition {digest_id}.")
    return found


def edition_out(session: Session, digest_id: int) -> EditionOut:
    """One edition with its delivery counts as they are right now."""
    digest = find_edition(session, digest_id)
    return _edition_out(
        digest, digest.newsletter.slug, _live_counts(session, [digest.id])[digest.id]
    )


def list_editions(
    session: Session, slug: str, *, cursor: str | None = None, limit: int = 20
) -> EditionPage:
    """A newsletter's editions, newest first; the cursor is the last id seen."""
    if not 1 <= limit <= 200:
        raise Invalid("limit", "limit must be between 1 and 200.")
    nl = newsletter(session, slug)
    query = select(Digest).where(Digest.newsletter_id == nl.id)
    if cursor:
        query = query.where(Digest.id < decode_cursor(cursor))
    rows = session.scalars(query.order_by(Digest.id.desc()).limit(limit + 1)).all()
    page = rows[:limit]
    live = _live_counts(session, [d.id for d in page])
    return EditionPage(
        items=[_edition_out(d, nl.slug, live[d.id]) for d in page],
        next_cursor=encode_cursor(page[-1].id) if len(rows) > limit and page else None,
    )


def problem_deliveries(session: Session, digest_id: int, limit: int = 10) -> list[EditionDelivery]:
    """A few of an edition's deliveries that did not simply go out (deferred, failed,
    unknown): what an operator looks at first."""
    return list_deliveries(
        session,
        digest_id,
        statuses=(DeliveryStatus.DEFERRED, DeliveryStatus.FAILED, DeliveryStatus.UNKNOWN),
        limit=limit,
    ).items


def recent_editions(session: Session, slug: str | None = None, limit: int = 20) -> list[EditionOut]:
    """The newest editions of every newsletter (or one), with live delivery counts."""
    query = select(Digest, Newsletter.slug).join(Newsletter, Newsletter.id == Digest.newsletter_id)
    if slug is not None:
        query = query.where(Digest.newsletter_id == newsletter(session, slug).id)
    rows = session.execute(query.order_by(Digest.id.desc()).limit(limit)).all()
    live = _live_counts(session, [d.id for d, _ in rows])
    return [_edition_out(d, nl_slug, live[d.id]) for d, nl_slug in rows]


def send_now(
    session: Session, slug: str, frequency: Frequency | None = None, now: datetime | None = None
) -> tuple[Digest, bool]:
    """The edition ending this minute, and whether this call made it.

    Pressing twice in one minute names the same edition; the caller enqueues its
    prepare (after commit) only when it is new, so a double press sends nothing twice.
    """
    nl = newsletter(session, slug)
    freq = frequency or nl.default_frequency
    end = (now or utcnow()).replace(second=0, microsecond=0)
    existed = session.scalar(
        select(Digest.id).where(
            Digest.newsletter_id == nl.id, Digest.frequency == freq, Digest.window_end == end
        )
    )
    try:
        digest = schedule.create_now(session, nl, freq, end)
    except errors.DigestError as exc:
        raise Conflict(str(exc)) from exc
    session.flush()
    return digest, existed is None


def prepare_edition(
    session: Session, settings: Settings, renderer: EmailRenderer, digest_id: int
) -> prepare.Prepared:
    """Write an edition's delivery rows (once: a second call finds them written), and
    close it at once when nobody is left to mail. Whoever made the edition comes here
    next: the worker's prepare task (after `send_now` from the API or admin, or a
    schedule) and `mailer digest send`, which waits for it to print the counts."""
    prepared = prepare.prepare(session, settings, renderer, digest_id)
    if not prepared.ranges:
        close.close_if_done(session, digest_id)
    return prepared


def cancel_edition(session: Session, digest_id: int, now: datetime | None = None) -> CancelReport:
    """Stop an edition: waiting deliveries become `cancelled`, rows in flight finish.

    Conditional UPDATEs (status still waiting) race safely with a worker's claim:
    a row it claimed first is `sending` and no longer matches; a row cancelled first
    is no longer claimable. Cancelled readers get their reserved articles back, so
    the next edition brings them. Cancelling again sweeps rows that came back to
    the queue since (a worker died mid-batch); a finished edition is refused.
    """
    now = now or utcnow()
    find_edition(session, digest_id)
    query = select(Digest).where(Digest.id == digest_id)
    if session.get_bind().dialect.name == "postgresql":
        query = query.with_for_update()  # waits for a prepare in progress to commit
    digest = session.scalars(query.execution_options(populate_existing=True)).one()
    if digest.status is EditionStatus.DONE:
        raise Conflict(f"Edition {digest_id} has finished sending; there is nothing to cancel.")

    def stop(states: tuple[DeliveryStatus, ...], release: bool) -> list[int]:
        values: dict[str, Any] = {
            "status": DeliveryStatus.CANCELLED,
            "next_attempt_at": None,
            "lease_until": None,
            "updated_at": now,
        }
        if release:
            values["released"] = True
        return list(
            session.scalars(
                update(Delivery)
                .where(Delivery.digest_id == digest_id, Delivery.status.in_(states))
                .values(**values)
                .returning(Delivery.subscription_id)
                .execution_options(synchronize_session=False)
            )
        )

    released = stop(WAITING, release=True)
    cancelled = len(released) + len(stop(MAYBE_SENT, release=False))
    if digest.status is not EditionStatus.CANCELLED:
        digest.status = EditionStatus.CANCELLED
        digest.finished_at = now
    live = _live_counts(session, [digest_id])[digest_id]
    digest.counts = live
    session.flush()
    return CancelReport(
        edition=_edition_out(digest, digest.newsletter.slug, live),
        cancelled=cancelled,
        released=len(released),
        still_sending=live.get(DeliveryStatus.SENDING.value, 0),
    )


def sweep_cancelled(session: Session, now: datetime | None = None) -> list[int]:
    """Cancel again the editions whose rows came back after their cancel.

    A row in flight at cancel time may still be deferred by a late 4xx, and a
    dead worker's rows are put back in the queue by lease recovery; nothing
    sends them, but they would stay open and keep their reserved articles. The
    tick calls this so a cancel is final without a second press.
    """
    stray = (
        select(Delivery.digest_id)
        .join(Digest, Digest.id == Delivery.digest_id)
        .where(Digest.status == EditionStatus.CANCELLED, Delivery.status.in_(WAITING + MAYBE_SENT))
        .distinct()
    )
    swept = list(session.scalars(stray))
    for digest_id in swept:
        cancel_edition(session, digest_id, now)
    return swept


def list_deliveries(
    session: Session,
    digest_id: int,
    *,
    statuses: Sequence[DeliveryStatus] = (),
    cursor: str | None = None,
    limit: int = 100,
) -> DeliveryPage:
    """An edition's deliveries in id order, optionally only some statuses."""
    if not 1 <= limit <= 1000:
        raise Invalid("limit", "limit must be between 1 and 1000.")
    find_edition(session, digest_id)
    query = (
        select(Delivery, Subscriber.email)
        .join(Subscription, Subscription.id == Delivery.subscription_id)
        .join(Subscriber, Subscriber.id == Subscription.subscriber_id)
        .where(Delivery.digest_id == digest_id)
    )
    if statuses:
        query = query.where(Delivery.status.in_(list(statuses)))
    if cursor:
        query = query.where(Delivery.id > decode_cursor(cursor))
    rows = session.execute(query.order_by(Delivery.id).limit(limit + 1)).all()
    page = rows[:limit]
    return DeliveryPage(
        items=[
            EditionDelivery(
                id=d.id,
                subscription_id=d.subscription_id,
                address=email,
                status=d.status,
                attempts=d.attempts,
                next_attempt_at=d.next_attempt_at,
                smtp_code=d.smtp_code,
                smtp_reply=d.smtp_reply,
                message_id=d.message_id,
                sent_at=d.sent_at,
                updated_at=d.updated_at,
            )
            for d, email in page
        ],
        next_cursor=encode_cursor(page[-1][0].id) if len(rows) > limit and page else None,
    )


def preview_edition(
    session: Session,
    settings: Settings,
    renderer: EmailRenderer,
    slug: str,
    *,
    frequency: Frequency | None = None,
    subscriber: str | None = None,
    now: datetime | None = None,
) -> Preview:
    """The next edition's HTML (the same `preview.draft` the CLI preview uses), written nowhere.

    For one subscriber (id or address) it is their selection with their own links;
    otherwise an all-topics reader who has seen nothing, with neutral stand-ins.
    """
    nl = newsletter(session, slug)
    sub: Subscription | None = None
    if subscriber is not None:
        found = find_subscriber(session, subscriber)
        sub = next((s for s in found.subscriptions if s.newsletter_id == nl.id), None)
        if sub is None:
            raise NotFound(f"Subscriber {subscriber!r} is not subscribed to {slug!r}.")
    try:
        draft = preview.draft(
            session,
            settings,
            renderer,
            nl,
            email=sub.subscriber.email if sub else None,
            frequency=frequency,
            now=now,
        )
    except errors.DigestError as exc:
        raise Conflict(str(exc)) from exc
    return Preview(
        html=preview.draft_html(settings, draft),
        subject=draft.rendered.subject,
        frequency=draft.frequency,
        window_start=draft.window_start,
        window_end=draft.window_end,
        articles=len(draft.article_ids),
    )
